"""Reports for CI: GitHub Actions workflow commands and SARIF 2.1.0 (GitHub code scanning)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import PurePath, PurePosixPath

from ..findings import REGISTRY, Finding, Severity
from ..report import Report
from .common import escape_text, json_safe, package_version

__all__ = ["SARIF_SCHEMA", "render_github", "render_sarif"]


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


def _information_uri() -> str | None:
    """The project's page from the package metadata (its first https Project-URL, or Home-page),
    else None: the SARIF field is optional, and hfconv links no page that does not exist (it is
    not published on a package index). Set ``[project.urls]`` in pyproject.toml to fill it."""
    from importlib import metadata

    try:
        meta = metadata.metadata("hfconv")
    except metadata.PackageNotFoundError:
        return None
    for entry in meta.get_all("Project-URL") or []:
        url = entry.partition(",")[2].strip()
        if url.startswith("https://"):
            return url
    home = next(iter(meta.get_all("Home-page") or []), None)
    return home if home and home.startswith("https://") else None


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
    return {"uri": _quote_path(PurePath(relative).as_posix()), "uriBaseId": _SRCROOT}


def _quote_path(name: str) -> str:
    """``name`` percent-encoded from its bytes (:func:`_name_bytes`), ``/`` kept."""
    from urllib.parse import quote  # SARIF only: text and JSON reports do not import it

    return quote(_name_bytes(name), safe="/")


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
    return "file://" + _quote_path(path.as_posix())


def _sarif_result(report: Report, f: Finding, rule_index: int, base: str) -> dict:
    import hashlib  # SARIF only: text and JSON reports do not import it

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
    driver: dict[str, object] = {"name": "hfconv", "version": package_version()}
    uri = _information_uri()
    if uri is not None:
        driver["informationUri"] = uri
    driver["rules"] = [_sarif_rule(code) for code in codes]
    run = {
        "tool": {"driver": driver},
        "originalUriBaseIds": {_SRCROOT: {"uri": _file_uri(base).rstrip("/") + "/"}},
        "results": results,
        "properties": {"folders": [
            {"path": r.path, "ok": r.ok, "errors": r.errors, "warnings": r.warnings} for r in reports
        ]},
    }
    log = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(json_safe(log), indent=2, ensure_ascii=False) + "\n"
