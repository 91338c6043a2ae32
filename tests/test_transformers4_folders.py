"""--reference transformers on folders transformers 4.x (4.57) wrote, read by any transformers.

Each case was a false alarm on a folder ``save_pretrained`` of transformers 4.57.1 wrote (found
by an architecture sweep; each folder loads cleanly in transformers, or in 5.x with exactly the
findings left). The folders here are built with the installed transformers and given the
4.57 layout the sweep found; a real defect in them is still reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
from safetensors.torch import load_file, save_file  # noqa: E402

from hfconv import validate  # noqa: E402
from hfconv.rules.transformers_reference import _optional_names  # noqa: E402

pytestmark = pytest.mark.transformers


def _noisy(folder: Path, reference: str = "transformers") -> list[tuple[str, str | None]]:
    """Shape findings (HFC6xx) that are errors or warnings."""
    report = validate(folder, reference=reference)
    return [(f.code, f.tensor) for f in report.findings
            if f.severity.value in ("error", "warning") and f.code.startswith("HFC6")]


def _edit_config(folder: Path, change) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config, indent=2))


def _rewrite(folder: Path, change) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    save_file(change(tensors), path, metadata={"format": "pt"})


# --- FSMT: transformers 4.x ties by sharing one Parameter; save_pretrained keeps the second name ---

class _Config:
    tie_word_embeddings = False


class _Decoder(torch.nn.Module):
    """transformers 4.57's FSMTDecoder: output_projection shares embed_tokens' Parameter whatever
    tie_word_embeddings says, and save_pretrained stores only decoder.output_projection.weight."""

    base_model_prefix = "model"

    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()
        self.embed_tokens = torch.nn.Embedding(10, 4)
        self.output_projection = torch.nn.Linear(4, 10, bias=False)
        self.output_projection.weight = self.embed_tokens.weight

    def get_output_embeddings(self):
        return self.output_projection


def test_v4_tied_group_stored_under_its_second_name():
    model = _Decoder()
    state = model.state_dict()
    assert set(state) == {"embed_tokens.weight", "output_projection.weight"}
    optional = _optional_names(model, state, {"output_projection.weight"})
    assert "embed_tokens.weight" in optional  # stored as output_projection: not missing
    assert "output_projection.weight" not in optional
    # Stored under the first name, or with the base-model prefix: the other one is optional.
    assert _optional_names(model, state, {"embed_tokens.weight"}) == {"output_projection.weight"}
    assert _optional_names(model, state, {"model.output_projection.weight"}) == {"embed_tokens.weight"}
    # Neither stored: one of them is still required (the first registered, as before).
    assert _optional_names(model, state, set()) == {"output_projection.weight"}


# --- Qwen2-VL: 4.5x writes architectures into text_config, and the bare model as model.* ---------

@pytest.fixture(scope="module")
def qwen2_vl(transformers, tmp_path_factory):
    if not hasattr(transformers, "Qwen2VLConfig"):
        pytest.skip("this transformers has no Qwen2-VL")
    text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=64,
                rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
    vision = dict(depth=2, embed_dim=16, hidden_size=16, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=60,
                                        video_token_id=61, vision_start_token_id=62, vision_end_token_id=63)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("qwen2_vl")
    transformers.Qwen2VLForConditionalGeneration(config).save_pretrained(root / "full")
    transformers.Qwen2VLModel(config).save_pretrained(root / "bare")
    return root


def _architectures_in_text_config(config: dict) -> None:
    """What transformers 4.57's Qwen2VLConfig.__setattr__ makes of save_pretrained's architectures."""
    config.setdefault("text_config", {})["architectures"] = config.pop("architectures")


def test_qwen2_vl_architectures_only_in_text_config(qwen2_vl, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(qwen2_vl / "full", folder)
    _edit_config(folder, _architectures_in_text_config)
    assert "architectures" not in json.loads((folder / "config.json").read_text())
    assert _noisy(folder) == []
    # Still the full model: a dropped lm_head is missing, not "unexpected" elsewhere.
    _rewrite(folder, lambda t: {k: v for k, v in t.items() if k != "lm_head.weight"})
    assert ("HFC602", "lm_head.weight") in _noisy(folder)


def test_qwen2_vl_bare_model_with_v4_names(qwen2_vl, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(qwen2_vl / "bare", folder)
    # transformers 4.57 saves Qwen2VLModel's language model as model.* (its checkpoint naming).
    _rewrite(folder, lambda t: {("model." + k.removeprefix("language_model.") if k.startswith("language_model.")
                                 else k): v for k, v in t.items()})
    names = load_file(folder / "model.safetensors")
    assert "model.layers.0.mlp.up_proj.weight" in names
    assert _noisy(folder) == []
    # A real defect is still seen.
    _rewrite(folder, lambda t: {k: (v[:8].clone() if k == "model.norm.weight" else v)
                                for k, v in t.items() if k != "model.layers.1.mlp.up_proj.weight"})
    codes = {code for code, _ in _noisy(folder)}
    assert {"HFC601", "HFC602"} <= codes


# --- A head class this transformers lacks: the bare model reads the head's checkpoint ------------

def test_head_class_unknown_to_transformers_loads_base_weights(transformers, tmp_path):
    if hasattr(transformers, "Wav2Vec2ForMaskedLM"):
        pytest.skip("this transformers still has Wav2Vec2ForMaskedLM")
    config = transformers.Wav2Vec2Config(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=32, conv_dim=(16, 16), conv_stride=(5, 2),
                                         conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    folder = tmp_path / "w"
    transformers.Wav2Vec2ForCTC(config).save_pretrained(folder)
    # transformers 4.x's Wav2Vec2ForMaskedLM: the same wav2vec2.* base and an lm_head; 5.x has no
    # such class, so from_pretrained builds Wav2Vec2Model, loads every wav2vec2.* tensor and
    # leaves only the head unused.
    _edit_config(folder, lambda c: c.update(architectures=["Wav2Vec2ForMaskedLM"]))
    found = _noisy(folder)
    assert {code for code, _ in found} == {"HFC603"}
    assert sorted(t for _, t in found) == ["lm_head.bias", "lm_head.weight"]
    # A base tensor missing is still missing.
    _rewrite(folder, lambda t: {k: v for k, v in t.items() if k != "wav2vec2.encoder.layers.1.attention.q_proj.weight"})
    assert ("HFC602", "wav2vec2.encoder.layers.1.attention.q_proj.weight") in _noisy(folder)
