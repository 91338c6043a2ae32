"""What every ``hfconv`` subcommand shares: a leaf of the CLI (``cli``, ``cli_convert`` and
``cli_load`` import it; it imports none of them).

Writing the report (:func:`emit`), the PATH and ``--output`` checks, ``--select``/``--ignore``
code lists, the modules an option needs, and the library's :class:`~hfconv.errors.UsageError`
turned into click's (exit 2).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

import click

from .discovery import resolve_model_path

__all__ = ["CONTEXT_SETTINGS", "INSTALL_HINT", "check_output", "checked_codes", "describe_kind", "emit",
           "known_codes", "os_error_line", "require_modules", "resolve_folder", "split_codes", "usage_errors",
           "write_file"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
"""click's settings for every command: ``-h`` as well as ``--help``, help text up to 100 columns."""


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """The library's UsageError (a bad path or option, found while running) as click's: exit 2
    with the message, as an option click itself refused."""
    from .errors import UsageError

    try:
        yield
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None


def split_codes(values: tuple[str, ...]) -> list[str]:
    return [code.strip().upper() for value in values for code in value.split(",") if code.strip()]


def known_codes() -> frozenset[str]:
    """Every registered finding code: the registry is filled by the modules that raise them, so
    import each of those (validation imports every check; conversion and loading register the
    HFC7xx codes). None of them imports torch."""
    from . import conversion, loading, validation  # noqa: F401 - imported for their register() calls
    from .findings import REGISTRY

    return frozenset(REGISTRY)


def checked_codes(values: tuple[str, ...], option: str) -> list[str]:
    """The codes or prefixes of --select/--ignore; one that matches no registered code is a usage
    error (a typo would otherwise silently select nothing, and a gate would say OK)."""
    codes = split_codes(values)
    if not codes:
        return codes
    known = known_codes()
    given = [code.strip() for value in values for code in value.split(",") if code.strip()]
    unknown = [name for name, code in zip(given, codes) if not any(k.startswith(code) for k in known)]
    if unknown:
        from .render import escape_text

        names = ", ".join(escape_text(code) for code in unknown)
        raise click.UsageError(f"{option}: {names} {'is' if len(unknown) == 1 else 'are'} not a finding code "
                               "or a prefix of one (codes are HFC followed by three digits, e.g. HFC3 or "
                               "HFC301; the README lists them all)")
    return codes


INSTALL_HINT = "pip install transformers accelerate"
"""What to install for the checks that need transformers (until hfconv[transformers] is published)."""


def require_modules(what: str, modules: tuple[str, ...]) -> None:
    """A check the user asked for must be able to run: each module must import (exit 2 naming what
    to install, not an info finding and exit 0).

    transformers' top-level import is lazy (no torch); the Hub is set offline before it, as
    hfconv never downloads anything on behalf of a folder.
    """
    import importlib
    import importlib.util

    from .render import escape_text

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - not installed, or an install that does not import
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
            raise click.UsageError(f"{what} needs {name}, which cannot be imported here ({escape_text(reason)[:300]}); "
                                   f"install it: {INSTALL_HINT}") from None
    if importlib.util.find_spec("torch") is None:
        raise click.UsageError(f"{what} needs torch, which is not installed; install it: pip install torch")


def describe_kind(path: str) -> str | None:
    """'a FIFO', 'a character device', ... for a path that exists and is neither a folder nor a regular file."""
    from .fsutil import special_kind

    try:
        return special_kind(os.stat(path).st_mode)
    except OSError:
        return None


def check_output(output: str | None, reads: tuple[str, ...] | list[str] = (),
                 writes: tuple[str, ...] | list[str] = ()) -> None:
    """Refuse an --output FILE that cannot be written or must not be, before any work (exit 2).

    Its folder (after symlinks) must exist; it must not lie inside a folder (or be a file) the
    command reads (``validate DIR -o DIR/config.json`` would overwrite the model's config with
    the report), nor inside a folder the command replaces (convert's DST).
    """
    if output is None:
        return
    from .render import escape_text

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
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if st is not None:
                os.fchmod(handle.fileno(), stat.S_IMODE(st.st_mode))
                if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
                    os.fchown(handle.fileno(), st.st_uid, st.st_gid)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(handle.fileno(), 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:  # a write: say which file
            raise OSError(exc.errno, exc.strerror or str(exc), output) from None
        raise


def resolve_folder(path: str) -> str:
    from .render import escape_text

    resolved = resolve_model_path(path)
    shown = escape_text(path)
    if not os.path.exists(resolved):
        if os.path.islink(resolved):
            raise click.UsageError(f"{shown} is a symlink to something that does not exist")
        raise click.UsageError(f"{shown} does not exist (and is not a repo id in the local Hub cache)")
    if not os.path.isdir(resolved):
        kind = describe_kind(resolved)
        if kind:
            raise click.UsageError(f"{shown} is not a folder ({kind})")
        raise click.UsageError(f"{shown} is a file; give the model folder that contains it")
    return resolved


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the file(s) it names and the system's reason."""
    from .render import escape_text

    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [escape_text(os.fsdecode(n) if isinstance(n, bytes) else str(n))
             for n in (exc.filename, exc.filename2) if n is not None]
    where = f"{' -> '.join(names)}: " if names else ""
    return f"hfconv: error: {where}{escape_text(reason)}"
