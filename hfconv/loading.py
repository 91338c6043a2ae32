"""``load-test``: plan a device map, load every tensor onto its device, prove every byte arrived.

Plan, then execute (STYLE habit 6):

1. validate the folder (:func:`hfconv.validation.validate`) and refuse to load one with
   errors: a hostile pickle never reaches torch, a broken header never reaches a reader;
2. read the headers again (sizes come from the weight headers, never from config numbers)
   and locate each tensor's bytes: a safetensors byte range, or a ``.bin`` storage range
   and view (offset, stride) from the restricted reader; ``torch.load`` is never called;
3. plan (:mod:`hfconv.device_map`, pure) or check the given map, under ``max_memory``:
   a tensor left unassigned, a device the machine lacks or a device over its limit is an
   error before anything loads;
4. load shard by shard, tensor by tensor, in file order: the bytes are read with
   ``pread`` into a reused cpu buffer, or through a 64 MiB staging buffer into a GPU
   allocation; ``disk`` tensors are written to the offload folder (``.bin`` sources) or stay
   memory-mapped in their safetensors shard, and are read back once;
5. verify each tensor where it landed: a positional checksum of the bytes on the device (by
   torch on a GPU; on the cpu by numpy, 2 MiB at a time as they land) must equal the same
   checksum of the bytes in the file (read again and summed by numpy in a second thread,
   ahead of the loader), so a byte corrupted, lost or moved between disk and device is an
   error naming the tensor; then its dtype and shape are checked against the header (the
   config-implied shapes were checked in step 1);
6. report bytes, tensors, seconds and peak memory per device, peak host RSS, throughput;
   with ``forward``, build the model with transformers on the same device map and run one
   forward pass on a few tokens from the folder's own tokenizer.

GPU tensors stay on their device until the whole model is loaded (``keep``), as when the
model is served: the peak memory per GPU is the footprint of serving, and a GPU that cannot
really hold its share fails here (``keep=False`` frees each one once verified). cpu tensors
are read into one reused buffer (the size of the largest of them), checksummed there and
dropped: a served model maps its cpu weights from the page cache rather than copying them,
the plan has checked the cpu limit, and faulting in gigabytes of fresh memory would only
measure the kernel's page zeroing. Host memory therefore stays near one tensor plus a 64 MiB
staging buffer, whatever the model's size.

The checksum (:func:`checksum_bytes`, :func:`checksum_tensor`) treats the tensor's bytes,
zero-padded to a multiple of 4 KiB, as rows of 512 little-endian 64-bit words and returns
three sums modulo 2**64: all words, column sums weighted by column (1..512), row sums
weighted by row (1..R). A changed word changes the first; two different words swapped
change the second (different columns) or the third (different rows), unless they differ only
in their top byte and their column and row distances are both divisible by a high enough
power of two (the weights multiply the difference modulo 2**64). It runs at memory speed on cpu
and GPU without widening the data (a byte-wise weighted sum would need an int64 copy of the
tensor).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging as logging_module
import mmap
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .device_map import (
    STRATEGIES,
    DeviceMapSyntaxError,
    DevicePlan,
    PlanError,
    compact_modules,
    device_sort_key,
    parse_device,
    plan_device_map,
    plan_from_map,
    read_device_map,
    unused_keys,
)
from .dtypes import nbytes as dtype_nbytes
from .dtypes import swap_unit
from .findings import Finding, Severity, finding, register
from .fsutil import open_inside
from .report import Layout
from .tensor_bytes import OutsideStorage, StorageRecord, file_order, located_storage, storage_records, view_span
from .tensors import FormatError, TensorMeta, WeightFile
from .validation import UsageError

__all__ = [
    "load_test", "LoadResult", "DeviceStats", "ForwardResult", "render_text", "render_json",
    "checksum_bytes", "checksum_tensor", "DTYPE_CHOICES",
]

# --- HFC73x..76x: loading --------------------------------------------------------------------
register("HFC730", "error", "load refused",
         "The folder has validation errors (a hostile pickle, a broken header, shapes the config "
         "contradicts, ...): load-test refuses to hand it to torch. The validation findings are listed "
         "with it.",
         "Fix the errors `hfconv validate` reports, then run load-test again.",
         "refused to load: validation found 1 error (HFC201 pytorch_model.bin: pickle references "
         "forbidden global 'os.system')")
register("HFC731", "error", "tensor not assigned",
         "The device map gives no device to some tensors (no key is a prefix of their name): "
         "from_pretrained fails with '... doesn't have any device set'.",
         "Add the tensor's module to the map, or a \"\" entry for everything not listed.",
         "the device map assigns no device to 1 tensor: lm_head.weight; add their module (or \"\" for "
         "the rest)")
register("HFC732", "error", "unknown device",
         "The device map or --max-memory names a device this machine does not have (cuda:3 on a "
         "2-GPU machine, a GPU without CUDA): the load would fail, or silently run elsewhere.",
         "Use the devices the machine has (load-test lists them), or run on the serving machine.",
         "the device map puts 'model.layers.20' on cuda:3, which this machine does not have (devices: "
         "cuda:0, cuda:1, cpu, disk)")
register("HFC733", "error", "exceeds memory",
         "The tensors do not fit the devices under their limits: a device map over a device's "
         "limit, a block larger than every device, or a model larger than all devices together. "
         "Serving would run out of memory.",
         "Raise --max-memory, allow offloading (--device-map auto with disk), use more devices, or "
         "load in a smaller --dtype.",
         "the device map puts 9.1 GB on cuda:0, over its limit of 8.0 GB")
register("HFC734", "error", "checksum mismatch",
         "The bytes of a tensor on its device differ from the bytes in the file: corruption between "
         "disk and device (bad RAM, a faulty transfer, a file changed while loading). The model would "
         "compute with wrong weights, silently.",
         "Run load-test again; if it persists, test the machine's memory and GPU, and re-download the "
         "shard named.",
         "model.layers.0.mlp.up_proj.weight: bytes on cuda:0 differ from the source "
         "(model-00001-of-00002.safetensors); checksum 3f2a... != 9c01...")
register("HFC735", "error", "tensor failed to load",
         "Reading a tensor or moving it onto its device failed (I/O error, short read, out of memory "
         "on the device, offload folder not writable).",
         "See the message: free device memory or lower --max-memory, fix the disk, or choose another "
         "--offload-folder.",
         "model.layers.31.mlp.down_proj.weight: could not be loaded onto cuda:1: CUDA out of memory")
register("HFC736", "error", "dtype or shape differs",
         "A tensor that arrived on its device does not have the dtype and shape its header declares "
         "(or the --dtype cast asks for).",
         "Report it with the tensor named: the header and the loaded bytes disagree.",
         "model.norm.weight: loaded as float16 [4096] but the header says F32 [4096]")
register("HFC737", "warning", "tied tensors split",
         "Tensors that share one storage (a tied lm_head and embedding) are put on different devices "
         "by the device map: transformers unties them (two copies) or warns.",
         "Put the modules holding them on the same device.",
         "lm_head.weight shares its storage with model.embed_tokens.weight but is placed on cuda:1, "
         "not cuda:0")
register("HFC738", "warning", "device map key unused",
         "A key of the device map matches no tensor of the folder: a typo, or a module without "
         "weights. The map may not place what its author intended.",
         "Check the key against the tensor names (hfconv inspect lists them).",
         "device map key 'model.layer.0' matches no tensor")
register("HFC739", "warning", "tensors left on meta",
         "The device map puts tensors on the meta device: they have no data and are not loaded; the "
         "model cannot run with them.",
         "Map them to a real device, unless the meta placement is deliberate.",
         "2 tensors are mapped to meta and were not loaded (e.g. lm_head.weight)")
register("HFC740", "info", "forward skipped",
         "--forward needs transformers (and accelerate), or a model transformers knows without the "
         "folder's own code; it was not run, the weights were still loaded and verified.",
         "pip install 'hfconv[transformers]', or drop --forward.",
         "--forward skipped: transformers is not installed (pip install 'hfconv[transformers]')")
register("HFC741", "error", "forward failed",
         "Building the model on the device map or running one forward pass raised an error: the folder "
         "loads tensor by tensor but not as a model.",
         "See the error quoted; it names the module or the shapes that do not fit.",
         "forward pass failed: RuntimeError: index 32000 is out of bounds for dimension 0 with size 200")
register("HFC742", "error", "non-finite logits",
         "The forward pass produced NaN or infinite logits on a few ordinary tokens: weights overflow "
         "in this dtype (float16), or are corrupt.",
         "Try --dtype bfloat16 or float32; check the weights (NaN or huge values) with the producer.",
         "forward pass: 1,204 of 3,200 logits are NaN or infinite (dtype float16)")

register("HFC743", "error", "nothing loaded",
         "load-test loaded no tensor at all: the device map puts every tensor on meta (or the folder "
         "holds none). A load test that loads nothing proves nothing, so it is not a pass.",
         "Map the modules to real devices (cpu, cuda:N, disk), e.g. --device-map auto.",
         "nothing was loaded: the device map puts all 21 tensors on meta")

register("HFC744", "warning", "validation errors that do not affect loading",
         "The folder has validation errors in files load-test does not read (a tokenizer file, "
         "generation_config.json, custom code): the weights, the index and config.json are sound, so "
         "the tensors were loaded anyway. `hfconv validate` still fails the folder.",
         "Fix the errors `hfconv validate` lists; --strict refuses to load any folder with errors, "
         "--ignore CODES drops codes you accept.",
         "loaded despite 1 validation error that does not affect loading (HFC405 generation_config.json: "
         "$.top_p must be a number between 0 and 1, not 1.5); --strict refuses them")
register("HFC745", "info", "balanced plan without GPUs",
         "--device-map balanced spreads the model over the GPUs; with none (or none allowed by "
         "--max-memory) the plan puts the whole model on the cpu, which says nothing about a GPU setup.",
         "Run on the machine with the GPUs, or use --device-map auto or sequential on purpose.",
         "balanced spreads the model over GPUs and this machine has none (or none allowed): the plan "
         "puts it on the cpu")
register("HFC746", "info", "library warning during --forward",
         "transformers or accelerate logged a warning while building the model or running the forward "
         "pass; load-test records it here instead of letting it interrupt the terminal.",
         "Usually nothing: e.g. accelerate says offloaded parameters sit on the meta device until used.",
         "accelerate: Some parameters are on the meta device because they were offloaded to the disk.")

from .conversion import DTYPE_CHOICES, canonical_dtype  # noqa: E402 - one --dtype name list for convert and load-test

_LOADING_CODES = ("HFC1", "HFC2", "HFC3", "HFC6", "HFC9", "HFC402", "HFC406", "HFC411", "HFC412", "HFC413",
                  "HFC414")
"""Validation errors that stop a load wherever they are: weight files (HFC1xx safetensors,
HFC2xx pickles), the index and shards (HFC3xx), config.json's schema and consistency (HFC402,
HFC411-414), tensor shapes (HFC6xx) and bytes (HFC9xx)."""
_LOAD_FILES = ("config.json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")


def affects_loading(item: Finding) -> bool:
    """Whether a validation error stops load-test (without --strict): errors in the weights, the
    index, config.json or the layout of the weight files; not tokenizer, generation-config or
    custom-code files, which load-test never reads."""
    if item.code.startswith(_LOADING_CODES):
        return True
    if item.code.startswith("HFC0") or item.code == "HFC401":
        return item.file is None or item.file.endswith(_LOAD_FILES)
    return False

_TARGET_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_CASTABLE = frozenset({"F64", "F32", "F16", "BF16"})
"""Floating dtypes a --dtype cast applies to (as in convert); float8, integer, bool are kept."""

_ROW_WORDS = 512
_ROW_BYTES = _ROW_WORDS * 8
_MASK = (1 << 64) - 1
_STAGE_BYTES = 64 << 20
"""Host staging buffer for GPU transfers: bounds host memory per transfer."""
_CHUNK_BYTES = 2 << 20
"""cpu reads and checksums go by 2 MiB: a chunk is summed while it is in the cache."""
_READ_CHUNK = 1 << 30
"""Largest single pread (Linux returns at most ~2 GiB per call)."""
_MAX_LOAD_ERRORS = 20
_GPU_HEADROOM = 0.9
_CPU_HEADROOM = 0.9
_DISK_HEADROOM = 0.95


# --- results ----------------------------------------------------------------------------------

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

    def to_json(self) -> dict:
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

    def to_json(self) -> dict:
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

    def to_json(self) -> dict:
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


# --- renderers ----------------------------------------------------------------------------------

def render_json(result: LoadResult) -> str:
    return json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"


def render_text(result: LoadResult) -> str:
    """The human summary: verdict, plan, per-device table, time, memory, forward, findings
    (listed as validate lists them); every name from the folder escaped."""
    from .render import escape_text as esc
    from .render import finding_lines, human_bytes

    lines: list[str] = []
    if result.ok:
        where = ", ".join(d.device for d in result.devices) or "no device"
        noun = "tensor" if result.tensors == 1 else "tensors"
        lines.append(f"load-test {esc(result.path)}: OK, {result.tensors:,} {noun} ({human_bytes(result.bytes)}) "
                     f"loaded onto {where} and verified")
    else:
        noun = "error" if result.errors == 1 else "errors"
        lines.append(f"load-test {esc(result.path)}: FAILED ({result.errors} {noun})")
    if result.plan is not None:
        plan = result.plan
        head = "device map file" if plan.strategy == "file" else plan.strategy
        if result.dtype != "keep":
            head += f", dtype {result.dtype}"
        if plan.reserved:
            head += "; kept free for offloaded layers: " + ", ".join(
                f"{device} {human_bytes(size)}" for device, size in plan.reserved.items())
        lines.append(f"  plan      {head}")
        rows = compact_modules(result.plan.modules)
        width = min(max((len(m) for m, _ in rows), default=0), 48)
        rest = "(the rest)" if len(plan.modules) > 1 else "(whole model)"
        for module, device in rows[:40]:
            lines.append(f"              {(esc(module) or rest):<{width}}  {device}")
        if len(rows) > 40:
            lines.append(f"              ... {len(rows) - 40} more")
    if result.devices:
        lines.append("  device    tensors       bytes       limit        peak     seconds")
        for d in result.devices:
            limit = human_bytes(d.limit) if d.limit is not None else "-"
            peak = human_bytes(d.peak_bytes) if d.peak_bytes is not None else "-"
            note = f"  ({d.note})" if d.note else ""
            lines.append(f"  {d.device:<8}{d.tensors:>9}{human_bytes(d.bytes):>12}{limit:>12}{peak:>12}"
                         f"{d.seconds:>12.2f}{note}")
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
    if result.findings:
        lines.append("  findings")
        lines.extend(finding_lines(result.findings, indent="    "))
    return "\n".join(lines) + "\n"


# --- checksums ----------------------------------------------------------------------------------

def checksum_bytes(data: Any) -> tuple[int, int, int]:
    """The positional checksum of a byte string, computed with numpy (the source side).

    Args:
        data: a buffer or a 1-D uint8 numpy array (a memory-mapped range is read in place).

    Returns:
        ``(sum of words, column-weighted sum, row-weighted sum)``, each modulo 2**64.
    """
    import numpy as np

    array = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    total = _Checksum()
    for start in range(0, array.size, _CHUNK_BYTES):
        total.add(array[start:start + _CHUNK_BYTES])
    return total.result()


class _Checksum:
    """:func:`checksum_bytes` fed chunk by chunk (every chunk but the last a whole number of
    4 KiB rows): each chunk is summed while it is still in the cpu cache, so the two
    reductions cost one pass over memory."""

    def __init__(self) -> None:
        import numpy as np

        self._np = np
        self._columns = np.zeros(_ROW_WORDS, dtype=np.uint64)
        self._row_sum = 0
        self._rows = 0
        self._tail: Any = None

    def add(self, chunk: Any) -> None:
        np = self._np
        if self._tail is not None:
            raise ValueError("only the last chunk may end in a partial row")
        rows = chunk.size // _ROW_BYTES
        if rows:
            words = chunk[: rows * _ROW_BYTES].view("<u8").reshape(rows, _ROW_WORDS)
            self._columns += words.sum(axis=0, dtype=np.uint64)  # wraps modulo 2**64
            weights = np.arange(self._rows + 1, self._rows + rows + 1, dtype=np.uint64)
            weighted = (words.sum(axis=1, dtype=np.uint64) * weights).sum(dtype=np.uint64)
            self._row_sum = (self._row_sum + int(weighted)) & _MASK
            self._rows += rows
        if chunk.size > rows * _ROW_BYTES:
            self._tail = chunk[rows * _ROW_BYTES:].copy()  # < 4 KiB; the chunk's buffer is reused

    def result(self) -> tuple[int, int, int]:
        np = self._np
        s0 = int(self._columns.sum(dtype=np.uint64))
        scol = int((self._columns * np.arange(1, _ROW_WORDS + 1, dtype=np.uint64)).sum(dtype=np.uint64))
        t0, tcol = _tail_sums(self._tail if self._tail is not None else np.zeros(0, dtype=np.uint8))
        return ((s0 + t0) & _MASK, (scol + tcol) & _MASK, (self._row_sum + (self._rows + 1) * t0) & _MASK)


def _tail_sums(tail: Any) -> tuple[int, int]:
    """Sum and column-weighted sum of a last partial row (< 4 KiB), zero-padded."""
    import numpy as np

    if tail.size == 0:
        return 0, 0
    padded = np.zeros(_ROW_BYTES, dtype=np.uint8)
    padded[: tail.size] = tail
    words = padded.view("<u8")
    weights = np.arange(1, _ROW_WORDS + 1, dtype=np.uint64)
    return int(words.sum(dtype=np.uint64)), int((words * weights).sum(dtype=np.uint64))


def checksum_tensor(flat: Any) -> tuple[int, int, int]:
    """The same checksum as :func:`checksum_bytes`, computed where the tensor is.

    Args:
        flat: a 1-D contiguous ``torch.uint8`` tensor (the tensor's bytes) on any device.

    Returns:
        The checksum triple. On a GPU, torch computes it there and only the last partial row
        (< 4 KiB) comes back to the host. On the cpu, numpy reads the tensor's memory in place
        (single-threaded it runs at memory speed and releases the GIL, where torch's two-thread
        column reduction was 2x slower and fought the source-side checksum for the cores).
    """
    if flat.device.type == "cpu":
        return checksum_bytes(flat.numpy())
    return _checksum_torch(flat)


def _checksum_torch(flat: Any) -> tuple[int, int, int]:
    """:func:`checksum_tensor` in torch, for accelerators."""
    import torch

    if flat.storage_offset() % 8:  # an int64 view needs 8-byte alignment within its storage
        flat = flat.clone()
    rows = flat.numel() // _ROW_BYTES
    s0 = scol = srow = 0
    if rows:
        words = flat[: rows * _ROW_BYTES].view(torch.int64).view(rows, _ROW_WORDS)
        # int64 sums wrap modulo 2**64 on every backend, like numpy's uint64 sums.
        col = words.sum(0)
        row = words.sum(1)
        col_weights = torch.arange(1, _ROW_WORDS + 1, dtype=torch.int64, device=flat.device)
        row_weights = torch.arange(1, rows + 1, dtype=torch.int64, device=flat.device)
        s0, scol, srow = torch.stack([col.sum(), (col * col_weights).sum(), (row * row_weights).sum()]).tolist()
    t0, tcol = _tail_sums(flat[rows * _ROW_BYTES:].cpu().numpy())
    return ((s0 + t0) & _MASK, (scol + tcol) & _MASK, (srow + (rows + 1) * t0) & _MASK)


def _hex(checksum: tuple[int, int, int]) -> str:
    return "".join(f"{v:016x}" for v in checksum)[:24]


# --- where each tensor's bytes are -----------------------------------------------------------

@dataclass(frozen=True)
class _Located:
    """A tensor's bytes in its source file, and what it becomes on its device."""

    name: str
    shard: str
    """Weight file, relative to the folder."""
    meta: TensorMeta
    begin: int
    """Absolute offset of the first byte (of the view's span, for a strided view)."""
    end: int
    stride: tuple[int, ...] | None
    """Element strides of a non-contiguous ``.bin`` view, else None."""
    out_dtype: str
    safetensors: bool
    byteswap: bool = False
    """Stored big-endian: the verified bytes are swapped before they become the tensor."""

    @property
    def nbytes(self) -> int:
        return self.meta.nbytes

    @property
    def out_nbytes(self) -> int:
        return dtype_nbytes(self.out_dtype, self.meta.numel)

    @property
    def alias_key(self) -> tuple:
        return (self.shard, self.begin, self.end, self.stride, self.meta.dtype, self.meta.shape)


def _locate(meta: TensorMeta, weight_file: WeightFile, shard: str, file_size: int, out_dtype: str) -> _Located:
    """Where a tensor's bytes are (bounds checked again: the header was read before)."""
    safetensors = weight_file.format == "safetensors"
    if meta.data_offsets is not None:
        begin, end = meta.data_offsets
        stride = None
    else:
        storage = located_storage(meta, weight_file)
        if storage is None:
            raise FormatError("HFC205", f"tensor {meta.name!r} has no storage location", meta.name)
        try:
            begin, end, stride = view_span(meta, storage)
        except OutsideStorage:
            raise FormatError("HFC209", f"tensor {meta.name!r} reaches outside its storage", meta.name) from None
    if begin < 0 or end < begin or end > file_size or (stride is None and end - begin != meta.nbytes):
        raise FormatError("HFC209", f"tensor {meta.name!r} byte range {begin}..{end} does not fit the file", meta.name)
    byteswap = weight_file.byte_order == "big" and swap_unit(meta.dtype) > 1
    return _Located(meta.name, shard, meta, begin, end, stride, out_dtype, safetensors, byteswap)


# --- memory probes -------------------------------------------------------------------------------

def _proc_status() -> dict[str, int]:
    """VmHWM, VmRSS and RssAnon of this process in bytes (empty off Linux)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def _peak_rss() -> int | None:
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"]
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):  # pragma: no cover - every supported platform has one
        return None


def _mem_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8 << 30


# --- options ----------------------------------------------------------------------------------

def _parse_max_memory(max_memory: Mapping[Any, Any] | None) -> dict[str, int]:
    from .sharding import parse_size

    limits: dict[str, int] = {}
    for key, value in (max_memory or {}).items():
        try:
            device = parse_device(key)
        except DeviceMapSyntaxError as exc:
            raise UsageError(f"--max-memory: {exc}") from None
        if device == "meta":
            raise UsageError("--max-memory: the meta device holds no data and takes no limit")
        if device in limits:
            raise UsageError(f"--max-memory names {device} twice; give one limit per device")
        if value in (0, "0"):
            limits[device] = 0
            continue
        try:
            limits[device] = parse_size(value)
        except ValueError as exc:
            raise UsageError(f"--max-memory {device}: {exc}") from None
    return limits


def _read_map(device_map: str | Mapping[str, Any]) -> str | dict[str, str]:
    """A strategy name, or the parsed map of a JSON file (or mapping)."""
    if isinstance(device_map, Mapping):
        try:
            return read_device_map(device_map)
        except DeviceMapSyntaxError as exc:
            raise UsageError(str(exc)) from None
    if device_map in STRATEGIES:
        return device_map
    path = Path(device_map)
    if not path.exists():
        raise UsageError(f"--device-map {device_map!r}: not found (give {', '.join(STRATEGIES)} or a JSON file "
                         "that exists)")
    if not path.is_file():
        raise UsageError(f"--device-map {device_map!r} is neither {', '.join(STRATEGIES)} nor a JSON file")
    if path.stat().st_size > 64 << 20:
        raise UsageError(f"--device-map {device_map}: file larger than 64 MB")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--device-map {device_map}: cannot read: {exc}") from None
    try:
        return read_device_map(text)
    except DeviceMapSyntaxError as exc:
        raise UsageError(f"--device-map {device_map}: {exc}") from None


def _capacities(torch_mod: Any, limits: Mapping[str, int], offload_root: str, disk_needed: bool
                ) -> dict[str, int | None]:
    """Every device the machine has -> the limit to plan with (``max_memory`` or free memory)."""
    caps: dict[str, int | None] = {}
    if torch_mod.cuda.is_available():
        for index in range(torch_mod.cuda.device_count()):
            name = f"cuda:{index}"
            if name in limits:
                caps[name] = limits[name]
                continue
            free, _ = torch_mod.cuda.mem_get_info(index)
            caps[name] = int(free * _GPU_HEADROOM)
    caps["cpu"] = limits.get("cpu", int(_mem_available() * _CPU_HEADROOM))
    if "disk" in limits:
        caps["disk"] = limits["disk"]
    elif disk_needed:
        caps["disk"] = int(shutil.disk_usage(offload_root).free * _DISK_HEADROOM)
    else:
        caps["disk"] = None  # safetensors shards stay mapped: disk placement writes nothing
    return caps


# --- the executor ------------------------------------------------------------------------------

class _Refused(Exception):
    """Stops the run with findings (validation errors, a plan error)."""

    def __init__(self, findings: list[Finding], layout: Layout | None = None):
        super().__init__(findings[0].message if findings else "refused")
        self.findings = findings
        self.layout = layout


@dataclass
class _DeviceTally:
    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    held: int = 0
    peak_held: int = 0


def _pread_full(fd: int, buffer: memoryview, offset: int) -> None:
    """Fill ``buffer`` from ``fd`` at ``offset``; a short file is an error."""
    done = 0
    total = len(buffer)
    while done < total:
        want = min(total - done, _READ_CHUNK)
        got = os.preadv(fd, [buffer[done:done + want]], offset + done)
        if got <= 0:
            raise OSError(f"file ended {total - done} bytes early at offset {offset + done}")
        done += got


def _read_exact(fd: int, buffer: memoryview, offset: int) -> None:
    """The device side's read (the source side reads with :func:`_pread_full` directly)."""
    _pread_full(fd, buffer, offset)


class _Scratch:
    """Host buffers reused from tensor to tensor: fresh memory costs a page fault per 4 KiB."""

    def __init__(self) -> None:
        self._host: Any = None
        self._stage: Any = None

    def host(self, nbytes: int) -> Any:
        """A uint8 cpu tensor of ``nbytes`` (a view of a buffer that only grows)."""
        import torch

        if self._host is None or self._host.numel() < nbytes:
            self._host = None
            self._host = torch.empty(max(nbytes, 1), dtype=torch.uint8)
        return self._host[:nbytes]

    def stage(self) -> Any:
        """The GPU staging buffer (pinned when CUDA is there: faster copies)."""
        import torch

        if self._stage is None:
            pin = torch.cuda.is_available()
            self._stage = torch.empty(_STAGE_BYTES, dtype=torch.uint8, pin_memory=pin)
        return self._stage


def _transfer(fd: int, loc: _Located, device: str, scratch: _Scratch) -> tuple[Any, tuple[int, int, int] | None]:
    """Read a tensor's bytes from ``fd`` onto ``device``.

    Returns:
        ``(bytes, checksum)``: the bytes as a 1-D uint8 tensor in C order on the device, and
        their checksum when it was computed as they landed (cpu), else None (the caller
        computes it on the device).

    cpu: ``pread`` by 2 MiB chunks into the reused host buffer, each chunk summed while it is
    in the cache. cuda: ``pread`` into the staging buffer, copied chunk by chunk into a new
    device allocation (a synchronous copy, so the buffer is free again when it returns). A
    strided ``.bin`` view reads its storage span and is made contiguous on the host first
    (rare: tied slices, transposed saves).
    """
    import torch

    from .dtypes import torch_dtype

    if loc.stride is not None:
        span = scratch.host(loc.end - loc.begin)
        _read_exact(fd, memoryview(span.numpy()), loc.begin)
        typed = span.view(torch_dtype(loc.meta.dtype))
        gathered = torch.as_strided(typed, loc.meta.shape, loc.stride).contiguous()
        flat = gathered.reshape(-1).view(torch.uint8)
        return (flat, None) if device == "cpu" else (flat.to(device), None)
    if device == "cpu":
        out = scratch.host(loc.nbytes)
        array = out.numpy()
        landed = _Checksum()
        for start in range(0, loc.nbytes, _CHUNK_BYTES):
            chunk = array[start:start + _CHUNK_BYTES]
            _read_exact(fd, memoryview(chunk), loc.begin + start)
            landed.add(chunk)
        return out, landed.result()
    out = torch.empty(loc.nbytes, dtype=torch.uint8, device=device)
    stage = scratch.stage()
    view = memoryview(stage.numpy())
    done = 0
    while done < loc.nbytes:
        count = min(_STAGE_BYTES, loc.nbytes - done)
        _read_exact(fd, view[:count], loc.begin + done)
        out[done:done + count].copy_(stage[:count])  # not non_blocking: the buffer is reused next
        done += count
    return out, None


def _source_checksum(fd: int, loc: _Located, buffer: Any, stop: Any = None,
                     crc: list[int] | None = None) -> tuple[int, int, int]:
    """The checksum of the tensor's bytes in the file, in C order, read with ``pread``.

    With ``crc`` (a one-item list; only for a contiguous view that is its whole storage),
    the CRC-32 of the bytes is computed on the same chunks into ``crc[0]``.

    Contiguous ranges go through ``buffer`` (2 MiB, reused) and are summed while in the cache;
    a strided ``.bin`` view reads its storage span and gathers it first.
    """
    import numpy as np
    from numpy.lib.stride_tricks import as_strided

    from .dtypes import itemsize

    if loc.stride is None:
        total = _Checksum()
        for start in range(0, loc.nbytes, _CHUNK_BYTES):
            if stop is not None and stop.is_set():
                raise CancelledError(f"{loc.name}: load-test stopped")
            chunk = buffer[:min(_CHUNK_BYTES, loc.nbytes - start)]
            _pread_full(fd, memoryview(chunk), loc.begin + start)
            if crc is not None:
                crc[0] = _crc32(chunk, crc[0])
            total.add(chunk)
        return total.result()
    span = np.empty(loc.end - loc.begin, dtype=np.uint8)
    _pread_full(fd, memoryview(span), loc.begin)
    size = itemsize(loc.meta.dtype)
    base = span.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[size])
    view = as_strided(base, shape=loc.meta.shape, strides=tuple(s * size for s in loc.stride), writeable=False)
    return checksum_bytes(np.ascontiguousarray(view).reshape(-1).view(np.uint8))


def _crc32(data: Any, value: int) -> int:
    from .checks.deep import crc32

    return crc32(data, value)


def _record_crc(fd: int, record: StorageRecord, buffer: Any, stop: Any, crc: list[int]) -> None:
    """The CRC-32 of a storage's whole record (a storage only partly viewed, or by a strided view)."""
    end = record.begin + record.nbytes
    value = 0
    for start in range(record.begin, end, _CHUNK_BYTES):
        if stop is not None and stop.is_set():
            raise CancelledError(f"storage {record.key}: load-test stopped")
        chunk = buffer[:min(_CHUNK_BYTES, end - start)]
        _pread_full(fd, memoryview(chunk), start)
        value = _crc32(chunk, value)
    crc[0] = value


class _SourceChecksums:
    """The source side of every checksum, computed ahead in one worker thread.

    Started once the plan is accepted (a refused plan reads nothing), so numpy sums the
    shards (read with ``pread`` through a 2 MiB buffer: no mapping, nothing added to the
    resident set) on the second core while the loader reads the same bytes onto their
    devices. Each storage range is summed once, however many tensors view it.
    """

    def __init__(self, root: Path, located: list[_Located],
                 records: Mapping[tuple[str, str], StorageRecord] | None = None, roots: tuple[Path, ...] = ()):
        import numpy as np

        self._files: dict[str, Any] = {}
        self._futures: dict[tuple, Any] = {}
        self._errors: dict[str, str] = {}
        self._crcs: list[tuple[str, StorageRecord, Any, list[int]]] = []
        """(shard, storage record, the future that computes its CRC-32, where it lands)."""
        records = dict(records or {})
        self._buffer = np.empty(_CHUNK_BYTES, dtype=np.uint8)  # only the worker thread uses it
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfconv-checksum")
        for loc in located:
            if loc.shard not in self._files and loc.shard not in self._errors:
                try:
                    self._files[loc.shard] = open_inside(root / loc.shard, roots or (root,))
                except FormatError as exc:
                    self._errors[loc.shard] = exc.message
                    continue
            if loc.shard not in self._files:
                continue
            fd = self._files[loc.shard].fileno()
            # Every .bin storage a loaded tensor views is checked once against its recorded
            # CRC-32: on the same chunks when the tensor is its whole storage, else on its own.
            record = records.pop((loc.shard, loc.meta.storage_key), None) if loc.meta.storage_key else None
            crc: list[int] | None = [0] if record is not None else None
            fused = record is not None and loc.stride is None and loc.alias_key not in self._futures and \
                (loc.begin, loc.nbytes) == (record.begin, record.nbytes)
            if loc.alias_key not in self._futures:
                self._futures[loc.alias_key] = self._pool.submit(_source_checksum, fd, loc, self._buffer, self._stop,
                                                                 crc if fused else None)
            if record is not None and crc is not None:
                future = self._futures[loc.alias_key] if fused else \
                    self._pool.submit(_record_crc, fd, record, self._buffer, self._stop, crc)
                self._crcs.append((loc.shard, record, future, crc))

    def result(self, loc: _Located) -> tuple[int, int, int]:
        future = self._futures.get(loc.alias_key)
        if future is None:
            raise OSError(f"{loc.shard} could not be opened: {self._errors.get(loc.shard, 'unknown error')}")
        return future.result()

    def crc_findings(self) -> list[Finding]:
        """HFC901 for every storage whose bytes fail their recorded CRC-32 (waits for them)."""
        from .checks.deep import crc_mismatch

        found = []
        for shard, record, future, crc in self._crcs:
            try:
                future.result()
            except Exception:  # noqa: BLE001 - a read error is reported with the tensor that needed it
                continue
            if record.crc32 is not None and crc[0] != record.crc32:
                found.append(crc_mismatch(shard, record.key, record.first_user, record.crc32, crc[0]))
        return found

    def close(self) -> None:
        """Stop at once (the running checksum at its next chunk) and close the shards."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for handle in self._files.values():
            handle.close()
        self._files.clear()


def _torch_view(flat: Any, loc: _Located) -> Any:
    """The verified bytes as the tensor they are (cast when asked); raw bytes for sub-byte dtypes."""
    from .dtypes import torch_dtype

    try:
        source = torch_dtype(loc.meta.dtype)
    except KeyError:
        return flat  # F4/F6 and friends: torch has no dtype; the bytes are what was verified
    if loc.byteswap:  # reverse each element's bytes, on whatever device they landed
        flat = flat.reshape(-1, swap_unit(loc.meta.dtype)).flip(-1).reshape(-1)
    tensor = flat.view(source).reshape(loc.meta.shape)
    if loc.out_dtype != loc.meta.dtype:
        tensor = tensor.to(torch_dtype(loc.out_dtype))
    return tensor


def _check_loaded(tensor: Any, flat: Any, loc: _Located, device: str) -> Finding | None:
    from .dtypes import TORCH_DTYPE, torch_dtype

    got_bytes = flat.numel()
    if got_bytes != loc.nbytes:
        return finding("HFC736", f"{loc.name}: {got_bytes} bytes arrived on {device} but the header declares "
                       f"{loc.meta.dtype} {list(loc.meta.shape)} = {loc.nbytes} bytes", file=loc.shard, tensor=loc.name)
    try:
        want = torch_dtype(loc.out_dtype)
    except KeyError:
        return None
    if tensor.dtype != want or tuple(tensor.shape) != tuple(loc.meta.shape):
        got = TORCH_DTYPE.get(str(tensor.dtype).removeprefix("torch."), str(tensor.dtype))
        return finding("HFC736", f"{loc.name}: loaded as {got} {list(tensor.shape)} but the header says "
                       f"{loc.out_dtype} {list(loc.meta.shape)}", file=loc.shard, tensor=loc.name)
    return None


class _Loader:
    """Executes a plan: shard by shard, tensor by tensor; collects findings and tallies."""

    def __init__(self, root: Path, plan: DevicePlan, located: list[_Located], keep: bool,
                 offload_dir: str | None, progress: Callable[[int, int], None] | None, sources: _SourceChecksums):
        self.root = root
        self.roots: tuple[Path, ...] = ()
        """Where shards may be read from (the folder and, in a Hub cache, its blobs): each is
        opened once, never through a symlink out of them."""
        self.sources = sources
        self.plan = plan
        self.located = located
        self.keep = keep
        self.offload_dir = offload_dir
        self.progress = progress
        self.findings: list[Finding] = []
        self.tally: dict[str, _DeviceTally] = {}
        self.kept: dict[str, Any] = {}
        self.loaded: dict[tuple, str] = {}
        """alias key + device -> the first tensor loaded from those bytes."""
        self.peak_anon = 0
        self.scratch = _Scratch()
        unique = {(*loc.alias_key, plan.tensors[loc.name]): loc.nbytes for loc in located
                  if plan.tensors.get(loc.name) != "meta"}
        self.total = sum(unique.values())
        self.done = 0
        self.errors = 0

    def run(self) -> None:
        on_cpu = [loc.end - loc.begin if loc.stride is not None else loc.nbytes for loc in self.located
                  if self.plan.tensors.get(loc.name) == "cpu" or loc.stride is not None]
        if on_cpu:
            with contextlib.suppress(RuntimeError, MemoryError):  # else each tensor's load reports it
                self.scratch.host(max(on_cpu))  # one allocation, not one per larger tensor
        by_shard: dict[str, list[_Located]] = {}
        for loc in self.located:
            by_shard.setdefault(loc.shard, []).append(loc)
        for shard, items in by_shard.items():
            if self.errors >= _MAX_LOAD_ERRORS:
                break
            self._shard(shard, items)

    def _shard(self, shard: str, items: list[_Located]) -> None:
        try:
            handle = open_inside(self.root / shard, self.roots or (self.root,))
        except FormatError as exc:
            self.errors += 1
            self.findings.append(finding("HFC735", f"{shard} could not be opened: {exc.message}; its {len(items)} "
                                         "tensors were not loaded", file=shard))
            return
        with handle:
            fd = handle.fileno()
            for loc in items:
                if self.errors >= _MAX_LOAD_ERRORS:
                    self.findings.append(finding("HFC735", f"stopped after {self.errors} tensors failed to load",
                                                 file=shard))
                    return
                device = self.plan.tensors[loc.name]
                if device == "meta":
                    continue
                self._one(fd, loc, device)

    def _one(self, fd: int, loc: _Located, device: str) -> None:
        started = time.perf_counter()
        tally = self.tally.setdefault(device, _DeviceTally())
        key = (*loc.alias_key, device)
        first = self.loaded.get(key)
        if first is not None:  # a second name for bytes already on this device (tied storage)
            if first in self.kept:
                self.kept[loc.name] = self.kept[first]
            tally.tensors += 1
            tally.seconds += time.perf_counter() - started
            return
        try:
            if device == "disk":
                device_sum, flat, tensor, written = self._disk(fd, loc)
            else:
                flat, device_sum = _transfer(fd, loc, device, self.scratch)
                if device_sum is None:
                    device_sum = checksum_tensor(flat)
                tensor = _torch_view(flat, loc)
                written = 0
            expected = self.sources.result(loc)
            if device_sum is None:  # stays in its safetensors shard: the source read is its read-back
                device_sum = expected
        except Exception as exc:  # noqa: BLE001 - any failure to load is a finding, the run goes on
            self._fail(loc, device, f"{type(exc).__name__}: {exc}")
            return
        if device_sum != expected:
            self.errors += 1
            self.findings.append(finding(
                "HFC734", f"{loc.name}: bytes on {device} differ from the source ({loc.shard}); checksum "
                f"{_hex(device_sum)} != {_hex(expected)}", file=loc.shard, tensor=loc.name))
        problem = _check_loaded(tensor, flat, loc, device) if device != "disk" else None
        if problem is not None:
            self.errors += 1
            self.findings.append(problem)
        self.loaded[key] = loc.name
        tally.tensors += 1
        tally.bytes += loc.nbytes
        if device == "disk":
            tally.held += written or loc.nbytes
        else:
            size = tensor.numel() * tensor.element_size()
            if self.keep and device != "cpu":
                self.kept[loc.name] = tensor
                tally.held += size
            else:
                tally.held = max(tally.held, size)
        tally.peak_held = max(tally.peak_held, tally.held)
        del flat, tensor
        tally.seconds += time.perf_counter() - started
        self.peak_anon = max(self.peak_anon, _proc_status().get("RssAnon", 0))
        self.done += loc.nbytes
        if self.progress is not None:
            self.progress(self.done, self.total)

    def _disk(self, fd: int, loc: _Located) -> tuple[tuple[int, int, int] | None, Any, Any, int]:
        """Put a tensor on disk and read it back once.

        Returns (checksum of the read-back, or None when the read-back is the source read
        itself; the bytes; the tensor; bytes written to the offload folder).
        """
        import torch

        if loc.safetensors or self.offload_dir is None:
            # Stays where it is: the shard is the offload storage (accelerate offloads
            # safetensors weights to their own files), and the source-side checksum has read
            # every byte of it once.
            return None, torch.empty(loc.nbytes, dtype=torch.uint8, device="meta"), None, 0
        name = hashlib.sha256(f"{loc.shard}\0{loc.name}".encode("utf-8", "surrogatepass")).hexdigest()
        target = os.path.join(self.offload_dir, f"{name}.dat")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        out = os.open(target, flags, 0o600)
        landed = None
        try:
            if loc.stride is None and not loc.byteswap:
                _copy_range(fd, out, loc.begin, loc.nbytes)
            else:
                flat, landed = _transfer(fd, loc, "cpu", self.scratch)
                if loc.byteswap:
                    # accelerate's offload files hold native (little-endian) bytes: swap, and
                    # prove the source read with the bytes as they landed, before the swap
                    landed = landed or checksum_tensor(flat)
                    flat = flat.reshape(-1, swap_unit(loc.meta.dtype)).flip(-1).reshape(-1)
                    swapped = checksum_tensor(flat)
                view = memoryview(flat.numpy())
                written = 0
                while written < len(view):
                    written += os.write(out, view[written:])
        finally:
            os.close(out)
        # Read back once, through a mapping of the written file (what an offload hook reads).
        with open(target, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size != loc.nbytes:
                raise OSError(f"offload file holds {size} bytes, expected {loc.nbytes}")
            if size == 0:
                return checksum_tensor(torch.empty(0, dtype=torch.uint8)), torch.empty(0), None, 0
            back = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    flat = torch.frombuffer(back, dtype=torch.uint8)
                    checksum = checksum_tensor(flat)
                del flat
            finally:
                with contextlib.suppress(BufferError):
                    back.close()
        if loc.byteswap:
            if checksum != swapped:
                raise OSError("offload file read back differs from the bytes written")
            checksum = landed
        return checksum, torch.empty(loc.nbytes, dtype=torch.uint8, device="meta"), None, loc.nbytes

    def _fail(self, loc: _Located, device: str, message: str) -> None:
        self.errors += 1
        self.findings.append(finding("HFC735", f"{loc.name}: could not be loaded onto {device}: {message}",
                                     file=loc.shard, tensor=loc.name))


def _copy_range(src: int, dst: int, offset: int, count: int) -> None:
    """Copy ``count`` bytes at ``offset`` of ``src`` to ``dst`` kernel-side where possible."""
    done = 0
    use_kernel = hasattr(os, "copy_file_range")
    while done < count:
        want = min(count - done, _STAGE_BYTES)
        moved = 0
        if use_kernel:
            try:
                moved = os.copy_file_range(src, dst, want, offset + done)
            except OSError:
                use_kernel = False
                moved = 0
        if not moved:
            data = os.pread(src, want, offset + done)
            if not data:
                raise OSError(f"source ended {count - done} bytes early")
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view):]
            moved = len(data)
        done += moved


# --- the library function -----------------------------------------------------------------------

def load_test(
    path: str | os.PathLike,
    *,
    device_map: str | Mapping[str, Any] = "auto",
    max_memory: Mapping[Any, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
    dtype: str | None = None,
    forward: bool = False,
    progress: Callable[[int, int], None] | None = None,
    keep: bool = True,
    phase: Callable[[str], None] | None = None,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    strict: bool = False,
) -> LoadResult:
    """Load every tensor of a model folder onto its planned device and verify every byte.

    Args:
        path: the model folder.
        device_map: ``auto``, ``balanced``, ``sequential`` (planned; see :mod:`hfconv.device_map`),
            a JSON file path, or a ``{module_prefix: device}`` mapping.
        max_memory: device (``0``, ``cuda:1``, ``cpu``, ``disk``) -> limit (bytes or a size string
            such as ``"20GiB"``). Devices not named get their free memory minus headroom (90%
            of free GPU memory and of MemAvailable; 95% of the offload folder's free disk);
            ``0`` keeps a device out of the plan.
        offload_folder: where ``disk`` tensors of ``.bin`` sources are written (a fresh
            subfolder, removed afterwards); default: the system temp dir. Safetensors sources
            are left in (and read back from) their own shards.
        dtype: ``keep`` (None) or ``float32``/``float16``/``bfloat16``: floating tensors are cast
            on their device after verification (``disk`` tensors keep their stored dtype).
        forward: also build the model with transformers on the same map and run one forward pass.
        progress: called as ``progress(bytes_done, bytes_total)`` after each tensor.
        keep: keep GPU tensors on their devices until all are loaded (the serving
            footprint); False frees each one once verified. cpu tensors are never kept (they
            pass through one reused buffer; see the module docstring).
        phase: told each phase as it starts: ``validating``, ``importing torch``,
            ``loading``, ``forward pass`` (a progress display's label).
        select, ignore: validation codes (or prefixes) kept / dropped, as ``validate`` takes them.
        strict: refuse a folder with any validation error; by default only errors that affect
            loading (:func:`affects_loading`) refuse it, the others are a warning (HFC744).

    Returns:
        The LoadResult; ``result.ok`` is the verdict, ``result.exit_code`` the CLI's.

    Raises:
        UsageError: path is not a folder, a bad ``device_map`` file or device name, a bad
            ``max_memory`` entry, an unknown ``dtype``.
    """
    started = time.perf_counter()
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"{path} is not a folder (give the model folder, not a file)")
    dtype = canonical_dtype(dtype)
    strategy_or_map = _read_map(device_map)
    limits = _parse_max_memory(max_memory)
    phases: dict[str, float] = {}
    gate = _Gate(tuple(select or ()), tuple(ignore or ()), strict, phase or (lambda _name: None))
    try:
        return _run(root, strategy_or_map, limits, offload_folder, dtype, forward, progress, keep, phases, started,
                    gate)
    except _Refused as refused:
        phases["total"] = time.perf_counter() - started
        return LoadResult(path=str(path), findings=tuple(refused.findings), layout=refused.layout, dtype=dtype,
                          phases=phases, peak_rss=_peak_rss(), kept=keep)
    except OSError as exc:  # a step without its own finding (a full offload disk, ...): a finding, no traceback
        phases["total"] = time.perf_counter() - started
        where = f" ({exc.filename})" if isinstance(exc.filename, str) else ""
        failed = finding("HFC735", f"load-test could not finish: {exc.strerror or exc}{where}")
        return LoadResult(path=str(path), findings=(failed,), dtype=dtype, phases=phases, peak_rss=_peak_rss(),
                          kept=keep)


@dataclass(frozen=True)
class _Gate:
    select: tuple[str, ...]
    ignore: tuple[str, ...]
    strict: bool
    phase: Callable[[str], None]


def _quoted(item: Finding) -> str:
    """``CODE file: message`` with the file named once (most messages start with it)."""
    named = item.file and not item.message.startswith(item.file)
    return f"{item.code} {item.file + ': ' if named else ''}{item.message}"


def _run(root: Path, strategy_or_map: str | dict[str, str], limits: dict[str, int],
         offload_folder: str | os.PathLike | None, dtype: str, forward: bool,
         progress: Callable[[int, int], None] | None, keep: bool, phases: dict[str, float],
         started: float, gate: _Gate) -> LoadResult:
    from .contents import read_contents
    from .discovery import discover
    from .validation import check_contents

    # 1. Validate: a folder with errors that affect loading (any, with strict) never reaches torch.
    gate.phase("validating")
    tick = time.perf_counter()
    contents = read_contents(discover(root))
    report = check_contents(contents, select=gate.select, ignore=gate.ignore)
    phases["validate"] = time.perf_counter() - tick
    errors = [f for f in report.findings if f.severity is Severity.ERROR]
    blocking = errors if gate.strict else [f for f in errors if affects_loading(f)]
    if blocking:
        first = blocking[0]
        summary = finding("HFC730", f"refused to load: validation found {len(blocking)} error"
                          f"{'s' if len(blocking) != 1 else ''}{' that affect loading' if not gate.strict else ''} "
                          f"({_quoted(first)})")
        raise _Refused([summary, *errors], report.layout)
    passed: list[Finding] = []
    if errors:
        noun = "error that does" if len(errors) == 1 else "errors that do"
        passed.append(finding("HFC744", f"loaded despite {len(errors)} validation {noun} not affect loading "
                              f"({'; '.join(_quoted(f) for f in errors[:3])}{'; ...' if len(errors) > 3 else ''}); "
                              "--strict refuses them"))

    # 2. Where every tensor's bytes are (from the headers validate read).
    tick = time.perf_counter()
    layout = report.layout
    chosen = contents.folder.loaded_set
    target = _TARGET_DTYPE.get(dtype)
    located: list[_Located] = []
    tied: list[list[str]] = []
    problems: list[Finding] = []
    for shard in (contents.shards_of(chosen) if chosen else ()):
        weight_file = contents.weights.get(shard)
        if weight_file is None:  # validate reports unreadable shards as errors; be safe anyway
            problems.append(finding("HFC735", f"{shard} could not be read", file=shard))
            continue
        try:
            size = os.stat(root / shard).st_size
            by_key: dict[tuple, list[str]] = {}
            for meta in file_order(weight_file):
                out_dtype = target if (target and meta.dtype in _CASTABLE) else meta.dtype
                loc = _locate(meta, weight_file, shard, size, out_dtype)
                located.append(loc)
                if meta.storage_key is not None:
                    by_key.setdefault(loc.alias_key, []).append(loc.name)
            tied.extend(names for names in by_key.values() if len(names) > 1)
        except (FormatError, OSError) as exc:
            problems.append(finding("HFC735", f"{shard}: {getattr(exc, 'message', exc)}", file=shard))
    if problems:
        raise _Refused(problems, layout)
    disk_writes = any(not loc.safetensors for loc in located)

    # 3. Plan (the devices and their free memory come from torch). Nothing is read before
    # the plan is accepted: a refused plan costs no I/O.
    phases["plan"] = time.perf_counter() - tick
    gate.phase("importing torch")
    tick = time.perf_counter()
    import torch

    phases["import"] = time.perf_counter() - tick
    tick = time.perf_counter()
    offload_root = str(offload_folder) if offload_folder is not None else tempfile.gettempdir()
    created = _missing_folders(offload_root)
    try:
        try:
            os.makedirs(offload_root, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--offload-folder {offload_root}: {exc.strerror or exc}") from None
        return _load(root, contents, layout, located, tied, disk_writes, torch, strategy_or_map, limits, offload_root,
                     dtype, forward, progress, keep, phases, started, tick, gate, passed)
    finally:
        for folder in reversed(created):  # an offload folder load-test made is not left behind
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _missing_folders(path: str) -> list[str]:
    """``path`` and its parents that do not exist, outermost first."""
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.lexists(current) and os.path.dirname(current) != current:
        missing.append(current)
        current = os.path.dirname(current)
    return missing[::-1]


def _load(root: Path, contents: Any, layout: Layout | None, located: list[_Located], tied: list[list[str]],
          disk_writes: bool, torch: Any, strategy_or_map: str | dict[str, str], limits: dict[str, int],
          offload_root: str, dtype: str, forward: bool, progress: Callable[[int, int], None] | None, keep: bool,
          phases: dict[str, float], started: float, tick: float, gate: _Gate, passed: list[Finding]
          ) -> LoadResult:
    chosen = contents.folder.loaded_set
    try:
        caps = _capacities(torch, limits, offload_root, disk_writes)
    except OSError as exc:
        raise UsageError(f"--offload-folder {offload_root}: {exc.strerror or exc}") from None
    findings: list[Finding] = list(passed)
    for device in limits:
        if device not in caps:
            have = ", ".join(sorted(caps, key=device_sort_key))
            raise _Refused([finding("HFC732", f"--max-memory names {device}, which this machine does not have "
                                    f"(devices: {have})")], layout)
    items = [(loc.name, loc.out_nbytes) for loc in located]
    try:
        if isinstance(strategy_or_map, str):
            plan = plan_device_map(items, caps, strategy_or_map, tied)
        else:
            plan = plan_from_map(strategy_or_map, items, caps, tied)
            for key in unused_keys(strategy_or_map, [name for name, _ in items]):
                findings.append(finding("HFC738", f"device map key {key!r} matches no tensor", tensor=key))
    except PlanError as exc:
        raise _Refused([finding(exc.code, exc.message, tensor=exc.tensor)], layout) from None
    findings.extend(_plan_notes(plan, tied))
    findings.extend(finding("HFC745", note) for note in plan.notes)
    phases["plan"] += time.perf_counter() - tick
    gate.phase("loading")

    # 4-5. Load and verify, shard by shard; the source side of the checksums runs in a second
    # thread (numpy releases the GIL) ahead of the loader.
    tick = time.perf_counter()
    to_load = [loc for loc in located if plan.tensors[loc.name] != "meta"]
    try:
        offload_dir = tempfile.mkdtemp(prefix="hfconv-offload-", dir=offload_root) if disk_writes and \
            "disk" in plan.devices else None
    except OSError as exc:
        raise UsageError(f"--offload-folder {offload_root}: {exc.strerror or exc}") from None
    for device in plan.devices:
        if device.startswith("cuda:"):
            torch.cuda.reset_peak_memory_stats(device)
    records = {(shard, r.key): r for shard in (contents.shards_of(chosen) if chosen else ())
               if (wf := contents.weights.get(shard)) is not None and wf.format != "safetensors"
               for r in storage_records(wf) if r.crc32 is not None}
    roots = tuple(r for r in (root, contents.folder.blob_root) if r is not None)
    sources = _SourceChecksums(root, to_load, records, roots)
    try:
        loader = _Loader(root, plan, located, keep, offload_dir, progress, sources)
        loader.roots = roots
        try:
            loader.run()
            for device in plan.devices:
                if device.startswith("cuda:"):
                    torch.cuda.synchronize(device)
            corrupt = sources.crc_findings() if loader.errors < _MAX_LOAD_ERRORS else []
            phases["load"] = time.perf_counter() - tick
            stats = _device_stats(torch, plan, loader, disk_writes)
            findings.extend(corrupt)
            findings.extend(loader.findings)
            if not any(d.tensors for d in stats):
                on_meta = sum(1 for loc in located if plan.tensors.get(loc.name) == "meta")
                why = ((f"the device map puts all {on_meta} tensors on meta" if on_meta != 1
                        else "the device map puts its only tensor on meta") if on_meta
                       else "the folder holds no tensors to load")
                findings.append(finding("HFC743", f"nothing was loaded: {why}"))
        finally:
            loader.kept.clear()
            if offload_dir is not None:
                shutil.rmtree(offload_dir, ignore_errors=True)
    finally:
        sources.close()

    # 6. One forward pass on the same map.
    forward_result = None
    if forward:
        tick = time.perf_counter()
        if any(f.severity is Severity.ERROR for f in findings):
            findings.append(finding("HFC740", "--forward skipped: the weights did not load cleanly (see the errors)"))
        else:
            gate.phase("forward pass")
            forward_result, notes = _forward(root, contents.config or {}, plan, dtype, offload_root)
            findings.extend(notes)
        phases["forward"] = time.perf_counter() - tick
        if forward_result is not None:  # one duration: the phase's (building the model included)
            forward_result = replace(forward_result, seconds=phases["forward"])
    phases["total"] = time.perf_counter() - started
    status = _proc_status()
    return LoadResult(
        path=str(root), findings=tuple(findings), layout=layout, plan=plan, devices=stats, dtype=dtype,
        phases=phases, peak_rss=_peak_rss(), peak_anon=max(loader.peak_anon, status.get("RssAnon", 0)) or None,
        forward=forward_result, kept=keep)


def _plan_notes(plan: DevicePlan, tied: list[list[str]]) -> list[Finding]:
    notes: list[Finding] = []
    on_meta = [name for name, device in plan.tensors.items() if device == "meta"]
    if on_meta:
        noun = "tensor is" if len(on_meta) == 1 else "tensors are"
        notes.append(finding("HFC739", f"{len(on_meta)} {noun} mapped to meta and were not loaded (e.g. {on_meta[0]})",
                             tensor=on_meta[0]))
    for group in tied:
        first = plan.tensors.get(group[0])
        for name in group[1:]:
            if plan.tensors.get(name) != first:
                notes.append(finding("HFC737", f"{name} shares its storage with {group[0]} but is placed on "
                                     f"{plan.tensors.get(name)}, not {first}", tensor=name))
    return notes


def _device_stats(torch_mod: Any, plan: DevicePlan, loader: _Loader, disk_writes: bool) -> tuple[DeviceStats, ...]:
    stats: list[DeviceStats] = []
    for device in sorted(set(plan.tensors.values()) - {"meta"}, key=device_sort_key):
        tally = loader.tally.get(device, _DeviceTally())
        peak: int | None = tally.peak_held
        note = ""
        if device.startswith("cuda:"):
            peak = int(torch_mod.cuda.max_memory_allocated(device))
        elif device == "cpu":
            note = "each tensor read into one reused buffer"
        elif device == "disk":
            note = ("written to the offload folder, read back" if disk_writes
                    else "left in the safetensors shards, read back")
        stats.append(DeviceStats(device=device, tensors=tally.tensors, bytes=tally.bytes,
                                 planned_bytes=plan.bytes.get(device, 0), limit=plan.capacities.get(device),
                                 peak_bytes=peak, seconds=tally.seconds, note=note))
    return tuple(stats)


# --- --forward ---------------------------------------------------------------------------------

_SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."


def _forward(root: Path, config: Mapping[str, Any], plan: DevicePlan, dtype: str, offload_root: str
             ) -> tuple[ForwardResult | None, list[Finding]]:
    """Build the model with transformers on the plan's map and run one forward pass."""
    try:
        import accelerate  # noqa: F401 - from_pretrained(device_map=...) needs it
        import transformers
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "transformers"
        return None, [finding("HFC740", f"--forward skipped: {missing} is not installed "
                              "(pip install 'hfconv[transformers]'); the weights were loaded and verified")]
    import torch

    model_type = config.get("model_type")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        why = (f"model_type {model_type!r} is not built into transformers" if isinstance(model_type, str)
               else "config.json has no model_type")
        return None, [finding("HFC740", f"--forward skipped: {why} and hfconv never runs a folder's own code")]
    started = time.perf_counter()
    hf_map = {module: (int(device[5:]) if device.startswith("cuda:") else device)
              for module, device in plan.modules.items()}
    torch_dtype = {"keep": "auto", "float32": torch.float32, "float16": torch.float16,
                   "bfloat16": torch.bfloat16}[dtype]
    offload = tempfile.mkdtemp(prefix="hfconv-forward-", dir=offload_root)
    model = None
    captured: list[str] = []
    try:
        with _quiet_transformers(transformers, captured):
            model, model_class = _build_model(transformers, root, hf_map, torch_dtype, offload)
            ids, source = _sample_tokens(transformers, root, config)
            first = next((d for d in plan.modules.values() if d.startswith("cuda:")), "cpu")
            inputs = torch.tensor([ids], dtype=torch.long, device=first)
            with torch.no_grad():
                output = model(input_ids=inputs)
        logits = getattr(output, "logits", None)
        name = "logits"
        if logits is None:
            logits, name = (getattr(output, "last_hidden_state", None), "last_hidden_state")
        if logits is None:
            logits = output[0]
        finite_mask = torch.isfinite(logits)
        finite = bool(finite_mask.all().item())
        result = ForwardResult(output=name, shape=tuple(logits.shape), finite=finite, tokens=len(ids),
                               token_source=source, model_class=model_class,
                               seconds=time.perf_counter() - started)
        notes: list[Finding] = [finding("HFC746", message) for message in dict.fromkeys(captured)]
        if not finite:
            bad = int((~finite_mask).sum().item())
            notes.append(finding("HFC742", f"forward pass: {bad:,} of {logits.numel():,} {name} are NaN or infinite "
                                 f"(dtype {str(logits.dtype).removeprefix('torch.')})"))
        return result, notes
    except Exception as exc:  # noqa: BLE001 - any failure of the model is the finding
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, [finding("HFC741", f"forward pass failed: {type(exc).__name__}: {message[:500]}")]
    finally:
        del model
        gc.collect()
        shutil.rmtree(offload, ignore_errors=True)


class _Capture(logging_module.Handler):
    """Collects accelerate's log warnings (``Some parameters are on the meta device...``) for
    the report instead of letting Python's last-resort handler print them on stderr."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging_module.WARNING)
        self.into = into

    def emit(self, record: logging_module.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.into.append(f"{record.name.split('.')[0]}: {record.getMessage().strip()}"[:500])


@contextlib.contextmanager
def _quiet_transformers(transformers: Any, captured: list[str] | None = None):
    """transformers' log lines and progress bars off for the forward pass, restored after;
    accelerate's warnings go to ``captured`` (reported as HFC746), not to stderr."""
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    accelerate_log = logging_module.getLogger("accelerate")
    handler = _Capture(captured if captured is not None else [])
    propagate = accelerate_log.propagate
    accelerate_log.addHandler(handler)
    accelerate_log.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        accelerate_log.removeHandler(handler)
        accelerate_log.propagate = propagate
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _build_model(transformers: Any, root: Path, hf_map: dict, torch_dtype: Any, offload: str) -> tuple[Any, str]:
    kwargs = dict(device_map=hf_map, dtype=torch_dtype, offload_folder=offload, trust_remote_code=False)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(root), **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise
        model = transformers.AutoModel.from_pretrained(str(root), **kwargs)
    model.eval()
    return model, type(model).__name__


def _sample_tokens(transformers: Any, root: Path, config: Mapping[str, Any]) -> tuple[list[int], str]:
    """A few token ids from the folder's own tokenizer (first that works), else fixed ids."""
    with contextlib.suppress(Exception):
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(root), trust_remote_code=False)
        ids = list(tokenizer(_SAMPLE_TEXT)["input_ids"])[:32]
        if ids:
            return ids, "AutoTokenizer"
    if (root / "tokenizer.model").is_file():
        with contextlib.suppress(Exception):
            import sentencepiece

            processor = sentencepiece.SentencePieceProcessor(model_file=str(root / "tokenizer.model"))
            ids = processor.encode(_SAMPLE_TEXT)[:31]
            bos = processor.bos_id()
            if ids:
                return ([bos] if bos >= 0 else []) + ids, "tokenizer.model"
    if (root / "tokenizer.json").is_file():
        with contextlib.suppress(Exception):
            import tokenizers

            ids = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json")).encode(_SAMPLE_TEXT).ids[:32]
            if ids:
                return ids, "tokenizer.json"
    vocab = config.get("vocab_size")
    top = vocab if isinstance(vocab, int) and vocab > 1 else 2
    return [min(i, top - 1) for i in range(1, 9)], "fixed ids (no usable tokenizer)"
