"""Rule tables generated from transformers (issue 18, "No transformers import by default").

Folders written by transformers' own ``save_pretrained`` for families outside the hand-written
tables (ViT, PLBart, CamemBERT) are validated through ``hfconv/schemas/generated_rules.json``:
the same verdict as the transformers reference, with no transformers import and no reference
subprocess (an audit hook in the validating process records every subprocess it starts), and a
broken copy is still caught.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from hfconv.rules.compare import compare
from hfconv.rules.generated import generated_expected, generated_families

from helpers import config_of, stored_shapes, stored_state

pytestmark = pytest.mark.transformers

NAMED = ("vit", "plbart", "camembert")

_PROGRAM = """\
import atexit, json, sys
spawned = []
sys.addaudithook(lambda event, args: spawned.append(str(args[1])) if event == "subprocess.Popen" else None)
atexit.register(lambda: sys.stderr.write("\\nSTATE " + json.dumps({
    "spawned": spawned, "transformers": "transformers" in sys.modules, "torch": "torch" in sys.modules}) + "\\n"))
from hfconv.cli import run
run()
"""


@pytest.fixture(scope="module")
def saved(transformers, tmp_path_factory) -> Path:
    """Tiny folders as save_pretrained writes them, sizes chosen so no two fields coincide."""
    root = tmp_path_factory.mktemp("generated")
    t = transformers
    t.ViTForImageClassification(t.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32,
        patch_size=8, num_labels=3)).save_pretrained(root / "vit")
    t.PLBartForConditionalGeneration(t.PLBartConfig(
        vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=41, max_position_embeddings=64)
    ).save_pretrained(root / "plbart")
    t.CamembertForMaskedLM(t.CamembertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64)).save_pretrained(root / "camembert")
    return root


def hfconv_validate(folder: Path, cwd: Path) -> tuple[int, str, dict]:
    """(exit status, stdout, what the validating process imported and spawned)."""
    proc = subprocess.run([sys.executable, "-c", _PROGRAM, "validate", str(folder)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    state = json.loads(proc.stderr.rpartition("STATE ")[2])
    return proc.returncode, proc.stdout, state


@pytest.mark.parametrize("name", NAMED)
def test_good_folder_ok_without_transformers(saved: Path, tmp_path: Path, name: str) -> None:
    """validate says OK (exit 0) without importing transformers or torch and without starting the
    reference subprocess (before the generated tables, --reference auto started one: ~4 s)."""
    assert name in generated_families()
    status, out, state = hfconv_validate(saved / name, tmp_path)
    assert status == 0 and "OK: 0 error(s)" in out, out
    assert "HFC606" not in out and "HFC609" not in out, out
    assert state == {"spawned": [], "transformers": False, "torch": False}, state


@pytest.mark.parametrize("name", NAMED)
def test_generated_table_matches_every_tensor(saved: Path, name: str) -> None:
    """The table expects exactly the tensors save_pretrained wrote, with their shapes."""
    expected = generated_expected(config_of(saved / name))
    assert expected is not None and expected.source.startswith("rules generated from transformers")
    result = compare(expected, stored_shapes(saved / name))
    assert result.clean and result.matched == len(stored_shapes(saved / name)), result


@pytest.mark.parametrize(("name", "tensor", "change"), [
    ("vit", "vit.encoder.layer.1.intermediate.dense.weight", "transpose"),
    ("plbart", "model.decoder.layers.0.fc2.weight", "transpose"),
    ("camembert", "roberta.encoder.layer.0.attention.self.query.weight", "resize"),
    ("camembert", "roberta.encoder.layer.1.output.dense.weight", "transpose"),
])
def test_broken_copy_is_caught_by_the_table(saved: Path, tmp_path: Path, name: str, tensor: str, change: str) -> None:
    """A transposed (same bytes) or resized tensor is a shape mismatch of the generated table."""
    import torch

    folder = tmp_path / name
    shutil.copytree(saved / name, folder)
    state = stored_state(folder)
    state[tensor] = state[tensor].T.contiguous() if change == "transpose" else torch.zeros(
        state[tensor].shape[0] + 1, state[tensor].shape[1])
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    expected = generated_expected(config_of(folder))
    assert expected is not None
    result = compare(expected, stored_shapes(folder))
    assert [m.name for m in result.mismatched] == [tensor], result


def test_broken_copy_fails_validate(saved: Path, tmp_path: Path) -> None:
    """Through the command line: the transposed ViT weight is an error naming the tensor (the
    folder the table does not find clean is confirmed by the transformers reference)."""
    folder = tmp_path / "vit"
    shutil.copytree(saved / "vit", folder)
    state = stored_state(folder)
    name = "vit.encoder.layer.0.intermediate.dense.weight"
    state[name] = state[name].T.contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    status, out, _ = hfconv_validate(folder, tmp_path)
    assert status == 1 and "HFC601" in out and name in out, out


def test_table_answers_only_for_configs_like_those_it_was_fitted_on(saved: Path) -> None:
    """A field that changes the tensors and was not fitted (a boolean, a string) or an alias that
    disagrees with its field: no table answer (the transformers reference decides)."""
    vit = config_of(saved / "vit")
    assert generated_expected(vit) is not None
    # (a boolean that only drops tensors is their condition: test_a_boolean_that_drops_tensors_is_their_condition)
    assert generated_expected({**vit, "qkv_bias": False}) is not None
    assert generated_expected({**vit, "architectures": ["ViTForSomethingElse"]}) is None
    plbart = config_of(saved / "plbart")
    assert generated_expected({**plbart, "num_hidden_layers": plbart["encoder_layers"]}) is not None
    assert generated_expected({**plbart, "num_hidden_layers": plbart["encoder_layers"] + 1}) is None
    camembert = config_of(saved / "camembert")
    assert generated_expected({**camembert, "add_cross_attention": True}) is None
    # A size the class derives when absent (ViT's pooler_output_size = hidden_size) is derived.
    assert generated_expected({k: v for k, v in vit.items() if k != "pooler_output_size"}) is not None


# --- gpt-oss (MXFP4 on the Hub) and the fields probed rather than guarded -------------------------

GPT_OSS = Path(__file__).resolve().parent.parent / "fixtures" / "quantized" / "gpt_oss-mxfp4"


class _Header:
    def __init__(self, dtype: str, shape: list[int]) -> None:
        self.dtype, self.shape = dtype, tuple(shape)


def _headers(folder: Path) -> dict[str, _Header]:
    with safe_open(str(folder / "model.safetensors"), "np") as handle:
        return {name: _Header(handle.get_slice(name).get_dtype(), handle.get_slice(name).get_shape())
                for name in handle.keys()}


def _logical(config: dict, headers: dict[str, _Header]) -> dict[str, tuple[int, ...]]:
    """The stored tensors as the unquantized model holds them (hfconv's MXFP4 layout)."""
    from hfconv.rules.quantized import Scheme, expected_shapes, quantized_view, scheme_of

    scheme = scheme_of(config["quantization_config"])
    assert isinstance(scheme, Scheme)
    expected = generated_expected(config)
    view = quantized_view(scheme, headers, expected_shapes(expected, config))
    assert not view.issues, view.issues
    return dict(view.logical)


def test_gpt_oss_mxfp4_validates_without_transformers(tmp_path: Path) -> None:
    """gpt-oss (MXFP4, written by transformers): validate --reference auto takes its table, with
    no transformers import and no reference subprocess (before: ~4-11 s building the reference),
    and finds no shape problem."""
    assert "gpt_oss" in generated_families()
    status, out, state = hfconv_validate(GPT_OSS, tmp_path)
    assert status == 0 and "OK: 0 error(s), 0 warning(s)" in out, out
    assert not any(f"HFC6{n:02d}" in out for n in range(100)), out  # no shape or quantization finding
    assert state == {"spawned": [], "transformers": False, "torch": False}, state


def test_gpt_oss_table_matches_and_catches_broken_copies() -> None:
    """The table expects exactly the fixture's tensors (through the MXFP4 view); a transposed
    attention weight, a wrong expert count and an expert weight of the wrong width are mismatches."""
    config = config_of(GPT_OSS)
    headers = _headers(GPT_OSS)
    expected = generated_expected(config)
    assert expected is not None and expected.source.startswith("rules generated from transformers")
    result = compare(expected, _logical(config, headers))
    assert result.clean and result.matched == len(expected.tensors), result
    broken = dict(headers)
    k = "model.layers.1.self_attn.k_proj.weight"
    broken[k] = _Header("BF16", list(reversed(headers[k].shape)))
    for name in ("down_proj_blocks", "down_proj_scales"):  # expert 4 of 5: both parts, consistently
        stored = headers[f"model.layers.0.mlp.experts.{name}"]
        broken[f"model.layers.0.mlp.experts.{name}"] = _Header("U8", [5, *stored.shape[1:]])
    result = compare(expected, _logical(config, broken))
    assert sorted(m.name for m in result.mismatched) == sorted([k, "model.layers.0.mlp.experts.down_proj"]), result


def test_probed_fields_are_no_guards() -> None:
    """Activations, RoPE parameters, the sliding window and each probed kind of layer change no
    gpt-oss tensor: a config that sets them otherwise is still answered; a kind of layer not
    probed, or a guarded boolean changed, is not (the transformers reference decides)."""
    config = config_of(GPT_OSS)
    assert generated_expected({**config, "hidden_act": "gelu", "sliding_window": 4096,
                               "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
                               "layer_types": ["full_attention", "full_attention"]}) is not None
    assert generated_expected({**config, "layer_types": ["linear_attention", "full_attention"]}) is None
    assert generated_expected({**config, "tie_word_embeddings": True}) is None
    assert generated_expected({**config, "attention_bias": False}) is not None  # it only drops the biases


def test_a_boolean_that_drops_tensors_is_their_condition(transformers, tmp_path: Path) -> None:
    """ViT's qkv_bias=False drops the query/key/value biases and changes nothing else: the table
    answers for it (the biases are expected only with it true) instead of leaving it to the reference."""
    t = transformers
    folder = tmp_path / "vit"
    t.ViTForImageClassification(t.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32,
        patch_size=8, num_labels=3, qkv_bias=False)).save_pretrained(folder)
    expected = generated_expected(config_of(folder))
    assert expected is not None
    stored = stored_shapes(folder)
    assert not any(name.endswith("query.bias") for name in stored)
    assert compare(expected, stored).clean
    with_bias = {**config_of(folder), "qkv_bias": True}
    result = compare(generated_expected(with_bias), stored)
    assert len(result.missing) == 3 * 2 and all(n.endswith(("query.bias", "key.bias", "value.bias"))
                                                for n in result.missing), result
