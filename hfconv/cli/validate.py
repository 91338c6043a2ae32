"""``hfconv validate``: checks model folders (several, or every one under a tree, in parallel),
renders the reports in the asked format, sets the exit code."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from ._common import (
    CONTEXT_SETTINGS,
    check_output,
    checked_codes,
    codes_option,
    emit,
    flag_findings,
    format_option,
    output_option,
    pause_gc_for_good,
    require_modules,
    resolve_folder,
    usage_errors,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..config_file import Settings
    from ..report import Report

__all__ = ["validate_command"]

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


@click.command("validate", context_settings=CONTEXT_SETTINGS)
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@format_option(["text", "json", "github", "sarif", "html"],
               help="Report format: text for people, json per the contract, "
               "github for workflow annotations, sarif (2.1.0) for GitHub code scanning and other "
               "SARIF viewers, html for one self-contained page.")
@output_option(help="Write the report to FILE instead of stdout.")
@click.option("--strict/--no-strict", default=None,
              help="Warnings fail the folder too (exit 1); --no-strict overrides a config file's strict = true.")
@codes_option("--select", help="Only report these codes or prefixes, e.g. HFC3 or HFC301,HFC302.")
@codes_option("--ignore", help="Do not report these codes or prefixes.")
@click.option("--trust-remote-code", is_flag=True,
              help="Import and run the folder's own Python code (its custom tokenizer and model classes, "
              "as from_pretrained(trust_remote_code=True) would) in a separate process with time and memory "
              "caps. That process is not a sandbox: the code runs with your user's rights (files, network). "
              "Only for folders whose code you trust.")
@click.option("--reference", type=click.Choice(["auto", "rules", "transformers"]), default="auto",
              show_default=True, help="Where expected tensor shapes come from. rules: hfconv's own shape-rule "
              "table (no transformers needed). transformers: the model class of the installed transformers, "
              "built from config.json in a subprocess (no weights). auto: the rule table first, then the tables "
              "generated from transformers (no import); transformers for architectures neither covers (when it "
              "is installed; otherwise only the embedding sizes and layer count are checked).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Re-check every tensor's dtype, shape and sha256 against the manifest written by "
              "`hfconv convert --manifest FILE` (reads tensor bytes).")
@click.option("--deep", is_flag=True,
              help="Also read every tensor byte once: CRC-32 of each .bin storage (corruption torch.load "
              "never notices), NaN and infinite values in every float tensor. Reads the whole model.")
@click.option("--recursive", "-r", is_flag=True, help="Validate every model folder under each PATH.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Validate this many folders in parallel.")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="Read settings from FILE (an hfconv.toml, or a pyproject.toml with [tool.hfconv]) instead of "
              "looking for one in each folder and above it up to its repository root.")
@click.option("--no-config", is_flag=True,
              help="Ignore config files (for a folder you did not write: its own hfconv.toml could ignore codes).")
def validate_command(paths: tuple[str, ...], fmt: str, output: str | None, strict: bool | None,
                     select: tuple[str, ...], ignore: tuple[str, ...], trust_remote_code: bool, reference: str,
                     manifest: str | None, deep: bool, recursive: bool, jobs: int, config: str | None,
                     no_config: bool) -> None:
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

    Settings (select, ignore, strict, reference, per-file-ignores) are read from [tool.hfconv]
    in a pyproject.toml or from an hfconv.toml, in the folder or above it up to its repository
    root; options given here override them.

    Exit code: 0 no errors (with --strict: no warnings either), 1 problems found, 2 could not run.
    Every finding code is explained, with its fix, by `hfconv explain CODE` and in the README.
    """
    from ..config_file import validate_configured

    pause_gc_for_good()

    # 1. Check the options and the folders before any work.
    selected, ignored = checked_codes(select, "--select"), checked_codes(ignore, "--ignore")
    folders = [resolve_folder(p) for p in paths]
    check_output(output, reads=[*folders, *([manifest] if manifest else [])])
    several = recursive or len(paths) > 1
    if recursive:
        folders = [sub for folder in folders for sub in (_find_model_folders(folder) or [folder])]
    given_reference = None if click.get_current_context().get_parameter_source(
        "reference") is ParameterSource.DEFAULT else reference
    settings = {folder: found.override(select=selected or None, ignore=ignored or None, strict=strict,
                                       reference=given_reference)
                for folder, found in _config_settings(folders, config, no_config).items()}
    if any(s.reference == "transformers" for s in settings.values()):
        require_modules("--reference transformers", ("transformers",))

    # 2. Validate every folder, ``jobs`` at a time; the findings name the CLI's flags, not the library's keywords.
    def one(folder: str) -> Report:
        report = validate_configured(folder, settings[folder], trust_remote_code=trust_remote_code,
                                     manifest=manifest, deep=deep)
        return dataclasses.replace(report, findings=flag_findings(report.findings))

    # One at a time in this thread (no pool to import; an interrupt unwinds the check, which kills
    # its subprocesses on the way), several at once in a pool of threads.
    if jobs == 1 or len(folders) == 1:
        reports = [one(folder) for folder in folders]
    else:
        from concurrent.futures import ThreadPoolExecutor  # (and logging): only for parallel folders

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                reports = list(pool.map(one, folders))
            except BaseException:  # interrupted (or failed): the folders not started are not validated
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    # 3. Write the reports, say the verdict on stderr when they are not on the terminal, exit.
    _write_reports(reports, fmt, output, several)
    sys.exit(0 if all(r.ok for r in reports) else 1)


def _config_settings(folders: list[str], config: str | None, no_config: bool) -> dict[str, Settings]:
    """Each folder's settings from its config file (or from --config FILE, or none with --no-config);
    each file used is named on stderr, once."""
    from ..config_file import Settings, load_settings, read_config
    from ..render import escape_text

    with usage_errors():
        if no_config:
            found = {folder: Settings() for folder in folders}
        elif config is not None:
            shared = read_config(config)
            found = {folder: shared for folder in folders}
        else:
            found = {folder: load_settings(folder) for folder in folders}
    for source in dict.fromkeys(s.source for s in found.values() if s.source is not None):
        click.echo(f"hfconv: settings from {escape_text(source)}", err=True)
    return found


def _write_reports(reports: list[Report], fmt: str, output: str | None, several: bool) -> None:
    from ..render import RENDERERS, escape_text, render_json, render_text

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
