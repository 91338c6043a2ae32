"""HTML renderers: pure functions from results to one self-contained page.

Every page is a single file: inline CSS, no JavaScript, no external resources, and a
Content-Security-Policy that forbids scripts, so a report can be mailed, archived as a CI
artifact or opened from disk. Everything a model folder controls (file and tensor names,
messages quoting them) reaches the page only through jinja2's autoescaping.

jinja2 is imported when a page is rendered, never by ``import hfconv``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..findings import REGISTRY, Finding, Severity
from ..report import Report
from ..units import human_bytes, human_count, plural
from .common import escape_text, package_version
from .text import group_findings

if TYPE_CHECKING:  # pragma: no cover
    import jinja2

    from ..conversion import ConversionError, ConversionResult
    from ..inspection import Inspection
    from ..load.results import LoadResult

__all__ = ["render_validate_html", "render_convert_html", "render_convert_error_html", "render_load_html",
           "render_inspect_html"]


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
    message: str
    fix: str
    count: int


@dataclass(frozen=True)
class Section:
    heading: str
    anchor: str
    verdict: Verdict | None = None
    summary: Sequence[tuple[str, Any]] = ()
    """Label -> value, the facts a reader looks for first (values rendered like JSON)."""
    findings: Sequence[FindingRow] | None = None
    """None: the command has no findings to show; empty: it has, and found none."""
    details: Sequence[tuple[str, Any]] = ()
    """Heading -> JSON value: the rest of what ``--format json`` carries."""


@dataclass(frozen=True)
class Page:
    title: str
    sections: Sequence[Section]
    overview: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    """One row per folder when a page covers several."""


# --- the template -----------------------------------------------------------------------------

_CSS = """
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
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; padding-bottom: .3rem; border-bottom: 1px solid var(--line);
  overflow-wrap: anywhere; }
h3 { font-size: 1rem; margin: 1.25rem 0 .4rem; }
header p, footer { color: var(--muted); }
footer { margin-top: 2rem; border-top: 1px solid var(--line); padding-top: .5rem; font-size: 12px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
table { border-collapse: collapse; margin: .25rem 0; }
th, td { border: 1px solid var(--line); padding: .3rem .5rem; text-align: left; vertical-align: top; }
thead th, table.kv > tbody > tr > th { background: var(--head); font-weight: 600; }
table.kv table, td table { margin: 0; }
td.num, span.num { font-variant-numeric: tabular-nums; }
td { overflow-wrap: anywhere; }
table.findings { width: 100%; }
table.findings td.tensor, table.findings td.file { word-break: break-all; }
.null { color: var(--muted); }
ul.plain { margin: 0; padding-left: 1.1rem; }
.banner { border: 1px solid; border-radius: 6px; padding: .6rem .9rem; margin: .5rem 0 1rem; }
.banner strong { font-size: 1.1rem; margin-right: .5rem; }
.banner.ok { color: var(--ok); background: var(--ok-bg); }
.banner.fail { color: var(--fail); background: var(--fail-bg); }
.sev { display: inline-block; border-radius: 1em; padding: 0 .55em; font-weight: 600; font-size: 12px; }
.sev.error { color: var(--fail); background: var(--fail-bg); }
.sev.warning { color: var(--warn); background: var(--warn-bg); }
.sev.info { color: var(--info); background: var(--info-bg); }
.ok-text { color: var(--ok); font-weight: 600; }
.fail-text { color: var(--fail); font-weight: 600; }
.title { display: block; color: var(--muted); font-size: 12px; }
.none { color: var(--ok); }
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
</header>
{%- macro value(v) -%}
{%- if v is none -%}<span class="null">none</span>
{%- elif v is boolean -%}{{ "yes" if v else "no" }}
{%- elif v is string -%}{{ v }}
{%- elif v is number -%}<span class="num">{{ v | number }}</span>
{%- elif v is mapping -%}
  {%- if v -%}
<table class="kv"><tbody>
{%- for key, item in v.items() %}
<tr><th scope="row">{{ key }}</th><td>{{ value(item) }}</td></tr>
{%- endfor %}
</tbody></table>
  {%- else -%}<span class="null">(empty)</span>{%- endif -%}
{%- elif v is sequence -%}
  {%- set columns = v | columns -%}
  {%- if not v -%}<span class="null">(none)</span>
  {%- elif columns -%}
<table><thead><tr>{% for c in columns %}<th scope="col">{{ c }}</th>{% endfor %}</tr></thead><tbody>
{%- for row in v %}
<tr>{% for c in columns %}<td>{{ value(row.get(c)) }}</td>{% endfor %}</tr>
{%- endfor %}
</tbody></table>
  {%- elif v | length == 1 -%}{{ value(v[0]) }}
  {%- else -%}
<ul class="plain">{% for item in v %}<li>{{ value(item) }}</li>{% endfor %}</ul>
  {%- endif -%}
{%- else -%}{{ v }}
{%- endif -%}
{%- endmacro %}
{%- if page.overview %}
<table class="overview">
<thead><tr><th scope="col">folder</th><th scope="col">verdict</th><th scope="col">errors</th>
<th scope="col">warnings</th><th scope="col">info</th></tr></thead>
<tbody>
{%- for row in page.overview %}
<tr><td><a href="#{{ row.anchor }}" class="mono">{{ row.path }}</a></td>
<td class="{{ 'ok-text' if row.ok else 'fail-text' }}">{{ "OK" if row.ok else "FAILED" }}</td>
<td class="num">{{ row.errors }}</td><td class="num">{{ row.warnings }}</td><td class="num">{{ row.info }}</td></tr>
{%- endfor %}
</tbody>
</table>
{%- endif %}
{%- for section in page.sections %}
<section id="{{ section.anchor }}">
<h2 class="mono">{{ section.heading }}</h2>
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
{%- if section.findings is not none %}
<h3>Findings</h3>
{%- if section.findings %}
<table class="findings">
<thead><tr><th scope="col">severity</th><th scope="col">code</th><th scope="col">file</th>
<th scope="col">tensor</th><th scope="col">message</th><th scope="col">fix</th></tr></thead>
<tbody>
{%- for f in section.findings %}
<tr class="{{ f.severity }}">
<td><span class="sev {{ f.severity }}">{{ f.severity }}</span></td>
<td><code>{{ f.code }}</code>{% if f.title %}<span class="title">{{ f.title }}</span>{% endif %}</td>
<td class="file mono">{{ f.file if f.file else "" }}</td>
<td class="tensor mono">{{ f.tensor if f.tensor else "" }}</td>
<td>{{ f.message }}{% if f.count > 1 %} <span class="null">(&times;{{ f.count }})</span>{% endif %}</td>
<td>{{ f.fix }}</td>
</tr>
{%- endfor %}
</tbody>
</table>
{%- else %}
<p class="none">No findings.</p>
{%- endif %}
{%- endif %}
{%- for heading, item in section.details %}
<h3>{{ heading }}</h3>
{{ value(item) }}
{%- endfor %}
</section>
{%- endfor %}
<footer>Generated by hfconv {{ version }}.</footer>
</body>
</html>
"""


def _number(value: int | float) -> str:
    """Digit groups for big integers (byte counts, limits); floats as JSON writes them."""
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _columns(value: Any) -> list[str] | None:
    """The keys of a list of objects (in first-seen order), so it renders as a table; else None."""
    if not value or not all(isinstance(item, Mapping) for item in value):
        return None
    keys: dict[str, None] = {}
    for item in value:
        keys.update(dict.fromkeys(item))
    return list(keys)


# Control characters (but tab and line ends, which HTML shows as white space), C1 controls, bidi
# overrides and lone surrogates (bytes of a non-UTF-8 file name): shown as escapes, never raw.
_HTML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible_controls(value: Any) -> Any:
    """jinja2's finalize: every printed string, names from a folder included, with control
    characters and non-UTF-8 bytes as visible escapes (the page must encode as UTF-8)."""
    if isinstance(value, str) and _HTML_UNSAFE.search(value):
        return type(value)(_HTML_UNSAFE.sub(lambda m: escape_text(m.group()), value))
    return value


@functools.lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False,
                             finalize=_visible_controls)
    env.filters["number"] = _number
    env.filters["columns"] = _columns
    return env.from_string(_PAGE)


def render_page(page: Page) -> str:
    """The page as HTML; every value is escaped by jinja2's autoescape."""
    return _template().render(page=page, css=_CSS, version=package_version()) + "\n"


# --- shared pieces ----------------------------------------------------------------------------

def finding_rows(findings: Sequence[Finding]) -> list[FindingRow]:
    """Findings folded over layer numbers (as the text report does), errors first."""
    rows = []
    for group in group_findings(findings):
        f = group.first
        entry = REGISTRY.get(f.code)
        rows.append(FindingRow(
            severity=f.severity.value, code=f.code, title=entry.title if entry else "", file=f.file,
            tensor=group.tensor, message=group.message, fix=entry.fix if entry else "", count=group.count,
        ))
    rank = {s.value: s.rank for s in Severity}
    return sorted(rows, key=lambda row: -rank[row.severity])  # stable: the report's order within a severity


def _counts(findings: Sequence[Finding]) -> str:
    errors = sum(1 for f in findings if f.severity is Severity.ERROR)
    warnings = sum(1 for f in findings if f.severity is Severity.WARNING)
    return f"{errors} error(s), {warnings} warning(s)"


def _heading(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _json_details(data: Mapping[str, Any], skip: Sequence[str] = (),
                  headings: Mapping[str, str] | None = None) -> list[tuple[str, Any]]:
    """The JSON document as sections: its plain values in one table, each nested part under its key."""
    headings = headings or {}
    plain = {k: v for k, v in data.items() if k not in skip and not isinstance(v, (Mapping, list))}
    nested = [(headings.get(k, _heading(k)), v) for k, v in data.items()
              if k not in skip and isinstance(v, (Mapping, list))]
    return ([("Details", plain)] if plain else []) + nested


def _sizes(count: int, parameters: int | None, nbytes: int) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("tensors", count)]
    if parameters is not None:
        rows.append(("parameters", f"{human_count(parameters)} ({parameters:,})"))
    rows.append(("bytes", f"{human_bytes(nbytes)} ({nbytes:,} bytes)"))
    return rows


# --- validate ---------------------------------------------------------------------------------

def _validate_section(report: Report, anchor: str) -> Section:
    layout = report.layout
    info = len(report.findings) - report.errors - report.warnings
    detail = f"{report.errors} error(s), {report.warnings} warning(s), {info} info"
    if report.strict and report.warnings:
        detail += " (--strict: warnings fail)"
    summary: list[tuple[str, Any]] = [
        ("weights", layout.describe() if layout.describe() == "none" else
         f"{layout.format}, {'sharded' if layout.sharded else 'single file'}"),
        ("index", layout.index),
        ("weight files", len(layout.shards)),
        *_sizes(report.summary.tensors, report.summary.parameters, report.summary.bytes),
    ]
    if report.manifest_matched is not None:
        summary.append(("manifest", f"{plural(report.manifest_matched, 'tensor')} match the manifest"))
    return Section(
        heading=report.path, anchor=anchor,
        verdict=Verdict(report.ok, "OK" if report.ok else "FAILED", detail),
        summary=summary, findings=finding_rows(report.findings),
        details=[("Layout", layout.to_json())],
    )


def render_validate_html(reports: Sequence[Report]) -> str:
    """``validate --format html``: a verdict, the layout and the findings of each folder."""
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
    return render_page(Page(title=title, sections=sections, overview=overview))


# --- convert ----------------------------------------------------------------------------------

def render_convert_html(result: ConversionResult) -> str:
    """``convert --format html`` after a successful conversion."""
    shards = f"{len(result.shards)} shard{'s' if len(result.shards) != 1 else ''}" + (
        f" + {result.index}" if result.index else "")
    detail = f"{result.src} \u2192 {result.dst}, " + (
        "every tensor verified bitwise and the output validated" if result.verified else "not verified (--no-verify)")
    summary: list[tuple[str, Any]] = [
        ("source", result.src), ("destination", result.dst),
        *_sizes(result.tensors, None, result.bytes),
        ("shards", shards), ("dtype", result.dtype if result.dtype == "keep" else f"{result.cast} tensors cast to "
                                                                                  f"{result.dtype}"),
        ("time", f"{result.seconds:.2f} s ({result.mb_per_s:.1f} MB/s)"),
        ("verified", result.verified), ("manifest", result.manifest), ("durable (--fsync)", result.durable),
    ]
    findings = result.findings
    verdict = Verdict(True, "CONVERTED", detail)
    if not result.ok:  # --allow-invalid-output: written, but not a model that passes validation
        errors = result.validation.errors if result.validation is not None else 0
        verdict = Verdict(False, "INVALID", f"{result.src} \u2192 {result.dst}: written anyway "
                          f"(--allow-invalid-output) although it fails validation with {errors} "
                          f"error{'s' if errors != 1 else ''}")
        findings = (*findings, *(result.validation.findings if result.validation is not None else ()))
    section = Section(heading=f"{result.src} \u2192 {result.dst}", anchor="convert",
                      verdict=verdict, summary=summary,
                      findings=finding_rows(findings), details=_json_details(result.to_json(), ("findings",)))
    return render_page(Page(title=f"hfconv convert: {result.src} \u2192 {result.dst}", sections=[section]))


def _sentence(message: str) -> str:
    """``message`` ending with a full stop (a message that ends with one keeps it)."""
    message = message.rstrip()
    return message if message.endswith((".", "!", "?")) else f"{message}."


def render_convert_error_html(src: str, dst: str, error: ConversionError) -> str:
    """``convert --format html`` when the conversion failed (DST was not created)."""
    section = Section(
        heading=f"{src} \u2192 {dst}", anchor="convert",
        verdict=Verdict(False, "FAILED", f"{error.code}: {_sentence(error.message)} No DST was created."),
        summary=[("source", src), ("destination", dst), ("error", f"{error.code}: {error.message}")],
        findings=finding_rows(error.findings),
    )
    return render_page(Page(title=f"hfconv convert: {src} \u2192 {dst} (failed)", sections=[section]))


# --- load-test --------------------------------------------------------------------------------

def render_load_html(result: LoadResult) -> str:
    """``load-test --format html``: the verdict, the plan, each device's numbers, the findings."""
    if result.ok:
        where = ", ".join(d.device for d in result.devices) or "no device"
        detail = f"{result.tensors} tensors ({human_bytes(result.bytes)}) loaded onto {where} and verified"
    else:
        detail = _counts(result.findings)
    data = result.to_json()
    summary: list[tuple[str, Any]] = [
        *_sizes(result.tensors, None, result.bytes),
        ("devices", ", ".join(d.device for d in result.devices) or None),
        ("dtype", result.dtype),
    ]
    if result.phases.get("total") is not None:
        summary.append(("time", f"{result.phases['total']:.2f} s"))
    if result.peak_rss is not None:
        summary.append(("peak host memory", human_bytes(result.peak_rss)))
    section = Section(heading=result.path, anchor="load-test",
                      verdict=Verdict(result.ok, "OK" if result.ok else "FAILED", detail), summary=summary,
                      findings=finding_rows(result.findings), details=_json_details(data, ("findings", "path"),
                                                           {"summary": "Measurements"}))  # not a 2nd "Summary"
    return render_page(Page(title=f"hfconv load-test: {result.path}", sections=[section]))


# --- inspect ----------------------------------------------------------------------------------

def render_inspect_html(result: Inspection) -> str:
    """``inspect --format html``: what the folder holds (inspect has no verdict)."""
    layout = result.layout
    summary: list[tuple[str, Any]] = [
        ("model type", result.model_type),
        ("architectures", list(result.architectures)),
        ("config dtype", result.config_dtype),
        ("weights", layout.describe() if layout.describe() == "none" else
         f"{layout.format}, {'sharded' if layout.sharded else 'single file'}"),
        ("index", layout.index),
        *_sizes(result.tensors, result.parameters, result.bytes),
        ("dtypes", ", ".join(f"{d} \u00d7{n}" for d, n in sorted(result.dtypes.items())) or None),
        ("tokenizer files", list(result.tokenizer_files)),
    ]
    section = Section(heading=result.path, anchor="inspect", summary=summary,
                      details=_json_details(result.to_json(), ("path",)))
    return render_page(Page(title=f"hfconv inspect: {result.path}", sections=[section]))
