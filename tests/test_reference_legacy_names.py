"""--reference transformers on folders whose tensor names transformers renames at load.

transformers 4.x wrote LLaVA-family folders with ``language_model.model.*``,
``language_model.lm_head.weight``, ``vision_tower.vision_model.*`` and
``multi_modal_projector.*``; the transformers 5 model holds ``model.language_model.*``,
``lm_head.weight``, ``model.vision_tower.*`` and ``model.multi_modal_projector.*`` and renames
the old names on load. Both namings load, so neither may give HFC6xx findings, and a real
defect in either is still reported under the name the file stores.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
from safetensors.torch import save_file  # noqa: E402

from hfconv import validate  # noqa: E402

pytestmark = pytest.mark.transformers


def _v4_name(name: str) -> str:
    """The name transformers 4.x LlavaForConditionalGeneration stored for an in-memory v5 name."""
    for new, old in ((r"^model\.language_model\.", "language_model.model."),
                     (r"^lm_head\.", "language_model.lm_head."),
                     (r"^model\.vision_tower\.(vision_model\.)?", "vision_tower.vision_model."),
                     (r"^model\.multi_modal_projector\.", "multi_modal_projector.")):
        if re.match(new, name):
            return re.sub(new, old, name, count=1)
    return name


@pytest.fixture(scope="module")
def llava(transformers, tmp_path_factory):
    """(folder saved by save_pretrained, the model's in-memory state dict)."""
    text = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, max_position_embeddings=32)
    vision = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=28, patch_size=14)
    config = transformers.LlavaConfig(text_config=text, vision_config=vision, image_token_index=63,
                                      vision_feature_layer=-1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config)
    folder = tmp_path_factory.mktemp("llava") / "saved"
    model.save_pretrained(folder)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    return folder, state


def _folder(tmp_path: Path, source: Path, state: dict, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(source, folder)
    for f in list(folder.glob("model*.safetensors")) + list(folder.glob("*.index.json")):
        f.unlink()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _v4_state(state: dict) -> dict:
    renamed = {_v4_name(name): tensor for name, tensor in state.items()}
    assert len(renamed) == len(state)
    return renamed


def _findings(folder: Path, reference: str = "transformers"):
    return validate(folder, select=["HFC6"], reference=reference).findings


def test_v4_names_are_genuine(transformers, llava, tmp_path):
    """The renamed folder is what transformers itself loads cleanly (it renames on load)."""
    saved, state = llava
    folder = _folder(tmp_path, saved, _v4_state(state), "v4")
    names = set(_v4_state(state))
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in names
    assert "language_model.lm_head.weight" in names
    assert "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight" in names
    assert "multi_modal_projector.linear_1.weight" in names
    _, info = transformers.LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


@pytest.mark.parametrize("reference", ["transformers", "auto"])
def test_v4_named_folder_has_no_findings(llava, tmp_path, reference):
    saved, state = llava
    folder = _folder(tmp_path, saved, _v4_state(state), "v4")
    found = _findings(folder, reference)
    assert not found, [(f.code, f.message) for f in found][:5]


@pytest.mark.parametrize("which", ["saved", "in_memory"])
def test_v5_named_folders_have_no_findings(llava, tmp_path, which):
    """The folder save_pretrained wrote, and one storing the v5 model's in-memory names."""
    saved, state = llava
    folder = saved if which == "saved" else _folder(tmp_path, saved, state, "v5")
    found = _findings(folder)
    assert not found, [(f.code, f.message) for f in found][:5]


def test_v4_named_defects_are_reported_under_the_stored_names(llava, tmp_path):
    saved, state = llava
    v4 = _v4_state(state)
    del v4["vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight"]
    del v4["language_model.lm_head.weight"]  # tie_word_embeddings is false: required
    v4["language_model.model.layers.0.self_attn.q_proj.weight"] = torch.zeros(8, 16)
    v4["multi_modal_projector.linear_9.weight"] = torch.zeros(4, 4)
    folder = _folder(tmp_path, saved, v4, "broken")
    found = {(f.code, f.tensor) for f in _findings(folder)}
    assert found == {
        ("HFC602", "vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight"),
        ("HFC602", "language_model.lm_head.weight"),
        ("HFC601", "language_model.model.layers.0.self_attn.q_proj.weight"),
        ("HFC603", "multi_modal_projector.linear_9.weight"),
    }, found


def test_v4_named_missing_layer_is_a_count_error(llava, tmp_path):
    saved, state = llava
    v4 = {name: t for name, t in _v4_state(state).items() if not name.startswith("language_model.model.layers.1.")}
    folder = _folder(tmp_path, saved, v4, "cut")
    found = _findings(folder)
    assert [f.code for f in found] == ["HFC604"], [(f.code, f.message) for f in found]
    assert "language_model.model.layers" in found[0].message
    assert "text_config.num_hidden_layers is 2" in found[0].message


def test_v4_named_mixed_with_v5_lm_head(llava, tmp_path):
    """A folder mixing both namings still loads (each name is renamed on its own)."""
    saved, state = llava
    v4 = _v4_state(state)
    v4["lm_head.weight"] = v4.pop("language_model.lm_head.weight")
    folder = _folder(tmp_path, saved, v4, "mixed")
    assert not _findings(folder)


@pytest.mark.parametrize("broken", ["rename_source_key", "get_model_conversion_mapping"])
def test_changed_transformers_internals_do_not_crash(transformers, llava, tmp_path, monkeypatch, broken):
    """transformers' load-time renaming is internal: when a function is missing or its signature
    changed, hfconv does without it (the names save_pretrained writes, or an HFC609 info when
    even those are out of reach), never a crash."""
    saved, state = llava
    module = pytest.importorskip("transformers.core_model_loading" if broken == "rename_source_key" else
                                 "transformers.conversion_mapping", reason="transformers < 5")
    if broken == "rename_source_key":
        monkeypatch.setattr(module, broken, lambda key: (key, None))  # another signature
    else:
        monkeypatch.delattr(module, broken)
    found = _findings(saved)
    assert all(f.code == "HFC609" for f in found), [(f.code, f.message) for f in found]
    if broken == "rename_source_key":
        assert not found
    folder = _folder(tmp_path, saved, _v4_state(state), "v4")
    assert {f.code for f in _findings(folder)} <= {"HFC602", "HFC603", "HFC604", "HFC609"}
