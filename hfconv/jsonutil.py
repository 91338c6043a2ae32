"""Strict JSON loading for files from untrusted model folders.

Python's ``json`` module is lenient where other parsers (serde_json in the safetensors Rust
crate, JavaScript, Go) are not: it keeps the last of duplicate keys, accepts ``NaN`` and
``Infinity``, turns ``1e999`` into ``inf``, accepts lone UTF-16 surrogates in ``\\u``
escapes, and recurses once per nesting level. Each of these lets two readers see different
content in the same file, so ``loads_strict`` refuses them all. No torch import here.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from itertools import accumulate, compress
from typing import Any, Literal, overload

from .fsutil import open_regular

_orjson_loads: Callable[[bytes], Any] | None
try:  # parses large texts (a 100,000-entry weight_map, safetensors headers) in about 2/3 of json's time
    from orjson import loads as _orjson_loads
except ImportError:  # a dependency; json alone reads the same texts
    _orjson_loads = None

__all__ = ["JsonError", "loads_strict", "load_json_file", "loads_fast", "count_containers", "MAX_CONTAINERS"]

KINDS = frozenset(
    {"syntax", "duplicate_key", "nonfinite", "too_deep", "too_large", "not_object", "encoding"}
)

_UTF8_BOM = b"\xef\xbb\xbf"

# Every byte but '"' and the four brackets, for bytes.translate(None, ...) in measure_nesting.
_NOT_QUOTE_OR_BRACKET = bytes(b for b in range(256) if b not in b'"[]{}')
# A \u escape of a UTF-16 surrogate; only when one is present do we walk the parsed value.
SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")

# byte -> depth change, for a C-speed running sum over the bracket-only text
_DEPTH_DELTA = [0] * 256
_DEPTH_DELTA[ord("[")] = _DEPTH_DELTA[ord("{")] = 1
_DEPTH_DELTA[ord("]")] = _DEPTH_DELTA[ord("}")] = -1


class JsonError(Exception):
    """Why a JSON text was refused.

    Attributes:
        kind: one of ``syntax``, ``duplicate_key``, ``nonfinite``, ``too_deep``,
            ``too_large``, ``not_object``, ``encoding``.
        message: one human sentence (with line/column for syntax errors, the key for
            duplicates).
        line: 1-based line of a syntax error, else None.
        column: 1-based column of a syntax error, else None.
        key: the duplicated key for ``duplicate_key``, else None.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        key: str | None = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown JsonError kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.line = line
        self.column = column
        self.key = key


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: build the dict, refusing a key seen twice in one object."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonError("duplicate_key", f"duplicate key {key!r}", key=key)
            seen.add(key)
    return result


def loads_fast(raw: bytes) -> Any:
    """``json.loads`` of UTF-8 bytes, through orjson where it is installed.

    The two read every text alike but for numbers: orjson makes a float of an integer past 64 bits
    and refuses ``NaN``, ``Infinity`` and ``1e400``. So a caller that takes the result only where
    no float is wanted, or where none was found (:func:`_count_keys`), gets json's own answer.

    Raises:
        ValueError: the text is refused (a JSONDecodeError, or bad UTF-8).
        RecursionError: nested past the parser's limit (json's; orjson refuses with ValueError).
    """
    if _orjson_loads is not None:
        return _orjson_loads(raw)
    return json.loads(raw.decode("utf-8"))


def _count_keys(value: object) -> tuple[int, bool]:
    """Keys of every object in a parsed JSON value, and whether a float is in it (iterative: no
    recursion on deep values; each container's values typed in C: a weight_map holds 100,000s of
    strings)."""
    keys = 0
    floats = type(value) is float
    pending = [value]
    while pending:
        item = pending.pop()
        values: Iterable[Any]
        if type(item) is dict:
            keys += len(item)
            values = item.values()
        elif type(item) is list:
            values = item
        else:
            continue
        kinds = set(map(type, values))
        floats = floats or float in kinds
        if not kinds.isdisjoint(_CONTAINER_TYPES):
            pending.extend(compress(values, map(_CONTAINER_TYPES.__contains__, map(type, values))))
    return keys, floats


_CONTAINER_TYPES = frozenset((dict, list))


def _reject_constant(name: str) -> Any:
    """parse_constant: NaN, Infinity and -Infinity are not JSON."""
    raise JsonError("nonfinite", f"non-finite number {name} is not valid JSON")


def _python_constant(name: str) -> float:
    """parse_constant for files Python wrote and reads: Infinity and -Infinity as json does."""
    if name == "NaN":
        _reject_constant(name)
    return float(name)


def _parse_float(text: str) -> float:
    """parse_float: refuse literals that overflow to infinity (``1e999``)."""
    value = float(text)
    if not math.isfinite(value):
        raise JsonError("nonfinite", f"number {text[:40]} is too large for a finite float")
    return value


def measure_nesting(data: bytes, max_depth: int, max_containers: int) -> tuple[int, int]:
    """(deepest ``[``/``{`` nesting, number of arrays and objects), outside string literals;
    exact wherever one of them is past its limit.

    Linear time, no recursion. When there are at most min(``max_depth``, ``max_containers``)
    openers in all (counted in strings too, or outside them), their count (an upper bound on both
    numbers, and within both limits) stands for both, which are then not computed exactly.

    Works on the UTF-8 bytes (``"``, ``\\`` and brackets never occur inside multi-byte
    sequences) with C-speed bytes methods only, because a per-token regex costs seconds on a
    100 MB safetensors header:

    1. Drop escaped backslashes, then escaped quotes: what is left of a backslash run pairs
       up from the left exactly as JSON escapes do, so every remaining ``"`` is a delimiter.
    2. Keep only quotes and brackets; split on quotes; the even pieces lie outside strings.
    3. Count the openers; running sum of +1/-1 over the remaining brackets for the depth.

    For text that is not valid JSON the numbers may be off, but only past the first syntax
    error, where ``json.loads`` stops anyway.
    """
    limit = min(max_depth, max_containers)
    openers = _count_up_to(data, b"[", limit)  # strings' brackets too: an upper bound
    openers += _count_up_to(data, b"{", limit - openers)
    if openers <= limit:
        return openers, openers
    kept = _brackets_outside_strings(data)
    openers = kept.count(b"[") + kept.count(b"{")
    if openers <= limit:
        return openers, openers
    return max(accumulate(map(_DEPTH_DELTA.__getitem__, kept))), openers


def _count_up_to(data: bytes, byte: bytes, limit: int) -> int:
    """Occurrences of ``byte`` in ``data``, counted up to ``limit + 1``: one memchr-speed find per
    occurrence (a 9 MB index holds 3 braces), where ``bytes.count`` reads every byte in a loop."""
    count = 0
    at = data.find(byte)
    while at >= 0 and count <= limit:
        count += 1
        at = data.find(byte, at + 1)
    return count


def count_containers(data: bytes) -> tuple[int, int]:
    """Count the objects and arrays of a JSON text without parsing it.

    Readers use it to refuse a text that would build millions of Python containers before
    ``json.loads`` allocates them. Linear time, C-speed bytes methods, no recursion.

    Args:
        data: UTF-8 JSON text.

    Returns:
        (objects, arrays), counted outside string literals: exact for valid JSON, an upper
        bound for invalid JSON.
    """
    kept = _brackets_outside_strings(data)
    return kept.count(b"{"), kept.count(b"[")


_SPLIT_CHUNK = 1 << 18


def _brackets_outside_strings(data: bytes) -> bytes:
    """Steps 1 and 2 of :func:`measure_nesting`: the brackets of ``data`` that lie outside strings.

    The quote-split runs over 256 KiB slices of the (already bracket-and-quote-only) bytes,
    carrying the inside/outside state across slices: one split of the whole would build a
    bytes object per string, several hundred MB for a 100 MB header of short names.
    """
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = data.translate(None, _NOT_QUOTE_OR_BRACKET)
    if b'"' not in kept:
        return kept
    parts: list[bytes] = []
    inside = False
    for start in range(0, len(kept), _SPLIT_CHUNK):
        pieces = kept[start:start + _SPLIT_CHUNK].split(b'"')
        parts.append(b"".join(pieces[1 if inside else 0::2]))
        if len(pieces) % 2 == 0:  # an odd number of quotes flips the state
            inside = not inside
    return b"".join(parts)


def find_surrogate(value: Any) -> str | None:
    """First string (key or value) holding a lone surrogate, walking iteratively."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE_RE.search(item):
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _type_name(value: Any) -> str:
    return {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)


MAX_CONTAINERS = 2_000_000
"""Arrays and objects one JSON text may hold. Each becomes a Python list or dict (56-64 bytes
empty), so a 50 MB file of ``{},`` would otherwise build 16 million of them (gigabytes).
The largest real tokenizer.json files (a few hundred thousand merges) stay far below."""


@overload
def loads_strict(text: str | bytes, *, max_depth: int = ..., require_object: Literal[True] = ...,
                 max_containers: int = ..., allow_nonfinite: bool = ...) -> dict[str, Any]: ...
@overload
def loads_strict(text: str | bytes, *, max_depth: int = ..., require_object: bool,
                 max_containers: int = ..., allow_nonfinite: bool = ...) -> object: ...
def loads_strict(text: str | bytes, *, max_depth: int = 64, require_object: bool = True,
                 max_containers: int = MAX_CONTAINERS, allow_nonfinite: bool = False) -> object:
    """Parse JSON, refusing everything two parsers could read differently.

    Args:
        text: the JSON text; bytes must be UTF-8 without a byte order mark.
        max_depth: deepest nesting of arrays/objects allowed (checked before parsing, so a
            million ``[`` never reach the recursive parser).
        max_containers: most arrays and objects allowed in all (checked before parsing).
        require_object: when True the top-level value must be an object.
        allow_nonfinite: accept the literals ``Infinity`` and ``-Infinity`` (as the floats
            Python's ``json`` makes of them). For files only Python reads: transformers 4.x
            wrote config.json with ``json.dumps``, which spells ``float("inf")`` that way
            (Mamba2's ``time_step_limit`` default), and transformers reads it back the same
            way. ``NaN`` (no config default is NaN) and overflowing literals (``1e999``) are
            refused all the same.

    Returns:
        The parsed value (a dict when ``require_object``).

    Raises:
        JsonError: kind ``encoding`` (bad UTF-8, BOM, lone surrogate escape), ``too_deep``,
            ``too_large`` (more than ``max_containers``), ``syntax``, ``duplicate_key``,
            ``nonfinite`` or ``not_object``.
    """
    # The text as UTF-8 bytes (as given, or encoded), which the scans and orjson read; bytes given
    # are decoded only for json's parse.
    given_bytes = not isinstance(text, str)
    if isinstance(text, (bytes, bytearray, memoryview)):
        encoded = bytes(text)
        if encoded.startswith(_UTF8_BOM):
            raise JsonError("encoding", "text starts with a UTF-8 byte order mark, which JSON forbids")
    else:
        if text.startswith("\ufeff"):
            raise JsonError("encoding", "text starts with a byte order mark (U+FEFF), which JSON forbids")
        encoded = text.encode("utf-8", "surrogatepass")

    depth, containers = measure_nesting(encoded, max_depth, max_containers)
    if given_bytes and (depth > max_depth or containers > max_containers):
        _decoded(encoded)  # bad UTF-8 is named first, as for every other text
    if depth > max_depth:
        raise JsonError("too_deep", f"nesting depth {depth} exceeds the limit of {max_depth}")
    if containers > max_containers:
        raise JsonError("too_large", f"text holds {containers} arrays and objects (containers), over the limit "
                                     f"of {max_containers}")

    # Every key written has its colon, and every other colon lies inside a string: when the parsed
    # objects hold as many keys as the text holds colons, no key was written twice, and the
    # per-object duplicate hook (half the parse time of a 100,000-entry weight_map) is needed only
    # to name a duplicate. A colon right after no quote is inside a string (or spaced from its key):
    # then the counts would differ, so the hooked parse comes at once, not after a wasted one
    # (tokenizer.json: the ":" token, chat templates). When they may match, a bulk parse comes
    # first, taken where it reads as json would.
    keys_written = None
    if given_bytes and (colons := encoded.count(b":")) == encoded.count(b'":'):
        keys_written = colons
        bulk = _bulk_parse(encoded)
        if bulk is not None:
            value, keys, floats = bulk
            if keys != keys_written:
                keys_written = None  # a key written twice: the hooked parse names it
            elif not floats:
                return _checked_top(value, require_object)
    string = text if isinstance(text, str) else _decoded(encoded)
    parse = functools.partial(json.loads, string, parse_float=_parse_float,
                              parse_constant=_python_constant if allow_nonfinite else _reject_constant)
    try:
        value = parse(object_pairs_hook=None if keys_written is not None else _pairs_no_duplicates)
        if keys_written is not None and _count_keys(value)[0] != keys_written:
            value = parse(object_pairs_hook=_pairs_no_duplicates)
    except json.JSONDecodeError as exc:
        raise JsonError(
            "syntax",
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            line=exc.lineno,
            column=exc.colno,
        ) from None
    except RecursionError:
        # Unreachable after the depth scan; kept so a RecursionError can never escape.
        raise JsonError("too_deep", "nesting too deep for the parser") from None
    except ValueError as exc:
        # CPython refuses integer literals over sys.int_max_str_digits (4300) digits with a
        # plain ValueError. (JsonError from our hooks is not a ValueError and passes through.)
        # int stays the default parse_int so the C scanner keeps its fast path.
        raise JsonError("syntax", f"invalid JSON: {exc}") from None

    # Python decodes "\ud800" to a lone surrogate that other parsers refuse and that cannot
    # be written back as UTF-8. Only walk the value when the text holds such an escape.
    if "\\" in string and SURROGATE_ESCAPE_RE.search(string):  # an escape needs a backslash (found by memchr)
        bad = find_surrogate(value)
        if bad is not None:
            raise JsonError(
                "encoding", f"string {ascii(bad)[:80]} holds a lone UTF-16 surrogate escape"
            )

    return _checked_top(value, require_object)


def _decoded(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError("encoding", f"text is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None


def _bulk_parse(raw: bytes) -> tuple[Any, int, bool] | None:
    """(value, keys, whether it holds a float) by orjson, or None where it refuses the text (a lone
    surrogate escape, bad UTF-8, NaN, a syntax error: json's parse then words why) or is not
    installed. Taken as is only with no float, which json's parse_float reads (and refuses where it
    overflows)."""
    if _orjson_loads is None:  # json's parse would need the checks that follow it
        return None
    try:
        value = loads_fast(raw)
    except (ValueError, RecursionError):
        return None
    return (value, *_count_keys(value))


def _checked_top(value: object, require_object: bool) -> object:
    if require_object and not isinstance(value, dict):
        raise JsonError("not_object", f"top-level JSON value is {_type_name(value)}, not an object")
    return value


def load_json_file(path: str | os.PathLike, *, max_bytes: int = 50_000_000, **kw: Any) -> object:
    """Read and strictly parse a JSON file from an untrusted folder.

    Args:
        path: the file; must be a regular file (FIFOs and devices are refused unread).
        max_bytes: largest file size accepted, checked with fstat before reading.
        **kw: passed on to :func:`loads_strict` (``max_depth``, ``require_object``,
            ``max_containers``).

    Returns:
        The parsed value.

    Raises:
        FormatError: from :func:`hfconv.fsutil.open_regular` (HFC008) when the file cannot
            be opened or is not a regular file.
        JsonError: kind ``too_large`` when the file exceeds ``max_bytes``, else as
            :func:`loads_strict`.
    """
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise JsonError("too_large", f"file is {size} bytes, over the {max_bytes}-byte limit")
        # Read at most one byte past the limit: the file may grow after fstat.
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise JsonError("too_large", f"file grew past the {max_bytes}-byte limit while being read")
    return loads_strict(data, **kw)
