"""What every ``hfconv`` subcommand shares: the leaf of the CLI package (``cli``, ``cli.validate``,
``cli.inspect``, ``cli.convert`` and ``cli.load_test`` import it; it imports none of them).

Writing the report (:func:`emit`), the PATH and ``--output`` checks, progress on stderr, the
options several commands take (declared once here: ``--format``, ``--output``, ``--select`` /
``--ignore``, ``--dtype``, a size), the modules an option needs, the signals that end a command,
and the error map: the library's exceptions turned into a message and an exit code
(:func:`usage_errors`: :class:`~hfconv.errors.UsageError` -> click's, exit 2;
:func:`describe_error`: an :class:`OSError` -> one line, exit 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..fsutil import umask
from ..interrupts import deferring, uninterrupted

if TYPE_CHECKING:
    from ..findings import Finding

__all__ = ["CONTEXT_SETTINGS", "DTYPE_HELP", "ERROR_MAP", "EXIT_FOR_SIGNAL", "INSTALL_HINT", "ProgressLines",
           "FLAG_PHRASES", "check_output", "check_size", "checked_codes", "codes_option", "describe_error",
           "dtype_option", "emit", "flag_findings", "flag_wording", "format_option", "known_codes",
           "on_signal", "os_error_line", "output_option", "progress_bar", "received_signals", "require_modules",
           "require_torch", "resolve_folder", "torch_installed", "TORCH_INSTALL_HINT", "Unavailable",
           "tqdm_bar", "usage_errors", "write_file"]

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
"""click's settings for every command: ``-h`` as well as ``--help``, help text up to 100 columns."""


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """The library's UsageError (a bad path or option, found while running) as click's: exit 2
    with the message, as an option click itself refused."""
    from ..errors import OptionError, UsageError

    try:
        yield
    except OptionError as exc:  # the library names its argument; the CLI, its flag
        raise click.UsageError(f"--{exc.option.replace('_', '-')}{exc.detail}") from None
    except UsageError as exc:  # its text may hold a name from the folder or a config file: escaped
        from ..render import escape_text

        raise click.UsageError(escape_text(flag_wording(str(exc)))) from None


# --- library wording -> CLI wording: the library names its keyword arguments, the CLI its flags --

_TRUSTED_BUILD = "importing the folder's own code (trust_remote_code=True) and building the reference model "
"""How a reference build that runs the folder's own code begins its messages (HFC609, HFC811)."""

FLAG_PHRASES: tuple[tuple[str | None, str, str, str], ...] = (
    # (finding code, or None for a UsageError; "start" / "end" of the message; library; CLI)
    (None, "start", "the folder of manifest ", "the folder of --manifest "),
    (None, "end", "; choose another DST or pass force=True to replace it",
     "; choose another DST or pass --force to replace it"),
    (None, "end", "; force=True only replaces a folder", "; --force only replaces a folder"),
    ("HFC713", "end", "; fix the source, or pass allow_invalid_output=True to write it anyway",
     "; fix the source, or pass --allow-invalid-output to write it anyway"),
    ("HFC716", "end", " (written anyway: allow_invalid_output=True)", " (written anyway: --allow-invalid-output)"),
    ("HFC704", "end", "; use a smaller max_shard_size", "; use a smaller --max-shard-size"),
    ("HFC733", "end", "; raise its max_memory", "; raise its --max-memory"),
    ("HFC733", "end", "; use device_map='auto' to offload to cpu and disk, or raise max_memory",
     "; use --device-map auto to offload to cpu and disk, or raise --max-memory"),
    ("HFC733", "end", "; raise max_memory or allow disk", "; raise --max-memory or allow disk"),
    ("HFC732", "start", "max_memory names ", "--max-memory names "),
    ("HFC740", "start", "forward=True skipped: ", "--forward skipped: "),
    ("HFC744", "end", "; strict=True refuses them", "; --strict refuses them"),
    ("HFC035", "end", "; reshard it with convert's max_shard_size (e.g. 5GB)",
     "; reshard it with hfconv convert --max-shard-size 5GB"),
    ("HFC036", "end", "; reshard it with convert's max_shard_size (e.g. 5GB)",
     "; reshard it with hfconv convert --max-shard-size 5GB"),
    # validate: the reference (HFC606, HFC609) and the folder's own code (HFC609, HFC807, HFC811)
    ("HFC606", "end", " and reference='rules' was asked: only embedding sizes and the layer count were checked",
     " and --reference rules was asked: only embedding sizes and the layer count were checked"),
    ("HFC609", "start", "reference='auto': ", "--reference auto: "),
    ("HFC609", "start", "reference='transformers': ", "--reference transformers: "),
    ("HFC609", "start", _TRUSTED_BUILD, _TRUSTED_BUILD.replace("trust_remote_code=True", "--trust-remote-code")),
    ("HFC609", "end", "; checked against hfconv's rule table instead", "; checked against hfconv's rule table instead"),
    ("HFC609", "end", "; only embedding sizes and the layer count were checked",
     "; only embedding sizes and the layer count were checked"),
    ("HFC609", "end", " and the folder's own code (auto_map) is only used with trust_remote_code=True",
     " and the folder's own code (auto_map) is only used with --trust-remote-code"),
    ("HFC609", "end", " (the folder's own code, auto_map, is only used with trust_remote_code=True)",
     " (the folder's own code, auto_map, is only used with --trust-remote-code)"),
    ("HFC807", "end", "; it is imported only in separate, time-limited subprocesses (trust_remote_code=True)",
     "; it is imported only in separate, time-limited subprocesses (--trust-remote-code)"),
    ("HFC811", "last", _TRUSTED_BUILD, _TRUSTED_BUILD.replace("trust_remote_code=True", "--trust-remote-code")),
)
"""The library phrases that name a keyword argument (``force=True``) and their CLI wording
(``--force``). Only these exact phrases, only at their place in a message of that code, are
rewritten: ``start`` phrases at the start, each next one right after the one before; ``end``
phrases at the end, each next one right before the one before (an entry whose two sides are
equal is fixed text a phrase may precede); ``last``, the last occurrence, for a message whose
text after it is hfconv's own (HFC811: the file names, then the cap hit). A name from the folder
is never touched."""


def flag_wording(message: str, code: str | None = None) -> str:
    """``message`` (of finding ``code``; None: a UsageError) with its library phrases in CLI wording."""
    entries = [(place, library, cli) for phrase_code, place, library, cli in FLAG_PHRASES if phrase_code == code]
    head, tail = 0, len(message)  # message[:head] and message[tail:] are rewritten into start / end
    start: list[str] = []
    end: list[str] = []
    moved = True
    while moved:
        moved = False
        for place, library, cli in entries:
            if place == "start" and message.startswith(library, head, tail):
                start.append(cli)
                head += len(library)
                moved = True
            elif place == "end" and tail - len(library) >= head and message.endswith(library, head, tail):
                end.insert(0, cli)
                tail -= len(library)
                moved = True
    middle = message[head:tail]
    for place, library, cli in entries:
        if place == "last" and (at := middle.rfind(library)) >= 0:
            middle = middle[:at] + cli + middle[at + len(library):]
    return "".join(start) + middle + "".join(end)


def flag_findings(findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """``findings`` with their messages in CLI wording (:func:`flag_wording`)."""
    return tuple(dataclasses.replace(f, message=worded) if (worded := flag_wording(f.message, f.code)) != f.message
                 else f for f in findings)


def known_codes() -> frozenset[str]:
    """Every registered finding code (:func:`hfconv.codes.known_codes`)."""
    from ..codes import known_codes as registered

    return registered()


def checked_codes(values: tuple[str, ...], option: str) -> list[str]:
    """The codes or prefixes of --select/--ignore (repeatable, comma-separated); one that matches
    no registered code is a usage error, worded as a config file's (:func:`hfconv.codes.checked_codes`)."""
    from ..codes import checked_codes as library_checked
    from ..errors import UsageError
    from ..render import escape_text

    try:
        return list(library_checked((code for value in values for code in value.split(",")), option))
    except UsageError as exc:
        raise click.UsageError(escape_text(str(exc))) from None


INSTALL_HINT = "pip install transformers accelerate"
"""What to install for the checks that need transformers (until hfconv[transformers] is published)."""


def require_modules(what: str, modules: tuple[str, ...]) -> None:
    """A check the user asked for must be able to run: each module must import (exit 2 naming what
    to install, not an info finding and exit 0).

    transformers' top-level import is lazy (no torch); the Hub is set offline before it, as
    hfconv never downloads anything on behalf of a folder.
    """
    import importlib

    from ..render import escape_text

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    hint = INSTALL_HINT
    if not torch_installed():  # the light install: one command for both
        hint = INSTALL_HINT.replace("pip install ", "pip install torch ", 1)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - not installed, or an install that does not import
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
            raise click.UsageError(f"{what} needs {name}, which cannot be imported here ({escape_text(reason)[:300]}); "
                                   f"install it: {hint}") from None
    if not torch_installed():
        raise click.UsageError(f"{what} needs torch, which is not installed; install it: {TORCH_INSTALL_HINT}")


TORCH_INSTALL_HINT = "pip install torch"
"""What to install for the commands that need torch (``load-test``, ``convert --dtype``): the
light install (``pip install .``, ``hfconv[torch]`` once published) has no torch."""


class Unavailable(click.ClickException):
    """A command or option that cannot run here (a missing dependency): one line, exit 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"hfconv: error: {self.format_message()}", err=True)


def torch_installed() -> bool:
    """Whether torch can be found (looked up, not imported: that costs a second or two)."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # an import system that refuses it
        return False


def require_torch(what: str) -> None:
    """``what`` needs torch: exit 2 with one line naming the install command when it is not
    installed (a refused folder still costs no torch import). Nothing has been read or written yet."""
    if not torch_installed():
        raise Unavailable(f"{what} needs torch, which is not installed; install it: {TORCH_INSTALL_HINT}")


def check_output(output: str | None, reads: tuple[str, ...] | list[str] = (),
                 writes: tuple[str, ...] | list[str] = ()) -> None:
    """Refuse an --output FILE that cannot be written or must not be, before any work (exit 2).

    Its folder (after symlinks) must exist; it must not lie inside a folder (or be a file) the
    command reads (``validate DIR -o DIR/config.json`` would overwrite the model's config with
    the report), nor inside a folder the command replaces (convert's DST).
    """
    if output is None:
        return
    from ..render import escape_text

    shown = escape_text(output)
    target = os.path.realpath(output)
    if os.path.isdir(target):
        raise click.UsageError(f"--output {shown} is a folder; give a file name")
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise click.UsageError(f"--output {shown}: the folder {escape_text(parent)} does not exist; create it "
                               "first or write the report elsewhere")
    for kind, paths in (("reads", reads), ("replaces", writes)):
        for path in paths:
            root = os.path.realpath(path)
            if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
                raise click.UsageError(f"--output {shown} is inside {escape_text(path)}, which this command {kind}; "
                                       "write the report elsewhere")


def emit(text: str, output: str | None, raw: bool = False) -> None:
    """Write the report to --output FILE or stdout.

    A regular FILE (or a new one) is replaced atomically (a temporary file beside it, renamed
    over it, with the old file's mode); a symlink is written through, to the file it names; an
    existing FIFO, character device or socket is written into, as a shell redirection does
    (``-o /dev/null`` stays a device). Characters no UTF-8 output can hold (lone surrogates) and,
    unless ``raw``, control characters other than newline and tab are written as ``\\uXXXX``
    escapes, which read the same in text and are valid inside JSON strings.
    """
    if not raw:
        text = _LAST_RESORT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    data = text.encode("utf-8", "backslashreplace")
    if not output:
        stream = sys.stdout
        if stream is None:  # no stdout at all (closed by the caller): nowhere to write
            return
        buffer = getattr(stream, "buffer", None)
        if buffer is None:  # a text-only stream (embedded use)
            stream.write(data.decode("utf-8"))
        else:
            stream.flush()
            buffer.write(data)
        stream.flush()
        return
    write_file(output, data)


_LAST_RESORT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def write_file(output: str, data: bytes) -> None:
    import stat
    import tempfile

    target = os.path.realpath(output)  # through symlinks: the file the link names is written
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        # A FIFO, a device, a socket: write into it; replacing it would turn /dev/null into a file.
        try:
            with open(target, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror or str(exc), output) from None
            raise
        return
    folder, name = os.path.split(target)
    tmp = ""
    try:
        with uninterrupted():  # created and recorded for the clean-up below in one step
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        with open(fd, "wb") as handle:  # the descriptor adopted in C: no window to close it twice
            handle.write(data)
            handle.flush()
            if st is not None:
                os.fchmod(handle.fileno(), stat.S_IMODE(st.st_mode))
                if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
                    os.fchown(handle.fileno(), st.st_uid, st.st_gid)
            else:
                os.fchmod(handle.fileno(), 0o666 & ~umask())
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError) and exc.filename is None:  # a write: say which file
            raise OSError(exc.errno, exc.strerror or str(exc), output) from None
        raise


def resolve_folder(path: str) -> str:
    """The model folder PATH names (a folder, or a repo id in the local Hub cache), or a usage error
    (exit 2) in the library's wording (:func:`hfconv.folder_check.resolve_folder`), escaped."""
    from ..errors import UsageError
    from ..folder_check import resolve_folder as library_resolve
    from ..render import escape_text

    try:
        return library_resolve(path)
    except UsageError as exc:
        raise click.UsageError(escape_text(str(exc))) from None


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the file(s) it names and the system's reason."""
    from ..render import escape_text

    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [escape_text(os.fsdecode(n) if isinstance(n, bytes) else str(n))
             for n in (exc.filename, exc.filename2) if n is not None]
    where = f"{' -> '.join(names)}: " if names else ""
    return f"hfconv: error: {where}{escape_text(reason)}"


# --- the error map: a library exception no command rendered itself -> message and exit code ----

ERROR_MAP: dict[type[BaseException], tuple[Callable[[Any], str], int]] = {
    OSError: (os_error_line, 1),  # a full disk, a file that vanished, a permission: never a traceback
}
"""Exception type -> (its one-line message, the exit code). A :class:`~hfconv.errors.UsageError`
is not here: click words it, with the usage line (:func:`usage_errors`, exit 2)."""


def describe_error(exc: BaseException) -> tuple[str, int] | None:
    """The message and exit code for ``exc`` (the nearest type in :data:`ERROR_MAP`), or None."""
    for kind in type(exc).__mro__:
        if kind in ERROR_MAP:
            words, code = ERROR_MAP[kind]
            return words(exc), code
    return None


# --- signals: SIGINT / SIGTERM end any command with 130 / 143 ----------------------------------

EXIT_FOR_SIGNAL: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}
received_signals: list[int] = []
"""The signals :func:`on_signal` caught, in order (the exit code follows the first)."""


def on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGINT / SIGTERM: unwind as a Ctrl-C does (temporary files and folders are removed on the
    way) and remember which signal, for the exit code; further signals are ignored so that the
    clean-up is not cut short. Inside a step that must not be cut in two (a rename and its
    roll-back, a temporary file and its clean-up: :func:`hfconv.interrupts.uninterrupted`), the
    interrupt is raised when the step ends."""
    received_signals.append(signum)
    for other in EXIT_FOR_SIGNAL:
        try:
            signal.signal(other, signal.SIG_IGN)
        except (ValueError, OSError):
            pass
    if deferring():
        return
    raise KeyboardInterrupt


# --- progress on stderr -------------------------------------------------------------------------

def tqdm_bar(desc: str) -> Any:
    """A tqdm bar over bytes on stderr (a terminal), its total set by the first update."""
    from tqdm import tqdm

    return tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr,
                desc=desc, dynamic_ncols=True, leave=False)


def progress_bar(quiet: bool, verify: bool, what: str = "convert") -> tuple[Any, Callable[[int, int], None] | None]:
    """Progress on stderr: a tqdm bar over the model's bytes on a terminal, else (CI logs) a
    line every HFCONV_PROGRESS_INTERVAL seconds (default 10); nothing when quiet.

    With verification each byte counts half when written and half when compared, so the
    total is the model's bytes and 100% means written and verified.
    """
    if quiet:
        return None, None
    return byte_progress(f"{what} (write+verify)" if verify else f"{what} (write)")


def byte_progress(desc: str) -> tuple[Any, Callable[[int, int], None]]:
    """A tqdm bar over bytes labelled ``desc`` on a terminal, else (CI logs) a line every
    HFCONV_PROGRESS_INTERVAL seconds; returns the object to close and its update(done, total)."""
    if not sys.stderr.isatty():
        lines = ProgressLines(desc)
        return lines, lines.update
    bar = tqdm_bar(desc)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return bar, update


class ProgressLines:
    """Progress for a log (stderr not a terminal): one line every ``interval`` seconds with
    the bytes done, the percentage and the rate, so a long run in CI is seen to be alive."""

    def __init__(self, desc: str, interval: float | None = None) -> None:
        import time

        if interval is None:
            try:
                interval = float(os.environ.get("HFCONV_PROGRESS_INTERVAL", "10"))
            except ValueError:
                interval = 10.0
        self.desc = desc
        self.interval = max(interval, 0.0)
        self._clock = time.monotonic
        self.started = self._clock()
        self.last = self.started
        self.done = 0
        self.total = 0

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        now = self._clock()
        if now - self.last >= self.interval and done < total:
            self.last = now
            self.write(now)

    def write(self, now: float) -> None:
        from ..units import human_bytes

        elapsed = max(now - self.started, 1e-9)
        percent = f"{100 * self.done / self.total:.0f}%" if self.total else "?%"
        print(f"{self.desc}: {human_bytes(self.done)} of {human_bytes(self.total)} ({percent}), "
              f"{human_bytes(self.done / elapsed)}/s, {elapsed:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


# --- options several commands take, declared once -------------------------------------------------

def format_option(choices: Sequence[str], help: str) -> Callable[[F], F]:
    """``--format``: one of ``choices``, text by default (the value arrives as ``fmt``)."""
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default="text", show_default=True,
                        help=help)


def output_option(help: str) -> Callable[[F], F]:
    """``--output`` / ``-o FILE``: checked before any work by :func:`check_output`, written by :func:`emit`."""
    return click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None, help=help)


def codes_option(name: str, help: str) -> Callable[[F], F]:
    """``--select`` / ``--ignore``: finding codes or prefixes, repeatable and comma-separated
    (checked by :func:`checked_codes`)."""
    return click.option(name, multiple=True, metavar="CODES", help=help)


DTYPE_HELP = "keep, bfloat16 (bf16), float16 (fp16, half) or float32 (fp32, float)"
"""The names ``--dtype`` takes (the library's one list: :func:`hfconv.dtypes.canonical_dtype`)."""


def _dtype_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    from ..dtypes import canonical_dtype
    from ..errors import UsageError

    try:
        return canonical_dtype(value)
    except UsageError:
        raise click.BadParameter(f"{value!r} is not a dtype: use {DTYPE_HELP}") from None


def dtype_option(help: str) -> Callable[[F], F]:
    """``--dtype`` of convert and load-test: keep by default, any name of :data:`DTYPE_HELP`,
    given to the command as its canonical name."""
    return click.option("--dtype", default="keep", show_default=True, metavar="DTYPE", callback=_dtype_value,
                        help=help)


def check_size(value: str, option: str) -> None:
    """A SIZE option (``5GB``, ``5GiB``, ``500MB``, bytes): one the library cannot parse is exit 2,
    before any work."""
    from ..units import parse_size

    try:
        parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


class ProcessExit:
    """Whether this process ends with the command: set by the console script (``run()``), which
    leaves without a teardown; not under click's test runner or a caller embedding ``main``."""

    follows_command = False


def pause_gc_for_good() -> None:
    """Turn the cyclic GC off for the rest of the process, when the process ends with the command.

    The library pauses the GC while it reads and checks a folder; re-enabled, it would walk the
    100,000s of tensor records a report keeps (for its pictures) once more, only for the process
    to end. Elsewhere (tests, embedding callers) the GC is left as it is.
    """
    if ProcessExit.follows_command:
        gc.disable()
