"""The pictures of the HTML reports: shard map, layer map, device map and memory bars.

Pure functions from results to HTML fragments (inline SVG; no ids, no ``url(...)``, no
script), safe to paste into a page: every name from a folder is escaped here
(:func:`esc`), with control characters shown as escapes. ``layer_map_svg`` is public for
other pages (e.g. a diff coloured by change per block): build :class:`LayerRow` values with
your own ``colour`` and ``note`` and pass a legend.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..findings import Finding, Severity
from ..units import human_bytes, human_count
from ..weight_map import BLOCK_PATTERN as _BLOCK
from ..weight_map import unit_of
from .common import escape_text

if TYPE_CHECKING:  # pragma: no cover
    from ..weight_map import MapShard

__all__ = [
    "DEVICE_COLOURS", "DTYPE_COLOURS", "SEVERITY_COLOURS", "LayerRow", "MemoryBar", "TensorLike", "device_colours",
    "device_map_svg", "dtype_colour", "esc", "layer_map_svg", "layer_rows", "memory_bars_html", "shape_text",
    "shard_map_html", "wrap_name",
]

DTYPE_COLOURS: dict[str, str] = {
    "F32": "#4e79a7", "F64": "#2d4e73", "BF16": "#b07aa1", "F16": "#59a14f", "F8_E4M3": "#f28e2b",
    "F8_E5M2": "#e15759", "I64": "#9c755f", "I32": "#bab0ac", "I16": "#c9b8a8", "I8": "#edc948",
    "U8": "#d4a017", "BOOL": "#76b7b2",
}
_OTHER_DTYPE = "#8c8c8c"
DEVICE_COLOURS = ("#4e79a7", "#59a14f", "#f28e2b", "#b07aa1", "#edc948", "#76b7b2", "#e15759", "#9c755f")
_CPU_COLOUR = "#8c8c8c"
_DISK_COLOUR = "#c9b8a8"
SEVERITY_COLOURS = {"error": "#cf222e", "warning": "#bf8700", "info": "#0969da"}
_COLOUR = re.compile(r"^#[0-9a-fA-F]{3,8}$")


def esc(value: object) -> str:
    """``value`` as HTML text or attribute value: control characters as escapes, markup escaped."""
    return html.escape(escape_text(value), quote=True)


def _tip(text: str) -> str:
    """Hover text: its lines (names in them already escaped with :func:`escape_text`) as HTML."""
    return html.escape(text, quote=True)


def wrap_name(value: object) -> str:
    """A name escaped, with a line-break opportunity (``<wbr>``) after each ``.``, ``-`` and ``/``."""
    return re.sub(r"([./-])", r"\1<wbr>", esc(value))


def _colour(value: str | None, default: str) -> str:
    return value if value and _COLOUR.match(value) else default


def dtype_colour(dtype: str) -> str:
    return DTYPE_COLOURS.get(dtype.upper(), _OTHER_DTYPE)


def shape_text(shape: Sequence[int]) -> str:
    """``[4096, 11008]``."""
    return "[" + ", ".join(str(n) for n in shape) + "]"


def _legend(items: Iterable[tuple[str, str]], extra: str = "") -> str:
    """A legend: colour swatch + label per item."""
    parts = [f'<span class="key"><span class="swatch" style="background:{_colour(c, _OTHER_DTYPE)}"></span>'
             f"{esc(label)}</span>" for c, label in items]
    return f'<p class="legend">{"".join(parts)}{extra}</p>'


def _hatch(x: float, y: float, w: float, h: float, step: float = 6.0) -> str:
    """Diagonal lines filling the rectangle (a path: patterns would need ``url(#id)``)."""
    parts = []
    u = x - h
    while u < x + w:
        t0, t1 = max(0.0, (x - u) / h), min(1.0, (x + w - u) / h)
        if t1 > t0:
            parts.append(f"M{u + t0 * h:.1f} {y + h - t0 * h:.1f}L{u + t1 * h:.1f} {y + h - t1 * h:.1f}")
        u += step
    return "".join(parts)


def _severity_marks(findings: Sequence[Finding]) -> tuple[dict[str, str], dict[str, str]]:
    """(tensor name -> worst severity naming it, file -> worst severity of findings naming only the file)."""
    tensors: dict[str, Severity] = {}
    files: dict[str, Severity] = {}
    for f in findings:
        if f.tensor:
            if f.tensor not in tensors or f.severity.rank > tensors[f.tensor].rank:
                tensors[f.tensor] = f.severity
        elif f.file and (f.file not in files or f.severity.rank > files[f.file].rank):
            files[f.file] = f.severity
    return {k: v.value for k, v in tensors.items()}, {k: v.value for k, v in files.items()}


# --- shard map ---------------------------------------------------------------------------------

_BAR_W = 1000.0
_BAR_H = 22.0
_MAX_SEGMENTS = 1500
"""Per shard; beyond it, neighbouring tiny tensors of one dtype are drawn as one segment."""


def _segments(shard: MapShard, scale: float, marks: Mapping[str, str]) -> list[str]:
    """The rects of one shard's tensors (tiny neighbours of one dtype merged when there are many)."""
    out: list[str] = []
    x = 0.0
    merge_below = 0.5 if len(shard.tensors) > _MAX_SEGMENTS else 0.0
    pending: list[tuple[str, tuple[int, ...], str, int]] = []

    def flush() -> None:
        nonlocal x
        if not pending:
            return
        nbytes = sum(p[3] for p in pending)
        w = nbytes * scale
        dtype = pending[0][2]
        mark = next((marks[p[0]] for p in pending if p[0] in marks), None)
        if len(pending) == 1:
            name, shape, _, _ = pending[0]
            tip = f"{escape_text(name)}\n{shape_text(shape)} {dtype}, {human_bytes(nbytes)}"
        else:
            first, last = escape_text(pending[0][0]), escape_text(pending[-1][0])
            tip = f"{len(pending)} tensors ({first} \u2026 {last})\n{dtype}, {human_bytes(nbytes)}"
        if mark:
            tip += f"\nnamed by a finding ({mark})"
        cls = f' class="seg marked {mark}"' if mark else ' class="seg"'
        out.append(f'<rect{cls} x="{x:.2f}" y="1" width="{max(w, 0.6):.2f}" height="{_BAR_H - 2:.0f}" '
                   f'fill="{dtype_colour(dtype)}"><title>{_tip(tip)}</title></rect>')
        if mark:
            colour = SEVERITY_COLOURS[mark]
            out.append(f'<rect x="{x:.2f}" y="{_BAR_H - 5:.0f}" width="{max(w, 3):.2f}" height="5" fill="{colour}"/>')
        x += w
        pending.clear()

    for t in shard.tensors:
        w = t.bytes * scale
        if pending and (not merge_below or w >= merge_below or pending[0][2] != t.dtype
                        or t.name in marks or pending[-1][0] in marks):
            flush()
        pending.append((t.name, t.shape, t.dtype, t.bytes))
        if not merge_below or w >= merge_below:
            flush()
    flush()
    return out


def shard_map_html(shards: Sequence[MapShard], findings: Sequence[Finding] = (), scale_to: int = 0) -> str:
    """One bar per shard (length = bytes, one segment per tensor coloured by dtype, hover for
    name, shape, dtype and bytes); a missing or unreadable shard drawn hatched and labelled;
    segments and shards a finding names marked in its severity's colour. ``scale_to``: the bytes
    of a full-length bar (to draw two maps to one scale); default the largest shard. An HTML fragment."""
    if not shards:
        return ""
    tensor_marks, file_marks = _severity_marks(findings)
    largest = max([s.tensor_bytes for s in shards] + [scale_to, 1])
    scale = _BAR_W / largest
    rows = []
    dtypes: dict[str, None] = {}
    for shard in shards:
        for t in shard.tensors:
            dtypes.setdefault(t.dtype.upper(), None)
        if shard.problem is not None:
            what = "missing" if shard.problem == "missing" else "unreadable"
            name = escape_text(shard.name)
            tip = f"{name}\n{what}: {escape_text(shard.problem)}" if what != "missing" else f"{name}\nmissing"
            body = (f'<rect x="0.5" y="1" width="{_BAR_W - 1:.0f}" height="{_BAR_H - 2:.0f}" class="absent" '
                    f'fill="none" stroke="{SEVERITY_COLOURS["error"]}" stroke-dasharray="6 4"/>'
                    f'<path d="{_hatch(0, 1, _BAR_W, _BAR_H - 2, 14)}" stroke="{SEVERITY_COLOURS["error"]}" '
                    f'stroke-opacity=".45" stroke-width="1.5"/>'
                    f'<title>{_tip(tip)}</title>')
            size = f'<span class="fail-text">{what}</span>'
        else:
            segs = _segments(shard, scale, tensor_marks)
            body = "".join(segs) or (f'<rect x="0" y="1" width="2" height="{_BAR_H - 2:.0f}" fill="{_OTHER_DTYPE}">'
                                     f'<title>{esc(shard.name)}: no tensors</title></rect>')
            n = len(shard.tensors)
            size = (f'{esc(human_bytes(shard.tensor_bytes))}<span class="muted"> \u00b7 {n:,} '
                    f'tensor{"" if n == 1 else "s"}</span>')
        mark = file_marks.get(shard.name) or ("error" if shard.problem is not None else None)
        row_cls = f"smap-row marked {mark}" if mark else "smap-row"
        rows.append(f'<div class="{row_cls}"><div class="name mono">{wrap_name(shard.name)}</div>'
                    f'<svg class="shard-bar" viewBox="0 0 {_BAR_W:.0f} {_BAR_H:.0f}" '
                    f'preserveAspectRatio="none" role="img" '
                    f'aria-label="{esc(shard.name)}">{body}</svg><div class="size">{size}</div></div>')
    legend = _legend((dtype_colour(d), d) for d in dtypes)
    return f'<div class="smap">{"".join(rows)}</div>{legend}'


# --- layer map ---------------------------------------------------------------------------------

class TensorLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def bytes(self) -> int: ...
    @property
    def numel(self) -> int: ...


_EMBEDDING = re.compile(r"(?:^|\.)(?:embed\w*|\w*embeddings?|wte|wpe|shared|tok_embeddings|word_embeddings)(?:\.|$)")
_HEAD = re.compile(r"^(?:lm_head|(?:\w+\.)?lm_head|embed_out|output|score|classifier|qa_outputs|cls)(?:\.|$)")


@dataclass(frozen=True)
class LayerRow:
    """One row of the layer map: a decoder block, the embeddings, the head, or another module."""

    name: str
    """The module (``model.layers.7``, ``model.embed_tokens``, ``lm_head``)."""
    label: str
    """What the row says (``block 7``, ``embeddings``, ``head``, or the module)."""
    parameters: int
    bytes: int
    tensors: int
    mark: str | None = None
    """Worst severity of the findings naming a tensor of it (``error``, ``warning``, ``info``)."""
    colour: str | None = None
    """The bar's colour (``#rrggbb``); None: the default."""
    note: str = ""
    """Extra hover text (e.g. what changed)."""


def _label(unit: str) -> str:
    match = _BLOCK.match(unit)
    if match:
        stack = match.group(1).rsplit(".", 1)[0]
        prefix = "" if stack.split(".")[-1] in ("layers", "layer", "h", "block", "blocks") and stack.count(".") <= 1 \
            else f"{stack} "
        return f"{prefix}block {match.group(2)}" if prefix else f"block {match.group(2)}"
    if _EMBEDDING.search(unit):
        return f"embeddings ({unit.rsplit('.', 1)[-1]})"
    if _HEAD.match(unit):
        return f"head ({unit.rsplit('.', 1)[-1]})"
    return unit


def layer_rows(tensors: Iterable[TensorLike], findings: Sequence[Finding] = ()) -> list[LayerRow]:
    """Tensors grouped into rows in model order: embeddings, each stack's blocks by number, the
    other modules, heads last; each row marked with the worst severity of the findings naming a
    tensor of it (one it has, or one it lacks)."""
    marks: dict[str, str] = {}
    for name, severity in _severity_marks(findings)[0].items():
        unit = unit_of(name)
        if unit not in marks or Severity(severity).rank > Severity(marks[unit]).rank:
            marks[unit] = severity
    groups: dict[str, list[TensorLike]] = {}
    for t in tensors:
        groups.setdefault(unit_of(t.name), []).append(t)
    order: dict[str, int] = {}
    stacks: dict[str, int] = {}

    def key(unit: str) -> tuple[int, int, int, int]:
        match = _BLOCK.match(unit)
        if match:
            stack = stacks.setdefault(match.group(1).rsplit(".", 1)[0], len(stacks))
            return (1, stack, int(match.group(2)), 0)
        if _HEAD.match(unit):
            return (3, 0, 0, order.setdefault(unit, len(order)))
        if _EMBEDDING.search(unit):
            return (0, 0, 0, order.setdefault(unit, len(order)))
        return (2, 0, 0, order.setdefault(unit, len(order)))

    rows = []
    for unit in sorted(groups, key=key):
        members = groups[unit]
        worst = marks.get(unit)
        rows.append(LayerRow(name=unit, label=_label(unit), parameters=sum(t.numel for t in members),
                             bytes=sum(t.bytes for t in members), tensors=len(members), mark=worst))
    return rows


_ROW_H = 16
_LABEL_W = 230
_TEXT_W = 200
_MAP_W = 1000


def _fit(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "\u2026"


def layer_map_svg(rows: Sequence[LayerRow], *, legend: Sequence[tuple[str, str]] = (),
                  default_colour: str = "#4e79a7", caption: str = "") -> str:
    """The layer map: one row per :class:`LayerRow` (label, a bar as long as its bytes relative to
    the largest row, parameters and bytes), a marked row with a coloured dot and a tinted bar;
    hover a row for its module, tensors, parameters, bytes and ``note``. ``legend``: (colour,
    label) pairs shown under it. An HTML fragment (an SVG and its legend); "" without rows."""
    if not rows:
        return ""
    largest = max(max(r.bytes for r in rows), 1)
    bar_w = _MAP_W - _LABEL_W - _TEXT_W - 20
    height = len(rows) * _ROW_H + 4
    out = [f'<svg class="layer-map" viewBox="0 0 {_MAP_W} {height}" role="img" aria-label="layer map">']
    for i, row in enumerate(rows):
        y = 2 + i * _ROW_H
        w = max(row.bytes / largest * bar_w, 1.0)
        colour = _colour(row.colour, SEVERITY_COLOURS[row.mark] if row.mark else default_colour)
        tip = (f"{escape_text(row.name)}\n{row.tensors:,} tensor{'' if row.tensors == 1 else 's'}, "
               f"{human_count(row.parameters)} parameters, {human_bytes(row.bytes)}")
        if row.mark:
            tip += f"\nnamed by a finding ({row.mark})"
        if row.note:
            tip += f"\n{escape_text(row.note)}"
        cls = f"layer-row marked {row.mark}" if row.mark else "layer-row"
        dot = (f'<circle cx="8" cy="{y + _ROW_H / 2:.1f}" r="4.5" fill="{SEVERITY_COLOURS[row.mark]}"/>'
               if row.mark else "")
        out.append(
            f'<g class="{cls}"><title>{_tip(tip)}</title>'
            f'<rect class="hover" x="0" y="{y}" width="{_MAP_W}" height="{_ROW_H}" fill="transparent"/>{dot}'
            f'<text x="18" y="{y + 12}" class="lbl">{esc(_fit(row.label, 30))}</text>'
            f'<rect x="{_LABEL_W}" y="{y + 2}" width="{w:.1f}" height="{_ROW_H - 4}" rx="2" fill="{colour}"/>'
            f'<text x="{_MAP_W - 4}" y="{y + 12}" class="num" text-anchor="end">'
            f'{esc(human_count(row.parameters))} params \u00b7 {esc(human_bytes(row.bytes))}</text></g>')
    out.append("</svg>")
    if caption:
        out.append(f'<p class="muted">{esc(caption)}</p>')
    if legend:
        out.append(_legend(legend))
    return "".join(out)


# --- device map and memory -----------------------------------------------------------------------

def device_colours(devices: Sequence[str]) -> dict[str, str]:
    """A colour per device: GPUs in turn, the cpu grey, disk sand (drawn hatched)."""
    colours: dict[str, str] = {}
    gpus = 0
    for device in devices:
        if device == "cpu":
            colours[device] = _CPU_COLOUR
        elif device == "disk":
            colours[device] = _DISK_COLOUR
        else:
            colours[device] = DEVICE_COLOURS[gpus % len(DEVICE_COLOURS)]
            gpus += 1
    return colours


_CELL = 18
_PER_LINE = 50


def device_map_svg(rows: Sequence[LayerRow], placement: Mapping[str, str], devices: Sequence[str]) -> str:
    """The device map: one cell per layer-map row in model order (embeddings, blocks, head),
    coloured by the device it was placed on (disk hatched, a row split over devices striped);
    hover for the module, its bytes and device. ``placement``: row name -> device (``a + b``
    when split). An HTML fragment; "" without rows."""
    if not rows:
        return ""
    colours = device_colours(devices)
    lines = (len(rows) + _PER_LINE - 1) // _PER_LINE
    width = min(len(rows), _PER_LINE) * (_CELL + 2)
    out = [f'<svg class="device-map" viewBox="0 0 {width} {lines * (_CELL + 2)}" '
           f'style="max-width:{width * 1.5:.0f}px" role="img" aria-label="device map">']
    for i, row in enumerate(rows):
        x = (i % _PER_LINE) * (_CELL + 2)
        y = (i // _PER_LINE) * (_CELL + 2)
        placed = placement.get(row.name, "?")
        parts = placed.split(" + ")
        tip = f"{escape_text(row.name)}\n{human_bytes(row.bytes)} on {escape_text(placed)}"
        cells = []
        for j, device in enumerate(parts):
            h = _CELL / len(parts)
            colour = colours.get(device, _OTHER_DTYPE)
            cells.append(f'<rect x="{x}" y="{y + j * h:.1f}" width="{_CELL}" height="{h:.1f}" fill="{colour}"/>')
            if device == "disk":
                cells.append(f'<path d="{_hatch(x, y + j * h, _CELL, h, 5)}" stroke="#59636e" stroke-width="1"/>')
        out.append(f'<g class="unit"><title>{_tip(tip)}</title>{"".join(cells)}</g>')
    out.append("</svg>")
    hatch = (' <span class="key"><span class="swatch disk"></span>disk (hatched)</span>'
             if "disk" in colours else "")
    out.append(_legend(((c, d) for d, c in colours.items() if d != "disk"), hatch))
    return "".join(out)


@dataclass(frozen=True)
class MemoryBar:
    """One device's memory: what the plan placed, the limit it respected, the peak measured."""

    device: str
    placed: int
    limit: int | None
    peak: int | None


def memory_bars_html(bars: Sequence[MemoryBar]) -> str:
    """One bar per device: bytes placed (solid) against the limit (the outline; the bar's
    full length when there is one) and the measured peak (a line). An HTML fragment."""
    if not bars:
        return ""
    colours = device_colours([b.device for b in bars])
    rows = []
    for bar in bars:
        top = max(bar.limit or 0, bar.placed, bar.peak or 0, 1)
        scale = (_BAR_W - 2) / top
        colour = colours[bar.device]
        parts = [f'<rect x="1" y="2" width="{_BAR_W - 2:.0f}" height="{_BAR_H - 4:.0f}" fill="none" '
                 f'stroke="#8c959f" stroke-dasharray="{"0" if bar.limit else "4 3"}"/>',
                 f'<rect x="1" y="2" width="{max(bar.placed * scale, 1):.1f}" height="{_BAR_H - 4:.0f}" '
                 f'fill="{colour}"/>']
        if bar.device == "disk":
            parts.append(f'<path d="{_hatch(1, 2, max(bar.placed * scale, 1), _BAR_H - 4, 8)}" stroke="#59636e"/>')
        words = [f"placed {human_bytes(bar.placed)}"]
        words.append(f"limit {human_bytes(bar.limit)}" if bar.limit is not None else "no limit")
        if bar.peak is not None:
            px = 1 + bar.peak * scale
            parts.append(f'<rect x="{max(px - 2, 0):.1f}" y="0" width="3" height="{_BAR_H:.0f}" fill="currentColor"/>')
            words.append(f"peak {human_bytes(bar.peak)}")
        tip = f"{bar.device}: " + ", ".join(words)
        rows.append(f'<div class="smap-row"><div class="name mono">{esc(bar.device)}</div>'
                    f'<svg class="device-bar" viewBox="0 0 {_BAR_W:.0f} {_BAR_H:.0f}" '
                    f'preserveAspectRatio="none" role="img" '
                    f'aria-label="{esc(tip)}"><title>{_tip(tip)}</title>{"".join(parts)}</svg>'
                    f'<div class="size">{esc(", ".join(words))}</div></div>')
    legend = ('<p class="legend"><span class="key"><span class="swatch" style="background:#8c959f"></span>placed '
              '(in the device\'s colour)</span>'
              '<span class="key"><span class="swatch outline"></span>limit (dashed: none)</span>'
              '<span class="key"><span class="swatch peak"></span>measured peak</span></p>')
    return f'<div class="smap">{"".join(rows)}</div>{legend}'
