"""Zip parser differentials in torch checkpoints (issue 16): files torch's reader (miniz, via
``torch._C.PyTorchFileReader``) reads one way and another reader (Python's zipfile, a streaming
unzip, hfconv before this fix) another way.

Every hostile file is built from a real ``torch.save`` output with struct/zipfile; each test also
asserts what torch's own reader does with it (never ``torch.load(weights_only=False)``), and
runs ``hfconv validate`` in a subprocess (several folders per run: one JSON array).
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES

ENTRY = "from hfconv.cli import run; run()"
PAYLOAD = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
"""A protocol-2 data.pkl that runs ``os.system('true')`` under torch.load(weights_only=False)."""


# --------------------------------------------------------------------------------------------
# building files
# --------------------------------------------------------------------------------------------

def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def with_data_pkl(archive: bytes, pkl: bytes) -> bytes:
    """``archive`` (a torch.save output) rewritten by zipfile with another data.pkl."""
    zin = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, pkl if info.filename.endswith("/data.pkl") else zin.read(info.filename))
    return out.getvalue()


def _structure(data: bytes) -> dict:
    """Where the end records and the central directory of a comment-less zip are."""
    eocd = len(data) - 22
    assert data[eocd:eocd + 4] == b"PK\x05\x06"
    n, cd_size, cd_offset = struct.unpack_from("<HII", data, eocd + 10)
    info = {"eocd": eocd, "n": n, "cd_size": cd_size, "cd_offset": cd_offset, "loc": None, "z64": None}
    if data[eocd - 20:eocd - 16] == b"PK\x06\x07":
        info["loc"] = eocd - 20
        info["z64"] = struct.unpack_from("<Q", data, eocd - 12)[0]
        info["n"], info["cd_size"], info["cd_offset"] = struct.unpack_from("<QQQ", data, info["z64"] + 32)
    return info


def shift_offsets(data: bytes, delta: int, at: int = 0) -> bytearray:
    """Every absolute offset >= ``at`` in the zip's directory and end records, plus ``delta``."""
    info = _structure(data)
    out = bytearray(data)

    def bump(fmt: str, where: int, sentinel: int | None = None) -> None:
        value = struct.unpack_from(fmt, out, where)[0]
        if value != sentinel and value >= at:
            struct.pack_into(fmt, out, where, value + delta)

    pos = info["cd_offset"]
    for _ in range(info["n"]):
        assert out[pos:pos + 4] == b"PK\x01\x02"
        bump("<I", pos + 42, 0xFFFFFFFF)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", out, pos + 28)
        pos += 46 + name_len + extra_len + comment_len
    bump("<I", info["eocd"] + 16, 0xFFFFFFFF)
    if info["z64"] is not None:
        bump("<Q", info["z64"] + 48)
        bump("<Q", info["loc"] + 8)
    return out


def insert_bytes(data: bytes, pos: int, blob: bytes) -> bytes:
    """``blob`` spliced into the zip at ``pos``, every offset after it moved: the directory still
    describes the same entries, and ``blob`` belongs to none of them."""
    out = shift_offsets(data, len(blob), at=pos)
    return bytes(out[:pos]) + blob + bytes(out[pos:])


def hide_in_comment(visible: bytes, hidden: bytes, hidden_comment_len: int = 1) -> bytes:
    """``visible``'s end record gets a comment holding the whole ``hidden`` archive (its offsets
    made absolute). The hidden end record declares ``hidden_comment_len`` comment bytes that are
    not there: a reader that checks comment lengths skips it, miniz (the last end record) does not."""
    hidden = bytes(shift_offsets(hidden, len(visible)))
    hidden = hidden[:-2] + struct.pack("<H", hidden_comment_len)
    assert len(hidden) <= 0xFFFF
    return visible[:-2] + struct.pack("<H", len(hidden)) + hidden


def data_pkl(archive: bytes) -> bytes:
    zin = zipfile.ZipFile(io.BytesIO(archive))
    return zin.read(next(n for n in zin.namelist() if n.endswith("/data.pkl")))


def local_header(name: str, content: bytes) -> bytes:
    raw = name.encode()
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(content), len(content),
                       len(content), len(raw), 0) + raw + content


def entry_end(data: bytes, index: int) -> int:
    """Where entry ``index`` (in file order) ends: local header, data, data descriptor."""
    infos = sorted(zipfile.ZipFile(io.BytesIO(data)).infolist(), key=lambda i: i.header_offset)
    if index + 1 < len(infos):
        return infos[index + 1].header_offset
    return _structure(data)["cd_offset"]


# --------------------------------------------------------------------------------------------
# what torch's reader and hfconv say
# --------------------------------------------------------------------------------------------

def torch_record(path: Path, name: str = "data.pkl") -> bytes:
    return torch._C.PyTorchFileReader(str(path)).get_record(name)


def validate_all(folders: list[Path]) -> list[dict]:
    """``hfconv validate --format json`` of every folder, in one subprocess under a 2 GiB
    address-space cap and a timeout."""
    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    proc = subprocess.run([sys.executable, "-c", ENTRY, "validate", *map(str, folders), "--format", "json"],
                          capture_output=True, text=True, timeout=120, preexec_fn=limits,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert proc.returncode == (1 if any(not r["ok"] for r in reports) else 0), proc.returncode
    return reports


def model_with(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = tmp_path / name
    shutil.copytree(FIXTURES / "llama-bin", folder)
    for file_name, content in files.items():
        (folder / file_name).write_bytes(content)
    return folder


def errors(report: dict, file_name: str) -> list[dict]:
    return [f for f in report["findings"] if f["severity"] == "error" and f["file"] == file_name]


@pytest.fixture(scope="module")
def real() -> bytes:
    """The fixture's pytorch_model.bin, as torch.save wrote it."""
    return (FIXTURES / "llama-bin" / "pytorch_model.bin").read_bytes()


@pytest.fixture(scope="module")
def small() -> bytes:
    return torch_bytes({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)})


# --------------------------------------------------------------------------------------------
# a second archive in the end record's comment
# --------------------------------------------------------------------------------------------

def test_second_archive_in_comment(tmp_path: Path, real: bytes, small: bytes) -> None:
    """torch reads the archive hidden in the comment; hfconv used to read the visible one and pass."""
    payload = with_data_pkl(torch_bytes({}), PAYLOAD)
    other_values = torch_bytes({"w": torch.zeros(2, 3)})
    cases = {
        "payload": hide_in_comment(real, payload),
        "payload-comment-ffff": hide_in_comment(real, payload, hidden_comment_len=0xFFFF),
        "other-values": hide_in_comment(small, other_values),
        "trailing-data": real + b"\x00" * 100,  # miniz ignores bytes after the last end record
    }
    folders = []
    for name, data in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        folders.append(model_with(tmp_path, name, {"pytorch_model.bin": data}))
        if name == "trailing-data":
            assert torch_record(path) == data_pkl(real)
            continue
        if name.startswith("payload"):
            # torch (and Python's zipfile) read the archive in the comment; hfconv used to read the outer one
            assert torch_record(path) == PAYLOAD != data_pkl(real)
        else:  # same names and shapes, other values: what convert "verified" is not what loads
            assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(2, 3))
            assert torch.equal(torch.load(io.BytesIO(small), weights_only=True)["w"], torch.arange(6.0).reshape(2, 3))
    for report in validate_all(folders):
        found = errors(report, "pytorch_model.bin")
        assert [f["code"] for f in found] == ["HFC213"], (report["path"], report["findings"])


def test_second_archive_in_training_args_comment(tmp_path: Path) -> None:
    """The same trick hides a payload from the leftover scan of training_args.bin / optimizer.pt."""
    payload = with_data_pkl(torch_bytes({}), PAYLOAD)
    folders = []
    for leftover, harmless in (("training_args.bin", {"learning_rate": 1e-4}), ("optimizer.pt", {"state": {}}),
                               ("rng_state.pth", {"python": 3})):
        data = hide_in_comment(torch_bytes(harmless), payload)
        path = tmp_path / leftover
        path.write_bytes(data)
        assert torch_record(path) == PAYLOAD  # torch.load would unpickle the payload
        folders.append(model_with(tmp_path, leftover.split(".")[0], {leftover: data}))
    for report, folder in zip(validate_all(folders), folders):
        leftover = next(n for n in ("training_args.bin", "optimizer.pt", "rng_state.pth") if (folder / n).exists())
        found = errors(report, leftover)
        assert [f["code"] for f in found] == ["HFC011"], report["findings"]
        assert not report["ok"]


# --------------------------------------------------------------------------------------------
# bytes no central-directory entry covers
# --------------------------------------------------------------------------------------------

def test_orphan_local_headers(tmp_path: Path, real: bytes) -> None:
    """An `archive/data.pkl` local header in no directory entry: a streaming unzip reads it first;
    torch reads the directory. Before the first entry, between entries, before the directory."""
    orphan = local_header("archive/data.pkl", PAYLOAD)
    cd_offset = _structure(real)["cd_offset"]
    cases = {
        "orphan-first": insert_bytes(real, 0, orphan),
        "orphan-between": insert_bytes(real, entry_end(real, 0), orphan),
        "orphan-before-directory": insert_bytes(real, cd_offset, orphan),
        "junk-between": insert_bytes(real, entry_end(real, 2), b"\x00" * 64),
    }
    folders = []
    for name, data in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        # torch reads the real archive: the orphan is invisible to it
        assert torch_record(path) == data_pkl(real)
        if name == "orphan-first":  # what a streaming reader meets first
            assert data.startswith(b"PK\x03\x04") and data[30:46] == b"archive/data.pkl"
        folders.append(model_with(tmp_path, name, {"pytorch_model.bin": data}))
    for report in validate_all(folders):
        found = errors(report, "pytorch_model.bin")
        assert [f["code"] for f in found] == ["HFC213"], (report["path"], report["findings"])
        assert "no central-directory entry" in found[0]["message"]


# --------------------------------------------------------------------------------------------
# whatever torch refuses, validate refuses: the zip64 locator's disk count
# --------------------------------------------------------------------------------------------

def test_zip64_locator_disk_count(tmp_path: Path, real: bytes) -> None:
    """torch refuses a zip64 locator that does not say exactly 1 disk (0 included)."""
    info = _structure(real)
    folders = []
    for disks in (0, 2, 0xFFFFFFFF):
        data = bytearray(real)
        struct.pack_into("<I", data, info["loc"] + 16, disks)
        path = tmp_path / f"disks-{disks}.bin"
        path.write_bytes(data)
        with pytest.raises(RuntimeError, match="multidisk"):
            torch._C.PyTorchFileReader(str(path))
        folders.append(model_with(tmp_path, f"disks-{disks}", {"pytorch_model.bin": bytes(data)}))
    for report in validate_all(folders):
        found = errors(report, "pytorch_model.bin")
        assert [f["code"] for f in found] == ["HFC204"] and "disk" in found[0]["message"], report["findings"]


# --------------------------------------------------------------------------------------------
# no false alarm on what torch.save writes
# --------------------------------------------------------------------------------------------

def test_torch_save_outputs_pass(tmp_path: Path) -> None:
    """torch.save of several sizes (always with zip64 end records and data descriptors; one with
    a storage over 64 KiB, one with 1,500 entries, one empty) reads cleanly, and the reader finds
    torch's end record."""
    from hfconv.readers.torch_checkpoint import read_torch_checkpoint

    states = {
        "empty": {},
        "one": {"w": torch.ones(3)},
        "big": {"w": torch.randn(300, 300)},
        "many": {f"t{i}": torch.full((2,), float(i)) for i in range(1500)},
        "mixed": {"a": torch.ones(2, dtype=torch.bfloat16), "b": torch.arange(5), "c": torch.zeros(0)},
    }
    for name, state in states.items():
        path = tmp_path / f"{name}.bin"
        torch.save(state, path)
        info = _structure(path.read_bytes())
        assert info["z64"] is not None  # torch writes zip64 end records even for tiny files
        weight_file = read_torch_checkpoint(path)
        assert list(weight_file.tensors) == list(torch.load(path, weights_only=True))


def test_comment_lengths_follow_miniz(tmp_path: Path, small: bytes) -> None:
    """miniz cannot find the end record of a small file behind some comment lengths (its backward
    search stops where a step would pass offset 0): torch refuses those files, so hfconv does; a
    comment torch reads past stays fine."""
    refused = []
    for n in range(0, 16000, 97):
        data = small[:-2] + struct.pack("<H", n) + b"c" * n
        path = tmp_path / f"comment-{n}.bin"
        path.write_bytes(data)
        try:
            torch._C.PyTorchFileReader(str(path))
        except RuntimeError as exc:
            assert "central directory" in str(exc)
            refused.append(n)
    assert refused and len(refused) < 165  # both kinds occur
    accepted_n = next(n for n in range(0, 16000, 97) if n not in refused and n)
    folders = []
    for n in (refused[0], refused[-1], accepted_n):
        folders.append(model_with(tmp_path, f"comment-{n}", {"pytorch_model.bin": (tmp_path / f"comment-{n}.bin")
                                                             .read_bytes()}))
    for report, folder in zip(validate_all(folders), folders):
        codes = [f["code"] for f in errors(report, "pytorch_model.bin")]
        if folder.name == f"comment-{accepted_n}":
            assert "HFC204" not in codes and "HFC213" not in codes, report["findings"]
        else:
            assert "HFC204" in codes, (folder.name, report["findings"])
