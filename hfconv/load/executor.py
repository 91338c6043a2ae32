"""Steps 4 and 5 of load-test: execute the plan shard by shard, tensor by tensor, in file
order, and verify each tensor where it landed.

The checksum of the bytes on the device (by torch on a GPU; on the cpu by numpy, 2 MiB at a
time as they land) must equal the checksum of the bytes in the file (:mod:`.sources`, a second
thread), so a byte corrupted, lost or moved between disk and device is an error naming the
tensor; then its dtype and shape are checked against the header. ``disk`` tensors are written
to the offload folder (``.bin`` sources) or stay in their safetensors shard, and are read back
once.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import tensor_bytes
from ..dtypes import swap_unit
from ..findings import Finding, finding
from ..fsutil import open_inside
from ..tensors import FormatError
from . import transfer
from .checksum import Checksum, checksum_tensor, hex_digest
from .device_map import DevicePlan, device_sort_key
from .located import Located
from .probes import proc_status
from .results import DeviceStats
from .sources import SourceChecksums

__all__ = ["MAX_LOAD_ERRORS", "DeviceTally", "Loader", "check_loaded", "device_stats"]

MAX_LOAD_ERRORS = 20
"""The run stops after this many tensors failed to load (every tensor bad: not hundreds of lines)."""


@dataclass
class DeviceTally:
    """What one device has received so far."""

    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    held: int = 0
    peak_held: int = 0



def check_loaded(tensor: Any, flat: Any, loc: Located, device: str) -> Finding | None:
    """HFC736 when the bytes that arrived, or the tensor they became, are not what the header says."""
    from ..dtypes import TORCH_DTYPE, torch_dtype

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



class Loader:
    """Executes a plan: shard by shard, tensor by tensor; collects findings and tallies."""

    def __init__(self, root: Path, plan: DevicePlan, located: list[Located], keep: bool,
                 offload_dir: str | None, progress: Callable[[int, int], None] | None,
                 sources: SourceChecksums) -> None:
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
        self.tally: dict[str, DeviceTally] = {}
        self.kept: dict[str, Any] = {}
        self.loaded: dict[tuple[Any, ...], str] = {}
        """alias key + device -> the first tensor loaded from those bytes."""
        self.peak_anon = 0
        self.scratch = transfer.Scratch()
        unique = {(*loc.alias_key, plan.tensors[loc.name]): loc.nbytes for loc in located
                  if plan.tensors.get(loc.name) != "meta"}
        self.total = sum(unique.values())
        self.done = 0
        self.errors = 0

    def run(self) -> None:
        """Load every located tensor (stops after :data:`MAX_LOAD_ERRORS` failures)."""
        on_cpu = [loc.end - loc.begin if loc.stride is not None else loc.nbytes for loc in self.located
                  if self.plan.tensors.get(loc.name) == "cpu" or loc.stride is not None]
        if on_cpu:
            with contextlib.suppress(RuntimeError, MemoryError):  # else each tensor's load reports it
                self.scratch.host(max(on_cpu))  # one allocation, not one per larger tensor
        by_shard: dict[str, list[Located]] = {}
        for loc in self.located:
            by_shard.setdefault(loc.shard, []).append(loc)
        for shard, items in by_shard.items():
            if self.errors >= MAX_LOAD_ERRORS:
                break
            self._shard(shard, items)

    def _shard(self, shard: str, items: list[Located]) -> None:
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
                if self.errors >= MAX_LOAD_ERRORS:
                    self.findings.append(finding("HFC735", f"stopped after {self.errors} tensors failed to load",
                                                 file=shard))
                    return
                device = self.plan.tensors[loc.name]
                if device == "meta":
                    continue
                self._one(fd, loc, device)

    def _one(self, fd: int, loc: Located, device: str) -> None:
        started = time.perf_counter()
        tally = self.tally.setdefault(device, DeviceTally())
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
                flat, device_sum = transfer.to_device(fd, loc, device, self.scratch)
                if device_sum is None:
                    device_sum = checksum_tensor(flat)
                tensor = transfer.as_tensor(flat, loc)
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
                f"{hex_digest(device_sum)} != {hex_digest(expected)}", file=loc.shard, tensor=loc.name))
        problem = check_loaded(tensor, flat, loc, device) if device != "disk" else None
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
        self.peak_anon = max(self.peak_anon, proc_status().get("RssAnon", 0))
        self.done += loc.nbytes
        if self.progress is not None:
            self.progress(self.done, self.total)

    def _disk(self, fd: int, loc: Located) -> tuple[Checksum | None, Any, Any, int]:
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
        # 1. Write the offload file, in native (little-endian) byte order.
        name = hashlib.sha256(f"{loc.shard}\0{loc.name}".encode("utf-8", "surrogatepass")).hexdigest()
        target = os.path.join(self.offload_dir, f"{name}.dat")
        landed, swapped = self._write_offload(fd, loc, target)
        # 2. Read it back once, through a mapping of the written file (what an offload hook reads).
        checksum = _read_back(target, loc.nbytes)
        if checksum is None:
            return checksum_tensor(torch.empty(0, dtype=torch.uint8)), torch.empty(0), None, 0
        # 3. Swapped bytes prove the file; the bytes as they landed prove the source read.
        if loc.byteswap:
            if checksum != swapped:
                raise OSError("offload file read back differs from the bytes written")
            checksum = landed
        return checksum, torch.empty(loc.nbytes, dtype=torch.uint8, device="meta"), None, loc.nbytes

    def _write_offload(self, fd: int, loc: Located, target: str) -> tuple[Checksum | None, Checksum | None]:
        """Write ``target``: kernel-side from the file, or (a strided or big-endian view) from the
        bytes read onto the cpu. Returns the checksums of the bytes as they landed and as swapped
        (both None when copied)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        out = os.open(target, flags, 0o600)
        landed = swapped = None
        try:
            if loc.stride is None and not loc.byteswap:
                tensor_bytes.copy_range(fd, out, loc.begin, loc.nbytes)
                return None, None
            flat, landed = transfer.to_device(fd, loc, "cpu", self.scratch)
            if loc.byteswap:
                # accelerate's offload files hold native (little-endian) bytes: swap, and
                # prove the source read with the bytes as they landed, before the swap
                landed = landed or checksum_tensor(flat)
                flat = flat.reshape(-1, swap_unit(loc.meta.dtype)).flip(-1).reshape(-1)
                swapped = checksum_tensor(flat)
            tensor_bytes.write_all(out, memoryview(flat.numpy()))
        finally:
            os.close(out)
        return landed, swapped

    def _fail(self, loc: Located, device: str, message: str) -> None:
        self.errors += 1
        self.findings.append(finding("HFC735", f"{loc.name}: could not be loaded onto {device}: {message}",
                                     file=loc.shard, tensor=loc.name))


def device_stats(torch_mod: Any, plan: DevicePlan, loader: Loader, disk_writes: bool) -> tuple[DeviceStats, ...]:
    """What each device of the plan received, in device order (meta is not a device)."""
    stats: list[DeviceStats] = []
    for device in sorted(set(plan.tensors.values()) - {"meta"}, key=device_sort_key):
        tally = loader.tally.get(device, DeviceTally())
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


def _read_back(target: str, nbytes: int) -> Checksum | None:
    """The checksum of an offload file read through a mapping; None for an empty file.

    Raises:
        OSError: the file does not hold ``nbytes`` bytes.
    """
    import torch

    with open(target, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size != nbytes:
            raise OSError(f"offload file holds {size} bytes, expected {nbytes}")
        if size == 0:
            return None
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
    return checksum
