"""load-test as a CI gate (issue 17 points 2 and 3): a flipped bit in a ``.bin`` storage fails
its recorded CRC-32 (HFC901), and a load of nothing (every tensor on meta) is not a pass
(HFC743). Through the console script in a subprocess, on a folder transformers wrote."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent


def hfconv(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def folder(transformers, tmp_path_factory) -> Path:
    """A tiny LlamaForCausalLM: save_pretrained's config files, pytorch_model.bin by torch.save
    (as transformers 4.x wrote it), with a tied alias and a slice sharing storages."""
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("load") / "model"
    model.save_pretrained(path)
    for weights in path.glob("*.safetensors"):
        weights.unlink()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, path / "pytorch_model.bin")
    return path


def flip_bit(path: Path, member_suffix: str, at: int) -> None:
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + at] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_bit_fails_load_test(folder, tmp_path):
    src = tmp_path / "model"
    shutil.copytree(folder, src)
    flip_bit(src / "pytorch_model.bin", "/data/5", at=7)
    run = hfconv("load-test", str(src), "--quiet", "--format", "json", cwd=tmp_path)
    assert "Traceback" not in run.stderr
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads(run.stdout)
    corrupt = [f for f in report["findings"] if f["code"] == "HFC901"]
    assert len(corrupt) == 1 and corrupt[0]["file"] == "pytorch_model.bin", report["findings"]
    assert "storage data/5" in corrupt[0]["message"] and corrupt[0]["tensor"]
    assert "FAILED" in run.stderr


def test_intact_folder_loads(folder, tmp_path):
    run = hfconv("load-test", str(folder), "--quiet", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "OK, 21 tensors" in run.stdout.splitlines()[0]


def test_nothing_loaded_is_not_a_pass(folder, tmp_path):
    device_map = tmp_path / "map.json"
    device_map.write_text(json.dumps({"": "meta"}))
    run = hfconv("load-test", str(folder), "--quiet", "--device-map", str(device_map), cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.splitlines()[0].endswith("FAILED (1 error)"), run.stdout
    assert "error   HFC743 nothing was loaded: the device map puts all 21 tensors on meta" in run.stdout
