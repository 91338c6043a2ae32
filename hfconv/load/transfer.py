"""Reading a tensor's bytes onto its device: ``pread`` into a reused host buffer (cpu), or
through a 64 MiB staging buffer into a device allocation (cuda); then the bytes as the tensor.

The functions are looked up on this module when called (``transfer.read_exact(...)``), so a
test can replace one to inject a fault on the way to the device (``pread_full`` is
:func:`hfconv.tensor_bytes.pread_full`, named here for that).
"""

from __future__ import annotations

from typing import Any

from ..dtypes import swap_unit
from ..tensor_bytes import pread_full
from .checksum import CHUNK_BYTES, Checksum, RunningChecksum
from .located import Located

__all__ = ["STAGE_BYTES", "Scratch", "as_tensor", "pread_full", "read_exact", "to_device"]

STAGE_BYTES = 64 << 20
"""Host staging buffer for GPU transfers: bounds host memory per transfer."""


def read_exact(fd: int, buffer: memoryview, offset: int) -> None:
    """The device side's read (the source side reads with :func:`pread_full` directly)."""
    pread_full(fd, buffer, offset)


class Scratch:
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
            self._stage = torch.empty(STAGE_BYTES, dtype=torch.uint8, pin_memory=pin)
        return self._stage



def to_device(fd: int, loc: Located, device: str, scratch: Scratch) -> tuple[Any, Checksum | None]:
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

    from ..dtypes import torch_dtype

    if loc.stride is not None:
        span = scratch.host(loc.end - loc.begin)
        read_exact(fd, memoryview(span.numpy()), loc.begin)
        typed = span.view(torch_dtype(loc.meta.dtype))
        gathered = torch.as_strided(typed, loc.meta.shape, loc.stride).contiguous()
        flat = gathered.reshape(-1).view(torch.uint8)
        return (flat, None) if device == "cpu" else (flat.to(device), None)
    if device == "cpu":
        out = scratch.host(loc.nbytes)
        array = out.numpy()
        landed = RunningChecksum()
        for start in range(0, loc.nbytes, CHUNK_BYTES):
            chunk = array[start:start + CHUNK_BYTES]
            read_exact(fd, memoryview(chunk), loc.begin + start)
            landed.add(chunk)
        return out, landed.result()
    out = torch.empty(loc.nbytes, dtype=torch.uint8, device=device)
    stage = scratch.stage()
    view = memoryview(stage.numpy())
    done = 0
    while done < loc.nbytes:
        count = min(STAGE_BYTES, loc.nbytes - done)
        read_exact(fd, view[:count], loc.begin + done)
        out[done:done + count].copy_(stage[:count])  # not non_blocking: the buffer is reused next
        done += count
    return out, None


def as_tensor(flat: Any, loc: Located) -> Any:
    """The verified bytes as the tensor they are (cast when asked); raw bytes for sub-byte dtypes."""
    from ..dtypes import torch_dtype

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
