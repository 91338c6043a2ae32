"""``hfconv diff A B``: fills the options, calls :func:`hfconv.comparison.diff`, renders (with
:mod:`hfconv.render.diff`), sets the exit code. Importing this module stays cheap: the
comparison library is imported when the command runs (never torch)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ._common import (
    CONTEXT_SETTINGS,
    byte_progress,
    check_output,
    emit,
    format_option,
    output_option,
    resolve_folder,
    usage_errors,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..comparison import DiffResult

__all__ = ["diff_command"]


@click.command("diff", context_settings=CONTEXT_SETTINGS)
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--headers-only", is_flag=True,
              help="Compare tensor names, dtypes and shapes only; read no tensor bytes.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@format_option(["text", "json", "html"],
               help="text for people, json for programs (schemas/diff.schema.json), html for one page with a "
                    "layer map coloured by how much each block changed.")
@output_option(help="Write the report to FILE instead of stdout.")
def diff_command(a: str, b: str, headers_only: bool, quiet: bool, fmt: str, output: str | None) -> None:
    """Compare two model folders tensor by tensor, and their metadata key by key.

    A and B are model folders (or repo ids in the local Hub cache), .bin or safetensors,
    single or sharded, in any combination. Every tensor name is reported as only in A, only
    in B, other dtype or shape, byte-identical, or different (with the largest absolute and
    the relative L2 difference for floating tensors); a cast between the folders (float32 in
    A, bfloat16 in B) is recognised: each tensor is compared after the same cast. config.json,
    generation_config.json, tokenizer_config.json and special_tokens_map.json are compared
    key by key, tokenizer.json's vocabulary and merges by content. Nothing is executed and
    nothing is written; each byte is read once.

    \b
    Examples:
      hfconv diff ./llama-bin ./llama-safetensors          # a conversion changed nothing?
      hfconv diff ./base ./finetuned --format html -o diff.html
      hfconv diff ./a ./b --headers-only --format json

    Exit code: 0 the weights are identical (metadata differences are listed), 1 they differ
    (or some could not be read), 2 could not run (A or B missing, bad option).
    """
    from ..comparison import diff as run_diff
    from ..render.diff import render_diff_html, render_diff_json, render_diff_text

    folder_a, folder_b = resolve_folder(a), resolve_folder(b)
    check_output(output, reads=[folder_a, folder_b])
    bar, update = (None, None) if headers_only or quiet else byte_progress("diff")
    try:
        with usage_errors():
            result = run_diff(folder_a, folder_b, headers_only=headers_only, progress=update)
    finally:
        if bar is not None:
            bar.close()
    result = _as_given(result, a, b)
    renderers = {"text": render_diff_text, "json": render_diff_json, "html": render_diff_html}
    emit(renderers[fmt](result), output)
    sys.exit(result.exit_code)


def _as_given(result: DiffResult, a: str, b: str) -> DiffResult:
    """The result with A and B as the user typed them (a repo id, not its cache path)."""
    import dataclasses

    return dataclasses.replace(result, a=a, b=b)
