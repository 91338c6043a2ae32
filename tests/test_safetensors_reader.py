"""Tests for hfconv.readers.safetensors_header: a torch-free, byte-free header reader."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file as pt_save_file

from hfconv.readers.safetensors_header import read_safetensors
from hfconv.tensors import FormatError, WeightFile

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- helpers ---------------------------------------------------------------------------------

def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def build(header: dict | str | bytes, data: bytes = b"", *, pad: bool = True,
          length: int | None = None) -> bytes:
    """A safetensors file by hand: u64 length + header (space-padded to 8) + data."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8")
    if pad:
        header += b" " * (-len(header) % 8)
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


def write(tmp_path: Path, blob: bytes, name: str = "model.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def error(tmp_path: Path, blob: bytes) -> FormatError:
    with pytest.raises(FormatError) as info:
        read_safetensors(write(tmp_path, blob))
    return info.value


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a contiguous tensor, for any dtype (bf16 and fp8 too)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def header_order(path: Path) -> list[str]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    pairs = json.loads(raw[8:8 + n], object_pairs_hook=lambda p: p)
    return [name for name, _ in pairs if name != "__metadata__"]


# --- real files ------------------------------------------------------------------------------

def _torch_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(7, 5, generator=gen, dtype=torch.float32),
        "layers.0.attn.q.weight": torch.randn(4, 4, generator=gen).to(torch.bfloat16),
        "layers.0.attn.k.weight": torch.randn(3, 2, generator=gen).to(torch.float16),
        "layers.0.norm.weight": torch.randn(9, generator=gen, dtype=torch.float64),
        "position_ids": torch.arange(11, dtype=torch.int64),
        "counts": torch.arange(3, dtype=torch.int32),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(5, dtype=torch.uint8),
        "signed": torch.arange(-3, 3, dtype=torch.int8),
        "fp8": torch.randn(6, generator=gen).to(torch.float8_e4m3fn),
        "fp8b": torch.randn(2, 3, generator=gen).to(torch.float8_e5m2),
        "empty": torch.zeros(0, 3),
        "empty_bf16": torch.zeros(2, 0, dtype=torch.bfloat16),
        "scalar": torch.tensor(3.5),
        "weird name [0] {\"}": torch.ones(1),
        "\u00fcnicode.\U0001f600": torch.ones(2, dtype=torch.float16),
    }


def test_torch_file_reads_back(tmp_path):
    tensors = _torch_tensors()
    path = tmp_path / "model.safetensors"
    pt_save_file(tensors, str(path), metadata={"format": "pt", "note": "x"})

    wf = read_safetensors(path)
    assert isinstance(wf, WeightFile)
    assert wf.format == "safetensors"
    assert wf.path == str(path)
    assert wf.metadata == {"format": "pt", "note": "x"}
    assert wf.notes == ()
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert wf.header_nbytes == n
    assert set(wf.tensors) == set(tensors)
    assert list(wf.tensors) == header_order(path)

    with safe_open(str(path), "pt") as ref:
        assert set(ref.keys()) == set(wf.tensors)
        for name, meta in wf.tensors.items():
            tensor = tensors[name]
            assert meta.name == name
            assert meta.shape == tuple(tensor.shape)
            assert meta.dtype == ref.get_slice(name).get_dtype()
            assert list(meta.shape) == list(ref.get_slice(name).get_shape())
            begin, end = meta.data_offsets
            assert 8 + n <= begin <= end <= len(raw)
            assert end - begin == meta.nbytes
            assert raw[begin:end] == tensor_bytes(tensor)
            assert tensor_bytes(ref.get_tensor(name)) == raw[begin:end]
    # The tensors tile the data section exactly.
    spans = sorted(meta.data_offsets for meta in wf.tensors.values())
    assert spans[0][0] == 8 + n and spans[-1][1] == len(raw)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert wf.tensor_nbytes == len(raw) - 8 - n


def test_dtype_names(tmp_path):
    path = tmp_path / "m.safetensors"
    pt_save_file(_torch_tensors(), str(path))
    dtypes = {name: meta.dtype for name, meta in read_safetensors(path).tensors.items()}
    assert dtypes["layers.0.attn.q.weight"] == "BF16"
    assert dtypes["layers.0.attn.k.weight"] == "F16"
    assert dtypes["model.embed_tokens.weight"] == "F32"
    assert dtypes["layers.0.norm.weight"] == "F64"
    assert dtypes["position_ids"] == "I64"
    assert dtypes["mask"] == "BOOL"
    assert dtypes["fp8"] == "F8_E4M3"
    assert dtypes["fp8b"] == "F8_E5M2"


def test_numpy_file_reads_back(tmp_path):
    arrays = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.arange(5, dtype=np.uint16),
        "c": np.zeros((0,), dtype=np.int64),
        "d": np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    }
    path = tmp_path / "np.safetensors"
    np_save_file(arrays, str(path), metadata={"k": "v"})
    wf = read_safetensors(path)
    raw = path.read_bytes()
    assert wf.metadata == {"k": "v"}
    assert {k: v.dtype for k, v in wf.tensors.items()} == {"a": "F32", "b": "U16", "c": "I64", "d": "C64"}
    for name, array in arrays.items():
        begin, end = wf.tensors[name].data_offsets
        assert raw[begin:end] == array.tobytes()
        assert wf.tensors[name].shape == array.shape


def test_no_metadata_and_no_tensors(tmp_path):
    wf = read_safetensors(write(tmp_path, build({})))
    assert wf.tensors == {} and wf.metadata is None
    path = tmp_path / "empty.safetensors"
    pt_save_file({}, str(path))
    assert read_safetensors(path).tensors == {}


def test_zero_size_tensors_legal(tmp_path):
    header = {
        "a": entry("F32", [1], 0, 4),
        "z1": entry("F32", [0], 4, 4),
        "z2": entry("BF16", [3, 0, 2], 4, 4),
        "b": entry("U8", [2], 4, 6),
        "z3": entry("I64", [0], 6, 6),
    }
    wf = read_safetensors(write(tmp_path, build(header, b"\0" * 6)))
    assert wf.tensors["z2"].shape == (3, 0, 2)
    base = 8 + wf.header_nbytes
    assert wf.tensors["z3"].data_offsets == (base + 6, base + 6)
    assert list(wf.tensors) == list(header)


def test_header_order_kept_when_offsets_are_not(tmp_path):
    header = {"second": entry("U8", [2], 2, 4), "first": entry("U8", [2], 0, 2)}
    wf = read_safetensors(write(tmp_path, build(header, b"abcd")))
    assert list(wf.tensors) == ["second", "first"]
    base = 8 + wf.header_nbytes
    assert wf.tensors["first"].data_offsets == (base, base + 2)


def test_sub_byte_dtypes(tmp_path):
    header = {"f4": entry("F4", [2, 2], 0, 2), "e8": entry("F8_E8M0", [3], 2, 5)}
    wf = read_safetensors(write(tmp_path, build(header, b"\0" * 5)))
    assert wf.tensors["f4"].nbytes == 2 and wf.tensors["e8"].nbytes == 3
    # F6 is in the format, but the installed safetensors cannot load it ("Dtype not understood").
    err = error(tmp_path, build({"f6": entry("F6_E2M3", [4], 0, 3)}, b"\0" * 3))
    assert err.code == "HFC116" and err.tensor == "f6"


def test_unknown_entry_fields_ignored_like_reference(tmp_path):
    header = {"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "extra": [1, 2]}}
    assert set(read_safetensors(write(tmp_path, build(header, b"\0"))).tensors) == {"w"}


def test_unpadded_header_accepted(tmp_path):
    header = json.dumps({"w": entry("U8", [3], 0, 3)})
    assert len(header) % 8  # really unaligned
    wf = read_safetensors(write(tmp_path, build(header, b"abc", pad=False)))
    assert wf.header_nbytes == len(header)


def test_header_over_25mb_is_a_note(tmp_path):
    header = {"__metadata__": {"blob": "x" * 25_000_100}, "w": entry("U8", [1], 0, 1)}
    wf = read_safetensors(write(tmp_path, build(header, b"\0")))
    assert [note.code for note in wf.notes] == ["HFC103"]
    assert "25 MB" in wf.notes[0].message
    assert set(wf.tensors) == {"w"}


def test_not_a_regular_file(tmp_path):
    with pytest.raises(FormatError) as info:
        read_safetensors(tmp_path / "missing.safetensors")
    assert info.value.code == "HFC008"
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.safetensors"
        os.mkfifo(fifo)
        with pytest.raises(FormatError) as info:
            read_safetensors(fifo)
        assert info.value.code == "HFC008"


# --- golden broken files, one per code -----------------------------------------------------

def test_hfc101_too_short(tmp_path):
    for blob in (b"", b"\x01\x02\x03\x04\x05"):
        err = error(tmp_path, blob)
        assert err.code == "HFC101"
        assert f"{len(blob)} bytes" in err.message


def test_hfc102_over_100mb(tmp_path):
    err = error(tmp_path, struct.pack("<Q", 100_000_001) + b"{}")
    assert err.code == "HFC102"
    assert "100 MB" in err.message


def test_hfc102_max_u64(tmp_path):
    err = error(tmp_path, struct.pack("<Q", 2**64 - 1) + b"{}")
    assert err.code == "HFC102"


def test_hfc102_past_end_of_file(tmp_path):
    err = error(tmp_path, struct.pack("<Q", 1000) + b'{"a": 1}')
    assert err.code == "HFC102"
    assert "past the end" in err.message


def test_hfc102_exact_boundary(tmp_path):
    # Header length == file size - 8 is fine; one more byte is not.
    blob = build({})
    read_safetensors(write(tmp_path, blob))
    (n,) = struct.unpack("<Q", blob[:8])
    assert error(tmp_path, struct.pack("<Q", n + 1) + blob[8:]).code == "HFC102"


@pytest.mark.skipif(sys.platform == "win32", reason="needs resource.RLIMIT_AS")
@pytest.mark.parametrize("length", [2**64 - 1, 10**12, 100_000_000])
def test_hfc102_absurd_length_in_small_memory(tmp_path, length):
    """The reader must refuse before allocating: run it under a 512 MB address-space cap."""
    path = write(tmp_path, struct.pack("<Q", length) + b'{"a": 1}' + b"\0" * 64)
    script = textwrap.dedent(
        f"""
        import resource, sys
        from hfconv.readers.safetensors_header import read_safetensors
        from hfconv.tensors import FormatError
        # Cap after the imports: the point is what reading allocates, not what imports map.
        resource.setrlimit(resource.RLIMIT_AS, (512 * 1024 * 1024, 512 * 1024 * 1024))
        try:
            read_safetensors({str(path)!r})
        except FormatError as exc:
            print("CODE", exc.code)
            sys.exit(0)
        print("NO ERROR")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env, cwd=str(REPO_ROOT))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "CODE HFC102"


def test_hfc103_constant():
    from hfconv.readers.safetensors_header import HUB_HEADER_LIMIT, MAX_HEADER_BYTES

    assert (HUB_HEADER_LIMIT, MAX_HEADER_BYTES) == (25_000_000, 100_000_000)


@pytest.mark.parametrize(
    "header",
    [
        b'{"w": "\xff\xfe"}',  # not UTF-8
        b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}',  # unterminated
        b"[]      ",  # not an object
        b"\xef\xbb\xbf{}   ",  # BOM
        b"{}\0\0\0\0\0\0",  # NUL padding instead of spaces
        b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 0]}}',
        b'{"w": {"dtype": "F32", "shape": [1e999], "data_offsets": [0, 0]}}',
        b'{"\\ud800": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}',  # lone surrogate
        b"",  # zero-length header
        b"{" * 50 + b"}" * 50,  # deeper than any header
    ],
)
def test_hfc104_not_json(tmp_path, header):
    err = error(tmp_path, build(header, pad=False))
    assert err.code == "HFC104"


def test_hfc104_message_has_position(tmp_path):
    err = error(tmp_path, build(b'{"w": 1,,}', pad=False))
    assert err.code == "HFC104"
    assert "line 1 column" in err.message


def test_hfc105_duplicate_tensor(tmp_path):
    header = ('{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
              '"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}')
    err = error(tmp_path, build(header, b"\0\0"))
    assert err.code == "HFC105"
    assert err.tensor == "w"
    assert "'w'" in err.message


def test_hfc105_duplicate_field_in_entry(tmp_path):
    header = '{"w": {"dtype": "U8", "dtype": "F32", "shape": [1], "data_offsets": [0, 1]}}'
    err = error(tmp_path, build(header, b"\0"))
    assert err.code == "HFC105"
    assert err.tensor == "w"
    assert "'dtype'" in err.message


def test_hfc105_duplicate_metadata(tmp_path):
    # A key twice inside __metadata__: safetensors keeps the last value (HFC114, a warning).
    header = '{"__metadata__": {"a": "1", "a": "2"}}'
    wf = read_safetensors(write(tmp_path, build(header)))
    assert wf.metadata == {"a": "2"}
    assert [(note.code, note.tensor) for note in wf.notes] == [("HFC114", "__metadata__")]
    # __metadata__ itself twice: safetensors refuses ("duplicate field").
    err = error(tmp_path, build('{"__metadata__": {}, "__metadata__": {}}'))
    assert err.code == "HFC105"


@pytest.mark.parametrize(
    "bad_entry",
    [
        [1, 2],
        "F32",
        None,
        {"shape": [1], "data_offsets": [0, 4]},
        {"dtype": "F32", "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1]},
        {"dtype": 5, "shape": [1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [2**64], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [4]},
        {"dtype": "F32", "shape": [1], "data_offsets": {"0": 4}},
        {"dtype": "F32", "shape": [1], "data_offsets": [False, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0, 2**64]},
    ],
)
def test_hfc106_invalid_entry(tmp_path, bad_entry):
    header = {"ok": entry("U8", [1], 0, 1), "bad.weight": bad_entry}
    err = error(tmp_path, build(header, b"\0" * 5))
    assert err.code == "HFC106"
    assert err.tensor == "bad.weight"
    assert "'bad.weight'" in err.message


def test_hfc107_unknown_dtype(tmp_path):
    for dtype in ("F128", "f32", "", "float32"):
        err = error(tmp_path, build({"w": entry(dtype, [1], 0, 4)}, b"\0" * 4))
        assert err.code == "HFC107"
        assert err.tensor == "w"


def test_hfc108_size_mismatch(tmp_path):
    err = error(tmp_path, build({"w": entry("F32", [4, 4], 0, 60)}, b"\0" * 60))
    assert err.code == "HFC108"
    assert err.tensor == "w"
    assert "64 bytes" in err.message and "60" in err.message


def test_hfc108_overflow(tmp_path):
    for shape in ([2**32, 2**32], [2**63, 2], [2] * 100_000):
        err = error(tmp_path, build({"w": entry("U8", shape, 0, 4)}, b"\0" * 4))
        assert err.code == "HFC108"
        assert err.tensor == "w"


def test_hfc108_overflow_in_bytes_not_elements(tmp_path):
    # 2**62 elements fit 64 bits; their F64 byte count does not: still just a mismatch.
    err = error(tmp_path, build({"w": entry("F64", [2**62], 0, 8)}, b"\0" * 8))
    assert err.code == "HFC108"


def test_hfc108_sub_byte_not_byte_aligned(tmp_path):
    err = error(tmp_path, build({"w": entry("F4", [3], 0, 2)}, b"\0" * 2))
    assert err.code == "HFC108"
    assert "byte boundary" in err.message


def test_hfc109_gap(tmp_path):
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 6, 10)}
    err = error(tmp_path, build(header, b"\0" * 10))
    assert err.code == "HFC109"
    assert err.tensor == "b"
    assert "gap" in err.message


def test_hfc109_overlap(tmp_path):
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 2, 6)}
    err = error(tmp_path, build(header, b"\0" * 6))
    assert err.code == "HFC109"
    assert err.tensor == "b"
    assert "overlap" in err.message


def test_hfc109_alias_same_range(tmp_path):
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 0, 4)}
    err = error(tmp_path, build(header, b"\0" * 4))
    assert err.code == "HFC109"
    assert err.tensor in ("a", "b")


def test_hfc109_first_not_at_zero(tmp_path):
    err = error(tmp_path, build({"a": entry("U8", [4], 4, 8)}, b"\0" * 8))
    assert err.code == "HFC109"
    assert err.tensor == "a"


def test_hfc109_backwards(tmp_path):
    err = error(tmp_path, build({"a": entry("U8", [4], 8, 4)}, b"\0" * 8))
    assert err.code == "HFC109"
    assert err.tensor == "a"


def test_hfc110_truncated(tmp_path):
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 16, 32)}
    err = error(tmp_path, build(header, b"\0" * 20))
    assert err.code == "HFC110"
    assert "32" in err.message and "20" in err.message
    assert err.tensor == "b"


def test_hfc111_trailing_bytes(tmp_path):
    err = error(tmp_path, build({"a": entry("F32", [4], 0, 16)}, b"\0" * 116))
    assert err.code == "HFC111"
    assert "100 bytes" in err.message
    assert error(tmp_path, build({}, b"\0")).code == "HFC111"


@pytest.mark.parametrize("meta", [{"format": 1}, {"a": None}, {"a": ["x"]}, ["a"], "pt", 5])
def test_hfc112_bad_metadata(tmp_path, meta):
    err = error(tmp_path, build({"__metadata__": meta, "w": entry("U8", [1], 0, 1)}, b"\0"))
    assert err.code == "HFC112"
    assert err.tensor == "__metadata__"


def test_appended_bytes_to_real_file(tmp_path):
    path = tmp_path / "m.safetensors"
    pt_save_file({"w": torch.ones(4)}, str(path))
    good = path.read_bytes()
    assert error(tmp_path, good + b"\0").code == "HFC111"
    assert error(tmp_path, good[:-1]).code == "HFC110"


def test_many_tensors_fast(tmp_path):
    # 200k tensors in reverse offset order: sorting must keep this quick.
    count = 200_000
    header = {f"t.{i}": entry("U8", [1], count - 1 - i, count - i) for i in range(count)}
    wf = read_safetensors(write(tmp_path, build(header, b"\0" * count)))
    assert len(wf.tensors) == count


# --- property tests --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _read_or_format_error(path: Path, blob: bytes) -> WeightFile | None:
    path.write_bytes(blob)
    try:
        return read_safetensors(path)
    except FormatError as exc:
        assert exc.code.startswith("HFC1") or exc.code == "HFC008"
        return None


def _valid_file() -> bytes:
    header = {
        "__metadata__": {"format": "pt"},
        "a": entry("F32", [2, 2], 0, 16),
        "b": entry("BF16", [3], 16, 22),
        "c": entry("U8", [0], 22, 22),
        "d": entry("I64", [1], 22, 30),
    }
    return build(header, bytes(range(30)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_only_format_error(fuzz_dir, blob):
    _read_or_format_error(fuzz_dir / "random.safetensors", blob)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 3))
def test_mutated_header_only_format_error(fuzz_dir, edits, mode):
    blob = bytearray(_valid_file())
    for position, value in edits:
        position %= len(blob)
        if mode == 0:
            blob[position] = value
        elif mode == 1:
            del blob[position]
        elif mode == 2:
            blob.insert(position, value)
        else:
            blob[position] ^= 1 << (value % 8)
    wf = _read_or_format_error(fuzz_dir / "mutated.safetensors", bytes(blob))
    if wf is not None:
        _assert_reference_agrees(fuzz_dir / "mutated.safetensors", wf)


def _assert_reference_agrees(path: Path, wf: WeightFile) -> None:
    """Whatever hfconv accepts, the Rust reference accepts too, and reads the same way."""
    with safe_open(str(path), "pt") as ref:
        assert set(ref.keys()) == set(wf.tensors)
        assert (ref.metadata() or None) == (wf.metadata or None)
        for name, meta in wf.tensors.items():
            view = ref.get_slice(name)
            assert view.get_dtype() == meta.dtype
            assert tuple(view.get_shape()) == meta.shape


_names = st.text(min_size=0, max_size=6)
_dtypes = st.sampled_from(["F32", "BF16", "U8", "F4", "I64", "F64", "BOOL", "X"])
_dims = st.lists(st.integers(0, 4), max_size=3)


@st.composite
def _headers(draw):
    """Mostly-valid headers: tiled offsets, with occasional perturbations."""
    names = draw(st.lists(_names, max_size=5, unique=True))
    header: dict = {}
    offset = 0
    for name in names:
        dtype = draw(_dtypes)
        shape = draw(_dims)
        numel = 1
        for dim in shape:
            numel *= dim
        bits = {"F32": 32, "BF16": 16, "U8": 8, "F4": 4, "I64": 64, "F64": 64, "BOOL": 8}.get(dtype, 8)
        size = (numel * bits + 7) // 8 + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
        size = max(size, 0)
        begin = offset + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
        header[name] = entry(dtype, shape, max(begin, 0), max(begin, 0) + size)
        offset = max(begin, 0) + size
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(_names, _names, max_size=3))
    slack = draw(st.sampled_from([0, 0, 0, 1, -1]))
    return header, max(offset + slack, 0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_headers())
def test_generated_headers_agree_with_reference(fuzz_dir, drawn):
    header, data_len = drawn
    path = fuzz_dir / "generated.safetensors"
    wf = _read_or_format_error(path, build(header, b"\0" * data_len))
    if wf is not None:
        _assert_reference_agrees(path, wf)


def test_duplicate_deep_inside_entry_ignored_like_reference(tmp_path):
    # Inside an unknown extra field, which safetensors ignores whatever it holds.
    header = ('{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], '
              '"extra": [[["a", 1], ["a", 2]], {"k": {"z": 1, "z": 2}}]}}')
    wf = read_safetensors(write(tmp_path, build(header, b"\0")))
    assert set(wf.tensors) == {"w"} and not wf.notes


# --- the short-header loop, the bulk path and the checked path agree ---------------------------

@st.composite
def _raw_headers(draw):
    """A tiled header of 1 to 6 tensors with at most one slot made odd (a bool, float, negative
    or huge number, an unknown dtype, a 17-dimension shape), maybe listed out of file order."""
    sizes = {"F32": 4, "BF16": 2, "U8": 1, "I64": 8, "F8_E4M3": 1}
    rows = []
    offset = 0
    for index in range(draw(st.integers(1, 6))):
        dtype = draw(st.sampled_from(sorted(sizes)))
        shape = draw(st.lists(st.integers(1, 4), max_size=3))
        size = sizes[dtype]
        for dim in shape:
            size *= dim
        rows.append([f"t{index}", dtype, shape, [offset, offset + size]])
        offset += size
    slot = draw(st.sampled_from(["none", "dtype", "dim", "shape", "begin", "end", "offsets"]))
    row = draw(st.sampled_from(rows))
    if slot == "dtype":
        row[1] = draw(st.sampled_from(["F4", "X", "BOOL", ["F32"], {"F32": None}, 1, None]))
    elif slot == "offsets":  # a two-item value that is no pair of ints, or no pair
        row[3] = draw(st.sampled_from(["01", {"0": 0, "1": 4}, [0, 1, 2], [[0], [4]], [0], None, 7]))
    elif slot == "dim":
        row[2] = [*row[2], draw(st.sampled_from([True, 1.0, 0, -1, 2**64, None, "1"]))]
    elif slot == "shape":  # too many dimensions, or no list (an empty str or object has no items)
        row[2] = draw(st.sampled_from([[1] * 17, "", {}, "12", None, 3, {"0": 1}]))
    elif slot in ("begin", "end"):
        value = row[3][slot == "end"]  # the same number in another type, or another number
        row[3][slot == "end"] = draw(st.sampled_from([float(value), value == 1 if value < 2 else True,
                                                     value + 1, -1, 2**64, None, str(value)]))
    if draw(st.booleans()):
        rows.reverse()  # ranges out of header order: the bulk path sorts them
    header = {name: {"dtype": dtype, "shape": shape, "data_offsets": offsets} for name, dtype, shape, offsets in rows}
    return json.dumps(header).encode(), max(offset + draw(st.sampled_from([0, 0, 0, 1, -1])), 0)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_raw_headers())
def test_short_header_loop_agrees_with_the_bulk_and_checked_paths(drawn):
    import hfconv.readers.safetensors_header as reader

    raw, available = drawn
    base = 8 + len(raw)
    short = reader._read_fast(raw, base, available)
    few, reader._FEW = reader._FEW, 0
    try:
        bulk = reader._read_fast(raw, base, available)
    finally:
        reader._FEW = few
    # The bulk parser (orjson) reads as json would, or refuses: an int past 64 bits, which orjson
    # makes a float, sends the header to the checked path as json's int would.
    parse, reader.loads_fast = reader.loads_fast, lambda text: json.loads(text.decode("utf-8"))
    try:
        assert reader._read_fast(raw, base, available) == short
    finally:
        reader.loads_fast = parse
    if short is not None:
        # Taken by the short loop: exactly what the bulk path takes...
        assert bulk == short
        assert [tuple(map(type, m)) for m in bulk[0].values()] == [tuple(map(type, m)) for m in short[0].values()]
    if bulk is not None:
        # The sums made in passing: every tensor's elements, and the data section is their bytes.
        assert bulk[2] == sum(math.prod(meta.shape) for meta in bulk[0].values())
        assert available == sum(end - begin for begin, end in (meta.data_offsets for meta in bulk[0].values()))
        # ...and what the checked path reads, field for field, with no note.
        checked = reader._parse_header(raw)
        assert list(checked) == list(bulk[0])
        for name, meta in bulk[0].items():
            assert meta.dtype == checked[name]["dtype"]
            assert list(meta.shape) == checked[name]["shape"]
            assert [o - base for o in meta.data_offsets] == checked[name]["data_offsets"]


@pytest.mark.parametrize("count", [5, 300])  # the short-header loop and the bulk path
def test_totals_are_the_tensors_elements_and_bytes(tmp_path, count):
    gen = torch.Generator().manual_seed(count)
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8, torch.float8_e4m3fn]
    tensors = {f"layers.{i}.w": torch.randn(1 + i % 7, 1 + i % 3, generator=gen).to(dtypes[i % len(dtypes)])
               for i in range(count)}
    path = tmp_path / "model.safetensors"
    pt_save_file(tensors, str(path))
    wf = read_safetensors(path)
    assert wf.totals == (sum(t.numel() for t in tensors.values()),
                         sum(t.numel() * t.element_size() for t in tensors.values()))
    assert wf.tensor_nbytes == wf.totals[1]


@pytest.mark.parametrize("odd", [2.0, True])
def test_a_dimension_equal_to_an_int_is_not_taken_for_it(tmp_path, odd):
    """The bulk path keeps one tuple per distinct shape, and (2.0, 2) equals (2, 2), (True, 2)
    equals (1, 2): the dimensions' types are checked before, so a float or bool dimension beside an
    alike int shape is refused as the checked path refuses it, not merged into the int shape."""
    import hfconv.readers.safetensors_header as reader

    alike = [2, 2] if odd == 2 else [1, 2]
    size = 4 * alike[0] * alike[1]  # F32: what the odd shape would hold, taken for the int one
    header = {"a": {"dtype": "F32", "shape": alike, "data_offsets": [0, size]},
              "b": {"dtype": "F32", "shape": [odd, 2], "data_offsets": [size, 2 * size]}}
    header.update({f"c{i}": {"dtype": "U8", "shape": [1], "data_offsets": [2 * size + i, 2 * size + i + 1]}
                   for i in range(60)})  # past the short-header loop's 48 entries
    raw = json.dumps(header).encode()
    assert reader._read_fast(raw, 8 + len(raw), 2 * size + 60) is None
    with pytest.raises(FormatError):
        read_safetensors(write(tmp_path, build(header, b"\0" * (2 * size + 60))))


@pytest.mark.parametrize("shape", ["", {}])
def test_an_empty_non_list_shape_is_no_scalar(tmp_path, shape):
    """An empty string or object has no items, like a scalar's []: the bulk path (which a header the
    short-header loop refuses reaches) refuses it as the checked path does (safetensors: "expected a
    sequence"), not read as shape ()."""
    header = {"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}}
    with pytest.raises(FormatError) as info:
        read_safetensors(write(tmp_path, build(header, b"\0" * 4)))
    assert info.value.code == "HFC106"
