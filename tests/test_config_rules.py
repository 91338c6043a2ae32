"""config.json rules that work without transformers (HFC411-HFC414, and HFC402's RoPE rules in nested
configs), against transformers itself.

Each broken config is a copy of one that transformers' own config class wrote with
``save_pretrained``, with one value changed; the test asserts that transformers refuses it too
(``AutoConfig.from_pretrained``), or, where the config class lets it through, that what follows
is broken (the attention cannot run, the RoPE scaling is silently dropped). The configs as
transformers writes them, and every fixture folder, must stay clean: a false alarm is as bad as a
miss. All folders go through one ``hfconv validate`` run (a subprocess, the real CLI).

The model types each rule applies to (hfconv/schemas/config_rules.json) come from probing every
config class of the installed transformers; ``probe_config_classes`` is that probe, run by hand
(``python tests/test_config_rules.py``) when transformers adds model types.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT

ENTRY = "from hfconv.cli import run; run()"
RULE_CODES = {"HFC411", "HFC412", "HFC413", "HFC414"}

_TEXT = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=4, max_position_embeddings=64)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", _TEXT),
    "mistral": ("MistralConfig", _TEXT),
    "qwen2": ("Qwen2Config", {k: v for k, v in _TEXT.items() if k != "head_dim"}),
    "qwen3": ("Qwen3Config", _TEXT),
    "gemma2": ("Gemma2Config", _TEXT),
    "gemma3": ("Gemma3Config", {"text_config": _TEXT, "vision_config": dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8)}),
    "llava": ("LlavaConfig", {"text_config": dict(_TEXT, model_type="llama"), "vision_config": dict(
        model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, image_size=16, patch_size=8, projection_dim=16)}),
    "qwen2_5_omni": ("Qwen2_5OmniConfig", {}),  # RoPE in configs nested two deep
}


def _set(path: tuple, value) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node.get(path[-1])) if callable(value) else value
    return edit


def _rope_without_type(config: dict) -> None:
    config.pop("rope_scaling", None)
    config["rope_parameters"] = {"factor": 4.0, "rope_theta": 10000.0}


def _legacy_rope_scaling_without_type(config: dict) -> None:
    config.pop("rope_parameters", None)
    config["rope_theta"] = 500000.0
    config["rope_scaling"] = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 16}


# case -> (family, edit, code, JSON path, what transformers does with it)
#   "refuses": AutoConfig.from_pretrained raises; "attention fails": the config loads but the
#   model's forward fails; "drops scaling": the config loads with the default (unscaled) RoPE.
BROKEN: dict[str, tuple[str, Callable[[dict], None], str, str, str]] = {
    "qwen2_layer_types_one_more": ("qwen2", _set(("layer_types",), lambda v: v + ["full_attention"]),
                                   "HFC411", "$.layer_types", "refuses"),
    "qwen2_layer_types_one_fewer": ("qwen2", _set(("layer_types",), lambda v: v[:-1]),
                                    "HFC411", "$.layer_types", "refuses"),
    "qwen2_layer_types_unknown": ("qwen2", _set(("layer_types",), lambda v: [v[0], "global_attention"]),
                                  "HFC411", "$.layer_types[1]", "refuses"),
    "gemma2_layer_types_one_more": ("gemma2", _set(("layer_types",), lambda v: v + ["sliding_attention"]),
                                    "HFC411", "$.layer_types", "refuses"),
    "llama_layer_types_added_one_more": ("llama", _set(("layer_types",), ["full_attention"] * 3),
                                         "HFC411", "$.layer_types", "refuses"),
    "gemma3_text_layer_types_one_more": ("gemma3", _set(("text_config", "layer_types"),
                                                        lambda v: v + ["full_attention"]),
                                         "HFC411", "$.text_config.layer_types", "refuses"),
    "llama_hidden_not_multiple": ("llama", _set(("hidden_size",), 18), "HFC413", "$.hidden_size", "refuses"),
    "gemma2_hidden_not_multiple": ("gemma2", _set(("hidden_size",), 18), "HFC413", "$.hidden_size", "refuses"),
    "gemma3_text_hidden_not_multiple": ("gemma3", _set(("text_config", "hidden_size"), 18),
                                        "HFC413", "$.text_config.hidden_size", "refuses"),
    "llava_text_hidden_not_multiple": ("llava", _set(("text_config", "hidden_size"), 18),
                                       "HFC413", "$.text_config.hidden_size", "refuses"),
    "mistral_kv_heads_not_dividing": ("mistral", _set(("num_key_value_heads",), 3),
                                      "HFC414", "$.num_key_value_heads", "attention fails"),
    "qwen3_kv_heads_not_dividing": ("qwen3", _set(("num_key_value_heads",), 3),
                                    "HFC414", "$.num_key_value_heads", "attention fails"),
    "llama_rope_factor_without_type": ("llama", _rope_without_type, "HFC412", "$.rope_parameters",
                                       "drops scaling"),
    "llama_rope_scaling_without_type": ("llama", _legacy_rope_scaling_without_type, "HFC412", "$.rope_scaling",
                                        "drops scaling"),
    "qwen2_5_omni_nested_rope_without_factor": (
        "qwen2_5_omni", _set(("thinker_config", "text_config", "rope_parameters"),
                             {"rope_type": "linear", "rope_theta": 1e6}),
        "HFC402", "$.thinker_config.text_config.rope_parameters.factor", "refuses"),
    "gemma3_text_rope_per_layer_without_type": (
        "gemma3", _set(("text_config", "rope_parameters", "sliding_attention"), {"factor": 8.0, "rope_theta": 1e4}),
        "HFC412", "$.text_config.rope_parameters.sliding_attention", "drops scaling"),
}

# Unusual but valid: transformers loads them and so must hfconv, without a rule finding.
CLEAN_VARIANTS: dict[str, tuple[str, Callable[[dict], None]]] = {
    # mistral and qwen3 take head_dim from the config: hidden_size need not be a multiple of the heads
    "mistral_hidden_not_multiple_with_head_dim": ("mistral", _set(("hidden_size",), 18)),
    "qwen3_hidden_not_multiple_with_head_dim": ("qwen3", _set(("hidden_size",), 18)),
    "qwen2_legacy_layer_type_names": ("qwen2", _set(("layer_types",), ["attention", "sliding_attention"])),
    "llama_rope_scaling_with_type": ("llama", lambda c: c.update(rope_scaling={"type": "linear", "factor": 2.0})),
}


def _report_for(reports: dict, folder: Path) -> dict:
    return reports[str(folder)]


def _rule_findings(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["code"] in RULE_CODES]


def _config_errors(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["severity"] == "error" and f["file"] == "config.json"]


@pytest.fixture(scope="module")
def saved(transformers, tmp_path_factory) -> dict[str, dict]:
    """config.json as each family's config class writes it (save_pretrained)."""
    root = tmp_path_factory.mktemp("written")
    out = {}
    for family, (cls_name, kwargs) in FAMILIES.items():
        getattr(transformers, cls_name)(**copy.deepcopy(kwargs)).save_pretrained(root / family)
        out[family] = json.loads((root / family / "config.json").read_text())
    return out


@pytest.fixture(scope="module")
def folders(saved, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("configs")
    out: dict[str, Path] = {}

    def write(name: str, config: dict) -> None:
        out[name] = root / name
        out[name].mkdir()
        (out[name] / "config.json").write_text(json.dumps(config, indent=2))

    for family, config in saved.items():
        write(f"written-{family}", config)
    for case, (family, edit, *_rest) in {**BROKEN, **CLEAN_VARIANTS}.items():
        config = copy.deepcopy(saved[family])
        edit(config)
        write(case, config)
    return out


FIXTURE_FOLDERS = sorted([p for p in (FIXTURES / "families").iterdir() if (p / "config.json").is_file()]
                         + [p for p in FIXTURES.glob("llama-*") if p.is_dir()])


@pytest.fixture(scope="module")
def reports(folders) -> dict[str, dict]:
    paths = [str(p) for p in folders.values()] + [str(p) for p in FIXTURE_FOLDERS]
    proc = subprocess.run([sys.executable, "-c", ENTRY, "validate", "--format", "json", *paths],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return {report["path"]: report for report in json.loads(proc.stdout)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_configs_transformers_writes_are_clean(reports, folders, family):
    report = _report_for(reports, folders[f"written-{family}"])
    assert not _rule_findings(report) and not _config_errors(report), report["findings"]


@pytest.mark.parametrize("case", list(CLEAN_VARIANTS))
def test_valid_variants_are_clean(transformers, reports, folders, case):
    transformers.AutoConfig.from_pretrained(folders[case])  # transformers loads it
    report = _report_for(reports, folders[case])
    assert not _rule_findings(report) and not _config_errors(report), report["findings"]


@pytest.mark.parametrize("fixture", FIXTURE_FOLDERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fixture_folders_are_clean(reports, fixture):
    """The fixture folders are good models: no error or warning at all, and no rule finding."""
    report = _report_for(reports, fixture)
    assert report["ok"], report["findings"]
    assert not [f for f in report["findings"] if f["severity"] != "info" or f["code"] in RULE_CODES]


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_config_is_an_error(transformers, reports, folders, case):
    _family, _edit, code, path, verdict = BROKEN[case]
    folder = folders[case]
    errors = [f for f in _config_errors(reports[str(folder)]) if f["code"] == code]
    assert [f["tensor"] for f in errors] == [path], reports[str(folder)]["findings"]
    assert errors[0]["message"].startswith(f"config.json: {path} ")

    if verdict == "refuses":
        with pytest.raises(Exception):
            transformers.AutoConfig.from_pretrained(folder)
    elif verdict == "attention fails":
        import torch

        config = transformers.AutoConfig.from_pretrained(folder)
        model = transformers.AutoModelForCausalLM.from_config(config)
        with pytest.raises(RuntimeError):
            model(torch.tensor([[1, 2, 3]]))
    else:  # "drops scaling": loads, but as the default RoPE, the factor ignored
        config = transformers.AutoConfig.from_pretrained(folder)
        text = config.get_text_config()
        ropes = text.rope_parameters
        rope = ropes.get("sliding_attention", ropes) if "rope_type" not in ropes else ropes
        assert rope["rope_type"] == "default" and rope.get("factor") is not None


def probe_config_classes() -> dict:
    """What each config class of the installed transformers refuses, at the config.json level:
    the default config as save_pretrained writes it, loaded back with from_dict after one change.
    Its output (plus the allowed layer types) is hfconv/schemas/config_rules.json."""
    import warnings

    import transformers
    from transformers import CONFIG_MAPPING
    from transformers.configuration_utils import _LEGACY_LAYER_TYPE_REMAP, ALLOWED_ATTN_LAYER_TYPES

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()

    def refused(cls, config: dict) -> Exception | None:
        try:
            cls.from_dict(copy.deepcopy(config))
        except Exception as exc:  # whatever the class raises
            return exc
        return None

    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    length, hidden, kv = [], [], []
    for model_type in sorted(CONFIG_MAPPING.keys()):
        try:
            cls = CONFIG_MAPPING[model_type]
            config = json.loads(cls().to_json_string(use_diff=False))
        except Exception:
            continue
        if refused(cls, config) is not None:
            continue
        layers, heads = config.get("num_hidden_layers"), config.get("num_attention_heads")
        if count(layers):
            base = config if isinstance(config.get("layer_types"), list) else dict(
                config, layer_types=["full_attention"] * layers)
            types = base["layer_types"]
            if (refused(cls, base) is None and len(types) == layers and all(isinstance(t, str) for t in types)
                    and refused(cls, dict(base, layer_types=types + types[:1])) is not None
                    and (layers < 2 or refused(cls, dict(base, layer_types=types[:-1])) is not None)
                    and refused(cls, dict(base, layer_types=["bogus_attention"] + types[1:])) is not None):
                length.append(model_type)
        size = config.get("hidden_size")
        if count(size) and count(heads) and heads > 1:
            exc = refused(cls, dict(config, hidden_size=size + 1 if (size + 1) % heads else size + 2))
            if exc is not None and any(word in str(exc) for word in ("multiple", "divisib", "%")):
                hidden.append(model_type)
        kv_heads = config.get("num_key_value_heads")
        if count(heads) and count(kv_heads) and heads % kv_heads == 0:
            kv.append(model_type)
    return {
        "transformers_version": transformers.__version__,
        "allowed_layer_types": sorted(set(ALLOWED_ATTN_LAYER_TYPES) | set(_LEGACY_LAYER_TYPE_REMAP)),
        "layer_types_length": length,
        "hidden_size_divisible_by_heads": hidden,
        "key_value_heads": kv,
    }


if __name__ == "__main__":
    print(json.dumps(probe_config_classes(), indent=1))
