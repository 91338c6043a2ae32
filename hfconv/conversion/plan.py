"""The pure planner: everything ``convert`` will write, decided from the parsed folder alone.

No tensor bytes are read and nothing is written: :func:`plan_conversion` turns SRC's
``FolderContents`` into a :class:`ConversionPlan` (the ordered tensors with their source
byte ranges, aliases resolved, output dtypes, shards with their headers, files to copy).
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..contents import FolderContents
from ..discovery import ADAPTER, TRAINING_LEFTOVERS, ModelFolder, WeightSet, parse_shard_name
from ..dtypes import CAST_TARGET, CASTABLE, nbytes
from ..findings import Finding, finding
from ..fsutil import is_safe_relative_name
from ..readers.safetensors_header import MAX_HEADER_BYTES
from ..sharding import plan_shards, shard_file_name
from ..tensor_bytes import LocateError, StorageRecord, file_order, locate, storage_records
from ..tensors import TensorMeta, WeightFile
from ..units import plural
from .errors import InputRefused

__all__ = ["PlannedTensor", "ShardPlan", "ConversionPlan", "build_header", "data_phase", "plan_conversion"]


_PAGE = mmap.PAGESIZE


_METADATA_DROPPED = "hfconv_dropped_aliases"


_METADATA_COPIED = "hfconv_copied_aliases"


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor and where its bytes come from."""

    name: str
    shape: tuple[int, ...]
    source_dtype: str
    dtype: str
    """Output dtype (safetensors name); differs from ``source_dtype`` when cast."""
    source_path: str
    """The source file to open."""
    source_file: str
    """The source file's name relative to SRC (for messages)."""
    offset: int
    """Absolute byte offset of the view's first element in the source file."""
    stride: tuple[int, ...] | None = None
    """Element strides of a non-contiguous ``.bin`` view; None when contiguous."""
    span_end: int = 0
    """End (exclusive) of the source bytes the view touches."""
    byteswap: bool = False
    """The source is big-endian (a ``.bin`` saved on such a machine): bytes are swapped on the way."""
    record: StorageRecord | None = None
    """The ``.bin`` storage whose recorded CRC-32 is checked when this tensor is verified (set on
    the first planned tensor of each storage; None for the others and for safetensors)."""

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.numel)

    @property
    def action(self) -> str:
        """``copy`` (bytes move unchanged), ``reorder`` (strided view or byte swap) or ``cast``."""
        if self.dtype != self.source_dtype:
            return "cast"
        return "copy" if self.stride is None and not self.byteswap else "reorder"


@dataclass(frozen=True)
class ShardPlan:
    """One output shard: its file name, tensors in file order and header metadata."""

    name: str
    tensors: tuple[PlannedTensor, ...]
    metadata: Mapping[str, str]
    data_phase: int | None = None
    """Offset of the data section within a page (a multiple of 8; see :func:`data_phase`), or
    None for the plain 8-byte alignment."""

    @property
    def data_nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def header(self) -> bytes:
        """The 8-byte length + JSON header, exactly as the file starts."""
        return build_header(self.tensors, self.metadata, self.data_phase)

    @property
    def file_nbytes(self) -> int:
        return len(self.header) + self.data_nbytes


@dataclass(frozen=True)
class ConversionPlan:
    """Everything convert will write, decided before a byte is written."""

    shards: tuple[ShardPlan, ...]
    dropped_aliases: Mapping[str, str]
    """alias -> the tensor kept in its place."""
    copied_aliases: Mapping[str, str]
    """tensor written as its own copy -> the tensor it shared a storage with."""
    files_to_copy: tuple[str, ...]
    files_skipped: Mapping[str, str]
    """file -> why it is not copied."""
    config_json: bytes | None
    """New config.json content when casting, else None (config copied unchanged)."""
    findings: tuple[Finding, ...]
    dtype: str

    @property
    def tensors(self) -> list[PlannedTensor]:
        return [t for shard in self.shards for t in shard.tensors]

    @property
    def total_size(self) -> int:
        """Sum of output tensor bytes: the index's ``metadata.total_size``."""
        return sum(shard.data_nbytes for shard in self.shards)

    @property
    def is_sharded(self) -> bool:
        return len(self.shards) > 1

    def index_json(self) -> bytes:
        weight_map = {t.name: shard.name for shard in self.shards for t in shard.tensors}
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        return (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def build_header(tensors: Sequence[PlannedTensor], metadata: Mapping[str, str], phase: int | None = None) -> bytes:
    """A safetensors header: little-endian u64 length, then JSON padded with spaces.

    ``__metadata__`` comes first, then the tensors in data order with ``data_offsets``
    relative to the data section, as the safetensors library writes them. The JSON is padded
    with spaces (valid JSON whitespace, as safetensors pads) so that the data section starts
    8-byte aligned and, when ``phase`` is given, at offset ``phase`` within a page (at most
    one page of padding), so that tensors can be copied page-for-page from their source.
    """
    if phase is not None and phase % 8:
        raise ValueError(f"data phase {phase} is not a multiple of 8")
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for t in tensors:
        size = t.nbytes
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    padded = len(text) + (-len(text) % 8)
    if phase is not None:
        padded += (phase - 8 - padded) % _PAGE
    text += b" " * (padded - len(text))
    return struct.pack("<Q", len(text)) + text


def data_phase(tensors: Sequence[PlannedTensor]) -> int | None:
    """The in-page offset for a shard's data section that lets the most bytes be copied page-aligned.

    A tensor copied unchanged moves fastest (and can share extents) when its offset within a
    page is the same in the source and the output. Tensors are packed back to back, so one
    choice of the data section's phase fixes all of them: pick the phase that suits the most
    bytes. For a safetensors source every tensor of one source file agrees; for ``.bin`` each
    zip record has its own phase. None (no extra padding) when nothing gains.
    """
    votes: dict[int, int] = {}
    before = 0
    for t in tensors:
        if t.action == "copy" and t.nbytes >= _PAGE:
            phase = (t.offset - before) % _PAGE
            if phase % 8 == 0:
                votes[phase] = votes.get(phase, 0) + t.nbytes
        before += t.nbytes
    if not votes:
        return None
    return max(votes.items(), key=lambda item: (item[1], -item[0]))[0]


def _refuse(message: str, cause: Finding | None = None) -> InputRefused:
    found = (finding("HFC704", message),) + ((cause,) if cause is not None else ())
    return InputRefused("HFC704", message, found)


def _ordered_source_files(contents: FolderContents, weight_set: WeightSet) -> list[str]:
    """The files loaders read for ``weight_set``, in shard-number order where names say it."""
    names = list(contents.shards_of(weight_set))
    parsed = [parse_shard_name(n, weight_set.format) for n in names]
    if len(names) > 1 and all(parsed):
        names = [p.name for p in sorted(parsed, key=lambda p: p.number)]  # type: ignore[union-attr]
    return names


def _check_sources(contents: FolderContents, weight_set: WeightSet | None) -> list[str]:
    """Refuse what would lose tensors or run code; return the source files in order."""
    folder = contents.folder
    if weight_set is None:
        raise _refuse("no weight files found (expected model.safetensors, pytorch_model.bin or shards)")
    if folder.truncated_listing or folder.too_deep:
        # A listing cap hid files: DST would silently lack them (and they were never checked).
        raise _refuse("SRC holds more files, or deeper folders, than hfconv lists (HFC015/HFC016): the files past "
                      "the cap were neither checked nor would be copied")
    for name, index in contents.unsafe_names.items():
        if index == weight_set.index:
            raise _refuse(f"{index} names shard {name!r}, which is not a plain file name inside the folder")
    if weight_set.index and not weight_set.single and weight_set.index not in contents.indexes:
        reason = contents.index_errors.get(weight_set.index, "cannot be parsed")
        if not weight_set.shard_files:
            raise _refuse(f"{weight_set.index} {reason}, and no shards are on disk")
    files = _ordered_source_files(contents, weight_set)
    if not files:
        raise _refuse(f"{weight_set.index or weight_set.format} names no weight files")
    for name in files:
        error = contents.weight_errors.get(name)
        if error is not None:
            cause = finding(error.code, f"{name}: {error.message}", file=name, tensor=error.tensor)
            raise _refuse(f"{name} cannot be converted: the reader refused it with {error.code}", cause)
        if not folder.has(name):
            raise _refuse(f"{name} is named by {weight_set.index} but missing: its tensors would be lost")
        if name not in contents.weights:
            raise _refuse(f"{name} could not be read")
    if not weight_set.single and (weight_set.index is None or weight_set.index not in contents.indexes):
        # Shards without a (usable) index: the set on disk must be complete and consistent.
        parsed = [parse_shard_name(n, weight_set.format) for n in files]
        totals = {p.total for p in parsed if p}
        numbers = sorted(p.number for p in parsed if p)
        if len(totals) != 1 or numbers != list(range(1, next(iter(totals)) + 1)):
            raise _refuse(f"the {weight_set.format} shards on disk ({', '.join(files)}) do not form one "
                          "complete numbered set: tensors would be lost")
    return files


def _view_key(meta: TensorMeta) -> tuple:
    return (meta.storage_key, meta.dtype, meta.shape, meta.storage_offset, meta.stride)


def _locate(meta: TensorMeta, weight_file: WeightFile, rel: str, path: str, out_dtype: str) -> PlannedTensor:
    """Where a tensor's bytes are in its source file (bounds re-checked here)."""
    try:
        span = locate(meta, weight_file)
    except LocateError as exc:
        raise _refuse(f"{rel}: {exc}") from None
    return PlannedTensor(meta.name, meta.shape, meta.dtype, out_dtype, path, rel, span.begin, span.stride,
                         span.end, span.byteswap)


def plan_conversion(contents: FolderContents, max_shard_size: int, dtype: str = "keep") -> ConversionPlan:
    """Decide everything convert will write, from the parsed folder alone (no tensor bytes).

    Args:
        contents: ``read_contents`` of SRC.
        max_shard_size: shard limit in bytes.
        dtype: ``keep`` or a :data:`DTYPE_CHOICES` name to cast floating tensors to.

    Returns:
        The ConversionPlan.

    Raises:
        InputRefused: a weight file the loader reads is broken, hostile or missing, two files
            hold one tensor name, or nothing is left to convert.
    """
    # 1. The source files, refused when tensors would be lost or code run.
    weight_set = contents.folder.loaded_set
    files = _check_sources(contents, weight_set)
    assert weight_set is not None
    notes: list[Finding] = []
    # 2. Tensors in order: shard order, then file order; aliases resolved per storage.
    planned, dropped, copied = _plan_tensors(contents, files, CAST_TARGET.get(dtype), notes)
    # 3. The shard plan (sizes only) and each shard's header metadata.
    shards = _plan_shards(planned, weight_set, max_shard_size, dropped, copied)
    # 4. Files: copy every non-weight file; skip weights, indexes, leftovers, unsafe files.
    to_copy, skipped = _plan_files(contents, weight_set, files, notes)
    # 5. config.json: torch_dtype (and dtype) follow a cast.
    config_json = _plan_config(contents, dtype, sum(1 for t in planned if t.action == "cast"), notes)
    # 6. Index-vs-shard disagreements are repaired: the new index lists what the shards hold.
    disagreements = sorted({f.code for f in _index_findings(contents)})
    if disagreements:
        notes.append(finding("HFC712", f"source index disagrees with the shards ({', '.join(disagreements)}); "
                             "the new index lists what the shards hold", file=weight_set.index))
    return ConversionPlan(tuple(shards), dropped, copied, tuple(to_copy), skipped, config_json, tuple(notes),
                          dtype)


def _plan_tensors(contents: FolderContents, files: list[str], target: str | None, notes: list[Finding]
                  ) -> tuple[list[PlannedTensor], dict[str, str], dict[str, str]]:
    """Every output tensor in order, with the aliases dropped and copied (HFC702/703 noted)."""
    folder = contents.folder
    config = contents.config
    tied = bool(config and config.get("tie_word_embeddings") is True)
    planned: list[PlannedTensor] = []
    owner: dict[str, str] = {}
    dropped: dict[str, str] = {}
    copied: dict[str, str] = {}
    for rel in files:
        weight_file = contents.weights[rel]
        path = str(folder.path(rel))
        # Each storage's CRC-32 is checked once, with the first tensor written from it.
        records = {r.key: r for r in storage_records(weight_file) if r.crc32 is not None} \
            if weight_file.format != "safetensors" else {}
        groups = weight_file.aliases  # storage key -> names, only keys used more than once
        for meta in file_order(weight_file):
            if meta.name in owner:
                raise _refuse(f"tensor {meta.name!r} is stored in both {owner[meta.name]} and {rel}; "
                              "which one loads is undefined")
            owner[meta.name] = rel
            if meta.name == "__metadata__":
                raise _refuse(f"{rel}: a tensor named '__metadata__' cannot be stored in safetensors")
            group = groups.get(meta.storage_key or "") if meta.storage_key else None
            if group:
                kept = _alias_partner(meta, group, weight_file, tied)
                if kept is not None:
                    dropped[meta.name] = kept
                    notes.append(finding("HFC702", f"{meta.name} shares its storage with {kept} and "
                                         "tie_word_embeddings is true: dropped (transformers re-ties it on load)",
                                         file=rel, tensor=meta.name))
                    continue
                # Every tensor of the group after the first kept one is written as its own copy.
                first = next((n for n in group if n not in dropped and n != meta.name), None)
                if first is not None and group.index(first) < group.index(meta.name):
                    copied[meta.name] = first
                    notes.append(finding("HFC703", f"{meta.name} shares its storage with {first}: written as "
                                         "its own copy", file=rel, tensor=meta.name))
            out_dtype = target if (target and meta.dtype in CASTABLE) else meta.dtype
            located = _locate(meta, weight_file, rel, path, out_dtype)
            record = records.pop(meta.storage_key, None) if meta.storage_key is not None else None
            planned.append(located if record is None else replace(located, record=record))
    if not planned:
        raise _refuse("the weight files hold no tensors")
    return planned, dropped, copied


def _plan_shards(planned: list[PlannedTensor], weight_set: WeightSet, max_shard_size: int,
                 dropped: Mapping[str, str], copied: Mapping[str, str]) -> list[ShardPlan]:
    """The output shards: names, tensors and header metadata (the alias maps)."""
    by_name = {t.name: t for t in planned}
    if weight_set.single in ADAPTER.values():
        # PEFT reads one adapter_model.safetensors and knows no shards or index.
        named_groups = [(ADAPTER["safetensors"], [t.name for t in planned])]
    else:
        groups = plan_shards([(t.name, t.nbytes) for t in planned], max_shard_size)
        named_groups = [(shard_file_name(i, len(groups)), names) for i, names in enumerate(groups, start=1)]
    metadata = {"format": "pt"}
    if dropped:
        metadata[_METADATA_DROPPED] = json.dumps(dropped, sort_keys=True, ensure_ascii=False)
    if copied:
        metadata[_METADATA_COPIED] = json.dumps(copied, sort_keys=True, ensure_ascii=False)
    shards = []
    for name, names in named_groups:
        tensors = tuple(by_name[n] for n in names)
        shards.append(ShardPlan(name, tensors, metadata, data_phase(tensors)))
    for shard in shards:
        if len(shard.header) - 8 > MAX_HEADER_BYTES:
            raise _refuse(f"{shard.name} would need a header over 100 MB; use a smaller max_shard_size")
    return shards


def _plan_files(contents: FolderContents, weight_set: WeightSet, files: list[str], notes: list[Finding]
                ) -> tuple[list[str], dict[str, str]]:
    """The non-weight files to copy, and every file skipped with why (HFC707/708/711 noted)."""
    folder = contents.folder
    weight_names: dict[str, str] = {}
    for other in folder.weight_sets.values():
        for name in (other.single, other.index, *other.shard_files):
            if name:
                weight_names[name] = "is a weight file of another format" if other is not weight_set else ""
    for name in files:
        weight_names[name] = ""
    if weight_set.index:
        weight_names[weight_set.index] = ""
    to_copy: list[str] = []
    skipped: dict[str, str] = {}
    for name in folder.files:
        if name in weight_names:
            reason = weight_names[name]
            if not reason and weight_set.single and name != weight_set.single:
                reason = f"is not loaded ({weight_set.single} is)"
            elif not reason and name not in files and name != weight_set.index:
                reason = f"is not referenced by {weight_set.index or 'the loaded weights'}"
            if reason:
                skipped[name] = f"{reason}: not converted or copied"
                notes.append(finding("HFC711", f"{name} {skipped[name]}", file=name))
            continue
        if os.path.basename(name) in TRAINING_LEFTOVERS:
            skipped[name] = "is a training leftover: not copied"
            notes.append(finding("HFC708", f"{name} {skipped[name]}", file=name))
            continue
        problem = _uncopyable(folder, name)
        if problem:
            skipped[name] = problem
            notes.append(finding("HFC707", f"{name} {problem}", file=name))
            continue
        to_copy.append(name)
    return to_copy, skipped


def _plan_config(contents: FolderContents, dtype: str, cast_count: int, notes: list[Finding]) -> bytes | None:
    """The new config.json when casting (HFC709), else None; HFC710 when it cannot be updated."""
    if not CAST_TARGET.get(dtype):
        return None
    config = contents.config
    if config is None:
        why = "is missing" if not contents.folder.has("config.json") else "could not be parsed"
        notes.append(finding("HFC710", f"config.json {why}: torch_dtype not updated to {dtype} "
                             f"({plural(cast_count, 'tensor')} cast)", file="config.json"))
        return None
    updated = dict(config)
    # The key(s) the config already uses: transformers 5 writes `dtype`, older versions
    # `torch_dtype`; a config with neither gets `torch_dtype`, which both read.
    keys = [k for k in ("dtype", "torch_dtype") if k in updated] or ["torch_dtype"]
    for key in keys:
        updated[key] = dtype
    notes.append(finding("HFC709", f"{plural(cast_count, 'tensor')} cast to {dtype}; config.json "
                         f"{' and '.join(keys)} set to {dtype}", file="config.json"))
    return (json.dumps(updated, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _index_findings(contents: FolderContents) -> list[Finding]:
    from ..checks.index import check_index

    return [f for f in check_index(contents) if f.code in ("HFC301", "HFC302", "HFC303")]


def _alias_partner(meta: TensorMeta, group: list[str], weight_file: WeightFile, tied: bool) -> str | None:
    """The tensor ``meta`` may be dropped in favour of: only a tied ``lm_head.weight``.

    transformers re-ties ``lm_head.weight`` to the input embedding when config.json says
    ``tie_word_embeddings``; any other alias has no one to re-create it, so it is copied.
    """
    if not tied or meta.name != "lm_head.weight":
        return None
    for other in group:
        if other != meta.name and _view_key(weight_file.tensors[other]) == _view_key(meta):
            return other
    return None


def _uncopyable(folder: ModelFolder, name: str) -> str | None:
    """Why a non-weight file must not be copied, or None."""
    if not is_safe_relative_name(name):
        return "has an unsafe name: not copied"
    if name in folder.special_files:
        return "is not a regular file (FIFO, device or socket): not copied"
    path = folder.path(name)
    if path.is_symlink() and not folder.contains(name):
        return "is a symlink pointing outside the model folder: not copied"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "is a broken symlink: not copied"
    if not stat.S_ISREG(mode):
        return "is not a regular file: not copied"
    return None
