"""What every renderer shares: names from a folder made safe to print, and hfconv's version."""

from __future__ import annotations

import re

__all__ = ["escape_text", "json_safe", "package_version"]

# What a name from a folder must never put raw on a terminal or into a log line: C0 controls
# (ESC, newline, carriage return, ...), DEL, C1 controls (0x9b is a one-byte CSI), the Unicode
# line/paragraph separators and bidi overrides (text that reads other than it is), and lone
# surrogates (the bytes of a non-UTF-8 file name, which no UTF-8 output can hold).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SURROGATES = re.compile("[\ud800-\udfff]")

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


def json_safe(value: object) -> object:
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


def package_version() -> str:
    """hfconv's version from the installed package metadata (the source tree's when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("hfconv")
    except metadata.PackageNotFoundError:
        from .. import __version__

        return __version__
