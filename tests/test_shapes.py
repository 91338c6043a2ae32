"""Config-implied shapes (HFC6xx): the rule table, the comparison, the check, the transformers reference.

Every family of the rule table has a committed fixture under fixtures/families/ (built by
fixtures/make_family_fixtures.py) and three broken copies made here: one tensor with a wrong
shape, one tensor missing, one extra layer. When transformers is importable, the rule table is
compared with transformers' own models (built on the meta device) for every family and head,
and every fixture is loaded with ``from_pretrained``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hfconv import validate
from hfconv.findings import REGISTRY, Severity
from hfconv.rules.compare import compare, suggest_fix
from hfconv.rules.expected import expected_tensors, generic_expected
from hfconv.rules.expression import ConfigValueError, ExpressionError, Scope, parse_expression
from hfconv.rules.families import FAMILIES, KNOWN_EXTRAS

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FAMILY_DIR = FIXTURES / "families"
LLAMA_FOLDERS = sorted(p.name for p in FIXTURES.glob("llama-*") if p.is_dir())
BUFFER_FAMILIES = {"gpt2": "attn.bias", "gpt_neox": "rotary_emb.inv_freq", "bert": "embeddings.position_ids"}

sys.path.insert(0, str(FIXTURES))
from make_family_fixtures import CONFIGS  # noqa: E402


def shape_codes(path, **kwargs) -> list[str]:
    return sorted(f.code for f in validate(path, select=["HFC6"], **kwargs).findings)


def findings_of(path, **kwargs):
    return [f for f in validate(path, select=["HFC6"], **kwargs).findings]


def copy_with(tmp_path: Path, source: Path, *, config=None, state=None, name="m") -> Path:
    """A copy of ``source`` with config.json updated and/or the tensors replaced."""
    folder = tmp_path / name
    shutil.copytree(source, folder)
    if config is not None:
        data = json.loads((folder / "config.json").read_text())
        for key, value in config.items():
            if value is ...:
                data.pop(key, None)
            else:
                data[key] = value
        (folder / "config.json").write_text(json.dumps(data))
    if state is not None:
        for f in folder.glob("model*.safetensors"):
            f.unlink()
        for f in folder.glob("*.index.json"):
            f.unlink()
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def state_of(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _is_buffer(name: str) -> bool:
    return any(re.search(pattern, name) for pattern, _ in KNOWN_EXTRAS)


# --- the expression evaluator ---------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "hidden_size.bit_length()", "x[0]", "lambda: 1", "2 ** 64",
    "f'{x}'", "open('x')", "[1, 2]", "hidden_size if 1 else", "a := 1", "1.5 * hidden_size",
])
def test_evaluator_rejects_everything_outside_the_whitelist(text):
    with pytest.raises(ExpressionError):
        parse_expression(text)


def test_evaluator_computes_values_and_drivers():
    scope = Scope(FAMILIES["llama"], {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2})
    term = scope.evaluate("num_key_value_heads * head_dim")
    assert term.value == 16
    assert term.drivers == ("num_key_value_heads", "hidden_size", "num_attention_heads")
    assert term.text == "num_key_value_heads * head_dim" and term.numbers == "2 * 8"
    assert any("head_dim is not set" in n for n in term.notes)
    moe = Scope(FAMILIES["qwen2_moe"], {"mlp_only_layers": [3]})
    assert moe.evaluate("(i + 1) % 2 == 0 and not member(i, mlp_only_layers)", {"i": 1}).value is True
    assert moe.evaluate("(i + 1) % 2 == 0 and not member(i, mlp_only_layers)", {"i": 3}).value is False
    assert scope.evaluate("3 if attention_bias else 5").value == 5  # attention_bias defaults to false


def test_config_resolution_follows_transformers_defaults():
    # Qwen2: num_key_value_heads absent -> class default 32; null -> num_attention_heads.
    absent = Scope(FAMILIES["qwen2"], {"num_attention_heads": 4, "hidden_size": 32})
    null = Scope(FAMILIES["qwen2"], {"num_attention_heads": 4, "hidden_size": 32, "num_key_value_heads": None})
    assert absent.field("num_key_value_heads").value == 32
    assert null.field("num_key_value_heads").value == 4
    # Qwen3's head_dim defaults to 128, not hidden_size // heads; GPT-2's n_inner to 4 * n_embd.
    assert Scope(FAMILIES["qwen3"], {"hidden_size": 32, "num_attention_heads": 4}).field("head_dim").value == 128
    assert Scope(FAMILIES["gpt2"], {"n_embd": 8}).field("n_inner").value == 32
    assert Scope(FAMILIES["t5"], {"num_layers": 3}).field("num_decoder_layers").value == 3
    assert Scope(FAMILIES["t5"], {"feed_forward_proj": "gated-gelu"}).field("is_gated_act").value is True


def test_unusable_config_value_names_the_field():
    with pytest.raises(ConfigValueError) as info:
        expected_tensors({**CONFIGS["llama"], "hidden_size": "8"})
    assert "hidden_size" in info.value.fields


# --- the comparison, with plain shapes ------------------------------------------------------

def test_compare_tolerates_prefixes_buffers_and_tied_weights():
    config = CONFIGS["llama"]  # tie_word_embeddings: lm_head.weight may be absent
    model = expected_tensors(config)
    bare = {name.removeprefix("model."): t.shape for name, t in model.tensors.items() if not t.optional}
    bare["layers.0.self_attn.rotary_emb.inv_freq"] = (2,)
    result = compare(model, bare)
    assert result.clean, result
    assert [label for _, label in result.ignored] == [KNOWN_EXTRAS[0][1]]


def test_compare_reports_each_kind_of_difference():
    model = expected_tensors(CONFIGS["mistral"])
    actual = {name: t.shape for name, t in model.tensors.items()}
    actual["model.layers.0.self_attn.k_proj.weight"] = (8, 8)
    del actual["model.norm.weight"]
    actual["model.layers.0.self_attn.extra.weight"] = (3,)
    actual.update({name.replace("layers.1.", "layers.2."): shape for name, shape in list(actual.items())
                   if name.startswith("model.layers.1.")})
    result = compare(model, actual)
    assert [m.name for m in result.mismatched] == ["model.layers.0.self_attn.k_proj.weight"]
    assert result.mismatched[0].wrong_dims == (0,)
    assert result.missing == ("model.norm.weight",)
    assert result.unexpected == ("model.layers.0.self_attn.extra.weight",)
    assert [(c.group.field, c.found) for c in result.counts] == [("num_hidden_layers", (0, 1, 2))]


def test_suggest_fix_finds_the_one_field_that_explains_every_mismatch():
    config = CONFIGS["phi3"]  # fused qkv_proj: a sum, solved linearly
    stored = {name: t.shape for name, t in expected_tensors(config).tensors.items()}
    wrong = {**config, "num_key_value_heads": 2}
    model = expected_tensors(wrong)
    result = compare(model, stored)
    assert {m.name.split(".")[-2] for m in result.mismatched} == {"qkv_proj"}
    assert suggest_fix(wrong, model, result, stored) == {"num_key_value_heads": 1}


def test_generic_checks_for_unknown_architectures():
    config = {"model_type": "mamba", "vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 3}
    actual = {"backbone.embeddings.weight": (100, 8), "backbone.embed_tokens.weight": (90, 8),
              "lm_head.weight": (100, 8), "backbone.layers.0.mixer.A": (8, 4), "backbone.layers.1.mixer.A": (8, 4)}
    result = compare(generic_expected(config, actual), actual)
    assert [m.name for m in result.mismatched] == ["backbone.embed_tokens.weight"]
    assert [(c.group.expected, c.found) for c in result.counts] == [(3, (0, 1))]
    assert not result.unexpected and not result.missing


def test_generic_checks_tolerate_extra_embedding_rows():
    """Mllama stores vocab_size + 8 embedding rows, Moshi vocab_size + 1: without a model class
    more rows than vocab_size are no evidence of a defect; fewer rows are."""
    config = {"model_type": "mllama_text", "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2}
    actual = {"model.embed_tokens.weight": (520, 64), "lm_head.weight": (512, 64),
              "model.layers.0.a": (4,), "model.layers.1.a": (4,)}
    assert compare(generic_expected(config, actual), actual).clean
    actual["model.embed_tokens.weight"] = (500, 64)
    [mm] = compare(generic_expected(config, actual), actual).mismatched
    assert mm.name == "model.embed_tokens.weight" and mm.wrong_dims == (0,)


@pytest.mark.parametrize("config,actual,mismatched", [
    # RemBERT's input embeddings are input_embedding_size wide, not hidden_size.
    ({"model_type": "rembert", "vocab_size": 512, "hidden_size": 64, "input_embedding_size": 256},
     {"embeddings.word_embeddings.weight": (512, 256)}, []),
    # ELECTRA keeps its model under electra. (its model type) and embeds embedding_size wide.
    ({"model_type": "electra", "vocab_size": 512, "hidden_size": 64, "embedding_size": 32},
     {"electra.embeddings.word_embeddings.weight": (512, 32)}, []),
    ({"model_type": "electra", "vocab_size": 576, "hidden_size": 64, "embedding_size": 32},
     {"electra.embeddings.word_embeddings.weight": (512, 32)}, ["electra.embeddings.word_embeddings.weight"]),
    # BART-style models embed through model.shared.
    ({"model_type": "bart", "vocab_size": 576, "d_model": 64}, {"model.shared.weight": (512, 64)},
     ["model.shared.weight"]),
    # A vision-language model: the language model's vocabulary and width are in text_config.
    ({"model_type": "llava", "text_config": {"vocab_size": 576, "hidden_size": 64}},
     {"model.language_model.embed_tokens.weight": (512, 64)}, ["model.language_model.embed_tokens.weight"]),
    # OPT: model.decoder.embed_tokens, word_embed_proj_dim wide.
    ({"model_type": "opt", "vocab_size": 576, "hidden_size": 64, "word_embed_proj_dim": 32},
     {"model.decoder.embed_tokens.weight": (512, 32), "lm_head.weight": (576, 32)},
     ["model.decoder.embed_tokens.weight"]),
    # Marian with separate vocabularies: the decoder embeds decoder_vocab_size rows.
    ({"model_type": "marian", "vocab_size": 600, "decoder_vocab_size": 300, "d_model": 64},
     {"model.encoder.embed_tokens.weight": (600, 64), "model.decoder.embed_tokens.weight": (300, 64)}, []),
    # ... and with shared embeddings (the default) vocab_size rows, whatever decoder_vocab_size says.
    ({"model_type": "marian", "vocab_size": 512, "decoder_vocab_size": 58101, "d_model": 64},
     {"model.encoder.embed_tokens.weight": (512, 64), "model.decoder.embed_tokens.weight": (512, 64)}, []),
])
def test_generic_embedding_checks(config, actual, mismatched):
    result = compare(generic_expected(config, actual), actual)
    assert [m.name for m in result.mismatched] == mismatched


@pytest.mark.parametrize("config,names,want", [
    # BLOOM, GPTBigCode, MPT: the layer count is n_layer / n_layers, not num_hidden_layers.
    ({"model_type": "bloom", "n_layer": 3}, ["transformer.h.0.a", "transformer.h.1.a"], [(3, (0, 1))]),
    ({"model_type": "mpt", "n_layers": 1}, ["transformer.blocks.0.a", "transformer.blocks.1.a"], [(1, (0, 1))]),
    # OPT: model.decoder.layers; BART: an encoder and a decoder run.
    ({"model_type": "opt", "num_hidden_layers": 3}, ["model.decoder.layers.0.a", "model.decoder.layers.1.a"],
     [(3, (0, 1))]),
    ({"model_type": "bart", "encoder_layers": 2, "decoder_layers": 1},
     ["model.encoder.layers.0.a", "model.encoder.layers.1.a", "model.decoder.layers.0.a", "model.decoder.layers.1.a"],
     [(1, (0, 1))]),
    ({"model_type": "bart", "encoder_layers": 2, "decoder_layers": 2},
     ["model.encoder.layers.0.a", "model.encoder.layers.1.a", "model.decoder.layers.0.a", "model.decoder.layers.1.a"],
     []),
    # mT5/UMT5: num_layers, and num_decoder_layers (null: num_layers too).
    ({"model_type": "umt5", "num_layers": 3, "num_decoder_layers": None},
     ["encoder.block.0.a", "encoder.block.1.a", "decoder.block.0.a", "decoder.block.1.a"], [(3, (0, 1)), (3, (0, 1))]),
    # A vision-language model keeps the language model's depth in text_config.
    ({"model_type": "llava", "text_config": {"num_hidden_layers": 1}},
     ["model.language_model.layers.0.a", "model.language_model.layers.1.a"], [(1, (0, 1))]),
])
def test_generic_layer_count_aliases(config, names, want):
    actual = {n: (4,) for n in names}
    result = compare(generic_expected(config, actual), actual)
    assert [(c.group.expected, c.found) for c in result.counts] == want


def test_ignorable_tensors_are_not_counted_as_layers():
    """DeepSeek-V3 checkpoints keep the multi-token-prediction layer as model.layers.61 beside
    num_hidden_layers = 61; transformers declares it ignorable, so it is no extra layer."""
    from hfconv.rules.expected import CountGroup, Dim, ExpectedModel, ExpectedTensor

    tensors = {f"model.layers.{i}.w": ExpectedTensor(f"model.layers.{i}.w", (Dim(4),)) for i in range(2)}
    group = CountGroup(r"^model\.layers\.(\d+)\.", "model.layers.{n}", 2, "num_hidden_layers", "layers")
    actual = {name: (4,) for name in tensors} | {"model.layers.2.w": (4,)}
    plain = ExpectedModel(tensors, "x", None, "transformers", counts=(group,))
    assert [c.found for c in compare(plain, actual).counts] == [(0, 1, 2)]
    ignorable = ExpectedModel(tensors, "x", None, "transformers", counts=(group,),
                              allowed_extras=(r"model\.layers\.2.*",))
    result = compare(ignorable, actual)
    assert result.clean and [n for n, _ in result.ignored] == ["model.layers.2.w"]


# --- every family: a good fixture and three broken copies ----------------------------------

def test_every_family_has_a_fixture():
    assert sorted(CONFIGS) == sorted(FAMILIES)
    assert sorted(p.name for p in FAMILY_DIR.iterdir()) == sorted(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_fixture_is_clean(family):
    expected = ["HFC610"] if family in BUFFER_FAMILIES else []
    assert shape_codes(FAMILY_DIR / family) == expected
    assert validate(FAMILY_DIR / family).ok


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_wrong_shape(family, tmp_path):
    state = state_of(FAMILY_DIR / family)
    name = sorted(n for n, t in state.items() if ".0." in n and t.dim() == 2 and not _is_buffer(n))[0]
    state[name] = torch.cat([state[name], state[name][:1]])
    folder = copy_with(tmp_path, FAMILY_DIR / family, state=state)
    found = [f for f in findings_of(folder) if f.code != "HFC610"]
    assert [(f.code, f.tensor) for f in found] == [("HFC601", name)]
    assert found[0].file == "model.safetensors"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_missing_tensor(family, tmp_path):
    state = state_of(FAMILY_DIR / family)
    name = sorted(n for n in state if ".1." in n and not _is_buffer(n))[0]
    del state[name]
    folder = copy_with(tmp_path, FAMILY_DIR / family, state=state)
    found = [f for f in findings_of(folder) if f.code != "HFC610"]
    assert [f.code for f in found] == ["HFC602"]
    # bert stores TF-era LayerNorm.gamma/beta; the finding names what loaders expect (.weight/.bias).
    assert found[0].tensor == (name.replace("LayerNorm.beta", "LayerNorm.bias") if family == "bert" else name)
    assert found[0].severity is Severity.ERROR


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_extra_layer(family, tmp_path):
    state = state_of(FAMILY_DIR / family)
    stems = sorted({m.group(1) for n in state if (m := re.match(r"^(.*?\b(?:layers|h|layer|block)\.)\d+\.", n))})
    stem = stems[0]
    last = max(int(n[len(stem):].split(".")[0]) for n in state if n.startswith(stem))
    for n in [n for n in state if n.startswith(f"{stem}{last}.")]:
        state[n.replace(f"{stem}{last}.", f"{stem}{last + 1}.", 1)] = state[n].clone()
    folder = copy_with(tmp_path, FAMILY_DIR / family, state=state)
    found = [f for f in findings_of(folder) if f.code != "HFC610"]
    assert [f.code for f in found] == ["HFC604"]
    assert f"{last + 1} would be ignored" in found[0].message


@pytest.mark.parametrize("folder", LLAMA_FOLDERS)
def test_llama_fixtures_stay_clean(folder):
    assert shape_codes(FIXTURES / folder) == []


# --- messages and special cases -------------------------------------------------------------

def test_wrong_config_field_is_named_with_the_value_the_weights_fit(tmp_path):
    folder = copy_with(tmp_path, FIXTURES / "llama-safetensors", config={"num_key_value_heads": 4})
    found = findings_of(folder)
    assert [f.tensor for f in found] == [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in "kv"]
    assert found[0].message == (
        f"{found[0].tensor} has shape [16, 32] but config.json implies [32, 32]: dim 0 = num_key_value_heads * "
        "head_dim = 4 * 8 = 32; the weights fit num_key_value_heads = 2")


def test_untied_lm_head_missing(tmp_path):
    state = state_of(FIXTURES / "llama-safetensors")
    del state["lm_head.weight"]
    folder = copy_with(tmp_path, FIXTURES / "llama-safetensors", state=state)
    [found] = findings_of(folder)
    assert found.code == "HFC602" and found.tensor == "lm_head.weight"
    assert "tie_word_embeddings is false" in found.message


def test_base_model_checkpoint_under_a_causal_lm_config(tmp_path):
    state = {k.removeprefix("model."): v for k, v in state_of(FIXTURES / "llama-safetensors").items()}
    folder = copy_with(tmp_path, FIXTURES / "llama-safetensors", state=state)
    assert shape_codes(folder) == []
    del state["norm.weight"]
    folder = copy_with(tmp_path, FIXTURES / "llama-safetensors", state=state, name="m2")
    assert [(f.code, f.tensor) for f in findings_of(folder)] == [("HFC602", "norm.weight")]


def test_expert_count(tmp_path):
    state = state_of(FAMILY_DIR / "mixtral")
    for n in [n for n in state if ".experts.2." in n]:
        state[n.replace(".experts.2.", ".experts.3.")] = state[n].clone()
    folder = copy_with(tmp_path, FAMILY_DIR / "mixtral", state=state)
    [found] = findings_of(folder)
    assert found.code == "HFC604"
    assert found.message == ("weights hold 4 experts (model.layers.*.block_sparse_moe.experts.{0..3}) but config.json "
                             "num_local_experts is 3: expert 3 would be ignored")


def test_gpt2_transposed_conv1d(tmp_path):
    state = state_of(FAMILY_DIR / "gpt2")
    state["h.0.mlp.c_fc.weight"] = state["h.0.mlp.c_fc.weight"].T.contiguous()
    folder = copy_with(tmp_path, FAMILY_DIR / "gpt2", state=state)
    [found] = [f for f in findings_of(folder) if f.code == "HFC601"]
    assert found.tensor == "h.0.mlp.c_fc.weight"
    assert "[32, 8] but config.json implies [8, 32]" in found.message
    assert "the stored shape is the expected one transposed" in found.message


def test_some_tensors_in_another_dtype(tmp_path):
    state = {k: v.to(torch.bfloat16) for k, v in state_of(FIXTURES / "llama-safetensors").items()}
    state["model.norm.weight"] = state["model.norm.weight"].float()
    folder = copy_with(tmp_path, FIXTURES / "llama-safetensors", state=state, config={"torch_dtype": "bfloat16"})
    [found] = findings_of(folder)
    assert (found.code, found.severity, found.tensor) == ("HFC605", Severity.INFO, "model.norm.weight")
    assert found.message.startswith("1 of 21 tensors are F32 but config.json torch_dtype is bfloat16")


def test_quantized_folder_is_not_flooded(tmp_path):
    folder = copy_with(tmp_path, FIXTURES / "llama-safetensors",
                       config={"quantization_config": {"quant_method": "gptq", "bits": 4}, "hidden_size": 64})
    assert shape_codes(folder) == ["HFC625"]  # one finding: no weight is quantized as the config says


def test_adapter_folder(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": "meta-llama/Llama-3.1-8B", "r": 8}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 32)},
              str(folder / "adapter_model.safetensors"))
    [found] = findings_of(folder)
    assert found.code == "HFC608"
    assert "(LORA) for meta-llama/Llama-3.1-8B" in found.message


def test_unknown_architecture_with_rules_only(tmp_path):
    state = state_of(FIXTURES / "llama-safetensors")
    state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"][:100].contiguous()
    folder = copy_with(tmp_path, FIXTURES / "llama-safetensors", state=state,
                       config={"model_type": "mystery", "architectures": ["MysteryForCausalLM"],
                               "num_hidden_layers": 5})
    found = findings_of(folder, reference="rules")
    assert sorted(f.code for f in found) == ["HFC601", "HFC604", "HFC606"]
    mismatch = next(f for f in found if f.code == "HFC601")
    assert mismatch.tensor == "model.embed_tokens.weight" and "dim 0 = vocab_size = 200" in mismatch.message


def test_unknown_head_checks_the_base_model(tmp_path):
    state = state_of(FIXTURES / "llama-safetensors")
    del state["lm_head.weight"]
    state["qa_outputs.weight"] = torch.zeros(2, 32)
    folder = copy_with(tmp_path, FIXTURES / "llama-safetensors", state=state,
                       config={"architectures": ["LlamaForQuestionAnswering"]})
    assert shape_codes(folder, reference="rules") == ["HFC606"]


def test_unknown_head_nesting_the_base_model_under_its_own_attribute(tmp_path):
    """A head the table does not know may keep the base model under an attribute of its own
    (as T5ForSequenceClassification keeps it under transformer.): its tensors are still matched."""
    state = {"transformer." + k: v for k, v in state_of(FAMILY_DIR / "t5").items()}
    state["scorer.weight"] = torch.zeros(2, 8)
    folder = copy_with(tmp_path, FAMILY_DIR / "t5", state=state, config={"architectures": ["T5ForRanking"]})
    assert shape_codes(folder, reference="rules") == ["HFC606"]
    key = next(k for k in state if k.endswith("SelfAttention.q.weight"))
    state[key] = torch.zeros(3, 8)
    folder = copy_with(tmp_path, FAMILY_DIR / "t5", state=state, config={"architectures": ["T5ForRanking"]},
                       name="broken")
    [mismatch] = [f for f in findings_of(folder, reference="rules") if f.code == "HFC601"]
    assert mismatch.tensor == key


def test_unusable_config_value(tmp_path):
    folder = copy_with(tmp_path, FIXTURES / "llama-safetensors", config={"num_attention_heads": "4"})
    [found] = findings_of(folder, reference="rules")
    assert (found.code, found.tensor, found.file) == ("HFC611", "num_attention_heads", "config.json")


def test_absurd_counts_are_refused_not_expanded(tmp_path):
    folder = copy_with(tmp_path, FIXTURES / "llama-safetensors", config={"num_hidden_layers": 10**9})
    [found] = findings_of(folder, reference="rules")
    assert (found.code, found.tensor) == ("HFC611", "num_hidden_layers")
    folder = copy_with(tmp_path, FAMILY_DIR / "mixtral", config={"num_local_experts": 60_000, "num_hidden_layers": 4},
                       name="m2")
    [found] = findings_of(folder, reference="rules")
    assert found.code == "HFC611" and "more than hfconv checks" in found.message


def test_unreadable_shard_does_not_flood_missing_tensors(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "llama-safetensors-sharded", folder)
    (folder / "model-00002-of-00003.safetensors").write_bytes(b"\x00" * 4)
    assert shape_codes(folder) == []


def test_codes_are_registered_with_docs():
    for code in ("HFC601", "HFC602", "HFC603", "HFC604", "HFC605", "HFC606", "HFC607", "HFC608", "HFC609",
                 "HFC610", "HFC611"):
        entry = REGISTRY[code]
        assert entry.title and entry.why and entry.fix and entry.example


def test_rules_never_import_transformers():
    code = ("import sys, hfconv\n"
            "for family in ('mixtral', 't5'):\n"
            f"    hfconv.validate({str(FAMILY_DIR)!r} + '/' + family, reference='rules')\n"
            f"    hfconv.validate({str(FAMILY_DIR)!r} + '/' + family, reference='auto')\n"
            "assert 'transformers' not in sys.modules, 'transformers was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_fixture_generator_is_deterministic(tmp_path):
    import make_family_fixtures

    make_family_fixtures.build(tmp_path)
    for family in FAMILIES:
        for name in ("config.json", "model.safetensors"):
            assert (tmp_path / family / name).read_bytes() == (FAMILY_DIR / family / name).read_bytes(), (family, name)


# --- transformers as the reference ----------------------------------------------------------


def _heads():
    for family in sorted(CONFIGS):
        for suffix in FAMILIES[family].heads:
            yield family, FAMILIES[family].class_prefix + suffix


VARIANTS = {
    # Config flags that switch rules on or off, beyond the fixtures' values.
    "llama-biases-no-head-dim": ("llama", {"attention_bias": True, "mlp_bias": True, "head_dim": ...,
                                           "tie_word_embeddings": False}),
    "llama-no-kv-heads": ("llama", {"num_key_value_heads": None}),
    "qwen2-no-kv-heads": ("qwen2", {"num_key_value_heads": ...}),
    "qwen3-bias-default-head-dim": ("qwen3", {"attention_bias": True, "head_dim": ...}),
    "mistral-head-dim": ("mistral", {"head_dim": 8}),
    "qwen2_moe-dense-layers": ("qwen2_moe", {"mlp_only_layers": [1], "num_hidden_layers": 3, "qkv_bias": False}),
    "qwen2_moe-sparse-step": ("qwen2_moe", {"decoder_sparse_step": 2, "num_hidden_layers": 4}),
    "mixtral-num_experts-alias": ("mixtral", {"num_local_experts": ..., "num_experts": 2}),
    "gemma-untied-biases": ("gemma", {"tie_word_embeddings": False, "attention_bias": True}),
    "phi3-mha": ("phi3", {"num_key_value_heads": ...}),
    "falcon-40b": ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
    "falcon-40b-one-ln": ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2,
                                     "num_ln_in_parallel_attn": 1}),
    "falcon-rw": ("falcon", {"multi_query": False, "parallel_attn": False, "bias": True, "alibi": True}),
    "falcon-ffn-untied": ("falcon", {"ffn_hidden_size": 12, "tie_word_embeddings": False}),
    "gpt2-cross-attention": ("gpt2", {"add_cross_attention": True, "n_inner": 12}),
    "gpt_neox-no-bias-tied": ("gpt_neox", {"attention_bias": False, "tie_word_embeddings": True}),
    "t5-gated-decoder-layers": ("t5", {"feed_forward_proj": "gated-gelu", "num_decoder_layers": 3}),
    "bert-3-labels": ("bert", {"architectures": ["BertForSequenceClassification"],
                               "id2label": {"0": "a", "1": "b", "2": "c"}}),
    "bert-cross-attention": ("bert", {"architectures": ["BertLMHeadModel"], "is_decoder": True,
                                      "add_cross_attention": True}),
    "roberta-5-labels": ("roberta", {"architectures": ["RobertaForSequenceClassification"], "num_labels": 5}),
}


def _config(family: str, changes: dict, architecture: str | None = None) -> dict:
    config = dict(CONFIGS[family])
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    if architecture:
        config["architectures"] = [architecture]
    return config


def _assert_agree(config: dict):
    from hfconv.rules.transformers_reference import expected_from_transformers

    rules = expected_tensors(config)
    ref = expected_from_transformers("/nonexistent", config)
    assert rules.complete
    rule_shapes = {k: t.shape for k, t in rules.tensors.items()}
    ref_shapes = {k: t.shape for k, t in ref.tensors.items()}
    # Same names and shapes; the table may tolerate a few more (optional leftovers such as
    # bert-base-uncased's pooler beside the masked-LM head), never require them.
    assert {k: rule_shapes[k] for k in ref_shapes if k in rule_shapes} == ref_shapes
    assert all(rules.tensors[k].optional for k in set(rule_shapes) - set(ref_shapes))
    required = {k for k, t in rules.tensors.items() if not t.optional}
    ref_required = {k for k, t in ref.tensors.items() if not t.optional}
    assert required == ref_required
    assert {(c.pattern, c.expected) for c in ref.counts} <= {(c.pattern, c.expected) for c in rules.counts}


@pytest.mark.transformers
@pytest.mark.parametrize("family,architecture", list(_heads()))
def test_rule_table_agrees_with_transformers(transformers, family, architecture):
    _assert_agree(_config(family, {}, architecture))


@pytest.mark.transformers
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rule_table_agrees_with_transformers_on_variants(transformers, variant):
    family, changes = VARIANTS[variant]
    _assert_agree(_config(family, changes))


@pytest.mark.transformers
def test_t5_untied_lm_head(transformers):
    """flan-t5 configs say tie_word_embeddings false: lm_head.weight is stored and required.
    transformers 5 ties T5's lm_head regardless (T5Config forces tie_word_embeddings=True), so
    there only the optional flag differs."""
    from hfconv.rules.transformers_reference import expected_from_transformers

    config = _config("t5", {"tie_word_embeddings": False, "feed_forward_proj": "gated-gelu"})
    rules = expected_tensors(config)
    ref = expected_from_transformers("/nonexistent", config)
    assert {k: t.shape for k, t in rules.tensors.items() if k in ref.tensors} == \
        {k: t.shape for k, t in ref.tensors.items()}
    assert not rules.tensors["lm_head.weight"].optional
    if int(transformers.__version__.split(".")[0]) < 5:
        assert not ref.tensors["lm_head.weight"].optional


@pytest.mark.transformers
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_fixture_loads_in_transformers(transformers, family):
    folder = FAMILY_DIR / family
    cls = getattr(transformers, CONFIGS[family]["architectures"][0])
    _, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["mismatched_keys"]
    tolerated = {k for k, t in expected_tensors(CONFIGS[family]).tensors.items() if t.optional}
    assert {k for k in info["unexpected_keys"] if not _is_buffer(k)} <= tolerated


@pytest.mark.transformers
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_transformers_reference_gives_the_same_findings(transformers, family, tmp_path):
    assert shape_codes(FAMILY_DIR / family, reference="transformers") == shape_codes(FAMILY_DIR / family)
    state = state_of(FAMILY_DIR / family)
    name = sorted(n for n, t in state.items() if ".0." in n and t.dim() == 2 and not _is_buffer(n))[0]
    state[name] = torch.cat([state[name], state[name][:1]])
    del state[sorted(n for n in state if ".1." in n and not _is_buffer(n))[0]]
    folder = copy_with(tmp_path, FAMILY_DIR / family, state=state)
    assert shape_codes(folder, reference="transformers") == shape_codes(folder, reference="rules")
    [mismatch] = [f for f in findings_of(folder, reference="transformers") if f.code == "HFC601"]
    assert f"(per transformers {transformers.__version__}" in mismatch.message


@pytest.mark.transformers
def test_auto_uses_transformers_for_families_outside_the_table(transformers, tmp_path):
    config = transformers.OPTConfig(vocab_size=32, hidden_size=8, num_hidden_layers=2, ffn_dim=16,
                                    num_attention_heads=2, max_position_embeddings=16, word_embed_proj_dim=8)
    model = transformers.OPTForCausalLM(config)
    model.save_pretrained(tmp_path / "opt")
    assert shape_codes(tmp_path / "opt") == []
    assert shape_codes(tmp_path / "opt", reference="rules") == ["HFC606"]
    state = state_of(tmp_path / "opt")
    state["model.decoder.layers.1.fc1.weight"] = torch.zeros(12, 8)
    folder = copy_with(tmp_path, tmp_path / "opt", state=state, name="broken")
    [found] = findings_of(folder)
    assert (found.code, found.tensor) == ("HFC601", "model.decoder.layers.1.fc1.weight")
    assert "dim 0 = 16 (config.json fields with that value: ffn_dim, max_position_embeddings)" in found.message


@pytest.mark.transformers
def test_transformers_reference_counts_layers_when_config_says_one(transformers, tmp_path):
    """A config cut to 1 layer over weights with 2: the extra layer is a count error (HFC604), not
    one HFC603 warning per tensor. The reference model has a single layer, so the layer run is
    recognised from one module under a layer-stack name."""
    config = transformers.OPTConfig(vocab_size=32, hidden_size=8, num_hidden_layers=2, ffn_dim=16,
                                    num_attention_heads=2, max_position_embeddings=16, word_embed_proj_dim=8)
    transformers.OPTForCausalLM(config).save_pretrained(tmp_path / "opt")
    folder = copy_with(tmp_path, tmp_path / "opt", config={"num_hidden_layers": 1}, name="cut")
    found = findings_of(folder)
    assert [f.code for f in found] == ["HFC604"], [(f.code, f.message) for f in found]
    assert "num_hidden_layers is 1" in found[0].message
    from hfconv.rules.expected import infer_counts

    # A lone numbered module that is not a layer stack is not taken for one.
    assert infer_counts(["model.vision_tower.0.weight"], {"num_hidden_layers": 1}) == ()


@pytest.mark.transformers
def test_transformers_reference_counts_the_layers_of_sub_configs(transformers, tmp_path):
    """A vision-language model keeps its language model's depth in text_config.num_hidden_layers:
    a wrong value there is a count error (HFC604) naming that field, not a warning per tensor."""
    text = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, max_position_embeddings=32)
    vision = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=28, patch_size=14)
    config = transformers.LlavaConfig(text_config=text, vision_config=vision, image_token_index=63,
                                      vision_feature_layer=-1)
    transformers.LlavaForConditionalGeneration(config).save_pretrained(tmp_path / "llava")
    assert shape_codes(tmp_path / "llava") == []
    data = json.loads((tmp_path / "llava" / "config.json").read_text())
    data["text_config"]["num_hidden_layers"] = 1
    folder = copy_with(tmp_path, tmp_path / "llava", config={"text_config": data["text_config"]}, name="cut")
    found = findings_of(folder)
    assert [f.code for f in found] == ["HFC604"], [(f.code, f.message) for f in found]
    assert "text_config.num_hidden_layers is 1" in found[0].message


@pytest.mark.transformers
def test_config_transformers_refuses_is_an_error(transformers, tmp_path):
    """Qwen2Config checks layer_types against num_hidden_layers: a config it refuses does not load
    (from_pretrained raises), so the transformers reference reports it as HFC611, not as unavailable."""
    config = transformers.Qwen2Config(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen2")
    assert shape_codes(tmp_path / "qwen2", reference="transformers") == []
    folder = copy_with(tmp_path, tmp_path / "qwen2", config={"num_hidden_layers": 3}, name="bad")
    [found] = findings_of(folder, reference="transformers")
    assert found.code == "HFC611" and found.severity == Severity.ERROR
    assert "from_pretrained fails" in found.message and "layer_types" in found.message


@pytest.mark.transformers
def test_model_class_that_refuses_its_config_is_an_error(transformers, tmp_path):
    """DiffLlama's model class (not its config class) needs an even num_key_value_heads: with 1,
    from_pretrained raises, so --reference auto reports HFC611 instead of falling back to an info."""
    config = transformers.DiffLlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    transformers.DiffLlamaForCausalLM(config).save_pretrained(tmp_path / "diffllama")
    assert shape_codes(tmp_path / "diffllama") == []
    folder = copy_with(tmp_path, tmp_path / "diffllama", config={"num_key_value_heads": 1}, name="odd")
    [found] = findings_of(folder)
    assert found.code == "HFC611" and "DiffLlamaForCausalLM" in found.message, found.message
    # With its own code (auto_map) the folder loads through that code: the built-in refusal is a reason.
    folder = copy_with(tmp_path, folder, config={"auto_map": {"AutoConfig": "configuration_x.XConfig"}}, name="code")
    assert shape_codes(folder) == ["HFC609"]


@pytest.mark.transformers
def test_reference_failure_is_an_info_finding(transformers, tmp_path, monkeypatch):
    folder = copy_with(tmp_path, FAMILY_DIR / "mistral", config={"model_type": "no_such_model"})
    found = findings_of(folder, reference="transformers")
    assert [f.code for f in found] == ["HFC609"]
    assert "does not know model_type 'no_such_model'" in found[0].message
    from hfconv.rules import transformers_reference

    monkeypatch.setattr(transformers_reference, "transformers_available", lambda: False)
    found = findings_of(FAMILY_DIR / "mistral", reference="transformers")
    assert [f.code for f in found] == ["HFC609"]
    assert "transformers is not installed" in found[0].message and "rule table instead" in found[0].message


@pytest.mark.transformers
def test_custom_code_is_not_imported_without_trust(transformers, tmp_path):
    folder = copy_with(tmp_path, FAMILY_DIR / "llama", config={
        "model_type": "my_custom", "architectures": ["MyCustomForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyForCausalLM"}})
    (folder / "modeling_my.py").write_text("raise SystemExit('custom code ran')\n")
    (folder / "configuration_my.py").write_text("raise SystemExit('custom code ran')\n")
    found = findings_of(folder)
    assert [f.code for f in found] == ["HFC609"]
    assert found[0].message.startswith("reference='auto': ")  # the library names its keywords, the CLI its flags
    assert "only used with trust_remote_code=True" in found[0].message
    assert found[0].message.endswith("; only embedding sizes and the layer count were checked")


def _longcat_folder(tmp_path: Path, num_layers: int) -> Path:
    """A LongCat-Flash folder as save_pretrained writes it: num_layers decoder layers (two
    sublayers each) stored, and num_hidden_layers = 2 * num_layers in config.json."""
    folder = tmp_path / f"longcat-{num_layers}"
    folder.mkdir()
    config = {"architectures": ["LongcatFlashForCausalLM"], "model_type": "longcat_flash", "vocab_size": 32,
              "hidden_size": 8, "num_layers": num_layers, "num_hidden_layers": 4, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {"model.embed_tokens.weight": torch.zeros(32, 8), "lm_head.weight": torch.zeros(32, 8)}
    for i in range(2):
        tensors[f"model.layers.{i}.input_layernorm.0.weight"] = torch.zeros(8)
        tensors[f"model.layers.{i}.input_layernorm.1.weight"] = torch.zeros(8)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("layers", [{"num_hidden_layers": 10**30}, {"encoder_layers": 10**30, "num_hidden_layers": 2},
                                    {"decoder_layers": 70_000}, {"encoder_layers": -1}])
def test_generic_absurd_layer_counts_are_refused_not_expanded(tmp_path, layers):
    """config.json is untrusted: a count the generic checks would range() over is HFC611, not
    a MemoryError (or the OOM killer)."""
    [found] = [f for f in validate(_encoder_decoder_folder(tmp_path, "m", **layers), reference="rules").findings
               if f.code.startswith("HFC6") and f.code != "HFC606"]
    assert found.code == "HFC611" and found.tensor in layers


def test_generic_layer_count_longcat_flash_counts_num_layers(tmp_path):
    good = validate(_longcat_folder(tmp_path, 2), reference="rules")
    assert not [f for f in good.findings if f.code == "HFC604"]
    bad = validate(_longcat_folder(tmp_path, 3), reference="rules")
    assert [f.message for f in bad.findings if f.code == "HFC604"] == [
        "weights hold 2 layers (model.layers.{0..1}) but config.json num_layers is 3: layer 2 would stay "
        "randomly initialised"]


def _encoder_decoder_folder(tmp_path: Path, name: str, **layers: int) -> Path:
    """A BART-like folder (not in the rule table: generic checks) with two encoder and two
    decoder layers stored."""
    folder = tmp_path / name
    folder.mkdir()
    config = {"architectures": ["BartForConditionalGeneration"], "model_type": "bart", "vocab_size": 32,
              "d_model": 8, "encoder_layers": 2, "decoder_layers": 2, "num_hidden_layers": 2, **layers}
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {"model.shared.weight": torch.zeros(32, 8)}
    for side in ("encoder", "decoder"):
        for i in range(2):
            tensors[f"model.{side}.layers.{i}.fc1.weight"] = torch.zeros(16, 8)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("layers, message", [
    ({}, None),
    ({"num_hidden_layers": 3}, "weights hold 2 layers (model.encoder.layers.{0..1}) but config.json num_hidden_layers "
                               "is 3: layer 2 would stay randomly initialised in transformers 5, which builds "
                               "num_hidden_layers encoder layers (4.x builds encoder_layers = 2); set both to 2"),
    ({"num_hidden_layers": 1}, "weights hold 2 layers (model.encoder.layers.{0..1}) but config.json num_hidden_layers "
                               "is 1: layer 1 would be ignored in transformers 5, which builds num_hidden_layers "
                               "encoder layers (4.x builds encoder_layers = 2); set both to 2"),
    ({"encoder_layers": 3, "num_hidden_layers": 3}, "weights hold 2 layers (model.encoder.layers.{0..1}) but "
                                                    "config.json encoder_layers is 3: layer 2 would stay randomly "
                                                    "initialised"),
])
def test_generic_encoder_layers_alias_num_hidden_layers(tmp_path, layers, message):
    """num_hidden_layers is encoder_layers' alias in BART-like configs: transformers 5 builds that
    many encoder layers when the two differ (4.x built encoder_layers), so both must match."""
    report = validate(_encoder_decoder_folder(tmp_path, "m", **layers), reference="rules")
    assert [f.message for f in report.findings if f.code == "HFC604"] == ([message] if message else [])
