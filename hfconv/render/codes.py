"""The finding-code registry for people and programs: ``hfconv explain CODE`` and ``hfconv codes``."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from ..findings import Code
from .common import escape_text
from .jsonfmt import dumps_json

__all__ = ["code_json", "render_code_list", "render_code_text", "render_codes_json"]

_WIDTH = 100


def code_json(entry: Code) -> dict[str, str]:
    """One code as JSON: code, severity, title, why, fix, example."""
    return {"code": entry.code, "severity": entry.severity.value, "title": entry.title, "why": entry.why,
            "fix": entry.fix, "example": entry.example}


def render_code_text(entry: Code) -> str:
    """``hfconv explain CODE``: the title line, then why, fix and an example message, wrapped."""
    lines = [f"{entry.code} ({entry.severity.value}): {entry.title}", ""]
    for label, text in (("Why", entry.why), ("Fix", entry.fix), ("Example", entry.example)):
        lines.extend(textwrap.wrap(escape_text(text), _WIDTH, initial_indent=f"{label}: ",
                                   subsequent_indent="  ", break_on_hyphens=False))
        lines.append("")
    return "\n".join(lines[:-1]) + "\n"


def render_code_list(entries: Sequence[Code]) -> str:
    """``hfconv codes``: one line per code (code, severity, title)."""
    return "".join(f"{e.code}  {e.severity.value:<7}  {escape_text(e.title)}\n" for e in entries)


def render_codes_json(entries: Sequence[Code]) -> str:
    """``hfconv codes --format json``: an array of :func:`code_json` objects."""
    return dumps_json([code_json(e) for e in entries])
