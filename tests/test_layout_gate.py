"""Layout verdicts a CI gate can trust (issue 17 point 5, issue 16 file-system cases), through the CLI.

* no config.json: from_pretrained cannot build the model, so validate fails (HFC009 error), except
  in a PEFT adapter folder, which has adapter_config.json instead and gets no config finding;
* two files a loader reads whose names differ only in case: on a case-insensitive file system one
  replaces the other, so the checked file is not the one loaded there (HFC017 warning naming both).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from helpers import copy_fixture


def validate_json(folder: Path, *args: str) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, "-c", "from hfconv.cli import run; run()", "validate", str(folder), "--format", "json", *args],
        capture_output=True, text=True, timeout=120, cwd=folder.parent,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def codes(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in report["findings"]:
        out.setdefault(f["code"], []).append(f)
    return out


@pytest.mark.parametrize("layout", ["llama-safetensors", "llama-bin-sharded"])
def test_missing_config_json_fails_validation(tmp_path: Path, layout: str) -> None:
    folder = copy_fixture(tmp_path, layout)
    (folder / "config.json").unlink()
    code, report = validate_json(folder)
    assert code == 1 and not report["ok"]
    (missing,) = codes(report)["HFC009"]
    assert missing["severity"] == "error" and missing["file"] == "config.json"
    assert "from_pretrained cannot build the model" in missing["message"]


def _adapter_folder(tmp_path: Path) -> Path:
    """A LoRA adapter as PeftModel.save_pretrained writes it: no config.json."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": np.ones((8, 32), np.float32),
               f"{prefix}.lora_B.weight": np.zeros((32, 8), np.float32)},
              str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
        "base_model_name_or_path": "meta-llama/Llama-2-7b-hf", "task_type": "CAUSAL_LM"}))
    return folder


def test_adapter_folder_gets_no_config_finding(tmp_path: Path) -> None:
    folder = _adapter_folder(tmp_path)
    code, report = validate_json(folder, "--strict")
    assert code == 0 and "HFC009" not in codes(report), report["findings"]


def test_empty_folder_fails_on_weights_and_config(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    code, report = validate_json(folder)
    found = codes(report)
    assert code == 1 and found["HFC001"][0]["severity"] == "error" and found["HFC009"][0]["severity"] == "error"


def test_names_differing_in_case_are_a_warning_naming_both(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    save_file({"model.embed_tokens.weight": np.full((4, 4), 7, np.float32)}, str(folder / "MODEL.safetensors"),
              metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "Config.json").write_text(json.dumps({**config, "vocab_size": 7}))
    (folder / "README.md").write_text("model card")
    (folder / "readme.md").write_text("a second model card: no loader reads it")
    code, report = validate_json(folder)
    assert code == 0  # a warning
    clashes = codes(report)["HFC017"]
    assert {f["severity"] for f in clashes} == {"warning"}
    messages = sorted(f["message"] for f in clashes)
    assert len(messages) == 2, messages
    assert messages[0].startswith("Config.json and config.json differ only in letter case")
    assert messages[1].startswith("MODEL.safetensors and model.safetensors differ only in letter case")
    assert validate_json(folder, "--strict")[0] == 1


def test_unicode_normalization_collision_in_a_subfolder(tmp_path: Path) -> None:
    """macOS file systems also fold Unicode normalization: NFC and NFD spellings are one file."""
    folder = copy_fixture(tmp_path, "llama-safetensors")
    sub = folder / "tokenizer"
    sub.mkdir()
    (sub / "vocab_\u00e9.json").write_text("{}")  # é precomposed
    (sub / "vocab_e\u0301.json").write_text("{}")  # e + combining acute
    code, report = validate_json(folder)
    (clash,) = codes(report)["HFC017"]
    assert clash["file"].startswith("tokenizer/vocab_")


@pytest.mark.parametrize("layout", ["llama-safetensors", "llama-bin-sharded"])
def test_good_folders_have_no_collision(tmp_path: Path, layout: str) -> None:
    """Every file once (tokenizer.model, tokenizer_config.json, shards): no HFC017, no false alarm."""
    code, report = validate_json(copy_fixture(tmp_path, layout), "--strict")
    assert code == 0 and "HFC017" not in codes(report), report["findings"]
