"""Build the hostile corpus: model folders that attack or confuse a reader, byte by byte.

Each case is a small model folder (or, for the scanner comparison, a folder whose one weight
file is the point) plus what hfconv must conclude about it. Pickles are assembled opcode by
opcode (``_P``), zip archives are written by a tiny writer that lets a case lie in any field
(``zip_bytes``), legacy streams follow torch's pre-1.6 layout, safetensors files are an
8-byte length, header text and data. Where a real library produces the hostile file (a
``pickle.dumps`` payload, ``torch.save(pickle_protocol=4)``, ``torch.jit.save``, a tar), the
real library is used.

Every payload that would execute something creates a *sentinel* file under
``<corpus>/_sentinels/`` (``touch``/``open``): the tests assert that none ever appears, and
``test_payloads_are_live`` proves with a real ``torch.load(weights_only=False)`` that the
payloads do create it when a reader is fooled.

    python tests/hostile/generate.py OUT_DIR     # build a corpus by hand and list it
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"

__all__ = ["Case", "build_corpus", "SENTINELS"]

SENTINELS = "_sentinels"
"""Sub-folder of the corpus where live payloads would create their sentinel files."""


@dataclass(frozen=True)
class Case:
    """One hostile or broken input and what hfconv must say about it."""

    name: str
    rule: str
    """Which rule of the hostile-inputs issue it exercises."""
    path: Path
    """The model folder given to the commands."""
    codes: tuple[str, ...]
    """Acceptable finding codes for ``validate``; at least one must be reported, as an error, on
    ``file``. Empty: validate must find no error (the case targets another command)."""
    file: str | None
    """The finding's ``file`` (relative to the folder)."""
    detail: str | None = None
    """Must appear in the finding's ``tensor`` field or message: the tensor, global or key."""
    exit_code: int = 1
    validate_args: tuple[str, ...] = ()
    """Extra validate options (``--strict`` where the finding is a warning by design)."""
    commands: tuple[str, ...] = ("validate",)
    """CLI commands to run: ``validate``, ``convert``, ``load-test``."""
    convert_exit: int = 1
    """0 where convert rightly succeeds by leaving the hostile file out of DST."""
    weight_file: str | None = None
    """The hostile file in a pickle slot, for pickle scanners (benchmarks/compare_scanners.py)."""
    live: bool = False
    """torch.load(weights_only=False) on ``weight_file`` runs the payload (creates the sentinel)."""
    load_test_args: tuple[str, ...] = ()
    load_exit: int = 1
    load_device: str | None = None
    """A device load-test must have loaded tensors onto (proves the path under test ran)."""
    expect_load_code: str | None = None
    """A code load-test must report (when ``load-test`` is among the commands)."""

    @property
    def sentinel(self) -> Path:
        return self.path.parent / SENTINELS / self.name


# =============================================================================================
# pickle assembly (protocol 2 opcodes, as torch.save writes them)
# =============================================================================================

class _P:
    """Opcode builders. Every method returns bytes; nothing is ever unpickled here."""

    PROTO2 = b"\x80\x02"
    STOP = b"."
    MARK = b"("
    TUPLE = b"t"
    EMPTY_TUPLE = b")"
    EMPTY_LIST = b"]"
    EMPTY_DICT = b"}"
    APPEND = b"a"
    APPENDS = b"e"
    REDUCE = b"R"
    BINPERSID = b"Q"
    SETITEMS = b"u"
    NONE = b"N"
    FALSE = b"\x89"

    @staticmethod
    def glob(module: str, name: str) -> bytes:
        return b"c" + f"{module}\n{name}\n".encode()

    @staticmethod
    def s(text: str) -> bytes:
        raw = text.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw

    @staticmethod
    def i(n: int) -> bytes:
        if 0 <= n < 256:
            return b"K" + bytes([n])
        if 0 <= n < 65536:
            return b"M" + struct.pack("<H", n)
        if -(2**31) <= n < 2**31:
            return b"J" + struct.pack("<i", n)
        raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw

    @classmethod
    def tup(cls, *items: bytes) -> bytes:
        return cls.EMPTY_TUPLE if not items else cls.MARK + b"".join(items) + cls.TUPLE

    @classmethod
    def call(cls, module: str, name: str, *args: bytes) -> bytes:
        return cls.glob(module, name) + cls.tup(*args) + cls.REDUCE

    @classmethod
    def odict(cls) -> bytes:
        return cls.call("collections", "OrderedDict")

    @classmethod
    def str_list(cls, *items: str) -> bytes:
        return cls.EMPTY_LIST + cls.MARK + b"".join(cls.s(x) for x in items) + cls.APPENDS


P = _P


def contiguous(size: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for dim in reversed(size):
        stride.append(acc)
        acc *= dim
    return tuple(reversed(stride))


def pid(storage_cls: str, key: str, numel: int, *, legacy: bool = False, module: str = "torch") -> bytes:
    items = [P.s("storage"), P.glob(module, storage_cls), P.s(key), P.s("cpu"), P.i(numel)]
    if legacy:
        items.append(P.NONE)
    return P.tup(*items) + P.BINPERSID


def tensor(key: str, numel: int, size: tuple[int, ...], *, stride: tuple[int, ...] | None = None,
           offset: int = 0, storage_cls: str = "FloatStorage", legacy: bool = False) -> bytes:
    """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    stride = contiguous(size) if stride is None else stride
    return P.glob("torch._utils", "_rebuild_tensor_v2") + P.tup(
        pid(storage_cls, key, numel, legacy=legacy), P.i(offset), P.tup(*map(P.i, size)),
        P.tup(*map(P.i, stride)), P.FALSE, P.odict()) + P.REDUCE


def tensor_v3(key: str, nbytes: int, size: tuple[int, ...], dtype: str) -> bytes:
    """``_rebuild_tensor_v3(UntypedStorage, offset, size, stride, False, OrderedDict(), dtype)``."""
    return P.glob("torch._utils", "_rebuild_tensor_v3") + P.tup(
        pid("UntypedStorage", key, nbytes, module="torch.storage"), P.i(0), P.tup(*map(P.i, size)),
        P.tup(*map(P.i, contiguous(size))), P.FALSE, P.odict(), P.glob("torch", dtype)) + P.REDUCE


def state_dict(items: list[tuple[str, bytes]], *, stop: bool = True) -> bytes:
    """A torch.save-shaped pickle: ``OrderedDict`` + SETITEMS of ``name -> value ops``."""
    body = P.PROTO2 + P.odict()
    if items:
        body += P.MARK + b"".join(P.s(k) + v for k, v in items) + P.SETITEMS
    return body + (P.STOP if stop else b"")


def touch(sentinel: Path) -> str:
    return f"touch {sentinel}"


def py_touch(sentinel: Path) -> str:
    return f"open({str(sentinel)!r}, 'w').close()"


# =============================================================================================
# containers
# =============================================================================================

@dataclass
class ZipEntry:
    name: str
    data: bytes
    method: int = 0
    crc: int | None = None
    local_name: str | None = None
    declared_size: int | None = None
    payload: bytes | None = None
    """Bytes to store as they are (already compressed); ``data`` is then ignored."""


def zip_bytes(entries: list[ZipEntry]) -> bytes:
    """A zip archive written field by field (no data descriptors), so any field can lie."""
    out = bytearray()
    central = bytearray()
    for e in entries:
        if e.payload is not None:
            payload = e.payload
        elif e.method == 8:
            comp = zlib.compressobj(9, zlib.DEFLATED, -15)
            payload = comp.compress(e.data) + comp.flush()
        else:
            payload = e.data
        crc = zlib.crc32(e.data) if e.crc is None else e.crc
        usize = len(e.data) if e.declared_size is None else e.declared_size
        local = (e.local_name or e.name).encode()
        name = e.name.encode()
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0x800, e.method, 0, 0x21, crc, len(payload),
                           usize, len(local), 0) + local + payload
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0x800, e.method, 0, 0x21, crc,
                               len(payload), usize, len(name), 0, 0, 0, 0, 0, offset) + name
    cd_offset = len(out)
    out += central
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), cd_offset, 0)
    return bytes(out)


def torch_zip(data_pkl: bytes, storages: dict[str, bytes], *, prefix: str = "archive",
              extra: list[ZipEntry] | None = None, pkl_entry: ZipEntry | None = None) -> bytes:
    """What torch.save writes: data.pkl, byteorder, data/<key>..., version (all stored)."""
    entries = [pkl_entry or ZipEntry(f"{prefix}/data.pkl", data_pkl), ZipEntry(f"{prefix}/byteorder", b"little")]
    entries += [ZipEntry(f"{prefix}/data/{key}", raw) for key, raw in storages.items()]
    entries.append(ZipEntry(f"{prefix}/version", b"3\n"))
    entries += extra or []
    return zip_bytes(entries)


def legacy_stream(main_pickle: bytes, storages: dict[str, tuple[int, bytes]]) -> bytes:
    """torch's pre-1.6 format: magic, protocol, sys_info, main pickle, keys, raw storages."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    out = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    out += pickle.dumps(sys_info, protocol=2) + main_pickle + pickle.dumps(list(storages), protocol=2)
    for numel, raw in storages.values():
        out += struct.pack("<Q", numel) + raw
    return out


def safetensors_bytes(header: dict | str | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def st_entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


FLOATS = struct.pack("<6f", *range(6))  # one 6-element float32 storage (24 bytes)


def good_state_dict_pickle() -> bytes:
    return state_dict([("w", tensor("0", 6, (2, 3)))])


class _Evil:
    """Pickles (with the real pickle module) into ``posix.system(cmd)``, as attackers do."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


# =============================================================================================
# the corpus
# =============================================================================================

class _Builder:
    def __init__(self, root: Path):
        self.root = root
        self.cases: list[Case] = []
        (root / SENTINELS).mkdir(parents=True, exist_ok=True)

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path

    def sentinel(self, name: str) -> Path:
        return self.root / SENTINELS / name

    def add(self, name: str, rule: str, files: dict[str, bytes | str], codes: str | tuple[str, ...],
            file: str | None, detail: str | None = None, **kw) -> Case:
        path = self.folder(name)
        for rel, content in files.items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        case = Case(name=name, rule=rule, path=path, codes=(codes,) if isinstance(codes, str) else codes,
                    file=file, detail=detail, **kw)
        self.cases.append(case)
        return case


def build_corpus(root: str | os.PathLike) -> list[Case]:
    """Write every hostile case under ``root`` (an empty, private temporary folder).

    Args:
        root: the corpus folder; each case gets a sub-folder, sentinels go to ``_sentinels/``.

    Returns:
        The cases, in a stable order.
    """
    b = _Builder(Path(root))
    _pickle_globals(b)
    _pickle_opcodes(b)
    _zip_container(b)
    _views(b)
    _safetensors(b)
    _json_files(b)
    _content_sniffing(b)
    _containment(b)
    _training_leftovers(b)
    _chat_templates(b)
    _load_test(b)
    names = [c.name for c in b.cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return b.cases


# --- 1. forbidden globals ---------------------------------------------------------------------

def _pickle_globals(b: _Builder) -> None:
    rule = "allow-list only: forbidden global"
    weights = "pytorch_model.bin"

    def zip_case(name, value_ops, detail, *, live=True, legacy=False):
        pkl = state_dict([("w", tensor("0", 6, (2, 3), legacy=legacy)), ("x", value_ops)])
        blob = legacy_stream(pkl, {"0": (6, FLOATS)}) if legacy else torch_zip(pkl, {"0": FLOATS})
        b.add(name, rule, {weights: blob}, "HFC201", weights, detail, weight_file=weights, live=live,
              commands=("validate", "convert", "load-test"))

    s = b.sentinel
    zip_case("global_os_system", P.call("os", "system", P.s(touch(s("global_os_system")))), "os.system")
    # What pickle itself writes for os.system on Linux, and what many deny-lists forget.
    zip_case("global_posix_system", P.call("posix", "system", P.s(touch(s("global_posix_system")))),
             "posix.system")
    zip_case("global_builtins_eval", P.call("builtins", "eval", P.s(py_touch(s("global_builtins_eval")))),
             "builtins.eval")
    zip_case("global_builtins_exec_legacy", P.call("builtins", "exec", P.s(py_touch(s("global_builtins_exec_legacy")))),
             "builtins.exec", legacy=True)
    popen = (P.glob("subprocess", "Popen") + P.MARK + P.str_list("touch", str(s("global_subprocess_popen")))
             + P.TUPLE + P.REDUCE)
    zip_case("global_subprocess_popen", popen, "subprocess.Popen")
    # getattr(__import__('os'), 'system')('touch ...'): no os/posix global anywhere.
    chain = (P.glob("builtins", "getattr") + P.MARK + P.call("builtins", "__import__", P.s("os")) + P.s("system")
             + P.TUPLE + P.REDUCE + P.tup(P.s(touch(s("global_builtins_getattr")))) + P.REDUCE)
    zip_case("global_builtins_getattr", chain, "builtins.getattr")
    # Python 2 names still resolve (pickle's fix_imports maps __builtin__ to builtins).
    zip_case("global_py2_builtin_eval", P.call("__builtin__", "eval", P.s(py_touch(s("global_py2_builtin_eval")))),
             "__builtin__.eval")
    # Harmless-looking torch/numpy helpers that are still not a state dict's business.
    from_type = P.glob("torch._tensor", "_rebuild_from_type_v2") + P.tup(
        P.glob("torch._utils", "_rebuild_tensor_v2"), P.glob("torch", "Tensor"),
        P.tup(pid("FloatStorage", "1", 6), P.i(0), P.tup(P.i(6)), P.tup(P.i(1)), P.FALSE, P.odict()),
        P.EMPTY_DICT) + P.REDUCE
    zip_case("global_rebuild_from_type_v2", from_type, "torch._tensor._rebuild_from_type_v2", live=False)
    zip_case("global_numpy_reconstruct", P.glob("numpy.core.multiarray", "_reconstruct") + P.tup(
        P.glob("numpy", "ndarray"), P.tup(P.i(0)), P.s("b")) + P.REDUCE, "numpy.core.multiarray._reconstruct",
        live=False)
    zip_case("global_load_from_bytes", P.call("torch.storage", "_load_from_bytes", P.s("\x80\x02N.")),
             "torch.storage._load_from_bytes", live=False)
    # Twenty real-looking tensors first: scanners that stop early, or sample, miss it.
    many = [(f"model.layers.{i}.weight", tensor(str(i), 6, (2, 3))) for i in range(20)]
    pkl = state_dict([*many, ("lm_head.weight", P.call("os", "system", P.s(touch(s("global_hidden_after_prefix")))))])
    b.add("global_hidden_after_prefix", rule, {weights: torch_zip(pkl, {str(i): FLOATS for i in range(20)})},
          "HFC201", weights, "os.system", weight_file=weights, live=True)
    # The global in a shard of a sharded checkpoint, named by its index.
    index = {"metadata": {"total_size": 24}, "weight_map": {"w": "pytorch_model-00001-of-00002.bin",
                                                            "x": "pytorch_model-00002-of-00002.bin"}}
    shard2 = torch_zip(state_dict([("x", P.call("os", "system", P.s(touch(s("global_in_second_shard")))))]), {})
    b.add("global_in_second_shard", rule, {
        "pytorch_model.bin.index.json": json.dumps(index),
        "pytorch_model-00001-of-00002.bin": torch_zip(good_state_dict_pickle(), {"0": FLOATS}),
        "pytorch_model-00002-of-00002.bin": shard2,
    }, "HFC201", "pytorch_model-00002-of-00002.bin", "os.system", weight_file="pytorch_model-00002-of-00002.bin",
        live=True, commands=("validate", "convert"))


# --- 2. opcodes and protocols -----------------------------------------------------------------

def _pickle_opcodes(b: _Builder) -> None:
    rule = "allow-list only: opcodes and protocol"
    w = "pytorch_model.bin"
    s = b.sentinel
    # STACK_GLOBAL (a protocol-4 opcode) smuggled into a protocol-2 stream: the scan still names it.
    stack_global = P.PROTO2 + P.s("os") + P.s("system") + b"\x93" + P.tup(P.s(touch(s("opcode_stack_global")))) \
        + P.REDUCE + P.STOP
    b.add("opcode_stack_global", rule, {w: torch_zip(stack_global, {})}, "HFC201", w, "os.system",
          weight_file=w, live=True)
    # FRAME (protocol 4) around an otherwise fine state dict.
    body = good_state_dict_pickle()[2:]
    framed = P.PROTO2 + b"\x95" + struct.pack("<Q", len(body)) + body
    b.add("opcode_frame", rule, {w: torch_zip(framed, {"0": FLOATS})}, "HFC203", w, "FRAME", weight_file=w)
    # A real torch.save with pickle_protocol=4: fine for torch, but not the allow-listed protocol.
    b.add("protocol4_torch_save", rule, {w: _torch_save_protocol4()}, "HFC203", w,
          "protocol 4", weight_file=w)
    # Raw pickles of other protocols written by the real pickle module: the classic payloads.
    for proto in (0, 4, 5):
        name = f"raw_pickle_protocol{proto}"
        blob = pickle.dumps({"w": _Evil(touch(s(name)))}, protocol=proto)
        b.add(name, rule, {w: blob}, "HFC201", w, "posix.system" if os.name == "posix" else "nt.system",
              weight_file=w, live=True)
    # Bytes after STOP: a second pickle that another reader (one that loops on load()) would run.
    second = P.PROTO2 + P.call("os", "system", P.s(touch(s("bytes_after_stop")))) + P.STOP
    b.add("bytes_after_stop", "parser differential: bytes after STOP",
          {w: torch_zip(good_state_dict_pickle() + second, {"0": FLOATS})}, ("HFC203", "HFC201"), w, None,
          weight_file=w)
    # Memo index 2**32-1: CPython's unpickler grows its memo array to it (32 GB).
    memo = P.PROTO2 + P.odict() + b"r" + struct.pack("<I", 0xFFFFFFFF) + P.MARK + P.s("w") \
        + P.call("os", "system", P.s(touch(s("memo_index_bomb")))) + P.SETITEMS + P.STOP
    b.add("memo_index_bomb", "caps: memo", {w: torch_zip(memo, {})}, "HFC201", w, "os.system", weight_file=w)
    # Stack bomb: more pushes than the stack cap, never popped (1 byte each).
    from hfconv.readers import unpickler as tc
    bomb = P.PROTO2 + P.NONE * (tc.MAX_STACK + 2) + P.STOP
    b.add("stack_bomb", "caps: stack", {w: torch_zip(bomb, {})}, "HFC203", w, "stack", weight_file=w)
    # MARK nesting far past the cap.
    marks = P.PROTO2 + P.MARK * 10_000 + P.STOP
    b.add("mark_nesting", "caps: nesting depth", {w: torch_zip(marks, {})}, "HFC203", w, "MARK", weight_file=w)
    # 100k nested lists as a state-dict value: recursive readers (repr, deepcopy, json) die on it.
    depth = 100_000
    nested = P.PROTO2 + P.odict() + P.MARK + P.s("w") + P.EMPTY_LIST * depth + P.APPEND * (depth - 1) \
        + P.SETITEMS + P.STOP
    b.add("deep_list_nesting", "caps: nesting depth", {w: torch_zip(nested, {})}, "HFC208", w, "w", weight_file=w)
    # A legal global (a storage class) where torch never puts it: as a callable.
    misuse = state_dict([("w", P.call("torch", "FloatStorage", P.i(6)))])
    b.add("allowed_global_wrong_position", rule, {w: torch_zip(misuse, {})}, "HFC203", w, "REDUCE calls",
          weight_file=w)


def _torch_save_protocol4() -> bytes:
    """A real torch.save of a small state dict with pickle_protocol=4 (FRAME, STACK_GLOBAL...)."""
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, buf, pickle_protocol=4)
    return buf.getvalue()


# --- 3. zip container -------------------------------------------------------------------------

def _zip_container(b: _Builder) -> None:
    rule = "parser differential: zip"
    w = "pytorch_model.bin"
    s = b.sentinel
    good = good_state_dict_pickle()
    evil = state_dict([("w", P.call("os", "system", P.s(touch(s("zip_duplicate_names")))))])
    b.add("zip_unreferenced_entry", rule,
          {w: torch_zip(good, {"0": FLOATS}, extra=[ZipEntry("archive/payload.py", b"import os\nos.system('id')\n")])},
          "HFC204", w, "archive/payload.py", weight_file=w)
    b.add("zip_unreferenced_storage", rule, {w: torch_zip(good, {"0": FLOATS, "1": b"\x00" * 4096})},
          "HFC204", w, "archive/data/1", weight_file=w)
    # Two data.pkl entries: Python's zipfile takes the last, miniz (torch) the first.
    dup = zip_bytes([ZipEntry("archive/data.pkl", good), ZipEntry("archive/byteorder", b"little"),
                     ZipEntry("archive/data/0", FLOATS), ZipEntry("archive/version", b"3\n"),
                     ZipEntry("archive/data.pkl", evil)])
    b.add("zip_duplicate_names", rule, {w: dup}, "HFC204", w, "appears twice", weight_file=w)
    # Central directory says data.pkl; the local header (what a streaming reader sees) says otherwise.
    mismatch = torch_zip(good, {"0": FLOATS},
                         pkl_entry=ZipEntry("archive/data.pkl", good, local_name="archive/data.pkX"))
    b.add("zip_local_central_mismatch", rule, {w: mismatch}, "HFC204", w, "local header", weight_file=w)
    deflated = zip_bytes([ZipEntry("archive/data.pkl", good), ZipEntry("archive/byteorder", b"little"),
                          ZipEntry("archive/data/0", FLOATS, method=8), ZipEntry("archive/version", b"3\n")])
    b.add("zip_deflated_storage", rule, {w: deflated}, "HFC204", w, "DEFLATE", weight_file=w)
    bad_crc = torch_zip(good, {"0": FLOATS}, pkl_entry=ZipEntry("archive/data.pkl", good, crc=0xDEADBEEF))
    b.add("zip_bad_crc_data_pkl", rule, {w: bad_crc}, "HFC204", w, "CRC", weight_file=w)
    # A zip bomb: data.pkl inflates 1000:1 to 512 MB of zeros after a valid prefix. A full flush
    # byte-aligns the stream and resets the compressor, so every 1 MB chunk of zeros after it
    # deflates to the same bytes: compressed once and repeated (deflating all 512 MB took ~10 s).
    bomb_size = 512 << 20
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    prefix = good[:-1]
    chunk = bytes(1 << 20)
    head = comp.compress(prefix) + comp.flush(zlib.Z_FULL_FLUSH)
    deflated_chunk = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    payload = head + deflated_chunk * (bomb_size >> 20) + comp.flush()
    crc = zlib.crc32(prefix)
    for _ in range(bomb_size >> 20):
        crc = zlib.crc32(chunk, crc)
    bomb = zip_bytes([ZipEntry("archive/data.pkl", b"", method=8, payload=payload, crc=crc,
                               declared_size=len(prefix) + bomb_size),
                      ZipEntry("archive/byteorder", b"little"), ZipEntry("archive/version", b"3\n")])
    b.add("zip_bomb_data_pkl", "caps: zip entry size and ratio", {w: bomb}, "HFC204", w, "compress",
          weight_file=w)
    # One storage read with two dtypes (a float and a half view of the same bytes).
    two = state_dict([("a", tensor("0", 6, (6,))), ("b", tensor("0", 6, (6,), storage_cls="HalfStorage"))])
    b.add("storage_two_dtypes", "parser differential: one storage, two dtypes",
          {w: torch_zip(two, {"0": FLOATS})}, "HFC203", w, "two dtypes", weight_file=w)
    two_v3 = state_dict([("a", tensor_v3("0", 24, (6,), "float32")), ("b", tensor_v3("0", 24, (12,), "float16"))])
    b.add("storage_two_dtypes_v3", "parser differential: one storage, two dtypes",
          {w: torch_zip(two_v3, {"0": FLOATS})}, "HFC203", w, "two dtypes", weight_file=w)
    b.add("zip_missing_storage", "parser differential: zip", {w: torch_zip(good, {})}, "HFC205", w, "w",
          weight_file=w)


# --- 4. tensor views --------------------------------------------------------------------------

def _views(b: _Builder) -> None:
    rule = "caps: tensor view vs storage"
    w = "pytorch_model.bin"
    # 24 bytes of storage, a stride-0 view claiming 2**20 x 2**20 floats (4 TiB).
    huge = state_dict([("w", tensor("0", 6, (1 << 20, 1 << 20), stride=(0, 0)))])
    b.add("view_stride0_terabytes", rule, {w: torch_zip(huge, {"0": FLOATS})}, "HFC209", w, "w", weight_file=w,
          commands=("validate", "convert", "load-test"))
    beyond = state_dict([("w", tensor("0", 6, (4, 4)))])
    b.add("view_beyond_storage", rule, {w: torch_zip(beyond, {"0": FLOATS})}, "HFC209", w, "w", weight_file=w)
    legacy_beyond = state_dict([("w", tensor("0", 6, (3,), offset=5, legacy=True))])
    b.add("view_beyond_storage_legacy", rule, {w: legacy_stream(legacy_beyond, {"0": (6, FLOATS)})}, "HFC209", w,
          "w", weight_file=w)


# --- 5. safetensors ---------------------------------------------------------------------------

def _safetensors(b: _Builder) -> None:
    rule = "safetensors header"
    m = "model.safetensors"
    b.add("st_absurd_header_length", "caps: header bytes", {m: safetensors_bytes(b"{}", length=2**64 - 1)},
          "HFC102", m)
    # safetensors keeps the last "w" (8 bytes) and refuses the 8 bytes left over; a reader that
    # keeps the first sees 16. (A duplicate whose last entry fits is read by the crate: HFC114.)
    dup = ('{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
           '"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}')
    b.add("st_duplicate_keys", "parser differential: duplicate keys", {m: safetensors_bytes(dup, bytes(16))},
          "HFC105", m, "w")
    overlap = {"a": st_entry("F32", [4], 0, 16), "b": st_entry("F32", [4], 8, 24)}
    b.add("st_overlapping_offsets", rule, {m: safetensors_bytes(overlap, bytes(24))}, "HFC109", m, "b")
    gap = {"a": st_entry("F32", [2], 0, 8), "b": st_entry("F32", [2], 16, 24)}
    b.add("st_gap", rule, {m: safetensors_bytes(gap, bytes(24))}, "HFC109", m, "b")
    trailing = {"a": st_entry("F32", [2], 0, 8)}
    hidden = pickle.dumps({"w": _Evil("true")}, protocol=2)
    b.add("st_trailing_bytes", "parser differential: trailing bytes",
          {m: safetensors_bytes(trailing, bytes(8) + hidden)}, "HFC111", m)
    nan = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"x":"1"},"b":NaN}'
    b.add("st_nan_in_header", "parser differential: NaN", {m: safetensors_bytes(nan, bytes(8))}, "HFC104", m,
          "NaN")
    deep = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + "[" * 100_000 + "]" * 100_000 + "}}"
    b.add("st_deep_nesting", "caps: JSON depth", {m: safetensors_bytes(deep, bytes(8))}, "HFC104", m, "depth")
    # 1.5 million distinct six-digit hex names, each an empty object, written with numpy (a
    # Python loop took ~3 s): '{"000000":{},"000001":{},...}'.
    count = 1_500_000
    rows = np.frombuffer(b'"000000":{},' * count, dtype=np.uint8).reshape(count, 12).copy()
    ids = np.arange(count)
    hex_digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    for k in range(6):
        rows[:, 6 - k] = hex_digits[(ids >> (4 * k)) & 15]
    many = b"{" + rows.tobytes()[:-1] + b"}"
    b.add("st_huge_tensor_count", "caps: tensor count", {m: safetensors_bytes(many)}, "HFC113", m, "tensors")
    neg = '{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}}'
    b.add("st_negative_shape", rule, {m: safetensors_bytes(neg, bytes(8))}, "HFC106", m, "a")
    b.add("st_empty_file", rule, {m: b""}, "HFC101", m)


# --- 6. JSON files ----------------------------------------------------------------------------

def _json_files(b: _Builder) -> None:
    c = "config.json"
    good_st = {"model.safetensors": safetensors_bytes({"w": st_entry("F32", [2], 0, 8)}, bytes(8))}
    b.add("json_duplicate_keys", "parser differential: duplicate keys",
          {**good_st, c: '{"model_type": "llama", "vocab_size": 32000, "vocab_size": 128256}'}, "HFC401", c,
          "vocab_size")
    b.add("json_nan", "parser differential: NaN", {**good_st, c: '{"model_type": "llama", "rms_norm_eps": NaN}'},
          "HFC401", c, "NaN")
    big = b'{"model_type": "llama", "pad": "' + b"x" * (60 << 20) + b'"}'  # bytes: no 60 MB str to encode
    b.add("json_60mb_config", "caps: JSON size", {**good_st, c: big}, "HFC401", c, "bytes")
    deep = '{"model_type": "llama", "x": ' + "[" * 200_000 + "]" * 200_000 + "}"
    b.add("json_deep_nesting", "caps: JSON depth", {**good_st, c: deep}, "HFC401", c, "depth")
    # 40 MB of empty objects: under the size cap, but a Python dict each (several GB parsed).
    bomb = b'{"model_type": "llama", "x": [' + b"{}," * (13 << 20) + b"{}]}"
    b.add("json_container_bomb", "caps: JSON size", {**good_st, c: bomb}, "HFC401", c, "containers")
    index = ('{"metadata": {"total_size": 8}, "weight_map": {"w": "model-00001-of-00001.safetensors", '
             '"w": "../outside.safetensors"}}')
    b.add("json_index_duplicate_keys", "parser differential: duplicate keys", {
        "model.safetensors.index.json": index,
        "model-00001-of-00001.safetensors": good_st["model.safetensors"],
    }, "HFC401", "model.safetensors.index.json", "w")


# --- 7. content sniffing ----------------------------------------------------------------------

def _content_sniffing(b: _Builder) -> None:
    rule = "content, not extension"
    w = "pytorch_model.bin"
    m = "model.safetensors"
    lfs = (b"version https://git-lfs.github.com/spec/v1\noid sha256:"
           + b"4d7a" * 16 + b"\nsize 13476839424\n")
    b.add("lfs_pointer_bin", rule, {w: lfs}, "HFC010", w, "LFS", weight_file=w)
    b.add("lfs_pointer_safetensors", rule, {m: lfs}, "HFC010", m, "LFS")
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0) \
        + struct.pack(">I", zlib.crc32(b"IHDR" + struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))) \
        + bytes(12) + b"IEND\xaeB`\x82"
    b.add("png_as_bin", rule, {w: png}, "HFC202", w, "PNG", weight_file=w)
    b.add("png_as_safetensors", rule, {m: png}, "HFC202", m, "PNG")
    html = b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Entry not found</body></html>\n"
    b.add("html_as_bin", rule, {w: html}, "HFC202", w, "HTML", weight_file=w)
    b.add("html_as_safetensors", rule, {m: html}, "HFC202", m, "HTML")
    b.add("torchscript_archive", rule, {w: _torchscript()}, "HFC210", w, "TorchScript", weight_file=w)
    b.add("legacy_tar_checkpoint", rule, {w: _legacy_tar(b.sentinel("legacy_tar_checkpoint"))}, "HFC201", w,
          "posix.system" if os.name == "posix" else "nt.system", weight_file=w, live=True)
    b.add("legacy_tar_checkpoint_benign", rule, {w: _legacy_tar(None)}, "HFC202", w, "legacy tar checkpoint",
          weight_file=w)
    b.add("empty_bin", rule, {w: b""}, "HFC202", w, "empty", weight_file=w)
    # A safetensors file named .bin is read as safetensors (and is fine); a zip named
    # .safetensors is read as a torch checkpoint (and here carries a forbidden global).
    evil = torch_zip(state_dict([("w", P.call("os", "system", P.s(touch(b.sentinel("zip_named_safetensors")))))]),
                     {})
    # (torch.load itself reads a file named .safetensors as safetensors, so this one is not live.)
    b.add("zip_named_safetensors", rule, {m: evil}, "HFC201", m, "os.system", weight_file=m)


def _torchscript() -> bytes:
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def forward(self, x):
            return x * self.w

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Tiny()), buf)
    return buf.getvalue()


def _legacy_tar(sentinel: Path | None) -> bytes:
    """torch's oldest format: a tar of sys_info, pickle, tensors, storages (torch.load still
    reads it, unpickling each member); with a sentinel, the ``pickle`` member is a payload."""
    buf = io.BytesIO()
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    main = {"w": _Evil(touch(sentinel))} if sentinel is not None else {"w": 1}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        members = {"sys_info": pickle.dumps(sys_info, protocol=2), "pickle": pickle.dumps(main, protocol=2),
                   "tensors": pickle.dumps(0, protocol=2),
                   "storages": pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)}
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- 8. containment ---------------------------------------------------------------------------

def _containment(b: _Builder) -> None:
    rule = "containment"
    st_good = safetensors_bytes({"w": st_entry("F32", [2], 0, 8)}, bytes(8))
    outside = b.root / "outside.safetensors"
    outside.write_bytes(st_good)
    (b.root / "evil.py").write_text(f"open({str(b.sentinel('outside_module'))!r}, 'w').close()\n")
    idx = "model.safetensors.index.json"

    def index(shard: str) -> str:
        return json.dumps({"metadata": {"total_size": 8}, "weight_map": {"w": shard}})

    b.add("index_shard_dotdot", rule, {idx: index("../outside.safetensors")}, "HFC006", idx,
          "../outside.safetensors")
    b.add("index_shard_absolute", rule, {idx: index(str(outside))}, "HFC006", idx, str(outside))
    b.add("index_shard_etc_passwd", rule, {idx: index("/etc/passwd")}, "HFC006", idx, "/etc/passwd")
    case = b.add("symlink_weights_outside", rule, {}, "HFC006", "model.safetensors")
    os.symlink("/etc/passwd", case.path / "model.safetensors")
    case = b.add("symlink_weights_to_outside_file", rule, {}, "HFC006", "pytorch_model.bin")
    os.symlink(outside, case.path / "pytorch_model.bin")
    case = b.add("symlink_tokenizer_model_outside", rule, {"model.safetensors": st_good}, "HFC006",
                 "tokenizer.model")
    os.symlink(FIXTURES / "_src" / "tokenizer.model", case.path / "tokenizer.model")
    case = b.add("symlink_dir_outside", rule, {"model.safetensors": st_good}, "HFC006", "extra")
    os.symlink(b.root / SENTINELS, case.path / "extra")
    config = {"model_type": "llama", "auto_map": {"AutoModelForCausalLM": "../../evil.Model"}}
    b.add("auto_map_dotdot", rule, {"model.safetensors": st_good, "config.json": json.dumps(config)}, "HFC808",
          "config.json", "$.auto_map")
    config = {"model_type": "llama", "auto_map": {"AutoModel": f"{b.root}/evil.Model"}}
    b.add("auto_map_absolute", rule, {"model.safetensors": st_good, "config.json": json.dumps(config)}, "HFC808",
          "config.json", "$.auto_map")
    tok = {"tokenizer_class": "LlamaTokenizer", "vocab_file": "/etc/passwd"}
    b.add("vocab_file_etc_passwd", rule, {"model.safetensors": st_good, "tokenizer_config.json": json.dumps(tok)},
          "HFC507", "tokenizer_config.json", "/etc/passwd", validate_args=("--strict",))
    tok = {"tokenizer_class": "GPT2Tokenizer", "merges_file": "../../../../etc/shadow"}
    b.add("merges_file_dotdot", rule, {"model.safetensors": st_good, "tokenizer_config.json": json.dumps(tok)},
          "HFC507", "tokenizer_config.json", "../../../../etc/shadow", validate_args=("--strict",))
    if hasattr(os, "mkfifo"):
        case = b.add("fifo_model_safetensors", "containment: special files", {}, "HFC008", "model.safetensors")
        os.mkfifo(case.path / "model.safetensors")
        case = b.add("fifo_config_json", "containment: special files", {"model.safetensors": st_good}, "HFC008",
                     "config.json")
        os.mkfifo(case.path / "config.json")


# --- 9. training leftovers --------------------------------------------------------------------

def _training_leftovers(b: _Builder) -> None:
    rule = "training leftovers"
    st_good = safetensors_bytes({"w": st_entry("F32", [2], 0, 8)}, bytes(8))
    name = "training_args_malicious"
    blob = torch_zip(state_dict([("args", P.call("os", "system", P.s(touch(b.sentinel(name)))))]), {})
    # a config.json, so that the output is a valid folder (convert refuses an output that is not)
    b.add(name, rule, {"model.safetensors": st_good, "training_args.bin": blob,
                       "config.json": json.dumps({"model_type": "hfconv-test"})}, "HFC011", "training_args.bin",
          weight_file="training_args.bin", live=True, commands=("validate", "convert"), convert_exit=0)
    name = "optimizer_pt_malicious"
    blob = pickle.dumps({"state": _Evil(touch(b.sentinel(name)))}, protocol=2)
    b.add(name, rule, {"model.safetensors": st_good, "optimizer.pt": blob, "rng_state.pth": blob,
                       "scheduler.pt": blob}, "HFC011", "optimizer.pt", weight_file="optimizer.pt", live=True)


# --- 10. chat templates -----------------------------------------------------------------------

def _chat_templates(b: _Builder) -> None:
    rule = "chat template sandbox"
    base = FIXTURES / "llama-safetensors"
    config = json.loads((base / "tokenizer_config.json").read_text())
    s = b.sentinel
    templates = {
        "chat_template_subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}"
                                    "{{ m.content }}{% endfor %}",
        "chat_template_globals_popen": "{{ cycler.__init__.__globals__.os.popen('"
                                       + touch(s("chat_template_globals_popen")) + "').read() }}"
                                       "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}",
        "chat_template_attr_filter": "{{ (messages|attr('__class__')|attr('__init__')|attr('__globals__'))"
                                     "['__builtins__']['__import__']('os').system('"
                                     + touch(s("chat_template_attr_filter")) + "') }}",
    }
    for name, template in templates.items():
        files = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
        files["tokenizer_config.json"] = json.dumps({**config, "chat_template": template})
        b.add(name, rule, files, "HFC518", "tokenizer_config.json", "$.chat_template")
    files = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
    files["chat_template.jinja"] = ("{% for i in range(10**9) %}{% for j in range(10**9) %}{{ i }}{% endfor %}"
                                    "{% endfor %}{{ self.__init__.__globals__ }}")
    b.add("chat_template_jinja_file", rule, files, "HFC518", "chat_template.jinja")


# --- 11. load-test ----------------------------------------------------------------------------

def _load_test(b: _Builder) -> None:
    rule = "load-test sizes from headers"
    m = "model.safetensors"
    # A valid header for an 8 GiB tensor over a sparse file: no disk used, nothing to allocate.
    size = 8 << 30
    header = json.dumps({"w": st_entry("U8", [size], 0, size)}).encode()
    # validate passes (the file is well formed); load-test must refuse the plan before allocating.
    # a config.json: without one, validate fails (HFC009) before load-test's own check is reached
    case = b.add("load_test_exceeds_memory", rule, {"config.json": json.dumps({"model_type": "hfconv-test"})},
                 (), None, exit_code=0,
                 commands=("validate", "load-test"), load_test_args=("--max-memory", "cpu=1MB"),
                 expect_load_code="HFC733")
    with open(case.path / m, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + size)
    # Tensor names that are paths: with cpu=30B every 24-byte tensor is offloaded to disk, and the
    # offload files must stay in the offload folder (the test checks the corpus's parent).
    names = [f"{b.root.parent}/escaped_absolute", "../../../../escaped_relative", "a/../../b", "\x00nul"]
    pkl = state_dict([(name, tensor(str(i), 6, (6,))) for i, name in enumerate(names)])
    b.add("offload_tensor_names_are_paths", "containment: offload file names", {
        "pytorch_model.bin": torch_zip(pkl, {str(i): FLOATS for i in range(len(names))}),
        "config.json": json.dumps({"model_type": "hfconv-test"})}, (), None, exit_code=0,
        commands=("validate", "load-test"), load_test_args=("--max-memory", "cpu=30B"), load_exit=0,
        load_device="disk")
    # Config numbers that would mean terabytes; the weights hold 8 bytes.
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 2**40,
              "hidden_size": 2**30, "intermediate_size": 2**32, "num_hidden_layers": 1, "num_attention_heads": 1,
              "num_key_value_heads": 1, "torch_dtype": "float32"}
    b.add("config_claims_terabytes", rule, {m: safetensors_bytes({"w": st_entry("F32", [2], 0, 8)}, bytes(8)),
                                             "config.json": json.dumps(config)},
          ("HFC602", "HFC601", "HFC603"), None, commands=("validate", "load-test"),
          load_test_args=("--max-memory", "cpu=1MB"), expect_load_code="HFC730")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    out = Path(argv[1])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cases = build_corpus(out)
    for case in cases:
        print(f"{case.name:40} {'/'.join(case.codes):18} {case.file or '-':40} {case.rule}")
    print(f"{len(cases)} cases in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
