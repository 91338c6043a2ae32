"""``hfconv diff``'s reports: pure functions of a :class:`DiffResult` (text, json, html).
The comparison library is named for type checkers only: rendering imports no operation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..units import human_bytes, plural
from ..weight_map import unit_of
from .common import escape_text, package_version
from .html import PAGE_CSS
from .jsonfmt import dumps_json
from .pictures import esc, layer_map_svg, layer_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..comparison import DiffResult, TensorDiff

__all__ = ["render_diff_html", "render_diff_json", "render_diff_text"]

_MAX_LISTED = 50
"""Tensor rows listed per status in text (JSON lists every tensor)."""
_LABELS = {"only_a": "only in A", "only_b": "only in B", "shape": "other shape", "dtype": "other dtype",
           "different": "different", "unreadable": "unreadable", "cast": "cast", "tied": "tied",
           "identical": "identical", "same_header": "same header"}


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf"
    return f"{value:.3g}"


def _shape(shape: Sequence[int] | None) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape is not None else "-"


def _headline(result: DiffResult) -> str:
    a, b = escape_text(result.a), escape_text(result.b)
    what = "names, dtypes and shapes" if result.headers_only else "weights"
    if result.weights_identical:
        tail = f" after the cast {result.cast}" if result.cast else ""
        verdict = f"{what} IDENTICAL{tail}"
    else:
        parts = [f"{plural(result.count(s), 'tensor')} {_LABELS[s]}" for s in
                 ("different", "only_a", "only_b", "shape", "dtype", "unreadable") if result.count(s)]
        verdict = f"{what} DIFFER: " + ", ".join(parts) if parts else f"{what} NOT COMPARED (see problems)"
    return f"diff {a} ({result.format_a}) -> {b} ({result.format_b}): {verdict}"


def _row(t: TensorDiff) -> str:
    name = escape_text(t.name)
    if t.status in ("only_a", "tied") and t.dtype_a is not None:
        detail = f"{t.dtype_a} {_shape(t.shape_a)}"
    elif t.status in ("only_b", "tied"):
        detail = f"{t.dtype_b} {_shape(t.shape_b)}"
    elif t.status in ("shape", "dtype"):
        detail = f"{t.dtype_a} {_shape(t.shape_a)} -> {t.dtype_b} {_shape(t.shape_b)}"
    elif t.status == "different":
        values = f"{t.differing:,} of {t.numel:,} values differ" if t.differing is not None else "bytes differ"
        stats = f"max abs {_number(t.max_abs)}" + (f", rel L2 {_number(t.rel_l2)}" if t.rel_l2 is not None else "") \
            if t.max_abs is not None else ""
        detail = f"{t.dtype_a} {_shape(t.shape_a)}  " + "; ".join(p for p in (stats, values) if p)
    else:
        detail = f"{t.dtype_a} {_shape(t.shape_a)}"
    note = f"  ({escape_text(t.note)})" if t.note and t.status in ("tied", "unreadable", "different") else ""
    return f"  {_LABELS[t.status]:<11} {name}  {detail}{note}"


def render_diff_text(result: DiffResult) -> str:
    """A short human report: the verdict, every tensor that is not identical (grouped by
    status), the changed blocks, the metadata keys, the tokenizer, the problems."""
    lines = [_headline(result)]
    shown_statuses = ("different", "only_a", "only_b", "shape", "dtype", "unreadable", "tied")
    for status in shown_statuses:
        rows = [t for t in result.tensors if t.status == status]
        for t in rows[:_MAX_LISTED]:
            lines.append(_row(t))
        if len(rows) > _MAX_LISTED:
            lines.append(f"  ... and {len(rows) - _MAX_LISTED:,} more {_LABELS[status]} (--format json lists all)")
    casts = [t for t in result.tensors if t.status == "cast"]
    if casts:
        worst = max((t.max_abs or 0.0 for t in casts), default=0.0)
        lines.append(f"  cast        {plural(len(casts), 'tensor')} equal after the cast {result.cast} "
                     f"(the most the cast changed a value: {_number(worst)})")
    same = result.count("identical") + result.count("same_header")
    if same:
        word = "with the same name, dtype and shape" if result.headers_only else "byte-identical"
        lines.append(f"  {'identical':<11} {plural(same, 'tensor')} {word}")
    if not result.headers_only:
        lines.append(f"  read        {human_bytes(result.bytes_read)} in {result.seconds:.2f} s")
    changed = {block: amount for block, amount in result.blocks.items() if amount > 0}
    if changed and len(changed) < len(result.blocks):
        lines.append("blocks changed: " + ", ".join(f"{escape_text(k)} ({_number(v)})" for k, v in changed.items()))
    if result.metadata:
        lines.append("metadata:")
        for change in result.metadata:
            lines.append("  " + _key_line(change.file, change.key, change.change, change.a, change.b))
    else:
        lines.append("metadata: config, generation config, tokenizer config and special tokens the same")
    if result.tokenizer is not None:
        lines.extend(_tokenizer_lines(result))
    if result.findings:
        lines.append("problems:")
        for f in result.findings:
            lines.append(f"  {f.code} {f.severity.value}: {escape_text(f.message)}")
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return escape_text(text if len(text) <= 120 else text[:119] + "\u2026")


def _key_line(file: str, key: str, change: str, a: Any, b: Any) -> str:
    where = f"{escape_text(file)}: {escape_text(key)}" if key else escape_text(file)
    if change == "only_a":
        return f"{where} only in A" + (f": {_value(a)}" if key else "")
    if change == "only_b":
        return f"{where} only in B" + (f": {_value(b)}" if key else "")
    return f"{where}: {_value(a)} -> {_value(b)}"


def _tokenizer_lines(result: DiffResult) -> list[str]:
    tok = result.tokenizer
    assert tok is not None
    if tok.same:
        return [f"tokenizer.json: same vocabulary ({tok.vocab_a:,} tokens), merges ({tok.merges_a:,}) and added tokens"]
    lines = [f"tokenizer.json: vocabulary {tok.vocab_a:,} -> {tok.vocab_b:,} tokens"]
    for count, tokens, where in ((tok.only_a_count, tok.only_a, "only in A"),
                                 (tok.only_b_count, tok.only_b, "only in B")):
        if count:
            lines.append(f"  {plural(count, 'token')} {where}: " + ", ".join(escape_text(repr(t)) for t in tokens)
                         + (", ..." if count > len(tokens) else ""))
    if tok.renumbered_count:
        lines.append(f"  {plural(tok.renumbered_count, 'token')} with another id: "
                     + ", ".join(f"{escape_text(repr(t))} {x} -> {y}" for t, x, y in tok.renumbered)
                     + (", ..." if tok.renumbered_count > len(tok.renumbered) else ""))
    if tok.merges_only_a or tok.merges_only_b:
        lines.append(f"  merges {tok.merges_a:,} -> {tok.merges_b:,}: {tok.merges_only_a:,} only in A, "
                     f"{tok.merges_only_b:,} only in B")
    if tok.merges_reordered:
        lines.append("  merges: the same, in another order (merge order is priority: tokenization changes)")
    if tok.added_tokens_changed:
        lines.append("  added tokens that differ: " + ", ".join(escape_text(repr(t)) for t in tok.added_tokens_changed))
    return lines


def render_diff_json(result: DiffResult) -> str:
    """The hfconv-diff/1 document (schemas/diff.schema.json)."""
    return dumps_json(result.to_json())


# --- html ----------------------------------------------------------------------------------------

_CSS = PAGE_CSS + """.ok { color: var(--ok); } .bad { color: var(--fail); }
table { width: 100%; }
td.num { text-align: right; white-space: nowrap; }
"""
"""The pages' shared CSS (:data:`hfconv.render.html.PAGE_CSS`) and the diff page's verdict colours."""

_SCALE = ((0.0, "#afb8c1", "identical"), (1e-9, "#f5d76e", "< 1e-4"), (1e-4, "#f0a04b", "1e-4 .. 1e-2"),
          (1e-2, "#e8613c", "1e-2 .. 0.1"), (0.1, "#c0262d", "0.1 .. 1"),
          (1.0, "#6e0f14", ">= 1, or added, removed, reshaped, unreadable"))
"""Change of a row (its largest relative L2 difference) -> colour: (lower bound, colour, legend)."""


def _change_colour(amount: float) -> str:
    colour = _SCALE[0][1]
    for bound, value, _ in _SCALE[1:]:
        if amount >= bound or amount != amount:
            colour = value
    return colour


def _layer_map(result: DiffResult) -> str:
    """The layer map of :mod:`hfconv.render.pictures` (rows in model order, bars as long as their
    bytes), each row coloured by how much it changed: the picture of what a fine-tune touched."""
    import dataclasses

    changes: dict[str, float] = {}
    counts: dict[str, int] = {}
    for tensor in result.tensors:
        amount = _change(tensor)
        unit = unit_of(tensor.name)
        changes[unit] = max(changes.get(unit, 0.0), amount)
        counts[unit] = counts.get(unit, 0) + (0 if tensor.same else 1)
    rows = [dataclasses.replace(row, colour=_change_colour(changes.get(row.name, 0.0)),
                                note=f"change {_number(changes.get(row.name, 0.0))}; "
                                     f"{counts.get(row.name, 0)} of {row.tensors} tensors not identical")
            for row in layer_rows(_Sized(t.name, t.nbytes, t.numel) for t in result.tensors)]
    return layer_map_svg(rows, legend=[(colour, label) for _, colour, label in _SCALE],
                         caption="Each row a block or module, as long as its bytes, coloured by its largest relative "
                                 "L2 difference (||A - B|| / ||A||) between the folders.")


def _change(tensor: TensorDiff) -> float:
    if tensor.same:
        return 0.0
    if tensor.status == "different" and tensor.rel_l2 is not None:
        return tensor.rel_l2
    return 1.0


class _Sized:
    """A tensor as the layer map counts it (name, bytes, elements)."""

    def __init__(self, name: str, nbytes: int, numel: int) -> None:
        self.name, self.bytes, self.numel = name, nbytes, numel


def render_diff_html(result: DiffResult) -> str:
    """One self-contained page (inline CSS and SVG, no script): the verdict, the layer map
    coloured by change, the tensors that are not identical, the metadata, the problems."""
    ok = result.weights_identical
    rows = [t for t in result.tensors if t.status not in ("identical", "same_header")]
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>hfconv diff {esc(result.a)} -> {esc(result.b)}</title><style>{_CSS}</style></head><body>",
        f"<h1 class=\"{'ok' if ok else 'bad'}\">{esc(_headline(result))}</h1>",
        "<h2>What changed, block by block</h2>", _layer_map(result),
        f"<h2>Tensors ({len(result.tensors):,}; {result.count('identical') + result.count('same_header'):,} "
        "identical, not listed)</h2>",
    ]
    if rows:
        parts.append("<table><tr><th>status</th><th>tensor</th><th>A</th><th>B</th><th>max abs</th>"
                     "<th>rel L2</th><th>note</th></tr>")
        for t in rows:
            parts.append(f"<tr><td>{esc(_LABELS[t.status])}</td><td><code>{esc(t.name)}</code></td>"
                         f"<td>{esc(t.dtype_a or '')} {esc(_shape(t.shape_a))}</td>"
                         f"<td>{esc(t.dtype_b or '')} {esc(_shape(t.shape_b))}</td>"
                         f"<td class=\"num\">{esc(_number(t.max_abs)) if t.max_abs is not None else ''}</td>"
                         f"<td class=\"num\">{esc(_number(t.rel_l2)) if t.rel_l2 is not None else ''}</td>"
                         f"<td>{esc(t.note or '')}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Metadata</h2>")
    if result.metadata:
        parts.append("<table><tr><th>file</th><th>key</th><th>A</th><th>B</th></tr>")
        for change in result.metadata:
            a = "(absent)" if change.change == "only_b" else _value(change.a)
            b = "(absent)" if change.change == "only_a" else _value(change.b)
            parts.append(f"<tr><td>{esc(change.file)}</td><td><code>{esc(change.key)}</code></td>"
                         f"<td><code>{esc(a)}</code></td><td><code>{esc(b)}</code></td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>The same in both folders.</p>")
    if result.tokenizer is not None:
        parts.append("<pre>" + esc("\n".join(_tokenizer_lines(result))) + "</pre>")
    if result.findings:
        parts.append("<h2>Problems</h2><ul>")
        parts.extend(f"<li>{esc(f.code)} {esc(f.severity.value)}: {esc(f.message)}</li>" for f in result.findings)
        parts.append("</ul>")
    parts.append(f"<p class=\"muted\">hfconv {esc(package_version())}</p></body></html>\n")
    return "".join(parts)
