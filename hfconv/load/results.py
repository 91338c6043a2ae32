"""What load-test returns: frozen results (with their JSON), and the exception that stops a run
with findings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..findings import Finding, Severity
from ..report import Layout
from ..weight_map import MapShard
from .device_map import DevicePlan

__all__ = ["DeviceStats", "ForwardResult", "LoadResult", "Refused"]


@dataclass(frozen=True)
class DeviceStats:
    """What one device received."""

    device: str
    tensors: int
    """Tensors loaded and verified there (aliases of one storage each count)."""
    bytes: int
    """Bytes read onto it (a storage shared by several tensors once)."""
    planned_bytes: int
    limit: int | None
    """The limit the plan respected (None: unlimited)."""
    peak_bytes: int | None
    """cuda: torch.cuda.max_memory_allocated; cpu: the largest tensor (they pass through one
    buffer); disk: bytes written to the offload folder or read back from the shards."""
    seconds: float
    """Time spent reading, transferring and verifying its tensors."""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "tensors": self.tensors, "bytes": self.bytes,
                "planned_bytes": self.planned_bytes, "limit": self.limit, "peak_bytes": self.peak_bytes,
                "seconds": round(self.seconds, 6), "note": self.note or None}


@dataclass(frozen=True)
class ForwardResult:
    """The one forward pass of ``--forward``."""

    output: str
    """``logits`` or, for a model without an LM head, ``last_hidden_state``."""
    shape: tuple[int, ...]
    finite: bool
    tokens: int
    token_source: str
    """Where the input ids came from (``AutoTokenizer``, ``tokenizer.model``, ...)."""
    model_class: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "shape": list(self.shape), "finite": self.finite, "tokens": self.tokens,
                "token_source": self.token_source, "model_class": self.model_class,
                "seconds": round(self.seconds, 6)}


@dataclass(frozen=True)
class LoadResult:
    """Everything one load-test found and measured."""

    path: str
    findings: tuple[Finding, ...]
    layout: Layout | None = None
    plan: DevicePlan | None = None
    devices: tuple[DeviceStats, ...] = ()
    dtype: str = "keep"
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: ``import``, ``validate``, ``plan``, ``load``, ``forward``, ``total``."""
    peak_rss: int | None = None
    """Peak resident set of the process (VmHWM: heap and mapped file pages), bytes."""
    peak_anon: int | None = None
    """Peak anonymous memory (RssAnon, sampled after every tensor), bytes."""
    forward: ForwardResult | None = None
    kept: bool = True
    """Whether GPU tensors stayed on their devices until the whole model was loaded."""
    shard_map: Sequence[MapShard] = ()
    """The shards with their tensors, for the HTML report's pictures (not in the JSON)."""

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity is Severity.ERROR)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    @property
    def tensors(self) -> int:
        return sum(d.tensors for d in self.devices)

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.devices)

    @property
    def throughput(self) -> float | None:
        """Bytes per second over the load phase."""
        seconds = self.phases.get("load")
        return self.bytes / seconds if seconds else None

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "layout": self.layout.to_json() if self.layout else None,
            "dtype": self.dtype,
            "plan": self.plan.to_json() if self.plan else None,
            "devices": [d.to_json() for d in self.devices],
            "forward": self.forward.to_json() if self.forward else None,
            "findings": [f.to_json() for f in self.findings],
            "summary": {
                "errors": self.errors,
                "warnings": sum(1 for f in self.findings if f.severity is Severity.WARNING),
                "tensors": self.tensors,
                "bytes": self.bytes,
                "kept": self.kept,
                "seconds": {k: round(v, 6) for k, v in self.phases.items()},
                "throughput_bytes_per_s": round(self.throughput) if self.throughput else None,
                "peak_rss_bytes": self.peak_rss,
                "peak_anon_bytes": self.peak_anon,
            },
        }



class Refused(Exception):
    """Stops the run with findings (validation errors, a plan error): the result has no plan."""

    def __init__(self, findings: list[Finding], layout: Layout | None = None,
                 shard_map: Sequence[MapShard] = ()) -> None:
        super().__init__(findings[0].message if findings else "refused")
        self.findings = findings
        self.layout = layout
        self.shard_map = shard_map
