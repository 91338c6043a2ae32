"""Read a safetensors header without torch and without reading tensor bytes.

Layout: an unsigned little-endian 64-bit header length ``N``, ``N`` bytes of UTF-8 JSON
(an object mapping tensor names to ``{"dtype", "shape", "data_offsets"}`` plus an optional
``"__metadata__"`` object of strings), then the data section. ``data_offsets`` are relative
to the start of the data section, ``[begin, end)``.

The checks follow the Rust reference (``safetensors/src/tensor.rs``: ``HeaderTooSmall``,
``HeaderTooLarge``, ``InvalidHeaderLength``, ``InvalidHeaderStart``,
``InvalidHeaderDeserialization``, ``InvalidOffset``, ``TensorInvalidInfo``,
``ValidationOverflow``, ``MetadataIncompleteBuffer``, and the sub-byte alignment check) and
are stricter where Python's ``json`` and serde_json could disagree: duplicate keys anywhere,
``NaN``/``Infinity``, lone surrogate escapes and overflowing floats are refused, and
``__metadata__`` must be an object (the reference also accepts ``null``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from ..dtypes import SAFETENSORS_BITS
from ..fsutil import open_regular
from ..jsonutil import JsonError, count_containers, loads_strict
from ..tensors import FormatError, ReaderNote, TensorMeta, WeightFile

__all__ = ["read_safetensors", "MAX_HEADER_BYTES", "HUB_HEADER_LIMIT", "MAX_TENSORS"]

MAX_HEADER_BYTES = 100_000_000
"""The reference's MAX_HEADER_SIZE: longer headers are refused unread."""
HUB_HEADER_LIMIT = 25_000_000
"""huggingface_hub's SAFETENSORS_MAX_HEADER_LENGTH: longer headers get an HFC103 note."""

MAX_TENSORS = 1_000_000
"""Most tensors one file may declare; counted in the raw header before it is parsed, because
each entry costs a few hundred bytes of Python objects (a 100 MB header of empty entries would
build gigabytes). Real checkpoints hold at most tens of thousands of tensors per file."""

_U64 = 1 << 64
# A safetensors header nests object > entry > list: depth 3. Anything deeper is not a
# header; the limit only has to keep the parser away from pathological nesting.
_HEADER_MAX_DEPTH = 8
_ENTRY_KEYS = ("dtype", "shape", "data_offsets")


def _q(value: Any, limit: int = 80) -> str:
    """repr() cut to ``limit`` characters: names and values come from the file."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """A JSON type name for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _all_u64(values: list) -> bool:
    """True when every item is an int (not a bool) in [0, 2**64), as serde's usize wants."""
    # type() is int excludes bool, a subclass of int that serde_json refuses as usize.
    # set/map/min/max run in C: this is the hot loop for headers with a million entries.
    if not values:
        return True
    return set(map(type, values)) == {int} and min(values) >= 0 and max(values) < _U64


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a big header builds millions of acyclic containers.

    Without this, CPython runs full collections over and over as the parsed objects pile up,
    which made a 100 MB header about twice as slow in a test. Restored on exit (errors included).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Pairs(list):
    """An object's (key, value) pairs as parsed, duplicates kept; tells objects from arrays."""


def _first_duplicate(keys: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return None


def _nested_duplicate(node: Any) -> str | None:
    """The first duplicated key in any object under ``node`` (depth is capped, recursion ok)."""
    if isinstance(node, _Pairs):
        dup = _first_duplicate(key for key, _ in node)
        if dup is not None:
            return dup
        children: Iterable[Any] = (value for _, value in node)
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        dup = _nested_duplicate(child)
        if dup is not None:
            return dup
    return None


def _duplicate_error(text: str, key: str | None) -> FormatError:
    """Turn a duplicate-key JsonError into HFC105 naming the tensor it concerns.

    The strict parser's hook runs bottom-up and does not know where the object sits, so on
    this (rare) error path the header is parsed again keeping all pairs to find out whether
    the duplicate is a tensor name, inside one entry, or inside ``__metadata__``.
    """
    try:
        top = json.loads(text, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        top = None
    if isinstance(top, _Pairs):
        dup = _first_duplicate(name for name, _ in top)
        if dup is not None:
            what = "__metadata__" if dup == "__metadata__" else f"tensor {_q(dup)}"
            return FormatError("HFC105", f"{what} appears twice in the header", dup)
        for name, entry in top:
            dup = _nested_duplicate(entry)
            if dup is not None:
                where = "__metadata__" if name == "__metadata__" else f"entry for {_q(name)}"
                return FormatError("HFC105", f"{where} has key {_q(dup)} twice", name)
    return FormatError("HFC105", f"header has duplicate key {_q(key)}")


def _parse_header(raw: bytes) -> dict[str, Any]:
    """Decode and strictly parse the header bytes (HFC104, HFC105)."""
    # The reference refuses headers that do not start with '{' (InvalidHeaderStart).
    if not raw.startswith(b"{"):
        raise FormatError("HFC104", f"header does not start with '{{' (starts with {_q(raw[:1])})")
    # Each entry is an object: the top-level object, __metadata__ and one per tensor. The cheap
    # byte count is exact enough almost always; the count outside strings settles the rest.
    if raw.count(b"{") > MAX_TENSORS + 2:
        objects, _arrays = count_containers(raw)
        if objects > MAX_TENSORS + 2:
            raise FormatError("HFC113", f"header declares about {objects - 1} tensors (objects), over the limit "
                                        f"of {MAX_TENSORS}; refused before parsing it")
    try:
        header = loads_strict(raw, max_depth=_HEADER_MAX_DEPTH, require_object=True,
                              max_containers=3 * MAX_TENSORS + 16)
    except JsonError as exc:
        if exc.kind == "duplicate_key":
            raise _duplicate_error(raw.decode("utf-8"), exc.key) from None
        if exc.kind == "too_large":
            raise FormatError("HFC113", f"header {exc.message}; refused before parsing it") from None
        raise FormatError("HFC104", f"header is not valid JSON: {exc.message}") from None
    assert isinstance(header, dict)
    count = len(header) - ("__metadata__" in header)
    if count > MAX_TENSORS:
        raise FormatError("HFC113", f"header declares {count} tensors, over the limit of {MAX_TENSORS}")
    return header


def _check_metadata(value: Any) -> dict[str, str]:
    """``__metadata__`` must map strings to strings (HFC112)."""
    if not isinstance(value, dict):
        raise FormatError("HFC112", f"__metadata__ is {_kind(value)}, not an object of strings",
                          "__metadata__")
    for key, item in value.items():
        if not isinstance(item, str):
            raise FormatError(
                "HFC112", f"__metadata__ value for {_q(key)} is {_kind(item)}, not a string",
                "__metadata__",
            )
    return value


def _check_entry(name: str, entry: Any) -> tuple[str, tuple[int, ...], int, int]:
    """Validate one tensor entry on its own (HFC106, HFC107, HFC108, HFC109 begin > end).

    Returns:
        (dtype, shape, begin, end) with offsets relative to the data section.
    """
    if not isinstance(entry, dict):
        raise FormatError("HFC106", f"entry for {_q(name)} is {_kind(entry)}, not an object", name)
    for field in _ENTRY_KEYS:
        if field not in entry:
            raise FormatError("HFC106", f"entry for {_q(name)} has no {field!r}", name)
    # Unknown extra fields are ignored, as by the reference (serde ignores unknown fields).

    dtype = entry["dtype"]
    if not isinstance(dtype, str):
        raise FormatError("HFC106", f"dtype of {_q(name)} is {_kind(dtype)}, not a string", name)
    bits = SAFETENSORS_BITS.get(dtype)
    if bits is None:
        raise FormatError("HFC107", f"tensor {_q(name)} has unknown dtype {_q(dtype, 40)}", name)

    shape = entry["shape"]
    if not isinstance(shape, list) or not _all_u64(shape):
        raise FormatError(
            "HFC106",
            f"shape of {_q(name)} is {_q(shape, 60)}, not a list of non-negative 64-bit integers",
            name,
        )
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and _all_u64(offsets)):
        raise FormatError(
            "HFC106",
            f"data_offsets of {_q(name)} is {_q(offsets, 60)}, "
            "not a list of two non-negative 64-bit integers",
            name,
        )
    begin, end = offsets
    if begin > end:
        raise FormatError(
            "HFC109", f"tensor {_q(name)} has data_offsets [{begin}, {end}]: end before begin", name
        )

    # Element count with an early exit, so a shape of a million 2s cannot build a huge int
    # (the reference fails such shapes with ValidationOverflow).
    if len(shape) <= 16:
        numel = math.prod(shape)  # at most 16 x 64 bits: a small int, no early exit needed
    elif 0 in shape:
        numel = 0
    else:
        numel = 1
        for dim in shape:
            numel *= dim
            if numel >= _U64:
                break
    if numel >= _U64:
        raise FormatError("HFC108", f"shape of {_q(name)} has more elements than fit in 64 bits", name)
    total_bits = numel * bits
    if total_bits % 8:
        # Sub-byte dtypes (F4, F6_*) must fill whole bytes; safetensors refuses otherwise.
        raise FormatError(
            "HFC108",
            f"tensor {_q(name)} has {numel} {dtype} elements = {total_bits} bits, "
            "which does not end on a byte boundary",
            name,
        )
    need = total_bits // 8
    if need != end - begin:
        raise FormatError(
            "HFC108",
            f"tensor {_q(name)} has shape {_q(shape, 60)} {dtype} = {need} bytes "
            f"but its byte range holds {end - begin}",
            name,
        )
    return dtype, tuple(shape), begin, end


def read_safetensors(path: str | os.PathLike) -> WeightFile:
    """Read and validate a safetensors file's header; never reads the tensor bytes.

    Args:
        path: the ``.safetensors`` file.

    Returns:
        A WeightFile with ``format="safetensors"``, tensors in header order whose
        ``data_offsets`` are absolute byte ranges in the file, ``metadata`` from
        ``__metadata__`` (or None), ``header_nbytes`` = the header length, and an HFC103
        note when the header is over 25 MB.

    Raises:
        FormatError: HFC008 (not a regular file / cannot open), HFC101 (under 8 bytes),
            HFC102 (header length over 100 MB or past the end of the file), HFC104 (header
            not UTF-8 JSON object starting with '{'), HFC113 (more than MAX_TENSORS
            entries, refused before parsing), HFC105 (duplicate key), HFC106 (bad
            entry), HFC107 (unknown dtype), HFC108 (size mismatch or overflow), HFC109 (bad
            offsets: gap, overlap, backwards), HFC110 (truncated), HFC111 (trailing bytes),
            HFC112 (bad ``__metadata__``). ``tensor`` names the tensor where one applies.
    """
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise FormatError(
                "HFC101", f"file is {size} bytes long, shorter than the 8-byte header length"
            )
        prefix = f.read(8)
        if len(prefix) < 8:  # the file shrank after fstat
            raise FormatError(
                "HFC101", f"file is {len(prefix)} bytes long, shorter than the 8-byte header length"
            )
        (n,) = struct.unpack("<Q", prefix)
        # Both bounds are checked before reading: n comes from the file, and f.read(n) with an
        # absurd n would try to allocate it.
        if n > MAX_HEADER_BYTES:
            raise FormatError("HFC102", f"header length {n} exceeds the 100 MB limit")
        if n > size - 8:
            raise FormatError(
                "HFC102", f"header length {n} runs past the end of the {size}-byte file"
            )
        raw = f.read(n)
        if len(raw) != n:
            raise FormatError(
                "HFC102", f"header length {n} runs past the end of the file (it shrank while read)"
            )

    notes: list[ReaderNote] = []
    if n > HUB_HEADER_LIMIT:
        notes.append(
            ReaderNote("HFC103", f"header is {n / 1e6:.1f} MB; huggingface_hub refuses headers "
                                 "over 25 MB")
        )

    base = 8 + n
    available = size - 8 - n
    with _gc_paused():
        header = _parse_header(raw)
        del raw

        metadata: dict[str, str] | None = None
        if "__metadata__" in header:
            metadata = _check_metadata(header.pop("__metadata__"))

        # Pass 1, header order: each entry on its own. Entries are popped as they are checked
        # so the parsed header and the result are not both fully alive at the peak.
        tensors: dict[str, TensorMeta] = {}
        names = list(header)
        spans: list[tuple[int, int, int]] = []
        for index, name in enumerate(names):
            dtype, shape, begin, end = _check_entry(name, header.pop(name))
            tensors[name] = TensorMeta(
                name=name, dtype=dtype, shape=shape, data_offsets=(base + begin, base + end)
            )
            spans.append((begin, end, index))
        del header

    # Pass 2, offset order (O(n log n)): the ranges must tile [0, data_end) exactly, as the
    # reference's validate() requires; a gap or overlap means two readers may disagree.
    # Ties on (begin, end) fall back to header order (the index), never to name comparison.
    spans.sort()
    cursor = 0
    previous: str | None = None
    for begin, end, index in spans:
        name = names[index]
        if begin != cursor:
            if previous is None:
                msg = f"tensor {_q(name)} starts at data offset {begin}; the first tensor must start at 0"
            elif begin > cursor:
                msg = (f"tensor {_q(name)} starts at data offset {begin} but the previous tensor "
                       f"{_q(previous)} ended at {cursor} (gap of {begin - cursor} bytes)")
            else:
                msg = (f"tensor {_q(name)} starts at data offset {begin} but the previous tensor "
                       f"{_q(previous)} ended at {cursor} (overlap of {cursor - begin} bytes)")
            raise FormatError("HFC109", msg, name)
        cursor = end
        previous = name
    del spans

    if cursor > available:
        raise FormatError(
            "HFC110", f"data section needs {cursor} bytes but the file holds {available}", previous
        )
    if cursor < available:
        raise FormatError("HFC111", f"file has {available - cursor} bytes after the last tensor")

    return WeightFile(
        path=os.fsdecode(path),
        format="safetensors",
        tensors=tensors,
        metadata=metadata,
        notes=tuple(notes),
        header_nbytes=n,
    )
