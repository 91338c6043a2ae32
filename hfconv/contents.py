"""The read stage: parse every metadata file of a discovered folder once.

Parse failures are data (recorded next to the successes), so one broken file never stops the
run; the checks turn them into findings.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter
from typing import Any, NamedTuple, TypeVar

from .discovery import JSON_FILES, ModelFolder, WeightSet
from .dtypes import total_nbytes
from .fsutil import link_problem
from .jsonutil import JsonError, load_json_file
from .readers import read_weight_file
from .report import Layout, Summary
from .tensors import FormatError, TensorMeta, WeightFile


@dataclass(frozen=True)
class IndexFile:
    """A parsed ``*.index.json``."""

    name: str
    weight_map: dict[str, str]
    metadata: dict[str, Any]

    @cached_property
    def shard_names(self) -> tuple[str, ...]:
        """Shard files the index references, in shard-number order (``-00002-`` before ``-00010-``)."""
        return tuple(sorted(set(self.weight_map.values()), key=_shard_sort_key))


_SHARD_NUMBER_RE = re.compile(r"-(\d{1,30})-of-(\d+)\.[a-z]+$")  # int() of 5000 digits raises


def _shard_sort_key(name: str) -> tuple:
    match = _SHARD_NUMBER_RE.search(name)
    return (0, int(match.group(1)), name) if match else (1, 0, name)


class CheckOptions(NamedTuple):
    """What the user asked the checks to do beyond the defaults."""

    trust_remote_code: bool = False
    reference: str = "auto"
    """Where expected tensor shapes come from: ``auto``, ``rules`` or ``transformers``."""
    deep: bool = False
    """Also read every tensor byte: CRC-32 of .bin storages, NaN and inf values (checks/deep.py)."""
    manifest: str | None = None
    publishing: bool = False
    """Also check what a push to the Hub refuses (README.md metadata, the Hub's size limits, git-lfs
    routing: checks/model_card.py, checks/hub.py). ``validate`` sets it; convert's output check and
    load-test's gate do not (a model card or a file too large for the Hub does not stop a load)."""


@dataclass
class FolderContents:
    """Everything parsed from one folder: successes and failures side by side."""

    folder: ModelFolder
    options: CheckOptions = field(default_factory=CheckOptions)
    json: dict[str, Any] = field(default_factory=dict)
    json_errors: dict[str, JsonError | FormatError] = field(default_factory=dict)
    indexes: dict[str, IndexFile] = field(default_factory=dict)
    index_errors: dict[str, str] = field(default_factory=dict)
    """Index file -> why it is unusable (message)."""
    weights: dict[str, WeightFile] = field(default_factory=dict)
    weight_errors: dict[str, FormatError] = field(default_factory=dict)
    unsafe_names: dict[str, str] = field(default_factory=dict)
    """Shard name from an index -> the index naming it, for names escaping the folder."""
    index_error_codes: dict[str, str] = field(default_factory=dict)
    """Index file -> the finding code of its ``index_errors`` entry where it is not HFC307."""
    unread_weights: list[str] = field(default_factory=list)
    """Weight files not read because MAX_WEIGHT_FILES was reached."""

    @property
    def config(self) -> dict[str, Any] | None:
        value = self.json.get("config.json")
        return value if isinstance(value, dict) else None

    def shards_of(self, weight_set: WeightSet) -> tuple[str, ...]:
        """The files a loader reads for this weight set: the single file, else the index's shards."""
        if weight_set.single:
            return (weight_set.single,)
        index = self.indexes.get(weight_set.index) if weight_set.index else None
        if index is not None:
            return tuple(n for n in index.shard_names if n not in self.unsafe_names)
        return weight_set.shard_files

    def layout(self) -> Layout:
        """The contract's layout object: format, sharded, index and the shards loaders read."""
        chosen = self.folder.loaded_set
        shards = self.shards_of(chosen) if chosen else ()
        return Layout(
            format=self.folder.weight_format,
            sharded=bool(chosen and not chosen.single and (chosen.index or len(shards) > 1)),
            index=chosen.index if chosen and not chosen.single else None,
            shards=tuple(shards),
            files=self.folder.files,
        )

    def summary(self) -> Summary:
        """Tensor count, parameters and bytes of the weights loaders pick."""
        tensors = self.loaded_tensors.values()
        files = self._loaded_files().values()
        if len(tensors) == sum(len(wf.tensors) for wf in files):
            # No name in two files: the files' own sums (made in passing by their readers, or in C).
            return Summary(tensors=len(tensors), parameters=sum(wf.tensor_numel for wf in files),
                           bytes=sum(wf.tensor_nbytes for wf in files))
        numels = list(map(math.prod, map(_SHAPE, tensors)))
        return Summary(tensors=len(tensors), parameters=sum(numels),
                       bytes=total_nbytes(list(map(_DTYPE, tensors)), numels))

    @cached_property
    def loaded_dtype_counts(self) -> Counter[str]:
        """How many loaded tensors each dtype has (counted in C: 100,000s in the largest folders)."""
        return Counter(map(_DTYPE, self.loaded_tensors.values()))

    @cached_property
    def loaded_tensors(self) -> dict[str, TensorMeta]:
        """Tensors of the weight set loaders pick, by name (first shard wins on duplicates)."""
        files = [wf.tensors for wf in self._loaded_files().values()]
        return _first_wins(files, files)

    @cached_property
    def tensor_files(self) -> dict[str, str]:
        """Tensor name -> the shard of the loaded set holding it."""
        loaded = self._loaded_files()
        return _first_wins([wf.tensors for wf in loaded.values()],
                           [dict.fromkeys(wf.tensors, shard) for shard, wf in loaded.items()])

    def file_of(self, name: str) -> str | None:
        """The shard of the loaded set holding ``name`` (the first one), or None: one lookup per
        shard, for the few names a finding points at, where ``tensor_files`` (a map of every
        tensor) would cost more to build than it saves."""
        if "tensor_files" in self.__dict__:  # built already
            return self.tensor_files.get(name)
        return next((shard for shard, wf in self._loaded_files().items() if name in wf.tensors), None)

    def _loaded_files(self) -> dict[str, WeightFile]:
        """The read weight files of the set loaders pick, in shard order."""
        chosen = self.folder.loaded_set
        if chosen is None:
            return {}
        return {shard: self.weights[shard] for shard in self.shards_of(chosen) if shard in self.weights}


_SHAPE = attrgetter("shape")
_DTYPE = attrgetter("dtype")
_V = TypeVar("_V")


def _first_wins(keys: list[dict[str, TensorMeta]], values: list[dict[str, _V]]) -> dict[str, _V]:
    """``values`` merged in order, the first of a name kept (``keys`` holds each one's names).

    dict.update in C when no name repeats across files (the rule: a name the index puts in one
    shard), else one setdefault per name, which keeps the first shard's tensor and its place.
    """
    merged: dict[str, _V] = {}
    for part in values:
        merged.update(part)
    if len(merged) == sum(map(len, keys)):
        return merged
    merged = {}
    for part in values:
        for name, value in part.items():
            merged.setdefault(name, value)
    return merged


def read_contents(folder: ModelFolder, options: CheckOptions | None = None) -> FolderContents:
    """Parse the JSON files, the indexes and every weight file's header of ``folder``.

    Args:
        folder: the discovered folder.
        options: passed through to the checks.

    Returns:
        FolderContents with parse results and parse errors.
    """
    contents = FolderContents(folder=folder, options=options or CheckOptions())
    # 1. JSON metadata files.
    for name in JSON_FILES:
        if folder.has(name):
            _read_json(contents, name)
    # 2. Indexes, and which shard names are safe to open.
    for weight_set in folder.weight_sets.values():
        if weight_set.index:
            _read_index(contents, weight_set.index)
    # 3. Weight headers: every file named like weights, plus every safe shard an index names.
    to_read: dict[str, None] = {}
    for weight_set in folder.weight_sets.values():
        for member in (weight_set.single, *weight_set.shard_files):
            if member:
                to_read[member] = None
        index = contents.indexes.get(weight_set.index) if weight_set.index else None
        if index is not None:
            for shard in index.shard_names:
                if shard not in contents.unsafe_names and folder.has(shard):
                    to_read[shard] = None
    # The loaded set's files first, so that a cap hit leaves out files no loader reads.
    chosen = folder.loaded_set
    first = dict.fromkeys(n for n in contents.shards_of(chosen) if n in to_read) if chosen is not None else {}
    ordered = [*first, *(n for n in to_read if n not in first)]
    for count, name in enumerate(n for n in ordered if n not in contents.unsafe_names):
        if count >= MAX_WEIGHT_FILES:
            contents.unread_weights.append(name)
        else:
            _read_weights(contents, name)
    return contents


MAX_INDEX_SHARDS = 100_000
"""Distinct shard files one index may name; past it the index is refused unchecked (HFC311)."""
MAX_WEIGHT_FILES = 10_000
"""Weight files whose headers one run reads. The largest published checkpoints have a few
thousand shards; a folder of 100,000 empty shard files would otherwise cost minutes. Files past
the cap are listed in ``FolderContents.unread_weights`` and reported (HFC310)."""


PYTHON_READ_JSON = frozenset(JSON_FILES) - {"tokenizer.json"}
"""Metadata only Python's ``json`` reads (transformers, peft): it accepts Infinity, and
``json.dumps`` writes it (transformers 4.x: Mamba2's ``time_step_limit`` [0.0, Infinity]).
tokenizer.json is read by the Rust tokenizers library (serde_json), which refuses them."""


def _read_json(contents: FolderContents, name: str) -> None:
    path = contents.folder.path(name)
    if not _inside(contents.folder, name):
        contents.json_errors[name] = FormatError("HFC006", f"{link_problem(path)}; not read")
        return
    if link_problem(path).startswith("is a dangling"):  # inside the folder, but the target is missing
        contents.json_errors[name] = FormatError("HFC008", f"{link_problem(path)}; not read")
        return
    try:
        contents.json[name] = load_json_file(path, allow_nonfinite=name in PYTHON_READ_JSON)
    except (JsonError, FormatError) as exc:
        contents.json_errors[name] = exc


def _read_index(contents: FolderContents, name: str) -> None:
    _read_json(contents, name)
    if name in contents.json_errors:
        contents.index_errors[name] = getattr(contents.json_errors[name], "message", str(contents.json_errors[name]))
        return
    data = contents.json[name]
    weight_map = data.get("weight_map")
    # Value types in C (100,000s of entries in the largest indexes); JSON keys are plain str.
    if not isinstance(weight_map, dict) or not set(map(type, weight_map.values())) <= {str}:
        contents.index_errors[name] = "has no 'weight_map' object mapping tensor names to shard file names"
        return
    shards = set(weight_map.values())
    distinct = len(shards)
    if distinct > MAX_INDEX_SHARDS:
        contents.index_errors[name] = (f"names {distinct:,} distinct shard files, more than hfconv checks "
                                       f"({MAX_INDEX_SHARDS:,}, MAX_INDEX_SHARDS; the Hub's 5-digit shard names "
                                       "stop at 99,999); it was not checked")
        contents.index_error_codes[name] = "HFC311"
        return
    # One string per shard name, not one per entry: 100,000s of entries in the largest indexes
    # (DeepSeek-V3: 6 MB less for 16 ms). (A tensor name the index and a shard both hold stays two
    # strings: sharing them saved 7 MB more but cost 25 ms there.)
    shard_of = {shard: shard for shard in shards}
    weight_map.update(zip(list(weight_map), map(shard_of.__getitem__, list(weight_map.values()))))
    metadata = data.get("metadata")
    index = IndexFile(name=name, weight_map=weight_map, metadata=metadata if isinstance(metadata, dict) else {})
    contents.indexes[name] = index
    for shard in index.shard_names:
        if not contents.folder.contains_safe_name(shard):
            contents.unsafe_names[shard] = name


def _inside(folder: ModelFolder, name: str) -> bool:
    return folder.contains(name)


def _read_weights(contents: FolderContents, name: str) -> None:
    if contents.folder.is_special(name):
        contents.weight_errors[name] = FormatError("HFC008", "is not a regular file (FIFO, device or socket); refused")
        return
    if not _inside(contents.folder, name):
        contents.weight_errors[name] = FormatError("HFC006", f"{link_problem(contents.folder.path(name))}; not read")
        return
    if contents.folder.is_symlink(name) and \
            (problem := link_problem(contents.folder.path(name))).startswith("is a dangling"):
        # inside the folder, but the target is missing
        contents.weight_errors[name] = FormatError("HFC008", f"{problem}; not read")
        return
    try:
        contents.weights[name] = read_weight_file(contents.folder.path(name))
    except FormatError as exc:
        contents.weight_errors[name] = exc
    except (OSError, MemoryError, RecursionError, ValueError) as exc:
        # Readers raise FormatError by contract; anything else is a reader bug, still reported
        # as data so that one file never stops the run.
        contents.weight_errors[name] = FormatError("HFC008", f"could not be read: {exc}")
