"""The restricted unpickler: an opcode-level stack machine for the state-dict subset of pickle.

It knows exactly the opcodes and globals ``torch.save`` emits for a state dict at protocol 2.
The "globals" are never imported: they are names checked against an allow-list
(:data:`ALLOWED_GLOBALS`), and each may only be used in the one position where torch puts it.
:mod:`.torch_checkpoint` finds the pickle in its container (zip or legacy stream), runs
:class:`Interpreter` on it and checks the storages and views it returns.

Supported pickle opcodes (protocol 2, what ``torch.save`` writes)::

    PROTO GLOBAL BINPUT LONG_BINPUT BINGET LONG_BINGET MARK EMPTY_DICT EMPTY_LIST
    EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 SETITEM SETITEMS APPEND APPENDS BININT BININT1
    BININT2 LONG1 BINUNICODE NONE NEWTRUE NEWFALSE BINFLOAT REDUCE BINPERSID BUILD STOP

Everything else (STACK_GLOBAL, FRAME, INST, OBJ, NEWOBJ, EXT*, BINBYTES, ...) is refused.
"""

from __future__ import annotations

import pickletools
import re
import struct
from typing import Any

from ..dtypes import STORAGE_CLASS_DTYPE, TORCH_DTYPE, itemsize
from ..tensors import FormatError

# --- limits ----------------------------------------------------------------------------------
# Every limit is checked before the corresponding allocation, so a hostile file cannot make
# the reader use much more memory than the (capped) pickle it holds.
MAX_OPCODES = 2_000_000
"""Opcodes (and units of work: a BUILD costs one per key of its state) one pickle may take: about
65,000 tensors in one file (torch.save writes about 30 opcodes per tensor) and a few seconds of
Python. The cap keeps every hostile pickle under the time budget."""
MAX_MEMO = 1_000_000
MAX_CONTAINERS = 400_000
"""Dicts and lists one pickle may build (about 150 bytes each): torch.save writes one dict per
tensor (its empty backward-hooks OrderedDict), so this is over the tensors MAX_OPCODES allows."""
MAX_STACK = 1_000_000
"""torch.save's pickler batches SETITEMS by 1000, so a real state dict never has more than a
few thousand items on the stack; a million (8 MB of pointers) is ample and bounds a push bomb."""
MAX_MARK_DEPTH = 64
"""torch nests MARKs about 3 deep; 64 leaves room and bounds the mark stack."""
MAX_STRING_BYTES = 1 << 20
MAX_GLOBAL_LINE = 256
MAX_TENSORS = 1_000_000
MAX_NDIM = 64
MAX_DIM_VALUE = (1 << 62)

# --- the allow-list --------------------------------------------------------------------------
_CALLABLES = frozenset({
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
})
_UNTYPED_STORAGE = "torch.storage.UntypedStorage"
_STORAGE_CLASSES: dict[str, str | None] = {f"torch.{cls}": dt for cls, dt in STORAGE_CLASS_DTYPE.items()}
_STORAGE_CLASSES[_UNTYPED_STORAGE] = None  # bytes; the tensor's dtype comes from _rebuild_tensor_v3
_DTYPE_GLOBALS: dict[str, str] = {f"torch.{name}": dt for name, dt in TORCH_DTYPE.items()}

ALLOWED_GLOBALS: frozenset[str] = frozenset(_CALLABLES) | frozenset(_STORAGE_CLASSES) | frozenset(_DTYPE_GLOBALS)
"""Every ``module.name`` a checkpoint pickle may reference."""

# Real torch storage classes and dtypes hfconv cannot represent. They are harmless names, so
# they get their own code (HFC211) rather than the "forbidden global" alarm.
UNSUPPORTED_TORCH_TYPES = frozenset(
    [f"torch.{c}" for c in ("ComplexDoubleStorage", "QInt8Storage", "QUInt8Storage", "QInt32Storage",
                            "QUInt4x2Storage", "QUInt2x4Storage")]
    + [f"torch.{d}" for d in ("complex128", "cdouble", "complex32", "chalf", "float8_e4m3fnuz",
                              "float8_e5m2fnuz", "float4_e2m1fn_x2", "qint8", "quint8", "qint32", "quint4x2",
                              "quint2x4", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16")]
    + [f"torch.int{i}" for i in range(1, 8)] + [f"torch.uint{i}" for i in range(1, 8)]
)

SUPPORTED_OPCODES: tuple[str, ...] = (
    "PROTO", "GLOBAL", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET", "MARK", "EMPTY_DICT",
    "EMPTY_LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "SETITEM", "SETITEMS",
    "APPEND", "APPENDS", "BININT", "BININT1", "BININT2", "LONG1", "BINUNICODE", "NONE",
    "NEWTRUE", "NEWFALSE", "BINFLOAT", "REDUCE", "BINPERSID", "BUILD", "STOP",
)

_STORAGE_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")
# Device tags torch.save writes as a storage's location ("cpu", "cuda:0", ...).
_LOCATION_RE = re.compile(r"(cpu|cuda|mps|meta|xpu|hpu|xla|mtia|ipu|npu|maia|lazy|vulkan|ve|privateuseone)"
                          r"(:[0-9]{1,4})?\Z")

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_F64_BE = struct.Struct(">d")


# =============================================================================================
# the pickle interpreter
# =============================================================================================

class CapHit(FormatError):
    """The pickle reached one of hfconv's resource caps: the rest was not looked at (not even by
    the forbidden-global walk, which would pay the same cost again)."""


class Truncated(FormatError):
    """The pickle ran past the bytes available (caller may retry with more)."""

    def __init__(self, label: str):
        super().__init__("HFC203", f"{label}: pickle ends without STOP (truncated file?)")


class _Global:
    """A name a GLOBAL opcode referenced; never imported."""

    __slots__ = ("name", "kind")

    def __init__(self, name: str, kind: str):
        self.name = name
        self.kind = kind  # "callable" | "storage" | "dtype"


class PickledDict:
    """A dict or OrderedDict under construction."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: dict = {}


class PickledList:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list = []


class _Args:
    """A tuple that holds globals or storages: legal only as a persistent id or REDUCE args."""

    __slots__ = ("kind", "items")

    def __init__(self, kind: str, items: tuple):
        self.kind = kind  # "pid" | "rebuild"
        self.items = items


class _StorageRef:
    """A storage named by a persistent id."""

    __slots__ = ("key", "storage_class", "dtype", "raw_numel", "raw_itemsize", "first_tensor")

    def __init__(self, key: str, storage_class: str, dtype: str | None, raw_numel: int):
        self.key = key
        self.storage_class = storage_class
        self.dtype = dtype  # None for UntypedStorage until a _rebuild_tensor_v3 gives one
        self.raw_numel = raw_numel  # elements (typed) or bytes (untyped), as in the pickle
        self.raw_itemsize = itemsize(dtype) if dtype is not None else 1
        self.first_tensor: str | None = None


class TensorView:
    """A view of a storage, as the rebuild functions would have built it."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple, dtype: str):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride
        self.dtype = dtype


_SPECIAL = (_Global, _Args, _StorageRef)
_KEY_TYPES = (str, int, bool, float, type(None))

# opcode bytes
_PROTO, _GLOBAL, _BINPUT, _LONG_BINPUT, _BINGET, _LONG_BINGET = 0x80, 0x63, 0x71, 0x72, 0x68, 0x6A
_MARK, _EMPTY_DICT, _EMPTY_LIST, _EMPTY_TUPLE = 0x28, 0x7D, 0x5D, 0x29
_TUPLE, _TUPLE1, _TUPLE2, _TUPLE3 = 0x74, 0x85, 0x86, 0x87
_SETITEM, _SETITEMS, _APPEND, _APPENDS = 0x73, 0x75, 0x61, 0x65
_BININT, _BININT1, _BININT2, _LONG1 = 0x4A, 0x4B, 0x4D, 0x8A
_BINUNICODE, _NONE, _NEWTRUE, _NEWFALSE, _BINFLOAT = 0x58, 0x4E, 0x88, 0x89, 0x47
_REDUCE, _BINPERSID, _BUILD, _STOP = 0x52, 0x51, 0x62, 0x2E


_OPCODES = {info.code: info for info in pickletools.opcodes}  # pickletools.code2op, which typeshed omits


def _opcode_name(op: int) -> str:
    info = _OPCODES.get(chr(op))
    return info.name if info is not None else f"unknown opcode 0x{op:02x}"


class Interpreter:
    """Opcode-level stack machine for the state-dict subset of pickle protocol 2.

    Pickle's semantics are mirrored where torch relies on them (memo, MARK sections that
    pops cannot cross, dict insertion order); anything torch.save never writes is refused.
    Values are inert: ``_Global`` only carries a name, REDUCE only builds ``PickledDict`` /
    ``TensorView`` records after checking the callable and its arguments.
    """

    def __init__(self, buf: bytes, *, label: str, base: int, legacy: bool):
        self.label = label
        self.legacy = legacy
        self.buf = buf
        self.base = base
        self.storages: dict[str, _StorageRef] = {}
        self.tensor_count = 0

    def reset(self, buf: bytes, *, base: int) -> None:
        self.buf = buf
        self.base = base
        self.storages = {}
        self.tensor_count = 0

    # -- errors -------------------------------------------------------------------------------
    def _fail(self, message: str, at: int, code: str = "HFC203", tensor: str | None = None) -> FormatError:
        return FormatError(code, f"{self.label} at byte {self.base + at}: {message}", tensor)

    def _cap(self, message: str, at: int) -> CapHit:
        return CapHit("HFC203", f"{self.label} at byte {self.base + at}: {message}; hfconv stopped there and did "
                                 "not check the rest of the pickle: do not torch.load this file")

    # -- main loop ----------------------------------------------------------------------------
    def run(self) -> tuple[object, int]:
        """Interpret from byte 0 to STOP; return (value, offset just after STOP).

        One long function on purpose: this is the per-opcode dispatch loop of every .bin
        hfconv reads, and its state (stack, marks, memo, counters, caps) lives in locals
        because a method call or attribute lookup per opcode costs about as much as the
        opcode itself. Split into helpers it would be markedly slower on large checkpoints.
        """
        buf = self.buf
        n = len(buf)
        stack: list = []
        marks: list[int] = []
        memo: dict[int, object] = {}
        fail = self._fail
        pos = 0
        ops = 0
        containers = 0
        max_ops, max_stack = MAX_OPCODES, MAX_STACK  # locals: read on every opcode
        if n < 2:
            raise Truncated(self.label)
        if buf[0] != _PROTO:
            raise fail("pickle does not start with PROTO (torch.save writes protocol 2)", 0)

        def floor() -> int:
            return marks[-1] if marks else 0

        def pop(start: int) -> Any:
            if len(stack) <= (marks[-1] if marks else 0):
                raise fail("stack underflow (pop across a MARK)", start)
            return stack.pop()

        def pop_mark(start: int) -> list:
            if not marks:
                raise fail("opcode needs a MARK but none is open", start)
            k = marks.pop()
            items = stack[k:]
            del stack[k:]
            return items

        while True:
            if pos >= n:
                raise Truncated(self.label)
            start = pos
            op = buf[pos]
            pos += 1
            ops += 1
            if ops > max_ops:
                raise self._cap(f"more than {MAX_OPCODES} opcodes (hfconv's limit: about 65,000 tensors per file; "
                                "save the state dict in shards)", start)
            if len(stack) > max_stack:
                raise self._cap(f"stack deeper than {MAX_STACK} (hfconv's limit)", start)

            if op == _BINPUT or op == _LONG_BINPUT:
                width = 1 if op == _BINPUT else 4
                if pos + width > n:
                    raise Truncated(self.label)
                idx = buf[pos] if width == 1 else _U32.unpack_from(buf, pos)[0]
                pos += width
                if len(stack) <= floor():
                    raise fail("memo put with an empty stack", start)
                if idx not in memo and len(memo) >= MAX_MEMO:
                    raise self._cap(f"more than {MAX_MEMO} memo entries (hfconv's limit)", start)
                memo[idx] = stack[-1]
            elif op == _BINGET or op == _LONG_BINGET:
                width = 1 if op == _BINGET else 4
                if pos + width > n:
                    raise Truncated(self.label)
                idx = buf[pos] if width == 1 else _U32.unpack_from(buf, pos)[0]
                pos += width
                try:
                    stack.append(memo[idx])
                except KeyError:
                    raise fail(f"memo get of unset index {idx}", start) from None
            elif op == _BINUNICODE:
                if pos + 4 > n:
                    raise Truncated(self.label)
                length = _U32.unpack_from(buf, pos)[0]
                pos += 4
                if length > MAX_STRING_BYTES:
                    raise fail(f"string of {length} bytes (limit {MAX_STRING_BYTES})", start)
                if pos + length > n:
                    raise Truncated(self.label)
                try:
                    stack.append(buf[pos:pos + length].decode("utf-8"))
                except UnicodeDecodeError:
                    raise fail("string is not valid UTF-8", start) from None
                pos += length
            elif op == _BININT1:
                if pos >= n:
                    raise Truncated(self.label)
                stack.append(buf[pos])
                pos += 1
            elif op == _BININT2:
                if pos + 2 > n:
                    raise Truncated(self.label)
                stack.append(_U16.unpack_from(buf, pos)[0])
                pos += 2
            elif op == _BININT:
                if pos + 4 > n:
                    raise Truncated(self.label)
                stack.append(_I32.unpack_from(buf, pos)[0])
                pos += 4
            elif op == _LONG1:
                if pos >= n:
                    raise Truncated(self.label)
                length = buf[pos]
                pos += 1
                if pos + length > n:
                    raise Truncated(self.label)
                stack.append(int.from_bytes(buf[pos:pos + length], "little", signed=True))
                pos += length
            elif op == _MARK:
                if len(marks) >= MAX_MARK_DEPTH:
                    raise fail(f"MARKs nested deeper than {MAX_MARK_DEPTH}", start)
                marks.append(len(stack))
            elif op == _TUPLE:
                stack.append(self._tuple(pop_mark(start), start))
            elif op == _TUPLE1 or op == _TUPLE2 or op == _TUPLE3:
                count = op - _TUPLE1 + 1
                if len(stack) - floor() < count:
                    raise fail(f"{_opcode_name(op)} needs {count} items", start)
                items = stack[-count:]
                del stack[-count:]
                stack.append(self._tuple(items, start))
            elif op == _EMPTY_TUPLE:
                stack.append(())
            elif op == _EMPTY_DICT:
                containers += 1
                if containers > MAX_CONTAINERS:
                    raise self._cap(f"more than {MAX_CONTAINERS} dicts and lists (hfconv's limit)", start)
                stack.append(PickledDict())
            elif op == _EMPTY_LIST:
                containers += 1
                if containers > MAX_CONTAINERS:
                    raise self._cap(f"more than {MAX_CONTAINERS} dicts and lists (hfconv's limit)", start)
                stack.append(PickledList())
            elif op == _NONE:
                stack.append(None)
            elif op == _NEWTRUE:
                stack.append(True)
            elif op == _NEWFALSE:
                stack.append(False)
            elif op == _BINFLOAT:
                if pos + 8 > n:
                    raise Truncated(self.label)
                stack.append(_F64_BE.unpack_from(buf, pos)[0])
                pos += 8
            elif op == _SETITEM:
                value = pop(start)
                key = pop(start)
                self._setitems(stack, floor(), [key, value], start)
            elif op == _SETITEMS:
                items = pop_mark(start)
                self._setitems(stack, floor(), items, start)
            elif op == _APPEND:
                value = pop(start)
                self._appends(stack, floor(), [value], start)
            elif op == _APPENDS:
                items = pop_mark(start)
                self._appends(stack, floor(), items, start)
            elif op == _GLOBAL:
                module, pos = self._line(pos, start)
                name, pos = self._line(pos, start)
                stack.append(self._global(module, name, start))
            elif op == _REDUCE:
                args = pop(start)
                func = pop(start)
                value = self._reduce(func, args, start)
                if type(value) is PickledDict:
                    containers += 1
                    if containers > MAX_CONTAINERS:
                        raise self._cap(f"more than {MAX_CONTAINERS} dicts and lists (hfconv's limit)", start)
                stack.append(value)
            elif op == _BINPERSID:
                stack.append(self._persistent(pop(start), start))
            elif op == _BUILD:
                state = pop(start)
                if len(stack) <= floor():
                    raise fail("BUILD with nothing to build", start)
                target = stack[-1]
                # torch.save of an OrderedDict state dict ends with BUILD {'_metadata': ...}:
                # attributes of the dict, irrelevant to the tensors. Nothing else is built.
                if not isinstance(target, PickledDict) or not isinstance(state, PickledDict):
                    raise fail(f"BUILD of {describe_value(target)} with {describe_value(state)} "
                               "(torch only BUILDs an OrderedDict's attribute dict)", start)
                ops += len(state.items)  # work: each BUILD walks its state's keys
                if not all(type(k) is str for k in state.items):
                    raise fail("BUILD state has non-string attribute names", start)
            elif op == _STOP:
                if marks:
                    raise fail("STOP with an open MARK", start)
                if len(stack) != 1:
                    raise fail(f"STOP with {len(stack)} items on the stack (expected 1)", start)
                value = stack[0]
                if isinstance(value, _SPECIAL):
                    raise fail(f"pickle result is {describe_value(value)}", start)
                return value, pos
            elif op == _PROTO:
                if start != 0:
                    raise fail("PROTO after the start of the pickle", start)
                if pos >= n:
                    raise Truncated(self.label)
                if buf[pos] != 2:
                    raise fail(f"pickle protocol {buf[pos]} (saved with pickle_protocol={buf[pos]}?); hfconv reads "
                           "the protocol 2 torch.save writes by default", start)
                pos += 1
            else:
                raise fail(f"unsupported opcode {_opcode_name(op)}", start)

    # -- helpers ------------------------------------------------------------------------------
    def _line(self, pos: int, start: int) -> tuple[str, int]:
        buf = self.buf
        end = buf.find(b"\n", pos, pos + MAX_GLOBAL_LINE + 1)
        if end < 0:
            if pos + MAX_GLOBAL_LINE + 1 > len(buf):
                raise Truncated(self.label)
            raise self._fail(f"GLOBAL name longer than {MAX_GLOBAL_LINE} bytes", start)
        try:
            text = buf[pos:end].decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("GLOBAL name is not valid UTF-8", start) from None
        return text, end + 1

    def _global(self, module: str, name: str, start: int) -> _Global:
        full = f"{module}.{name}"
        if full in _CALLABLES:
            return _Global(full, "callable")
        if full in _STORAGE_CLASSES:
            return _Global(full, "storage")
        if full in _DTYPE_GLOBALS:
            return _Global(full, "dtype")
        if full in UNSUPPORTED_TORCH_TYPES:
            raise FormatError("HFC211", f"{self.label}: uses {full}, a dtype hfconv does not support", full)
        shown = full if full.isprintable() else ascii(full)
        raise FormatError("HFC201", f"{self.label} at byte {self.base + start}: pickle references forbidden "
                                    f"global '{shown}'; torch.load would import and call it (do not load "
                                    "this file)", shown)

    def _tuple(self, items: list[Any], start: int) -> object:
        """Build a tuple; tuples carrying globals or storages get a restricted wrapper."""
        special = [i for i, x in enumerate(items) if isinstance(x, _SPECIAL)]
        if not special:
            return tuple(items)
        first = items[0]
        # persistent id: ('storage', <storage class>, key, location, numel[, view_metadata])
        if (special == [1] and len(items) == (6 if self.legacy else 5) and type(first) is str
                and first == "storage" and isinstance(items[1], _Global) and items[1].kind == "storage"):
            return _Args("pid", tuple(items))
        # rebuild arguments: (storage, offset, size, stride, ...[, dtype at 6 for v3])
        if isinstance(first, _StorageRef) and (special == [0] or (
                special == [0, 6] and isinstance(items[6], _Global) and items[6].kind == "dtype")):
            return _Args("rebuild", tuple(items))
        bad = next((i for i in special if not (i == 0 and isinstance(first, _StorageRef))), special[0])
        raise self._fail(f"{describe_value(items[bad])} inside a tuple where torch never puts it", start)

    def _setitems(self, stack: list[Any], floor: int, items: list[Any], start: int) -> None:
        if len(stack) <= floor:
            raise self._fail("SETITEM(S) with no dict below the MARK", start)
        target = stack[-1]
        if not isinstance(target, PickledDict):
            raise self._fail(f"SETITEM(S) on {describe_value(target)}", start)
        if len(items) % 2:
            raise self._fail("SETITEMS with an odd number of items", start)
        d = target.items
        for i in range(0, len(items), 2):
            key, value = items[i], items[i + 1]
            if type(key) not in _KEY_TYPES:
                raise self._fail(f"dict key is {describe_value(key)}", start)
            if isinstance(value, _SPECIAL):
                raise self._fail(f"dict value is {describe_value(value)}", start)
            if key in d:
                # A pickle torch wrote never sets a key twice; "last one wins" would hide a tensor.
                raise self._fail(f"dict key {short_value(key)} set twice", start)
            d[key] = value

    def _appends(self, stack: list[Any], floor: int, items: list[Any], start: int) -> None:
        if len(stack) <= floor:
            raise self._fail("APPEND(S) with no list below the MARK", start)
        target = stack[-1]
        if not isinstance(target, PickledList):
            raise self._fail(f"APPEND(S) on {describe_value(target)}", start)
        for value in items:
            if isinstance(value, _SPECIAL):
                raise self._fail(f"list item is {describe_value(value)}", start)
        target.items.extend(items)

    def _persistent(self, pid: object, start: int) -> _StorageRef:
        if not isinstance(pid, _Args) or pid.kind != "pid":
            raise self._fail(f"persistent id is {describe_value(pid)}, not a ('storage', ...) tuple", start)
        _, cls, key, location, numel = pid.items[:5]
        if type(key) is not str or not _STORAGE_KEY_RE.match(key):
            raise self._fail(f"storage key {short_value(key)} is not a plain name", start)
        if type(location) is not str or not _LOCATION_RE.match(location):
            raise self._fail(f"storage location {short_value(location)} is not a device torch knows", start)
        if type(numel) is not int or numel < 0 or numel > MAX_DIM_VALUE:
            raise self._fail(f"storage size {short_value(numel)} is not a non-negative int", start)
        if self.legacy and pid.items[5] is not None:
            raise self._fail("legacy storage views (view_metadata) are not supported", start)
        if self.legacy and cls.name == _UNTYPED_STORAGE:
            # torch.save writes these (float8, uint16/32/64 in the legacy format) but
            # torch.load's legacy path fails on them: UntypedStorage has no .dtype.
            raise self._fail("UntypedStorage in a legacy checkpoint, which torch.load cannot read "
                             "(re-save float8/uint16/uint32/uint64 tensors in the zip format)", start)
        dtype = _STORAGE_CLASSES[cls.name]
        known = self.storages.get(key)
        if known is not None:
            if known.storage_class != cls.name or known.raw_numel != numel:
                raise self._fail(f"one storage used with two dtypes or sizes (storage '{key}' is "
                                 f"{known.storage_class} x {known.raw_numel} and {cls.name} x {numel})", start)
            return known
        ref = _StorageRef(key, cls.name, dtype, numel)
        self.storages[key] = ref
        return ref

    def _reduce(self, func: object, args: object, start: int) -> PickledDict | TensorView:
        if not isinstance(func, _Global) or func.kind != "callable":
            raise self._fail(f"REDUCE calls {describe_value(func)}", start)
        name = func.name
        if name == "collections.OrderedDict":
            if type(args) is not tuple or args:
                raise self._fail("OrderedDict called with arguments (torch passes none)", start)
            return PickledDict()
        if name == "torch._utils._rebuild_parameter":
            if type(args) is not tuple or len(args) != 3:
                raise self._fail("_rebuild_parameter needs (tensor, requires_grad, hooks)", start)
            tensor, requires_grad, hooks = args
            if not isinstance(tensor, TensorView):
                raise self._fail(f"_rebuild_parameter of {describe_value(tensor)}", start)
            self._check_flags(requires_grad, hooks, start)
            return tensor
        # the _rebuild_tensor family
        arity = {"torch._utils._rebuild_tensor": (4,), "torch._utils._rebuild_tensor_v2": (6, 7),
                 "torch._utils._rebuild_tensor_v3": (7, 8)}[name]
        if not isinstance(args, _Args) or args.kind != "rebuild" or len(args.items) not in arity:
            raise self._fail(f"{name.rsplit('.', 1)[1]} called with the wrong arguments "
                             f"(expected {' or '.join(map(str, arity))} starting with a storage)", start)
        items = args.items
        storage: _StorageRef = items[0]
        offset, size, stride = items[1], items[2], items[3]
        if type(offset) is not int:
            raise self._fail("storage offset is not an int", start)
        for label, seq in (("size", size), ("stride", stride)):
            if type(seq) is not tuple or len(seq) > MAX_NDIM or not all(type(v) is int for v in seq):
                raise self._fail(f"tensor {label} is not a tuple of at most {MAX_NDIM} ints", start)
        if len(items) >= 6:
            self._check_flags(items[4], items[5], start)
        is_v3 = name.endswith("_v3")
        dtype_arg = items[6] if len(items) > 6 else None
        dtype_global = dtype_arg if isinstance(dtype_arg, _Global) and dtype_arg.kind == "dtype" else None
        if is_v3 != (dtype_global is not None):
            raise self._fail(f"{name.rsplit('.', 1)[1]} with {describe_value(dtype_arg)} where "
                             f"{'a dtype' if is_v3 else 'tensor metadata'} belongs", start)
        if dtype_global is not None:  # is_v3
            dtype = _DTYPE_GLOBALS[dtype_global.name]
            if storage.storage_class != _UNTYPED_STORAGE:
                raise self._fail("_rebuild_tensor_v3 of a typed storage (torch passes an UntypedStorage)", start)
            if storage.dtype is None:
                storage.dtype = dtype
            elif storage.dtype != dtype:
                raise self._fail(f"one storage used with two dtypes (storage '{storage.key}' as "
                                 f"{storage.dtype} and {dtype})", start)
        else:
            if storage.dtype is None:
                raise self._fail(f"{name.rsplit('.', 1)[1]} of an UntypedStorage (needs a dtype)", start)
            dtype = storage.dtype
        metadata_at = 7 if is_v3 else 6
        if len(items) > metadata_at:
            self._check_metadata(items[metadata_at], start)
        self.tensor_count += 1
        if self.tensor_count > MAX_TENSORS:
            raise self._fail(f"more than {MAX_TENSORS} tensors", start)
        return TensorView(storage, offset, size, stride, dtype)

    def _check_flags(self, requires_grad: object, hooks: object, start: int) -> None:
        if type(requires_grad) is not bool:
            raise self._fail("requires_grad is not a bool", start)
        # torch never serialises hooks: backward_hooks is always an empty OrderedDict().
        if not isinstance(hooks, PickledDict) or hooks.items:
            raise self._fail("backward_hooks is not an empty OrderedDict", start)

    def _check_metadata(self, metadata: object, start: int) -> None:
        # torch appends {'conj': True} / {'neg': True} for lazily conjugated/negated tensors:
        # their stored bytes are not the tensor's values, which a converter would get wrong.
        if not isinstance(metadata, PickledDict):
            raise self._fail("tensor metadata is not a dict", start)
        if len(metadata.items) > 16:
            # torch writes at most {'conj': True, 'neg': True}; a big dict (reused via the memo
            # by every tensor) would make each rebuild cost its size
            raise self._fail(f"tensor metadata dict has {len(metadata.items)} entries", start)
        for key, value in metadata.items.items():
            if type(key) is not str or type(value) is not bool:
                raise self._fail("tensor metadata is not a dict of str to bool", start)
            if value:
                raise self._fail(f"tensor has the '{short_value(key)}' bit set (conjugate/negative view); "
                                 "call .resolve_conj()/.resolve_neg() before saving", start)


# =============================================================================================
# the state dict the pickle built
# =============================================================================================

def state_dict_tensors(root: object) -> dict[str, TensorView]:
    """The flat name -> tensor mapping, or HFC208 saying what the file holds instead."""
    if not isinstance(root, PickledDict):
        raise FormatError("HFC208", f"top-level object is {describe_value(root)}, not a state dict")
    tensors: dict[str, TensorView] = {}
    for key, value in root.items.items():
        if type(key) is not str:
            raise FormatError("HFC208", f"state dict key {short_value(key)} is {describe_value(key)}, not a string")
        if isinstance(value, TensorView):
            tensors[key] = value
            continue
        if isinstance(value, PickledDict) and any(isinstance(v, TensorView) for v in value.items.values()):
            raise FormatError("HFC208", f"the tensors are nested under '{short_value(key)}' (a training checkpoint?); "
                                        "loaders expect a flat state dict: save checkpoint"
                                        f"[{short_value(key)}] instead", key)
        raise FormatError("HFC208", f"state dict entry '{short_value(key)}' is {describe_value(value)}, "
                                "not a tensor", key)
    return tensors


# =============================================================================================
# message helpers (never repr() untrusted nested values: they can be deep or cyclic)
# =============================================================================================

def describe_value(value: object) -> str:
    if isinstance(value, _Global):
        return f"global {value.name}"
    if isinstance(value, _Args):
        return "a persistent-id tuple" if value.kind == "pid" else "tensor-rebuild arguments"
    if isinstance(value, _StorageRef):
        return "a storage"
    if isinstance(value, TensorView):
        return "a tensor"
    if isinstance(value, PickledDict):
        return "a dict"
    if isinstance(value, PickledList):
        return "a list"
    if value is None:
        return "None"
    return {bool: "a bool", int: "an int", float: "a float", str: "a string", tuple: "a tuple"}.get(
        type(value), type(value).__name__)


def short_value(value: object) -> str:
    """A scalar for a message, cut short and made printable."""
    if type(value) is str:
        text = value if len(value) <= 80 else value[:77] + "..."
        return text if text.isprintable() else ascii(text)
    if type(value) in (int, bool, float) or value is None:
        text = str(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return describe_value(value)
