"""The ``hfconv`` command: parses options, calls the library, renders, sets the exit code.

Exit codes (all commands): 0 success, 1 problems found / job failed verifiably, 2 could not run.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import click

from .discovery import resolve_model_path

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _split_codes(values: tuple[str, ...]) -> list[str]:
    return [code.strip().upper() for value in values for code in value.split(",") if code.strip()]


def _emit(text: str, output: str | None) -> None:
    """Write the report to --output FILE (atomically) or stdout."""
    if output:
        tmp = f"{output}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, output)
    else:
        click.echo(text, nl=False)


def _resolve_folder(path: str) -> str:
    resolved = resolve_model_path(path)
    if not os.path.exists(resolved):
        raise click.UsageError(f"{path} does not exist (and is not a repo id in the local Hub cache)")
    if not os.path.isdir(resolved):
        raise click.UsageError(f"{path} is a file; give the model folder that contains it")
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


def _find_model_folders(root: str) -> list[str]:
    """Folders under root holding a config.json or weight files (for --recursive)."""
    found = []
    weight_names = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                    "pytorch_model.bin.index.json", "config.json")
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(name in filenames for name in weight_names) or any(
            n.endswith((".safetensors", ".bin")) and "-of-" in n for n in filenames
        ):
            found.append(dirpath)
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
              help="Allow importing the folder's custom tokenizer code (in a subprocess).")
@click.option("--reference", type=click.Choice(["auto", "rules", "transformers"]), default="auto",
              show_default=True, help="Where expected tensor shapes come from.")
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
    from .render import RENDERERS, render_text
    from .validation import validate as run_validate

    folders = [_resolve_folder(p) for p in paths]
    if recursive:
        folders = [sub for folder in folders for sub in (_find_model_folders(folder) or [folder])]

    def one(folder: str):
        return run_validate(folder, strict=strict, select=_split_codes(select), ignore=_split_codes(ignore),
                            trust_remote_code=trust_remote_code, reference=reference, manifest=manifest,
                            deep=deep)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        reports = list(pool.map(one, folders))
    if fmt == "text":
        colour = output is None and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        text = render_text(reports, colour=colour)
    else:
        text = RENDERERS[fmt](reports)
    _emit(text, output)
    sys.exit(0 if all(r.ok for r in reports) else 1)


@main.command()
@click.argument("path", metavar="PATH")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True,
              help="text for people, json for programs, html for one self-contained page.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to FILE instead of stdout.")
def inspect(path, fmt, output):
    """Summarise a model folder: format, shards, tensors, parameters, dtypes, bytes per shard.

    \b
    Examples:
      hfconv inspect ./my-model --format json
      hfconv inspect ./my-model --format html -o inspect.html
    """
    import json

    from .inspection import inspect as run_inspect

    result = run_inspect(_resolve_folder(path))
    if fmt == "html":
        from .render_html import render_inspect_html

        text = render_inspect_html(result)
    else:
        text = result.to_text() if fmt == "text" else json.dumps(result.to_json(), indent=2) + "\n"
    _emit(text, output)


from .cli_convert import convert as _convert_command  # noqa: E402
main.add_command(_convert_command)
from .cli_load import load_test as _load_test_command  # noqa: E402
main.add_command(_load_test_command)


def run() -> None:
    """The console script: :func:`main`, then a prompt exit once torch has been loaded.

    After the report is written and every output file closed, torch's interpreter teardown
    (its module graph, allocators, thread pools) still costs ~0.3 s of the wall time a user
    and a CI job wait for. Skip it: flush stdout and stderr and leave with the exit code.
    Commands that never import torch (validate, inspect) exit normally.
    """
    try:
        main.main(prog_name="hfconv")
    except SystemExit as exc:
        if "torch" not in sys.modules or not isinstance(exc.code, (int, type(None))):
            raise
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed pipe: let the normal exit report it
            raise exc from None
        os._exit(exc.code or 0)


if __name__ == "__main__":  # pragma: no cover
    run()
