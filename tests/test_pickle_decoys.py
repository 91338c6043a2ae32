"""Decoys the pickle scan used to stop at, and pickles built to burn time or memory (issue 16).

Every case is a real model folder (the llama-bin fixture) with one hostile file added, run
through ``hfconv validate`` in a subprocess under a 2 GiB address-space cap and a timeout. Where
a test claims the real unpickler would reach a global, an Unpickler whose ``find_class`` only
records the name (and refuses to import anything) shows it; nothing is ever loaded.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import resource
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES

ENTRY = "from hfconv.cli import run; run()"
P2 = b"\x80\x02"
CALL_SYSTEM = b"cposix\nsystem\n(S'true'\ntR"
"""posix.system('true'), protocol 0 syntax (valid inside any protocol)."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

class _Seen(Exception):
    pass


class RecordingUnpickler(pickle.Unpickler):
    """The real (C) unpickler, stopped at the first global it would import: proves how far
    ``pickle.load`` gets past a decoy without importing or calling anything."""

    def find_class(self, module: str, name: str):
        raise _Seen(f"{module}.{name}")

    def persistent_load(self, pid):
        return None


def first_global_unpickled(pkl: bytes) -> str | None:
    try:
        RecordingUnpickler(io.BytesIO(pkl)).load()
    except _Seen as seen:
        return str(seen)
    except Exception:  # noqa: BLE001 - the unpickler failed before any global
        return None
    return None


def genops_stops_before_end(pkl: bytes) -> bool:
    """pickletools (what hfconv's scan used) stops at the decoy."""
    try:
        for _ in pickletools.genops(pkl):
            pass
    except ValueError:
        return True
    return False


def torch_zip(pkl: bytes, base: object = None) -> bytes:
    """A torch.save archive whose data.pkl is ``pkl`` (zipfile rewrites it: no gaps, no comment)."""
    buf = io.BytesIO()
    torch.save({} if base is None else base, buf)
    zin = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, pkl if info.filename.endswith("/data.pkl") else zin.read(info.filename))
    return out.getvalue()


def folder_with(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = tmp_path / name
    shutil.copytree(FIXTURES / "llama-bin", folder)
    for file_name, content in files.items():
        (folder / file_name).write_bytes(content)
    return folder


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def validate(*folders: Path, timeout: float = 60) -> tuple[list[dict], float]:
    """``hfconv validate --format json`` under a 2 GiB address-space cap: (reports, wall seconds)."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", ENTRY, "validate", *map(str, folders), "--format", "json"],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=_limits,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    wall = time.monotonic() - started
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert proc.returncode == (1 if any(not r["ok"] for r in reports) else 0)
    return reports, wall


def errors(report: dict, file_name: str) -> list[dict]:
    return [f for f in report["findings"] if f["severity"] == "error" and f["file"] == file_name]


# a Trainer-like prefix: a dict with a few values, then the decoy, then the payload
PREFIX = P2 + b"}q\x00(X\x02\x00\x00\x00lrq\x01G?\x1a6\xe2\xeb\x1cC-X\x05\x00\x00\x00stepsq\x02K\nu0"
DECOYS = {
    "hex-int": b"I0x10\n0",
    "octal-long": b"L0o7L\n0",
    "binary-int": b"I-0b101\n0",
    "padding-17MiB": b"B" + struct.pack("<I", 17 << 20) + b"\x00" * (17 << 20) + b"0",
}


def decoy_pickle(decoy: bytes) -> bytes:
    return PREFIX + decoy + CALL_SYSTEM + b"."


# --------------------------------------------------------------------------------------------
# decoys in training leftovers
# --------------------------------------------------------------------------------------------

def test_leftover_decoys_are_walked_past(tmp_path: Path) -> None:
    """optimizer.pt / training_args.bin / rng_state.pth with posix.system behind a decoy: the
    old scan stopped at the decoy (warning only, exit 0); the walk goes on and names the global."""
    leftovers = ("optimizer.pt", "training_args.bin", "rng_state.pth")
    folders = []
    for index, (name, decoy) in enumerate(DECOYS.items()):
        pkl = decoy_pickle(decoy)
        assert first_global_unpickled(pkl) == "posix.system"  # the real unpickler gets past the decoy
        if name != "padding-17MiB":
            assert genops_stops_before_end(pkl)
        leftover = leftovers[index % len(leftovers)]
        content = torch_zip(pkl) if index % 2 == 0 else pkl  # torch zip, or a bare pickle stream
        folders.append(folder_with(tmp_path, name, {leftover: content}))
    reports, _ = validate(*folders)
    for report, folder in zip(reports, folders):
        leftover = next(n for n in leftovers if (folder / n).exists())
        found = errors(report, leftover)
        assert [f["code"] for f in found] == ["HFC011"], (folder.name, report["findings"])
        assert "posix.system" in found[0]["message"], found[0]["message"]


def test_leftover_walk_that_cannot_finish_is_an_error(tmp_path: Path) -> None:
    """A leftover whose pickle cannot be walked to its end (padding past the opcode cap, an
    opcode no unpickler knows, a pickle cut short) is an error, never 'only Trainer's globals'."""
    cases = {
        "past-the-cap": PREFIX + b"N0" * 2_100_000 + CALL_SYSTEM + b".",
        "unknown-opcode": PREFIX + b"\xff" + CALL_SYSTEM + b".",
        "no-stop": PREFIX + b"N",
    }
    folders = [folder_with(tmp_path, name, {"training_args.bin": torch_zip(pkl)}) for name, pkl in cases.items()]
    reports, _ = validate(*folders)
    for report, folder in zip(reports, folders):
        found = errors(report, "training_args.bin")
        assert [f["code"] for f in found] == ["HFC011"], (folder.name, report["findings"])
        assert "walk stopped" in found[0]["message"]


def test_real_training_leftovers_stay_warnings(tmp_path: Path) -> None:
    """No false alarm: what torch.save writes for an optimizer and an rng state."""
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    folder = tmp_path / "trained"
    shutil.copytree(FIXTURES / "llama-bin", folder)
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save({"python": 1, "cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    torch.save(optimizer.state_dict(), folder / "scheduler.pt", _use_new_zipfile_serialization=False)
    (report,), _ = validate(folder)
    leftovers = [f for f in report["findings"] if f["code"] == "HFC011"]
    assert len(leftovers) == 3 and all(f["severity"] == "warning" for f in leftovers), leftovers
    assert report["ok"]


# --------------------------------------------------------------------------------------------
# decoys in weight files: the global behind the first refused thing is named
# --------------------------------------------------------------------------------------------

def test_weight_file_decoys_name_the_global(tmp_path: Path) -> None:
    real = (FIXTURES / "llama-bin" / "pytorch_model.bin").read_bytes()
    cases = {
        # a dtype hfconv does not support (HFC211) in front of the payload
        "dtype-decoy": torch_zip(P2 + b"ctorch\ncomplex128\n0" + CALL_SYSTEM + b".", real),
        # an opcode torch.save never writes (HFC203) in front of the payload
        "opcode-decoy": torch_zip(P2 + b"I0x10\n0" + CALL_SYSTEM + b".", real),
        # a bare pickle of protocol 4 with a decoy before a STACK_GLOBAL
        "stack-global": b"\x80\x04" + b"L0o7L\n0" + b"\x8c\x05posix\x8c\x06system\x93" + b"\x8c\x04true\x85R.",
    }
    folders = [folder_with(tmp_path, name, {"pytorch_model.bin": data}) for name, data in cases.items()]
    # code/ beside data.pkl without constants.pkl: torch.load unpickles data.pkl (not TorchScript)
    with_code = tmp_path / "with-code.bin"
    zin = zipfile.ZipFile(io.BytesIO(torch_zip(P2 + CALL_SYSTEM + b".", real)))
    with zipfile.ZipFile(with_code, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr(zin.namelist()[0].split("/")[0] + "/code/__torch__.py", "")
    reader = torch._C.PyTorchFileReader(str(with_code))
    assert not reader.has_record("constants.pkl") and reader.has_record("data.pkl")
    folders.append(folder_with(tmp_path, "code-decoy", {"pytorch_model.bin": with_code.read_bytes()}))
    reports, _ = validate(*folders)
    for report, folder in zip(reports, folders):
        found = errors(report, "pytorch_model.bin")
        assert [f["code"] for f in found] == ["HFC201"], (folder.name, report["findings"])
        assert found[0]["tensor"] == "posix.system", found[0]


def test_protocol0_text_padding_names_the_global(tmp_path: Path) -> None:
    """A protocol-0 pickle is printable text: 1.1 MB of padding before posix.system used to be
    'a text file'. A real text file named .bin stays HFC202."""
    cases = {
        "pad-none-pop": b"N0" * 550_000 + CALL_SYSTEM + b".",
        "pad-strings": (b"S'" + b"p" * 60_000 + b"'\n0") * 20 + CALL_SYSTEM + b".",
        "pad-unicode-list": b"(" + (b"V" + b"u" * 60_000 + b"\n") * 20 + b"l0" + CALL_SYSTEM + b".",
        "pad-then-garbage": (b"S'" + b"g" * 60_000 + b"'\n0") * 20 + CALL_SYSTEM + b"\nthe rest is not a pickle",
    }
    for data in cases.values():
        assert first_global_unpickled(data) == "posix.system"
    folders = [folder_with(tmp_path, name, {"pytorch_model.bin": data}) for name, data in cases.items()]
    text = "config\nvalue\nThis is a README that someone saved as pytorch_model.bin. (1) see docs.\n" * 20000
    folders.append(folder_with(tmp_path, "plain-text", {"pytorch_model.bin": text.encode()}))
    reports, _ = validate(*folders)
    for report, folder in zip(reports, folders):
        found = errors(report, "pytorch_model.bin")
        if folder.name == "plain-text":
            assert [f["code"] for f in found] == ["HFC202"], found
            continue
        assert [f["code"] for f in found] == ["HFC201"], (folder.name, report["findings"])
        assert "posix.system" in found[0]["message"]


# --------------------------------------------------------------------------------------------
# bounded time and memory: pickles built to burn the budget
# --------------------------------------------------------------------------------------------

def _burn_cases() -> dict[str, tuple[str, bytes]]:
    real = (FIXTURES / "llama-bin" / "pytorch_model.bin").read_bytes()
    keys = b"".join(b"X" + struct.pack("<I", len(k)) + k + b"N" for k in (str(i).encode() for i in range(100_000)))
    return {
        # 20M cheap opcodes (APPEND of the memoised list to itself): 57 s in the old reader
        "opcode-burn": ("pytorch_model.bin", torch_zip(P2 + b"]q\x00" + b"h\x00a" * 10_000_000 + b".", real)),
        # BUILD of a 100,000-key dict, again and again: quadratic work per opcode
        "build-burn": ("pytorch_model.bin", torch_zip(P2 + b"}q\x00(" + keys + b"u" + b"h\x00b" * 200_000 + b".",
                                                      real)),
        # a leftover walked to its end: 20M opcodes of padding
        "leftover-burn": ("optimizer.pt", torch_zip(P2 + b"]q\x00" + b"h\x00a" * 10_000_000 + b".")),
    }


@pytest.mark.parametrize("case", list(_burn_cases()))
def test_burn_pickles_are_bounded(tmp_path: Path, case: str) -> None:
    """Under 10 s and a 2 GiB address space, with an error that names the cap hit."""
    file_name, data = _burn_cases()[case]
    folder = folder_with(tmp_path, case, {file_name: data})
    (report,), wall = validate(folder, timeout=60)
    assert wall < 10, f"{case}: {wall:.1f} s"
    found = errors(report, file_name)
    assert found, report["findings"]
    assert "limit" in found[0]["message"] or "walk stopped: more than" in found[0]["message"], found[0]["message"]
