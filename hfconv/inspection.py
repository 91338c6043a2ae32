"""``inspect``: a readable summary of what a model folder holds."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter

from .contents import read_contents
from .discovery import discover
from .folder_check import check_folder
from .gcpause import gc_paused
from .report import Layout
from .weight_map import MapShard, shard_map


@dataclass(frozen=True)
class ShardSummary:
    name: str
    file_bytes: int
    tensors: int
    tensor_bytes: int
    format: str | None
    """Reader's format (``safetensors``, ``zip``, ``legacy``), None when unreadable."""
    error: str | None = None


@dataclass(frozen=True)
class TensorRow:
    """One tensor of the weights loaders read (``inspect --tensors``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    shard: str
    bytes: int

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "shard": self.shard,
                "bytes": self.bytes}


@dataclass(frozen=True)
class Inspection:
    """What ``hfconv inspect`` shows."""

    path: str
    layout: Layout
    model_type: str | None
    architectures: tuple[str, ...]
    config_dtype: str | None
    shards: tuple[ShardSummary, ...]
    dtypes: dict[str, int]
    """dtype -> number of tensors."""
    tensors: int
    parameters: int
    bytes: int
    tokenizer_files: tuple[str, ...]
    has_config: bool = False
    """config.json was read (a JSON object)."""
    tensor_rows: tuple[TensorRow, ...] | None = None
    """Every tensor (name, shape, dtype, shard, bytes) with ``tensors=True``; None otherwise."""
    shard_map: Sequence[MapShard] = ()
    """The shards with their tensors, for the HTML report's pictures (not in the JSON)."""

    @property
    def empty(self) -> bool:
        """No tensor was read and no config: nothing that makes the folder a model to summarise."""
        return self.tensors == 0 and not self.has_config

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "layout": self.layout.to_json(),
            "model_type": self.model_type,
            "architectures": list(self.architectures),
            "config_dtype": self.config_dtype,
            "shards": [s.__dict__ for s in self.shards],
            "dtypes": self.dtypes,
            "tensors": self.tensors,
            "parameters": self.parameters,
            "bytes": self.bytes,
            "tokenizer_files": list(self.tokenizer_files),
            **({"tensor_list": [row.to_json() for row in self.tensor_rows]} if self.tensor_rows is not None else {}),
        }

    def to_text(self) -> str:
        """The summary for people (``inspect``'s text format; see :func:`hfconv.render.text.render_inspection_text`)."""
        from .render.text import render_inspection_text

        return render_inspection_text(self)


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "added_tokens.json", "chat_template.jinja")


def inspect(path: str | os.PathLike, *, tensors: bool = False) -> Inspection:
    """Summarise a model folder: format, shards, tensors, parameters, dtypes, bytes per shard.

    Args:
        path: the model folder.
        tensors: also list every tensor of the weights loaders read (name, shape, dtype,
            shard, bytes), in ``tensor_rows``.

    Returns:
        The Inspection (render with ``to_text()`` or ``to_json()``).

    Raises:
        UsageError: path does not exist or is not a folder (the message says which).
    """
    check_folder(path)
    with gc_paused():  # as validate: millions of acyclic objects in the largest folders
        folder = discover(path)
        contents = read_contents(folder)
    layout = contents.layout()
    shards = []
    for name in layout.shards:
        try:
            size = os.stat(folder.path(name)).st_size
        except OSError:
            size = 0
        weight_file = contents.weights.get(name)
        error = contents.weight_errors.get(name)
        shards.append(ShardSummary(
            name=name,
            file_bytes=size,
            tensors=len(weight_file.tensors) if weight_file else 0,
            tensor_bytes=weight_file.tensor_nbytes if weight_file else 0,
            format=weight_file.format if weight_file else None,
            error=f"{error.code}: {error.message}" if error else (None if folder.has(name) else "missing"),
        ))
    loaded = contents.loaded_tensors
    rows = None
    if tensors:
        where = contents.tensor_files
        rows = tuple(TensorRow(name=name, shape=tuple(meta.shape), dtype=meta.dtype, shard=where.get(name, ""),
                               bytes=meta.nbytes) for name, meta in loaded.items())
    config = contents.config or {}
    architectures = config.get("architectures")
    summary = contents.summary()  # parameters and bytes, summed in bulk
    return Inspection(
        path=str(path),
        layout=layout,
        model_type=config.get("model_type") if isinstance(config.get("model_type"), str) else None,
        architectures=tuple(a for a in architectures if isinstance(a, str)) if isinstance(architectures, list) else (),
        config_dtype=_config_dtype(config),
        shards=tuple(shards),
        dtypes=dict(Counter(map(attrgetter("dtype"), loaded.values()))),
        tensors=len(loaded),
        parameters=summary.parameters,
        bytes=summary.bytes,
        tokenizer_files=tuple(f for f in TOKENIZER_FILES if folder.has(f)),
        has_config=isinstance(contents.config, dict),
        tensor_rows=rows,
        shard_map=shard_map(contents),
    )


def _config_dtype(config: dict) -> str | None:
    value = config.get("torch_dtype", config.get("dtype"))
    return value if isinstance(value, str) else None
