"""``hfconv fix``: calls the fix library, renders (with :mod:`hfconv.render.fix`), sets the exit code."""

from __future__ import annotations

import sys

import click

from ._common import CONTEXT_SETTINGS, check_output, emit, format_option, output_option, resolve_folder, usage_errors

__all__ = ["fix_command"]


@click.command("fix", context_settings=CONTEXT_SETTINGS)
@click.argument("path", metavar="PATH")
@click.option("--unsafe-fixes", is_flag=True,
              help="Also delete stale shards and training leftovers, rename old-style shard names (-1-of-3) to "
                   "the Hub's (-00001-of-00003), align generation_config.json's eos/pad/bos ids with the "
                   "tokenizer's and add the chat template's turn-end id to eos_token_id.")
@click.option("--diff", "dry_run", is_flag=True,
              help="Print what would change (a unified diff per JSON file, a line per header rewrite, deletion "
                   "and rename) and change nothing; exit 1 if something would change.")
@format_option(["text", "json"], help="text for people, json for programs.")
@output_option(help="Write the report to FILE instead of stdout.")
def fix_command(path: str, unsafe_fixes: bool, dry_run: bool, fmt: str, output: str | None) -> None:
    """Fix what is mechanical and provable from the folder itself, each file atomically.

    Safe fixes: the index regenerated from the tensors the shards hold (or written where
    numbered shards have none), "format": "pt" added to safetensors __metadata__ (tensor
    bytes copied and compared), config.json's dtype set to the dtype every floating tensor is
    stored in, "tokenizer_file": null removed beside tokenizer.json, duplicate JSON keys
    written once where every copy holds the same value. Shapes, layer counts, vocabulary sizes
    and weight values are never changed. The folder is validated again afterwards.

    \b
    Examples:
      hfconv fix ./my-model --diff             # what would change; nothing is written
      hfconv fix ./my-model                    # safe fixes
      hfconv fix ./my-model --unsafe-fixes     # also deletions, renames, token ids

    Exit code: 0 no error remains (--diff: nothing would change), 1 errors remain, a fix failed
    or the folder was refused (hostile pickle, a path or symlink leading out of it; --diff:
    something would change), 2 could not run, 130/143 interrupted (every file old or new).
    """
    from ..fixing import fix as run_fix
    from ..render import fix as reports

    folder = resolve_folder(path)
    check_output(output, reads=[folder])
    with usage_errors():
        result = run_fix(folder, unsafe_fixes=unsafe_fixes, dry_run=dry_run)
    if fmt == "json":
        text = reports.render_json(result)
    else:
        text = reports.render_diff(result) if dry_run else reports.render_text(result)
    emit(text, output)
    sys.exit(result.exit_code)
