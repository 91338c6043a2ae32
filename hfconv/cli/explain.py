"""``hfconv explain CODE`` and ``hfconv codes``: the finding-code registry (title, why, fix,
example), the README's code table on the command line."""

from __future__ import annotations

import difflib
import sys

import click

from ._common import CONTEXT_SETTINGS, emit, format_option

__all__ = ["codes_command", "explain_command"]


@click.command("explain", context_settings=CONTEXT_SETTINGS)
@click.argument("code", metavar="CODE")
@format_option(["text", "json"], help="text for people, json: {code, severity, title, why, fix, example}.")
def explain_command(code: str, fmt: str) -> None:
    """Explain a finding code: its title, default severity, why it matters, how to fix it, and an
    example message.

    \b
    Examples:
      hfconv explain HFC304
      hfconv explain hfc011 --format json

    Exit code: 0 explained, 2 not a finding code (the nearest codes are named).
    """
    from ..findings import all_codes
    from ..render.codes import code_json, render_code_text
    from ..render.jsonfmt import dumps_json

    codes = all_codes()
    key = code.strip().upper()
    if key not in codes:
        raise click.UsageError(_not_a_code(code, key, list(codes)))
    entry = codes[key]
    emit(dumps_json(code_json(entry)) if fmt == "json" else render_code_text(entry), None)
    sys.exit(0)


def _not_a_code(given: str, key: str, known: list[str]) -> str:
    from ..render import escape_text

    digits = key[:3] + key[3:].translate(str.maketrans("OILS", "0115"))  # HFC3O4: a letter for a digit
    close = [digits] if digits in known else []
    close += [c for c in known if key and c.startswith(key)][:8] or difflib.get_close_matches(key, known, n=5,
                                                                                               cutoff=0.6)
    close = list(dict.fromkeys(close))[:8]
    hint = f"; did you mean {', '.join(close)}?" if close else "; `hfconv codes` lists them all"
    return f"{escape_text(given)} is not a finding code{hint}"


@click.command("codes", context_settings=CONTEXT_SETTINGS)
@click.argument("prefix", metavar="[PREFIX]", required=False)
@format_option(["text", "json"], help="text: one line per code (code, severity, title); json: an array of "
               "{code, severity, title, why, fix, example}.")
def codes_command(prefix: str | None, fmt: str) -> None:
    """List every finding code (or those starting with PREFIX, e.g. HFC3).

    \b
    Examples:
      hfconv codes
      hfconv codes HFC3
      hfconv codes --format json > codes.json

    Exit code: 0 listed, 2 PREFIX matches no code.
    """
    from ..findings import all_codes
    from ..render.codes import render_code_list, render_codes_json

    codes = all_codes()
    key = (prefix or "").strip().upper()
    entries = [entry for code, entry in codes.items() if code.startswith(key)]
    if not entries:
        raise click.UsageError(_not_a_code(prefix or "", key, list(codes)).replace("is not a finding code",
                                                                                   "starts no finding code"))
    emit(render_codes_json(entries) if fmt == "json" else render_code_list(entries), None)
    sys.exit(0)
