"""``validate --deep``: read every tensor byte the loader would read, once.

Header checks prove the files are well formed; they cannot see the values. With ``deep``
each storage (``.bin``) or tensor (safetensors) of the weight set loaders use is streamed
through one reused buffer (memory stays at the buffer's size) and checked for

- corruption: a ``.bin`` storage whose bytes no longer match the CRC-32 torch.save wrote
  into the zip directory. torch.load never checks it, so a flipped bit on disk or in a
  transfer loads silently;
- NaN values (error: the model's outputs become NaN) and infinite values (warning: an
  overflowed fp16 save, or a deliberate mask constant).

Floating values are classified by their bit patterns with numpy, so every float dtype
(bfloat16 and float8 included) is checked without torch.
"""

from __future__ import annotations

import io
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..contents import FolderContents
from ..findings import Finding, finding, register
from ..fsutil import open_regular
from ..tensors import FormatError, WeightFile

if TYPE_CHECKING:  # pragma: no cover
    import numpy

register("HFC901", "error", "corrupted storage",
         "A .bin storage's bytes no longer match the CRC-32 that torch.save recorded in the zip "
         "directory: the file changed after it was written (disk or transfer corruption, or an "
         "edit). torch.load does not check CRCs, so it would load the damaged values silently.",
         "Re-download the file (or restore it from the original save); compare its sha256 with the Hub's.",
         "pytorch_model.bin: storage data/3 (used by 'model.layers.0.mlp.up_proj.weight') fails its "
         "CRC-32 check (recorded 0x1ed7254e, computed 0x9a0c11f2)")
register("HFC902", "error", "NaN values",
         "A floating tensor holds NaN values; every output that depends on them becomes NaN.",
         "Find the step that produced them (an fp16 overflow in training or conversion) and re-save "
         "from a good checkpoint.",
         "model-00001-of-00002.safetensors: 'model.layers.3.mlp.down_proj.weight' holds 12 NaN values "
         "(of 65,536)")
register("HFC903", "warning", "infinite values",
         "A floating tensor holds +/-inf. Weights are never infinite in a healthy model (an overflow "
         "when casting to fp16 is the usual cause); a buffer may hold -inf on purpose as a mask.",
         "Re-save from the full-precision checkpoint, or cast to bfloat16 instead of float16; "
         "--ignore HFC903 if it is a deliberate mask buffer.",
         "model.safetensors: 'lm_head.weight' holds 3 infinite values (of 6,400)")
register("HFC904", "error", "unreadable bytes",
         "Reading a tensor's bytes failed (an I/O error, or the file shrank since its header was read).",
         "Check the disk, re-download the file.",
         "model.safetensors: reading 'lm_head.weight' failed: [Errno 5] Input/output error")

_BUFFER_BYTES = 16 << 20  # a multiple of every item size


def _pick_crc32() -> tuple[Callable[..., int], str]:
    """The fastest CRC-32 installed: ISA-L's or zlib-ng's SIMD one (3-4x the standard
    library's on x86-64, see benchmarks/bench_convert.py), else :func:`zlib.crc32`.

    All three compute the same CRC-32 (the zip one), take any bytes-like object, release the
    GIL, and continue from a previous value: ``crc32(data, previous)``. ``HFCONV_CRC32=zlib``
    forces the standard library's (the benchmark compares them).
    """
    import os

    if os.environ.get("HFCONV_CRC32") == "zlib":
        return zlib.crc32, "zlib"
    try:
        from isal import isal_zlib

        if isal_zlib.crc32(b"123456789") == 0xCBF43926:
            return isal_zlib.crc32, "isal"
    except Exception:  # noqa: BLE001 - optional; a broken install falls back
        pass
    try:
        from zlib_ng import zlib_ng

        if zlib_ng.crc32(b"123456789") == 0xCBF43926:
            return zlib_ng.crc32, "zlib-ng"
    except Exception:  # noqa: BLE001
        pass
    return zlib.crc32, "zlib"


crc32, CRC32_IMPLEMENTATION = _pick_crc32()
"""``crc32(data, value=0)``: the CRC-32 torch.save records for each storage (shared by
``validate --deep``, ``convert`` and ``load-test``)."""


def storage_label(key: str, first_user: str) -> str:
    """How a ``.bin`` storage is named in messages: ``storage data/3 (used by 'x.weight')``."""
    return f"storage data/{key} (used by {first_user!r})"


def crc_mismatch(name: str, key: str, first_user: str, recorded: int, computed: int) -> Finding:
    """The HFC901 finding for a storage of ``name`` whose bytes fail their recorded CRC-32."""
    return finding("HFC901", f"{name}: {storage_label(key, first_user)} fails its CRC-32 check (recorded "
                   f"0x{recorded:08x}, computed 0x{computed:08x})", file=name, tensor=first_user)

# dtype -> (unsigned width, exponent mask, mantissa mask): all-ones exponent is inf (mantissa 0)
# or NaN (mantissa not 0), as in IEEE 754.
_IEEE = {
    "F64": (8, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
    "F32": (4, 0x7F800000, 0x007FFFFF),
    "F16": (2, 0x7C00, 0x03FF),
    "BF16": (2, 0x7F80, 0x007F),
    "F8_E5M2": (1, 0x7C, 0x03),
}
# float8 e4m3fn has no inf; S.1111.111 is its only NaN. e8m0 (a scale) uses 0xFF as NaN.
_NAN_ONLY = {"F8_E4M3": 0x7F, "F8_E8M0": 0xFF}


def check_deep(contents: FolderContents) -> Iterator[Finding]:
    if not contents.options.deep or contents.folder.loaded_set is None:
        return
    from tqdm import tqdm

    plans = [(name, weight_file, _plan(weight_file))
             for name in contents.shards_of(contents.folder.loaded_set)
             if (weight_file := contents.weights.get(name)) is not None]  # unreadable: already an error
    buffer = bytearray(_BUFFER_BYTES)
    total = sum(span.nbytes for _, _, (spans, strided) in plans for span in spans) + \
        sum(view.end - view.begin for _, _, (_, strided) in plans for view in strided)
    # disable=None: a bar on a terminal only, never in a CI log or a piped report
    with tqdm(total=total, unit="B", unit_scale=True, desc="deep read", disable=None, leave=False,
              file=sys.stderr) as bar:
        for name, weight_file, plan in plans:
            try:
                with open_regular(contents.folder.path(name)) as handle:
                    yield from _check_file(name, weight_file.byte_order == "big", plan, handle, buffer, bar.update)
            except (OSError, FormatError) as exc:
                yield finding("HFC904", f"{name} could not be opened for reading: {getattr(exc, 'message', exc)}",
                              file=name)


@dataclass
class _View:
    """A tensor's bytes: counted as they stream past (contiguous) or gathered (strided)."""

    tensor: str
    dtype: str
    begin: int
    end: int
    stride: tuple[int, ...] | None = None
    shape: tuple[int, ...] = ()


@dataclass
class _Span:
    """One run of bytes streamed once: a safetensors tensor, or a whole .bin storage (whose
    CRC-32 covers the whole record) with the contiguous views into it."""

    begin: int
    nbytes: int
    views: list[_View]
    crc32: int | None = None
    key: str = ""
    """The storage's key (``.bin``)."""
    first_user: str = ""


def _plan(weight_file: WeightFile) -> tuple[list[_Span], list[_View]]:
    """(spans to stream, strided views to gather afterwards)."""
    from ..tensor_bytes import OutsideStorage, located_storage, storage_records, view_span  # --deep only

    if weight_file.format == "safetensors":
        spans = []
        for meta in weight_file.tensors.values():
            if meta.data_offsets is not None:
                begin, end = meta.data_offsets
                spans.append(_Span(begin, end - begin, [_View(meta.name, meta.dtype, begin, end)],
                                   first_user=meta.name))
        return spans, []
    by_storage: dict[str, list[_View]] = {}
    strided: list[_View] = []
    seen: set[tuple] = set()
    for meta in weight_file.tensors.values():
        storage = located_storage(meta, weight_file)
        if storage is None:
            continue
        try:
            begin, end, stride = view_span(meta, storage)
        except OutsideStorage:
            continue  # the reader already refused such a view
        key = (begin, end, stride, meta.dtype, meta.shape)
        if key in seen:
            continue  # a tied alias: the same values, judged once under the first name
        seen.add(key)
        view = _View(meta.name, meta.dtype, begin, end, stride, meta.shape)
        (strided if stride is not None else by_storage.setdefault(storage.key, [])).append(view)
    spans = [_Span(r.begin, r.nbytes, by_storage.get(r.key, []), r.crc32, r.key, r.first_user)
             for r in storage_records(weight_file)]
    return spans, strided


def _check_file(name: str, big_endian: bool, plan: tuple[list[_Span], list[_View]], handle: io.BufferedIOBase,
                buffer: bytearray, progress: Callable[[int], object]) -> Iterator[Finding]:
    spans, strided = plan
    for span in sorted(spans, key=lambda s: s.begin):
        counts = {id(view): _ValueCounts(view.dtype, big_endian) for view in span.views}
        crc = 0
        try:
            handle.seek(span.begin)
            for done in range(0, span.nbytes, len(buffer)):
                chunk = _read_exactly(handle, memoryview(buffer)[:min(len(buffer), span.nbytes - done)])
                if span.crc32 is not None:
                    crc = crc32(chunk, crc)
                at = span.begin + done
                for view in span.views:
                    # chunks start a multiple of 16 MiB into the storage: on an element boundary
                    # of every view into it
                    low, high = max(view.begin, at), min(view.end, at + len(chunk))
                    if low < high:
                        counts[id(view)].add(chunk[low - at:high - at])
                progress(len(chunk))
        except OSError as exc:
            yield finding("HFC904", f"{name}: reading {span.first_user!r} failed: {exc}", file=name,
                          tensor=span.first_user)
            continue
        if span.crc32 is not None and crc != span.crc32:
            yield crc_mismatch(name, span.key, span.first_user, span.crc32, crc)
        for view in span.views:
            yield from _value_findings(name, view, counts[id(view)])
    for view in strided:
        strided_counts = _ValueCounts(view.dtype, big_endian)
        try:
            strided_counts.add_strided(_read_span(handle, view), view)
        except OSError as exc:
            yield finding("HFC904", f"{name}: reading {view.tensor!r} failed: {exc}", file=name, tensor=view.tensor)
            continue
        progress(view.end - view.begin)
        yield from _value_findings(name, view, strided_counts)


def _value_findings(name: str, view: _View, counts: _ValueCounts) -> Iterator[Finding]:
    total = counts.values
    if counts.nan:
        yield finding("HFC902", f"{name}: {view.tensor!r} holds {counts.nan:,} NaN values (of {total:,})",
                      file=name, tensor=view.tensor)
    if counts.inf:
        yield finding("HFC903", f"{name}: {view.tensor!r} holds {counts.inf:,} infinite values (of {total:,})",
                      file=name, tensor=view.tensor)


def _read_span(handle: io.BufferedIOBase, view: _View) -> memoryview:
    """A strided view's whole span (bounded by that one tensor)."""
    handle.seek(view.begin)
    return _read_exactly(handle, memoryview(bytearray(view.end - view.begin)))


def _read_exactly(handle: io.BufferedIOBase, view: memoryview) -> memoryview:
    """Fill ``view`` from the file's position (so chunks stay on element boundaries)."""
    filled = 0
    while filled < len(view):
        got = handle.readinto(view[filled:])
        if not got:
            raise OSError(f"the file ends {len(view) - filled} bytes early")
        filled += got
    return view


class _ValueCounts:
    """NaN and inf counts of a stream of one dtype's bytes, fed in chunks cut on element
    boundaries."""

    def __init__(self, dtype: str, big_endian: bool):
        import numpy as np

        self.nan = 0
        self.inf = 0
        self.values = 0
        self._np = np
        self._masks: tuple[int, int] | None = None
        self._nan_pattern: int | None = None
        width = None
        if dtype in _IEEE:
            width, exponent, mantissa = _IEEE[dtype]
            self._masks = (exponent, mantissa)
        elif dtype in _NAN_ONLY:
            width, self._nan_pattern = 1, _NAN_ONLY[dtype]
        self._dtype: Any = None
        if width is not None:
            self._dtype = np.dtype(f"{'>' if big_endian else '<'}u{width}")

    def add(self, chunk: memoryview) -> None:
        if self._dtype is None:
            return
        count = len(chunk) // self._dtype.itemsize
        self._count(self._np.frombuffer(chunk, dtype=self._dtype, count=count))

    def add_strided(self, span: memoryview, view: _View) -> None:
        """Count the elements a strided view selects from its span."""
        from ..tensor_bytes import gather  # --deep only

        if self._dtype is None:
            return
        assert view.stride is not None
        self._count(gather(span, 0, view.shape, view.stride, self._dtype))

    def _count(self, values: numpy.ndarray[Any, Any]) -> None:
        np = self._np
        self.values += len(values)
        if self._masks is not None:
            exponent, mantissa = self._masks
            special = (values & exponent) == exponent
            if special.any():
                nan = int(np.count_nonzero(special & ((values & mantissa) != 0)))
                self.nan += nan
                self.inf += int(np.count_nonzero(special)) - nan
        elif self._nan_pattern is not None:
            self.nan += int(np.count_nonzero((values & 0x7F if self._nan_pattern == 0x7F else values)
                                             == self._nan_pattern))
        del values
