"""``hfconv fix``'s reports: pure functions of a :class:`FixResult` (text, the --diff listing,
json). The fix library is named for type checkers only: rendering imports no operation."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from ..units import plural
from .common import escape_text
from .jsonfmt import dumps_json

if TYPE_CHECKING:  # pragma: no cover
    from ..fixing import Change, FixResult, Remaining

__all__ = ["render_diff", "render_json", "render_text"]

_UNSAFE_FLAG = "--unsafe-fixes"


def _codes(change: Change) -> str:
    return f" ({', '.join(change.codes)})" if change.codes else ""


def _change_line(change: Change) -> str:
    name = escape_text(change.file)
    unsafe = " [unsafe]" if change.unsafe else ""
    if change.action == "rename":
        return f"  rename   {name} -> {escape_text(change.new_name)}{unsafe}"
    if change.action == "delete":
        return f"  delete   {name}: {escape_text(change.summary)}{_codes(change)}{unsafe}"
    if change.action == "header":
        return f"  header   {name}: {escape_text(change.summary)}{_codes(change)}"
    verb = "create  " if change.action == "create" else "rewrite "
    return f"  {verb} {name}: {escape_text(change.summary)}{_codes(change)}{unsafe}"


def _diff_line(change: Change) -> str:
    """One line of --diff for a change that is not a JSON file's text: ``header NAME: ...``."""
    name = escape_text(change.file)
    if change.action == "rename":
        return f"rename {name} -> {escape_text(change.new_name)}"
    return f"{change.action} {name}: {escape_text(change.summary)}{_codes(change)}"


def _remaining_lines(remaining: tuple[Remaining, ...]) -> list[str]:
    lines = []
    for item in remaining:
        f = item.finding
        where = f" {escape_text(f.file)}" if f.file else ""
        lines.append(f"  {f.severity.value} {f.code}{where}: {escape_text(f.message)}")
        why = f"{item.why} (run with {_UNSAFE_FLAG})" if item.unsafe else item.why
        lines.append(f"      not fixed: {escape_text(why)}")
    return lines


def _refused(result: FixResult, headline: str) -> str:
    """The report of a refused folder: ``headline``, then each reason."""
    lines = [headline]
    lines.extend(f"  {f.code} {escape_text(f.file or '')}: {escape_text(f.message)}" for f in result.refused)
    return "\n".join(lines) + "\n"


def _tally(result: FixResult) -> str:
    errors = sum(1 for r in result.remaining if r.finding.severity.value == "error")
    warnings = sum(1 for r in result.remaining if r.finding.severity.value == "warning")
    return f"{plural(errors, 'error')}, {plural(warnings, 'warning')}"


def render_text(result: FixResult) -> str:
    """What was fixed, what remains (and why), the verdict."""
    path = escape_text(result.path)
    lines: list[str] = []
    if result.refused and not result.applied:
        return _refused(result, f"fix {path}: refused; nothing was changed")
    if result.refused:
        lines.append(f"fix {path}: {plural(len(result.changes), 'change')} made, then one failed")
    else:
        lines.append(f"fixed {path}: {plural(len(result.changes), 'change')}" if result.changes else
                     f"fix {path}: nothing to fix")
    lines.extend(_change_line(c) for c in result.changes)
    lines.extend(f"  note     {escape_text(n)}" for n in result.notes)
    for failure in result.refused:
        lines.append(f"  FAILED   {failure.code} {escape_text(failure.message)}")
    if result.remaining:
        lines.append(f"remaining after fixing: {_tally(result)}")
        lines.extend(_remaining_lines(result.remaining))
    lines.append("OK: no error remains" if result.ok else
                 f"NOT OK: {plural(result.errors, 'error')} remain{'s' if result.errors == 1 else ''}")
    return "\n".join(lines) + "\n"


def render_diff(result: FixResult) -> str:
    """--diff: a unified diff per JSON file, a line per header rewrite, deletion and rename."""
    path = escape_text(result.path)
    lines: list[str] = []
    if result.refused:
        return _refused(result, f"fix {path}: refused; nothing would be changed")
    for change in result.changes:
        if change.action in ("rewrite", "create"):
            name = escape_text(change.file)
            old = (change.old_text or "").splitlines(keepends=True)
            new = (change.new_text or "").splitlines(keepends=True)
            lines.append(f"# {name}: {escape_text(change.summary)}{_codes(change)}")
            diff = difflib.unified_diff(old, new, fromfile="/dev/null" if change.action == "create" else f"a/{name}",
                                        tofile=f"b/{name}")
            for line in diff:
                if line.endswith("\n"):
                    lines.append(escape_text(line[:-1]))
                else:  # the file's last line, without a newline: as git and diff say it
                    lines.extend((escape_text(line), "\\ No newline at end of file"))
        else:
            lines.append(_diff_line(change))
    lines.extend(f"note: {escape_text(n)}" for n in result.notes)
    if result.changes:
        lines.append(f"{plural(len(result.changes), 'change')} would be made; nothing was changed")
    else:
        lines.append(f"fix {path}: nothing to fix")
    unsafe = [r for r in result.remaining if r.unsafe]
    if unsafe:
        lines.append(f"{plural(len(unsafe), 'more finding')} would be fixed with {_UNSAFE_FLAG}")
    return "\n".join(lines) + "\n"


def render_json(result: FixResult) -> str:
    """The result as one JSON object (with each JSON file's text before and after for a dry run)."""
    data = result.to_json()
    if not result.applied:
        for entry, change in zip(data["changes"], result.changes):
            entry["old_text"], entry["new_text"] = change.old_text, change.new_text
    return dumps_json(data)
