"""The text report: findings grouped over layer numbers, the fix once per code, a verdict per folder."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..findings import REGISTRY, Finding, Severity
from ..report import Report
from ..units import human_bytes, human_count, plural
from .common import escape_text

if TYPE_CHECKING:  # pragma: no cover
    from ..inspection import Inspection

__all__ = ["FindingGroup", "compress_numbers", "finding_lines", "group_findings", "render_inspection_text",
           "render_text"]

_LAYER_NUMBER = re.compile(r"(?<=\.)(\d+)(?=\.)")
_COLOURS = {Severity.ERROR: "\x1b[31m", Severity.WARNING: "\x1b[33m", Severity.INFO: "\x1b[36m"}
_RESET = "\x1b[0m"


def compress_numbers(numbers: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0..2,5,7..8'."""
    ordered = sorted(set(numbers))
    parts: list[str] = []
    start = prev = ordered[0]
    for n in [*ordered[1:], None]:
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


def _take_from(names: Iterator[str]) -> Callable[[re.Match[str]], str]:
    """A ``re.sub`` replacement that writes the next of ``names`` for each match."""
    return lambda _match: next(names)


def group_findings(findings: Sequence[Finding]) -> list[FindingGroup]:
    """Fold findings of one code whose tensor names differ only in layer numbers."""
    buckets: dict[tuple[object, ...], list[tuple[Finding, list[int]]]] = {}
    for f in findings:
        key: tuple[object, ...]
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
        tensor = _LAYER_NUMBER.sub(_take_from(names), first.tensor or "")
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
            f"  weights: {escape_text(layout.describe())}, {plural(len(layout.shards), 'file')}; "
            f"{plural(summary.tensors, 'tensor')}, {human_count(summary.parameters)} parameters, "
            f"{human_bytes(summary.bytes)}"
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


def render_inspection_text(result: Inspection, bars: bool | None = None) -> str:
    """``inspect``'s summary for people; every name from the folder escaped (:func:`escape_text`).
    ``bars``: add the shard bar drawn with block characters (None: when stdout is a terminal)."""
    from .termbars import shard_bar, want_bars

    layout = result.layout
    lines = [result.path]
    arch = ", ".join(result.architectures) or "?"
    lines.append(f"  model: {result.model_type or '?'} ({arch}), config dtype {result.config_dtype or '?'}")
    if layout.describe() == "none":
        lines.append("  weights: none")
    else:
        kind = "sharded" if layout.sharded else "single file"
        lines.append(f"  weights: {layout.format}, {kind}" + (f", index {layout.index}" if layout.index else ""))
    lines.append(f"  tensors: {result.tensors}, parameters: {human_count(result.parameters)} ({result.parameters}), "
                 f"bytes: {human_bytes(result.bytes)}")
    lines.append("  dtypes: " + (", ".join(f"{d} x{n}" for d, n in sorted(result.dtypes.items())) or "none"))
    for shard in result.shards:
        detail = shard.error or f"{shard.tensors} tensors, {human_bytes(shard.tensor_bytes)} of tensors"
        size = human_bytes(shard.file_bytes)
        lines.append(f"    {shard.name:<45} {size:>10}  {shard.format or '-':<11} {detail}")
    if want_bars(bars):
        lines.extend(shard_bar(getattr(result, "shard_map", ())))
    lines.append("  tokenizer: " + (", ".join(result.tokenizer_files) or "none"))
    if result.tensor_rows is not None:
        lines.extend(_tensor_table(result))
    return "\n".join(escape_text(line) for line in lines) + "\n"


def _tensor_table(result: Inspection) -> list[str]:
    """``--tensors``: one row per tensor (names escaped by the caller; widths from the escaped names)."""
    rows = [(escape_text(r.name), "[" + ", ".join(map(str, r.shape)) + "]", r.dtype, escape_text(r.shard),
             f"{r.bytes:,}") for r in result.tensor_rows or ()]
    n = len(rows)
    out = [f"  tensors ({n:,} tensor{'' if n == 1 else 's'} of the weights loaders read):"]
    if not rows:
        return out
    head = ("name", "shape", "dtype", "shard", "bytes")
    widths = [min(max(len(head[i]), *(len(row[i]) for row in rows)), 80) for i in range(4)]
    last = max(5, *(len(row[4]) for row in rows))

    def fmt(cells: tuple[str, ...]) -> str:
        left = "  ".join(c.ljust(w) for c, w in zip(cells[:4], widths))
        return f"    {left}  {cells[4].rjust(last)}".rstrip()

    out.append(fmt(head))
    out.extend(fmt(row) for row in rows)
    return out
