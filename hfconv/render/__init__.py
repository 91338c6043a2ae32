"""Renderers: pure functions from results to text, one module per family of formats.

``text`` (people), ``jsonfmt`` (the contract's JSON), ``ci`` (GitHub annotations, SARIF) and
``html`` (one self-contained page; jinja2 is imported only when a page is made) render
validate's reports; ``convert`` and ``load`` render the results of ``hfconv convert`` and
``hfconv load-test`` (text and json; their pages are in ``html``). This package
depends only on findings, report and units: the results of convert, load-test and inspect are
named for type checkers only, so no operation is imported by rendering.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..report import Report
from ..units import human_bytes, human_count
from .ci import SARIF_SCHEMA, render_github, render_sarif
from .common import escape_text, json_safe, package_version
from .jsonfmt import dumps_json, render_json
from .load import render_load_json, render_load_text
from .text import FindingGroup, compress_numbers, finding_lines, group_findings, render_text

__all__ = [
    "RENDERERS", "SARIF_SCHEMA", "FindingGroup", "compress_numbers", "dumps_json", "escape_text", "finding_lines",
    "group_findings", "human_bytes", "human_count", "json_safe", "package_version", "render_github", "render_html",
    "render_json", "render_load_json", "render_load_text", "render_sarif", "render_text",
]


def render_html(reports: Sequence[Report]) -> str:
    """A self-contained HTML page (see :mod:`hfconv.render.html`; jinja2 is imported only here)."""
    from .html import render_validate_html

    return render_validate_html(reports)


RENDERERS: dict[str, Callable[[Sequence[Report]], str]] = {
    "text": render_text,
    "json": render_json,
    "github": render_github,
    "sarif": render_sarif,
    "html": render_html,
}
"""``validate --format NAME`` -> its renderer."""
