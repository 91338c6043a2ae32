"""Writing one output shard: header, then every tensor's bytes out of its source file.

Copied tensors go file to file (:func:`hfconv.tensor_bytes.copy_range`); numpy gathers
strided views and swaps big-endian bytes; torch, imported only then, casts. At most one
transformed tensor is in memory per process (:data:`TRANSFORM_LOCK`). Transformed tensors
are read with ``pread`` (:func:`hfconv.tensor_bytes.pread_full`), never through a memory map:
a source truncated while it is read is an HFC701 naming the tensor, not a SIGBUS.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..dtypes import itemsize, swap_unit
from ..findings import Finding, finding
from ..fsutil import open_inside
from ..tensor_bytes import SourceEnded, copy_range, gather, pread_full, write_all
from ..tensors import FormatError
from .errors import ConversionError, write_failure
from .plan import PlannedTensor, ShardPlan

__all__ = ["TRANSFORM_LOCK", "Sources", "ShardTask", "ShardOutcome", "Batch", "copy_source", "read_source",
           "transformed_bytes", "release", "write_tensor", "write_shard", "Writeback"]


_WRITEBACK_CHUNK = 64 << 20
"""Bytes written between two requests to start writeback (see Writeback)."""


_VERIFY_BATCH = 64 << 20
"""Bytes written before they are handed to the verifying thread."""


TRANSFORM_LOCK = threading.Lock()
"""Held while a transformed (cast/reordered) tensor is in memory, by the writer or the
verifier thread, so that at most one such tensor exists at a time per process."""


def copy_source(src_fd: int, dst_fd: int, offset: int, count: int, progress: Callable[[int], None],
                tensor: PlannedTensor | None = None) -> None:
    """:func:`~hfconv.tensor_bytes.copy_range`, a source cut short as HFC701 (naming ``tensor`` and
    its file, as every other read of a tensor does, when it is one)."""
    try:
        copy_range(src_fd, dst_fd, offset, count, progress)
    except SourceEnded as exc:
        if tensor is not None:
            raise _read_failure(tensor, f"file ended {exc.missing} bytes early") from None
        raise ConversionError("HFC701", f"source file ended {exc.missing} bytes early (was it truncated "
                                        "during the conversion?)") from None


class Sources:
    """Source files opened read-only once per shard writer (memory-mapped only for the gather of
    a sparse strided view).

    Each is opened once, by :func:`hfconv.fsutil.open_inside`: a regular file inside one of
    ``roots`` (SRC, or the Hub cache's blobs), never a symlink followed out of them.
    """

    def __init__(self, roots: tuple[str, ...] = ()) -> None:
        self._open: dict[str, tuple[Any, mmap.mmap | None]] = {}
        self._roots = roots

    def fd(self, path: str) -> int:
        return self._get(path)[0].fileno()

    def map(self, path: str) -> mmap.mmap:
        handle, mapped = self._get(path)
        if mapped is None:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._open[path] = (handle, mapped)
        return mapped

    def _get(self, path: str) -> tuple[Any, mmap.mmap | None]:
        entry = self._open.get(path)
        if entry is None:
            try:
                handle = open_inside(path, self._roots or (os.path.dirname(path),))
            except FormatError as exc:
                name = os.path.basename(path)
                raise ConversionError("HFC715", f"{name} changed during the conversion: {exc.message}") from None
            entry = self._open[path] = (handle, None)
        return entry

    def close(self) -> None:
        for handle, mapped in self._open.values():
            if mapped is not None:
                try:
                    mapped.close()
                except BufferError:  # an array still views it; the GC unmaps it later
                    pass
            handle.close()
        self._open.clear()


_INT_FOR_SIZE = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}
_CAST_ELEMENTS = 32768
"""Elements read (pread) and cast per step of a contiguous cast: the buffer stays in the CPU's cache,
and torch casts that few on the calling thread (its parallel grain size is 32768 elements). Larger
steps were measured slower: each one a parallel region whose threads must all be scheduled."""


_SPARSE_SPAN = 64 << 20
"""Bytes a strided view's span may exceed twice its own size by and still be read whole
(:func:`_source_array`); a sparser view is gathered from the mapped file."""


def read_source(tensor: PlannedTensor, sources: Sources, buffer: memoryview, offset: int) -> None:
    """Fill ``buffer`` from the tensor's source file at ``offset``; a short or failed read is an
    HFC701 naming the tensor and its source file."""
    try:
        pread_full(sources.fd(tensor.source_path), buffer, offset)
    except OSError as exc:
        raise _read_failure(tensor, str(exc)) from None


def _read_failure(tensor: PlannedTensor, why: str) -> ConversionError:
    message = f"{tensor.name}: reading {tensor.source_file} failed: {why} (was it truncated during the conversion?)"
    named = finding("HFC701", message, file=tensor.source_file, tensor=tensor.name)
    return ConversionError("HFC701", message, (named,))


def _source_array(tensor: PlannedTensor, sources: Sources) -> Any:
    """The tensor's source elements as a new C-ordered numpy integer array (no dtype meaning),
    aligned (torch wants that), in this machine's (little-endian) byte order.

    A contiguous tensor is read (``pread``) into the new array, swapped in place where
    big-endian. A strided view (a transposed weight) is gathered
    (:func:`hfconv.tensor_bytes.gather`) from its span, read (``pread``) first: a source file
    cut during the conversion is then an HFC701, where a read through a mapping of it would end
    the process with SIGBUS (no message, the temporary folder left behind). Only a view whose span
    is far larger than itself (a few elements of a huge storage, :data:`_SPARSE_SPAN`) is
    gathered from the mapped file, so that memory stays bounded by the tensor's size.
    """
    import numpy as np

    size = itemsize(tensor.source_dtype)
    int_dtype = np.dtype(_INT_FOR_SIZE[size])
    span = tensor.span_end - tensor.offset
    if tensor.stride is None:
        flat = np.empty(span // size, dtype=int_dtype)
        read_source(tensor, sources, flat.view(np.uint8).data, tensor.offset)
    elif span <= 2 * tensor.nbytes + _SPARSE_SPAN:
        raw = np.empty(span, dtype=np.uint8)
        read_source(tensor, sources, raw.data, tensor.offset)
        flat = gather(raw, 0, tensor.shape, tensor.stride, int_dtype)
        del raw
    else:
        file_size = os.fstat(sources.fd(tensor.source_path)).st_size
        if file_size < tensor.span_end:
            raise _read_failure(tensor, f"file ended {tensor.span_end - file_size} bytes early")
        mapped = sources.map(tensor.source_path)
        raw = np.frombuffer(mapped, dtype=np.uint8, count=span, offset=tensor.offset)
        flat = gather(raw, 0, tensor.shape, tensor.stride, int_dtype)
        del raw
        release(mapped, tensor.offset, span)
    if tensor.byteswap:
        flat.view(_INT_FOR_SIZE[swap_unit(tensor.source_dtype)]).byteswap(inplace=True)
    return flat


def transformed_bytes(tensor: PlannedTensor, sources: Sources) -> Any:
    """The output bytes of a ``reorder`` or ``cast`` tensor, as a uint8 numpy array.

    A contiguous little-endian cast is read and cast a chunk at a time into the output; other
    tensors are read whole first (:func:`_source_array`).
    """
    import numpy as np

    if tensor.action == "reorder":
        return _source_array(tensor, sources).view(np.uint8)
    import torch

    from ..dtypes import torch_dtype

    out = torch.empty(tensor.numel, dtype=torch_dtype(tensor.dtype))
    source_dtype = torch_dtype(tensor.source_dtype)
    if tensor.stride is None and not tensor.byteswap:
        size = itemsize(tensor.source_dtype)
        buffer = np.empty(min(_CAST_ELEMENTS, tensor.numel) * size, dtype=np.uint8)
        whole = torch.from_numpy(buffer).view(source_dtype)
        fd, view, position = sources.fd(tensor.source_path), buffer.data, tensor.offset
        for target in out.split(_CAST_ELEMENTS):  # views made in one call; the source's is the buffer's
            count = len(target) * size
            if count == len(buffer):
                try:
                    short = os.preadv(fd, [view], position) != count  # one call reads it all, as a rule
                except OSError:
                    short = True
                if short:  # read again, to the end or to the error (an HFC701 naming the tensor)
                    read_source(tensor, sources, view, position)
                target.copy_(whole)
            else:  # the last, shorter step
                read_source(tensor, sources, view[:count], position)
                target.copy_(whole[:len(target)])
            position += count
    else:
        array = _source_array(tensor, sources)
        out.copy_(torch.from_numpy(array).view(source_dtype))
        del array
    return out.view(torch.uint8).numpy()


def release(mapped: mmap.mmap | None, start: int, length: int) -> None:
    """Drop a read range of a file mapping from this process's resident set.

    The pages stay in the page cache; only our page-table entries go, so the RSS of a
    verification stays at a window's size instead of growing to both files' sizes.
    """
    if mapped is None or length <= 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    begin = start - start % mmap.PAGESIZE
    end = min(start + length, len(mapped))
    if end > begin:
        try:
            mapped.madvise(mmap.MADV_DONTNEED, begin, end - begin)
        except (OSError, ValueError):  # advisory only
            pass


@dataclass(frozen=True)
class ShardTask:
    shard: ShardPlan
    path: str
    verify: bool
    digest: bool
    durable: bool = False
    """fsync the shard once written (``--fsync``)."""
    roots: tuple[str, ...] = ()
    """Where source files may be read from (SRC and, in a Hub cache, its blobs)."""


@dataclass(frozen=True)
class ShardOutcome:
    name: str
    file_nbytes: int
    digests: Mapping[str, str]
    mismatches: tuple[tuple[str, str], ...]
    """(tensor, why) for every tensor that failed verification ("" for the header)."""
    corrupt: tuple[Finding, ...] = ()
    """HFC901 for every source storage whose bytes fail their recorded CRC-32."""


Batch = list[tuple[PlannedTensor, int]]
"""Tensors just written, each with its absolute offset in the output file."""


def write_tensor(fd: int, tensor: PlannedTensor, sources: Sources, progress: Callable[[int], None]) -> None:
    """Append one tensor's output bytes to ``fd``."""
    if tensor.nbytes == 0:
        return
    if tensor.action == "copy":
        copy_source(sources.fd(tensor.source_path), fd, tensor.offset, tensor.nbytes, progress, tensor)
        return
    with TRANSFORM_LOCK:
        data = transformed_bytes(tensor, sources)
        if len(data) != tensor.nbytes:  # pragma: no cover - a transform bug, caught loudly
            raise ConversionError("HFC701", f"{tensor.name}: produced {len(data)} bytes, expected {tensor.nbytes}")
        write_all(fd, data)
        del data
    progress(tensor.nbytes)


def write_shard(task: ShardTask, progress: Callable[[int], None],
                 writeback: Callable[[str, int, int], None] | None = None,
                 written: Callable[[Batch], None] | None = None) -> None:
    """Write one shard file: header, then the tensors in order.

    Args:
        task: the shard and where to write it.
        progress: called with the bytes of each chunk written.
        writeback: told ``(path, offset, nbytes)`` about every ~64 MiB written, so the disk
            can start on it at once (see :class:`Writeback`).
        written: handed each batch of ~64 MiB of tensors once their bytes are in the file,
            so they can be verified while the next ones are written.
    """
    shard = task.shard
    header = shard.header
    expected_size = len(header) + shard.data_nbytes
    sources = Sources(task.roots)
    try:
        try:
            fd = os.open(task.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise write_failure(exc, f"creating {shard.name}") from None
        try:
            write_all(fd, header)
            position = flushed = len(header)
            batch: Batch = []
            batch_bytes = 0
            for tensor in shard.tensors:
                write_tensor(fd, tensor, sources, progress)
                batch.append((tensor, position))
                position += tensor.nbytes
                batch_bytes += tensor.nbytes
                if writeback is not None and position - flushed >= _WRITEBACK_CHUNK:
                    writeback(task.path, flushed, position - flushed)
                    flushed = position
                if written is not None and batch_bytes >= _VERIFY_BATCH:
                    written(batch)
                    batch, batch_bytes = [], 0
            actual = os.lseek(fd, 0, os.SEEK_CUR)
            if actual != expected_size:
                raise ConversionError("HFC701", f"{shard.name}: wrote {actual} bytes, planned {expected_size}")
            if writeback is not None:
                writeback(task.path, flushed, position - flushed)
            if written is not None and batch:
                written(batch)
        except OSError as exc:
            raise write_failure(exc, f"writing {shard.name}") from None
        finally:
            os.close(fd)
    finally:
        sources.close()


_sync_file_range: Any = None


class Writeback:
    """Starts disk writeback of freshly written ranges on a helper thread.

    Without it the final fsync of a shard waits for the whole shard to reach the disk; with
    it the disk works while the next tensors are copied and verified, and fsync only waits
    for the tail. ``sync_file_range`` may block while the device queue is full, hence the
    thread: the writer never waits for it. The pages stay in the page cache.
    """

    def __init__(self) -> None:
        import queue

        self._queue: Any = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hfconv-writeback", daemon=True)
        self._thread.start()

    def request(self, path: str, offset: int, nbytes: int) -> None:
        self._queue.put((path, offset, nbytes))

    def __enter__(self) -> Writeback:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        path, fd = None, -1
        try:
            while (item := self._queue.get()) is not None:
                if item[0] != path:
                    if fd >= 0:
                        os.close(fd)
                    path, fd = item[0], -1
                    with contextlib.suppress(OSError):
                        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                if fd >= 0:
                    _start_writeback(fd, item[1], item[2])
        finally:
            if fd >= 0:
                os.close(fd)


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a range of a file to disk, without waiting for it (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``); a no-op where the call is unavailable."""
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        try:
            import ctypes

            function = ctypes.CDLL(None, use_errno=True).sync_file_range
            function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            function.restype = ctypes.c_int
            _sync_file_range = function
        except (OSError, AttributeError):
            pass
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; failure is harmless
