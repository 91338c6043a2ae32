"""``hfconv inspect``: summarises a model folder (format, shards, tensors, dtypes, bytes)."""

from __future__ import annotations

import dataclasses
import sys

import click

from ._common import (
    CONTEXT_SETTINGS,
    check_output,
    emit,
    format_option,
    output_option,
    pause_gc_for_good,
    resolve_folder,
)

__all__ = ["inspect_command"]


@click.command("inspect", context_settings=CONTEXT_SETTINGS)
@click.argument("path", metavar="PATH")
@format_option(["text", "json", "html"], help="text for people, json for programs, html for one self-contained page.")
@output_option(help="Write to FILE instead of stdout.")
@click.option("--tensors", "list_tensors", is_flag=True,
              help="Also list every tensor of the weights loaders read: name, shape, dtype, shard, bytes "
              "(JSON: tensor_list).")
def inspect_command(path: str, fmt: str, output: str | None, list_tensors: bool) -> None:
    """Summarise a model folder: format, shards, tensors, parameters, dtypes, bytes per shard.

    \b
    Examples:
      hfconv inspect ./my-model --format json
      hfconv inspect ./my-model --tensors        # every tensor: name, shape, dtype, shard, bytes
      hfconv inspect ./my-model --format html -o inspect.html
    """
    from ..discovery import hub_snapshot_name
    from ..inspection import inspect as run_inspect
    from ..render import dumps_json, escape_text

    folder = resolve_folder(path)
    check_output(output, reads=[folder])
    pause_gc_for_good()
    result = run_inspect(folder, tensors=list_tensors)
    result = dataclasses.replace(result, path=hub_snapshot_name(folder) or result.path)  # a Hub repo: org/name@rev
    if result.empty:
        click.echo(f"inspect {escape_text(path)}: no weights and no config.json were read (an empty folder, or "
                   "only files that cannot be read); not a model folder (hfconv validate says why)", err=True)
        sys.exit(1)
    if fmt == "html":
        from ..render.html import render_inspect_html

        text = render_inspect_html(result)
    else:
        from ..render.text import render_inspection_text

        # The shard bar is for a terminal: drawn when stdout is one, never into an --output file.
        text = render_inspection_text(result, bars=False if output else None) if fmt == "text" else \
            dumps_json(result.to_json())
    emit(text, output)
