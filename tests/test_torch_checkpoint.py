"""hfconv.readers.torch_checkpoint against real torch.save files and hostile variants.

Every good file is compared with ``torch.load(..., weights_only=True)``: names, order, dtype,
shape, stride, offset, and the bytes found at the offsets the reader computed. Hostile files
must be refused with the right code and must never run anything.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from hfconv.dtypes import TORCH_DTYPE
from hfconv.readers.torch_checkpoint import read_torch_checkpoint
from hfconv.tensors import FormatError, WeightFile

from helpers import mixed_state, save_big_endian

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def our_dtype(dtype: torch.dtype) -> str:
    return TORCH_DTYPE[str(dtype).removeprefix("torch.")]


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_matches_torch(path: Path, wf: WeightFile) -> None:
    """Names, order, metadata and bytes at the computed offsets agree with torch.load."""
    loaded = torch.load(path, weights_only=True)
    assert list(wf.tensors) == list(loaded)
    raw = path.read_bytes()
    for name, t in loaded.items():
        meta = wf.tensors[name]
        storage = wf.storages[meta.storage_key]
        assert meta.dtype == our_dtype(t.dtype) == storage.dtype, name
        assert meta.shape == tuple(t.shape), name
        assert meta.stride == t.stride(), name
        assert meta.storage_offset == t.storage_offset(), name
        assert storage.numel * t.element_size() <= storage.record_nbytes
        size = t.element_size()
        if meta.is_contiguous:
            start = storage.data_offset + meta.storage_offset * size
            assert raw[start:start + meta.nbytes] == tensor_bytes(t), name
        # Any view: rebuild it from the storage bytes the reader located.
        blob = bytearray(raw[storage.data_offset:storage.data_offset + storage.numel * size])
        flat = torch.frombuffer(blob, dtype=torch.uint8) if blob else torch.empty(0, dtype=torch.uint8)
        view = flat.view(t.dtype).as_strided(meta.shape, meta.stride, meta.storage_offset)
        assert tensor_bytes(view) == tensor_bytes(t), name


def save(path: Path, obj, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def expect(path: Path, code: str, *words: str) -> FormatError:
    with pytest.raises(FormatError) as info:
        read_torch_checkpoint(path)
    err = info.value
    assert err.code == code, (err.code, err.message)
    for word in words:
        assert word in err.message, (word, err.message)
    return err


def zip_entries(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def write_zip(path: Path, entries: list[tuple[str, bytes]], deflate: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            method = zipfile.ZIP_DEFLATED if any(name.endswith(d) for d in deflate) else zipfile.ZIP_STORED
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return path


def rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes] | None = None, drop: tuple[str, ...] = (),
                deflate: tuple[str, ...] = ()) -> Path:
    """Copy a torch zip, replacing/dropping members named by their suffix (e.g. 'data.pkl')."""
    replace = replace or {}
    out = []
    for name, data in zip_entries(src):
        suffix = name.split("/", 1)[1]
        if suffix in drop:
            continue
        out.append((name, replace.get(suffix, data)))
    return write_zip(dst, out, deflate)


class FakeStorage:
    """Stands for a storage in a hand-built checkpoint pickle (becomes a persistent id)."""

    def __init__(self, cls, key: str, numel: int):
        self.cls, self.key, self.numel = cls, key, numel


class FakeView:
    """Pickles exactly like a tensor: REDUCE of torch._utils._rebuild_tensor_v2."""

    def __init__(self, storage: FakeStorage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def torch_pickle(obj) -> bytes:
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def fake_checkpoint(path: Path, state: dict, storages: dict[str, bytes]) -> Path:
    entries = [("archive/data.pkl", torch_pickle(state)), ("archive/byteorder", b"little"), ("archive/version", b"3\n")]
    entries += [(f"archive/data/{key}", data) for key, data in storages.items()]
    return write_zip(path, entries)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)  # int64 0-dim num_batches_tracked buffer
        self.head = nn.Linear(4, 11, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("positions", torch.arange(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(x)))


class Script(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2,
              torch.uint16, torch.uint32, torch.uint64]


def all_dtype_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, generator=gen) * 7
    return {f"t_{str(dt).removeprefix('torch.')}": (base > 0 if dt == torch.bool else base.to(dt)) for dt in ALL_DTYPES}


def view_state() -> dict[str, torch.Tensor]:
    big = torch.arange(40, dtype=torch.float32).reshape(5, 8)
    return {
        "transposed": torch.arange(12, dtype=torch.float16).reshape(3, 4).T,
        "row_slice": big[2:4],                  # storage offset 16, contiguous
        "col_slice": big[1, 3:7],               # offset 11
        "strided": big[:, ::3],                 # non-contiguous with offset 0
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "expanded": torch.arange(3, dtype=torch.int32).expand(4, 3),  # stride 0
        "param": nn.Parameter(torch.ones(2, 2)),
    }


# --------------------------------------------------------------------------------------------
# good files
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_real_module_state_dict(tmp_path: Path, legacy: bool) -> None:
    torch.manual_seed(0)
    model = Tied()
    path = save(tmp_path / "pytorch_model.bin", model.state_dict(), legacy)
    wf = read_torch_checkpoint(path)
    assert wf.format == ("legacy" if legacy else "zip")
    assert list(wf.tensors) == list(model.state_dict())
    assert_matches_torch(path, wf)
    shared = [n for n in wf.notes if n.code == "HFC206"]
    assert [n.message for n in shared] == ["head.weight shares its storage with embed.weight"]
    assert shared[0].tensor == "head.weight"
    assert wf.aliases == {wf.tensors["embed.weight"].storage_key: ["embed.weight", "head.weight"]}
    assert ("HFC207" in {n.code for n in wf.notes}) == legacy
    assert wf.tensors["bn.num_batches_tracked"].shape == ()
    assert 0 < wf.header_nbytes < path.stat().st_size


def test_all_dtypes(tmp_path: Path) -> None:
    path = save(tmp_path / "dtypes.bin", all_dtype_state())
    wf = read_torch_checkpoint(path)
    assert [t.dtype for t in wf.tensors.values()] == ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8",
                                                      "BOOL", "F8_E4M3", "F8_E5M2", "U16", "U32", "U64"]
    assert_matches_torch(path, wf)


def test_all_legacy_dtypes(tmp_path: Path) -> None:
    typed = {k: v for k, v in all_dtype_state().items() if not k.startswith(("t_float8", "t_uint16", "t_uint32",
                                                                              "t_uint64"))}
    path = save(tmp_path / "dtypes.bin", typed, legacy=True)
    assert_matches_torch(path, read_torch_checkpoint(path))


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.uint16])
def test_legacy_untyped_storage_is_refused(tmp_path: Path, dtype: torch.dtype) -> None:
    # torch.save writes it, but torch.load's legacy path cannot read it back.
    path = save(tmp_path / "u.bin", {"x": torch.zeros(2, dtype=dtype)}, legacy=True)
    with pytest.raises(AttributeError):
        torch.load(path, weights_only=False)
    expect(path, "HFC203", "UntypedStorage in a legacy checkpoint")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_views_scalars_and_empty(tmp_path: Path, legacy: bool) -> None:
    path = save(tmp_path / "views.bin", view_state(), legacy)
    wf = read_torch_checkpoint(path)
    assert_matches_torch(path, wf)
    t = wf.tensors
    assert not t["transposed"].is_contiguous and t["transposed"].stride == (1, 4)
    assert t["row_slice"].storage_offset == 16 and t["row_slice"].is_contiguous
    assert t["col_slice"].storage_offset == 11
    assert t["scalar"].shape == () and t["scalar"].stride == ()
    assert t["empty"].shape == (0, 3) and t["empty"].numel == 0
    assert t["expanded"].stride == (0, 1)
    # slices of one tensor share its storage
    assert t["row_slice"].storage_key == t["col_slice"].storage_key == t["strided"].storage_key


def test_legacy_layout(tmp_path: Path) -> None:
    path = save(tmp_path / "legacy.bin", {"a": torch.arange(5, dtype=torch.int16), "b": torch.ones(2, 3)}, True)
    wf = read_torch_checkpoint(path)
    assert wf.format == "legacy"
    assert [n.code for n in wf.notes] == ["HFC207"]
    last = max(wf.storages.values(), key=lambda s: s.data_offset)
    assert last.data_offset + last.record_nbytes == path.stat().st_size  # file ends at the last storage
    assert_matches_torch(path, wf)


def test_repo_fixture_checkpoints() -> None:
    root = Path(__file__).resolve().parent.parent / "fixtures"
    files = sorted(root.glob("*/pytorch_model*.bin"))
    if not files:
        pytest.skip("fixtures not built")
    for path in files:
        assert_matches_torch(path, read_torch_checkpoint(path))


def test_many_tensors_is_fast(tmp_path: Path) -> None:
    import time

    path = save(tmp_path / "many.bin", {f"layer.{i}.weight": torch.zeros(2) for i in range(3000)})
    start = time.perf_counter()
    wf = read_torch_checkpoint(path)
    assert len(wf.tensors) == 3000
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------------------------
# not a state dict
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("obj, words", [
    ({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, ("nested under 'state_dict'",)),
    ([torch.zeros(2)], ("top-level object is a list",)),
    (torch.zeros(2), ("top-level object is a tensor",)),
    ({"w": torch.zeros(2), "step": 7}, ("'step' is an int",)),
    ({1: torch.zeros(2)}, ("not a string",)),
])
def test_not_a_state_dict(tmp_path: Path, obj, words) -> None:
    expect(save(tmp_path / "x.bin", obj), "HFC208", *words)


def test_unsupported_dtype(tmp_path: Path) -> None:
    err = expect(save(tmp_path / "c.bin", {"z": torch.zeros(2, dtype=torch.complex128)}), "HFC211")
    assert err.tensor == "torch.ComplexDoubleStorage"


# --------------------------------------------------------------------------------------------
# hostile pickles
# --------------------------------------------------------------------------------------------

class Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.fixture
def real_zip(tmp_path: Path) -> Path:
    return save(tmp_path / "real.bin", {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)})


def test_os_system_in_data_pkl_never_runs(tmp_path: Path, real_zip: Path) -> None:
    sentinel = tmp_path / "sentinel"
    payload = pickle.dumps({"w": Evil(os.system, f"touch {sentinel}")}, protocol=2)
    bad = rewrite_zip(real_zip, tmp_path / "bad.bin", {"data.pkl": payload})
    err = expect(bad, "HFC201", "forbidden global", "system")
    assert err.tensor in ("posix.system", "os.system", "nt.system")
    assert not sentinel.exists()


def test_builtins_open_never_runs(tmp_path: Path, real_zip: Path) -> None:
    sentinel = tmp_path / "sentinel2"
    payload = pickle.dumps(Evil(open, str(sentinel), "w"), protocol=2)
    err = expect(rewrite_zip(real_zip, tmp_path / "bad.bin", {"data.pkl": payload}), "HFC201")
    assert err.tensor == "io.open" or err.tensor == "builtins.open"
    # as a legacy (non-zip) file, and at protocol 4 (STACK_GLOBAL) as a plain pickle file
    (tmp_path / "legacy_bad.bin").write_bytes(payload)
    expect(tmp_path / "legacy_bad.bin", "HFC201")
    (tmp_path / "p4.bin").write_bytes(pickle.dumps(Evil(os.system, f"touch {sentinel}"), protocol=4))
    assert expect(tmp_path / "p4.bin", "HFC201").tensor.endswith(".system")
    (tmp_path / "p0.bin").write_bytes(pickle.dumps(Evil(os.system, f"touch {sentinel}"), protocol=0))
    assert expect(tmp_path / "p0.bin", "HFC201").tensor.endswith(".system")
    assert not sentinel.exists()


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "torch._tensor._rebuild_from_type_v2",
                                  "numpy.core.multiarray._reconstruct", "torch.storage._load_from_bytes",
                                  "torch._utils._rebuild_parameter_with_state", "torch.load"])
def test_forbidden_globals_named(tmp_path: Path, real_zip: Path, name: str) -> None:
    module, attr = name.rsplit(".", 1)
    payload = b"\x80\x02c" + f"{module}\n{attr}\n".encode() + b"q\x00X\x01\x00\x00\x00xq\x01\x85q\x02Rq\x03."
    err = expect(rewrite_zip(real_zip, tmp_path / "bad.bin", {"data.pkl": payload}), "HFC201", name)
    assert err.tensor == name


def test_global_in_wrong_position(tmp_path: Path, real_zip: Path) -> None:
    # An allowed storage class called as a function, and a dtype used as a dict value.
    call_storage = b"\x80\x02ctorch\nFloatStorage\nq\x00)R."
    expect(rewrite_zip(real_zip, tmp_path / "a.bin", {"data.pkl": call_storage}), "HFC203", "REDUCE calls")
    dtype_value = b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch\nfloat32\nq\x01s."
    expect(rewrite_zip(real_zip, tmp_path / "b.bin", {"data.pkl": dtype_value}), "HFC203", "dict value")


def test_stack_global_opcode(tmp_path: Path, real_zip: Path) -> None:
    # STACK_GLOBAL of an allowed name is still an opcode torch.save never writes.
    payload = b"\x80\x02X\x0b\x00\x00\x00collectionsX\x0b\x00\x00\x00OrderedDict\x93)R."
    expect(rewrite_zip(real_zip, tmp_path / "sg.bin", {"data.pkl": payload}), "HFC203", "STACK_GLOBAL", "byte 34")


def test_bytes_after_stop(tmp_path: Path, real_zip: Path) -> None:
    data = dict(zip_entries(real_zip))
    pkl = next(v for k, v in data.items() if k.endswith("data.pkl"))
    expect(rewrite_zip(real_zip, tmp_path / "t.bin", {"data.pkl": pkl + b"N."}), "HFC203", "after STOP")


def test_truncated_pickle(tmp_path: Path, real_zip: Path) -> None:
    pkl = next(v for k, v in zip_entries(real_zip) if k.endswith("data.pkl"))
    expect(rewrite_zip(real_zip, tmp_path / "t.bin", {"data.pkl": pkl[:-5]}), "HFC203", "without STOP")


def test_duplicate_dict_key(tmp_path: Path, real_zip: Path) -> None:
    payload = b"\x80\x02}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00aK\x02u."
    expect(rewrite_zip(real_zip, tmp_path / "d.bin", {"data.pkl": payload}), "HFC203", "set twice")


def test_one_storage_two_dtypes(tmp_path: Path) -> None:
    a = FakeStorage(torch.FloatStorage, "0", 4)
    b = FakeStorage(torch.HalfStorage, "0", 4)
    path = fake_checkpoint(tmp_path / "x.bin", {"a": FakeView(a, 0, (4,), (1,)), "b": FakeView(b, 0, (4,), (1,))},
                           {"0": bytes(16)})
    expect(path, "HFC203", "one storage used with two dtypes")


# --------------------------------------------------------------------------------------------
# storages and views
# --------------------------------------------------------------------------------------------

def test_fake_checkpoint_matches_real_layout(tmp_path: Path) -> None:
    s = FakeStorage(torch.FloatStorage, "0", 6)
    path = fake_checkpoint(tmp_path / "ok.bin", {"w": FakeView(s, 2, (2, 2), (2, 1))}, {"0": bytes(24)})
    wf = read_torch_checkpoint(path)
    assert wf.tensors["w"].storage_offset == 2 and wf.storages["0"].numel == 6
    assert_matches_torch(path, wf)


@pytest.mark.parametrize("offset, size, stride, words", [
    (0, (5,), (1,), ("reads 20 bytes from a 16-byte storage",)),
    (3, (2,), (1,), ("reaches element 4",)),
    (0, (2, 2), (-1, 1), ("negative",)),
    (0, (-2,), (1,), ("negative",)),
    (0, (2,), (1, 1), ("2 strides",)),
    (9, (0,), (1,), ("starts at element 9",)),
    (0, (1 << 20, 1 << 20), (0, 0), ("stride-0",)),
])
def test_view_out_of_bounds(tmp_path: Path, offset, size, stride, words) -> None:
    s = FakeStorage(torch.FloatStorage, "0", 4)
    path = fake_checkpoint(tmp_path / "v.bin", {"w": FakeView(s, offset, size, stride)}, {"0": bytes(16)})
    err = expect(path, "HFC209", *words)
    assert err.tensor == "w"


def test_missing_storage_record(tmp_path: Path, real_zip: Path) -> None:
    err = expect(rewrite_zip(real_zip, tmp_path / "m.bin", drop=("data/1",)), "HFC205", "/data/1", "does not contain")
    assert err.tensor == "b"


def test_storage_record_too_small(tmp_path: Path, real_zip: Path) -> None:
    expect(rewrite_zip(real_zip, tmp_path / "s.bin", {"data/0": bytes(8)}), "HFC205", "storage too small")


def test_deflated_storage(tmp_path: Path, real_zip: Path) -> None:
    expect(rewrite_zip(real_zip, tmp_path / "z.bin", deflate=("data/0",)), "HFC204", "DEFLATE")


def test_deflated_data_pkl_is_read(tmp_path: Path, real_zip: Path) -> None:
    path = rewrite_zip(real_zip, tmp_path / "z.bin", deflate=("data.pkl",))
    assert_matches_torch(path, read_torch_checkpoint(path))


# --------------------------------------------------------------------------------------------
# containers and content sniffing
# --------------------------------------------------------------------------------------------

def test_big_endian_checkpoint_is_read_with_a_note(tmp_path: Path) -> None:
    state = mixed_state()
    little = read_torch_checkpoint(save(tmp_path / "le.bin", state))
    big = read_torch_checkpoint(save_big_endian(state, tmp_path / "be.bin"))
    assert little.byte_order == "little" and big.byte_order == "big"
    assert big.tensors == little.tensors  # same metadata; only the element bytes differ
    assert [n.code for n in big.notes if n.code == "HFC212"] == ["HFC212"]
    assert not [n for n in little.notes if n.code == "HFC212"]
    loaded = torch.load(tmp_path / "be.bin", map_location="cpu", weights_only=True)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name  # torch swapped it back: the file is real


def test_unknown_byteorder(tmp_path: Path, real_zip: Path) -> None:
    expect(rewrite_zip(real_zip, tmp_path / "m.bin", {"byteorder": b"middle"}), "HFC204", "byteorder")


def test_truncated_zip(tmp_path: Path, real_zip: Path) -> None:
    data = real_zip.read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    expect(tmp_path / "cut.bin", "HFC204", "truncated")
    (tmp_path / "cut2.bin").write_bytes(data[:-30])  # end record damaged
    expect(tmp_path / "cut2.bin", "HFC204")


def test_duplicate_zip_entry(tmp_path: Path, real_zip: Path) -> None:
    entries = zip_entries(real_zip)
    with pytest.warns(UserWarning):
        write_zip(tmp_path / "dup.bin", entries + [entries[-1]])
    expect(tmp_path / "dup.bin", "HFC204", "appears twice")


def test_local_header_name_mismatch(tmp_path: Path, real_zip: Path) -> None:
    data = bytearray(real_zip.read_bytes())
    with zipfile.ZipFile(real_zip) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("data/0"))
    name_at = info.header_offset + 30
    assert data[name_at:name_at + len(info.filename)] == info.filename.encode()
    data[name_at + len(info.filename) - 1] = ord("9")  # local header now says .../data/9
    (tmp_path / "lh.bin").write_bytes(bytes(data))
    expect(tmp_path / "lh.bin", "HFC204", "local header")


def test_torchscript_archive(tmp_path: Path) -> None:
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(Script()), str(path))
    expect(path, "HFC210", "TorchScript")


def test_zip_names_compare_case_insensitively(tmp_path: Path, real_zip: Path) -> None:
    # torch (miniz) finds "DATA.PKL" when it looks for "data.pkl"; so must the reader.
    entries = [(n.replace("data.pkl", "DATA.PKL"), d) for n, d in zip_entries(real_zip)]
    path = write_zip(tmp_path / "upper.bin", entries)
    assert_matches_torch(path, read_torch_checkpoint(path))
    # ... and two names equal but for case are ambiguous to it
    entries = zip_entries(real_zip)
    clash = [(n.replace("data/0", "DATA/0"), b"\xff" * len(d)) for n, d in entries if n.endswith("data/0")]
    expect(write_zip(tmp_path / "clash.bin", entries + clash), "HFC204", "appears twice")


def test_zip_entry_outside_archive_folder(tmp_path: Path, real_zip: Path) -> None:
    path = write_zip(tmp_path / "out.bin", zip_entries(real_zip) + [("elsewhere/x", b"1")])
    expect(path, "HFC204", "outside the archive folder")


def test_zip_without_version_record(tmp_path: Path, real_zip: Path) -> None:
    expect(rewrite_zip(real_zip, tmp_path / "nv.bin", drop=("version",)), "HFC204", "version")


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    expect(write_zip(tmp_path / "z.bin", [("folder/readme.txt", b"hi")]), "HFC202", "without")


def test_legacy_tar(tmp_path: Path) -> None:
    path = tmp_path / "old.bin"
    with tarfile.open(path, "w") as tar:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"\x80\x02N."))
    expect(path, "HFC202", "legacy tar checkpoint, not supported")


@pytest.mark.parametrize("content, code, words", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 123\n",
     "HFC010", ("git-lfs pointer (LFS object not pulled)",)),
    (b"<!DOCTYPE html>\n<html><body>Not Found</body></html>", "HFC202", ("an HTML page",)),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "HFC202", ("a PNG image",)),
    (b"", "HFC202", ("empty file",)),
    (b'{"error": "Repository not found"}', "HFC202", ("JSON",)),
    (pickle.dumps({"a": 1}, protocol=4), "HFC202", ("protocol 4",)),
    (b"cat\nsays hello\n", "HFC202", ("text file",)),
])
def test_sniffed_content(tmp_path: Path, content: bytes, code: str, words) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(content)
    expect(path, code, *words)


def test_legacy_trailing_and_truncated(tmp_path: Path) -> None:
    path = save(tmp_path / "l.bin", {"a": torch.ones(4)}, legacy=True)
    data = path.read_bytes()
    (tmp_path / "trail.bin").write_bytes(data + b"\x00" * 3)
    expect(tmp_path / "trail.bin", "HFC203", "trailing")
    (tmp_path / "cut.bin").write_bytes(data[:-4])
    expect(tmp_path / "cut.bin", "HFC205", "truncated")


def test_plain_legacy_pickle_without_magic(tmp_path: Path) -> None:
    (tmp_path / "p.bin").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    expect(tmp_path / "p.bin", "HFC202", "magic")


# --------------------------------------------------------------------------------------------
# fuzz: nothing but FormatError, ever
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_seeds(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzz")
    state = {**view_state(), "e": torch.zeros(3, dtype=torch.float8_e4m3fn), "u": torch.ones(2, dtype=torch.uint16)}
    zip_path = save(root / "seed.bin", state)
    legacy_path = save(root / "seed_legacy.bin", state, legacy=True)
    entries = zip_entries(zip_path)
    return {"root": root, "entries": entries, "zip": zip_path.read_bytes(), "legacy": legacy_path.read_bytes()}


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for where, value in edits:
        buf[where % len(buf)] = value
    if cut is not None:
        del buf[cut % (len(buf) + 1):]
    return bytes(buf)


@settings(max_examples=200, deadline=None)
@given(target=st.sampled_from(["data.pkl", "zip", "legacy", "random"]),
       edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6),
       cut=st.none() | st.integers(0, 1 << 20),
       noise=st.binary(max_size=300),
       prefix=st.sampled_from([b"", b"\x80\x02", b"PK\x03\x04", b"\x80\x04"]))
def test_fuzz_only_format_errors(fuzz_seeds, target, edits, cut, noise, prefix) -> None:
    path = fuzz_seeds["root"] / "case.bin"
    if target == "data.pkl":
        entries = [(n, _mutate(d, edits, cut) if n.endswith("data.pkl") else d) for n, d in fuzz_seeds["entries"]]
        write_zip(path, entries)
    elif target in ("zip", "legacy"):
        path.write_bytes(_mutate(fuzz_seeds[target], edits, cut))
    else:
        path.write_bytes(prefix + noise)
    try:
        wf = read_torch_checkpoint(path)
    except FormatError as err:
        assert err.code.startswith("HFC") and err.message
    else:
        assert isinstance(wf, WeightFile)
        for meta in wf.tensors.values():  # whatever was accepted must be in bounds
            storage = wf.storages[meta.storage_key]
            assert storage.data_offset + storage.record_nbytes <= path.stat().st_size


def test_reader_does_not_import_torch_or_unpickler() -> None:
    code = ("import sys, pickle; pickle.Unpickler = None; "
            "import hfconv.readers.torch_checkpoint; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
    readers = Path(__file__).resolve().parent.parent / "hfconv" / "readers"
    for module in ("torch_checkpoint.py", "unpickler.py"):
        source = (readers / module).read_text()
        assert "pickle.load" not in source and "import pickle\n" not in source, module
