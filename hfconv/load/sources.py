"""The source side of every checksum: the tensor's bytes in the file, read again with
``pread`` and summed by numpy in a second thread, ahead of the loader; and the CRC-32 of
every ``.bin`` storage record a loaded tensor views.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from ..findings import Finding
from ..fsutil import open_inside
from ..tensor_bytes import StorageRecord, gather
from ..tensors import FormatError
from . import transfer
from .checksum import CHUNK_BYTES, Checksum, RunningChecksum, checksum_bytes
from .located import Located

__all__ = ["SourceChecksums", "source_checksum"]


def source_checksum(fd: int, loc: Located, buffer: Any, stop: threading.Event | None = None,
                    crc: list[int] | None = None) -> Checksum:
    """The checksum of the tensor's bytes in the file, in C order, read with ``pread``.

    With ``crc`` (a one-item list; only for a contiguous view that is its whole storage),
    the CRC-32 of the bytes is computed on the same chunks into ``crc[0]``.

    Contiguous ranges go through ``buffer`` (2 MiB, reused) and are summed while in the cache;
    a strided ``.bin`` view reads its storage span and gathers it first.
    """
    import numpy as np

    from ..dtypes import itemsize

    if loc.stride is None:
        total = RunningChecksum()
        for start in range(0, loc.nbytes, CHUNK_BYTES):
            if stop is not None and stop.is_set():
                raise CancelledError(f"{loc.name}: load-test stopped")
            chunk = buffer[:min(CHUNK_BYTES, loc.nbytes - start)]
            transfer.pread_full(fd, memoryview(chunk), loc.begin + start)
            if crc is not None:
                crc[0] = _crc32(chunk, crc[0])
            total.add(chunk)
        return total.result()
    span = np.empty(loc.end - loc.begin, dtype=np.uint8)
    transfer.pread_full(fd, memoryview(span.data), loc.begin)
    size = itemsize(loc.meta.dtype)
    kind = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[size]
    return checksum_bytes(gather(span, 0, loc.meta.shape, loc.stride, kind).view(np.uint8))


def _crc32(data: Any, value: int) -> int:
    from ..checks.deep import crc32

    return crc32(data, value)


def _record_crc(fd: int, record: StorageRecord, buffer: Any, stop: threading.Event, crc: list[int]) -> None:
    """The CRC-32 of a storage's whole record (a storage only partly viewed, or by a strided view)."""
    end = record.begin + record.nbytes
    value = 0
    for start in range(record.begin, end, CHUNK_BYTES):
        if stop is not None and stop.is_set():
            raise CancelledError(f"storage {record.key}: load-test stopped")
        chunk = buffer[:min(CHUNK_BYTES, end - start)]
        transfer.pread_full(fd, memoryview(chunk), start)
        value = _crc32(chunk, value)
    crc[0] = value


class SourceChecksums:
    """The source side of every checksum, computed ahead in one worker thread.

    Started once the plan is accepted (a refused plan reads nothing), so numpy sums the
    shards (read with ``pread`` through a 2 MiB buffer: no mapping, nothing added to the
    resident set) on the second core while the loader reads the same bytes onto their
    devices. Each storage range is summed once, however many tensors view it.
    """

    def __init__(self, root: Path, located: list[Located],
                 records: Mapping[tuple[str, str], StorageRecord] | None = None, roots: tuple[Path, ...] = ()) -> None:
        import numpy as np

        self._files: dict[str, IO[bytes]] = {}
        self._futures: dict[tuple[Any, ...], Future[Checksum]] = {}
        self._errors: dict[str, str] = {}
        self._crcs: list[tuple[str, StorageRecord, Future[Any], list[int]]] = []
        """(shard, storage record, the future that computes its CRC-32, where it lands)."""
        records = dict(records or {})
        self._buffer = np.empty(CHUNK_BYTES, dtype=np.uint8)  # only the worker thread uses it
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
                self._futures[loc.alias_key] = self._pool.submit(source_checksum, fd, loc, self._buffer, self._stop,
                                                                 crc if fused else None)
            if record is not None and crc is not None:
                future = self._futures[loc.alias_key] if fused else \
                    self._pool.submit(_record_crc, fd, record, self._buffer, self._stop, crc)
                self._crcs.append((loc.shard, record, future, crc))

    def result(self, loc: Located) -> Checksum:
        future = self._futures.get(loc.alias_key)
        if future is None:
            raise OSError(f"{loc.shard} could not be opened: {self._errors.get(loc.shard, 'unknown error')}")
        return future.result()

    def crc_findings(self) -> list[Finding]:
        """HFC901 for every storage whose bytes fail their recorded CRC-32 (waits for them)."""
        from ..checks.deep import crc_mismatch

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
