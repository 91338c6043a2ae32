"""Helpers shared by the test modules (``tests/conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import dis
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from hfconv import interrupts
from hfconv.cli import _common

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


# --- a signal at every bytecode in turn (tests/test_interrupted_*.py) ----------------------------

_NOP = dis.opmap["NOP"]


class SignalAt:
    """A trace function that delivers SIGTERM (the CLI's handler) at the ``at``-th counted bytecode.

    ``counts(frame)`` says which frames' bytecodes count (and are traced at all)."""

    def __init__(self, at: int, counts: Callable[[FrameType], bool], distinct: bool = False,
                 traced: Callable[[FrameType], bool] | None = None) -> None:
        self.at, self.counts = at, counts
        self.traced = traced or counts
        """Which frames are traced at all (their call event); ``counts`` then picks the bytecodes."""
        self.count = 0
        self.fired = False
        self.seen: set[tuple[int, int]] | None = set() if distinct else None
        """With ``distinct``, each bytecode counts once (the turns of a loop repeat the same places)."""

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        if not self.traced(frame):
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        # Not at a NOP (the `try:` line): no handler runs there, and the compiler leaves NOPs out
        # of the exception table, so an exception injected there would skip every `except`.
        if event == "opcode" and frame.f_code.co_code[frame.f_lasti] != _NOP and self.counts(frame):
            if self.seen is not None:
                place = (id(frame.f_code), frame.f_lasti)
                if place in self.seen:
                    return self
                self.seen.add(place)
            self.count += 1
            if self.count == self.at:
                self.fired = True
                _common.on_signal(signal.SIGTERM, frame)  # raises, or defers inside a section
        return self


def interrupt_at(at: int, call: Callable[[], object], counts: Callable[[FrameType], bool], distinct: bool = False,
                 traced: Callable[[FrameType], bool] | None = None) -> tuple[bool, BaseException | None]:
    """Run ``call`` with the signal at counted bytecode ``at``: (whether it came, what was raised)."""
    handlers = {signum: signal.getsignal(signum) for signum in _common.EXIT_FOR_SIGNAL}
    tracer = SignalAt(at, counts, distinct, traced)
    raised: BaseException | None = None
    sys.settrace(tracer)
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - what the signal turned into is the point
        raised = exc
    finally:
        sys.settrace(None)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        _common.received_signals.clear()
    assert interrupts._depth == 0 and not interrupts._pending  # every section was left
    return tracer.fired, raised


def walk_interrupts(run: Callable[[int], tuple[bool, BaseException | None]]) -> int:
    """``run(at)`` for at = 1, 2, ... until the signal no longer comes; returns how many places
    were walked. Each run sets its case up, interrupts it at the ``at``-th place
    (:func:`interrupt_at`) and checks what it left; each interrupted run must have raised the
    interrupt, and the run the signal no longer reached nothing."""
    at = 1
    while True:
        fired, raised = run(at)
        if not fired:
            assert raised is None, f"{raised!r} in the run the signal did not reach"
            return at - 1
        assert isinstance(raised, KeyboardInterrupt), f"bytecode {at}: {raised!r} instead of the interrupt"
        at += 1


# --- a saved folder's model.safetensors and config.json ------------------------------------------

def stored_state(folder: Path) -> dict[str, Any]:
    """Every tensor of ``folder``'s model.safetensors, by name (torch tensors)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def stored_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of ``folder``'s model.safetensors, by name (no tensor read)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}


def config_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())
