"""The ``hfconv`` command: parses options, calls the library, renders, sets the exit code.

Exit codes (all commands): 0 success, 1 problems found / job failed verifiably, 2 could not run.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import click

from .discovery import resolve_model_path

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _split_codes(values: tuple[str, ...]) -> list[str]:
    return [code.strip().upper() for value in values for code in value.split(",") if code.strip()]


def known_codes() -> frozenset[str]:
    """Every registered finding code: the registry is filled by the modules that raise them, so
    import each of those (validation imports every check; conversion and loading register the
    HFC7xx codes). None of them imports torch."""
    from . import conversion, loading, validation  # noqa: F401 - imported for their register() calls
    from .findings import REGISTRY

    return frozenset(REGISTRY)


def _checked_codes(values: tuple[str, ...], option: str) -> list[str]:
    """The codes or prefixes of --select/--ignore; one that matches no registered code is a usage
    error (a typo would otherwise silently select nothing, and a gate would say OK)."""
    codes = _split_codes(values)
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


def _describe_kind(path: str) -> str | None:
    """'a FIFO', 'a character device', ... for a path that exists and is neither a folder nor a regular file."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
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


def _emit(text: str, output: str | None, raw: bool = False) -> None:
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
    _write_file(output, data)


_LAST_RESORT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _write_file(output: str, data: bytes) -> None:
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


def _resolve_folder(path: str) -> str:
    from .render import escape_text

    resolved = resolve_model_path(path)
    shown = escape_text(path)
    if not os.path.exists(resolved):
        if os.path.islink(resolved):
            raise click.UsageError(f"{shown} is a symlink to something that does not exist")
        raise click.UsageError(f"{shown} does not exist (and is not a repo id in the local Hub cache)")
    if not os.path.isdir(resolved):
        kind = _describe_kind(resolved)
        if kind:
            raise click.UsageError(f"{shown} is not a folder ({kind})")
        raise click.UsageError(f"{shown} is a file; give the model folder that contains it")
    return resolved


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="hfconv")
def main() -> None:
    """Validate, convert and load-test Hugging Face model folders, without trusting them.

    \b
    Examples:
      hfconv validate ./my-model                 # exit 0 when the folder will load
      hfconv validate ./my-model --format github # annotations in a GitHub Actions step
      hfconv inspect ./my-model                  # format, shards, tensors, dtypes, bytes

    Nothing in a model folder is ever executed: pickles are read by a restricted reader and
    custom code is only imported with --trust-remote-code.
    """


_MODEL_FILES = frozenset(("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                          "pytorch_model.bin.index.json", "config.json"))


def _find_model_folders(root: str) -> list[str]:
    """Folders under root holding a config.json or weight files (for --recursive), in sorted order.

    Walked with an explicit stack, not recursion (a tree thousands of folders deep is no
    RecursionError); symlinks to folders and hidden folders are not entered, and a folder that
    cannot be listed is skipped (validating it reports why).
    """
    found = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                names, subfolders = [], []
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    if is_dir:
                        if not entry.name.startswith("."):
                            subfolders.append(entry.path)
                    else:
                        names.append(entry.name)
        except OSError:
            continue
        if any(name in _MODEL_FILES for name in names) or any(
            n.endswith((".safetensors", ".bin")) and "-of-" in n for n in names
        ):
            found.append(folder)
        stack.extend(sorted(subfolders, reverse=True))  # popped in sorted order: a pre-order walk
    return found


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github", "sarif", "html"]), default="text",
              show_default=True, help="Report format: text for people, json per the contract, "
              "github for workflow annotations, sarif (2.1.0) for GitHub code scanning and other "
              "SARIF viewers, html for one self-contained page.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the report to FILE instead of stdout.")
@click.option("--strict", is_flag=True, help="Warnings fail the folder too (exit 1).")
@click.option("--select", multiple=True, metavar="CODES",
              help="Only report these codes or prefixes, e.g. HFC3 or HFC301,HFC302.")
@click.option("--ignore", multiple=True, metavar="CODES", help="Do not report these codes or prefixes.")
@click.option("--trust-remote-code", is_flag=True,
              help="Import and run the folder's own Python code (its custom tokenizer and model classes, "
              "as from_pretrained(trust_remote_code=True) would) in a separate process with time and memory "
              "caps. That process is not a sandbox: the code runs with your user's rights (files, network). "
              "Only for folders whose code you trust.")
@click.option("--reference", type=click.Choice(["auto", "rules", "transformers"]), default="auto",
              show_default=True, help="Where expected tensor shapes come from. rules: hfconv's own shape-rule "
              "table (no transformers needed). transformers: the model class of the installed transformers, "
              "built from config.json in a subprocess (no weights). auto: the rule table first; transformers "
              "for architectures the table does not cover (when it is installed; otherwise only the embedding "
              "sizes and layer count are checked).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Re-check every tensor's dtype, shape and sha256 against the manifest written by "
              "`hfconv convert --manifest FILE` (reads tensor bytes).")
@click.option("--deep", is_flag=True,
              help="Also read every tensor byte once: CRC-32 of each .bin storage (corruption torch.load "
              "never notices), NaN and infinite values in every float tensor. Reads the whole model.")
@click.option("--recursive", "-r", is_flag=True, help="Validate every model folder under each PATH.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Validate this many folders in parallel.")
def validate(paths, fmt, output, strict, select, ignore, trust_remote_code, reference, manifest, deep, recursive,
             jobs):
    """Check that model folders will load, and load correctly.

    PATH is a model folder (or an org/name repo id in the local Hub cache). hfconv reads
    headers and pickle metadata only, never tensor bytes (unless --deep or --manifest), and
    proves that the index and the shards agree, that every file parses, that shapes match the
    config, that tokenizer and special tokens agree, and that nothing in the folder would run
    code.

    \b
    Examples:
      hfconv validate ./my-model
      hfconv validate ./a ./b --format json > report.json
      hfconv validate ./my-model --strict --ignore HFC007
      hfconv validate ./models --recursive --format github
      hfconv validate ./converted --manifest manifest.json
      hfconv validate ./my-model --deep          # also read every byte: CRC, NaN, inf

    Exit code: 0 no errors (with --strict: no warnings either), 1 problems found, 2 could not run.
    Every finding code is explained, with its fix, in the README.
    """
    from .render import RENDERERS, escape_text, render_json, render_text
    from .validation import validate as run_validate

    selected, ignored = _checked_codes(select, "--select"), _checked_codes(ignore, "--ignore")
    folders = [_resolve_folder(p) for p in paths]
    check_output(output, reads=[*folders, *([manifest] if manifest else [])])
    if reference == "transformers":
        require_modules("--reference transformers", ("transformers",))
    several = recursive or len(paths) > 1
    if recursive:
        folders = [sub for folder in folders for sub in (_find_model_folders(folder) or [folder])]

    def one(folder: str):
        return run_validate(folder, strict=strict, select=selected, ignore=ignored,
                            trust_remote_code=trust_remote_code, reference=reference, manifest=manifest,
                            deep=deep)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            reports = list(pool.map(one, folders))
        except BaseException:  # interrupted (or failed): the folders not started are not validated
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    colour = False
    if fmt == "text":
        colour = output is None and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        text = render_text(reports, colour=colour, totals=several)
    elif fmt == "json":
        text = render_json(reports, array=several)
    else:
        text = RENDERERS[fmt](reports)
    _emit(text, output, raw=colour)
    failed = [r for r in reports if not r.ok]
    if failed and (output is not None or fmt != "text"):  # the report is not on the terminal: say the verdict there
        if len(reports) == 1:
            report = reports[0]
            click.echo(f"validate {escape_text(report.path)}: FAILED ({report.errors} error(s), "
                       f"{report.warnings} warning(s))", err=True)
        else:
            click.echo(f"validate: FAILED ({len(failed)} of {len(reports)} folders failed)", err=True)
    sys.exit(0 if not failed else 1)


@main.command()
@click.argument("path", metavar="PATH")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True,
              help="text for people, json for programs, html for one self-contained page.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to FILE instead of stdout.")
@click.option("--tensors", "list_tensors", is_flag=True,
              help="Also list every tensor of the weights loaders read: name, shape, dtype, shard, bytes "
              "(JSON: tensor_list).")
def inspect(path, fmt, output, list_tensors):
    """Summarise a model folder: format, shards, tensors, parameters, dtypes, bytes per shard.

    \b
    Examples:
      hfconv inspect ./my-model --format json
      hfconv inspect ./my-model --tensors        # every tensor: name, shape, dtype, shard, bytes
      hfconv inspect ./my-model --format html -o inspect.html
    """
    from .inspection import inspect as run_inspect
    from .render import dumps_json, escape_text

    folder = _resolve_folder(path)
    check_output(output, reads=[folder])
    result = run_inspect(folder, tensors=list_tensors)
    if result.empty:
        click.echo(f"inspect {escape_text(path)}: no weights and no config.json were read (an empty folder, or "
                   "only files that cannot be read); not a model folder (hfconv validate says why)", err=True)
        sys.exit(1)
    if fmt == "html":
        from .render.html import render_inspect_html

        text = render_inspect_html(result)
    else:
        text = result.to_text() if fmt == "text" else dumps_json(result.to_json())
    _emit(text, output)


from .cli_convert import convert as _convert_command  # noqa: E402
main.add_command(_convert_command)
from .cli_load import load_test as _load_test_command  # noqa: E402
main.add_command(_load_test_command)


_EXIT_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
_interrupted: list[int] = []


def _on_signal(signum, frame):
    """SIGINT / SIGTERM: unwind as a Ctrl-C does (temporary files are removed on the way) and
    remember which signal, for the exit code; further signals are ignored so that the clean-up
    is not cut short. (``convert`` installs its own handler for the same contract.)"""
    _interrupted.append(signum)
    for other in _EXIT_FOR_SIGNAL:
        try:
            signal.signal(other, signal.SIG_IGN)
        except (ValueError, OSError):
            pass
    raise KeyboardInterrupt


def _install_signal_exits() -> None:
    for signum in _EXIT_FOR_SIGNAL:
        try:
            if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):
                signal.signal(signum, _on_signal)
        except (ValueError, OSError):  # not the main thread (embedded): keep what is there
            pass


def run() -> None:
    """The console script: :func:`main`, then a prompt exit once torch has been loaded.

    After the report is written and every output file closed, torch's interpreter teardown
    (its module graph, allocators, thread pools) still costs ~0.3 s of the wall time a user
    and a CI job wait for. Skip it: flush stdout and stderr and leave with the exit code.
    Commands that never import torch (validate, inspect) exit normally.

    SIGINT and SIGTERM end any command with exit code 130 / 143 (not click's 1, which a
    pipeline reads as "problems found"). An OSError that no command turned into a finding or a
    message (a full disk, a file that vanished, a permission) is one line naming the file and
    the system's reason, exit 1: never a traceback.
    """
    _install_signal_exits()
    try:
        main.main(prog_name="hfconv")
    except SystemExit as exc:
        code = exc.code
        if _interrupted and code not in tuple(_EXIT_FOR_SIGNAL.values()):
            name = signal.Signals(_interrupted[0]).name
            try:
                sys.stderr.write(f"hfconv: interrupted ({name}); nothing partial was written\n")
            except (OSError, ValueError):
                pass
            code = _EXIT_FOR_SIGNAL[_interrupted[0]]
        if "torch" not in sys.modules or not isinstance(code, (int, type(None))):
            if code is exc.code:
                raise
            sys.exit(code)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed pipe: let the normal exit report it
            raise SystemExit(code) from None
        os._exit(code or 0)
    except OSError as exc:
        _fail_on_os_error(exc)


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the file(s) it names and the system's reason."""
    from .render import escape_text

    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [escape_text(os.fsdecode(n) if isinstance(n, bytes) else str(n))
             for n in (exc.filename, exc.filename2) if n is not None]
    where = f"{' -> '.join(names)}: " if names else ""
    return f"hfconv: error: {where}{escape_text(reason)}"


def _fail_on_os_error(exc: OSError) -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    try:
        sys.stderr.write(os_error_line(exc) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    code = 1
    if "torch" in sys.modules:
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
