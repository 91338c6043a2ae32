"""load-test's renderers: the human summary and the contract's JSON of a :class:`LoadResult`.

Pure functions of the result; the result type is named for type checkers only, so rendering
imports nothing of the load package (the plan's lines come from ``DevicePlan.module_rows``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..units import human_bytes
from .common import escape_text as esc
from .text import finding_lines

if TYPE_CHECKING:  # pragma: no cover
    from ..load.results import LoadResult

__all__ = ["render_load_json", "render_load_text"]


def render_load_json(result: LoadResult) -> str:
    """``load-test --format json``: :meth:`LoadResult.to_json`, indented."""
    return json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"


def render_load_text(result: LoadResult, bars: bool | None = None) -> str:
    """The human summary: verdict, plan, per-device table, time, memory, forward, findings
    (listed as validate lists them); every name from the folder escaped. ``bars``: add the
    device map and a memory bar per device drawn with block characters (None: when stdout is
    a terminal)."""
    lines = [_verdict(result), *_plan_lines(result), *_device_lines(result), *_bar_lines(result, bars),
             *_measure_lines(result)]
    if result.findings:
        lines.append("  findings")
        lines.extend(finding_lines(result.findings, indent="    "))
    return "\n".join(lines) + "\n"


def _verdict(result: LoadResult) -> str:
    if result.ok:
        where = ", ".join(d.device for d in result.devices) or "no device"
        noun = "tensor" if result.tensors == 1 else "tensors"
        return (f"load-test {esc(result.path)}: OK, {result.tensors:,} {noun} ({human_bytes(result.bytes)}) "
                f"loaded onto {where} and verified")
    noun = "error" if result.errors == 1 else "errors"
    return f"load-test {esc(result.path)}: FAILED ({result.errors} {noun})"


def _plan_lines(result: LoadResult) -> list[str]:
    plan = result.plan
    if plan is None:
        return []
    head = "device map file" if plan.strategy == "file" else plan.strategy
    if result.dtype != "keep":
        head += f", dtype {result.dtype}"
    if plan.reserved:
        head += "; kept free for offloaded layers: " + ", ".join(
            f"{device} {human_bytes(size)}" for device, size in plan.reserved.items())
    lines = [f"  plan      {head}"]
    rows = plan.module_rows()
    width = min(max((len(m) for m, _ in rows), default=0), 48)
    rest = "(the rest)" if len(plan.modules) > 1 else "(whole model)"
    for module, device in rows[:40]:
        lines.append(f"              {(esc(module) or rest):<{width}}  {device}")
    if len(rows) > 40:
        lines.append(f"              ... {len(rows) - 40} more")
    return lines


def _device_lines(result: LoadResult) -> list[str]:
    if not result.devices:
        return []
    lines = ["  device    tensors       bytes       limit        peak     seconds"]
    for d in result.devices:
        limit = human_bytes(d.limit) if d.limit is not None else "-"
        peak = human_bytes(d.peak_bytes) if d.peak_bytes is not None else "-"
        note = f"  ({d.note})" if d.note else ""
        lines.append(f"  {d.device:<8}{d.tensors:>9}{human_bytes(d.bytes):>12}{limit:>12}{peak:>12}"
                     f"{d.seconds:>12.2f}{note}")
    return lines


def _bar_lines(result: LoadResult, bars: bool | None) -> list[str]:
    """The device map in model order and one memory bar per device (placed, limit, peak)."""
    from .termbars import device_bars, device_strip, want_bars

    if not want_bars(bars) or not result.devices:
        return []
    strip = device_strip(result.shard_map, result.plan.tensors) if result.plan is not None else []
    return [*strip, *device_bars([(d.device, d.planned_bytes, d.limit, d.peak_bytes) for d in result.devices])]


def _measure_lines(result: LoadResult) -> list[str]:
    """Time per phase, throughput, host memory and the forward pass."""
    lines = []
    if result.phases:
        order = ("import", "validate", "plan", "load", "forward", "total")
        parts = [f"{k} {result.phases[k]:.2f} s" for k in order if k in result.phases]
        lines.append("  time      " + ", ".join(parts))
    if result.throughput:
        lines.append(f"  speed     {human_bytes(result.throughput)}/s over the load phase")
    if result.peak_rss is not None:
        memory = f"peak RSS {human_bytes(result.peak_rss)}"
        if result.peak_anon is not None:
            memory += f", peak anonymous {human_bytes(result.peak_anon)}"
        lines.append(f"  host      {memory}")
    if result.forward is not None:
        fwd = result.forward
        shape = "[" + ", ".join(str(n) for n in fwd.shape) + "]"
        noun = "token" if fwd.tokens == 1 else "tokens"
        lines.append(f"  forward   {esc(fwd.model_class)}: {fwd.output} {shape}, "
                     f"{'finite' if fwd.finite else 'NOT finite'} ({fwd.tokens} {noun} from {esc(fwd.token_source)})")
    return lines
