"""What the readers know about a tensor without reading its bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple

from .dtypes import nbytes, total_nbytes


class TensorMeta(NamedTuple):
    """One tensor as stored in one weight file.

    For safetensors, ``data_offsets`` is the absolute byte range in the file. For ``.bin``,
    the tensor is a view (``storage_offset``, ``stride`` in elements) of ``storage_key``.

    A NamedTuple (immutable, compared and hashed by value, as a frozen dataclass) because the
    largest folders hold 100,000s of tensors: the safetensors reader builds them in C
    (``tuple.__new__``) for a fraction of a dataclass's cost.
    """

    name: str
    dtype: str
    """safetensors dtype name, e.g. ``F32``."""
    shape: tuple[int, ...]
    data_offsets: tuple[int, int] | None = None
    storage_key: str | None = None
    storage_offset: int = 0
    stride: tuple[int, ...] | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, math.prod(self.shape))

    @property
    def is_contiguous(self) -> bool:
        """True when the view is row-major contiguous (always for safetensors)."""
        if self.stride is None:
            return True
        expected = 1
        for size, step in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and step != expected:
                return False
            expected *= size
        return True


class StorageMeta(NamedTuple):
    """One storage (a flat byte buffer) of a ``.bin`` checkpoint."""

    key: str
    dtype: str
    numel: int
    """Elements the storage holds (from the pickle, or the record size / itemsize)."""
    data_offset: int | None = None
    """Absolute offset of the raw bytes in the file (stored zip entry / legacy stream)."""
    record_nbytes: int | None = None
    """Bytes actually present in the file for this storage."""
    crc32: int | None = None
    """CRC-32 the zip directory records for the storage's bytes (torch.save writes it; torch.load
    never checks it); None for legacy checkpoints."""

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.numel)


class ReaderNote(NamedTuple):
    """A non-fatal remark a reader makes about a file it could read."""

    code: str
    message: str
    tensor: str | None = None


@dataclass(frozen=True)
class WeightFile:
    """Everything a reader learned about one weight file."""

    path: str
    format: str
    """``safetensors``, ``zip`` (torch >= 1.6) or ``legacy`` (pre-1.6 torch)."""
    tensors: dict[str, TensorMeta]
    storages: dict[str, StorageMeta] = field(default_factory=dict)
    metadata: dict[str, str] | None = None
    notes: tuple[ReaderNote, ...] = ()
    header_nbytes: int = 0
    """Bytes the reader had to parse (header / pickle)."""
    byte_order: str = "little"
    """Byte order of the stored elements: safetensors is always little-endian; a torch
    checkpoint saved on a big-endian machine says ``big`` (torch.load swaps on load)."""
    totals: tuple[int, int] | None = None
    """(elements, bytes) of all its tensors, where the reader summed them in passing (the
    safetensors reader's bulk path: 100,000s of tensors in the largest folders); else None."""

    @property
    def aliases(self) -> dict[str, list[str]]:
        """storage key -> tensor names, for storages used by more than one tensor."""
        by_key: dict[str, list[str]] = {}
        for meta in self.tensors.values():
            if meta.storage_key is not None:
                by_key.setdefault(meta.storage_key, []).append(meta.name)
        return {key: names for key, names in by_key.items() if len(names) > 1}

    @property
    def tensor_numel(self) -> int:
        """Elements of all its tensors."""
        if self.totals is not None:
            return self.totals[0]
        return sum(map(math.prod, map(attrgetter("shape"), self.tensors.values())))

    @property
    def tensor_nbytes(self) -> int:
        if self.totals is not None:
            return self.totals[1]
        metas = self.tensors.values()
        numels = list(map(math.prod, map(attrgetter("shape"), metas)))
        return total_nbytes(list(map(attrgetter("dtype"), metas)), numels)

    @property
    def storage_nbytes(self) -> int:
        return sum(s.nbytes for s in self.storages.values())


class FormatError(Exception):
    """A reader's verdict that a file is broken; carries the finding code to report."""

    def __init__(self, code: str, message: str, tensor: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.tensor = tensor
