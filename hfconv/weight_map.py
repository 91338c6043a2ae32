"""What the pictures of a report need: each weight file loaders read, and its tensors (name,
shape, dtype, bytes), or why it could not be read. A leaf: results carry it, renderers draw it."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache, partial
from operator import attrgetter
from typing import TYPE_CHECKING, NamedTuple, overload

from .dtypes import SAFETENSORS_BITS, nbytes

if TYPE_CHECKING:  # pragma: no cover
    from .contents import FolderContents

__all__ = ["BLOCK_PATTERN", "MapShard", "MapTensor", "ShardMap", "build_shard_map", "shard_map", "tensor_nbytes",
           "unit_of"]


class MapTensor(NamedTuple):
    """One tensor as the pictures show it (a NamedTuple: a report carries one per tensor, 100,000s
    for the largest models, built in C by :func:`shard_map`)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class MapShard(NamedTuple):
    """One weight file: its tensors in file order, or the problem that kept them from being read."""

    name: str
    file_bytes: int | None
    """Size on disk; None when the file is missing."""
    tensors: tuple[MapTensor, ...]
    problem: str | None = None
    """``missing``, or the reader's message for a file that could not be read; None when read."""

    @property
    def tensor_bytes(self) -> int:
        return sum(t.bytes for t in self.tensors)


def tensor_nbytes(dtype: str, shape: Iterable[int]) -> int:
    """Bytes of a dense tensor of ``dtype`` (a safetensors name) and ``shape`` (0 for an unknown dtype)."""
    return nbytes(dtype, math.prod(shape)) if dtype in SAFETENSORS_BITS else 0


# A model has a few dozen distinct (dtype, shape) pairs over 100,000s of tensors: computing each
# size once made the shard map of a 200,000-tensor file 0.4 s cheaper.
_cached_nbytes = lru_cache(maxsize=1 << 14)(tensor_nbytes)


class ShardMap(Sequence[MapShard]):
    """The shards loaders read, built on first use: only the HTML pictures need them, and for
    200,000 tensors building them costs 0.3 s and tens of MB that text and JSON reports skip."""

    def __init__(self, contents: FolderContents) -> None:
        self._contents: FolderContents | None = contents
        self._shards: tuple[MapShard, ...] = ()

    def _built(self) -> tuple[MapShard, ...]:
        if self._contents is not None:
            self._shards, self._contents = build_shard_map(self._contents), None
        return self._shards

    @overload
    def __getitem__(self, index: int) -> MapShard: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[MapShard, ...]: ...

    def __getitem__(self, index: int | slice) -> MapShard | tuple[MapShard, ...]:
        return self._built()[index]

    def __len__(self) -> int:
        return len(self._built())

    def __iter__(self) -> Iterator[MapShard]:
        return iter(self._built())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(self._built())

    def __repr__(self) -> str:
        return f"ShardMap({self._built()!r})"


def shard_map(contents: FolderContents) -> ShardMap:
    """The shards loaders read (the layout's), each with its tensors or its problem; built when
    first read."""
    return ShardMap(contents)


def build_shard_map(contents: FolderContents) -> tuple[MapShard, ...]:
    """The shards loaders read (the layout's), each with its tensors or its problem."""
    shards = []
    for name in contents.layout().shards:
        weight_file = contents.weights.get(name)
        error = contents.weight_errors.get(name)
        try:
            size: int | None = os.stat(contents.folder.path(name)).st_size
        except (OSError, ValueError):
            size = None
        problem = None
        if weight_file is None:
            problem = f"{error.code}: {error.message}" if error is not None else (
                "missing" if size is None else "not read")
        metas = weight_file.tensors.values() if weight_file is not None else ()
        shapes = list(map(tuple, map(_SHAPE, metas)))
        dtypes = list(map(_DTYPE, metas))
        sizes = map(_cached_nbytes, dtypes, shapes)
        tensors = tuple(map(_new_map_tensor, zip(map(_NAME, metas), shapes, dtypes, sizes)))
        shards.append(MapShard(name, size, tensors, problem))
    return tuple(shards)


_NAME, _SHAPE, _DTYPE = attrgetter("name"), attrgetter("shape"), attrgetter("dtype")
_new_map_tensor = partial(tuple.__new__, MapTensor)


BLOCK_PATTERN = re.compile(r"^((?:[^.]+\.)*?(?:layers|layer|h|block|blocks)\.(\d+))(?:\.|$)")
"""A repeated block's module (group 1: ``model.layers.7``) and its number (group 2)."""


def unit_of(name: str) -> str:
    """The row a tensor belongs to: its decoder block (``model.layers.7``), else its parent module."""
    match = BLOCK_PATTERN.match(name)
    if match:
        return match.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name
