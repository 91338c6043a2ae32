"""Compact bars drawn with block characters for the terminal: the shard bar (``inspect``) and
the device bars (``load-test``). Text renderers add them when stdout is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..units import human_bytes
from ..weight_map import unit_of
from .common import escape_text
from .pictures import layer_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..weight_map import MapShard

__all__ = ["device_bars", "device_strip", "shard_bar", "want_bars"]

_FILLS = ("\u2588", "\u2593")  # full block, dark shade: neighbouring shards alternate
_ABSENT = "\u2591"  # light shade: a missing or unreadable shard; free memory
_WIDTH = 48


def want_bars(bars: bool | None) -> bool:
    """``bars`` as given, or (None) whether stdout is a terminal."""
    if bars is not None:
        return bars
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _widths(sizes: Sequence[int], width: int) -> list[int]:
    """Characters per item, proportional to ``sizes``, at least one each."""
    total = sum(sizes) or 1
    return [max(1, round(size / total * width)) for size in sizes]


def shard_bar(shards: Sequence[MapShard], width: int = _WIDTH) -> list[str]:
    """One line: each shard as long as its bytes, neighbours alternating ``█``/``▓``, a missing
    or unreadable shard ``░`` (drawn as long as an average shard); [] without shards."""
    if not shards:
        return []
    read = [s.tensor_bytes for s in shards if s.problem is None]
    average = sum(read) // len(read) if read else 1
    sizes = [s.tensor_bytes if s.problem is None else average for s in shards]
    parts = []
    for i, (shard, chars) in enumerate(zip(shards, _widths(sizes, width))):
        parts.append((_ABSENT if shard.problem is not None else _FILLS[i % 2]) * chars)
    absent = sum(1 for s in shards if s.problem is not None)
    note = f"{len(shards)} file{'' if len(shards) == 1 else 's'}"
    if absent:
        note += f", {absent} missing or unreadable ({_ABSENT})"
    return [f"  shards  {''.join(parts)}  {note}"]


_DEVICE_FILLS = ("\u2588", "\u2593", "\u2592", "\u258c", "\u2590")


def device_strip(shards: Sequence[MapShard], placement: Mapping[str, str], width: int = _WIDTH) -> list[str]:
    """One line: the modules in model order (embeddings, blocks, head), each as long as its
    bytes, drawn with the character of its device (disk ``░``), and the legend."""
    rows = layer_rows([t for s in shards for t in s.tensors])
    if not rows or not placement:
        return []
    where: dict[str, str] = {}
    for name, device in placement.items():
        where.setdefault(unit_of(name), device)
    devices = list(dict.fromkeys(where.get(r.name, "?") for r in rows))
    chars = {d: (_ABSENT if d == "disk" else _DEVICE_FILLS[i % len(_DEVICE_FILLS)]) for i, d in enumerate(devices)}
    widths = _widths([r.bytes for r in rows], width) if len(rows) <= width else [1] * len(rows)
    if len(rows) > width:  # more modules than characters: sample them
        step = len(rows) / width
        rows = [rows[int(i * step)] for i in range(width)]
        widths = [1] * width
    line = "".join(chars[where.get(r.name, "?")] * w for r, w in zip(rows, widths))
    legend = ", ".join(f"{c} {escape_text(d)}" for d, c in chars.items())
    return [f"  map     {line}  {legend}"]


def device_bars(devices: Sequence[tuple[str, int, int | None, int | None]], width: int = 30) -> list[str]:
    """One line per device ``(device, placed, limit, peak)``: the bytes placed filled (``█``)
    against the limit (``░``), the peak marked ``|`` when it is inside the bar."""
    lines = []
    name_w = max((len(d[0]) for d in devices), default=0)
    for i, (device, placed, limit, peak) in enumerate(devices):
        top = max(limit or 0, placed, peak or 0, 1)
        filled = min(width, round(placed / top * width))
        if placed and not filled:
            filled = 1
        cells = ["\u2588"] * filled + [_ABSENT if limit is not None else " "] * (width - filled)
        if peak is not None and 0 < peak <= top:
            cells[min(width - 1, max(0, round(peak / top * width) - 1))] = "|"
        words = f"{human_bytes(placed)}" + (f" of {human_bytes(limit)}" if limit is not None else " (no limit)")
        if peak is not None:
            words += f", peak {human_bytes(peak)}"
        lines.append(f"  {'memory' if i == 0 else '':<8}{escape_text(device):<{name_w}}  [{''.join(cells)}]  {words}")
    return lines
