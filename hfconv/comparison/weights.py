"""The tensor half of ``diff``: pair the names of two folders and stream both byte ranges once.

Each tensor is read 1 MiB at a time with ``pread`` into two reused buffers and compared at
memcmp speed; only a chunk that differs is decoded (numpy, float32 for the floating dtypes of
32 bits or fewer) for its maximum and relative L2 difference. Nothing is memory-mapped: a file
truncated while it is compared (a download, a sync) ends a read early -- an HFC960 finding
naming the file and tensor -- where a mapping would kill the process with SIGBUS. A ``.bin`` tensor is
its view's bytes inside its storage (a strided view is gathered, bounded by that one tensor; a
big-endian checkpoint is swapped), so a ``.bin`` folder compares with its safetensors
conversion byte for byte. Neither folder is written; no torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..contents import FolderContents
from ..dtypes import FLOAT_DTYPES, SAFETENSORS_BITS, itemsize, swap_unit
from ..findings import Finding, finding
from ..fsutil import open_inside
from ..tensor_bytes import LocateError, file_order, gather, locate, pread_full
from ..tensors import FormatError, TensorMeta, WeightFile
from .decode import DECODABLE, as_number, can_cast, cast_bytes
from .results import TensorDiff

__all__ = ["Side", "read_side", "compare_weights"]

CHUNK_BYTES = 1 << 20
"""Bytes per read of each side (a multiple of every item size). Small enough that both chunks
are still in the CPU cache when compared (1 MiB: 2.5x faster than 16 MiB, measured)."""

Progress = Callable[[int, int], None]


@dataclass
class Side:
    """One folder as ``diff`` reads it: the tensors of the weights loaders pick."""

    label: str
    """``A`` or ``B`` (messages)."""
    contents: FolderContents
    tensors: dict[str, TensorMeta] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    """Tensor name -> the weight file holding it."""
    aliases: dict[str, str] = field(default_factory=dict)
    """A ``.bin`` tensor that is the same view of the same storage as an earlier one -> that one."""
    findings: list[Finding] = field(default_factory=list)

    @property
    def format(self) -> str:
        return self.contents.folder.weight_format

    def weight_file(self, name: str) -> WeightFile:
        return self.contents.weights[self.files[name]]


def read_side(label: str, contents: FolderContents) -> Side:
    """The tensors of ``contents``' loaded weight set, with an HFC960 finding for each of its
    files that could not be read."""
    side = Side(label, contents)
    chosen = contents.folder.loaded_set
    if chosen is None:
        side.findings.append(finding("HFC960", f"{label}: holds no weight files (model.safetensors, "
                                               "pytorch_model.bin or their shards); no tensors to compare"))
        return side
    for shard in contents.shards_of(chosen):
        weight_file = contents.weights.get(shard)
        if weight_file is None:
            error = contents.weight_errors.get(shard)
            why = f"could not be read ({error.code}: {error.message})" if error is not None else \
                "is named by the index but missing" if not contents.folder.has(shard) else "was not read"
            side.findings.append(finding("HFC960", f"{label}: {shard} {why}; its tensors were not compared",
                                         file=shard))
            continue
        seen: dict[tuple[Any, ...], str] = {}
        for meta in file_order(weight_file):
            if meta.name in side.tensors:
                continue
            side.tensors[meta.name] = meta
            side.files[meta.name] = shard
            if meta.storage_key is not None:
                key = (meta.storage_key, meta.storage_offset, meta.stride, meta.shape, meta.dtype)
                if key in seen:
                    side.aliases[meta.name] = seen[key]
                else:
                    seen[key] = meta.name
    return side


class _Files:
    """Weight files opened once each (inside the folder, never through a symlink out of it)."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.open: dict[str, Any] = {}
        folder = side.contents.folder
        self.roots = tuple(str(r) for r in (folder.root, folder.blob_root) if r is not None)

    def fd(self, name: str) -> tuple[int, int]:
        """``(descriptor, size)`` of weight file ``name``."""
        handle = self.open.get(name)
        if handle is None:
            handle = open_inside(self.side.contents.folder.path(name), self.roots)
            self.open[name] = handle
        fd = handle.fileno()
        return fd, os.fstat(fd).st_size

    def close(self) -> None:
        for handle in self.open.values():
            handle.close()
        self.open.clear()


class _ReadFailed(Exception):
    """Reading one side's bytes of a tensor failed: which side, which file, why."""

    def __init__(self, side: Side, file: str, message: str) -> None:
        super().__init__(message)
        self.side = side
        self.file = file
        self.message = message


class _Elements:
    """One tensor's elements, native little-endian and in row-major order, read a range at a time."""

    def __init__(self, files: _Files, side: Side, name: str) -> None:
        self.side, self.file = side, side.files[name]
        try:
            self._locate(files, side, name)
        except (OSError, FormatError, LocateError) as exc:
            raise _ReadFailed(side, self.file, getattr(exc, "message", None) or str(exc)) from None

    def _locate(self, files: _Files, side: Side, name: str) -> None:
        import numpy as np

        meta = side.tensors[name]
        weight_file = side.weight_file(name)
        fd, size = files.fd(side.files[name])
        span = locate(meta, weight_file, size)
        self.fd = fd
        self.offset = span.begin
        self.unit = itemsize(meta.dtype) if SAFETENSORS_BITS[meta.dtype] % 8 == 0 else 1
        self.count = meta.numel if SAFETENSORS_BITS[meta.dtype] % 8 == 0 else meta.nbytes
        self.whole: memoryview | None = None
        """A gathered (strided) or swapped (big-endian) tensor, in memory; else None: read by chunks."""
        self.read_bytes = span.end - span.begin
        if span.stride is not None or span.byteswap:
            raw = bytearray(span.end - span.begin)
            pread_full(fd, memoryview(raw), span.begin)
            values: Any = np.frombuffer(raw, dtype=np.uint8)
            if span.stride is not None:
                values = gather(raw, 0, meta.shape, span.stride, f"V{self.unit}").view(np.uint8)
            if span.byteswap:
                swap = swap_unit(meta.dtype)
                values = values.reshape(-1, swap)[:, ::-1].reshape(-1)
            self.whole = memoryview(np.ascontiguousarray(values).tobytes())

    def read(self, start: int, count: int, buffer: memoryview) -> memoryview:
        """Elements ``start`` .. ``start + count`` as bytes (in ``buffer`` unless already in memory)."""
        begin, nbytes = start * self.unit, count * self.unit
        if self.whole is not None:
            return self.whole[begin:begin + nbytes]
        view = buffer[:nbytes]
        try:
            pread_full(self.fd, view, self.offset + begin)
        except OSError as exc:
            raise _ReadFailed(self.side, self.file, exc.strerror or str(exc)) from None
        return view


def _equal(a: memoryview, b: memoryview) -> bool:
    """Byte equality at memcmp speed: two whole buffers as bytearrays (memcmp), else numpy."""
    import numpy as np

    if len(a) != len(b):
        return False
    whole_a, whole_b = a.obj, b.obj
    if isinstance(whole_a, bytearray) and isinstance(whole_b, bytearray) and len(whole_a) == len(a) \
            and len(whole_b) == len(b):
        return whole_a == whole_b
    if len(a) % 8 == 0:
        return bool(np.array_equal(np.frombuffer(a, dtype=np.uint64), np.frombuffer(b, dtype=np.uint64)))
    return bool(np.array_equal(np.frombuffer(a, dtype=np.uint8), np.frombuffer(b, dtype=np.uint8)))


class _Stats:
    """Max absolute and relative L2 difference of two value streams, fed a chunk at a time."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.diff_sq = 0.0
        self.a_sq = 0.0
        self.differing = 0

    def add(self, a: Any, b: Any) -> None:
        """One chunk of both sides' values (float32 or float64 arrays of one length). Sums of
        squares by ``np.sum``, not ``np.dot``: BLAS threads spin on a busy machine (measured 20x
        slower on 2 shared cores)."""
        import numpy as np

        with np.errstate(over="ignore", invalid="ignore"):
            delta = a - b
            size = np.abs(delta)
            top = size.max() if len(size) else 0.0
            if not np.isfinite(top):  # NaN or inf somewhere: the same NaN (or inf) on both sides is equal
                a, b = a.astype(np.float64), b.astype(np.float64)
                same = (np.isnan(a) & np.isnan(b)) | (a == b)
                delta = np.where(same, 0.0, a - b)
                if np.isnan(delta).any():  # a NaN on one side only
                    self.max_abs = float("nan")
                if np.isinf(delta).any():  # an inf against a finite value: an infinite difference
                    top = float("inf")
                    self.diff_sq = float("inf")
                delta = np.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0)
                a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
                if top != float("inf"):
                    size = np.abs(delta)
                    top = size.max() if len(size) else 0.0
            if self.max_abs == self.max_abs:  # not NaN already
                self.max_abs = max(self.max_abs, float(top))
            self.differing += int(np.count_nonzero(delta))
            self.diff_sq += _sum_of_squares(delta)
            self.a_sq += _sum_of_squares(a)

    def add_norm(self, a: Any) -> None:
        import numpy as np

        with np.errstate(over="ignore", invalid="ignore"):
            if not np.isfinite(a).all():
                a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            self.a_sq += _sum_of_squares(a)

    @property
    def rel_l2(self) -> float:
        if self.a_sq == 0.0:
            return 0.0 if self.diff_sq == 0.0 else float("inf")
        return (self.diff_sq ** 0.5) / (self.a_sq ** 0.5)


def _sum_of_squares(values: Any) -> float:
    """Sum of squares of finite values; float32 squares that overflow are summed again in float64."""
    import numpy as np

    total = float(np.sum(np.square(values)))
    if total == float("inf") and values.dtype != np.float64:
        total = float(np.sum(np.square(values.astype(np.float64))))
    return total


def _differing(a: memoryview, b: memoryview, unit: int) -> int:
    import numpy as np

    kind = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(unit)
    if kind is None:
        return int(np.count_nonzero(np.frombuffer(a, dtype=np.uint8) != np.frombuffer(b, dtype=np.uint8)))
    return int(np.count_nonzero(np.frombuffer(a, dtype=kind) != np.frombuffer(b, dtype=kind)))


def compare_weights(a: Side, b: Side, headers_only: bool, progress: Progress | None = None
                    ) -> tuple[list[TensorDiff], list[Finding], int]:
    """Every tensor name of either side, compared; the read errors (HFC960); bytes read."""
    rows: list[TensorDiff] = []
    findings: list[Finding] = []
    both = [name for name in a.tensors if name in b.tensors]
    to_read = 0 if headers_only else sum(a.tensors[n].nbytes + b.tensors[n].nbytes for n in both
                                         if a.tensors[n].shape == b.tensors[n].shape
                                         and (a.aliases.get(n) is None or a.aliases.get(n) != b.aliases.get(n)))
    done = [0]

    def advance(count: int) -> None:
        done[0] += count
        if progress is not None:
            progress(done[0], to_read)

    if progress is not None:
        progress(0, to_read)
    compared: dict[str, TensorDiff] = {}
    files_a, files_b = _Files(a), _Files(b)
    buffers = (memoryview(bytearray(CHUNK_BYTES)), memoryview(bytearray(CHUNK_BYTES)))  # reused for every read
    try:
        for name in a.tensors:  # A's file order: A is read front to back
            if name not in b.tensors:
                rows.append(_one_side(name, a, b, "only_a"))
                continue
            meta_a, meta_b = a.tensors[name], b.tensors[name]
            base = dict(name=name, dtype_a=meta_a.dtype, dtype_b=meta_b.dtype, shape_a=meta_a.shape,
                        shape_b=meta_b.shape, file_a=a.files[name], file_b=b.files[name], numel=meta_a.numel,
                        nbytes=meta_a.nbytes)
            if meta_a.shape != meta_b.shape:
                rows.append(TensorDiff(status="shape", **base))  # type: ignore[arg-type]
                continue
            if meta_a.dtype != meta_b.dtype and not (not headers_only and can_cast(meta_a.dtype, meta_b.dtype)):
                rows.append(TensorDiff(status="dtype", **base))  # type: ignore[arg-type]
                continue
            if headers_only:
                rows.append(TensorDiff(status="same_header", **base))  # type: ignore[arg-type]
                continue
            partner = a.aliases.get(name)
            if partner is not None and partner == b.aliases.get(name) and partner in compared:
                # the same view of the same storage as ``partner`` in both: its bytes were compared
                done_row = compared[partner]
                rows.append(TensorDiff(status=done_row.status, max_abs=done_row.max_abs, rel_l2=done_row.rel_l2,
                                       differing=done_row.differing, note=f"the same storage as {partner!r} in both",
                                       **base))  # type: ignore[arg-type]
                continue
            try:
                rows.append(_compare_values(name, files_a, files_b, a, b, buffers, advance, base))
                compared[name] = rows[-1]
            except _ReadFailed as exc:
                findings.append(finding("HFC960", f"{exc.side.label}: {exc.file}: reading {name!r} failed: "
                                                  f"{exc.message}", file=exc.file, tensor=name))
                rows.append(TensorDiff(status="unreadable", note=f"{exc.side.label}: {exc.message}",
                                       **base))  # type: ignore[arg-type]
        for name in b.tensors:
            if name not in a.tensors:
                rows.append(_one_side(name, b, a, "only_b"))
    finally:
        files_a.close()
        files_b.close()
    return rows, findings, done[0]


def _one_side(name: str, here: Side, there: Side, status: str) -> TensorDiff:
    """A name only one folder holds: ``tied`` when it is a ``.bin`` alias of a tensor both hold
    (``lm_head.weight`` sharing ``embed_tokens``' storage; safetensors stores it once)."""
    meta = here.tensors[name]
    partner = here.aliases.get(name)
    if partner is None:  # the kept one may be the alias: find a tensor it is an alias of... or that aliases it
        partner = next((other for other, target in here.aliases.items() if target == name), None)
    fields: dict[str, Any] = {"numel": meta.numel, "nbytes": meta.nbytes}
    if status == "only_a":
        fields.update(dtype_a=meta.dtype, shape_a=meta.shape, file_a=here.files[name])
    else:
        fields.update(dtype_b=meta.dtype, shape_b=meta.shape, file_b=here.files[name])
    if partner is not None and partner in there.tensors:
        return TensorDiff(name=name, status="tied", note=f"{here.label} stores it as the same storage as "
                          f"{partner!r}; {there.label} stores that tensor once", **fields)
    if there.findings:  # the other folder has files that could not be read: it may hold it there
        return TensorDiff(name=name, status="unreadable", note=f"not in what {there.label} could read "
                          "(see the problems)", **fields)
    return TensorDiff(name=name, status=status, **fields)


def _compare_values(name: str, files_a: _Files, files_b: _Files, a: Side, b: Side,
                    buffers: tuple[memoryview, memoryview], advance: Callable[[int], None],
                    base: dict[str, Any]) -> TensorDiff:
    ea, eb = _Elements(files_a, a, name), _Elements(files_b, b, name)
    dtype_a, dtype_b = base["dtype_a"], base["dtype_b"]
    if dtype_a != dtype_b:
        return _compare_cast(ea, eb, dtype_a, dtype_b, buffers, advance, base)
    return _compare_same(ea, eb, dtype_a, buffers, advance, base)


def _chunks(count: int, per: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, per):
        yield start, min(per, count - start)


def _compare_same(ea: _Elements, eb: _Elements, dtype: str, buffers: tuple[memoryview, memoryview],
                  advance: Callable[[int], None], base: dict[str, Any]) -> TensorDiff:
    per = CHUNK_BYTES // ea.unit
    decodable = dtype in DECODABLE and SAFETENSORS_BITS[dtype] % 8 == 0
    stats: _Stats | None = None
    equal_before = 0  # elements known equal before the first differing chunk (not decoded yet)
    for start, count in _chunks(ea.count, per):
        va = ea.read(start, count, buffers[0])
        vb = eb.read(start, count, buffers[1])
        advance(2 * len(va))
        same = _equal(va, vb)
        if stats is None:
            if same:
                equal_before = start + count
                continue
            stats = _Stats()
        if decodable:
            values_a = as_number(va, dtype)
            if same:
                stats.add_norm(values_a)
            else:
                stats.add(values_a, as_number(vb, dtype))
        elif not same:
            stats.differing += _differing(va, vb, ea.unit)
    if stats is None:
        return TensorDiff(status="identical", **base)
    if decodable and equal_before:  # the norm of A's equal prefix: read again (differing tensors only)
        for start, count in _chunks(equal_before, per):
            stats.add_norm(as_number(ea.read(start, count, buffers[0]), dtype))
    if not decodable:
        return TensorDiff(status="different", differing=stats.differing, **base)
    floating = dtype in FLOAT_DTYPES
    note = None if stats.differing else "the bytes differ, the values do not (signed zeros or NaN payloads)"
    return TensorDiff(status="different", differing=stats.differing, max_abs=stats.max_abs,
                      rel_l2=stats.rel_l2 if floating else None, note=note, **base)


def _compare_cast(ea: _Elements, eb: _Elements, dtype_a: str, dtype_b: str, buffers: tuple[memoryview, memoryview],
                  advance: Callable[[int], None], base: dict[str, Any]) -> TensorDiff:
    """A and B in two floating dtypes: equal when the wider one cast to the narrower is the
    narrower bit for bit (what ``convert --dtype`` writes); the statistics are of the values."""
    import numpy as np

    narrowing_a = itemsize(dtype_a) >= itemsize(dtype_b)  # cast A -> dtype_b, else B -> dtype_a
    per = CHUNK_BYTES // max(ea.unit, eb.unit)
    stats = _Stats()
    cast_equal = True
    beyond = 0
    for start, count in _chunks(ea.count, per):
        va = ea.read(start, count, buffers[0])
        vb = eb.read(start, count, buffers[1])
        advance(len(va) + len(vb))
        values_a, values_b = as_number(va, dtype_a), as_number(vb, dtype_b)
        if values_a.dtype != values_b.dtype:  # float64 against a narrower one: both in float64
            values_a, values_b = values_a.astype("f8"), values_b.astype("f8")
        cast = cast_bytes(va, dtype_a, dtype_b) if narrowing_a else cast_bytes(vb, dtype_b, dtype_a)
        target = vb if narrowing_a else va
        if not _equal(memoryview(cast), target):
            narrow = dtype_b if narrowing_a else dtype_a
            got, want = as_number(cast, narrow), as_number(target, narrow)
            # NaN is NaN whatever its payload (torch's vectorised bfloat16 cast writes 0xFFFF)
            outside = int(np.count_nonzero(~((got == want) | (np.isnan(got) & np.isnan(want)))))
            if outside:
                cast_equal = False
                beyond += outside
        stats.add(values_a, values_b)
    if cast_equal:
        return TensorDiff(status="cast", max_abs=stats.max_abs, rel_l2=stats.rel_l2, differing=stats.differing,
                          note=f"equal after the cast {dtype_a if narrowing_a else dtype_b} -> "
                               f"{dtype_b if narrowing_a else dtype_a}", **base)
    return TensorDiff(status="different", max_abs=stats.max_abs, rel_l2=stats.rel_l2, differing=beyond,
                      note=f"{beyond:,} values differ beyond the cast {dtype_a if narrowing_a else dtype_b} -> "
                           f"{dtype_b if narrowing_a else dtype_a}", **base)
