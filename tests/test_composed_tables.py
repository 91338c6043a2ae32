"""CLIP, SigLIP and Gemma 3 from their parts' generated tables (issue 18: the most-downloaded
families without importing transformers): CLIPModel is its text encoder's table under
``text_model.``, its vision encoder's under ``vision_model.`` and the two projections joining them
(SigLIP: its logit scale and bias; Gemma 3, PaliGemma and LLaVA: a language model, a vision tower named the
way transformers 4 or 5 wrote it, and the projector), each part answering for its nested config.
Folders written by transformers' own save_pretrained validate with no reference subprocess; a
broken copy is caught and named; a config the parts' tables do not answer for is left to the
reference.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from hfconv.rules.compare import compare
from hfconv.rules.generated import generated_expected

from helpers import config_of, stored_shapes, stored_state

pytestmark = pytest.mark.transformers

# validate, recording what the validating process imported and started (no reference subprocess,
# no transformers import).
_PROGRAM = """\
import atexit, json, sys
spawned = []
sys.addaudithook(lambda event, args: spawned.append(str(args[1])) if event == "subprocess.Popen" else None)
atexit.register(lambda: sys.stderr.write("\\nSTATE " + json.dumps({
    "spawned": spawned, "transformers": "transformers" in sys.modules}) + "\\n"))
from hfconv.cli import run
run()
"""

SIZES = {  # no two fields alike, so that a dimension taken from the wrong field shows
    "small": dict(text=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=99, max_position_embeddings=64, bos_token_id=0, eos_token_id=2,
                            pad_token_id=1),
                  vision=dict(hidden_size=48, intermediate_size=41, num_hidden_layers=3, num_attention_heads=4,
                              image_size=30, patch_size=10),
                  projection_dim=24),
    "other": dict(text=dict(hidden_size=40, intermediate_size=44, num_hidden_layers=3, num_attention_heads=5,
                            vocab_size=120, max_position_embeddings=32, bos_token_id=0, eos_token_id=2,
                            pad_token_id=1),
                  vision=dict(hidden_size=36, intermediate_size=52, num_hidden_layers=2, num_attention_heads=6,
                              image_size=28, patch_size=7),
                  projection_dim=20),
}


@pytest.fixture(scope="module")
def written(transformers, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clip")
    t = transformers
    for name, sizes in SIZES.items():
        config = t.CLIPConfig(text_config=sizes["text"], vision_config=sizes["vision"],
                              projection_dim=sizes["projection_dim"])
        t.CLIPModel(config).save_pretrained(root / name)
    sizes = SIZES["small"]
    t.SiglipModel(t.SiglipConfig(text_config={**sizes["text"], "max_position_embeddings": 16},
                                 vision_config=sizes["vision"])).save_pretrained(root / "siglip")
    # Gemma 3 as google/gemma-3-4b-it is laid out (no vision head), written by transformers 5
    # (vision_tower.embeddings...) and renamed as transformers 4 wrote it (vision_tower.vision_model...).
    t.Gemma3ForConditionalGeneration(t.Gemma3Config(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, vocab_size=300, max_position_embeddings=64,
                         sliding_window=16),
        vision_config={**sizes["vision"], "image_size": 32, "patch_size": 8, "vision_use_head": False},
        mm_tokens_per_image=4, image_token_index=299, boi_token_index=297, eoi_token_index=298,
    )).save_pretrained(root / "gemma3")
    state = stored_state(root / "gemma3")
    shutil.copytree(root / "gemma3", root / "gemma3-v4")
    renamed = {name.replace("vision_tower.", "vision_tower.vision_model.", 1): tensor for name, tensor in state.items()}
    save_file(renamed, str(root / "gemma3-v4" / "model.safetensors"), metadata={"format": "pt"})
    # LLaVA: a Llama language model and a CLIP vision tower (1.5, and as transformers 4 named the
    # tower), LLaVA-NeXT with two feature layers (the projector takes both) and its image_newline.
    text = dict(model_type="llama", hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=120)
    vision = {**sizes["vision"], "model_type": "clip_vision_model"}
    t.LlavaForConditionalGeneration(t.LlavaConfig(text_config=text, vision_config=vision, image_token_index=100)
                                    ).save_pretrained(root / "llava")
    state = stored_state(root / "llava")
    shutil.copytree(root / "llava", root / "llava-v4")
    renamed = {name.replace("vision_tower.", "vision_tower.vision_model.", 1): tensor for name, tensor in state.items()}
    save_file(renamed, str(root / "llava-v4" / "model.safetensors"), metadata={"format": "pt"})
    t.PaliGemmaForConditionalGeneration(t.PaliGemmaConfig(
        text_config=dict(model_type="gemma", hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=8, vocab_size=300),
        vision_config={**sizes["vision"], "model_type": "siglip_vision_model", "image_size": 32, "patch_size": 8,
                       "vision_use_head": False},
        projection_dim=40, image_token_index=299)).save_pretrained(root / "paligemma")
    t.LlavaNextForConditionalGeneration(t.LlavaNextConfig(
        text_config=text, vision_config=vision, image_token_index=100, image_grid_pinpoints=[[30, 30]],
        vision_feature_layer=[-2, -1])).save_pretrained(root / "llava_next")
    return root


@pytest.mark.parametrize("name", [*SIZES, "siglip", "gemma3", "gemma3-v4", "paligemma", "llava", "llava-v4",
                                  "llava_next"])
def test_composed_table_matches_every_tensor(written: Path, name: str) -> None:
    stored = stored_shapes(written / name)
    config = config_of(written / name)
    expected = generated_expected(config, stored)
    assert expected is not None and expected.architecture == config["architectures"][0]
    result = compare(expected, stored)
    assert result.clean and result.matched == len(stored), result


@pytest.mark.parametrize("name", ["small", "siglip", "gemma3-v4", "llava-v4"])
def test_good_folder_validates_without_the_reference(written: Path, tmp_path: Path, name: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _PROGRAM, "validate", str(written / name)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK: 0 error(s), 0 warning(s)" in proc.stdout, proc.stdout + proc.stderr
    assert json.loads(proc.stderr.rpartition("STATE ")[2]) == {"spawned": [], "transformers": False}


def test_broken_copy_is_caught_and_named(written: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    shutil.copytree(written / "small", folder)
    state = stored_state(folder)
    state["text_projection.weight"] = state["text_projection.weight"].T.contiguous()  # [32, 24] for [24, 32]
    fc2 = "vision_model.encoder.layers.1.mlp.fc2.weight"
    state[fc2] = state[fc2][:, :40].contiguous()  # [48, 40] for [48, 41]
    for key in [k for k in state if k.startswith("vision_model.encoder.layers.2.")]:
        del state[key]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    result = compare(generated_expected(config_of(folder)), stored_shapes(folder))
    assert sorted(m.name for m in result.mismatched) == ["text_projection.weight",
                                                          "vision_model.encoder.layers.1.mlp.fc2.weight"], result
    [count] = result.counts
    assert count.group.field == "vision_config.num_hidden_layers" and count.found == (0, 1), result
    [fc2] = [m for m in result.mismatched if m.name.endswith("fc2.weight")]
    assert fc2.expected.dims[1].drivers == ("vision_config.intermediate_size",), fc2


def test_configs_the_parts_do_not_answer_for_are_left_to_the_reference(written: Path) -> None:
    config = config_of(written / "small")
    assert generated_expected(config) is not None
    assert generated_expected({**config, "text_config_dict": {"hidden_size": 64}}) is None  # transformers 4's old key
    assert generated_expected({**config, "text_config": {**config["text_config"], "model_type": "bert"}}) is None
    assert generated_expected({**config, "projection_dim": "512"}) is None
    assert generated_expected({**config, "architectures": ["CLIPVisionModelWithProjection"]}) is None


# The generic fields transformers 4 wrote into every nested config (openai/clip-vit-base-patch32's
# config.json, transformers 4.16), with the old top-level keys beside them.
_V4_GENERIC = {
    "_name_or_path": "", "add_cross_attention": False, "architectures": None, "bad_words_ids": None,
    "chunk_size_feed_forward": 0, "cross_attention_hidden_size": None, "decoder_start_token_id": None,
    "diversity_penalty": 0.0, "do_sample": False, "early_stopping": False, "encoder_no_repeat_ngram_size": 0,
    "finetuning_task": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "is_decoder": False, "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "length_penalty": 1.0, "max_length": 20, "min_length": 0,
    "no_repeat_ngram_size": 0, "num_beam_groups": 1, "num_beams": 1, "num_return_sequences": 1,
    "output_attentions": False, "output_hidden_states": False, "output_scores": False, "prefix": None,
    "projection_dim": 512, "problem_type": None, "pruned_heads": {}, "remove_invalid_values": False,
    "repetition_penalty": 1.0, "return_dict": True, "return_dict_in_generate": False, "sep_token_id": None,
    "task_specific_params": None, "temperature": 1.0, "tie_encoder_decoder": False, "tie_word_embeddings": True,
    "tokenizer_class": None, "top_k": 50, "top_p": 1.0, "torch_dtype": None, "torchscript": False,
    "transformers_version": "4.16.0.dev0", "use_bfloat16": False,
}


def test_config_as_transformers_4_wrote_it(written: Path) -> None:
    """openai/clip-vit-base-patch32's config.json layout: every generic field in each nested config,
    ``text_config_dict``/``vision_config_dict`` null, no top-level version: the parts still answer."""
    config = config_of(written / "small")
    old = {"_name_or_path": "openai/clip-vit-base-patch32", "architectures": ["CLIPModel"], "model_type": "clip",
           "initializer_factor": 1.0, "logit_scale_init_value": 2.6592, "projection_dim": config["projection_dim"],
           "text_config": {**_V4_GENERIC, **{k: config["text_config"][k] for k in SIZES["small"]["text"]},
                           "hidden_act": "quick_gelu", "model_type": "clip_text_model"},
           "text_config_dict": None, "transformers_version": None,
           "vision_config": {**_V4_GENERIC, **{k: config["vision_config"][k] for k in SIZES["small"]["vision"]},
                             "hidden_act": "quick_gelu", "model_type": "clip_vision_model"},
           "vision_config_dict": None}
    expected = generated_expected(old)
    assert expected is not None
    assert compare(expected, stored_shapes(written / "small")).clean


def _transposed_and_deleted(source: Path, folder: Path, transposed: str, deleted: str) -> Path:
    """A copy of ``source`` with one tensor stored transposed and another left out."""
    shutil.copytree(source, folder)
    state = stored_state(folder)
    state[transposed] = state[transposed].T.contiguous()
    del state[deleted]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_broken_siglip_copy_is_caught(written: Path, tmp_path: Path) -> None:
    head = "vision_model.head.mlp.fc1.weight"  # [48, 41] for [41, 48]
    folder = _transposed_and_deleted(written / "siglip", tmp_path / "siglip", head, "logit_bias")
    result = compare(generated_expected(config_of(folder)), stored_shapes(folder))
    assert [m.name for m in result.mismatched] == [head] and list(result.missing) == ["logit_bias"], result


def test_broken_gemma3_copy_is_caught_and_named_as_stored(written: Path, tmp_path: Path) -> None:
    fc1 = "vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight"  # [48, 41] for [41, 48]
    folder = _transposed_and_deleted(written / "gemma3-v4", tmp_path / "gemma3", fc1,
                                     "multi_modal_projector.mm_soft_emb_norm.weight")
    stored = stored_shapes(folder)
    result = compare(generated_expected(config_of(folder), stored), stored)
    assert [m.name for m in result.mismatched] == [fc1], result
    assert list(result.missing) == ["multi_modal_projector.mm_soft_emb_norm.weight"], result


def test_a_part_named_both_ways_is_left_to_the_reference(written: Path) -> None:
    """Half the vision tower under transformers 4's vision_tower.vision_model., half under 5's
    vision_tower.: no guess at which names are the stray ones."""
    stored = stored_shapes(written / "gemma3")
    vision = sorted(name for name in stored if name.startswith("vision_tower."))
    mixed = {(name.replace("vision_tower.", "vision_tower.vision_model.", 1) if name in vision[::2] else name): shape
             for name, shape in stored.items()}
    assert generated_expected(config_of(written / "gemma3"), mixed) is None
    assert generated_expected(config_of(written / "gemma3"), stored) is not None


def test_broken_llava_copies_are_caught(written: Path) -> None:
    """The projector's input width follows the feature layers taken; its biases follow
    multimodal_projector_bias; the language model's layers are counted under text_config."""
    config = config_of(written / "llava_next")
    stored = stored_shapes(written / "llava_next")
    one_layer = {**config, "vision_feature_layer": -2}  # the stored projector takes two: [32, 96]
    result = compare(generated_expected(one_layer, stored), stored)
    [wrong] = result.mismatched
    assert wrong.name == "multi_modal_projector.linear_1.weight" and wrong.expected.shape == (32, 48), result
    no_bias = compare(generated_expected({**config, "multimodal_projector_bias": False}, stored), stored)
    assert sorted(no_bias.unexpected) == ["multi_modal_projector.linear_1.bias", "multi_modal_projector.linear_2.bias"]
    fewer = {name: shape for name, shape in stored.items() if ".layers.1." not in name or "vision" in name}
    [count] = compare(generated_expected(config, fewer), fewer).counts
    assert count.group.field == "text_config.num_hidden_layers" and count.found == (0,), count
