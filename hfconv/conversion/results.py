"""What ``convert`` returns: frozen result dataclasses (``to_json`` for the JSON output)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..findings import Finding
from ..sharding import INDEX_FILE
from ..weight_map import MapShard

__all__ = ["ProgressCallback", "ShardInfo", "ValidationSummary", "ConversionResult"]


ProgressCallback = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``: total_bytes is the model's tensor bytes; done_bytes
counts each one half written, half verified (all of it when written, with ``verify`` off)."""


@dataclass(frozen=True)
class ShardInfo:
    """One written shard."""

    name: str
    tensors: int
    bytes: int
    """File size (header + data)."""


@dataclass(frozen=True)
class ValidationSummary:
    """What ``validate`` said about the output folder."""

    errors: int = 0
    warnings: int = 0
    inherited_errors: int = 0
    """Errors the source folder already had (e.g. in its tokenizer files), not caused here."""
    codes: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    """The output's validation errors (only with ``allow_invalid_output``: else none)."""

    @property
    def valid(self) -> bool:
        return self.errors == 0

    def to_json(self) -> dict:
        return {"valid": self.valid, "errors": self.errors, "warnings": self.warnings,
                "inherited_errors": self.inherited_errors, "codes": list(self.codes),
                "findings": [f.to_json() for f in self.findings]}


@dataclass(frozen=True)
class ConversionResult:
    """What ``convert`` wrote, and how it checked it."""

    src: str
    dst: str
    tensors: int
    """Tensors written."""
    bytes: int
    """Tensor bytes written (the index's ``total_size``)."""
    shards: tuple[ShardInfo, ...]
    dtype: str
    """``keep`` or the dtype floating tensors were cast to."""
    cast: int
    """Tensors cast."""
    dropped_aliases: Mapping[str, str]
    """alias -> kept tensor; absent from the output, re-tied by transformers on load."""
    copied_aliases: Mapping[str, str]
    """tensor written as its own copy -> the tensor it shared a storage with in the source."""
    files_copied: tuple[str, ...]
    files_skipped: Mapping[str, str]
    seconds: float
    verified: bool
    """Every tensor compared byte for byte with its source and the output validated."""
    validation: ValidationSummary | None
    findings: tuple[Finding, ...]
    manifest: str | None = None
    durable: bool = False
    """Every file and folder was fsynced before DST appeared (``--fsync``)."""
    source_map: Sequence[MapShard] = ()
    """SRC's shards with their tensors, for the HTML report's pictures (not in the JSON)."""
    output_map: tuple[MapShard, ...] = ()
    """DST's shards with their tensors as written (dtype after any cast), for the pictures."""
    in_place: bool = False
    """Written into SRC beside its ``.bin`` files (``dst`` is SRC)."""
    written: tuple[str, ...] = ()
    """In place: the files written into SRC (shards, then the index)."""
    deleted: tuple[str, ...] = ()
    """In place with ``delete_bin``: the ``.bin`` files (and index) deleted after verification."""

    @property
    def is_sharded(self) -> bool:
        return len(self.shards) > 1

    @property
    def index(self) -> str | None:
        return INDEX_FILE if self.is_sharded else None

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """False when the output was written although it fails validation (--allow-invalid-output)."""
        return self.validation is None or self.validation.valid

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "output_valid": self.validation.valid if self.validation is not None else None,
            "src": self.src,
            "dst": self.dst,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "shards": [{"name": s.name, "tensors": s.tensors, "bytes": s.bytes} for s in self.shards],
            "index": self.index,
            "dtype": self.dtype,
            "cast": self.cast,
            "dropped_aliases": dict(self.dropped_aliases),
            "copied_aliases": dict(self.copied_aliases),
            "files_copied": list(self.files_copied),
            "files_skipped": dict(self.files_skipped),
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 1),
            "verified": self.verified,
            **({"in_place": True, "written": list(self.written), "deleted": list(self.deleted)}
               if self.in_place else {}),
            "validation": self.validation.to_json() if self.validation else None,
            "manifest": self.manifest,
            "durable": self.durable,
            "findings": [f.to_json() for f in self.findings],
        }
