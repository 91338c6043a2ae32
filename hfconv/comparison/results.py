"""What ``diff`` found: one row per tensor, the metadata differences, the per-block map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..findings import Finding
from ..weight_map import unit_of as block_of

__all__ = ["DIFF_FORMAT", "KeyChange", "TensorDiff", "TokenizerDiff", "DiffResult", "SAME_STATUSES", "block_of"]

DIFF_FORMAT = "hfconv-diff/1"
"""The ``format`` of the JSON document (schemas/diff.schema.json)."""

SAME_STATUSES = frozenset({"identical", "cast", "tied", "same_header"})
"""Tensor statuses that leave the weights identical (``cast``: equal after the cast between
the folders; ``tied``: stored once on one side as an alias of a tensor that is identical)."""

STATUSES = ("only_a", "only_b", "shape", "dtype", "different", "unreadable", "cast", "tied", "identical",
            "same_header")
"""Every tensor status, most important first (the order rows are listed in)."""


@dataclass(frozen=True)
class TensorDiff:
    """One tensor name as the two folders hold it."""

    name: str
    status: str
    """One of :data:`STATUSES`."""
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    file_a: str | None = None
    file_b: str | None = None
    max_abs: float | None = None
    """Largest absolute difference of the values (``different`` and ``cast``; for ``cast``,
    the most the cast changed a value)."""
    rel_l2: float | None = None
    """||A - B||_2 / ||A||_2 (``different`` and ``cast``); inf when A is all zeros and B is not."""
    differing: int | None = None
    """Elements that differ (``different``)."""
    numel: int = 0
    nbytes: int = 0
    """Bytes of the tensor (A's where it is in A, else B's)."""
    note: str | None = None
    """Why, where the status alone does not say (the tied partner, the read error)."""

    @property
    def same(self) -> bool:
        return self.status in SAME_STATUSES

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "status": self.status,
            "dtype_a": self.dtype_a, "dtype_b": self.dtype_b,
            "shape_a": list(self.shape_a) if self.shape_a is not None else None,
            "shape_b": list(self.shape_b) if self.shape_b is not None else None,
            "file_a": self.file_a, "file_b": self.file_b,
            "max_abs": _finite(self.max_abs), "rel_l2": _finite(self.rel_l2),
            "differing": self.differing, "numel": self.numel, "bytes": self.nbytes, "note": self.note,
        }


def _finite(value: float | None) -> float | str | None:
    """JSON has no inf/NaN: they are written as the strings ``"inf"`` and ``"nan"``."""
    if value is None:
        return None
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return value


@dataclass(frozen=True)
class KeyChange:
    """One key of a JSON metadata file that differs (``a``/``b`` absent: the key is missing there)."""

    file: str
    key: str
    """A path into the file: ``rope_scaling.factor``, ``eos_token_id``."""
    change: str
    """``changed``, ``only_a`` or ``only_b`` (for a whole file: the file is only in one folder)."""
    a: Any = None
    b: Any = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "key": self.key, "change": self.change}
        if self.change != "only_b":
            out["a"] = _strict(self.a)
        if self.change != "only_a":
            out["b"] = _strict(self.b)
        return out


def _strict(value: Any) -> Any:
    """A JSON value with Infinity and NaN (which Python's json reads in config.json) as the
    strings ``"inf"``, ``"-inf"``, ``"nan"``: the report stays strict JSON."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


@dataclass(frozen=True)
class TokenizerDiff:
    """tokenizer.json compared by content: vocabulary, merges and added tokens."""

    vocab_a: int
    vocab_b: int
    only_a: tuple[str, ...] = ()
    """Tokens only in A's vocabulary (the first few, see ``only_a_count``)."""
    only_a_count: int = 0
    only_b: tuple[str, ...] = ()
    only_b_count: int = 0
    renumbered: tuple[tuple[str, int, int], ...] = ()
    """(token, id in A, id in B) for tokens in both with another id (the first few)."""
    renumbered_count: int = 0
    merges_a: int = 0
    merges_b: int = 0
    merges_only_a: int = 0
    merges_only_b: int = 0
    merges_reordered: bool = False
    """Same merges, other order (merge order is priority: tokenization changes)."""
    added_tokens_changed: tuple[str, ...] = ()
    """Added tokens (content) that are only on one side or differ (id, special)."""

    @property
    def same(self) -> bool:
        return not (self.only_a_count or self.only_b_count or self.renumbered_count or self.merges_only_a
                    or self.merges_only_b or self.merges_reordered or self.added_tokens_changed)

    def to_json(self) -> dict[str, Any]:
        return {
            "same": self.same, "vocab_a": self.vocab_a, "vocab_b": self.vocab_b,
            "only_a": list(self.only_a), "only_a_count": self.only_a_count,
            "only_b": list(self.only_b), "only_b_count": self.only_b_count,
            "renumbered": [{"token": t, "id_a": a, "id_b": b} for t, a, b in self.renumbered],
            "renumbered_count": self.renumbered_count,
            "merges_a": self.merges_a, "merges_b": self.merges_b, "merges_only_a": self.merges_only_a,
            "merges_only_b": self.merges_only_b, "merges_reordered": self.merges_reordered,
            "added_tokens_changed": list(self.added_tokens_changed),
        }




@dataclass(frozen=True)
class DiffResult:
    """``diff A B``: every tensor name of either folder, the metadata, and what could not be read."""

    a: str
    b: str
    format_a: str
    format_b: str
    headers_only: bool
    tensors: tuple[TensorDiff, ...]
    metadata: tuple[KeyChange, ...] = ()
    tokenizer: TokenizerDiff | None = None
    """None when neither folder has a tokenizer.json (or one could not be read)."""
    findings: tuple[Finding, ...] = ()
    """What kept a comparison from being made (unreadable or refused files), HFC960-HFC969."""
    bytes_read: int = 0
    seconds: float = 0.0
    cast: str | None = None
    """``F32 -> BF16`` when a cast between the folders was recognised."""

    def count(self, status: str) -> int:
        return sum(1 for t in self.tensors if t.status == status)

    @property
    def weights_identical(self) -> bool:
        """Every tensor name is in both folders with the same values (after the cast between
        them, if any; tied aliases count as their partner), and nothing was left unread."""
        return all(t.same for t in self.tensors) and not any(f.severity.value == "error" for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 0 if self.weights_identical else 1

    @property
    def blocks(self) -> dict[str, float]:
        """Block -> how much it changed, 0 (identical) to 1 (or more): the largest relative L2
        difference of its tensors; 1.0 for a tensor added, removed, reshaped or unreadable."""
        out: dict[str, float] = {}
        for tensor in self.tensors:
            if tensor.same:
                amount = 0.0
            elif tensor.status == "different" and tensor.rel_l2 is not None and tensor.rel_l2 == tensor.rel_l2:
                amount = tensor.rel_l2
            else:
                amount = 1.0
            block = block_of(tensor.name)
            out[block] = max(out.get(block, 0.0), amount)
        return out

    def to_json(self) -> dict[str, Any]:
        counts = {status: self.count(status) for status in STATUSES}
        return {
            "format": DIFF_FORMAT,
            "a": self.a, "b": self.b, "format_a": self.format_a, "format_b": self.format_b,
            "headers_only": self.headers_only,
            "weights_identical": self.weights_identical,
            "cast": self.cast,
            "counts": counts,
            "tensors": [t.to_json() for t in self.tensors],
            "blocks": [{"block": k, "change": _finite(v)} for k, v in self.blocks.items()],
            "metadata": [k.to_json() for k in self.metadata],
            "tokenizer": self.tokenizer.to_json() if self.tokenizer is not None else None,
            "findings": [f.to_json() for f in self.findings],
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
        }
