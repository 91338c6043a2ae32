"""Where a tensor's bytes are in its weight file, from the readers' metadata alone.

Shared by ``convert`` and ``load-test``; each turns the outcomes into its own errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dtypes import itemsize
from .tensors import StorageMeta, TensorMeta, WeightFile


class OutsideStorage(ValueError):
    """A ``.bin`` view reaches outside the bytes its storage has in the file."""


def file_order(weight_file: WeightFile) -> list[TensorMeta]:
    """Tensors in file order: data order for safetensors, pickle (state-dict) order for .bin."""
    tensors = list(weight_file.tensors.values())
    if weight_file.format == "safetensors":
        tensors.sort(key=lambda t: t.data_offsets or (0, 0))
    return tensors


def located_storage(meta: TensorMeta, weight_file: WeightFile) -> StorageMeta | None:
    """The storage a ``.bin`` tensor views, or None when its place in the file is unknown."""
    storage = weight_file.storages.get(meta.storage_key or "")
    if storage is None or storage.data_offset is None or meta.stride is None:
        return None
    return storage


def view_span(meta: TensorMeta, storage: StorageMeta) -> tuple[int, int, tuple[int, ...] | None]:
    """``(begin, end, stride)`` of a ``.bin`` view of ``storage`` (one from :func:`located_storage`).

    ``begin`` is the absolute offset of the view's first element, ``end`` (exclusive) the end
    of the bytes it touches, ``stride`` its element strides when not contiguous, else None.
    An empty tensor is ``(begin, begin, None)``.

    Raises:
        OutsideStorage: a negative offset or stride, or the view ends past the storage's
            bytes in the file (``record_nbytes`` where known, else its ``nbytes``).
    """
    size = itemsize(meta.dtype)
    begin = storage.data_offset + meta.storage_offset * size
    record = storage.record_nbytes if storage.record_nbytes is not None else storage.nbytes
    if meta.numel == 0:
        return begin, begin, None
    last = sum((dim - 1) * step for dim, step in zip(meta.shape, meta.stride))
    end = begin + (last + 1) * size
    if meta.storage_offset < 0 or any(s < 0 for s in meta.stride) or end > storage.data_offset + record:
        raise OutsideStorage(meta.name)
    return begin, end, None if meta.is_contiguous else tuple(meta.stride)


@dataclass(frozen=True)
class StorageRecord:
    """The bytes a ``.bin`` storage has in its file: the run its zip CRC-32 covers."""

    key: str
    begin: int
    """Absolute offset of the record's first byte."""
    nbytes: int
    crc32: int | None
    """The CRC-32 the zip directory records (None: a legacy checkpoint has none)."""
    first_user: str
    """The first tensor (in pickle order) that views it, for messages."""


def storage_records(weight_file: WeightFile) -> list[StorageRecord]:
    """Every located storage of a ``.bin`` file that some tensor views, in file order."""
    users: dict[str, str] = {}
    for meta in weight_file.tensors.values():
        if meta.storage_key is not None:
            users.setdefault(meta.storage_key, meta.name)
    records = []
    for key, storage in weight_file.storages.items():
        if storage.data_offset is None or key not in users:
            continue
        size = storage.record_nbytes if storage.record_nbytes is not None else storage.nbytes
        records.append(StorageRecord(key, storage.data_offset, size, storage.crc32, users[key]))
    records.sort(key=lambda r: r.begin)
    return records
