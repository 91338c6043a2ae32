"""The result of validating one folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from .findings import Finding, Severity

if TYPE_CHECKING:  # pragma: no cover
    from .weight_map import MapShard


@dataclass(frozen=True)
class Layout:
    """What weights the folder holds (the contract's ``layout`` object)."""

    format: str
    """``safetensors``, ``bin``, ``mixed`` or ``none``."""
    sharded: bool
    index: str | None
    shards: tuple[str, ...]
    files: tuple[str, ...]

    def describe(self) -> str:
        """``safetensors, sharded, model.safetensors.index.json``, or ``none`` for a folder without weights."""
        if self.format == "none" and not self.shards:
            return "none"
        kind = "sharded" if self.sharded else "single file"
        return f"{self.format}, {kind}" + (f", {self.index}" if self.index else "")

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "sharded": self.sharded,
            "index": self.index,
            "shards": list(self.shards),
            "files": list(self.files),
        }


class Summary(NamedTuple):
    tensors: int = 0
    parameters: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Report:
    """Everything ``validate`` found about one folder."""

    path: str
    layout: Layout
    findings: tuple[Finding, ...]
    summary: Summary = field(default_factory=Summary)
    strict: bool = False
    """With strict, warnings fail the folder too."""
    manifest_matched: int | None = None
    """With ``--manifest``: the number of tensors whose dtype, shape and sha256 all match it (set
    only when every one does); None when no manifest was given or a tensor differs."""
    shard_map: Sequence[MapShard] = field(default=(), compare=False, repr=False)
    """The shards loaders read with their tensors (name, shape, dtype, bytes), for the HTML
    report's pictures; not part of the JSON."""

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity is Severity.WARNING)

    @property
    def ok(self) -> bool:
        return self.errors == 0 and not (self.strict and self.warnings)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "ok": self.ok,
            "layout": self.layout.to_json(),
            "findings": [f.to_json() for f in self.findings],
            "summary": {
                "errors": self.errors,
                "warnings": self.warnings,
                "tensors": self.summary.tensors,
                "parameters": self.summary.parameters,
                "bytes": self.summary.bytes,
            },
        }
