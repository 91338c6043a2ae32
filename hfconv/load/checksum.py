"""The positional checksum load-test proves every byte with, on the source (numpy) and on
the device (numpy on cpu, torch elsewhere).

The checksum treats the tensor's bytes, zero-padded to a multiple of 4 KiB, as rows of 512
little-endian 64-bit words and returns three sums modulo 2**64: all words, column sums
weighted by column (1..512), row sums weighted by row (1..R). A changed word changes the
first; two different words swapped change the second (different columns) or the third
(different rows), unless they differ only in their top byte and their column and row distances
are both divisible by a high enough power of two (the weights multiply the difference modulo
2**64). It runs at memory speed on cpu and GPU without widening the data (a byte-wise weighted
sum would need an int64 copy of the tensor).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHUNK_BYTES", "Checksum", "RunningChecksum", "checksum_bytes", "checksum_tensor", "checksum_torch",
           "hex_digest"]

Checksum = tuple[int, int, int]
"""``(sum of words, column-weighted sum, row-weighted sum)``, each modulo 2**64."""

_ROW_WORDS = 512
_ROW_BYTES = _ROW_WORDS * 8
_MASK = (1 << 64) - 1
CHUNK_BYTES = 2 << 20
"""cpu reads and checksums go by 2 MiB: a chunk is summed while it is in the cache."""


def checksum_bytes(data: Any) -> Checksum:
    """The positional checksum of a byte string, computed with numpy (the source side).

    Args:
        data: a buffer or a 1-D uint8 numpy array (a memory-mapped range is read in place).

    Returns:
        ``(sum of words, column-weighted sum, row-weighted sum)``, each modulo 2**64.
    """
    import numpy as np

    array = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    total = RunningChecksum()
    for start in range(0, array.size, CHUNK_BYTES):
        total.add(array[start:start + CHUNK_BYTES])
    return total.result()


class RunningChecksum:
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

    def result(self) -> Checksum:
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


def checksum_tensor(flat: Any) -> Checksum:
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
    return checksum_torch(flat)


def checksum_torch(flat: Any) -> Checksum:
    """:func:`checksum_tensor` in torch, for accelerators (it runs on cpu tensors too)."""
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


def hex_digest(checksum: Checksum) -> str:
    """The first 24 hex digits of a checksum, for messages."""
    return "".join(f"{v:016x}" for v in checksum)[:24]
