"""Everyday load-test (issue 15): a progress bar that says its phase and ends before the
forward pass, accelerate's warning in the report instead of on stderr, one forward duration,
an offload folder load-test made removed again, validate's finding style without doubled file
names, --select/--ignore/--strict with a gate on the errors that affect loading, the device
map wording (the "" key, zero limits, a repeated --max-memory, a missing map file, balanced
without GPUs), shared dtype names and escaped names.

Everything runs through the CLI in a subprocess on the committed fixtures (written by torch,
safetensors and sentencepiece); the terminal is a real pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from helpers import copy_fixture

ROOT = Path(__file__).resolve().parent.parent
SAFETENSORS = ROOT / "fixtures" / "llama-safetensors"


def hfconv(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def no_traceback(run: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]


def test_forward_phases_on_a_terminal_warning_captured_one_duration_offload_removed(tmp_path):
    """On a terminal the bar is labelled with its phase and ends before the forward pass;
    accelerate's meta-device warning goes into the report; the forward pass has one duration;
    an --offload-folder load-test created is gone afterwards."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    offload = tmp_path / "scratch" / "offload"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a size
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    run = subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", "load-test", str(SAFETENSORS),
                          "--forward", "--max-memory", "cpu=50KB", "--offload-folder", str(offload)],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=slave, text=False, timeout=300, env=env)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    stdout = run.stdout.decode()
    terminal = b"".join(chunks).decode(errors="replace")
    assert run.returncode == 0, stdout + terminal
    assert "Traceback" not in terminal
    assert "load-test: importing torch" in terminal and "load-test: loading" in terminal, terminal
    assert "load-test: forward pass" in terminal, terminal
    after_forward = terminal.split("load-test: forward pass", 1)[1]
    assert "%|" not in after_forward and "B/s" not in after_forward, after_forward  # the bar ended before
    assert "Some parameters are on the meta device" not in terminal, terminal
    assert "HFC746" in stdout and "Some parameters are on the meta device" in stdout, stdout
    forward_line = next(line for line in stdout.splitlines() if line.startswith("  forward "))
    assert not re.search(r"\d\.\d\d s", forward_line), forward_line  # one duration: the time line's
    assert re.search(r"forward \d+\.\d\d s", stdout), stdout
    assert not (tmp_path / "scratch").exists(), list(tmp_path.rglob("*"))


def test_errors_that_do_not_affect_loading_select_ignore_strict(tmp_path):
    """A bad top_p in generation_config.json: loaded anyway (HFC744 warning, exit 0) unless
    --strict (HFC730 in validate's style, the file named once); --ignore drops the code;
    --select takes only known codes; --dtype fp16 is float16."""
    folder = copy_fixture(tmp_path, "llama-safetensors")
    generation = json.loads((folder / "generation_config.json").read_text())
    generation["top_p"] = 1.5
    (folder / "generation_config.json").write_text(json.dumps(generation))

    run = hfconv("load-test", str(folder), "--dtype", "fp16", cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning HFC744 loaded despite 1 validation error" in run.stdout, run.stdout
    assert "plan      auto, dtype float16" in run.stdout, run.stdout

    run = hfconv("load-test", str(folder), "--strict", cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "error   HFC730 refused to load" in run.stdout, run.stdout
    assert "generation_config.json: generation_config.json:" not in run.stdout, run.stdout

    run = hfconv("load-test", str(folder), "--strict", "--ignore", "HFC405", "--select", "HFC4,HFC1", cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "HFC744" not in run.stdout and "HFC405" not in run.stdout, run.stdout

    run = hfconv("load-test", str(folder), "--select", "HFC99", cwd=tmp_path)
    assert run.returncode == 2 and "not a finding code" in run.stderr, run.stderr


def test_broken_weights_refused_in_validate_style(tmp_path):
    """An error in the weights still refuses the folder, named once, in validate's style."""
    folder = copy_fixture(tmp_path, "llama-safetensors")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])
    run = hfconv("load-test", str(folder), cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "error   HFC730 refused to load: validation found 1 error that affect" in run.stdout, run.stdout
    assert "model.safetensors: model.safetensors:" not in run.stdout, run.stdout
    assert not re.search(r"HFC\d+ error:", run.stdout), run.stdout


def test_device_map_wording(tmp_path):
    """The "" key beside others is the rest of the model; zero limits are listed, not `none`;
    a repeated --max-memory and a missing map file are usage errors that say so; balanced
    without a GPU says it used the cpu; a folder name with a newline forges no line."""
    folder = copy_fixture(tmp_path, "llama-safetensors").rename(tmp_path / "m\nload-test forged: OK")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"model.embed_tokens": "cpu", "": "cpu"}))
    run = hfconv("load-test", str(folder), "--device-map", str(mapping), cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "(the rest)" in run.stdout and "(whole model)" not in run.stdout, run.stdout
    assert not any(line.startswith("load-test forged") for line in run.stdout.splitlines()), run.stdout

    run = hfconv("load-test", str(SAFETENSORS), "--max-memory", "cpu=0", "--max-memory", "disk=0", cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "limits: none" not in run.stdout and "cpu 0 B, disk 0 B" in run.stdout, run.stdout

    run = hfconv("load-test", str(SAFETENSORS), "--max-memory", "cpu=1GB", "--max-memory", "cpu=2GB", cwd=tmp_path)
    assert run.returncode == 2 and "cpu is given twice" in run.stderr, run.stderr

    run = hfconv("load-test", str(SAFETENSORS), "--device-map", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert run.returncode == 2 and "not found" in run.stderr, run.stderr

    run = hfconv("load-test", str(SAFETENSORS), "--device-map", "balanced", cwd=tmp_path)
    no_traceback(run)
    if "cuda" not in run.stdout:
        assert run.returncode == 0, run.stdout + run.stderr
        assert "HFC745" in run.stdout and "puts it on the cpu" in run.stdout, run.stdout
