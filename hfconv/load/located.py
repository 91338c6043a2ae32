"""Step 2 of load-test: where every tensor's bytes are, and what each becomes on its device.

Sizes come from the weight headers validate read, never from config numbers; the byte
ranges from :func:`hfconv.tensor_bytes.locate` (the one place that says where a tensor's
bytes are, shared with convert). ``torch.load`` is never called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dtypes import CAST_TARGET, CASTABLE
from ..dtypes import nbytes as dtype_nbytes
from ..findings import Finding, finding
from ..tensor_bytes import LocateError, file_order, locate
from ..tensors import TensorMeta, WeightFile

if TYPE_CHECKING:  # pragma: no cover
    from ..contents import FolderContents

__all__ = ["FolderBytes", "Located", "locate_folder", "locate_tensor"]

@dataclass(frozen=True)
class Located:
    """A tensor's bytes in its source file, and what it becomes on its device."""

    name: str
    shard: str
    """Weight file, relative to the folder."""
    meta: TensorMeta
    begin: int
    """Absolute offset of the first byte (of the view's span, for a strided view)."""
    end: int
    stride: tuple[int, ...] | None
    """Element strides of a non-contiguous ``.bin`` view, else None."""
    out_dtype: str
    safetensors: bool
    byteswap: bool = False
    """Stored big-endian: the verified bytes are swapped before they become the tensor."""

    @property
    def nbytes(self) -> int:
        return self.meta.nbytes

    @property
    def out_nbytes(self) -> int:
        return dtype_nbytes(self.out_dtype, self.meta.numel)

    @property
    def alias_key(self) -> tuple[Any, ...]:
        """The same key for every tensor that views the same bytes the same way (tied storage)."""
        return (self.shard, self.begin, self.end, self.stride, self.meta.dtype, tuple(self.meta.shape))


def locate_tensor(meta: TensorMeta, weight_file: WeightFile, shard: str, file_size: int, out_dtype: str) -> Located:
    """Where a tensor's bytes are (bounds checked again against the file as it is now).

    Raises:
        LocateError: no storage location, outside its storage, or a range that does not fit.
    """
    span = locate(meta, weight_file, file_size)
    return Located(meta.name, shard, meta, span.begin, span.end, span.stride, out_dtype,
                   weight_file.format == "safetensors", span.byteswap)


@dataclass(frozen=True)
class FolderBytes:
    """Every tensor of the loaded set located, in file order, and the groups sharing a storage."""

    located: list[Located]
    tied: list[list[str]]
    problems: list[Finding]
    """HFC735 for every shard that could not be read or located (the run is refused)."""

    @property
    def disk_writes(self) -> bool:
        """Whether a ``disk`` placement writes offload files (``.bin`` sources do)."""
        return any(not loc.safetensors for loc in self.located)


def locate_folder(root: Path, contents: FolderContents, dtype: str) -> FolderBytes:
    """Locate every tensor of the folder's loaded set; ``dtype`` is the --dtype cast (or keep)."""
    chosen = contents.folder.loaded_set
    target = CAST_TARGET.get(dtype)
    located: list[Located] = []
    tied: list[list[str]] = []
    problems: list[Finding] = []
    for shard in (contents.shards_of(chosen) if chosen else ()):
        weight_file = contents.weights.get(shard)
        if weight_file is None:  # validate reports unreadable shards as errors; be safe anyway
            problems.append(finding("HFC735", f"{shard} could not be read", file=shard))
            continue
        try:
            tied.extend(_locate_shard(root, shard, weight_file, target, located))
        except (LocateError, OSError) as exc:
            problems.append(finding("HFC735", f"{shard}: {exc}", file=shard))
    return FolderBytes(located, tied, problems)


def _locate_shard(root: Path, shard: str, weight_file: WeightFile, target: str | None,
                  into: list[Located]) -> Sequence[list[str]]:
    """Append the shard's tensors to ``into``; returns its groups of names sharing bytes."""
    size = os.stat(root / shard).st_size
    by_key: dict[tuple[Any, ...], list[str]] = {}
    for meta in file_order(weight_file):
        out_dtype = target if (target and meta.dtype in CASTABLE) else meta.dtype
        loc = locate_tensor(meta, weight_file, shard, size, out_dtype)
        into.append(loc)
        if meta.storage_key is not None:
            by_key.setdefault(loc.alias_key, []).append(loc.name)
    return [names for names in by_key.values() if len(names) > 1]
