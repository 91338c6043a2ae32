"""Helpers shared by the test modules (``tests/conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
LAYOUTS = [
    "llama-safetensors",
    "llama-safetensors-sharded",
    "llama-bin",
    "llama-bin-sharded",
    "llama-bin-oldnames",
    "llama-tied-bin",
    "llama-tied-safetensors",
    "llama-bf16-safetensors",
    "llama-legacy-bin",
]
"""Every fixture layout (see fixtures/make_fixtures.py)."""
CLI = [sys.executable, "-m", "hfconv"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``hfconv ARGS`` in a subprocess (``env`` added to this environment); never a traceback."""
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def copy_fixture(tmp_path: Path, name: str) -> Path:
    """A writable copy of fixture ``name`` at ``tmp_path / name``."""
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def save_big_endian(state: dict, path: Path) -> Path:
    """``torch.save(state)`` as a big-endian machine writes it: byteorder record ``big`` and
    every storage's elements byte-swapped (complex numbers half by half, as torch does).

    torch.save numbers storages "0", "1", ... in the order the pickle first meets them, which
    is the state dict's value order; torch.load of the result must give ``state`` back (the
    tests check it), which proves the file is what torch reads as big-endian.
    """
    import io
    import zipfile

    import numpy as np
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    units: dict[int, int] = {}
    for tensor in state.values():
        size = tensor.element_size()
        units.setdefault(tensor.untyped_storage().data_ptr(), size // 2 if tensor.is_complex() else size)
    unit_by_key = {str(i): unit for i, unit in enumerate(units.values())}
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            folder, _, member = info.filename.partition("/")
            if member == "byteorder":
                data = b"big"
            elif member.startswith("data/") and unit_by_key.get(member[5:], 1) > 1:
                unit = unit_by_key[member[5:]]
                data = np.frombuffer(data, dtype=np.uint8).reshape(-1, unit)[:, ::-1].tobytes()
            out.writestr(zipfile.ZipInfo(info.filename), data, compress_type=zipfile.ZIP_STORED)
    return path


def mixed_state() -> dict:
    """A state dict with every byte-order case: 1-, 2-, 4-, 8-byte and complex elements,
    a tied alias, a transposed view and slices with storage offsets."""
    import torch

    generator = torch.Generator().manual_seed(0)
    grid = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    embed = torch.randn(8, 4, generator=generator)
    return {
        "model.embed_tokens.weight": embed,
        "lm_head.weight": embed,
        "model.layers.0.mlp.up_proj.weight": torch.randn(5, 7, generator=generator).T,
        "model.layers.0.row": grid[2],
        "model.layers.0.block": grid[1:4, 2:5],
        "model.layers.0.bf16": torch.randn(3, 4, generator=generator).to(torch.bfloat16),
        "model.layers.0.f16": torch.randn(4, generator=generator).to(torch.float16),
        "model.layers.0.f64": torch.randn(3, generator=generator, dtype=torch.float64),
        "model.layers.0.positions": torch.arange(5),
        "model.layers.0.i32": torch.tensor([1, -2, 70000], dtype=torch.int32),
        "model.layers.0.mask": torch.tensor([True, False]),
        "model.layers.0.bytes": torch.arange(4, dtype=torch.uint8),
        "model.layers.0.c64": torch.randn(3, generator=generator, dtype=torch.complex64),
    }


QUANTIZED = FIXTURES / "quantized"
"""Tiny quantized folders, each written by its scheme's library (fixtures/make_quantized_fixtures.py)."""


def validate_many(folders: list[Path], *args: str) -> dict[str, list[dict]]:
    """Folder name -> findings of one ``hfconv validate --format json`` run over ``folders``."""
    proc = subprocess.run([sys.executable, "-m", "hfconv", "validate", *map(str, folders), "--format", "json", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    return {Path(r["path"]).name: r["findings"] for r in (data if isinstance(data, list) else [data])}


def copy_quantized(tmp: Path, fixture: str, name: str, change: Callable[[dict], None] | None = None,
                   edit_quant: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """A copy of ``QUANTIZED / fixture`` at ``tmp / name``: ``change`` edits its tensors (read and
    written back with safetensors), ``edit_quant`` its config's quantization_config."""
    from safetensors.torch import load_file, save_file

    out = tmp / name
    shutil.copytree(QUANTIZED / fixture, out)
    if change is not None:
        tensors = load_file(out / "model.safetensors")
        change(tensors)
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    if edit_quant is not None:
        config = json.loads((out / "config.json").read_text())
        edit_quant(config.setdefault("quantization_config", {}))
        (out / "config.json").write_text(json.dumps(config))
    return out


def signal_while(process: subprocess.Popen, signum: int, condition: Callable[[], bool]) -> bool:
    """Send ``signum`` to ``process`` while ``condition()`` holds, checked with the process stopped
    (SIGSTOP, every thread seen stopped, check, signal, SIGCONT): what the test sees is where the
    process is when the signal comes, however long this process was descheduled before. False
    (nothing sent, the process resumed) when it had gone past that point; start it again."""
    import signal
    import time

    os.kill(process.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 30
        if not os.path.isdir(f"/proc/{os.getpid()}/task"):  # no /proc: a generous wait instead
            time.sleep(0.2)
            deadline = 0
        while time.monotonic() < deadline:
            try:
                states = [Path(f"/proc/{process.pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()[0]
                          for task in os.listdir(f"/proc/{process.pid}/task")]
            except (OSError, IndexError):  # no /proc (or a thread gone meanwhile): look again
                states = []
            if states and all(state in "TtZX" for state in states):
                break
            time.sleep(0.001 if states else 0.05)
        if not condition():
            return False
        process.send_signal(signum)
        return True
    finally:
        os.kill(process.pid, signal.SIGCONT)
