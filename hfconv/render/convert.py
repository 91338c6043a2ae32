"""``hfconv convert``'s reports: pure functions of a :class:`ConversionResult` or a
:class:`ConversionError` (text, json, html). The conversion library is named for type
checkers only: rendering imports no operation.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..units import human_bytes
from .common import escape_text
from .text import finding_lines

if TYPE_CHECKING:  # pragma: no cover
    from ..conversion import ConversionError, ConversionResult

__all__ = ["render_error_html", "render_error_json", "render_error_text", "render_html", "render_json",
           "render_text"]

_MAX_LISTED = 20
"""Findings listed in text (a state dict saved with a 'module.' prefix misses every tensor)."""


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def render_text(result: ConversionResult) -> str:
    """A short human summary of a successful conversion; every name from a folder escaped."""
    lines = [_headline(result)]
    lines.extend(_written_lines(result))
    lines.extend(_verified_lines(result))
    if result.manifest:
        lines.append(f"  manifest  {escape_text(result.manifest)}")
    if result.durable:
        lines.append("  durable   yes (--fsync: on the disk before DST appeared)")
    return "\n".join(lines) + "\n"


def _headline(result: ConversionResult) -> str:
    src, dst = escape_text(result.src), escape_text(result.dst)
    if result.ok:
        return f"converted {src} -> {dst}"
    assert result.validation is not None
    return (f"converted {src} -> {dst}: output INVALID ({_plural(result.validation.errors, 'validation error')}"
            "; written anyway: --allow-invalid-output)")


def _written_lines(result: ConversionResult) -> list[str]:
    """Tensors, bytes, shards, dtype, aliases, files and time: what was written."""
    esc = escape_text
    lines = [f"  tensors   {result.tensors:,}",
             f"  bytes     {human_bytes(result.bytes)} ({_plural(result.bytes, 'byte')} of tensor data)",
             f"  shards    {_plural(len(result.shards), 'shard')}" + (f" + {result.index}" if result.index else "")]
    for shard in result.shards:
        lines.append(f"            {esc(shard.name)}  {_plural(shard.tensors, 'tensor')}  {human_bytes(shard.bytes)}")
    if result.dtype != "keep":
        lines.append(f"  dtype     {_plural(result.cast, 'tensor')} cast to {result.dtype}")
    if result.dropped_aliases:
        lines.append("  dropped   " + ", ".join(f"{esc(a)} (tied to {esc(k)})"
                                                for a, k in result.dropped_aliases.items()))
    if result.copied_aliases:
        lines.append("  copied    " + ", ".join(f"{esc(a)} (shared storage with {esc(k)})"
                                                for a, k in result.copied_aliases.items()))
    lines.append(f"  files     {len(result.files_copied):,} copied" +
                 (f", {len(result.files_skipped):,} skipped" if result.files_skipped else ""))
    for name, why in result.files_skipped.items():
        lines.append(f"            {esc(name)} {esc(why)}")
    lines.append(f"  time      {result.seconds:.2f} s ({result.mb_per_s:.1f} MB/s)")
    return lines


def _verified_lines(result: ConversionResult) -> list[str]:
    """What verification proved, and the findings of an invalid output."""
    if result.verified and result.ok:
        return ["  verified  yes (every tensor bitwise, every .bin storage's CRC-32, output validated)"]
    if not result.verified:
        return ["  verified  no (--no-verify: nothing was checked: no tensor compared, no CRC-32, "
                "output not validated)"]
    lines = ["  verified  tensors yes (bitwise, with every .bin storage's CRC-32); output INVALID:"]
    listed = result.validation.findings if result.validation is not None else ()
    lines.extend(finding_lines(listed[:_MAX_LISTED], indent="            ", fixes=False))
    if len(listed) > _MAX_LISTED:
        lines.append(f"            ... and {len(listed) - _MAX_LISTED} more (--format json lists them all)")
    return lines


def render_json(result: ConversionResult) -> str:
    return json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"


def render_html(result: ConversionResult) -> str:
    from .html import render_convert_html  # jinja2 only when a page is asked for

    return render_convert_html(result)


def render_error_text(src: str, dst: str, error: ConversionError) -> str:
    """``conversion failed (CODE): <why>; no DST was created.`` then the findings that explain
    it, as validate lists them; every name from the folder escaped."""
    message = escape_text(error.message).rstrip(".")
    lines = [f"conversion failed ({error.code}): {message}; no DST was created."]
    listed = [item for item in error.findings if item.message != error.message]
    lines.extend(finding_lines(listed[:_MAX_LISTED]))
    if len(listed) > _MAX_LISTED:
        lines.append(f"  ... and {len(listed) - _MAX_LISTED} more (--format json lists them all)")
    return "\n".join(lines) + "\n"


def render_error_json(src: str, dst: str, error: ConversionError) -> str:
    document = {"ok": False, "src": src, "dst": dst, "error": {"code": error.code, "message": error.message},
                "findings": [f.to_json() for f in error.findings]}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def render_error_html(src: str, dst: str, error: ConversionError) -> str:
    from .html import render_convert_error_html  # jinja2 only when a page is asked for

    return render_convert_error_html(src, dst, error)
