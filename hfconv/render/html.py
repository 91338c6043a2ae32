"""HTML renderers: pure functions from results to one self-contained page.

Every page is a single file: inline CSS and SVG, no JavaScript, no external resources, and a
Content-Security-Policy that forbids scripts, so a report can be mailed, archived as a CI
artifact or opened from disk. Filtering the findings by severity and sorting the tensor
table are CSS (checkboxes and radio buttons), so they work with JavaScript off. Everything a
model folder controls (file and tensor names, messages quoting them) reaches the page only
through jinja2's autoescaping, or through :mod:`hfconv.render.pictures`, which escapes it.

Every page: a verdict banner, the command line and the time it was made, hfconv's version,
then the pictures (shard map, layer map, device map, memory bars), then the findings table.
Sections without content are left out.

jinja2 is imported when a page is rendered, never by ``import hfconv``.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..findings import REGISTRY, Finding, Severity
from ..report import Report
from ..units import human_bytes, human_count, plural
from .common import escape_text, package_version
from .pictures import (
    LayerRow,
    MemoryBar,
    device_map_svg,
    layer_map_svg,
    layer_rows,
    memory_bars_html,
    shape_text,
    shard_map_html,
    unit_of,
)
from .text import group_findings

if TYPE_CHECKING:  # pragma: no cover
    import jinja2

    from ..conversion import ConversionError, ConversionResult
    from ..inspection import Inspection
    from ..load.results import LoadResult
    from ..weight_map import MapShard

__all__ = ["render_validate_html", "render_convert_html", "render_convert_error_html", "render_load_html",
           "render_inspect_html", "render_page", "finding_rows", "Page", "Section", "Picture", "Verdict"]


# --- what a page shows ------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    ok: bool
    headline: str
    detail: str


@dataclass(frozen=True)
class FindingRow:
    """One line of the findings table: a finding, or several folded over layer numbers."""

    severity: str
    code: str
    title: str
    file: str | None
    tensor: str | None
    json_path: str | None
    message: str
    fix: str
    count: int


@dataclass(frozen=True)
class Picture:
    """A picture (an HTML fragment from :mod:`hfconv.render.pictures`, already escaped)."""

    heading: str
    html: str
    note: str = ""


@dataclass(frozen=True)
class TensorTableRow:
    name: str
    shape: str
    dtype: str
    shard: str
    bytes: str
    order: str
    """The sort ranks as CSS custom properties (``--n:3;--b:12;...``)."""


@dataclass(frozen=True)
class TensorTable:
    rows: Sequence[TensorTableRow]
    total: int


@dataclass(frozen=True)
class Section:
    heading: str
    anchor: str
    verdict: Verdict | None = None
    summary: Sequence[tuple[str, Any]] = ()
    """Label -> value (a string, or a list of strings), the facts a reader looks for first."""
    pictures: Sequence[Picture] = ()
    pair: Sequence[Picture] = ()
    """Two pictures side by side (convert's before and after)."""
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]] = ()
    """Small tables: (heading, column names, rows of text)."""
    lists: Sequence[tuple[str, Sequence[str]]] = ()
    """Heading -> items (text); a list without items is left out."""
    findings: Sequence[FindingRow] | None = None
    """None: the command has no findings to show; empty: it has, and found none."""
    tensors: TensorTable | None = None


@dataclass(frozen=True)
class Page:
    title: str
    sections: Sequence[Section]
    overview: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    """One row per folder when a page covers several."""
    command: str | None = None
    """The command line that made the page (None: taken from the running process)."""


# --- the template -----------------------------------------------------------------------------

PAGE_CSS = """
:root { color-scheme: light dark; --fg: #1f2328; --bg: #ffffff; --muted: #59636e; --line: #d1d9e0;
  --head: #f6f8fa; --ok: #1a7f37; --ok-bg: #dafbe1; --fail: #cf222e; --fail-bg: #ffebe9;
  --warn: #9a6700; --warn-bg: #fff8c5; --info: #0969da; --info-bg: #ddf4ff; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --bg: #0d1117; --muted: #9198a1; --line: #3d444d; --head: #151b23;
    --ok: #3fb950; --ok-bg: #12261e; --fail: #f85149; --fail-bg: #25171c; --warn: #d29922;
    --warn-bg: #272115; --info: #4493f8; --info-bg: #121d2f; }
}
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 80rem; padding: 1.5rem; color: var(--fg); background: var(--bg);
  font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; padding-bottom: .3rem; border-bottom: 1px solid var(--line);
  overflow-wrap: anywhere; }
h3 { font-size: 1rem; margin: 1.25rem 0 .4rem; }
header p, footer, .muted { color: var(--muted); }
header p.made code { overflow-wrap: anywhere; }
footer { margin-top: 2rem; border-top: 1px solid var(--line); padding-top: .5rem; font-size: 12px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
table { border-collapse: collapse; margin: .25rem 0; max-width: 100%; }
th, td { border: 1px solid var(--line); padding: .3rem .5rem; text-align: left; vertical-align: top; }
thead th, table.kv > tbody > tr > th { background: var(--head); font-weight: 600; }
table.kv > tbody > tr > th { white-space: nowrap; }
td { overflow-wrap: anywhere; }
td.num, .num { font-variant-numeric: tabular-nums; }
svg.layer-map { display: block; width: 100%; max-width: 60rem; height: auto; }
svg.layer-map text { font-size: 12px; fill: var(--fg); }
svg.layer-map text.num { fill: var(--muted); font-variant-numeric: tabular-nums; }
svg.layer-map g:hover rect.hover { fill: var(--head); }
.legend { margin: .3rem 0 .8rem; color: var(--muted); font-size: 12px; display: flex; flex-wrap: wrap;
  gap: .2rem 1rem; }
.legend .key { white-space: nowrap; }
.swatch { display: inline-block; width: .8rem; height: .8rem; border-radius: 2px; margin-right: .3rem;
  vertical-align: -1px; }
"""
"""What every page shares (``hfconv diff``'s too): colours (light and dark), type, tables, and
the layer map's and legends' pictures (:mod:`hfconv.render.pictures`)."""

_CSS = PAGE_CSS + """table.findings { width: 100%; }
table.findings td.name, table.tensors td.name { overflow-wrap: anywhere; min-width: 8rem; }
table.findings td.sevcell, table.findings td.codecell { white-space: nowrap; }
ul.plain { margin: 0; padding-left: 1.1rem; }
ul.items { margin: .25rem 0; padding-left: 1.4rem; overflow-wrap: anywhere; }
.banner { border: 1px solid; border-radius: 6px; padding: .6rem .9rem; margin: .5rem 0 1rem;
  overflow-wrap: anywhere; }
.banner strong { font-size: 1.1rem; margin-right: .5rem; }
.banner.ok { color: var(--ok); background: var(--ok-bg); }
.banner.fail { color: var(--fail); background: var(--fail-bg); }
.sev { display: inline-block; white-space: nowrap; border-radius: 1em; padding: 0 .55em; font-weight: 600;
  font-size: 12px; }
.sev.error { color: var(--fail); background: var(--fail-bg); }
.sev.warning { color: var(--warn); background: var(--warn-bg); }
.sev.info { color: var(--info); background: var(--info-bg); }
.ok-text { color: var(--ok); font-weight: 600; }
.fail-text { color: var(--fail); font-weight: 600; }
.title { display: block; color: var(--muted); font-size: 12px; white-space: normal; }
.none { color: var(--ok); }
.smap { display: grid; grid-template-columns: minmax(8rem, 20rem) minmax(10rem, 1fr) minmax(7rem, max-content);
  gap: .25rem .75rem; align-items: center; margin: .25rem 0; }
.smap-row { display: contents; }
.smap .name { overflow-wrap: anywhere; min-width: 0; }
.smap .size { white-space: nowrap; font-variant-numeric: tabular-nums; }
.smap svg { display: block; width: 100%; height: 1.35rem; }
.smap-row.marked .name { color: var(--fail); font-weight: 600; }
.smap rect.seg { stroke: var(--bg); stroke-width: 1px; vector-effect: non-scaling-stroke; }
.smap-row.marked.warning .name { color: var(--warn); }
.smap-row.marked.info .name { color: var(--info); }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(30rem, 1fr)); gap: 0 2rem; }
.pair .smap { grid-template-columns: minmax(6rem, 14rem) minmax(6rem, 1fr) max-content; }
.pair > div { min-width: 0; }
svg.device-map { display: block; width: 100%; height: auto; }
.swatch.disk { background: repeating-linear-gradient(45deg, #c9b8a8 0 3px, #59636e 3px 4px); }
.swatch.outline { border: 1px dashed #8c959f; }
.swatch.peak { width: 3px; background: var(--fg); }
.filter { display: flex; flex-wrap: wrap; gap: .25rem 1rem; margin: .25rem 0 .5rem; font-size: 13px; }
.filter label { white-space: nowrap; cursor: pointer; }
.block:has(input.show-error:not(:checked)) tr.error,
.block:has(input.show-warning:not(:checked)) tr.warning,
.block:has(input.show-info:not(:checked)) tr.info { display: none; }
table.tensors { display: grid; grid-template-columns: minmax(10rem, 3fr) minmax(5rem, 1fr) max-content
  minmax(8rem, 2fr) max-content; width: 100%; }
table.tensors thead, table.tensors tbody, table.tensors tr { display: contents; }
table.tensors th { order: -1; }
table.tensors td.num { text-align: right; white-space: nowrap; }
.block:has(input.by-name:checked) table.tensors td { order: var(--n); }
.block:has(input.by-bytes:checked) table.tensors td { order: var(--b); }
.block:has(input.by-dtype:checked) table.tensors td { order: var(--d); }
.block:has(input.by-shard:checked) table.tensors td { order: var(--s); }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="hfconv {{ version }}">
<title>{{ page.title }}</title>
<style>{{ css | safe }}</style>
</head>
<body>
<header>
<h1>{{ page.title }}</h1>
<p class="made">Made {{ made }} by hfconv {{ version }}{% if command %} with <code>{{ command }}</code>{% endif %}</p>
</header>
{%- macro value(v) -%}
{%- if v is none -%}<span class="muted">none</span>
{%- elif v is string -%}{{ v | wrap }}
{%- elif v is sequence -%}
  {%- if v | length == 1 -%}{{ v[0] | wrap }}
  {%- else -%}<ul class="plain">{% for item in v %}<li>{{ item | wrap }}</li>{% endfor %}</ul>{%- endif -%}
{%- else -%}{{ v }}
{%- endif -%}
{%- endmacro %}
{%- if page.overview %}
<table class="overview">
<thead><tr><th scope="col">folder</th><th scope="col">verdict</th><th scope="col">errors</th>
<th scope="col">warnings</th><th scope="col">info</th></tr></thead>
<tbody>
{%- for row in page.overview %}
<tr><td><a href="#{{ row.anchor }}" class="mono">{{ row.path | wrap }}</a></td>
<td class="{{ 'ok-text' if row.ok else 'fail-text' }}">{{ "OK" if row.ok else "FAILED" }}</td>
<td class="num">{{ row.errors }}</td><td class="num">{{ row.warnings }}</td><td class="num">{{ row.info }}</td></tr>
{%- endfor %}
</tbody>
</table>
{%- endif %}
{%- for section in page.sections %}
<section id="{{ section.anchor }}">
<h2 class="mono">{{ section.heading | wrap }}</h2>
{%- if section.verdict %}
<div class="banner {{ 'ok' if section.verdict.ok else 'fail' }}" role="status">
<strong>{{ section.verdict.headline }}</strong> {{ section.verdict.detail }}
</div>
{%- endif %}
{%- if section.summary %}
<h3>Summary</h3>
<table class="kv"><tbody>
{%- for label, item in section.summary %}
<tr><th scope="row">{{ label }}</th><td>{{ value(item) }}</td></tr>
{%- endfor %}
</tbody></table>
{%- endif %}
{%- for picture in section.pictures %}
<h3>{{ picture.heading }}</h3>
{%- if picture.note %}<p class="muted">{{ picture.note }}</p>{% endif %}
{{ picture.html | safe }}
{%- endfor %}
{%- if section.pair %}
<div class="pair">
{%- for picture in section.pair %}
<div><h3>{{ picture.heading }}</h3>
{%- if picture.note %}<p class="muted">{{ picture.note }}</p>{% endif %}
{{ picture.html | safe }}</div>
{%- endfor %}
</div>
{%- endif %}
{%- for heading, columns, rows in section.tables %}
<h3>{{ heading }}</h3>
<table class="small"><thead><tr>{% for c in columns %}<th scope="col">{{ c }}</th>{% endfor %}</tr></thead><tbody>
{%- for row in rows %}
<tr>{% for cell in row %}<td>{{ cell | wrap }}</td>{% endfor %}</tr>
{%- endfor %}
</tbody></table>
{%- endfor %}
{%- for heading, items in section.lists %}
<h3>{{ heading }}</h3>
{%- if items | length > 12 %}
<details><summary>{{ items | length | number }} items</summary>
<ul class="items">{% for item in items %}<li>{{ item | wrap }}</li>{% endfor %}</ul></details>
{%- else %}
<ul class="items">{% for item in items %}<li>{{ item | wrap }}</li>{% endfor %}</ul>
{%- endif %}
{%- endfor %}
{%- if section.findings is not none %}
<div class="block">
<h3>Findings</h3>
{%- if section.findings %}
{%- set present = section.findings | map(attribute="severity") | unique | list %}
{%- if present | length > 1 %}
<div class="filter" role="group" aria-label="show findings of severity">Show:
{%- for sev in ("error", "warning", "info") if sev in present %}
<label><input type="checkbox" class="show-{{ sev }}" checked> <span class="sev {{ sev }}">{{ sev }}</span>
({{ section.findings | selectattr("severity", "equalto", sev) | list | length }})</label>
{%- endfor %}
</div>
{%- endif %}
{%- set paths = section.findings | selectattr("json_path") | list %}
<table class="findings">
<thead><tr><th scope="col">severity</th><th scope="col">code</th><th scope="col">file</th>
<th scope="col">tensor</th>{% if paths %}<th scope="col">JSON path</th>{% endif %}
<th scope="col">message</th><th scope="col">fix</th></tr></thead>
<tbody>
{%- for f in section.findings %}
<tr class="{{ f.severity }}">
<td class="sevcell"><span class="sev {{ f.severity }}">{{ f.severity }}</span></td>
<td class="codecell"><code>{{ f.code }}</code>{% if f.title %}<span class="title">{{ f.title }}</span>{% endif %}</td>
<td class="file name mono">{{ f.file | wrap if f.file else "" }}</td>
<td class="tensor name mono">{{ f.tensor | wrap if f.tensor else "" }}</td>
{%- if paths %}<td class="jsonpath name mono">{{ f.json_path | wrap if f.json_path else "" }}</td>{% endif %}
<td>{{ f.message }}{% if f.count > 1 %} <span class="muted">(&times;{{ f.count }})</span>{% endif %}</td>
<td>{{ f.fix }}</td>
</tr>
{%- endfor %}
</tbody>
</table>
{%- else %}
<p class="none">No findings.</p>
{%- endif %}
</div>
{%- endif %}
{%- if section.tensors %}
<div class="block">
<h3>Tensors</h3>
{%- if section.tensors.total > section.tensors.rows | length %}
<p class="muted">The first {{ section.tensors.rows | length | number }} of {{ section.tensors.total | number }}
tensors (<code>hfconv inspect --tensors</code> lists them all).</p>
{%- endif %}
<div class="filter" role="group" aria-label="sort the tensors by">Sort by:
<label><input type="radio" name="sort-{{ section.anchor }}" class="by-file" checked> file order</label>
<label><input type="radio" name="sort-{{ section.anchor }}" class="by-name"> name</label>
<label><input type="radio" name="sort-{{ section.anchor }}" class="by-bytes"> bytes (largest first)</label>
<label><input type="radio" name="sort-{{ section.anchor }}" class="by-dtype"> dtype</label>
<label><input type="radio" name="sort-{{ section.anchor }}" class="by-shard"> shard</label>
</div>
<table class="tensors">
<thead><tr><th scope="col">name</th><th scope="col">shape</th><th scope="col">dtype</th><th scope="col">shard</th>
<th scope="col">bytes</th></tr></thead>
<tbody>
{%- for t in section.tensors.rows %}
<tr style="{{ t.order }}"><td class="name mono">{{ t.name | wrap }}</td><td class="mono">{{ t.shape }}</td>
<td>{{ t.dtype }}</td><td class="name mono">{{ t.shard | wrap }}</td><td class="num">{{ t.bytes }}</td></tr>
{%- endfor %}
</tbody>
</table>
</div>
{%- endif %}
</section>
{%- endfor %}
<footer>Generated by hfconv {{ version }}.</footer>
</body>
</html>
"""


def _number(value: int | float) -> str:
    """Digit groups for big integers."""
    return f"{value:,}" if isinstance(value, int) else str(value)


# Control characters (but tab and line ends, which HTML shows as white space), C1 controls, bidi
# overrides and lone surrogates (bytes of a non-UTF-8 file name): shown as escapes, never raw.
_HTML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible_controls(value: Any) -> Any:
    """jinja2's finalize: every printed string, names from a folder included, with control
    characters and non-UTF-8 bytes as visible escapes (the page must encode as UTF-8)."""
    if isinstance(value, str) and _HTML_UNSAFE.search(value):
        return type(value)(_HTML_UNSAFE.sub(lambda m: escape_text(m.group()), value))
    return value


_BREAK_AFTER = re.compile(r"([./-])")


def _wrap(value: Any) -> Any:
    """A name as escaped HTML with a line-break opportunity (``<wbr>``) after ``.``, ``-`` and
    ``/``, so a long file or tensor name wraps at its parts rather than mid-word."""
    import markupsafe

    text = str(_visible_controls(value if isinstance(value, str) else str(value)))
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(_BREAK_AFTER.sub(r"\1<wbr>", escaped))


@functools.lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False,
                             finalize=_visible_controls)
    env.filters["number"] = _number
    env.filters["wrap"] = _wrap
    return env.from_string(_PAGE)


def _command_line() -> str:
    """How this process was started, as a shell line (``hfconv inspect ./m --format html``)."""
    argv = sys.argv
    if not argv:
        return "hfconv"
    first = os.path.basename(argv[0])
    if first in ("__main__.py", "hfconv") or first.startswith("hfconv"):
        return shlex.join(["hfconv", *argv[1:]])
    return "hfconv"


def _made() -> str:
    """Now (or ``SOURCE_DATE_EPOCH``, for reproducible pages) in UTC."""
    try:
        when = float(os.environ["SOURCE_DATE_EPOCH"])
    except (KeyError, ValueError):
        when = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def render_page(page: Page) -> str:
    """The page as HTML; every value is escaped by jinja2's autoescape."""
    command = page.command if page.command is not None else _command_line()
    return _template().render(page=page, css=_CSS, version=package_version(), made=_made(),
                              command=command) + "\n"


# --- shared pieces ----------------------------------------------------------------------------

def finding_rows(findings: Sequence[Finding]) -> list[FindingRow]:
    """Findings folded over layer numbers (as the text report does), errors first; a JSON path
    (``$.top_p``) in its own column rather than the tensor's."""
    rows = []
    for group in group_findings(findings):
        f = group.first
        entry = REGISTRY.get(f.code)
        path = group.tensor if group.tensor and group.tensor.startswith("$") else None
        rows.append(FindingRow(
            severity=f.severity.value, code=f.code, title=entry.title if entry else "", file=f.file,
            tensor=None if path else group.tensor, json_path=path, message=group.message,
            fix=entry.fix if entry else "", count=group.count,
        ))
    rank = {s.value: s.rank for s in Severity}
    return sorted(rows, key=lambda row: -rank[row.severity])  # stable: the report's order within a severity


def _counts(errors: int, warnings: int, info: int | None = None) -> str:
    text = f"{errors} error(s), {warnings} warning(s)"
    return text if info is None else f"{text}, {info} info"


def _weights(describe: str, fmt: str, sharded: bool) -> str:
    return describe if describe == "none" else f"{fmt}, {'sharded' if sharded else 'single file'}"


def _sizes(count: int, parameters: int | None, nbytes: int) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("tensors", f"{count:,}")]
    if parameters is not None:
        rows.append(("parameters", f"{human_count(parameters)} params"))
    rows.append(("size", human_bytes(nbytes)))
    return rows


def _tensors_of(shards: Sequence[MapShard]) -> list[Any]:
    """Every tensor of the shards, once (the first shard holding a name wins, as loaders do)."""
    seen: dict[str, Any] = {}
    for shard in shards:
        for t in shard.tensors:
            seen.setdefault(t.name, t)
    return list(seen.values())


def _shard_picture(shards: Sequence[MapShard], findings: Sequence[Finding], heading: str = "Shard map",
                   note: str = "") -> list[Picture]:
    if not shards:
        return []
    return [Picture(heading, shard_map_html(shards, findings),
                    note or "One bar per weight file, as long as its bytes; one segment per tensor, coloured by "
                            "dtype (hover for name, shape, dtype and bytes).")]


def _layer_picture(rows: Sequence[LayerRow]) -> list[Picture]:
    if len(rows) < 2:
        return []
    return [Picture("Layer map", layer_map_svg(rows),
                    "One row per decoder block (and the embeddings, the head and the other modules): "
                    "parameters and bytes; a dot marks a block a finding names.")]


# --- validate ---------------------------------------------------------------------------------

def _validate_section(report: Report, anchor: str) -> Section:
    layout = report.layout
    info = len(report.findings) - report.errors - report.warnings
    detail = _counts(report.errors, report.warnings, info)
    if report.strict and report.warnings:
        detail += " (--strict: warnings fail)"
    summary: list[tuple[str, Any]] = [("weights", _weights(layout.describe(), layout.format, layout.sharded))]
    if layout.index:
        summary.append(("index", layout.index))
    if layout.shards:
        summary.append(("weight files", f"{len(layout.shards):,}"))
        summary.extend(_sizes(report.summary.tensors, report.summary.parameters, report.summary.bytes))
    if report.manifest_matched is not None:
        summary.append(("manifest", f"{plural(report.manifest_matched, 'tensor')} match the manifest"))
    shards = report.shard_map
    return Section(
        heading=report.path, anchor=anchor,
        verdict=Verdict(report.ok, "OK" if report.ok else "FAILED", detail),
        summary=summary,
        pictures=[*_shard_picture(shards, report.findings),
                  *_layer_picture(layer_rows(_tensors_of(shards), report.findings))],
        findings=finding_rows(report.findings),
    )


def render_validate_html(reports: Sequence[Report], command: str | None = None) -> str:
    """``validate --format html``: a verdict, the layout, the pictures and the findings of each folder."""
    sections = [_validate_section(r, f"folder-{i}") for i, r in enumerate(reports, 1)]
    overview = []
    if len(reports) > 1:
        overview = [{"path": r.path, "anchor": s.anchor, "ok": r.ok, "errors": r.errors, "warnings": r.warnings,
                     "info": len(r.findings) - r.errors - r.warnings} for r, s in zip(reports, sections)]
    failed = sum(1 for r in reports if not r.ok)
    if len(reports) == 1:
        title = f"hfconv validate: {reports[0].path}"
    else:
        title = f"hfconv validate: {len(reports)} folders, {failed} failed"
    return render_page(Page(title=title, sections=sections, overview=overview, command=command))


# --- convert ----------------------------------------------------------------------------------

def _speed(nbytes: int, seconds: float) -> str:
    if seconds <= 0:
        return f"{human_bytes(nbytes)} written"
    return f"{human_bytes(nbytes)} written in {seconds:.2f} s ({human_bytes(nbytes / seconds)}/s)"


def render_convert_html(result: ConversionResult, command: str | None = None) -> str:
    """``convert --format html`` after a successful conversion: the verdict, before/after shard
    maps, dropped aliases and casts as lists, the speed and the verification in words."""
    n = len(result.shards)
    shards = plural(n, "shard") + (f" + {result.index}" if result.index else "")
    in_place = bool(getattr(result, "in_place", False))
    where = f"{result.src} (in place)" if in_place else f"{result.src} \u2192 {result.dst}"
    if result.verified:
        verification = ("every tensor compared byte for byte with its source, and the output passes validation"
                        if result.ok else "every tensor compared byte for byte with its source; the output FAILS "
                        "validation")
    else:
        verification = "not verified (--no-verify): tensors not compared, the output not validated"
    detail = f"{where}: {plural(result.tensors, 'tensor')} ({human_bytes(result.bytes)}) in {shards}; {verification}"
    summary: list[tuple[str, Any]] = [("source", result.src), ("destination", result.dst)]
    summary.extend(_sizes(result.tensors, None, result.bytes))
    summary.append(("shards", shards))
    summary.append(("dtype", "kept" if result.dtype == "keep"
                    else f"{plural(result.cast, 'tensor')} cast to {result.dtype}"))
    summary.append(("speed", _speed(result.bytes, result.seconds)))
    summary.append(("verification", verification))
    if result.manifest:
        summary.append(("manifest", result.manifest))
    if result.durable:
        summary.append(("durable", "every file and folder was fsynced before the destination appeared"))
    if result.validation is not None and result.validation.inherited_errors:
        summary.append(("errors already in the source", f"{result.validation.inherited_errors}"))
    findings: tuple[Finding, ...] = result.findings
    verdict = Verdict(True, "CONVERTED", detail)
    if not result.ok:  # --allow-invalid-output: written, but not a model that passes validation
        errors = result.validation.errors if result.validation is not None else 0
        verdict = Verdict(False, "INVALID", f"{result.src} \u2192 {result.dst}: written anyway "
                          f"(--allow-invalid-output) although it fails validation with {plural(errors, 'error')}")
        findings = (*findings, *(result.validation.findings if result.validation is not None else ()))
    source_map: Sequence[MapShard] = getattr(result, "source_map", ())
    output_map: Sequence[MapShard] = getattr(result, "output_map", ())
    before = {t.name: t.dtype for t in _tensors_of(source_map)}
    casts = [f"{t.name}: {before[t.name]} \u2192 {t.dtype}" for t in _tensors_of(output_map)
             if t.name in before and before[t.name] != t.dtype]
    lists = [
        ("Dropped aliases (re-tied by transformers on load)",
         [f"{alias} \u2192 shares {kept}" for alias, kept in result.dropped_aliases.items()]),
        ("Aliases written as their own copies", [f"{name} (shared its storage with {other})"
                                                 for name, other in result.copied_aliases.items()]),
        ("Casts", casts[:2000] + ([f"\u2026 and {len(casts) - 2000:,} more"] if len(casts) > 2000 else [])),
        ("Files copied", list(result.files_copied)),
        ("Files not copied", [f"{name}: {why}" for name, why in result.files_skipped.items()]),
        ("Written into the source folder", list(getattr(result, "written", ()))),
        ("Deleted after verification", list(getattr(result, "deleted", ()))),
    ]
    pair = []
    scale = max([s.tensor_bytes for s in (*source_map, *output_map)] + [1])
    if source_map:
        pair.append(Picture("Before (source)", shard_map_html(source_map, findings, scale)))
    if output_map:
        pair.append(Picture("After (output)", shard_map_html(output_map, findings, scale)))
    section = Section(heading=where, anchor="convert", verdict=verdict, summary=summary, pair=pair,
                      lists=[(h, items) for h, items in lists if items], findings=finding_rows(findings))
    return render_page(Page(title=f"hfconv convert: {where}", sections=[section], command=command))


def _sentence(message: str) -> str:
    """``message`` ending with a full stop (a message that ends with one keeps it)."""
    message = message.rstrip()
    return message if message.endswith((".", "!", "?")) else f"{message}."


def render_convert_error_html(src: str, dst: str, error: ConversionError, command: str | None = None) -> str:
    """``convert --format html`` when the conversion failed (DST was not created)."""
    section = Section(
        heading=f"{src} \u2192 {dst}", anchor="convert",
        verdict=Verdict(False, "FAILED", f"{error.code}: {_sentence(error.message)} No DST was created."),
        summary=[("source", src), ("destination", f"{dst} (not created)")],
        findings=finding_rows(error.findings),
    )
    return render_page(Page(title=f"hfconv convert: {src} \u2192 {dst} (failed)", sections=[section],
                            command=command))


# --- load-test --------------------------------------------------------------------------------

def _placement(rows: Sequence[LayerRow], tensors: Mapping[str, str]) -> dict[str, str]:
    """Layer-map row -> the device its tensors went to (``a + b`` when split)."""
    devices: dict[str, dict[str, None]] = {}
    for name, device in tensors.items():
        devices.setdefault(unit_of(name), {}).setdefault(device, None)
    return {row.name: " + ".join(devices.get(row.name, {"?": None})) for row in rows}


def render_load_html(result: LoadResult, command: str | None = None) -> str:
    """``load-test --format html``: the verdict, the device map and memory per device as
    pictures, the measurements in words, the shard map and the findings."""
    info = sum(1 for f in result.findings if f.severity is Severity.INFO)
    warnings = sum(1 for f in result.findings if f.severity is Severity.WARNING)
    if result.ok:
        where = ", ".join(d.device for d in result.devices) or "no device"
        detail = f"{plural(result.tensors, 'tensor')} ({human_bytes(result.bytes)}) loaded onto {where} and verified"
    else:
        detail = _counts(result.errors, warnings, info)
    summary: list[tuple[str, Any]] = []
    if result.devices:
        summary.extend(_sizes(result.tensors, None, result.bytes))
        summary.append(("devices", ", ".join(d.device for d in result.devices)))
    if result.dtype != "keep":
        summary.append(("dtype", f"floating tensors cast to {result.dtype}"))
    plan = result.plan
    if plan is not None:
        strategy = "a device map file" if plan.strategy == "file" else plan.strategy
        summary.append(("plan", strategy + ("; offloads to cpu or disk" if plan.offloads else "")))
    phases = result.phases
    order = ("validate", "import", "plan", "load", "forward")
    if phases.get("total") is not None:
        parts = ", ".join(f"{k} {phases[k]:.2f} s" for k in order if k in phases)
        summary.append(("time", f"{phases['total']:.2f} s" + (f" ({parts})" if parts else "")))
    if result.throughput:
        summary.append(("speed", f"{human_bytes(result.throughput)}/s over the load phase"))
    if result.peak_rss is not None:
        memory = f"peak {human_bytes(result.peak_rss)} resident"
        if result.peak_anon is not None:
            memory += f", {human_bytes(result.peak_anon)} anonymous"
        summary.append(("host memory", memory))
    if result.forward is not None:
        fwd = result.forward
        shape = shape_text(fwd.shape)
        summary.append(("forward pass", f"{fwd.model_class}: {fwd.output} {shape}, "
                                        f"{'finite' if fwd.finite else 'NOT finite'} "
                                        f"({plural(fwd.tokens, 'token')} from {fwd.token_source})"))
    shards: Sequence[MapShard] = getattr(result, "shard_map", ())
    rows = layer_rows(_tensors_of(shards), result.findings)
    pictures: list[Picture] = []
    if plan is not None and rows:
        devices = sorted({d for d in plan.tensors.values()}, key=_device_key)
        pictures.append(Picture("Plan", device_map_svg(rows, _placement(rows, plan.tensors), devices),
                                "The device map: one cell per module in model order (embeddings, each decoder "
                                "block, the head), coloured by the device it was placed on; disk is hatched."))
    tables = []
    if result.devices:
        pictures.append(Picture("Devices", memory_bars_html(
            [MemoryBar(d.device, d.planned_bytes, d.limit, d.peak_bytes) for d in result.devices]),
            "Bytes placed on each device against its limit (the outline), and the peak measured there."))
        tables.append(("Per device", ("device", "tensors", "placed", "read", "limit", "peak", "time"),
                       [(d.device, f"{d.tensors:,}", human_bytes(d.planned_bytes), human_bytes(d.bytes),
                         human_bytes(d.limit) if d.limit is not None else "no limit",
                         human_bytes(d.peak_bytes) if d.peak_bytes is not None else "not measured",
                         f"{d.seconds:.2f} s" + (f" ({d.note})" if d.note else "")) for d in result.devices]))
    pictures.extend(_shard_picture(shards, result.findings))
    section = Section(heading=result.path, anchor="load-test",
                      verdict=Verdict(result.ok, "OK" if result.ok else "FAILED", detail), summary=summary,
                      pictures=pictures, tables=tables, findings=finding_rows(result.findings))
    return render_page(Page(title=f"hfconv load-test: {result.path}", sections=[section], command=command))


def _device_key(device: str) -> tuple[int, int, str]:
    if device.startswith("cuda:") and device[5:].isdigit():
        return (0, int(device[5:]), device)
    return ({"cpu": 1, "disk": 2}.get(device, 3), 0, device)


# --- inspect ----------------------------------------------------------------------------------

_MAX_TABLE_ROWS = 5000


def _tensor_table(shards: Sequence[MapShard]) -> TensorTable | None:
    """Every tensor of the shards, with its sort ranks by name, bytes, dtype and shard."""
    entries = [(t, s.name) for s in shards for t in s.tensors]
    if not entries:
        return None
    shown = entries[:_MAX_TABLE_ROWS]
    n = len(shown)

    def ranks(key: Any) -> list[int]:
        out = [0] * n
        for rank, i in enumerate(sorted(range(n), key=key), 1):
            out[i] = rank
        return out

    by_name = ranks(lambda i: shown[i][0].name)
    by_bytes = ranks(lambda i: (-shown[i][0].bytes, shown[i][0].name))
    by_dtype = ranks(lambda i: (shown[i][0].dtype, i))
    by_shard = ranks(lambda i: (shown[i][1], i))
    rows = [TensorTableRow(name=t.name, shape=shape_text(t.shape), dtype=t.dtype,
                           shard=shard, bytes=human_bytes(t.bytes),
                           order=f"--n:{by_name[i]};--b:{by_bytes[i]};--d:{by_dtype[i]};--s:{by_shard[i]}")
            for i, (t, shard) in enumerate(shown)]
    return TensorTable(rows=rows, total=len(entries))


def render_inspect_html(result: Inspection, command: str | None = None) -> str:
    """``inspect --format html``: what the folder holds: summary, shard map, layer map and a
    sortable tensor table (inspect has no findings; its banner says what was read)."""
    layout = result.layout
    shards: Sequence[MapShard] = getattr(result, "shard_map", ())
    unread = [s for s in shards if s.problem is not None]
    what = (f"{result.model_type or 'a model'}: {plural(result.tensors, 'tensor')}, "
            f"{human_count(result.parameters)} params, {human_bytes(result.bytes)}")
    if unread:
        verdict = Verdict(False, "INCOMPLETE", f"{what}; {plural(len(unread), 'weight file')} of {len(shards)} "
                          f"could not be read ({', '.join(s.name for s in unread[:3])}"
                          f"{', ...' if len(unread) > 3 else ''}); hfconv validate says why")
    else:
        verdict = Verdict(True, "READ", f"{what} in {plural(len(shards), 'weight file')}" if shards else
                          f"{what}; no weight files")
    summary: list[tuple[str, Any]] = []
    if result.model_type:
        summary.append(("model type", result.model_type))
    if result.architectures:
        summary.append(("architectures", list(result.architectures)))
    if result.config_dtype:
        summary.append(("config dtype", result.config_dtype))
    summary.append(("weights", _weights(layout.describe(), layout.format, layout.sharded)))
    if layout.index:
        summary.append(("index", layout.index))
    summary.extend(_sizes(result.tensors, result.parameters, result.bytes))
    if result.dtypes:
        summary.append(("dtypes", ", ".join(f"{d} \u00d7{n}" for d, n in sorted(result.dtypes.items()))))
    if result.tokenizer_files:
        summary.append(("tokenizer files", list(result.tokenizer_files)))
    rows = layer_rows(_tensors_of(shards))
    section = Section(heading=result.path, anchor="inspect", verdict=verdict, summary=summary,
                      pictures=[*_shard_picture(shards, ()), *_layer_picture(rows)],
                      tensors=_tensor_table(shards))
    return render_page(Page(title=f"hfconv inspect: {result.path}", sections=[section], command=command))
