"""The ``hfconv`` command: parses options, calls the library, renders, sets the exit code.

Exit codes (all commands): 0 success, 1 problems found / job failed verifiably, 2 could not run.
"""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import click

from .cli_common import (
    CONTEXT_SETTINGS,
    check_output,
    checked_codes,
    emit,
    known_codes,  # noqa: F401 - hfconv.cli.known_codes, as before
    os_error_line,
    require_modules,
    resolve_folder,
)
from .cli_convert import convert as convert_command
from .cli_load import load_test as load_test_command


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

    selected, ignored = checked_codes(select, "--select"), checked_codes(ignore, "--ignore")
    folders = [resolve_folder(p) for p in paths]
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
    emit(text, output, raw=colour)
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

    folder = resolve_folder(path)
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
    emit(text, output)


main.add_command(convert_command)
main.add_command(load_test_command)


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
