"""``convert``: a model folder (``.bin`` or safetensors) -> a verified safetensors folder.

Plan, then execute (STYLE habit 6):

1. read: discover SRC and parse every header/pickle with the restricted readers; refuse
   (:class:`InputRefused`) when a weight file the loader would read is broken or hostile;
2. plan: the ordered tensor list, alias resolution, output dtypes, shard plan
   (:func:`hfconv.sharding.plan_shards`) and the files to copy -- sizes only, no bytes;
3. check the free disk space;
4. write each output shard into a temporary folder beside DST: header, then every tensor's
   bytes straight out of the source file (``.bin`` storages are stored uncompressed and
   little-endian: byte for byte what safetensors stores) -- kernel-side with
   ``copy_file_range`` where source and output agree on the offset within a page, else
   through one reused 1 MiB buffer; numpy gathers non-contiguous views and swaps the
   bytes of a big-endian checkpoint; torch, imported only then, casts;
5. copy the non-weight files, write the index and, when casting, the updated config.json;
6. verify, on a second thread right behind the writer: every tensor's output bytes against
   the source's byte range (both memory-mapped, compared in C, a 4 MiB window at a time) or
   against its transform recomputed from the source; every ``.bin`` storage against the
   CRC-32 torch.save recorded (on the same windows when a tensor is its whole storage); every
   header as planned; then ``validate`` the folder: any error fails the conversion (HFC706
   new, HFC713 already in SRC) unless ``allow_invalid_output``;
7. with ``--fsync``, fsync (writeback is started as the bytes are written, so this waits for
   the tail only); then rename the temporary folder to DST. Any exception (a crash in a step, a full disk,
   Ctrl-C, SIGTERM via the CLI) removes the temporary folder, so DST is either complete or
   absent, and SRC is only ever opened for reading: each source file once, never through a
   symlink out of SRC (:func:`hfconv.fsutil.open_inside`).

Peak anonymous memory follows the largest tensor that needs transforming (at most one is
in memory at a time), never a shard or the model: copied tensors move page cache to page
cache and verification reads through ``mmap`` windows it releases as it goes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import shutil
import stat
import struct
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .contents import FolderContents, read_contents
from .discovery import ADAPTER, TRAINING_LEFTOVERS, WeightSet, discover, parse_shard_name
from .dtypes import itemsize, nbytes, swap_unit
from .findings import Finding, finding, register
from .fsutil import is_safe_relative_name, open_inside
from .readers.safetensors_header import MAX_HEADER_BYTES, read_safetensors
from .sharding import INDEX_FILE, parse_size, plan_shards, shard_file_name
from .tensor_bytes import (
    LocateError,
    SourceEnded,
    StorageRecord,
    copy_range,
    file_order,
    locate,
    storage_records,
    write_all,
)
from .tensors import FormatError, TensorMeta, WeightFile
from .units import human_bytes
from .validation import UsageError, check_contents

__all__ = [
    "convert", "ConversionResult", "ShardInfo", "ValidationSummary", "ConversionError",
    "InputRefused", "VerificationError", "DestinationExistsError", "plan_conversion",
    "ConversionPlan", "ShardPlan", "PlannedTensor", "build_header", "data_phase", "DTYPE_CHOICES",
    "DTYPE_ALIASES", "canonical_dtype",
    "MANIFEST_FORMAT",
]

# --- HFC7xx: conversion ----------------------------------------------------------------------
register("HFC701", "error", "conversion mismatch",
         "An output tensor's bytes (or header entry) differ from the source tensor (or its cast): "
         "the converted folder would load different weights. Nothing was written to DST.",
         "Re-run the conversion; if it persists, check the disk and memory of the machine, and "
         "report the tensor named.",
         "model.layers.0.mlp.up_proj.weight: output bytes differ from the source "
         "(pytorch_model-00001-of-00002.bin)")
register("HFC702", "info", "tied alias dropped",
         "safetensors cannot store two names for one storage. config.json says "
         "tie_word_embeddings, so lm_head.weight is left out and transformers re-ties it to the "
         "embedding on load, as save_pretrained does.",
         "Nothing to do; the alias map is recorded in each shard's __metadata__.",
         "lm_head.weight shares its storage with model.embed_tokens.weight and "
         "tie_word_embeddings is true: dropped (transformers re-ties it on load)")
register("HFC703", "info", "shared storage copied",
         "Several tensors of the .bin share one storage and nothing says the model re-ties them, "
         "so each is written as its own copy: nothing is lost, the output is a little larger.",
         "Nothing to do. If the model ties these weights, set tie_word_embeddings in config.json "
         "and convert again to drop the copy.",
         "lm_head.weight shares its storage with model.embed_tokens.weight: written as its own copy")
register("HFC704", "error", "input refused",
         "A weight file the loader would read is broken, hostile or missing, so the conversion "
         "would lose tensors or execute code. hfconv converts nothing and creates no DST.",
         "Fix or re-download the file named (see the finding quoted); never torch.load a file "
         "refused with HFC201.",
         "refused: pytorch_model.bin: pickle references forbidden global 'os.system' (HFC201)")
register("HFC705", "error", "not enough disk space",
         "The output needs more space than the file system holding DST has free; hfconv checks "
         "before writing rather than failing half-way.",
         "Free space, or choose a DST on another disk.",
         "DST needs 1.9 GB but only 1.2 GB is free on /data")
register("HFC706", "error", "output fails validation",
         "The converted folder has validation errors the source did not have; it was not "
         "renamed into place (DST was not created).",
         "Report it: this is a bug in hfconv. The finding quoted says what is wrong.",
         "output fails validation: HFC302 model-00001-of-00002.safetensors holds 'x', which the "
         "index does not list")
register("HFC707", "warning", "file not copied",
         "A non-weight file of SRC was not copied: a symlink pointing outside the folder (copying "
         "it would publish a file the model never shipped), a special file, or an unsafe name.",
         "Copy the file by hand if it belongs to the model.",
         "notes.txt is a symlink pointing outside the model folder: not copied")
register("HFC708", "info", "training file skipped",
         "Files a training run leaves behind (optimizer state, trainer state, RNG state, "
         "training_args.bin) are not part of the model; they are pickles and are not copied.",
         "Nothing to do.",
         "training_args.bin is a training leftover: not copied")
register("HFC709", "info", "dtype cast",
         "Floating tensors were cast to the requested dtype (integer, bool and float8 tensors "
         "are kept as they are) and config.json's torch_dtype was updated.",
         "Nothing to do.",
         "291 tensors cast to bfloat16; config.json torch_dtype set to bfloat16")
register("HFC710", "warning", "config dtype not updated",
         "The tensors were cast but config.json could not be parsed (or is missing), so its "
         "torch_dtype still names the old dtype.",
         "Fix config.json and set torch_dtype by hand.",
         "config.json is not valid JSON: torch_dtype not updated to float16")
register("HFC711", "info", "stale weights skipped",
         "Weight files no loader reads (the other format beside the loaded one, shards the index "
         "does not reference) are not converted and not copied.",
         "Nothing to do; they were dead weight.",
         "pytorch_model.bin is not loaded (model.safetensors is): not converted or copied")
register("HFC712", "warning", "index regenerated",
         "The source index disagreed with its shards (tensors missing, unlisted or in the wrong "
         "shard); the new index is built from the tensors the shards really hold.",
         "Check that no tensor is missing from the output (see the source findings quoted).",
         "source index disagrees with the shards (HFC301); the new index lists what the shards hold")

register("HFC713", "error", "output would be invalid",
         "The converted folder fails validation with errors the source already has (a tensor "
         "missing from a shard, a state dict saved with DDP's 'module.' prefix, a config.json that "
         "is not JSON, ...). A converted folder that does not load is not a successful conversion, "
         "so DST was not created. What convert repairs (an index regenerated from the shards) is "
         "not an error of the output.",
         "Fix the source as the findings listed say, then convert again. To salvage the tensors "
         "anyway, pass --allow-invalid-output: DST is then written, and the report and exit code "
         "(1) still say the output is invalid.",
         "the output would fail validation with 1 error already in the source (HFC602 "
         "model.layers.1.post_attention_layernorm.weight [16] is missing from the weights)")
register("HFC714", "error", "write failed",
         "Writing DST failed part-way: the disk filled up (ENOSPC), a quota or a file size limit was "
         "hit (EDQUOT, EFBIG), the device reported an I/O error (EIO), or the folder DST goes into "
         "is not writable. The temporary folder was removed; DST was not created.",
         "Free space (the report of a completed run gives the size), raise the quota or limit, or "
         "choose a DST on another disk; then convert again.",
         "no space left on device writing model-00002-of-00004.safetensors")
register("HFC715", "error", "source changed during conversion",
         "A file convert was about to read from SRC is no longer the regular file inside SRC that "
         "was planned: it became a symlink (possibly to a file outside the folder), a FIFO or a "
         "folder, or was removed. Every file is opened once, without following a symlink out of "
         "SRC, and checked on the opened descriptor, so nothing outside SRC is ever copied.",
         "Make sure nothing modifies SRC while converting (another process, a sync client), then "
         "convert again.",
         "note.txt changed during the conversion: 'note.txt' became a symlink or changed type while "
         "being read; refused")
register("HFC716", "error", "invalid output written",
         "--allow-invalid-output: DST was written although it fails validation (the errors are "
         "listed). It is a salvage copy, not a model that loads; the exit code is 1.",
         "Fix the errors listed in DST (or in SRC and convert again) before using or uploading it.",
         "output INVALID: /data/out fails validation with 2 errors (written anyway: "
         "--allow-invalid-output)")

DTYPE_CHOICES = ("keep", "float32", "float16", "bfloat16")
DTYPE_ALIASES = {
    "keep": "keep", "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}
"""Every name ``--dtype`` takes (convert and load-test share it): the canonical names and the
usual short ones (``bf16``, ``fp16``, ``half``, ``float``), case-insensitive, ``torch.`` allowed."""


def canonical_dtype(name: str | None) -> str:
    """``keep`` or a :data:`DTYPE_CHOICES` name for any :data:`DTYPE_ALIASES` spelling.

    Raises:
        UsageError: not a dtype name convert or load-test casts to.
    """
    if name is None:
        return "keep"
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPE_ALIASES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)} (or bf16, fp16, fp32, half, float), "
                         f"not {name!r}")
    return DTYPE_ALIASES[key]


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 tensor``, ``2 tensors`` (``many`` for irregular plurals)."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"

_TARGET_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_CASTABLE = frozenset({"F64", "F32", "F16", "BF16"})
"""Floating dtypes a --dtype cast applies to. float8 weights come with scales (quantized
models) and are left alone, as are complex, integer and bool tensors."""

MANIFEST_FORMAT = "hfconv-manifest/1"
_COPY_CHUNK = 64 << 20
"""Bytes a worker copies between two progress reports (copy_range's chunk)."""
_COMPARE_CHUNK = 4 << 20
"""Bytes compared per step (and the window of a mapping resident at a time)."""
_WRITEBACK_CHUNK = 64 << 20
"""Bytes written between two requests to start writeback (see _Writeback)."""
_VERIFY_BATCH = 64 << 20
"""Bytes written before they are handed to the verifying thread."""
_PAGE = mmap.PAGESIZE
_METADATA_DROPPED = "hfconv_dropped_aliases"
_METADATA_COPIED = "hfconv_copied_aliases"

ProgressCallback = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``: total_bytes is the model's tensor bytes; done_bytes
counts each one half written, half verified (all of it when written, with ``verify`` off)."""


# =============================================================================================
# errors
# =============================================================================================

class ConversionError(Exception):
    """The conversion ran and failed (exit 1); DST was not created.

    Attributes:
        code: the HFC7xx code.
        message: one human sentence.
        findings: the findings that explain it (e.g. the reader's HFC201).
    """

    def __init__(self, code: str, message: str, findings: Sequence[Finding] = ()):
        super().__init__(message)
        self.code = code
        self.message = message
        self.findings = tuple(findings) or (finding(code, message),)

    def __reduce__(self):
        # Raised in --jobs worker processes and re-raised in the parent: pickle all fields.
        return (type(self), (self.code, self.message, self.findings))


class InputRefused(ConversionError):
    """SRC holds a weight file hfconv will not convert (broken, hostile, missing)."""


class VerificationError(ConversionError):
    """The written output does not match the source, or fails validation."""


class DestinationExistsError(UsageError):
    """DST exists and ``force`` was not given (exit 2)."""


# =============================================================================================
# the plan: sizes and locations, no bytes
# =============================================================================================

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


# =============================================================================================
# the result
# =============================================================================================

@dataclass(frozen=True)
class ShardInfo:
    """One written shard."""

    name: str
    tensors: int
    bytes: int
    """File size (header + data)."""


@dataclass(frozen=True)
class ValidationSummary:
    """What ``validate`` said about the output folder."""

    errors: int = 0
    warnings: int = 0
    inherited_errors: int = 0
    """Errors the source folder already had (e.g. in its tokenizer files), not caused here."""
    codes: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    """The output's validation errors (only with ``allow_invalid_output``: else none)."""

    @property
    def valid(self) -> bool:
        return self.errors == 0

    def to_json(self) -> dict:
        return {"valid": self.valid, "errors": self.errors, "warnings": self.warnings,
                "inherited_errors": self.inherited_errors, "codes": list(self.codes),
                "findings": [f.to_json() for f in self.findings]}


@dataclass(frozen=True)
class ConversionResult:
    """What ``convert`` wrote, and how it checked it."""

    src: str
    dst: str
    tensors: int
    """Tensors written."""
    bytes: int
    """Tensor bytes written (the index's ``total_size``)."""
    shards: tuple[ShardInfo, ...]
    dtype: str
    """``keep`` or the dtype floating tensors were cast to."""
    cast: int
    """Tensors cast."""
    dropped_aliases: Mapping[str, str]
    """alias -> kept tensor; absent from the output, re-tied by transformers on load."""
    copied_aliases: Mapping[str, str]
    """tensor written as its own copy -> the tensor it shared a storage with in the source."""
    files_copied: tuple[str, ...]
    files_skipped: Mapping[str, str]
    seconds: float
    verified: bool
    """Every tensor compared byte for byte with its source and the output validated."""
    validation: ValidationSummary | None
    findings: tuple[Finding, ...]
    manifest: str | None = None
    durable: bool = False
    """Every file and folder was fsynced before DST appeared (``--fsync``)."""

    @property
    def is_sharded(self) -> bool:
        return len(self.shards) > 1

    @property
    def index(self) -> str | None:
        return INDEX_FILE if self.is_sharded else None

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """False when the output was written although it fails validation (--allow-invalid-output)."""
        return self.validation is None or self.validation.valid

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "output_valid": self.validation.valid if self.validation is not None else None,
            "src": self.src,
            "dst": self.dst,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "shards": [{"name": s.name, "tensors": s.tensors, "bytes": s.bytes} for s in self.shards],
            "index": self.index,
            "dtype": self.dtype,
            "cast": self.cast,
            "dropped_aliases": dict(self.dropped_aliases),
            "copied_aliases": dict(self.copied_aliases),
            "files_copied": list(self.files_copied),
            "files_skipped": dict(self.files_skipped),
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 1),
            "verified": self.verified,
            "validation": self.validation.to_json() if self.validation else None,
            "manifest": self.manifest,
            "durable": self.durable,
            "findings": [f.to_json() for f in self.findings],
        }


# =============================================================================================
# step 1-2: read and plan
# =============================================================================================

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
    folder = contents.folder
    weight_set = folder.loaded_set
    files = _check_sources(contents, weight_set)
    assert weight_set is not None
    notes: list[Finding] = []
    target = _TARGET_DTYPE.get(dtype)
    config = contents.config
    tied = bool(config and config.get("tie_word_embeddings") is True)

    # 2a. Tensors in order: shard order, then file order; aliases resolved per storage.
    planned: list[PlannedTensor] = []
    owner: dict[str, str] = {}
    dropped: dict[str, str] = {}
    copied: dict[str, str] = {}
    for rel in files:
        weight_file = contents.weights[rel]
        path = str(folder.path(rel))
        ordered = file_order(weight_file)
        # Each storage's CRC-32 is checked once, with the first tensor written from it.
        records = {r.key: r for r in storage_records(weight_file) if r.crc32 is not None} \
            if weight_file.format != "safetensors" else {}
        groups = weight_file.aliases  # storage key -> names, only keys used more than once
        for meta in ordered:
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
            out_dtype = target if (target and meta.dtype in _CASTABLE) else meta.dtype
            located = _locate(meta, weight_file, rel, path, out_dtype)
            record = records.pop(meta.storage_key, None) if meta.storage_key is not None else None
            planned.append(located if record is None else replace(located, record=record))
    if not planned:
        raise _refuse("the weight files hold no tensors")

    # 2b. The shard plan (sizes only) and each shard's header metadata.
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
            raise _refuse(f"{shard.name} would need a header over 100 MB; use a smaller --max-shard-size")

    # 2c. Files: copy every non-weight file; skip weights, indexes, leftovers, unsafe files.
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

    # 2d. config.json: torch_dtype (and dtype) follow a cast.
    config_json: bytes | None = None
    cast_count = sum(1 for t in planned if t.action == "cast")
    if target:
        if config is not None:
            updated = dict(config)
            # The key(s) the config already uses: transformers 5 writes `dtype`, older versions
            # `torch_dtype`; a config with neither gets `torch_dtype`, which both read.
            keys = [k for k in ("dtype", "torch_dtype") if k in updated] or ["torch_dtype"]
            for key in keys:
                updated[key] = dtype
            config_json = (json.dumps(updated, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
            notes.append(finding("HFC709", f"{plural(cast_count, 'tensor')} cast to {dtype}; config.json "
                                 f"{' and '.join(keys)} set to {dtype}", file="config.json"))
        else:
            why = "is missing" if not folder.has("config.json") else "could not be parsed"
            notes.append(finding("HFC710", f"config.json {why}: torch_dtype not updated to {dtype} "
                                 f"({plural(cast_count, 'tensor')} cast)", file="config.json"))

    # 2e. Index-vs-shard disagreements are repaired: the new index lists what the shards hold.
    disagreements = sorted({f.code for f in _index_findings(contents)})
    if disagreements:
        notes.append(finding("HFC712", f"source index disagrees with the shards ({', '.join(disagreements)}); "
                             "the new index lists what the shards hold", file=weight_set.index))
    return ConversionPlan(tuple(shards), dropped, copied, tuple(to_copy), skipped, config_json, tuple(notes),
                          dtype)


def _index_findings(contents: FolderContents) -> list[Finding]:
    from .checks.index import check_index

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


def _uncopyable(folder, name: str) -> str | None:
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


# =============================================================================================
# step 4: byte movers
# =============================================================================================

_TRANSFORM_LOCK = threading.Lock()
"""Held while a transformed (cast/reordered) tensor is in memory, by the writer or the
verifier thread, so that at most one such tensor exists at a time per process."""


def copy_source(src_fd: int, dst_fd: int, offset: int, count: int, progress: Callable[[int], None]) -> None:
    """:func:`~hfconv.tensor_bytes.copy_range`, a source cut short as HFC701."""
    try:
        copy_range(src_fd, dst_fd, offset, count, progress)
    except SourceEnded as exc:
        raise ConversionError("HFC701", f"source file ended {exc.missing} bytes early (was it truncated "
                                        "during the conversion?)") from None


class _Sources:
    """Source files opened read-only and memory-mapped once per shard writer.

    Each is opened once, by :func:`hfconv.fsutil.open_inside`: a regular file inside one of
    ``roots`` (SRC, or the Hub cache's blobs), never a symlink followed out of them.
    """

    def __init__(self, roots: tuple[str, ...] = ()) -> None:
        self._open: dict[str, tuple[Any, mmap.mmap | None]] = {}
        self._roots = roots

    def fd(self, path: str) -> int:
        return self._get(path)[0].fileno()

    def map(self, path: str) -> mmap.mmap:
        handle, mapped = self._get(path)
        if mapped is None:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._open[path] = (handle, mapped)
        return mapped

    def _get(self, path: str):
        entry = self._open.get(path)
        if entry is None:
            try:
                handle = open_inside(path, self._roots or (os.path.dirname(path),))
            except FormatError as exc:
                name = os.path.basename(path)
                raise ConversionError("HFC715", f"{name} changed during the conversion: {exc.message}") from None
            entry = self._open[path] = (handle, None)
        return entry

    def close(self) -> None:
        for handle, mapped in self._open.values():
            if mapped is not None:
                try:
                    mapped.close()
                except BufferError:  # an array still views it; the GC unmaps it later
                    pass
            handle.close()
        self._open.clear()


_INT_FOR_SIZE = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def _source_array(tensor: PlannedTensor, sources: _Sources, *, aligned: bool = False):
    """The tensor's source elements as a C-ordered numpy integer array (no dtype meaning).

    A contiguous tensor is a zero-copy view of the mapped file unless ``aligned`` asks for
    an aligned buffer (torch wants one); a strided view is gathered with numpy's
    ``as_strided`` into a new array of exactly the tensor's size; a big-endian source is
    byte-swapped into a new array.
    """
    import numpy as np
    from numpy.lib.stride_tricks import as_strided

    size = itemsize(tensor.source_dtype)
    int_dtype = np.dtype(_INT_FOR_SIZE[size])
    mapped = sources.map(tensor.source_path)
    span = tensor.span_end - tensor.offset
    raw = np.frombuffer(mapped, dtype=np.uint8, count=span, offset=tensor.offset)
    if tensor.stride is None:
        flat = raw.view(int_dtype)
        if aligned and (tensor.offset % size) and not tensor.byteswap:
            flat = flat.copy()
    else:
        view = as_strided(raw.view(int_dtype), shape=tensor.shape, strides=tuple(s * size for s in tensor.stride),
                          writeable=False)
        flat = np.ascontiguousarray(view).reshape(-1)
    if tensor.byteswap:  # a new, aligned array in this machine's (little-endian) order
        unit = np.dtype(_INT_FOR_SIZE[swap_unit(tensor.source_dtype)])
        flat = flat.view(unit).byteswap().view(int_dtype)
    return flat


def _transformed_bytes(tensor: PlannedTensor, sources: _Sources):
    """The output bytes of a ``reorder`` or ``cast`` tensor, as a uint8 numpy array."""
    import numpy as np

    if tensor.action == "reorder":
        data = _source_array(tensor, sources).view(np.uint8)
        _release(sources.map(tensor.source_path), tensor.offset, tensor.span_end - tensor.offset)
        return data
    import torch

    from .dtypes import torch_dtype

    array = _source_array(tensor, sources, aligned=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only (mapped) arrays
        source = torch.from_numpy(array).view(torch_dtype(tensor.source_dtype))
    out = torch.empty(tensor.shape, dtype=torch_dtype(tensor.dtype))
    out.copy_(source.reshape(tensor.shape))
    del source, array
    _release(sources.map(tensor.source_path), tensor.offset, tensor.span_end - tensor.offset)
    return out.reshape(-1).view(torch.uint8).numpy()


def _release(mapped: mmap.mmap | None, start: int, length: int) -> None:
    """Drop a read range of a file mapping from this process's resident set.

    The pages stay in the page cache; only our page-table entries go, so the RSS of a
    verification stays at a window's size instead of growing to both files' sizes.
    """
    if mapped is None or length <= 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    begin = start - start % mmap.PAGESIZE
    end = min(start + length, len(mapped))
    if end > begin:
        try:
            mapped.madvise(mmap.MADV_DONTNEED, begin, end - begin)
        except (OSError, ValueError):  # advisory only
            pass


def _ranges_equal(a, a_off: int, b, b_off: int, count: int, progress: Callable[[int], None],
                  a_map: mmap.mmap | None = None, b_map: mmap.mmap | None = None,
                  crc: list[int] | None = None) -> bool:
    """Compare two byte ranges of uint8 arrays in C, a window at a time.

    Windows are compared as 64-bit words (twice as fast as bytes) into one reused result
    buffer. ``a_map``/``b_map`` are the mappings behind the arrays, if any: each compared
    window is released from the resident set once compared. With ``crc`` (a one-item list),
    the CRC-32 of ``b``'s range is computed on the same windows, while they are in the cache.
    """
    import numpy as np

    result = np.empty(_COMPARE_CHUNK // 8, dtype=bool)
    pos = 0
    while pos < count:
        step = min(_COMPARE_CHUNK, count - pos)
        left, right = a[a_off + pos:a_off + pos + step], b[b_off + pos:b_off + pos + step]
        if crc is not None:
            crc[0] = _crc32(right, crc[0])
        if step % 8 == 0:
            left, right, out = left.view(np.uint64), right.view(np.uint64), result[:step // 8]
            np.equal(left, right, out=out)
            same = bool(out.all())
        else:
            same = bool(np.array_equal(left, right))
        del left, right
        _release(a_map, a_off + pos, step)
        _release(b_map, b_off + pos, step)
        if not same:
            return False
        pos += step
        progress(step)
    return True


# =============================================================================================
# steps 4+6 per shard: write on this thread, verify right behind the writer on a helper
# =============================================================================================

@dataclass(frozen=True)
class _ShardTask:
    shard: ShardPlan
    path: str
    verify: bool
    digest: bool
    durable: bool = False
    """fsync the shard once written (``--fsync``)."""
    roots: tuple[str, ...] = ()
    """Where source files may be read from (SRC and, in a Hub cache, its blobs)."""


@dataclass(frozen=True)
class _ShardOutcome:
    name: str
    file_nbytes: int
    digests: Mapping[str, str]
    mismatches: tuple[tuple[str, str], ...]
    """(tensor, why) for every tensor that failed verification ("" for the header)."""
    corrupt: tuple[Finding, ...] = ()
    """HFC901 for every source storage whose bytes fail their recorded CRC-32."""


_Batch = list[tuple[PlannedTensor, int]]
"""Tensors just written, each with its absolute offset in the output file."""


def _write_tensor(fd: int, tensor: PlannedTensor, sources: _Sources, progress: Callable[[int], None]) -> None:
    """Append one tensor's output bytes to ``fd``."""
    if tensor.nbytes == 0:
        return
    if tensor.action == "copy":
        copy_source(sources.fd(tensor.source_path), fd, tensor.offset, tensor.nbytes, progress)
        return
    with _TRANSFORM_LOCK:
        data = _transformed_bytes(tensor, sources)
        if len(data) != tensor.nbytes:  # pragma: no cover - a transform bug, caught loudly
            raise ConversionError("HFC701", f"{tensor.name}: produced {len(data)} bytes, expected {tensor.nbytes}")
        write_all(fd, data)
        del data
    progress(tensor.nbytes)


def _write_shard(task: _ShardTask, progress: Callable[[int], None],
                 writeback: Callable[[str, int, int], None] | None = None,
                 written: Callable[[_Batch], None] | None = None) -> None:
    """Write one shard file: header, then the tensors in order.

    Args:
        task: the shard and where to write it.
        progress: called with the bytes of each chunk written.
        writeback: told ``(path, offset, nbytes)`` about every ~64 MiB written, so the disk
            can start on it at once (see :class:`_Writeback`).
        written: handed each batch of ~64 MiB of tensors once their bytes are in the file,
            so they can be verified while the next ones are written.
    """
    shard = task.shard
    header = shard.header
    expected_size = len(header) + shard.data_nbytes
    sources = _Sources(task.roots)
    try:
        try:
            fd = os.open(task.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise write_failure(exc, f"creating {shard.name}") from None
        try:
            write_all(fd, header)
            position = flushed = len(header)
            batch: _Batch = []
            batch_bytes = 0
            for tensor in shard.tensors:
                _write_tensor(fd, tensor, sources, progress)
                batch.append((tensor, position))
                position += tensor.nbytes
                batch_bytes += tensor.nbytes
                if writeback is not None and position - flushed >= _WRITEBACK_CHUNK:
                    writeback(task.path, flushed, position - flushed)
                    flushed = position
                if written is not None and batch_bytes >= _VERIFY_BATCH:
                    written(batch)
                    batch, batch_bytes = [], 0
            actual = os.lseek(fd, 0, os.SEEK_CUR)
            if actual != expected_size:
                raise ConversionError("HFC701", f"{shard.name}: wrote {actual} bytes, planned {expected_size}")
            if writeback is not None:
                writeback(task.path, flushed, position - flushed)
            if written is not None and batch:
                written(batch)
        except OSError as exc:
            raise write_failure(exc, f"writing {shard.name}") from None
        finally:
            os.close(fd)
    finally:
        sources.close()


_ERRNO_WORDS = {
    errno.ENOSPC: "no space left on device",
    getattr(errno, "EDQUOT", -1): "disk quota exceeded",
    errno.EFBIG: "file too large (the file system's or the process's file size limit)",
    errno.EIO: "input/output error",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def write_failure(exc: OSError, doing: str) -> ConversionError:
    """An OSError while writing DST as the one-line HFC714 error: ``no space left on device
    writing model-00002-of-00004.safetensors``."""
    what = _ERRNO_WORDS.get(exc.errno or 0)
    if what is None:
        text = exc.strerror or str(exc) or type(exc).__name__
        what = text[:1].lower() + text[1:]
    return ConversionError("HFC714", f"{what} {doing}".strip())


def _check_batch(task: _ShardTask, batch: _Batch, sources: _Sources,
                 progress: Callable[[int], None]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Verify (and digest, for the manifest) tensors just written.

    Maps only the batch's range of the output file. A tensor copied unchanged is compared
    directly with its source file's byte range (both memory-mapped, compared in C); a
    transformed one with its bytes recomputed from the source. Returns (problems, digests).
    """
    import numpy as np

    problems: list[tuple[str, str]] = []
    digests: dict[str, str] = {}
    corrupt: list[Finding] = []
    begin = batch[0][1]
    end = batch[-1][1] + batch[-1][0].nbytes
    start = begin - begin % mmap.ALLOCATIONGRANULARITY
    out_map = None
    if end > begin:
        with open(task.path, "rb") as handle:
            out_map = mmap.mmap(handle.fileno(), end - start, offset=start, access=mmap.ACCESS_READ)
    try:
        out = np.frombuffer(out_map, dtype=np.uint8) if out_map is not None else None
        for tensor, offset in batch:
            at = offset - start
            record = tensor.record if task.verify else None
            # A copied tensor that is its whole storage: its CRC-32 is computed on the windows
            # compared; any other storage is read once more for it (from the page cache).
            fused = record is not None and tensor.action == "copy" and tensor.nbytes > 0 and \
                (tensor.offset, tensor.nbytes) == (record.begin, record.nbytes)
            if record is not None and not fused:
                corrupt += _check_crc(tensor, record, sources)
            if tensor.nbytes == 0:
                digests[tensor.name] = hashlib.sha256(b"").hexdigest()
                continue
            assert out is not None and out_map is not None
            if task.verify:
                if tensor.action == "copy":
                    src_map = sources.map(tensor.source_path)
                    src = np.frombuffer(src_map, dtype=np.uint8)
                    crc = [0] if fused else None
                    same = _ranges_equal(out, at, src, tensor.offset, tensor.nbytes, progress, out_map, src_map,
                                         crc)
                    del src
                    if fused and same and record is not None and crc is not None and crc[0] != record.crc32:
                        corrupt.append(_crc_finding(tensor, record, crc[0]))
                else:
                    with _TRANSFORM_LOCK:  # one transformed tensor in memory at a time
                        expected = _transformed_bytes(tensor, sources)
                        same = _ranges_equal(out, at, expected, 0, tensor.nbytes, progress, out_map)
                        del expected
                if not same:
                    what = "its cast" if tensor.action == "cast" else "the source"
                    problems.append((tensor.name, f"output bytes differ from {what} ({tensor.source_file})"))
            if task.digest:
                digests[tensor.name] = _sha256(out_map, at, at + tensor.nbytes)
        del out
    finally:
        if out_map is not None:
            with contextlib.suppress(BufferError):
                out_map.close()
    return problems, digests, corrupt


def _check_crc(tensor: PlannedTensor, record: StorageRecord, sources: _Sources) -> list[Finding]:
    """The storage ``tensor`` views, read from the mapped source, against its recorded CRC-32."""
    mapped = sources.map(tensor.source_path)
    value = 0
    end = record.begin + record.nbytes
    with memoryview(mapped) as view:
        for pos in range(record.begin, end, _COMPARE_CHUNK):
            stop = min(pos + _COMPARE_CHUNK, end)
            value = _crc32(view[pos:stop], value)
            _release(mapped, pos, stop - pos)
    return [] if value == record.crc32 else [_crc_finding(tensor, record, value)]


def _crc_finding(tensor: PlannedTensor, record: StorageRecord, computed: int) -> Finding:
    from .checks.deep import crc_mismatch

    assert record.crc32 is not None
    return crc_mismatch(tensor.source_file, record.key, record.first_user, record.crc32, computed)


def _crc32(data, value: int = 0) -> int:
    from .checks.deep import crc32

    return crc32(data, value)


def _check_header(task: _ShardTask) -> list[tuple[str, str]]:
    """The written header, parsed by the strict reader, says exactly what was planned."""
    shard = task.shard
    try:
        written = read_safetensors(task.path)
    except FormatError as exc:
        return [("", f"{shard.name}: the written file does not parse: {exc.message} ({exc.code})")]
    base = len(shard.header)
    planned, offset = [], base
    for t in shard.tensors:
        planned.append((t.name, t.dtype, t.shape, (offset, offset + t.nbytes)))
        offset += t.nbytes
    found = [(m.name, m.dtype, m.shape, m.data_offsets) for m in written.tensors.values()]
    if found != planned or dict(written.metadata or {}) != dict(shard.metadata):
        return [("", f"{shard.name}: the written header does not describe the planned tensors and metadata")]
    return []


def _finish_shard(task: _ShardTask, checks: list[Future]) -> _ShardOutcome:
    """Collect a shard's batch checks (already run: same single thread), check its header, fsync it."""
    problems: list[tuple[str, str]] = []
    digests: dict[str, str] = {}
    corrupt: list[Finding] = []
    for future in checks:
        found, sums, bad = future.result()
        problems += found
        digests.update(sums)
        corrupt += bad
    if task.verify:
        problems = _check_header(task) + problems
    if task.durable:
        try:
            _fsync_path(task.path)
        except OSError as exc:
            raise write_failure(exc, f"flushing {task.shard.name} to the disk") from None
    return _ShardOutcome(task.shard.name, os.stat(task.path).st_size, digests, tuple(problems), tuple(corrupt))


def _convert_shards(tasks: Sequence[_ShardTask], progress: Callable[[int], None]) -> list[_ShardOutcome]:
    """Write the shards in order on this thread; verify behind the writer on a helper thread.

    The helper gets each ~64 MiB batch of tensors as soon as it is written (so the bytes
    are compared while still hot in the page cache, and while the next ones are copied:
    copies, comparisons and fsync all release the GIL), then each shard's header, then
    fsyncs it.
    """
    checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfconv-verify")
    sources = _Sources(tasks[0].roots if tasks else ())  # used on the checker thread only
    try:
        finals = []
        # Early writeback only helps a final fsync; without --fsync the kernel writes back later.
        durable = any(task.durable for task in tasks)
        with _Writeback() if durable else contextlib.nullcontext() as writeback:
            for task in tasks:
                checks: list[Future] = []

                def hand_over(batch: _Batch, task: _ShardTask = task, checks: list[Future] = checks) -> None:
                    checks.append(checker.submit(_check_batch, task, batch, sources, progress))

                _write_shard(task, progress, writeback.request if durable else None,
                             hand_over if (task.verify or task.digest) else None)
                finals.append(checker.submit(_finish_shard, task, checks))
        return [future.result() for future in finals]
    finally:
        checker.shutdown(wait=True, cancel_futures=True)
        sources.close()


def _sha256(mapped: mmap.mmap, begin: int, end: int) -> str:
    digest = hashlib.sha256()
    with memoryview(mapped) as view:
        for pos in range(begin, end, _COMPARE_CHUNK):
            stop = min(pos + _COMPARE_CHUNK, end)
            digest.update(view[pos:stop])
            _release(mapped, pos, stop - pos)
    return digest.hexdigest()


_sync_file_range: Any = None


class _Writeback:
    """Starts disk writeback of freshly written ranges on a helper thread.

    Without it the final fsync of a shard waits for the whole shard to reach the disk; with
    it the disk works while the next tensors are copied and verified, and fsync only waits
    for the tail. ``sync_file_range`` may block while the device queue is full, hence the
    thread: the writer never waits for it. The pages stay in the page cache.
    """

    def __init__(self) -> None:
        import queue

        self._queue: Any = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hfconv-writeback", daemon=True)
        self._thread.start()

    def request(self, path: str, offset: int, nbytes: int) -> None:
        self._queue.put((path, offset, nbytes))

    def __enter__(self) -> _Writeback:
        return self

    def __exit__(self, *exc_info) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        path, fd = None, -1
        try:
            while (item := self._queue.get()) is not None:
                if item[0] != path:
                    if fd >= 0:
                        os.close(fd)
                    path, fd = item[0], -1
                    with contextlib.suppress(OSError):
                        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                if fd >= 0:
                    _start_writeback(fd, item[1], item[2])
        finally:
            if fd >= 0:
                os.close(fd)


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a range of a file to disk, without waiting for it (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``); a no-op where the call is unavailable."""
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        try:
            import ctypes

            function = ctypes.CDLL(None, use_errno=True).sync_file_range
            function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            function.restype = ctypes.c_int
            _sync_file_range = function
        except (OSError, AttributeError):
            pass
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; failure is harmless


# --- worker-process plumbing ------------------------------------------------------------------
_worker_queue = None


def _init_worker(queue) -> None:
    """Worker processes ignore Ctrl-C: the parent stops them and cleans up."""
    import signal

    global _worker_queue
    _worker_queue = queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_in_worker(task: _ShardTask) -> _ShardOutcome:
    pending = [0]

    def report(n: int) -> None:
        pending[0] += n
        if pending[0] >= _COPY_CHUNK and _worker_queue is not None:
            _worker_queue.put((task.shard.name, pending[0]))
            pending[0] = 0

    # The parent settles each shard's remaining count when its result arrives (queue messages
    # may arrive later than the result), so nothing is sent after the last chunk.
    return _convert_shards([task], report)[0]


def _shard_progress_total(task: _ShardTask) -> int:
    return task.shard.data_nbytes * (2 if task.verify else 1)


def _run_tasks(tasks: list[_ShardTask], jobs: int, progress: Callable[[int], None]) -> list[_ShardOutcome]:
    """Write (and verify) the shards, in this process or in ``jobs`` worker processes."""
    if jobs <= 1 or len(tasks) <= 1:
        return _convert_shards(tasks, progress)

    import multiprocessing
    import queue as queue_module
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    updates = context.Queue()
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context,
                               initializer=_init_worker, initargs=(updates,))
    results: dict[str, _ShardOutcome] = {}
    counted: dict[str, int] = {task.shard.name: 0 for task in tasks}

    def drain() -> None:
        while True:
            try:
                name, n = updates.get_nowait()
            except queue_module.Empty:
                return
            if name not in results:  # late messages of a settled shard are ignored
                counted[name] += n
                progress(n)

    try:
        futures = {pool.submit(_run_in_worker, task): task for task in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            drain()
            for future in done:
                outcome = future.result()
                results[outcome.name] = outcome
                progress(_shard_progress_total(futures[future]) - counted[outcome.name])
        pool.shutdown(wait=True)
    except BaseException:
        _stop_pool(pool)
        raise
    return [results[task.shard.name] for task in tasks]


def _stop_pool(pool) -> None:
    """Stop workers now (they may be mid-shard) and wait until none can write any more."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# =============================================================================================
# convert
# =============================================================================================

_HUB_HIDDEN = frozenset({".gitattributes", ".cache", ".huggingface", ".git"})
"""Hidden entries a downloaded model folder may hold (git clone, huggingface_hub's local_dir)."""
_HFCONV_OUTPUTS = frozenset({"model.safetensors", INDEX_FILE})
"""One of these is in every folder convert writes."""


def _replace_refusal(dst: str, dst_abs: str) -> str | None:
    """Why ``--force`` must not delete the folder ``dst`` (None: empty, or a model folder
    hfconv could have written). A typo must not remove a home directory or a source tree."""
    try:
        names = os.listdir(dst_abs)
    except OSError as exc:
        return f"it cannot be listed ({exc.strerror or exc})"
    if not names:
        return None
    weights = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".h5", ".gguf")))
    if weights:
        return f"it holds weights convert never writes ({', '.join(_escape_name(n) for n in weights[:3])})"
    if not any(name in _HFCONV_OUTPUTS for name in names):
        return "it is not a folder hfconv wrote (no model.safetensors or model.safetensors.index.json in it)"
    strays = sorted(n for n in names if n.startswith(".") and n not in _HUB_HIDDEN and not n.startswith(".hfconv-"))
    if strays:
        shown = ", ".join(_escape_name(n) for n in strays[:3]) + (", ..." if len(strays) > 3 else "")
        return f"it holds files a model folder does not ({shown})"
    return None


def _escape_name(name: str) -> str:
    from .render import escape_text

    return escape_text(name)


def _missing_parents(dst_abs: str) -> list[str]:
    """The folders above DST that do not exist yet, outermost first (``mkdir -p`` creates them)."""
    missing: list[str] = []
    parent = os.path.dirname(dst_abs)
    while not os.path.lexists(parent):
        missing.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if not os.path.isdir(parent):
        raise UsageError(f"DST cannot be created: {parent} is not a folder")
    return missing[::-1]


def _existing_ancestor(path: str) -> str:
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _disk_margin(output_bytes: int) -> int:
    """Room left free beyond the output itself: 1% of the output, at least 16 MiB, at most
    1 GiB. The file system needs blocks of its own for the new files (extents, directory
    entries, journal) and a disk filled to the last byte breaks other programs writing to it;
    both grow with the output but not without bound, hence the clamp."""
    return max(16 << 20, min(1 << 30, output_bytes // 100))


def _check_paths(src: str, dst: str, force: bool) -> tuple[str, str]:
    if not os.path.isdir(src):
        raise UsageError(f"{src} is not a folder (give the model folder, not a file)")
    src_real = os.path.realpath(src)
    dst_abs = os.path.abspath(dst)
    dst_real = os.path.realpath(dst_abs)
    if dst_real == src_real or dst_real.startswith(src_real + os.sep) or src_real.startswith(dst_real + os.sep):
        raise UsageError(f"DST {dst} must be outside SRC {src} (and must not contain it)")
    if os.path.lexists(dst_abs):
        if not force:
            raise DestinationExistsError(f"{dst} exists; choose another DST or pass --force to replace it")
        if os.path.islink(dst_abs) or not os.path.isdir(dst_abs):
            raise UsageError(f"{dst} exists and is not a folder; --force only replaces a folder")
        why = _replace_refusal(dst, dst_abs)
        if why:
            raise UsageError(f"--force refuses to replace {_escape_name(dst)}: {why}; remove it yourself or choose "
                             "another DST")
    return src_real, dst_abs


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open_source(roots: tuple[str, ...], path: Path, name: str):
    """A source file opened once, checked on its descriptor (HFC715 when it changed)."""
    try:
        return open_inside(path, roots)
    except FormatError as exc:
        raise ConversionError("HFC715", f"{name} changed during the conversion: {exc.message}") from None


def _copy_file(roots: tuple[str, ...], src_path: Path, dst_path: Path, durable: bool, name: str) -> int:
    """Copy one non-weight file's content (never its permission bits); fsync it if ``durable``.

    The source is opened once (never through a symlink out of ``roots``) and copied from
    that descriptor: it cannot be swapped for another file between the check and the copy.
    """
    with _open_source(roots, src_path, name) as source:
        try:
            dst_path.parent.mkdir(parents=True, exist_ok=True)
            size = os.fstat(source.fileno()).st_size
            fd = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                copy_source(source.fileno(), fd, 0, size, lambda n: None)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise write_failure(exc, f"writing {name}") from None
    return size


def _updated_config(roots: tuple[str, ...], path: Path, planned: Mapping[str, Any] | None, data: bytes) -> bytes:
    """The cast's config.json (``data``), once config.json is re-read through one checked
    descriptor and still says what was planned from (HFC715 otherwise)."""
    with _open_source(roots, path, "config.json") as source:
        try:
            text = source.read(64 << 20)
            current = json.loads(text)
        except (OSError, ValueError):
            current = None
    if current != planned:
        raise ConversionError("HFC715", "config.json changed during the conversion")
    return data


def _write_small(path: Path, data: bytes, durable: bool) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_failure(exc, f"writing {path.name}") from None


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _validate_output(tmp: str, source_findings: list[Finding], allow_invalid: bool) -> ValidationSummary:
    """``validate`` the output: any error fails the conversion, unless ``allow_invalid``.

    Errors the source did not have are hfconv's bug (HFC706); errors already in the source
    (HFC713) fail it too: an output that does not load is not a conversion. With
    ``allow_invalid`` the summary carries the errors and the result is not ok.
    """
    from .validation import validate

    report = validate(tmp)
    source_codes = {f.code for f in source_findings if f.severity.value == "error"}
    errors = [f for f in report.findings if f.severity.value == "error"]
    new = [f for f in errors if f.code not in source_codes]
    inherited = len(errors) - len(new)
    if errors and not allow_invalid:
        first = (new or errors)[0]
        where = f"{first.file}: " if first.file and not first.message.startswith(first.file) else ""
        if new:
            head = finding("HFC706", f"the output would fail validation with {_errors(len(new))} the source does "
                           "not have (a bug in hfconv: please report it)")
            message = f"the output would fail validation: {first.code} {where}{first.message}"
            raise VerificationError("HFC706", message, (head, *errors))
        message = (f"the output would fail validation with {_errors(inherited)} already in the source (first: "
                   f"{first.code} {where}{first.message}); fix the source, or pass --allow-invalid-output to "
                   "write it anyway")
        raise VerificationError("HFC713", message, (finding("HFC713", message), *errors))
    return ValidationSummary(errors=len(errors), warnings=report.warnings, inherited_errors=inherited,
                             codes=tuple(sorted({f.code for f in report.findings})), findings=tuple(errors))


def _errors(count: int) -> str:
    return f"{count} error" + ("" if count == 1 else "s")


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    max_shard_size: int | str = "5GB",
    dtype: str = "keep",
    verify: bool = True,
    manifest: str | os.PathLike | None = None,
    force: bool = False,
    jobs: int = 1,
    fsync: bool = False,
    progress: ProgressCallback | None = None,
    allow_invalid_output: bool = False,
) -> ConversionResult:
    """Convert a model folder to safetensors, streaming, and verify the result.

    Args:
        src: the model folder (``.bin`` single/sharded, with or without index, or safetensors).
        dst: the folder to create. It must not exist unless ``force``; it is created
            complete (by renaming a temporary folder beside it) or not at all.
        max_shard_size: shard limit, bytes or a Hub size string (``5GB``, ``500MB``, ``2GiB``).
        dtype: ``keep`` or ``float32``/``float16``/``bfloat16`` (or a :data:`DTYPE_ALIASES`
            short name: ``bf16``, ``fp16``, ``half``, ...) to cast floating tensors.
        verify: compare every output tensor with its source, byte for byte, and validate the
            output folder; False skips both.
        manifest: write per-tensor sha256 digests (``hfconv-manifest/1``) to this file.
        force: replace an existing DST folder (only once the new one is complete).
        jobs: write (and verify) output shards in this many processes.
        fsync: flush every written file and folder to the disk before DST appears, so DST
            is complete even after a power loss (like ``cp -r && sync``). Off, DST still
            appears only complete (atomic rename) after a crash, Ctrl-C, a full disk or a
            bad input, and the kernel writes the bytes back later, as it does for ``cp``.
        progress: called with ``(done_bytes, total_bytes)`` as bytes are written and verified.
        allow_invalid_output: write DST even when it fails validation (a salvage copy); the
            result then says so (``ok`` False, ``validation.findings`` the errors).

    Returns:
        The ConversionResult (``result.ok`` False only for an invalid output written with
        ``allow_invalid_output``).

    Raises:
        UsageError: SRC is not a folder, DST exists without ``force`` (DestinationExistsError),
            DST is inside SRC or the reverse, a component of DST's parent path is a file,
            ``force`` on a folder convert could not have written (see ``_replace_refusal``),
            or a bad option. DST's missing parents are created, and removed on failure.
        InputRefused: SRC holds a weight file that is broken, hostile (HFC201) or missing.
        ConversionError: not enough disk space (HFC705), writing failed (HFC714: a full disk,
            an I/O error), a source file changed during the conversion (HFC715).
        InputRefused: also when a ``.bin`` storage fails its recorded CRC-32 (HFC704 with HFC901).
        VerificationError: a tensor differs from its source (HFC701) or the output fails
            validation (HFC706: errors convert made; HFC713: errors already in the source).
    """
    started = time.perf_counter()
    # 0. Arguments and paths.
    try:
        limit = parse_size(max_shard_size)
    except ValueError as exc:
        raise UsageError(f"--max-shard-size: {exc}") from None
    dtype = canonical_dtype(dtype)
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    src_s, dst_s = os.fspath(src), os.fspath(dst)
    _, dst_abs = _check_paths(src_s, dst_s, force)
    parent = os.path.dirname(dst_abs)
    missing_parents = _missing_parents(dst_abs)
    manifest_path = os.path.abspath(os.fspath(manifest)) if manifest is not None else None
    # A manifest inside DST is written into the new folder (manifest_rel is its name there).
    manifest_rel = os.path.relpath(manifest_path, dst_abs) \
        if manifest_path is not None and manifest_path.startswith(dst_abs + os.sep) else None
    if manifest_path is not None and manifest_rel is None and not os.path.isdir(os.path.dirname(manifest_path)) \
            and os.path.dirname(manifest_path) not in missing_parents:
        raise UsageError(f"the folder of --manifest {manifest} does not exist")

    # 1. Read SRC (headers and pickles only) and 2. plan.
    contents = read_contents(discover(src_s))
    plan = plan_conversion(contents, limit, dtype)
    if manifest_rel is not None and manifest_rel in {*plan.files_to_copy, *(s.name for s in plan.shards), INDEX_FILE}:
        raise UsageError(f"--manifest {manifest} would overwrite {manifest_rel} in DST")
    # The source's own validation errors (e.g. in a tokenizer file) are inherited, not ours.
    source_findings = list(check_contents(contents).findings) if verify else []

    # 3. Free space: shards plus copied files, with a margin (see _disk_margin).
    copy_bytes = sum(_size_or_zero(contents.folder.path(n)) for n in plan.files_to_copy)
    output = sum(s.file_nbytes for s in plan.shards) + copy_bytes
    margin = _disk_margin(output)
    where = _existing_ancestor(parent)
    free = shutil.disk_usage(where).free
    if free < output + margin:
        raise ConversionError("HFC705", f"DST needs {human_bytes(output)} + {human_bytes(margin)} margin (room the "
                                        f"file system needs beside the data), {human_bytes(free)} free on {where}")

    # DST's missing parents are created like mkdir -p, and removed again if the conversion fails.
    try:
        for folder_path in missing_parents:
            os.mkdir(folder_path)
    except OSError as exc:
        _remove_parents(missing_parents)
        raise write_failure(exc, f"creating {folder_path}") from None
    try:
        return _convert_into(src_s, dst_s, dst_abs, parent, contents, plan, verify, manifest, manifest_path,
                             manifest_rel, source_findings, force, jobs, fsync, progress, allow_invalid_output,
                             started)
    except BaseException:
        _remove_parents(missing_parents)
        raise


def _remove_parents(created: list[str]) -> None:
    """Remove the folders convert created above DST, innermost first, if they are empty."""
    for folder_path in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(folder_path)


def _convert_into(src_s: str, dst_s: str, dst_abs: str, parent: str, contents: FolderContents,
                  plan: ConversionPlan, verify: bool, manifest: Any, manifest_path: str | None,
                  manifest_rel: str | None, source_findings: list[Finding], force: bool, jobs: int, fsync: bool,
                  progress: ProgressCallback | None, allow_invalid_output: bool, started: float
                  ) -> ConversionResult:
    dtype = plan.dtype

    if verify or manifest is not None:
        # numpy (~0.1 s to import) is first needed by the verifying thread; import it now on
        # the side, while the main thread starts copying (which mostly waits in syscalls).
        threading.Thread(target=_import_numpy, name="hfconv-import", daemon=True).start()

    # Each byte is written and (with verify) compared: the callback sees the model's bytes,
    # each counted half when written and half when verified, so 100% means both are done.
    total = plan.total_size
    passes = 2 if verify else 1
    done = [0]
    lock = threading.Lock()

    def advance(n: int) -> None:
        if progress is not None:
            with lock:
                done[0] += n
                progress(done[0] // passes, total)

    if progress is not None:
        progress(0, total)
    try:
        tmp = tempfile.mkdtemp(prefix=".hfconv-", dir=parent)
    except OSError as exc:
        raise write_failure(exc, f"creating a temporary folder in {parent}") from None
    manifest_tmp: str | None = None
    roots = tuple(str(r) for r in (contents.folder.root, contents.folder.blob_root) if r is not None)
    try:
        # 4. Shards (written and, per shard, verified while still in the page cache).
        tasks = [_ShardTask(shard, os.path.join(tmp, shard.name), verify, manifest is not None, fsync, roots)
                 for shard in plan.shards]
        outcomes = _run_tasks(tasks, jobs, advance)
        corrupt = [f for o in outcomes for f in o.corrupt]
        if corrupt:
            files = sorted({f.file for f in corrupt if f.file})
            count = len(corrupt)
            message = (f"the source is corrupted: {count} .bin storage{'s' if count != 1 else ''} of "
                       f"{', '.join(files)} fail{'s' if count == 1 else ''} the CRC-32 torch.save recorded (a flipped "
                       "bit on disk or in a transfer); re-download it")
            raise InputRefused("HFC704", message, (finding("HFC704", message), *corrupt))
        mismatches = [(shard, name, why) for shard, o in zip(plan.shards, outcomes) for name, why in o.mismatches]
        if mismatches:
            found = tuple(finding("HFC701", f"{name or shard.name}: {why}", file=shard.name, tensor=name or None)
                          for shard, name, why in mismatches)
            raise VerificationError("HFC701", f"{plural(len(mismatches), 'tensor')} differ"
                                              f"{'s' if len(mismatches) == 1 else ''} from the source; first: "
                                              f"{found[0].message}", found)

        # 5. Index, non-weight files, config.json.
        if plan.is_sharded:
            _write_small(Path(tmp) / INDEX_FILE, plan.index_json(), fsync)
        root = contents.folder.root
        copied_files = []
        for name in plan.files_to_copy:
            target = Path(tmp) / name
            if name == "config.json" and plan.config_json is not None:
                _write_small(target, _updated_config(roots, root / name, contents.config, plan.config_json), fsync)
            else:
                _copy_file(roots, root / name, target, fsync, name)
            copied_files.append(name)

        # 6. The output must pass validate (any error fails it, unless asked to write it anyway).
        summary = _validate_output(tmp, source_findings, allow_invalid_output) if verify else None

        # Manifest: inside DST it becomes part of the folder; elsewhere it is written beside
        # its target now and renamed once DST is in place.
        mode = 0o777 & ~_umask()
        if manifest_path is not None:
            final = os.path.join(tmp, manifest_rel) if manifest_rel else manifest_path
            os.makedirs(os.path.dirname(final), exist_ok=True)
            manifest_tmp = _write_manifest_tmp(os.path.dirname(final), plan, outcomes, fsync)
            os.chmod(manifest_tmp, mode & 0o666)
            if manifest_rel:
                os.replace(manifest_tmp, final)
                manifest_tmp = None

        # 7. Make it visible: permissions, (with --fsync) fsync, rename (old DST away last).
        for dirpath, _dirs, _files in os.walk(tmp):
            os.chmod(dirpath, mode)
            if fsync:
                _fsync_dir(dirpath)
        _install(tmp, dst_abs, force)
        if fsync:
            _fsync_dir(parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if manifest_tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(manifest_tmp)
        if isinstance(exc, OSError):  # a step without its own wording: still one line, no traceback
            where = os.path.basename(exc.filename) if isinstance(exc.filename, str) else ""
            raise write_failure(exc, f"writing {where}" if where else "writing DST") from None
        raise
    if manifest_tmp is not None and manifest_path is not None:
        os.replace(manifest_tmp, manifest_path)
        if fsync:
            _fsync_dir(os.path.dirname(manifest_path))

    return ConversionResult(
        src=src_s,
        dst=dst_s,
        tensors=len(plan.tensors),
        bytes=plan.total_size,
        shards=tuple(ShardInfo(s.name, len(s.tensors), o.file_nbytes) for s, o in zip(plan.shards, outcomes)),
        dtype=dtype,
        cast=sum(1 for t in plan.tensors if t.action == "cast"),
        dropped_aliases=dict(plan.dropped_aliases),
        copied_aliases=dict(plan.copied_aliases),
        files_copied=tuple(copied_files),
        files_skipped=dict(plan.files_skipped),
        seconds=time.perf_counter() - started,
        verified=verify,
        validation=summary,
        findings=plan.findings + ((finding("HFC716", f"output INVALID: {dst_s} fails validation with "
                                                     f"{_errors(summary.errors)} (written anyway: "
                                                     "--allow-invalid-output)"),)
                                  if summary is not None and not summary.valid else ()),
        manifest=manifest_path,
        durable=fsync,
    )


def _import_numpy() -> None:
    with contextlib.suppress(ImportError):
        import numpy  # noqa: F401


def _size_or_zero(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _install(tmp: str, dst: str, force: bool) -> None:
    """Rename the finished folder to DST; with force, the old DST goes only after that."""
    if not os.path.lexists(dst):
        os.rename(tmp, dst)
        return
    if not force:  # created by someone else while we worked
        raise DestinationExistsError(f"{dst} appeared during the conversion; nothing replaced")
    old = tempfile.mkdtemp(prefix=".hfconv-old-", dir=os.path.dirname(dst))
    os.rmdir(old)
    os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_manifest_tmp(directory: str, plan: ConversionPlan, outcomes: list[_ShardOutcome], durable: bool) -> str:
    """The digest manifest, written to a temporary file in ``directory``; returns its path."""
    tensors: dict[str, dict] = {}
    for shard, outcome in zip(plan.shards, outcomes):
        for t in shard.tensors:
            tensors[t.name] = {"file": shard.name, "dtype": t.dtype, "shape": list(t.shape),
                               "sha256": outcome.digests[t.name]}
    document = {"format": MANIFEST_FORMAT, "total_size": plan.total_size,
                "dropped_aliases": dict(plan.dropped_aliases), "tensors": tensors}
    fd, tmp = tempfile.mkstemp(prefix=".hfconv-manifest-", dir=directory)
    try:
        write_all(fd, (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    return tmp
