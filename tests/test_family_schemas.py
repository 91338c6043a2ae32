"""Family config schemas for the most-downloaded architectures (issue 18).

Every model type in ``fixtures/configs/`` had no family-specific schema (HFC408) before. Each
schema must accept every config transformers writes: the default config of each class as
save_pretrained wrote it (``fixtures/make_config_fixtures.py``) goes through the CLI (one
subprocess for all of them) and gives no schema finding.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "fixtures" / "configs"
NEW_FAMILIES = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir())


def _validate(folders: list[Path]) -> dict[str, list[dict]]:
    proc = subprocess.run([sys.executable, "-m", "hfconv", "validate", *map(str, folders), "--format", "json",
                           "--select", "HFC4"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(proc.stdout)
    return {Path(r["path"]).name: r["findings"] for r in (data if isinstance(data, list) else [data])}


@pytest.fixture(scope="module")
def defaults() -> dict[str, list[dict]]:
    """Every committed default config, validated in one CLI run."""
    return _validate([CONFIGS / name for name in NEW_FAMILIES])


def test_the_most_downloaded_families_are_covered() -> None:
    assert len(NEW_FAMILIES) >= 40
    assert {"deepseek_v3", "deepseek_v2", "gemma3", "qwen2_5_vl", "llava", "whisper", "xlm-roberta",
            "modernbert", "gpt_oss"} <= set(NEW_FAMILIES)


@pytest.mark.parametrize("model_type", NEW_FAMILIES)
def test_default_config_saved_by_transformers_has_no_schema_finding(defaults: dict[str, list[dict]],
                                                                    model_type: str) -> None:
    assert [(f["code"], f["message"]) for f in defaults[model_type]] == []


def _edited(tmp_path: Path, model_type: str, edit: dict) -> Path:
    folder = tmp_path / model_type
    shutil.copytree(CONFIGS / model_type, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in edit.items():
        target = config
        *parents, last = key.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_family_schemas_catch_wrong_values(tmp_path: Path) -> None:
    """A string rank and a zero width in DeepSeek-V3, a negative head count in LLaVA's text
    config, a missing alias group in DistilBERT; DeepSeek-V2-Lite's null q_lora_rank passes."""
    deepseek = _edited(tmp_path / "a", "deepseek_v3", {"kv_lora_rank": "512", "hidden_size": 0})
    llava = _edited(tmp_path / "b", "llava", {"text_config.num_attention_heads": -4})
    distilbert = _edited(tmp_path / "c", "distilbert", {})
    config = json.loads((distilbert / "config.json").read_text())
    del config["dim"]
    (distilbert / "config.json").write_text(json.dumps(config))
    lite = _edited(tmp_path / "d", "deepseek_v2", {"q_lora_rank": None, "first_k_dense_replace": 0})
    found = _validate([deepseek, llava, distilbert, lite])
    assert sorted(f["tensor"] for f in found["deepseek_v3"] if f["code"] == "HFC402") == \
        ["$.hidden_size", "$.kv_lora_rank"], found["deepseek_v3"]
    assert [f["tensor"] for f in found["llava"] if f["code"] == "HFC402"] == ["$.text_config.num_attention_heads"]
    assert any("must set 'dim'" in f["message"] for f in found["distilbert"] if f["code"] == "HFC402"), \
        found["distilbert"]
    assert found["deepseek_v2"] == []
    assert not any(f["code"] == "HFC408" for folder in found.values() for f in folder)
