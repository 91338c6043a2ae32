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

import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..contents import FolderContents
from ..dtypes import itemsize
from ..findings import Finding, finding, register
from ..fsutil import open_regular
from ..tensors import FormatError, WeightFile

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

    files = [(name, contents.weights[name]) for name in contents.shards_of(contents.folder.loaded_set)
             if name in contents.weights]  # an unreadable file is already an error of its own
    buffer = bytearray(_BUFFER_BYTES)
    total = sum(span.nbytes for _, weight_file in files for span in _spans(weight_file))
    # disable=None: a bar on a terminal only, never in a CI log or a piped report
    with tqdm(total=total, unit="B", unit_scale=True, desc="deep read", disable=None, leave=False,
              file=sys.stderr) as bar:
        for name, weight_file in files:
            try:
                with open_regular(contents.folder.path(name)) as handle:
                    yield from _check_file(name, weight_file, handle, buffer, bar.update)
            except (OSError, FormatError) as exc:
                yield finding("HFC904", f"{name}: could not be opened for reading: {getattr(exc, 'message', exc)}",
                              file=name)


@dataclass
class _Span:
    """One run of bytes to stream: a safetensors tensor or a whole .bin storage."""

    tensor: str
    dtype: str
    begin: int
    nbytes: int
    crc32: int | None = None
    label: str = ""


def _spans(weight_file: WeightFile) -> list[_Span]:
    if weight_file.format == "safetensors":
        return [_Span(meta.name, meta.dtype, meta.data_offsets[0], meta.data_offsets[1] - meta.data_offsets[0])
                for meta in weight_file.tensors.values() if meta.data_offsets is not None]
    users: dict[str, str] = {}
    for meta in weight_file.tensors.values():
        if meta.storage_key is not None:
            users.setdefault(meta.storage_key, meta.name)
    spans = []
    for key, storage in weight_file.storages.items():
        if storage.data_offset is None or key not in users:
            continue
        record = storage.record_nbytes if storage.record_nbytes is not None else storage.nbytes
        spans.append(_Span(users[key], storage.dtype, storage.data_offset, record, storage.crc32,
                           f"storage data/{key} (used by {users[key]!r})"))
    return spans


def _check_file(name: str, weight_file: WeightFile, handle: BinaryIO, buffer: bytearray,
                progress: Callable[[int], object]) -> Iterator[Finding]:
    big_endian = weight_file.byte_order == "big"
    for span in sorted(_spans(weight_file), key=lambda s: s.begin):
        counts = _ValueCounts(span.dtype, big_endian)
        crc = 0
        try:
            handle.seek(span.begin)
            for done in range(0, span.nbytes, len(buffer)):
                chunk = _read_exactly(handle, memoryview(buffer)[:min(len(buffer), span.nbytes - done)])
                if span.crc32 is not None:
                    crc = zlib.crc32(chunk, crc)
                counts.add(chunk)
                progress(len(chunk))
        except OSError as exc:
            yield finding("HFC904", f"{name}: reading {span.tensor!r} failed: {exc}", file=name, tensor=span.tensor)
            continue
        if span.crc32 is not None and crc != span.crc32:
            yield finding("HFC901", f"{name}: {span.label} fails its CRC-32 check (recorded 0x{span.crc32:08x}, "
                          f"computed 0x{crc:08x})", file=name, tensor=span.tensor)
        total = span.nbytes // max(itemsize(span.dtype), 1)
        if counts.nan:
            yield finding("HFC902", f"{name}: {span.tensor!r} holds {counts.nan:,} NaN values (of {total:,})",
                          file=name, tensor=span.tensor)
        if counts.inf:
            yield finding("HFC903", f"{name}: {span.tensor!r} holds {counts.inf:,} infinite values (of {total:,})",
                          file=name, tensor=span.tensor)


def _read_exactly(handle: BinaryIO, view: memoryview) -> memoryview:
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
        np = self._np
        count = len(chunk) // self._dtype.itemsize
        values = np.frombuffer(chunk, dtype=self._dtype, count=count)
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
