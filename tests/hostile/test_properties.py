"""Property tests: mutated real headers and pickles raise nothing but FormatError, within caps.

tests/test_safetensors_reader.py and tests/test_torch_checkpoint.py already throw random and
byte-mutated files at the readers. These tests mutate with *structure*: one opcode of a real
torch.save pickle replaced, a GLOBAL inserted at an opcode boundary, a length or memo index
changed, a span duplicated; a real safetensors header edited as JSON (offsets, shapes,
dtypes, duplicate and NaN values, depth, the length prefix). Pickles are re-wrapped in a zip
with a correct CRC so that every mutation reaches the interpreter. Each example also runs
under a time bound and a traced-memory bound, and with the readers' caps lowered so that
examples cross them.

Whatever a reader accepts must be accepted alike by the reference (torch.load with
weights_only=True; the safetensors Rust crate): a mutation both readers read differently is
a parser differential.

The example count is HFCONV_HYPOTHESIS_EXAMPLES (default 200); for a long local run:

    HFCONV_HYPOTHESIS_EXAMPLES=20000 python -m pytest tests/hostile/test_properties.py
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hfconv.jsonutil import _NOT_QUOTE_OR_BRACKET
from hfconv.readers import read_weight_file, unpickler
from hfconv.readers import safetensors_header as sh
from hfconv.readers import torch_checkpoint as tc
from hfconv.tensors import FormatError, WeightFile

from .generate import P, ZipEntry, state_dict, tensor, zip_bytes

torch = pytest.importorskip("torch")

EXAMPLES = int(os.environ.get("HFCONV_HYPOTHESIS_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])
TIME_BOUND_S = 5.0
MEMORY_BOUND = 64 << 20

ROOT = Path(__file__).resolve().parents[2]


def bounded(read, path: Path) -> WeightFile | None:
    """Run a reader; only FormatError may escape; time and traced memory stay bounded."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        return read(path)
    except FormatError as err:
        assert isinstance(err.code, str) and err.code.startswith("HFC") and err.message, err
        return None
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert elapsed < TIME_BOUND_S, f"reader took {elapsed:.1f} s"
        assert peak < MEMORY_BOUND + 4 * path.stat().st_size, f"reader traced {peak >> 20} MB"


# =============================================================================================
# torch pickles
# =============================================================================================

def _real_checkpoint() -> tuple[bytes, dict[str, bytes]]:
    """data.pkl and storages of a real torch.save (views, shared storage, parameter, v3 dtypes)."""
    big = torch.arange(40, dtype=torch.float32).reshape(5, 8)
    state = {"a": big, "a_t": big.T, "row": big[1:3], "p": torch.nn.Parameter(torch.ones(3)),
             "h": torch.zeros(2, 2, dtype=torch.float16), "f8": torch.zeros(4, dtype=torch.float8_e4m3fn),
             "i": torch.arange(3), "s": torch.tensor(1.5)}
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(buf) as zf:
        names = zf.namelist()
        prefix = names[0].split("/", 1)[0]
        pkl = zf.read(f"{prefix}/data.pkl")
        storages = {n.split("/data/", 1)[1]: zf.read(n) for n in names if "/data/" in n}
    return pkl, storages


PKL, STORAGES = _real_checkpoint()
OPS = [(op.name, pos) for op, _arg, pos in pickletools.genops(PKL)]
BOUNDARIES = [pos for _name, pos in OPS] + [len(PKL)]
_LENGTH_OPS = {"BINUNICODE": 4, "SHORT_BINUNICODE": 1, "LONG1": 1, "BINPUT": 1, "LONG_BINPUT": 4, "BINGET": 1,
               "LONG_BINGET": 4, "BININT1": 1, "BININT2": 2, "BININT": 4}
GLOBALS = sorted(tc.ALLOWED_GLOBALS) + ["os.system", "posix.system", "builtins.eval", "builtins.getattr",
                                        "torch._tensor._rebuild_from_type_v2", "numpy.core.multiarray._reconstruct",
                                        "torch.storage._load_from_bytes", "collections.OrderedDict.fromkeys",
                                        "torch.nn.Module", "__builtin__.exec", "torch.QInt8Storage", "a\u00e9.b"]
OPCODE_BYTES = sorted({ord(op.code) for op in pickletools.opcodes if len(op.code) == 1})


def wrap(pkl: bytes) -> bytes:
    entries = [ZipEntry("archive/data.pkl", pkl), ZipEntry("archive/byteorder", b"little")]
    entries += [ZipEntry(f"archive/data/{k}", v) for k, v in STORAGES.items()]
    entries.append(ZipEntry("archive/version", b"3\n"))
    return zip_bytes(entries)


def global_op(full: str) -> bytes:
    module, _, name = full.rpartition(".")
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


@st.composite
def mutated_pickles(draw) -> bytes:
    pkl = bytearray(PKL)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["opcode", "global", "length", "truncate", "duplicate", "delete", "stop"]))
        index = draw(st.integers(0, len(OPS) - 1))
        name, pos = OPS[index] if index < len(OPS) else ("", len(pkl))
        pos = min(pos, len(pkl))
        if kind == "opcode" and pos < len(pkl):
            pkl[pos] = draw(st.sampled_from(OPCODE_BYTES + list(range(256))))
        elif kind == "global":
            pkl[pos:pos] = global_op(draw(st.sampled_from(GLOBALS)))
        elif kind == "length" and name in _LENGTH_OPS and pos + 1 + _LENGTH_OPS[name] <= len(pkl):
            width = _LENGTH_OPS[name]
            value = draw(st.sampled_from([0, 1, 2, 255, 256, 65535, 2**31 - 1, 2**32 - 1]))
            pkl[pos + 1:pos + 1 + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
        elif kind == "truncate":
            del pkl[pos:]
        elif kind == "duplicate":
            end = BOUNDARIES[min(index + draw(st.integers(1, 8)), len(BOUNDARIES) - 1)]
            pkl[pos:pos] = PKL[pos:end]
        elif kind == "delete":
            end = BOUNDARIES[min(index + draw(st.integers(1, 4)), len(BOUNDARIES) - 1)]
            del pkl[pos:min(end, len(pkl))]
        elif kind == "stop":
            pkl[pos:pos] = b"."
    return bytes(pkl)


def _assert_torch_agrees(path: Path, wf: WeightFile) -> None:
    """What hfconv accepted, torch.load(weights_only=True) loads to the same names and shapes."""
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(wf.tensors)
    for name, t in loaded.items():
        meta = wf.tensors[name]
        assert tuple(t.shape) == meta.shape and t.stride() == meta.stride, name
        assert t.storage_offset() == meta.storage_offset, name


@SETTINGS
@given(mutated_pickles())
def test_mutated_pickle_only_format_error(tmp_path_factory, pkl: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "mutated.bin"
    path.write_bytes(wrap(pkl))
    wf = bounded(tc.read_torch_checkpoint, path)
    if wf is not None:
        _assert_torch_agrees(path, wf)


@SETTINGS
@given(st.sampled_from(GLOBALS), st.integers(0, len(OPS)))
def test_any_inserted_global_is_refused_or_allowed(tmp_path_factory, full: str, index: int) -> None:
    """A GLOBAL anywhere: a forbidden name is always named (HFC201), wherever it sits."""
    pos = BOUNDARIES[index]
    pkl = PKL[:pos] + global_op(full) + PKL[pos:]
    path = tmp_path_factory.getbasetemp() / "global.bin"
    path.write_bytes(wrap(pkl))
    try:
        tc.read_torch_checkpoint(path)
    except FormatError as err:
        if full not in tc.ALLOWED_GLOBALS and full != "torch.QInt8Storage" and pos > 0:
            assert err.code == "HFC201" and err.tensor == (full if full.isprintable() else ascii(full)), err.message
        return
    raise AssertionError("an inserted GLOBAL was accepted")


# --- random op streams against lowered caps -----------------------------------------------------

_PUSH = [P.NONE, P.EMPTY_DICT, P.EMPTY_LIST, P.EMPTY_TUPLE, P.i(1), P.i(300), P.i(70000), P.s("k"), b"\x88",
         b"\x89", b"G" + struct.pack(">d", 1.0), b"\x8a\x01\x05"]
_OTHER = [P.MARK, P.TUPLE, b"\x85", b"\x86", b"\x87", b"s", P.SETITEMS, P.APPEND, P.APPENDS, b"b", P.REDUCE,
          P.BINPERSID, b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"r" + struct.pack("<I", 7), b"j" + struct.pack("<I", 7),
          P.odict(), global_op("torch.FloatStorage"), global_op("torch._utils._rebuild_tensor_v2"),
          global_op("torch.float16")]


@st.composite
def op_streams(draw) -> bytes:
    body = b"".join(draw(st.lists(st.sampled_from(_PUSH + _OTHER), max_size=400)))
    return P.PROTO2 + body + draw(st.sampled_from([P.STOP, b"", P.STOP + b"\x00"]))


@pytest.fixture
def lowered_caps(monkeypatch):
    """Caps lowered far below their defaults, so random streams cross every one of them."""
    for name, value in (("MAX_OPCODES", 300), ("MAX_MEMO", 2), ("MAX_STACK", 40), ("MAX_MARK_DEPTH", 4),
                        ("MAX_TENSORS", 3), ("MAX_STRING_BYTES", 8)):
        monkeypatch.setattr(unpickler, name, value)


@SETTINGS
@given(op_streams())
def test_random_op_streams_respect_lowered_caps(tmp_path_factory, lowered_caps, pkl: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "ops.bin"
    path.write_bytes(wrap(pkl))
    wf = bounded(tc.read_torch_checkpoint, path)
    if wf is not None:
        assert len(wf.tensors) <= unpickler.MAX_TENSORS


@pytest.mark.parametrize("cap, stream, words", [
    ("MAX_OPCODES", P.PROTO2 + P.NONE + b"q\x00" * 400 + P.STOP, "opcodes"),
    ("MAX_MEMO", P.PROTO2 + P.NONE + b"".join(b"q" + bytes([i]) for i in range(10)) + P.STOP, "memo"),
    ("MAX_STACK", P.PROTO2 + P.NONE * 100 + P.STOP, "stack"),
    ("MAX_MARK_DEPTH", P.PROTO2 + P.MARK * 10 + P.STOP, "MARK"),
    ("MAX_STRING_BYTES", P.PROTO2 + P.s("x" * 100) + P.STOP, "string"),
    ("MAX_TENSORS", state_dict([(str(i), tensor("0", 6, (6,))) for i in range(5)]), "tensors"),
])
def test_each_pickle_cap_is_enforced(tmp_path: Path, lowered_caps, cap: str, stream: bytes, words: str) -> None:
    """Each cap, lowered, stops the interpreter with HFC203 naming it, before it grows further."""
    path = tmp_path / "cap.bin"
    path.write_bytes(wrap(stream))
    with pytest.raises(FormatError) as info:
        tc.read_torch_checkpoint(path)
    assert info.value.code == "HFC203" and words in info.value.message, info.value.message


def test_zip_bomb_refused_from_directory_entry(tmp_path: Path) -> None:
    """The ratio cap refuses a DEFLATE member by its declared sizes: nothing is inflated."""
    payload = b"\x03\x00"  # an empty DEFLATE stream; the directory claims 10 MB
    bomb = zip_bytes([ZipEntry("archive/data.pkl", b"", method=8, payload=payload, declared_size=10 << 20),
                      ZipEntry("archive/byteorder", b"little"), ZipEntry("archive/version", b"3\n")])
    path = tmp_path / "bomb.bin"
    path.write_bytes(bomb)
    with pytest.raises(FormatError) as info:
        tc.read_torch_checkpoint(path)
    assert info.value.code == "HFC204" and "zip bomb" in info.value.message


def test_small_deflated_data_pkl_still_read(tmp_path: Path) -> None:
    """Below the ratio floor, a re-zipped (DEFLATE) data.pkl is inflated and read as before."""
    entries = [ZipEntry("archive/data.pkl", PKL, method=8), ZipEntry("archive/byteorder", b"little")]
    entries += [ZipEntry(f"archive/data/{k}", v) for k, v in STORAGES.items()]
    path = tmp_path / "deflated.bin"
    path.write_bytes(zip_bytes(entries + [ZipEntry("archive/version", b"3\n")]))
    assert len(tc.read_torch_checkpoint(path).tensors) == 8


@pytest.mark.parametrize("extra, words", [
    ("archive/payload.py", "no record torch.save writes"),
    ("archive/data/99", "a storage data.pkl never uses"),
    ("archive/.data/extra.pkl", "no record torch.save writes"),
])
def test_unreferenced_zip_entry_refused(tmp_path: Path, extra: str, words: str) -> None:
    entries = [ZipEntry("archive/data.pkl", PKL), ZipEntry("archive/byteorder", b"little")]
    entries += [ZipEntry(f"archive/data/{k}", v) for k, v in STORAGES.items()]
    entries += [ZipEntry("archive/version", b"3\n"), ZipEntry(extra, b"x" * 8)]
    path = tmp_path / "extra.bin"
    path.write_bytes(zip_bytes(entries))
    with pytest.raises(FormatError) as info:
        tc.read_torch_checkpoint(path)
    assert info.value.code == "HFC204" and extra in info.value.message and words in info.value.message


def test_every_record_torch_writes_is_referenced(tmp_path: Path) -> None:
    """No false alarm: real torch.save archives (zip, every record) pass the unreferenced check."""
    for state in ({"w": torch.ones(2)}, {}, {"p": torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))}):
        path = tmp_path / "real.bin"
        torch.save(state, path)
        assert list(tc.read_torch_checkpoint(path).tensors) == list(state)
    for fixture in sorted((ROOT / "fixtures").glob("*/*.bin")):
        tc.read_torch_checkpoint(fixture)


# =============================================================================================
# safetensors headers
# =============================================================================================

def _real_safetensors() -> bytes:
    return (ROOT / "fixtures" / "families" / "llama" / "model.safetensors").read_bytes()


REAL_ST = _real_safetensors()
(_N,) = struct.unpack_from("<Q", REAL_ST)
REAL_HEADER = json.loads(REAL_ST[8:8 + _N])
REAL_DATA = REAL_ST[8 + _N:]
TENSOR_NAMES = [k for k in REAL_HEADER if k != "__metadata__"]


@st.composite
def mutated_headers(draw) -> bytes:
    header = json.loads(json.dumps(REAL_HEADER))
    text_edits: list[tuple[str, str]] = []
    data = REAL_DATA
    length_delta = 0
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(TENSOR_NAMES))
        entry = header.get(name)
        kind = draw(st.sampled_from(["offset", "shape", "dtype", "drop_field", "duplicate", "nan", "deep",
                                     "huge", "swap", "metadata", "data", "length", "extra_field", "rename"]))
        if entry is None:
            continue
        try:
            if kind == "offset":
                i = draw(st.integers(0, 1))
                entry["data_offsets"][i] += draw(st.sampled_from([-8, -1, 1, 4, 2**63, -(2**40)]))
            elif kind == "shape":
                if entry["shape"]:
                    entry["shape"][draw(st.integers(0, len(entry["shape"]) - 1))] = draw(
                        st.sampled_from([0, 1, -1, 2**63, 2**64, 3.0, True, None, "4"]))
                else:
                    entry["shape"] = [draw(st.integers(0, 4))]
            elif kind == "dtype":
                entry["dtype"] = draw(st.sampled_from(["F32", "F16", "BF16", "I8", "F8_E4M3", "F4", "BOOL", "f32", "",
                                                       "F128", 7]))
            elif kind == "drop_field":
                entry.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
            elif kind == "duplicate":
                text_edits.append(("dup", name))
            elif kind == "nan":
                text_edits.append(("nan", name))
            elif kind == "deep":
                entry["x"] = json.loads("[" * 6 + "]" * 6) if draw(st.booleans()) else None
                if entry["x"] is None:
                    text_edits.append(("deep", name))
            elif kind == "huge":
                entry["data_offsets"] = [0, 2**64 + draw(st.integers(0, 5))]
            elif kind == "swap":
                other = header[draw(st.sampled_from(TENSOR_NAMES))]
                entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
            elif kind == "metadata":
                header["__metadata__"] = draw(st.sampled_from([{"format": 1}, [], None, {"a": "b"}, "pt"]))
            elif kind == "data":
                cut = draw(st.integers(-16, 16))
                data = data[:cut] if cut < 0 else data + bytes(cut)
            elif kind == "length":
                length_delta = draw(st.sampled_from([-1, 1, 7, -(2**10), 2**40]))
            elif kind == "extra_field":
                entry[draw(st.sampled_from(["dtype ", "extra", "__metadata__"]))] = draw(st.sampled_from([1, "x", [1]]))
            elif kind == "rename":
                header[draw(st.sampled_from(["", "\u0000", "a" * 300, "__metadata__x"]))] = header.pop(name)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier edit removed what this one edits
    text = json.dumps(header, separators=(",", ":"))
    for edit, name in text_edits:
        key = json.dumps(name)
        at = text.find(key + ":")
        if at < 0:
            continue
        if edit == "dup":
            end = text.index("}", at) + 1
            text = text[:end] + "," + text[at:end] + text[end:]
        elif edit == "nan":
            text = text.replace('"data_offsets":[', '"data_offsets":[NaN,', 1)
        elif edit == "deep":
            text = text.replace('"x":null', '"x":' + "[" * 1000 + "]" * 1000, 1)
    raw = text.encode()
    return struct.pack("<Q", max(0, len(raw) + length_delta) % 2**64) + raw + data


def _assert_reference_agrees(path: Path, wf: WeightFile) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "np") as ref:
        assert list(ref.keys()) == sorted(wf.tensors)
        for name, meta in wf.tensors.items():
            view = ref.get_slice(name)
            assert view.get_dtype() == meta.dtype and tuple(view.get_shape()) == meta.shape


@SETTINGS
@given(mutated_headers())
def test_mutated_header_only_format_error(tmp_path_factory, blob: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "mutated.safetensors"
    path.write_bytes(blob)
    wf = bounded(sh.read_safetensors, path)
    if wf is not None:
        _assert_reference_agrees(path, wf)


@SETTINGS
@given(st.integers(0, 40), st.sampled_from(["{}", '{"dtype":"U8","shape":[0],"data_offsets":[0,0]}']),
       st.booleans())
def test_tensor_count_cap_before_parsing(tmp_path_factory, count: int, entry: str, braces_in_names: bool) -> None:
    """With the cap lowered to 10, more entries are HFC113 without parsing; fewer parse as usual."""
    mp = pytest.MonkeyPatch()
    mp.setattr(sh, "MAX_TENSORS", 10)
    try:
        names = [f"{'{' * 3 if braces_in_names else ''}t{i}" for i in range(count)]
        text = "{" + ",".join(f"{json.dumps(n)}:{entry}" for n in names) + "}"
        path = tmp_path_factory.getbasetemp() / "count.safetensors"
        path.write_bytes(struct.pack("<Q", len(text)) + text.encode())
        try:
            wf = sh.read_safetensors(path)
        except FormatError as err:
            if count > 10:
                assert err.code == "HFC113", err.message
            else:
                assert err.code == "HFC106" and entry == "{}", err.message  # empty entries lack fields
            return
        assert count <= 10 and len(wf.tensors) == count
    finally:
        mp.undo()


@SETTINGS
@given(st.binary(max_size=64), st.sampled_from(["x.safetensors", "x.bin"]),
       st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x80\x02\x00\x00\x00\x00\x00\x00{",
                        b"PK\x00\x00\x00\x00\x00\x00{", b"\x89PNG\r\n\x1a\n", b"<html>", b"version https://"]))
def test_dispatcher_only_format_error(tmp_path_factory, blob: bytes, name: str, prefix: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / name
    path.write_bytes(prefix + blob)
    bounded(read_weight_file, path)


@pytest.mark.parametrize("length", [640, 19280, 640 + 65536])
def test_header_length_that_looks_like_a_magic(tmp_path: Path, length: int) -> None:
    """Regression: a safetensors header of 640 bytes starts 80 02 (a pickle's PROTO 2), one of
    19280 bytes starts 'PK': the file is still read as safetensors, not as a torch checkpoint."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}})
    header += " " * (length - len(header))
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", length) + header.encode() + b"\x00")
    assert list(read_weight_file(path).tensors) == ["w"]


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "PNG"),
    (b"<!DOCTYPE html><html><body>Entry not found</body></html>", "HTML"),
    (b"Entry not found", "text"),
    (b"\x1f\x8b\x08\x00" + bytes(40), "gzip"),
])
def test_non_weight_content_named_safetensors(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(FormatError) as info:
        read_weight_file(path)
    assert info.value.code == "HFC202" and words in info.value.message


# =============================================================================================
# jsonutil's bracket scan (the pre-parse caps rest on it)
# =============================================================================================

@SETTINGS
@given(st.binary(max_size=200).map(lambda b: bytes(b'"[]{}a\\'[x % 7] for x in b)), st.integers(1, 9))
def test_chunked_bracket_scan_matches_whole_split(data: bytes, chunk: int) -> None:
    from hfconv import jsonutil

    expected = data.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in data else data
    kept = expected.translate(None, _NOT_QUOTE_OR_BRACKET)
    expected = b"".join(kept.split(b'"')[::2])
    mp = pytest.MonkeyPatch()
    mp.setattr(jsonutil, "_SPLIT_CHUNK", chunk)
    try:
        assert jsonutil._brackets_outside_strings(data) == expected
    finally:
        mp.undo()


def test_container_cap(tmp_path: Path) -> None:
    from hfconv.jsonutil import JsonError, loads_strict

    assert loads_strict("[" + ",".join(["{}"] * 50) + "]", require_object=False, max_containers=51)
    with pytest.raises(JsonError) as info:
        loads_strict("[" + ",".join(["{}"] * 50) + "]", require_object=False, max_containers=50)
    assert info.value.kind == "too_large" and "containers" in info.value.message
    # Brackets inside strings are not containers.
    assert loads_strict('{"a": "[[[[{{{{"}', max_containers=1) == {"a": "[[[[{{{{"}



# =============================================================================================
# regressions for the reader rules added with the hostile corpus
# =============================================================================================

def _tar(members: dict[str, bytes]) -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_checkpoint_members_are_scanned(tmp_path: Path) -> None:
    """torch.load unpickles every pickle of a legacy tar's members (storages holds two)."""
    evil = P.PROTO2 + P.call("os", "system", P.s("true")) + P.STOP
    benign = {"sys_info": P.PROTO2 + P.EMPTY_DICT + P.STOP, "pickle": P.PROTO2 + P.NONE + P.STOP,
              "tensors": P.PROTO2 + P.i(0) + P.STOP,
              "storages": P.PROTO2 + P.i(0) + P.STOP + P.PROTO2 + P.EMPTY_LIST + P.STOP}
    path = tmp_path / "tar.bin"
    path.write_bytes(_tar(benign))
    with pytest.raises(FormatError) as info:
        tc.read_torch_checkpoint(path)
    assert info.value.code == "HFC202" and "legacy tar checkpoint" in info.value.message
    path.write_bytes(_tar({**benign, "storages": benign["storages"][:-len(P.PROTO2 + P.EMPTY_LIST + P.STOP)] + evil}))
    with pytest.raises(FormatError) as info:
        tc.read_torch_checkpoint(path)
    assert info.value.code == "HFC201" and info.value.tensor == "os.system" and "'storages'" in info.value.message


def test_second_pickle_after_stop_is_named(tmp_path: Path) -> None:
    good = state_dict([("w", tensor("0", 6, (6,)))])
    for trailer, code in ((P.PROTO2 + P.call("builtins", "exec", P.s("1")) + P.STOP, "HFC201"),
                          (P.PROTO2 + P.NONE + P.STOP, "HFC203")):
        path = tmp_path / "after.bin"
        path.write_bytes(zip_bytes([ZipEntry("archive/data.pkl", good + trailer),
                                    ZipEntry("archive/byteorder", b"little"), ZipEntry("archive/data/0", bytes(24)),
                                    ZipEntry("archive/version", b"3\n")]))
        with pytest.raises(FormatError) as info:
            tc.read_torch_checkpoint(path)
        assert info.value.code == code and "after STOP" in info.value.message


def test_non_ascii_decoy_global_does_not_blind_the_scan(tmp_path: Path) -> None:
    """pickletools stops at a GLOBAL name that is not ASCII; the scan reads names as UTF-8."""
    body = b"\x95" + bytes(8) + global_op("d\u00e9coy.x") + P.call("os", "system", P.s("true")) + P.STOP
    path = tmp_path / "decoy.bin"
    path.write_bytes(wrap(P.PROTO2 + body))
    with pytest.raises(FormatError) as info:
        tc.read_torch_checkpoint(path)
    assert info.value.code == "HFC201", info.value.message
    assert {"d\u00e9coy.x", "os.system"} & {info.value.tensor}
