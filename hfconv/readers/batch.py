"""Many weight files' headers at once: the largest folders' in two processes.

A header is parsed in C, but under the GIL, so threads would not parse two at once. On Linux,
where a fork starts in a millisecond, a folder with tens of thousands of tensors has every other
safetensors file read by a forked child while this process reads the rest; the child sends each
file back as columns (names, dtypes, shapes, offsets) through a pipe with marshal, and this
process rebuilds the WeightFile it would have read itself.

The child only saves time. If it cannot start, fails, dies or sends anything unexpected, this
process reads its files too, one by one: the results are always those of reading every file
here, in the same order.
"""

from __future__ import annotations

import marshal
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any, NoReturn

from ..tensors import FormatError, ReaderNote, TensorMeta, WeightFile
from . import read_weight_file

__all__ = ["read_one", "read_weight_files"]

_FORK = sys.platform.startswith("linux") and hasattr(os, "fork")
_WORTH_A_CHILD_S = 0.05
"""Estimated reading time from which a child pays for its fork and the transfer (~10 ms)."""
_PER_FILE_S = 60e-6
_PER_TENSOR_S = 2.5e-6
"""What one file and one tensor take to read here (2 GHz core): the estimate behind the choice."""
_MIN_FILES = 4


def read_one(path: str | os.PathLike, shared_names: Mapping[str, str] | None = None) -> WeightFile | FormatError:
    """:func:`read_weight_file`, with any failure as the FormatError to report (never raises one)."""
    try:
        return read_weight_file(path, shared_names=shared_names)
    except FormatError as exc:
        return exc
    except (OSError, MemoryError, RecursionError, ValueError) as exc:
        # Readers raise FormatError by contract; anything else is a reader bug, still reported
        # as data so that one file never stops the run.
        return FormatError("HFC008", f"could not be read: {exc}")


def read_weight_files(paths: Sequence[str | os.PathLike], *, shared_names: Mapping[str, str] | None = None,
                      tensors: int = 0, child: bool | None = None) -> list[WeightFile | FormatError]:
    """:func:`read_one` for each path, in order.

    Args:
        paths: the weight files.
        shared_names: passed to each read (see read_safetensors).
        tensors: how many tensors the files hold in all, where an index says (0: unknown); with
            the number of files, it decides whether a child reads half of them.
        child: True or False to decide that here (tests); None: by the estimate.
    """
    # 1. The child's share: every other safetensors file, when worth it.
    theirs = _child_share(paths, tensors) if child is None else (_safetensors(paths)[1::2] if child else [])
    running = _Child.start([paths[i] for i in theirs], shared_names) if theirs else None
    if running is None:
        theirs = []
    # 2. The rest here, meanwhile.
    results: list[WeightFile | FormatError | None] = [None] * len(paths)
    taken = set(theirs)
    for i, path in enumerate(paths):
        if i not in taken:
            results[i] = read_one(path, shared_names)
    # 3. The child's files: what it sent, else read here.
    sent = running.collect(shared_names) if running is not None else None
    for k, i in enumerate(theirs):
        got = sent[k] if sent is not None else None
        results[i] = got if got is not None else read_one(paths[i], shared_names)
    return [r for r in results if r is not None]


def _safetensors(paths: Sequence[str | os.PathLike]) -> list[int]:
    return [i for i, path in enumerate(paths) if os.fspath(path).endswith(".safetensors")]


def _child_share(paths: Sequence[str | os.PathLike], tensors: int) -> list[int]:
    """The indices of the files a child should read: every other safetensors file, where a fork is
    possible and safe (Linux, this process has no other thread) and the reading long enough."""
    if not _FORK or threading.active_count() > 1:
        return []
    candidates = _safetensors(paths)
    estimate = len(paths) * _PER_FILE_S + tensors * _PER_TENSOR_S
    if len(candidates) < _MIN_FILES or estimate < _WORTH_A_CHILD_S:
        return []
    return candidates[1::2]


_DTYPE, _SHAPE, _OFFSETS = attrgetter("dtype"), attrgetter("shape"), attrgetter("data_offsets")
_TAKE_HERE = (2,)
"""What the child sends for a file it read into something columns do not carry (a torch checkpoint's
storages): this process reads that file itself."""


def _encode(result: WeightFile | FormatError) -> tuple[Any, ...]:
    """One read as plain values marshal carries: an error's fields, or a safetensors file's columns."""
    if isinstance(result, FormatError):
        return (0, result.code, result.message, result.tensor)
    metas = result.tensors.values()
    if result.format != "safetensors" or result.storages or \
            any(m.storage_key is not None or m.storage_offset or m.stride is not None for m in metas):
        return _TAKE_HERE
    return (1, result.path, list(result.tensors), list(map(_DTYPE, metas)), list(map(_SHAPE, metas)),
            list(map(_OFFSETS, metas)), result.metadata, [(n.code, n.message, n.tensor) for n in result.notes],
            result.header_nbytes, result.byte_order, result.totals)


def _decode(item: tuple[Any, ...], shared_names: Mapping[str, str] | None) -> WeightFile | FormatError | None:
    """:func:`_encode` undone (None: read this file here)."""
    if item[0] == 0:
        return FormatError(item[1], item[2], item[3])
    if item[0] != 1:
        return None
    _, path, names, dtypes, shapes, offsets, metadata, notes, header_nbytes, byte_order, totals = item
    if shared_names is not None:
        names = list(map(shared_names.get, names, names))
    rows = zip(names, dtypes, shapes, offsets, repeat(None), repeat(0), repeat(None))
    return WeightFile(path=path, format="safetensors",
                      tensors=dict(zip(names, map(tuple.__new__, repeat(TensorMeta), rows))),
                      metadata=metadata, notes=tuple(ReaderNote(*note) for note in notes),
                      header_nbytes=header_nbytes, byte_order=byte_order,
                      totals=tuple(totals) if totals is not None else None)


class _Child:
    """A forked child reading some files; :meth:`collect` gets what it sent."""

    def __init__(self, pid: int, read_fd: int, count: int):
        self.pid, self.read_fd, self.count = pid, read_fd, count

    @classmethod
    def start(cls, paths: list[str | os.PathLike], shared_names: Mapping[str, str] | None) -> _Child | None:
        """The child, reading ``paths``; None when it cannot start (this process reads them)."""
        try:
            read_fd, write_fd = os.pipe()
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:  # no process left (RLIMIT_NPROC), no memory
            os.close(read_fd)
            os.close(write_fd)
            return None
        if pid == 0:
            os.close(read_fd)
            _child_main(paths, shared_names, write_fd)
        os.close(write_fd)
        return cls(pid, read_fd, len(paths))

    def collect(self, shared_names: Mapping[str, str] | None) -> list[WeightFile | FormatError | None] | None:
        """What the child read, in its order (None for a file to read here); None when it failed
        in any way."""
        chunks: list[bytes] = []
        status = None
        try:
            while chunk := os.read(self.read_fd, 1 << 20):
                chunks.append(chunk)
            status = os.waitpid(self.pid, 0)[1]
        finally:
            os.close(self.read_fd)
            if status is None:  # interrupted here: the child must not outlive this process
                _kill(self.pid)
        if status != 0:
            return None
        try:
            decoded = [_decode(item, shared_names) for item in marshal.loads(b"".join(chunks))]
        except (ValueError, EOFError, TypeError, IndexError):
            return None
        return decoded if len(decoded) == self.count else None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass


def _child_main(paths: list[str | os.PathLike], shared_names: Mapping[str, str] | None, write_fd: int) -> NoReturn:
    """In the forked child: read, send, and leave through os._exit (none of the parent's clean-up,
    atexit handlers or buffered output runs here)."""
    status = 70
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # not the CLI's handlers: the parent cleans up
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        data = marshal.dumps([_encode(read_one(path, shared_names)) for path in paths])
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
        status = 0
    except BaseException:  # noqa: BLE001 - the child only reports through the pipe and its status
        pass
    finally:
        os._exit(status)
