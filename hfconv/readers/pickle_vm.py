"""Walk any pickle (protocols 0 to 5) the way an unpickler would, without building anything.

The state-dict interpreter in :mod:`hfconv.readers.torch_checkpoint` knows only what torch.save
writes and refuses the rest. Files it refuses, and pickles that are not state dicts at all
(``training_args.bin``, ``optimizer.pt``, ``rng_state.pth``), still need one answer: which
globals would ``pickle.load`` import (and call) if someone ran it? This module answers that by
simulating the unpickler's stack, marks and memo with inert placeholders:

* every opcode of protocols 0-5 is decoded with the argument syntax CPython's unpickler accepts
  (``I0x10``/``L0o7`` text integers included: they are decoys that stop ``pickletools``), so
  the walk does not stop where the real unpickler goes on;
* stack discipline follows CPython's ``_pickle.c`` (pops never cross a MARK, POP removes an
  empty MARK), so a walk that reaches STOP saw the opcodes an unpickler runs;
* strings are kept (short ones) because ``STACK_GLOBAL`` takes its module and name from the
  stack; a name computed by a call (``REDUCE`` of ``str``, ...) is reported as
  :data:`COMPUTED_GLOBAL`, never guessed;
* nothing is imported, called or allocated in proportion to what the pickle claims: values are
  placeholders, long strings are not kept, and the walk is capped by opcodes, bytes, memo size
  and stack depth. A walk that hits a cap says which one (``ScanResult.cap``).

The walk is deliberately *more* permissive than CPython where values matter (an APPEND to an
int is fine here): a pickle the real unpickler rejects half-way may be reported with globals it
would never reach, which only ever makes the verdict stricter.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ScanResult", "scan_pickle", "COMPUTED_GLOBAL", "MAX_WALK_OPCODES", "MAX_WALK_BYTES"]

MAX_WALK_OPCODES = 2_000_000
"""Opcodes one walk may take (about two seconds of Python). A training leftover's pickle has a
few thousand; a state dict about 25 per tensor."""
MAX_WALK_BYTES = 64 << 20
"""Bytes of pickle one walk may cover; a longer pickle is not walked (the cap is named)."""
MAX_WALK_MEMO = 1_000_000
MAX_WALK_STACK = 1_000_000
MAX_WALK_MARKS = 10_000
MAX_LINE = 1 << 16
"""Longest text argument (INT, LONG, FLOAT, STRING, UNICODE, GET, PUT lines) walked."""
MAX_KEPT_STRING = 1024
"""Strings longer than this are not kept; used as a global's name they count as computed."""
MAX_PICKLES = 5
"""With ``multi``: torch's legacy format is five pickles (magic, protocol, sys_info, the object,
storage keys) before raw storage bytes, and torch.load never unpickles anything after them."""

COMPUTED_GLOBAL = "<name computed at load time>"
"""Reported for STACK_GLOBAL whose module or name is not a literal string of the pickle."""


class _Other:
    """A placeholder value that is known not to be a string."""

    __slots__ = ()


class _Unknown:
    """A placeholder whose type is unknown (the result of calling a global)."""

    __slots__ = ()


class _LongStr:
    """A string too long to keep."""

    __slots__ = ()


_OTHER = _Other()
_UNKNOWN = _Unknown()
_LONG_STR = _LongStr()

_Value = str | _Other | _Unknown | _LongStr
"""What the walk keeps of a pickled value: a short string's text, else a placeholder."""


@dataclass
class ScanResult:
    """What a walk of a pickle found."""

    globals: list[str] = field(default_factory=list)
    """Every global the unpickler would look up, in order, each once (``module.name``)."""
    calls: int = 0
    """REDUCE / INST / OBJ / NEWOBJ(_EX) / BUILD opcodes executed after the first global."""
    pickles: int = 0
    """Pickles walked to their STOP."""
    end: int = 0
    """Offset just after the last STOP reached (0 if none)."""
    problem: str | None = None
    """Why the walk ended before a STOP, or None when it reached one (and, with ``multi``, the end)."""
    cap: str | None = None
    """The limit the walk hit, when that is the problem."""
    truncated: bool = False
    """The walk ran out of bytes (the pickle may go on past the buffer it was given)."""

    @property
    def complete(self) -> bool:
        return self.problem is None


class _Stop(Exception):
    def __init__(self, problem: str, cap: str | None = None, truncated: bool = False):
        super().__init__(problem)
        self.problem = problem
        self.cap = cap
        self.truncated = truncated


# argument kinds
_NONE, _FIXED, _LINE, _LINES2, _LEN = range(5)
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


def scan_pickle(buf: bytes, *, multi: bool = False, max_ops: int = MAX_WALK_OPCODES,
                max_bytes: int = MAX_WALK_BYTES) -> ScanResult:
    """Walk ``buf`` as pickle(s) and report the globals an unpickler would look up.

    Args:
        buf: the pickle bytes (from offset 0).
        multi: walk pickles that follow one another (up to :data:`MAX_PICKLES`), each with a
            fresh memo, as torch's legacy format and ``pickle.load`` in a loop read them. The
            walk ends without a problem at the end of ``buf`` after a STOP, or after the
            last allowed pickle.
        max_ops: opcode cap (all pickles together).
        max_bytes: a ``buf`` longer than this is walked up to the cap, then the walk ends with
            ``cap`` set (unless it finished before).
    """
    result = ScanResult()
    seen: set[str] = set()
    n = len(buf)
    limit = min(n, max_bytes)
    pos = 0
    ops = 0
    try:
        while True:
            pos, ops = _walk_one(buf, pos, limit, n, ops, max_ops, max_bytes, result, seen)
            result.pickles += 1
            result.end = pos
            if not multi or pos >= n or result.pickles >= MAX_PICKLES:
                return result
    except _Stop as stop:
        result.problem = stop.problem
        result.cap = stop.cap
        result.truncated = stop.truncated
    except Exception as exc:  # noqa: BLE001 - defensive: a walk never raises, it reports
        result.problem = f"walk failed ({type(exc).__name__})"
    return result


def _walk_one(buf: bytes, pos: int, limit: int, n: int, ops: int, max_ops: int, max_bytes: int,
              result: ScanResult, seen: set[str]) -> tuple[int, int]:
    """Walk one pickle starting at ``pos``; return (offset after STOP, opcodes so far)."""
    stack: list[_Value] = []
    marks: list[int] = []
    memo: dict[int, _Value] = {}
    table = _TABLE
    handler = _HANDLER
    width_of = _WIDTH
    found = result.globals
    other = _OTHER
    unknown = _UNKNOWN

    def fence() -> int:
        return marks[-1] if marks else 0

    def pop(at: int) -> _Value:
        if len(stack) <= (marks[-1] if marks else 0):
            raise _Stop(f"stack underflow at byte {at}")
        return stack.pop()

    def pop_mark(at: int) -> int:
        """Pop the innermost MARK; return how many items sat above it (they are removed)."""
        if not marks:
            raise _Stop(f"opcode at byte {at} needs a MARK but none is open")
        k = marks.pop()
        count = len(stack) - k
        del stack[k:]
        return count

    def add_global(name: str) -> None:
        if name not in seen:
            seen.add(name)
            found.append(name)
        stack.append(unknown)

    while True:
        if pos >= limit:
            if limit < n:
                raise _Stop(f"pickle longer than {max_bytes} bytes (walked that far without a STOP)",
                            cap=f"{max_bytes} bytes")
            raise _Stop(f"pickle ends without STOP at byte {pos} (truncated?)", truncated=True)
        ops += 1
        if ops > max_ops:
            raise _Stop(f"more than {max_ops} opcodes (walk stopped at byte {pos})", cap=f"{max_ops} opcodes")
        start = pos
        op = buf[pos]
        pos += 1
        h = handler[op]
        # the commonest opcodes first, inline
        if h == _H_PUSH:  # no argument, pushes a non-string
            stack.append(other)
            continue
        if h == _H_PUSH_FIXED:
            pos += width_of[op]
            if pos > limit:
                raise _short(pos, limit, n, max_bytes)
            stack.append(other)
            continue
        if h == _H_PUT1:
            if pos >= limit:
                raise _short(pos + 1, limit, n, max_bytes)
            if len(stack) <= (marks[-1] if marks else 0):
                raise _Stop(f"BINPUT at byte {start} with an empty stack")
            idx = buf[pos]
            pos += 1
            if idx not in memo and len(memo) >= MAX_WALK_MEMO:
                raise _Stop(f"more than {MAX_WALK_MEMO} memo entries", cap=f"{MAX_WALK_MEMO} memo entries")
            memo[idx] = stack[-1]
            continue
        if h == _H_GET1:
            if pos >= limit:
                raise _short(pos + 1, limit, n, max_bytes)
            idx = buf[pos]
            pos += 1
            try:
                stack.append(memo[idx])
            except KeyError:
                raise _Stop(f"BINGET at byte {start} of memo index {idx}, never set") from None
            continue
        if h == _H_POP:
            if marks and marks[-1] == len(stack):
                marks.pop()
            else:
                pop(start)
            continue
        if h == _H_MARK:
            if len(marks) >= MAX_WALK_MARKS:
                raise _Stop(f"MARKs nested deeper than {MAX_WALK_MARKS}", cap=f"{MAX_WALK_MARKS} marks")
            marks.append(len(stack))
            continue
        if h == _H_TUPLE_N:
            for _ in range(width_of[op]):
                pop(start)
            stack.append(other)
            continue
        if len(stack) > MAX_WALK_STACK:
            raise _Stop(f"stack deeper than {MAX_WALK_STACK}", cap=f"{MAX_WALK_STACK} stack items")
        entry = table[op]
        if entry is None:
            raise _Stop(f"unknown opcode 0x{op:02x} at byte {start}")
        name, kind, width = entry
        # -- read the argument ------------------------------------------------------------------
        # bytes (_FIXED, _LINE), (offset, length) (_LEN) or (line, line) (_LINES2): the opcode's
        # name says which, so the branches below use it as that type (Any: no isinstance per opcode).
        arg: Any = None
        if kind == _FIXED:
            if pos + width > limit:
                raise _short(pos + width, limit, n, max_bytes)
            arg = buf[pos:pos + width]
            pos += width
        elif kind == _LEN:
            if pos + width > limit:
                raise _short(pos + width, limit, n, max_bytes)
            length = int.from_bytes(buf[pos:pos + width], "little", signed=(name in _SIGNED_LEN))
            pos += width
            if length < 0:
                raise _Stop(f"{name} at byte {start} has a negative length")
            if pos + length > limit:
                raise _short(pos + length, limit, n, max_bytes)
            arg = (pos, length)
            pos += length
        elif kind == _LINE or kind == _LINES2:
            arg, pos = _read_line(buf, pos, limit, n, max_bytes, name, start)
            if kind == _LINES2:
                second, pos = _read_line(buf, pos, limit, n, max_bytes, name, start)
                arg = (arg, second)

        # -- the opcode's stack effect --------------------------------------------------------------
        if name in _PUSH_OTHER:
            if name in _TEXT_NUMBERS and not _valid_number(name, arg):
                raise _Stop(f"{name} at byte {start}: argument is not a number")
            stack.append(other)
        elif name == "LONG_BINPUT" or name == "PUT" or name == "MEMOIZE":
            if len(stack) <= fence():
                raise _Stop(f"{name} at byte {start} with an empty stack")
            if name == "MEMOIZE":
                idx = len(memo)
            elif name == "PUT":
                idx = _line_int(arg, start, name)
            else:
                idx = int.from_bytes(arg, "little")
            if idx not in memo and len(memo) >= MAX_WALK_MEMO:
                raise _Stop(f"more than {MAX_WALK_MEMO} memo entries", cap=f"{MAX_WALK_MEMO} memo entries")
            memo[idx] = stack[-1]
        elif name == "LONG_BINGET" or name == "GET":
            idx = _line_int(arg, start, name) if name == "GET" else int.from_bytes(arg, "little")
            try:
                stack.append(memo[idx])
            except KeyError:
                raise _Stop(f"{name} at byte {start} of memo index {idx}, never set") from None
        elif name in _STRINGS:
            stack.append(_string(buf, name, arg, start))
        elif name in _FROM_MARK:  # TUPLE LIST DICT FROZENSET: items above the MARK -> one value
            pop_mark(start)
            stack.append(other)
        elif name == "POP_MARK":
            pop_mark(start)
        elif name == "APPEND" or name == "SETITEM":
            for _ in range(1 if name == "APPEND" else 2):
                pop(start)
            if len(stack) <= fence():
                raise _Stop(f"{name} at byte {start} with nothing to add to")
        elif name == "APPENDS" or name == "SETITEMS" or name == "ADDITEMS":
            pop_mark(start)
            if len(stack) <= fence():
                raise _Stop(f"{name} at byte {start} with nothing to add to")
        elif name == "DUP":
            if len(stack) <= fence():
                raise _Stop(f"DUP at byte {start} with an empty stack")
            stack.append(stack[-1])
        elif name == "GLOBAL":
            module, attr = arg
            add_global(f"{_text(module)}.{_text(attr)}")
        elif name == "STACK_GLOBAL":
            attr = pop(start)
            module = pop(start)
            if type(module) is str and type(attr) is str:
                add_global(f"{module}.{attr}")
            elif isinstance(module, _Other) or isinstance(attr, _Other):
                raise _Stop(f"STACK_GLOBAL at byte {start} of values that are not strings")
            else:
                add_global(COMPUTED_GLOBAL)
        elif name == "INST":
            module, attr = arg
            pop_mark(start)
            add_global(f"{_text(module)}.{_text(attr)}")
            result.calls += 1
        elif name in _EXT:
            code = int.from_bytes(arg, "little")
            add_global(f"<copyreg extension {code}>")
        elif name in _CALLS:  # REDUCE NEWOBJ NEWOBJ_EX OBJ BUILD
            if name == "OBJ":
                if pop_mark(start) < 1:
                    raise _Stop(f"OBJ at byte {start} without a class")
                stack.append(unknown)
            else:
                for _ in range(_CALLS[name]):
                    pop(start)
                if name == "BUILD":
                    if len(stack) <= fence():
                        raise _Stop(f"BUILD at byte {start} with nothing to build")
                else:
                    stack.append(unknown)
            if found:
                result.calls += 1
        elif name == "PERSID":
            stack.append(unknown)
        elif name == "BINPERSID":
            pop(start)
            stack.append(unknown)
        elif name == "READONLY_BUFFER":
            if len(stack) <= fence():
                raise _Stop(f"READONLY_BUFFER at byte {start} with an empty stack")
        elif name == "NEXT_BUFFER":
            raise _Stop(f"NEXT_BUFFER at byte {start}: out-of-band data, which torch.load never provides")
        elif name == "PROTO" or name == "FRAME":
            pass
        elif name == "STOP":
            if len(stack) <= fence():
                raise _Stop(f"STOP at byte {start} with an empty stack")
            return pos, ops
        else:  # pragma: no cover - every table entry is handled above
            raise _Stop(f"opcode {name} at byte {start} not understood")


def _read_line(buf: bytes, pos: int, limit: int, n: int, max_bytes: int, name: str, at: int) -> tuple[bytes, int]:
    end = buf.find(b"\n", pos, min(limit, pos + MAX_LINE + 1))
    if end < 0:
        if pos + MAX_LINE + 1 <= limit:
            raise _Stop(f"{name} at byte {at}: argument line longer than {MAX_LINE} bytes", cap=f"{MAX_LINE}-byte line")
        raise _short(limit + 1, limit, n, max_bytes)
    return buf[pos:end], end + 1


def _short(need: int, limit: int, n: int, max_bytes: int) -> _Stop:
    if need > limit and limit < n:
        return _Stop(f"pickle longer than {max_bytes} bytes (walked that far without a STOP)",
                     cap=f"{max_bytes} bytes")
    return _Stop(f"pickle ends inside an opcode at byte {min(limit, n)} (truncated?)", truncated=True)


def _text(raw: bytes) -> str:
    """A GLOBAL/INST line as the unpickler decodes it (UTF-8); undecodable bytes kept visible."""
    return raw.decode("utf-8", "surrogateescape")


def _line_int(raw: bytes, at: int, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise _Stop(f"{name} at byte {at}: memo index is not a number") from None


def _valid_number(name: str, raw: bytes) -> bool:
    """Whether CPython's unpickler accepts the text argument of INT / LONG / FLOAT.

    It parses integers with base 0 (so ``0x10``, ``0o7``, ``0b1`` are valid: the decoys that
    stop pickletools, which parses base 10). Values never matter here, only validity.
    """
    text = raw.strip()
    if name == "FLOAT":
        try:
            float(text)
            return True
        except ValueError:
            return False
    if name == "LONG" and text[-1:] in (b"L", b"l"):
        text = text[:-1]
    if name == "INT" and text in (b"00", b"01"):
        return True
    try:
        int(text, 0)
        return True
    except ValueError:
        # base-0 int() refuses "010" and over-long decimals; C's strtol takes the first. Accept
        # any sign-digits-letters token: a walk that goes on only ever reports more.
        body = text.lstrip(b"+-")
        return bool(body) and body.replace(b"_", b"").isalnum()


def _string(buf: bytes, name: str, arg: bytes | tuple[int, int], at: int) -> _Value:
    """The value a string opcode pushes: the text when short, else a placeholder."""
    if name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"):
        return _OTHER  # bytes: never a global's name (STACK_GLOBAL requires str)
    if isinstance(arg, tuple):
        start, length = arg
        if length > MAX_KEPT_STRING:
            return _LONG_STR
        raw = buf[start:start + length]
        if name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
            try:
                return raw.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                raise _Stop(f"{name} at byte {at} is not UTF-8") from None
        # BINSTRING / SHORT_BINSTRING: Python 2 str, decoded as torch.load asks (utf-8)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return _UNKNOWN
    raw = arg  # a text line: STRING (quoted, escaped) or UNICODE (raw-unicode-escape)
    if len(raw) > MAX_KEPT_STRING:
        if name == "STRING" and not (len(raw) >= 2 and raw[:1] == raw[-1:] and raw[:1] in (b"'", b'"')):
            raise _Stop(f"STRING at byte {at} is not quoted")
        return _LONG_STR
    if name == "UNICODE":
        try:
            return raw.decode("raw-unicode-escape")
        except UnicodeDecodeError:
            raise _Stop(f"UNICODE at byte {at} does not decode") from None
    if not (len(raw) >= 2 and raw[:1] == raw[-1:] and raw[:1] in (b"'", b'"')):
        raise _Stop(f"STRING at byte {at} is not quoted")
    try:
        return codecs.escape_decode(raw[1:-1])[0].decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return _UNKNOWN


_SIGNED_LEN = frozenset({"BINSTRING", "LONG4"})

_OPS: dict[str, tuple[str, int, int]] = {
    # name: (code, argument kind, width)
    "MARK": ("(", _NONE, 0), "STOP": (".", _NONE, 0), "POP": ("0", _NONE, 0), "POP_MARK": ("1", _NONE, 0),
    "DUP": ("2", _NONE, 0), "FLOAT": ("F", _LINE, 0), "INT": ("I", _LINE, 0), "BININT": ("J", _FIXED, 4),
    "BININT1": ("K", _FIXED, 1), "LONG": ("L", _LINE, 0), "BININT2": ("M", _FIXED, 2), "NONE": ("N", _NONE, 0),
    "PERSID": ("P", _LINE, 0), "BINPERSID": ("Q", _NONE, 0), "REDUCE": ("R", _NONE, 0),
    "STRING": ("S", _LINE, 0), "BINSTRING": ("T", _LEN, 4), "SHORT_BINSTRING": ("U", _LEN, 1),
    "UNICODE": ("V", _LINE, 0), "BINUNICODE": ("X", _LEN, 4), "APPEND": ("a", _NONE, 0),
    "BUILD": ("b", _NONE, 0), "GLOBAL": ("c", _LINES2, 0), "DICT": ("d", _NONE, 0),
    "EMPTY_DICT": ("}", _NONE, 0), "APPENDS": ("e", _NONE, 0), "GET": ("g", _LINE, 0),
    "BINGET": ("h", _FIXED, 1), "INST": ("i", _LINES2, 0), "LONG_BINGET": ("j", _FIXED, 4),
    "LIST": ("l", _NONE, 0), "EMPTY_LIST": ("]", _NONE, 0), "OBJ": ("o", _NONE, 0), "PUT": ("p", _LINE, 0),
    "BINPUT": ("q", _FIXED, 1), "LONG_BINPUT": ("r", _FIXED, 4), "SETITEM": ("s", _NONE, 0),
    "TUPLE": ("t", _NONE, 0), "EMPTY_TUPLE": (")", _NONE, 0), "SETITEMS": ("u", _NONE, 0),
    "BINFLOAT": ("G", _FIXED, 8),
    "PROTO": ("\x80", _FIXED, 1), "NEWOBJ": ("\x81", _NONE, 0), "EXT1": ("\x82", _FIXED, 1),
    "EXT2": ("\x83", _FIXED, 2), "EXT4": ("\x84", _FIXED, 4), "TUPLE1": ("\x85", _NONE, 0),
    "TUPLE2": ("\x86", _NONE, 0), "TUPLE3": ("\x87", _NONE, 0), "NEWTRUE": ("\x88", _NONE, 0),
    "NEWFALSE": ("\x89", _NONE, 0), "LONG1": ("\x8a", _LEN, 1), "LONG4": ("\x8b", _LEN, 4),
    "BINBYTES": ("B", _LEN, 4), "SHORT_BINBYTES": ("C", _LEN, 1),
    "SHORT_BINUNICODE": ("\x8c", _LEN, 1), "BINUNICODE8": ("\x8d", _LEN, 8), "BINBYTES8": ("\x8e", _LEN, 8),
    "EMPTY_SET": ("\x8f", _NONE, 0), "ADDITEMS": ("\x90", _NONE, 0), "FROZENSET": ("\x91", _NONE, 0),
    "NEWOBJ_EX": ("\x92", _NONE, 0), "STACK_GLOBAL": ("\x93", _NONE, 0), "MEMOIZE": ("\x94", _NONE, 0),
    "FRAME": ("\x95", _FIXED, 8), "BYTEARRAY8": ("\x96", _LEN, 8), "NEXT_BUFFER": ("\x97", _NONE, 0),
    "READONLY_BUFFER": ("\x98", _NONE, 0),
}
_TABLE: list[tuple[str, int, int] | None] = [None] * 256
for _name, (_code, _kind, _width) in _OPS.items():
    _TABLE[ord(_code)] = (_name, _kind, _width)

_PUSH_OTHER = frozenset({"INT", "LONG", "FLOAT", "BININT", "BININT1", "BININT2", "NONE", "NEWTRUE", "NEWFALSE",
                         "LONG1", "LONG4", "BINFLOAT", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_SET"})
_TEXT_NUMBERS = frozenset({"INT", "LONG", "FLOAT"})
_STRINGS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                      "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"})
_FROM_MARK = frozenset({"TUPLE", "LIST", "DICT", "FROZENSET"})
_TUPLE_N = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_EXT = frozenset({"EXT1", "EXT2", "EXT4"})
_CALLS = {"REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3, "OBJ": 0, "BUILD": 1}

# fast-path handlers (by opcode byte)
_H_SLOW, _H_PUSH, _H_PUSH_FIXED, _H_PUT1, _H_GET1, _H_POP, _H_MARK, _H_TUPLE_N = range(8)
_HANDLER = [_H_SLOW] * 256
_WIDTH = [0] * 256
for _name in ("NONE", "NEWTRUE", "NEWFALSE", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_SET"):
    _HANDLER[ord(_OPS[_name][0])] = _H_PUSH
for _name in ("BININT", "BININT1", "BININT2", "BINFLOAT"):
    _HANDLER[ord(_OPS[_name][0])] = _H_PUSH_FIXED
    _WIDTH[ord(_OPS[_name][0])] = _OPS[_name][2]
for _name, _count in _TUPLE_N.items():
    _HANDLER[ord(_OPS[_name][0])] = _H_TUPLE_N
    _WIDTH[ord(_OPS[_name][0])] = _count
_HANDLER[ord("q")] = _H_PUT1
_HANDLER[ord("h")] = _H_GET1
_HANDLER[ord("0")] = _H_POP
_HANDLER[ord("(")] = _H_MARK
