"""Family config schemas for the most-downloaded architectures (issue 18).

Every model type below had no family-specific schema (HFC408) before. Each schema must accept
every config transformers writes: the default config of each class, saved by save_pretrained, is
validated through the CLI (one subprocess for all of them) and gives no schema finding.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

NEW_FAMILIES = ("xlm-roberta", "distilbert", "camembert", "deberta-v2", "albert", "electra", "mpnet", "modernbert",
                "bart", "mt5", "marian", "whisper", "wav2vec2", "vit", "dinov2", "swin", "convnext", "clip", "siglip",
                "llava", "mllama", "qwen2_vl", "qwen2_5_vl", "gemma3", "gemma3_text", "phi", "opt", "bloom", "gptj",
                "stablelm", "starcoder2", "cohere", "glm4", "granite", "olmo2", "smollm3", "gpt_oss", "mamba",
                "deepseek_v2", "deepseek_v3")


def _validate(folders: list[Path]) -> dict[str, list[dict]]:
    proc = subprocess.run([sys.executable, "-m", "hfconv", "validate", *map(str, folders), "--format", "json",
                           "--select", "HFC4"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(proc.stdout)
    return {Path(r["path"]).name: r["findings"] for r in (data if isinstance(data, list) else [data])}


@pytest.fixture(scope="module")
def defaults(transformers: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """The default config of every new family, saved by transformers, validated in one CLI run."""
    root = tmp_path_factory.mktemp("family-configs")
    folders = []
    for model_type in NEW_FAMILIES:
        folder = root / model_type
        transformers.CONFIG_MAPPING[model_type]().save_pretrained(folder)
        folders.append(folder)
    return _validate(folders)


@pytest.mark.parametrize("model_type", NEW_FAMILIES)
def test_default_config_saved_by_transformers_has_no_schema_finding(defaults: dict[str, list[dict]],
                                                                    model_type: str) -> None:
    assert [(f["code"], f["message"]) for f in defaults[model_type]] == []


def test_family_schema_catches_a_wrong_value(transformers: Any, tmp_path: Path) -> None:
    """The DeepSeek-V3 schema checks its own fields: a string rank and a zero expert size."""
    folder = tmp_path / "deepseek"
    transformers.DeepseekV3Config().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(kv_lora_rank="512", hidden_size=0)
    (folder / "config.json").write_text(json.dumps(config))
    found = _validate([folder])["deepseek"]
    paths = sorted(f["tensor"] for f in found if f["code"] == "HFC402")
    assert paths == ["$.hidden_size", "$.kv_lora_rank"], found
    assert not any(f["code"] == "HFC408" for f in found)


def test_composite_config_checks_its_sub_configs(transformers: Any, tmp_path: Path) -> None:
    folder = tmp_path / "llava"
    transformers.LlavaConfig().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["num_attention_heads"] = -4
    (folder / "config.json").write_text(json.dumps(config))
    found = _validate([folder])["llava"]
    assert [f["tensor"] for f in found if f["code"] == "HFC402"] == ["$.text_config.num_attention_heads"], found
