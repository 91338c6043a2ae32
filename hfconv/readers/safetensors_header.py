"""Read a safetensors header without torch and without reading tensor bytes.

Layout: an unsigned little-endian 64-bit header length ``N``, ``N`` bytes of UTF-8 JSON
(an object mapping tensor names to ``{"dtype", "shape", "data_offsets"}`` plus an optional
``"__metadata__"`` object of strings), then the data section. ``data_offsets`` are relative
to the start of the data section, ``[begin, end)``.

The checks accept exactly what the installed safetensors (0.8, the Rust crate behind
``safe_open``) accepts and then loads into torch, checked case by case against it in
``tests/test_safetensors_crate_parity.py``:

- serde_json's grammar: leading/trailing JSON whitespace (space, tab, CR, LF) is fine;
  ``NaN``/``Infinity``, numbers out of f64 range (``1e400``, a 400-digit integer), lone
  surrogate escapes and nesting deeper than 127 are refused; ``-0`` and ``0.0`` are floats,
  never a usize.
- serde's data model: an entry may be the sequence ``[dtype, shape, data_offsets]``, a dtype
  may be ``{"F32": null}``, ``__metadata__`` may be ``null``; duplicate tensor names and
  duplicate ``__metadata__`` keys keep the last value (HFC114, a warning: other readers may keep
  the first), while a duplicate ``dtype``/``shape``/``data_offsets`` field or a second
  ``__metadata__`` is refused (HFC105); unknown entry fields are ignored whatever they hold.
- the crate's ``validate()``: offsets tile the data section in order, the element count is a
  left fold of checked 64-bit multiplications (``[2**32, 2**32, 0]`` overflows before the 0),
  sub-byte dtypes end on a byte boundary, the file ends with the last tensor.
- what the torch binding then needs to build each tensor (HFC115/HFC116): no dimension of
  2**63 or more, no zero-element shape whose strides overflow int64, an even last dimension
  for ``F4``, and no ``F6_*`` dtype (``Dtype not understood``). Every entry is checked, whatever
  its name: a buffer loaders later ignore (``attn.masked_bias``) still makes ``load_file``
  refuse the whole file.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import operator
import os
import struct
from typing import Any, BinaryIO

from ..dtypes import SAFETENSORS_BITS
from ..fsutil import open_regular
from ..gcpause import gc_paused
from ..jsonutil import SURROGATE_ESCAPE_RE, JsonError, count_containers, find_surrogate, loads_fast, measure_nesting
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
_I64 = 1 << 63
# serde_json's recursion limit: 128 levels refused, 127 read (unknown entry fields may nest).
_HEADER_MAX_DEPTH = 127
_HEADER_MAX_CONTAINERS = 3 * MAX_TENSORS + 16
"""Arrays and objects a header of MAX_TENSORS entries may hold (each an object and two arrays)."""
_ENTRY_KEYS = ("dtype", "shape", "data_offsets")
# Known to the header format, but the installed safetensors' torch (and numpy) binding has no
# dtype for them: get_tensor fails with "Dtype not understood".
_UNLOADABLE_DTYPES = frozenset({"F6_E2M3", "F6_E3M2"})
# serde_json refuses integer literals beyond f64's range ("number out of range"): 309+ digits.
# Found by mapping digits to "1" and everything else to " ", then a C-speed substring search.
_DIGIT_MARKS = bytes.maketrans(bytes(range(256)), bytes(0x31 if 0x30 <= b <= 0x39 else 0x20 for b in range(256)))
_LONG_DIGIT_RUN = b"1" * 309


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


class _Dups(dict):
    """A JSON object that named a key more than once: the last value kept, as serde's HashMap.

    ``dups`` lists the repeated keys in order; ``dropped`` the (key, value) pairs a later one
    replaced. serde still deserializes every one of them (and refuses the header if a dropped
    value is invalid), so the reader checks them too.
    """

    dups: tuple[str, ...] = ()
    dropped: tuple[tuple[str, Any], ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: last value wins, duplicates remembered (see :class:`_Dups`)."""
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    marked = _Dups(result)
    last = {key: index for index, (key, _) in enumerate(pairs)}
    dups: list[str] = []
    dropped: list[tuple[str, Any]] = []
    for index, (key, value) in enumerate(pairs):
        if last[key] != index:
            dropped.append((key, value))
            if key not in dups:
                dups.append(key)
            bad = find_surrogate(value)
            if bad is not None:  # serde parsed the dropped value too
                raise JsonError("encoding", f"string {ascii(bad)[:80]} holds a lone UTF-16 surrogate escape")
    marked.dups = tuple(dups)
    marked.dropped = tuple(dropped)
    return marked


def _reject_constant(name: str) -> Any:
    raise JsonError("nonfinite", f"{name} is not JSON (serde_json refuses it)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonError("nonfinite", f"number {text[:40]} is out of range for a 64-bit float")
    return value


def _serde_int(text: str) -> int | float:
    """parse_int where serde_json differs from Python: ``-0`` is the float -0.0 (never a
    usize), and an integer beyond f64's range is refused ("number out of range")."""
    if text == "-0":
        return -0.0
    if len(text) > 300 and not math.isfinite(float(text)):
        raise JsonError("nonfinite", f"integer of {len(text)} digits is out of range for a 64-bit float")
    return int(text)


def _parse_header(raw: bytes) -> dict[str, Any]:
    """Decode and parse the header bytes as serde_json does (HFC104, HFC113)."""
    # Each entry is an object: the top-level object, __metadata__ and one per tensor. The cheap
    # byte count is exact enough almost always; the count outside strings settles the rest.
    if raw.count(b"{") > MAX_TENSORS + 2:
        objects, _arrays = count_containers(raw)
        if objects > MAX_TENSORS + 2:
            raise FormatError("HFC113", f"header declares about {objects - 1} tensors (objects), over the limit "
                                        f"of {MAX_TENSORS}; refused before parsing it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError("HFC104", f"header is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    depth, containers = measure_nesting(raw, _HEADER_MAX_DEPTH, _HEADER_MAX_CONTAINERS)
    if depth > _HEADER_MAX_DEPTH:
        raise FormatError("HFC104", f"header nesting depth {depth} exceeds {_HEADER_MAX_DEPTH}, the most "
                                    "safetensors (serde_json) reads")
    if containers > _HEADER_MAX_CONTAINERS:
        raise FormatError("HFC113", f"header holds {containers} arrays and objects, over the limit of "
                                    f"{_HEADER_MAX_CONTAINERS}; refused before parsing it")
    # The default int keeps the C scanner's fast path; the hook only where it matters.
    special_ints = b"-0" in raw or _LONG_DIGIT_RUN in raw.translate(_DIGIT_MARKS)
    try:
        header = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_serde_int if special_ints else None,
        )
    except JsonError as exc:
        raise FormatError("HFC104", f"header is not valid JSON: {exc.message}") from None
    except json.JSONDecodeError as exc:
        raise FormatError("HFC104", f"header is not valid JSON: {exc.msg} at line {exc.lineno} "
                                    f"column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # int_max_str_digits; depth is checked above
        raise FormatError("HFC104", f"header is not valid JSON: {exc}") from None
    if SURROGATE_ESCAPE_RE.search(text):
        bad = find_surrogate(header)
        if bad is not None:
            raise FormatError("HFC104", f"header string {ascii(bad)[:80]} holds a lone UTF-16 surrogate "
                                        "escape, which serde_json refuses")
    if not isinstance(header, dict):
        raise FormatError("HFC104", f"header is {_kind(header)}, not a JSON object")
    count = len(header) - ("__metadata__" in header)
    if count > MAX_TENSORS:
        raise FormatError("HFC113", f"header declares {count} tensors, over the limit of {MAX_TENSORS}")
    return header


def _check_metadata(value: Any, notes: list[ReaderNote]) -> dict[str, str] | None:
    """``__metadata__`` is null or maps strings to strings (HFC112); duplicates -> HFC114."""
    if value is None:  # serde's Option: the same as no __metadata__
        return None
    if not isinstance(value, dict):
        raise FormatError("HFC112", f"__metadata__ is {_kind(value)}, not an object of strings",
                          "__metadata__")
    items = list(value.items())
    if isinstance(value, _Dups):
        items += value.dropped
    for key, item in items:
        if not isinstance(item, str):
            raise FormatError(
                "HFC112", f"__metadata__ value for {_q(key)} is {_kind(item)}, not a string",
                "__metadata__",
            )
    if isinstance(value, _Dups):
        notes.append(ReaderNote(
            "HFC114", f"__metadata__ key {_q(value.dups[0])} appears twice; safetensors keeps the last "
                      "value, other readers may keep the first", "__metadata__"))
    return dict(value)


def _entry_fields(name: str, entry: Any, odd: dict[str, list[str]] | None) -> tuple[str, list, list]:
    """What serde's TensorInfo deserialization checks (HFC105, HFC106, HFC107).

    ``odd`` collects the names of entries written in forms only serde reads ("array",
    "dtype object"), for one HFC114 note each.

    Returns:
        (dtype, shape, data_offsets) with types checked, sizes not yet.
    """
    if isinstance(entry, dict):
        if isinstance(entry, _Dups):
            dup = next((key for key in entry.dups if key in _ENTRY_KEYS), None)
            if dup is not None:
                raise FormatError("HFC105", f"entry for {_q(name)} has key {_q(dup)} twice", name)
        for field in _ENTRY_KEYS:
            if field not in entry:
                raise FormatError("HFC106", f"entry for {_q(name)} has no {field!r}", name)
        # Unknown extra fields are ignored, as by the reference (serde ignores unknown fields).
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    elif isinstance(entry, list) and len(entry) == 3:
        # serde reads a struct from a sequence of its fields in order.
        dtype, shape, offsets = entry
        if odd is not None:
            odd.setdefault("is an array [dtype, shape, data_offsets], not an object", []).append(name)
    elif isinstance(entry, list):
        raise FormatError("HFC106", f"entry for {_q(name)} is an array of {len(entry)} items, not an object "
                                    "(or [dtype, shape, data_offsets])", name)
    else:
        raise FormatError("HFC106", f"entry for {_q(name)} is {_kind(entry)}, not an object", name)

    if isinstance(dtype, dict) and len(dtype) == 1 and not isinstance(dtype, _Dups):
        # serde's externally tagged enum: {"F32": null} is the unit variant F32.
        (variant, unit), = dtype.items()
        if unit is None:
            if odd is not None:
                odd.setdefault("has its dtype written as an object like {\"F32\": null}, not a string",
                               []).append(name)
            dtype = variant
    if not isinstance(dtype, str):
        raise FormatError("HFC106", f"dtype of {_q(name)} is {_kind(dtype)}, not a string", name)
    if dtype not in SAFETENSORS_BITS:
        raise FormatError("HFC107", f"tensor {_q(name)} has unknown dtype {_q(dtype, 40)}", name)
    if not isinstance(shape, list) or not _all_u64(shape):
        raise FormatError(
            "HFC106",
            f"shape of {_q(name)} is {_q(shape, 60)}, not a list of non-negative 64-bit integers",
            name,
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and _all_u64(offsets)):
        raise FormatError(
            "HFC106",
            f"data_offsets of {_q(name)} is {_q(offsets, 60)}, "
            "not a list of two non-negative 64-bit integers",
            name,
        )
    return dtype, shape, offsets


def _numel(shape: list[int]) -> int | None:
    """The element count as the crate folds it: checked u64 multiplications from the left,
    so ``[2**32, 2**32, 0]`` overflows before reaching the 0. None on overflow."""
    if 0 in shape:
        shape = shape[: shape.index(0)]
        zero = True
    else:
        zero = False
    # Without zeros the prefix products only grow: the fold overflows iff the product does.
    if len(shape) <= 16:
        numel = math.prod(shape)  # at most 16 x 64 bits: a small int
    else:
        numel = 1
        for dim in shape:  # early exit: a million 2s must not build a huge int
            numel *= dim
            if numel >= _U64:
                break
    if numel >= _U64:
        return None
    return 0 if zero else numel


def _check_entry(name: str, dtype: str, shape: list[int], begin: int, end: int) -> int:
    """The crate's validate() for one entry (HFC108, HFC109 begin > end). Returns numel."""
    if begin > end:
        raise FormatError(
            "HFC109", f"tensor {_q(name)} has data_offsets [{begin}, {end}]: end before begin", name
        )
    bits = SAFETENSORS_BITS[dtype]
    numel = _numel(shape)
    if numel is None:
        raise FormatError("HFC108", f"shape of {_q(name)} has more elements than fit in 64 bits "
                                    "(counted left to right, as safetensors does)", name)
    total_bits = numel * bits
    if total_bits >= _U64:
        raise FormatError("HFC108", f"tensor {_q(name)} has {numel} {dtype} elements, whose size in bits "
                                    "overflows 64 bits", name)
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
    return numel


def _check_loadable(name: str, dtype: str, shape: tuple[int, ...]) -> None:
    """What safetensors' torch binding needs to build the tensor (HFC115, HFC116).

    get_tensor views the bytes as the dtype and reshapes them to the header's shape (the last
    dimension halved for F4, two values per byte). torch refuses a dimension of 2**63 or more,
    and for a zero-element tensor computes contiguous strides in wrapping int64 arithmetic,
    failing ("Stride calculation overflowed") where one comes out negative.
    """
    if dtype in _UNLOADABLE_DTYPES:
        raise FormatError("HFC116", f"tensor {_q(name)} has dtype {dtype}, which the installed safetensors "
                                    "cannot load into torch or numpy ('Dtype not understood')", name)
    dims = list(shape)
    if dtype == "F4" and dims:
        if dims[-1] % 2:
            raise FormatError("HFC115", f"F4 tensor {_q(name)} has shape {_q(list(shape), 60)}: safetensors loads F4 "
                                        "into torch two values per byte and needs an even last dimension", name)
        dims[-1] //= 2
    big = next((dim for dim in dims if dim >= _I64), None)
    if big is not None:
        raise FormatError("HFC115", f"tensor {_q(name)} has shape {_q(list(shape), 60)}: dimension {big} is over "
                                    "2**63 - 1, which torch and numpy cannot hold, so safetensors refuses "
                                    "to load the file", name)
    stride = 1
    for dim in reversed(dims[1:]):
        stride = (stride * max(dim, 1)) % _U64
        if stride >= _I64:
            raise FormatError("HFC115", f"tensor {_q(name)} has shape {_q(list(shape), 60)}: its strides overflow "
                                        "64 bits, so torch cannot build it ('Stride calculation overflowed')",
                              name)


def _check_tiling(spans: list[tuple[int, int, int]], names: list[str], available: int) -> None:
    """Pass 2, offset order (O(n log n)): the ranges must tile [0, data_end) exactly, as the
    reference's validate() requires (HFC109, HFC110, HFC111). Sorts ``spans`` in place; ties on
    (begin, end) fall back to header order (the index), never to name comparison."""
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
    if cursor > available:
        raise FormatError(
            "HFC110", f"data section needs {cursor} bytes but the file holds {available}", previous
        )
    if cursor < available:
        raise FormatError("HFC111", f"file has {available - cursor} bytes after the last tensor")


_BYTE_SIZES = {dtype: bits // 8 for dtype, bits in SAFETENSORS_BITS.items()
               if bits % 8 == 0 and dtype not in _UNLOADABLE_DTYPES}
"""Whole-byte dtypes: the ones the fast path takes (sub-byte ones may need _check_loadable)."""
_DTYPE_NAMES = {dtype: dtype for dtype in _BYTE_SIZES}
_MISSING = object()


def _read_fast(raw: bytes, base: int, available: int) -> _FastRead | None:
    """The common header in bulk, C-speed operations over flat per-tensor lists.

    Takes only headers that the checked path (``_parse_header`` then the per-entry checks)
    accepts with no note, and returns exactly what it would: the tensors in header order and
    the metadata. Anything else returns None and the checked path reads the header again, to
    refuse it with its precise message or note what only serde reads. The fast path wants:

    - no backslash (every ``"`` delimits a string: no escapes, so no surrogates and no
      escaped key spellings) and no ``-0``;
    - as many colons as the parsed header has keys. Every key written has its colon, and every
      other colon lies inside a string: so the keys written equal the keys parsed, and no key
      was written twice (serde keeps the last one, HFC105/HFC114);
    - every entry an object of exactly ``dtype`` (a whole-byte dtype), ``shape`` (at most 16
      dimensions, each from 1 to 2**64 - 1) and ``data_offsets``; ``__metadata__`` null or
      strings. The nesting is then at most 3, so the depth scan is not needed;
    - sizes that match and tile the data section exactly (no zero-size tensor: ties in the
      offset order are left to the checked path).
    """
    if b"\\" in raw or (b"-" in raw and b"-0" in raw):  # memchr for "-" first: a 2-byte search is 25x slower
        return None
    # Each entry is one object: more objects than the tensor cap is the checked path's refusal,
    # which counts them before parsing (json.loads of 1.5M empty objects takes ~350 MB).
    colons = raw.count(b":")
    # (A header shorter than the caps cannot hold that many objects or arrays: no count needed.)
    if len(raw) > MAX_TENSORS and (raw.count(b"{") > MAX_TENSORS + 2 or raw.count(b"[") > 2 * MAX_TENSORS + 16):
        return None
    try:
        # (orjson, where json would read other numbers, makes floats, which no field below takes)
        header = loads_fast(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, int_max_str_digits
        return None
    if type(header) is not dict:
        return None
    keys = len(header)
    meta = header.pop("__metadata__", _MISSING)
    metadata: dict[str, str] | None = None
    if meta is not _MISSING and meta is not None:
        if type(meta) is not dict or not set(map(type, meta.values())) <= {str}:
            return None
        metadata = meta
        keys += len(meta)
    entries = list(header.values())
    count = len(entries)
    if count > MAX_TENSORS or not set(map(type, entries)) <= {dict} or not set(map(len, entries)) <= {3}:
        return None
    if keys + 3 * count != colons:
        return None
    if not count:
        return ({}, metadata, 0) if available == 0 else None
    if count <= _FEW:
        few = _few_entries(header, base, available)
        if few is not None:
            return few[0], metadata, few[1]
    try:
        dtypes = [entry["dtype"] for entry in entries]
        shapes = [entry["shape"] for entry in entries]
        offsets = [entry["data_offsets"] for entry in entries]
        # Each pass below checks what no other one implies (a pass over 100,000 entries costs
        # 1-2 ms): only a str equals a dtype name (a list or dict raises TypeError here), and an
        # offsets value of two items that is no list of two ints fails the int test or raises.
        if not set(dtypes) <= _BYTE_SIZES.keys() or set(map(len, offsets)) != {2}:
            return None
        # Every shape a list of ints, checked before the shapes become one tuple per distinct shape
        # (a model has a few dozen), which would take 1.0 or True for 1, and "" or {} for []; then
        # each distinct shape's rank and least dimension.
        if set(map(type, shapes)) != {list} or not set(map(type, itertools.chain.from_iterable(shapes))) <= {int}:
            return None
        tuples = list(map(tuple, shapes))
        distinct_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        shapes = list(map(distinct_shapes.setdefault, tuples, tuples))
        del tuples
        if any(len(shape) > 16 or (shape and min(shape) < 1) for shape in distinct_shapes):
            return None
        begins = [pair[0] for pair in offsets]
        ends = [pair[1] for pair in offsets]
        if set(map(type, begins)) != {int} or set(map(type, ends)) != {int}:
            return None
        numels = list(map(math.prod, shapes))
        elements = sum(numels)
        sizes = list(map(operator.mul, numels, map(_BYTE_SIZES.__getitem__, dtypes)))
        # numel * bits below 2**64, as _check_entry requires (so is every dimension, each at least
        # 1); then every size matches its range.
        if max(sizes) >= _U64 // 8 or list(map(operator.sub, ends, begins)) != sizes:
            return None
        # Tiling: sizes are positive, so the ranges tile [0, available) iff the begins, sorted,
        # start at 0, are distinct and each range ends where the next begins (then every offset
        # lies in [0, available]). Writers nearly always list them in that order already: then
        # no sort.
        in_file_order = begins[0] == 0 and ends[-1] == available and ends[:-1] == begins[1:]
        if not in_file_order:
            end_of = dict(zip(begins, ends))
            order = sorted(end_of)
            if len(order) != count or order[0] != 0 or end_of[order[-1]] != available:
                return None
            if list(map(end_of.__getitem__, order[:-1])) != order[1:]:
                return None
    except (KeyError, TypeError):  # a field missing, an unhashable dtype, a non-number in min/max
        return None
    # The parsed header goes before the records are built (the peak holds one of them, not both).
    # Repeated values are one object each, not one per tensor: a dtype string, a shape (5 MB less
    # for DeepSeek-V3), and in file order each begin is the previous tensor's end.
    names = list(header)
    del header, entries, offsets
    dtypes = list(map(_DTYPE_NAMES.__getitem__, dtypes))
    ends = list(map(base.__add__, ends))
    absolute = zip([base, *ends[:-1]] if in_file_order else map(base.__add__, begins), ends)
    del begins, sizes, numels
    rows = zip(names, dtypes, shapes, absolute, itertools.repeat(None), itertools.repeat(0), itertools.repeat(None))
    # Each TensorMeta from its full row in C (a NamedTuple: tuple.__new__, not its Python __new__).
    return dict(zip(names, map(tuple.__new__, itertools.repeat(TensorMeta), rows))), metadata, elements


_FastRead = tuple[dict[str, TensorMeta], dict[str, str] | None, int]
"""What :func:`_read_fast` takes: the tensors, the metadata, and the elements of all tensors."""

_FEW = 48
"""Headers of at most this many entries go through :func:`_few_entries`: one plain loop beats
the bulk path's two dozen whole-list passes below a few dozen tensors (one layer per shard)."""


def _few_entries(header: dict[str, Any], base: int, available: int) -> tuple[dict[str, TensorMeta], int] | None:
    """:func:`_read_fast`'s checks for a short header, entry by entry, in one loop.

    Takes the entries (each a dict of exactly three fields, as the caller made sure) only when
    the bulk path would, and in file order only (each range begins where the previous one ended);
    None leaves the header to the bulk path, which decides as it always did."""
    tensors: dict[str, TensorMeta] = {}
    cursor = elements = 0
    for name, entry in header.items():
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        itemsize = _BYTE_SIZES.get(dtype) if type(dtype) is str else None
        if itemsize is None or type(shape) is not list or len(shape) > 16 \
                or type(offsets) is not list or len(offsets) != 2:
            return None
        numel = 1
        for dim in shape:
            if type(dim) is not int or dim < 1 or dim >= _U64:
                return None
            numel *= dim
        begin, end = offsets
        if type(begin) is not int or begin != cursor or type(end) is not int \
                or numel * itemsize >= _U64 // 8 or end - begin != numel * itemsize:
            return None
        cursor = end
        elements += numel
        tensors[name] = tuple.__new__(TensorMeta, (name, _DTYPE_NAMES[dtype], tuple(shape), (base + begin, base + end),
                                                   None, 0, None))
    return (tensors, elements) if cursor == available else None


def read_safetensors(path: str | os.PathLike, handle: BinaryIO | None = None, *,
                     head: bytes = b"", size: int = -1) -> WeightFile:
    """Read and validate a safetensors file's header; never reads the tensor bytes.

    Args:
        path: the ``.safetensors`` file.
        handle: the file already opened as a regular file (fsutil.open_regular), read from its
            start; None: opened here.
        head: the first bytes of ``handle`` already read (from its start), with ``size``, its
            size by fstat: a header they hold is taken from them, without another read.

    Returns:
        A WeightFile with ``format="safetensors"``, tensors in header order whose
        ``data_offsets`` are absolute byte ranges in the file, ``metadata`` from
        ``__metadata__`` (or None), ``header_nbytes`` = the header length, and an HFC103
        note when the header is over 25 MB.

    Raises:
        FormatError: HFC008 (not a regular file / cannot open), HFC101 (under 8 bytes),
            HFC102 (header length over 100 MB or past the end of the file), HFC104 (header
            not a UTF-8 JSON object serde_json reads), HFC113 (more than MAX_TENSORS
            entries, refused before parsing), HFC105 (duplicate field or __metadata__), HFC106
            (bad entry), HFC107 (unknown dtype), HFC108 (size mismatch or overflow), HFC109 (bad
            offsets: gap, overlap, backwards), HFC110 (truncated), HFC111 (trailing bytes),
            HFC112 (bad ``__metadata__``), HFC115 (a shape torch cannot build), HFC116 (a dtype
            safetensors cannot load). ``tensor`` names the tensor where one applies. Notes:
            HFC103 (header over 25 MB), HFC114 (duplicates or entry forms only serde reads).
    """
    with open_regular(path) if handle is None else contextlib.nullcontext(handle) as f:
        if size < 0:
            f.seek(0)
            size = os.fstat(f.fileno()).st_size
            head = b""
        if size < 8:
            raise FormatError(
                "HFC101", f"file is {size} bytes long, shorter than the 8-byte header length"
            )
        prefix = head[:8] if head else f.read(8)
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
        if len(head) >= 8 + n:
            raw = head[8:8 + n]
        else:
            if head:
                f.seek(8)
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
    with gc_paused():
        fast = _read_fast(raw, base, available)
    if fast is not None:
        # The ranges tile the data section: its size is the tensors' bytes.
        return WeightFile(path=os.fsdecode(path), format="safetensors", tensors=fast[0], metadata=fast[1],
                          totals=(fast[2], available),
                          notes=tuple(notes), header_nbytes=n)
    with gc_paused():
        header = _parse_header(raw)
        del raw
        if isinstance(header, _Dups) and "__metadata__" in header.dups:
            raise FormatError("HFC105", "__metadata__ appears twice in the header", "__metadata__")
        tensor_dups = [key for key in header.dups if key != "__metadata__"] if isinstance(header, _Dups) else []
        dropped = header.dropped if isinstance(header, _Dups) else ()

        metadata: dict[str, str] | None = None
        if "__metadata__" in header:
            metadata = _check_metadata(header.pop("__metadata__"), notes)
        # serde deserializes a replaced duplicate entry too: it must be a valid TensorInfo.
        for name, entry in dropped:
            if name != "__metadata__":
                _entry_fields(name, entry, None)

        # Pass 1, header order: each entry on its own. Entries are popped as they are checked
        # so the parsed header and the result are not both fully alive at the peak.
        tensors: dict[str, TensorMeta] = {}
        names = list(header)
        spans: list[tuple[int, int, int]] = []
        # Entries torch may still refuse: zero elements (any dims) or a sub-byte dtype.
        suspects: list[int] = []
        odd: dict[str, list[str]] = {}
        try:
            for index, name in enumerate(names):
                dtype, shape, (begin, end) = _entry_fields(name, header.pop(name), odd)
                numel = _check_entry(name, dtype, shape, begin, end)
                if numel == 0 or SAFETENSORS_BITS[dtype] < 8:
                    suspects.append(index)
                tensors[name] = TensorMeta(
                    name=name, dtype=dtype, shape=tuple(shape), data_offsets=(base + begin, base + end)
                )
                spans.append((begin, end, index))
            del header
            _check_tiling(spans, names, available)
        except FormatError as exc:
            if tensor_dups and exc.code in ("HFC108", "HFC109", "HFC110", "HFC111"):
                # Explain the likely cause: the entry safetensors dropped held the real layout.
                raise FormatError(
                    "HFC105", f"tensor {_q(tensor_dups[0])} appears twice in the header; safetensors keeps "
                              f"the last entry, and then: {exc.message}", exc.tensor or tensor_dups[0],
                ) from None
            raise
    del spans

    # Only now that the file is well formed: can torch build each tensor? Every entry counts,
    # whatever its name (load_file refuses the whole file for one bad buffer).
    for index in suspects:
        meta = tensors[names[index]]
        _check_loadable(meta.name, meta.dtype, meta.shape)

    for what, odd_names in odd.items():
        more = f" (and {len(odd_names) - 1} more entries)" if len(odd_names) > 1 else ""
        notes.append(ReaderNote("HFC114", f"entry for {_q(odd_names[0])} {what}{more}; safetensors reads it, "
                                          "other safetensors readers may not", odd_names[0]))
    if tensor_dups:
        notes.append(ReaderNote(
            "HFC114", f"tensor {_q(tensor_dups[0])} appears twice in the header"
                      + (f" (and {len(tensor_dups) - 1} more)" if len(tensor_dups) > 1 else "")
                      + "; safetensors keeps the last entry, other readers may keep the first", tensor_dups[0]))

    return WeightFile(
        path=os.fsdecode(path),
        format="safetensors",
        tensors=tensors,
        metadata=metadata,
        notes=tuple(notes),
        header_nbytes=n,
    )
