"""Renderers: pure functions from a Report (or a list of them) to text."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath, PurePosixPath
from urllib.parse import quote

from .findings import REGISTRY, Finding, Severity
from .report import Report
from .units import human_bytes, human_count

_LAYER_NUMBER = re.compile(r"(?<=\.)(\d+)(?=\.)")
# What a name from a folder must never put raw on a terminal or into a log line: C0 controls
# (ESC, newline, carriage return, ...), DEL, C1 controls (0x9b is a one-byte CSI), the Unicode
# line/paragraph separators and bidi overrides (text that reads other than it is), and lone
# surrogates (the bytes of a non-UTF-8 file name, which no UTF-8 output can hold).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SURROGATES = re.compile("[\ud800-\udfff]")
_COLOURS = {Severity.ERROR: "\x1b[31m", Severity.WARNING: "\x1b[33m", Severity.INFO: "\x1b[36m"}
_RESET = "\x1b[0m"


def _visible(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a non-UTF-8 file name (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_text(value: object) -> str:
    """``value`` as one safe line of text: control characters, bidi overrides and the bytes of
    non-UTF-8 names shown as escapes (``\\x1b``, ``\\n``, ``\\xff``), so a name from a folder can
    neither drive the terminal nor forge a line of the report."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_visible, text)


def _surrogate_visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def json_safe(value):
    """``value`` (a JSON document) with every lone surrogate in a string or key written as
    ``\\xff`` text, so the document encodes as valid UTF-8 (a non-UTF-8 file name's bytes, which
    ``json.dumps`` would otherwise pass through or write as a lone ``\\udcff`` escape that strict
    parsers refuse). Control characters are left to ``json.dumps``, which escapes them."""
    if isinstance(value, str):
        return _SURROGATES.sub(_surrogate_visible, value) if _SURROGATES.search(value) else value
    if isinstance(value, dict):
        return {json_safe(k) if isinstance(k, str) else k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps_json(value) -> str:
    """The JSON text hfconv prints: indented, UTF-8 safe (see :func:`json_safe`), newline-terminated."""
    return json.dumps(json_safe(value), indent=2) + "\n"


def compress_numbers(numbers: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0..2,5,7..8'."""
    ordered = sorted(set(numbers))
    parts: list[str] = []
    start = prev = ordered[0]
    for n in ordered[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}..{prev}")
        if n is not None:
            start = prev = n
    return ",".join(parts)


@dataclass(frozen=True)
class FindingGroup:
    """Findings that differ only in a layer number, shown as one line."""

    first: Finding
    tensor: str | None
    message: str
    count: int


def group_findings(findings: Sequence[Finding]) -> list[FindingGroup]:
    """Fold findings of one code whose tensor names differ only in layer numbers."""
    buckets: dict[tuple, list[tuple[Finding, list[int]]]] = {}
    for f in findings:
        if f.tensor and _LAYER_NUMBER.search(f.tensor):
            numbers = [int(m) for m in _LAYER_NUMBER.findall(f.tensor)]
            pattern = _LAYER_NUMBER.sub("{}", f.tensor)
            message = f.message.replace(f.tensor, "\0")
            key = (f.code, f.severity, f.file, pattern, _LAYER_NUMBER.sub("{}", message), len(numbers))
        else:
            key = (id(f),)
            numbers = []
        buckets.setdefault(key, []).append((f, numbers))
    groups: list[FindingGroup] = []
    for members in buckets.values():
        first = members[0][0]
        if len(members) == 1:
            groups.append(FindingGroup(first, first.tensor, first.message, 1))
            continue
        columns = list(zip(*(numbers for _, numbers in members)))
        names = iter(
            str(col[0]) if len(set(col)) == 1 else "{" + compress_numbers(col) + "}" for col in columns
        )
        tensor = _LAYER_NUMBER.sub(lambda _m: next(names), first.tensor or "")
        groups.append(FindingGroup(first, tensor, first.message.replace(first.tensor or "", tensor), len(members)))
    return groups


def render_text(reports: Sequence[Report], colour: bool = False, totals: bool | None = None) -> str:
    """Readable report: a header per folder, findings grouped, the fix once per code.

    Every name from a folder (its path, file and tensor names in messages) is escaped
    (:func:`escape_text`). With ``totals`` (default: several reports) a last line
    ``N folders, M failed``.
    """
    out: list[str] = []
    for report in reports:
        out.append(_render_one_text(report, colour))
    if totals if totals is not None else len(reports) > 1:
        failed = sum(1 for r in reports if not r.ok)
        out.append(f"{len(reports)} folder{'' if len(reports) == 1 else 's'}, {failed} failed\n")
    return "\n".join(out)


def finding_lines(findings: Sequence[Finding], colour: bool = False, indent: str = "  ",
                  fixes: bool = True) -> list[str]:
    """Findings as validate prints them (``error   HFC304 message``, grouped over layer numbers,
    each code's fix once), escaped; convert and load-test list theirs with this too."""
    lines: list[str] = []
    fixes_shown: set[str] = set()
    for group in group_findings(findings):
        f = group.first
        sev = f.severity.value
        label = f"{_COLOURS[f.severity]}{sev:<7}{_RESET}" if colour else f"{sev:<7}"
        count = f" (x{group.count})" if group.count > 1 else ""
        lines.append(f"{indent}{label} {escape_text(f.code)} {escape_text(group.message)}{count}")
        if fixes and f.code not in fixes_shown and f.severity is not Severity.INFO:
            fixes_shown.add(f.code)
            lines.append(f"{indent}        fix: {REGISTRY[f.code].fix}")
    return lines


def _render_one_text(report: Report, colour: bool) -> str:
    layout, summary = report.layout, report.summary
    lines = [escape_text(report.path)]
    if layout.describe() == "none":
        lines.append("  weights: none")
    else:
        lines.append(
            f"  weights: {escape_text(layout.describe())}, {len(layout.shards)} file(s); "
            f"{summary.tensors} tensors, {human_count(summary.parameters)} parameters, {human_bytes(summary.bytes)}"
        )
    lines.extend(finding_lines(report.findings, colour))
    if report.manifest_matched is not None:
        n = report.manifest_matched
        lines.append(f"  manifest: {n:,} tensor{'' if n == 1 else 's'} match{'es' if n == 1 else ''} the manifest "
                     "(dtype, shape and sha256)")
    verdict = "OK" if report.ok else "FAILED"
    if colour:
        verdict = f"\x1b[32m{verdict}{_RESET}" if report.ok else f"\x1b[31m{verdict}{_RESET}"
    lines.append(f"  {verdict}: {report.errors} error(s), {report.warnings} warning(s)"
                 f"{' (--strict: warnings fail)' if report.strict and report.warnings else ''}")
    return "\n".join(lines) + "\n"


def render_json(reports: Sequence[Report], array: bool | None = None) -> str:
    """The contract's JSON: one object for one folder, an array for several (``array=True``: an
    array even of one, as ``--recursive`` and several PATHs print)."""
    objects = [_json_object(r) for r in reports]
    if array is None:
        array = len(objects) != 1
    return dumps_json(objects if array else objects[0])


def _json_object(report: Report) -> dict:
    data = report.to_json()
    for item in data["findings"]:
        item["fix"] = REGISTRY[item["code"]].fix  # an extension of the contract: how to fix it
    return data


def _escape_property(value: str) -> str:
    value = escape_text(value)
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A").replace(":", "%3A").replace(",", "%2C")


def _escape_data(value: str) -> str:
    value = escape_text(value)
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def render_github(reports: Sequence[Report]) -> str:
    """GitHub Actions workflow commands, one per finding (info becomes ::notice)."""
    lines: list[str] = []
    for report in reports:
        for f in report.findings:
            command = {"error": "error", "warning": "warning", "info": "notice"}[f.severity.value]
            props = []
            if f.file:
                prefix = report.path.rstrip("/")
                props.append(f"file={_escape_property(f'{prefix}/{f.file}')}")
            props.append(f"title={_escape_property(f.code)}")
            lines.append(f"::{command} {','.join(props)}::{_escape_data(f'{f.code} {f.message}')}")
    return "\n".join(lines) + ("\n" if lines else "")


SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_SARIF_LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
_SRCROOT = "%SRCROOT%"
_FALLBACK_URI = "https://pypi.org/project/hfconv/"


def package_version() -> str:
    """hfconv's version from the installed package metadata (the source tree's when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("hfconv")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def _information_uri() -> str:
    """The project's home page from the package metadata, else its PyPI page."""
    from importlib import metadata

    try:
        meta = metadata.metadata("hfconv")
    except metadata.PackageNotFoundError:
        return _FALLBACK_URI
    for entry in meta.get_all("Project-URL") or []:
        url = entry.partition(",")[2].strip()
        if url.startswith("https://"):
            return url
    home = meta.get("Home-page")
    return home if home and home.startswith("https://") else _FALLBACK_URI


def _rule_name(title: str) -> str:
    """SARIF wants rule names as identifiers: 'git-lfs pointer' -> 'GitLfsPointer'."""
    return "".join(word[:1].upper() + word[1:] for word in re.split(r"[^0-9A-Za-z]+", title) if word)


def _artifact_location(path: str, base: str) -> dict:
    """A URI for path: relative to base (the checkout, for GitHub code scanning) when inside it.

    Outside base (another drive, or above it) a relative path would point into the wrong
    place once the log is read elsewhere, so it becomes an absolute file:// URI.
    """
    absolute = os.path.abspath(os.path.join(base, path))
    try:
        relative = os.path.relpath(absolute, base)
    except ValueError:  # Windows: another drive
        relative = None
    if relative is None or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return {"uri": _file_uri(absolute)}
    # Percent-encode what is not allowed in a URI path (spaces, '%', '#', '?', non-ASCII), from the
    # name's bytes: a non-UTF-8 file name becomes its own bytes (%FF%FE), never an encoding error.
    return {"uri": quote(_name_bytes(PurePath(relative).as_posix()), safe="/"), "uriBaseId": _SRCROOT}


def _name_bytes(name: str) -> bytes:
    """A file name's bytes: the surrogate-escaped bytes of a non-UTF-8 name given back as they were."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (from JSON text, not a disk)
        return name.encode("utf-8", "surrogatepass")


def _file_uri(absolute: str) -> str:
    """``file://`` URI of an absolute path (``PurePath.as_uri`` fails on a non-UTF-8 name)."""
    path = PurePath(absolute)
    if not isinstance(path, PurePosixPath):  # Windows: its drive rules
        return path.as_uri()
    return "file://" + quote(_name_bytes(path.as_posix()), safe="/")


def _sarif_result(report: Report, f: Finding, rule_index: int, base: str) -> dict:
    where = os.path.join(report.path, f.file) if f.file else report.path
    location: dict = {"physicalLocation": {"artifactLocation": _artifact_location(where, base)}}
    if f.tensor:
        location["logicalLocations"] = [{"name": f.tensor, "fullyQualifiedName": f.tensor}]
    artifact = location["physicalLocation"]["artifactLocation"]["uri"]
    # A stable identity across runs, so code scanning tracks one alert instead of opening a new one;
    # binary weights have no lines for GitHub to fingerprint. Not the message: counts in it
    # (HFC902's "holds 12 NaN values") change between runs.
    identity = "\0".join((f.code, artifact, f.tensor or ""))
    result: dict = {
        "ruleId": f.code,
        "ruleIndex": rule_index,
        "level": _SARIF_LEVELS[f.severity],
        "message": {"text": f.message},
        "locations": [location],
        "partialFingerprints": {"hfconvFinding/v1": hashlib.sha256(_name_bytes(identity)).hexdigest()},
        "properties": {"severity": f.severity.value, "folder": report.path},
    }
    for key in ("file", "tensor"):
        if getattr(f, key):
            result["properties"][key] = getattr(f, key)
    return result


def _sarif_rule(code: str) -> dict:
    entry = REGISTRY[code]
    return {
        "id": code,
        "name": _rule_name(entry.title),
        "shortDescription": {"text": entry.title},
        "fullDescription": {"text": entry.why},
        "help": {"text": f"{entry.fix}\nExample: {entry.example}",
                 "markdown": f"**Fix:** {entry.fix}\n\n**Example:** `{entry.example}`"},
        "defaultConfiguration": {"level": _SARIF_LEVELS[entry.severity]},
        "properties": {"severity": entry.severity.value},
    }


def render_sarif(reports: Sequence[Report], base: str | None = None) -> str:
    """One SARIF 2.1.0 log with one run holding every folder's findings (GitHub code scanning).

    Locations are relative to ``base`` (default: the current directory, which is the checkout
    in a CI job), under the ``%SRCROOT%`` base id.
    """
    base = os.path.abspath(base or os.getcwd())
    codes = sorted({f.code for r in reports for f in r.findings})
    index = {code: i for i, code in enumerate(codes)}
    results = [_sarif_result(r, f, index[f.code], base) for r in reports for f in r.findings]
    run = {
        "tool": {"driver": {
            "name": "hfconv",
            "version": package_version(),
            "informationUri": _information_uri(),
            "rules": [_sarif_rule(code) for code in codes],
        }},
        "originalUriBaseIds": {_SRCROOT: {"uri": _file_uri(base).rstrip("/") + "/"}},
        "results": results,
        "properties": {"folders": [
            {"path": r.path, "ok": r.ok, "errors": r.errors, "warnings": r.warnings} for r in reports
        ]},
    }
    log = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(json_safe(log), indent=2, ensure_ascii=False) + "\n"


def render_html(reports: Sequence[Report]) -> str:
    """A self-contained HTML page (see :mod:`hfconv.render_html`; jinja2 is imported only here)."""
    from .render_html import render_validate_html

    return render_validate_html(reports)


RENDERERS: dict[str, Callable[[Sequence[Report]], str]] = {
    "text": render_text,
    "json": render_json,
    "github": render_github,
    "sarif": render_sarif,
    "html": render_html,
}
