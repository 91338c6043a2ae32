"""Quantized folders are checked, not skipped (issue 18).

Each scheme has a tiny real folder in ``fixtures/quantized/`` (``fixtures/make_quantized_fixtures.py``
says which library wrote which) and three broken copies made here: the main weight stored as if
the layer were transposed, a scale of the wrong shape, a scale deleted. Every folder goes through
the CLI in one subprocess (``hfconv validate A B C ... --format json``) to keep the suite fast.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import copy_quantized, validate_many

ROOT = Path(__file__).resolve().parent.parent
QUANTIZED = ROOT / "fixtures" / "quantized"

Tensors = dict[str, torch.Tensor]

_P = "model.layers.0."


def _zeros(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(shape, dtype=like.dtype)


def _reshape(name: str, shape: Callable[[tuple[int, ...]], tuple[int, ...]]) -> Callable[[Tensors], None]:
    def change(t: Tensors) -> None:
        t[name] = _zeros(shape(tuple(t[name].shape)), t[name])
    return change


def _delete(name: str) -> Callable[[Tensors], None]:
    def change(t: Tensors) -> None:
        del t[name]
    return change


def _packed_transposed(name: str, rows_packed: bool) -> Callable[[Tensors], None]:
    """A packed weight as the layer transposed would pack: [in/8, out] -> [out/8, in] (GPTQ rows),
    [in, out/8] -> [out, in/8] (AWQ, compressed-tensors columns)."""
    def change(t: Tensors) -> None:
        rows, cols = t[name].shape
        shape = (cols // 8, rows * 8) if rows_packed else (cols * 8, rows // 8)
        t[name] = _zeros(shape, t[name])
    return change


def _bnb4_other_size(t: Tensors) -> None:
    # q_proj [32, 32] packed into 512 bytes; store up_proj's [64, 32] packing instead.
    t[_P + "self_attn.q_proj.weight"] = t[_P + "mlp.up_proj.weight"].clone()


_T = lambda s: (s[1], s[0])  # noqa: E731
_MORE_ROWS = lambda s: (s[0] + 1, *s[1:])  # noqa: E731
_MORE_COLS = lambda s: (s[0], s[1] + 1)  # noqa: E731

DOWN = _P + "mlp.down_proj."
EXPERT = "model.layers.1.mlp.experts.2.down_proj."
# folder -> {defect: (change, codes expected)}
BROKEN: dict[str, dict[str, tuple[Callable[[Tensors], None], list[str]]]] = {
    "deepseek_v3-fp8": {
        "transposed": (_reshape(EXPERT + "weight", _T), ["HFC601"]),
        "scale_shape": (_reshape(EXPERT + "weight_scale_inv", _MORE_ROWS), ["HFC619"]),
        "scale_missing": (_delete(EXPERT + "weight_scale_inv"), ["HFC618"]),
    },
    "llama-gptq": {
        "transposed": (_packed_transposed(DOWN + "qweight", rows_packed=True), ["HFC601"]),
        "scale_shape": (_reshape(DOWN + "scales", _MORE_ROWS), ["HFC619"]),
        "scale_missing": (_delete(DOWN + "scales"), ["HFC618"]),
    },
    "llama-awq": {
        "transposed": (_packed_transposed(DOWN + "qweight", rows_packed=False), ["HFC601"]),
        "scale_shape": (_reshape(DOWN + "qzeros", _MORE_COLS), ["HFC619"]),
        "scale_missing": (_delete(DOWN + "scales"), ["HFC618"]),
    },
    "llama-bnb-4bit": {
        "transposed": (_bnb4_other_size, ["HFC624"]),  # a transposed packing has the same shape: a resized one
        "scale_shape": (_reshape(DOWN + "weight.absmax", lambda s: (s[0] * 3 + 1,)), ["HFC619"]),
        "scale_missing": (_delete(DOWN + "weight.absmax"), ["HFC618"]),
    },
    "llama-bnb-8bit": {
        "transposed": (_reshape(DOWN + "weight", _T), ["HFC601"]),
        "scale_shape": (_reshape(DOWN + "SCB", _MORE_ROWS), ["HFC619"]),
        "scale_missing": (_delete(DOWN + "SCB"), ["HFC618"]),
    },
    "llama-ct-w4a16": {
        "transposed": (_packed_transposed(DOWN + "weight_packed", rows_packed=False), ["HFC601"]),
        "scale_shape": (_reshape(DOWN + "weight_scale", _MORE_COLS), ["HFC619"]),
        "scale_missing": (_delete(DOWN + "weight_scale"), ["HFC618"]),
    },
    "llama-ct-fp8": {
        "transposed": (_reshape(DOWN + "weight", _T), ["HFC601"]),
        "scale_shape": (_reshape(DOWN + "weight_scale", _MORE_ROWS), ["HFC619"]),
        "scale_missing": (_delete(DOWN + "weight_scale"), ["HFC618"]),
    },
    "llama-ct-w8a8": {
        "transposed": (_reshape(DOWN + "weight", _T), ["HFC601"]),
        "scale_shape": (_reshape(DOWN + "weight_scale", _MORE_ROWS), ["HFC619"]),
        "scale_missing": (_delete(DOWN + "weight_scale"), ["HFC618"]),
    },
}
ALL = sorted(p.name for p in QUANTIZED.iterdir() if p.is_dir())
GOOD = [name for name in ALL if name != "gpt_oss-mxfp4"]
"""gpt_oss has no rule table: its reference is transformers' model, built in a subprocess (about 10 s
here), so test_quantized_schemes2 checks it with --reference rules (config.json's sizes)."""
SHAPE_CODES = ("HFC6",)


def _copy(tmp: Path, folder: str, name: str, change: Callable[[Tensors], None] | None = None,
          quant: dict | None = None) -> Path:
    """A copy with ``change`` applied to its tensors, and ``quant`` as its quantization_config."""
    return copy_quantized(tmp, folder, name, change, None if quant is None else lambda q: (q.clear(), q.update(quant)))


def _plain_extra_layer(t: Tensors) -> None:
    """The MTP layer of the DeepSeek-V3 fixture without the tensors only it holds: a plain layer."""
    for name in [n for n in t if n.startswith("model.layers.3.")]:
        if name.endswith((".enorm.weight", ".hnorm.weight", ".eh_proj.weight", ".eh_proj.weight_scale_inv")) \
                or ".shared_head." in name or name.endswith(".embed_tokens.weight"):
            del t[name]


def _router_bias_f32(t: Tensors) -> None:
    for name in [n for n in t if n.endswith("e_score_correction_bias")]:
        t[name] = t[name].float()


def _norm_f32_too(t: Tensors) -> None:
    _router_bias_f32(t)
    t["model.norm.weight"] = t["model.norm.weight"].float()


# name -> (source folder, change, quantization_config): more cases for the one CLI run.
EXTRA: dict[str, tuple[str, Callable[[Tensors], None] | None, dict | None]] = {
    "hqq": ("llama-gptq", None, {"quant_method": "hqq"}),
    "bits": ("llama-gptq", None, {"quant_method": "gptq", "bits": 5, "group_size": 16}),
    "blocks": ("deepseek_v3-fp8", None, {"quant_method": "fp8", "weight_block_size": [0, 16]}),
    "none": ("deepseek_v3", None, {"quant_method": "fp8", "weight_block_size": [16, 16]}),
    "plain-extra": ("deepseek_v3-fp8", _plain_extra_layer, None),
    "published": ("deepseek_v3", _router_bias_f32, None),
    "fp8-weight-bf16": ("deepseek_v3-fp8", lambda t: t.update({EXPERT + "weight": t[EXPERT + "weight"].bfloat16()}),
                        None),
    "fp8-weight-gone": ("deepseek_v3-fp8", lambda t: t.pop(EXPERT + "weight"), None),
    "fp8-not-converted": ("deepseek_v3-fp8", None, {"activation_scheme": "dynamic", "fmt": "e4m3",
                                                    "quant_method": "fp8", "weight_block_size": [16, 16],
                                                    "modules_to_not_convert": ["lm_head", EXPERT[:-1]]}),
    "norm-too": ("deepseek_v3", _norm_f32_too, None),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Every good folder and every broken copy, validated in one CLI run."""
    tmp = tmp_path_factory.mktemp("quantized")
    folders = [QUANTIZED / name for name in GOOD]
    for folder, defects in BROKEN.items():
        for defect, (change, _) in defects.items():
            folders.append(_copy(tmp, folder, f"{folder}--{defect}", change))
    for name, (folder, change, quant) in EXTRA.items():
        folders.append(_copy(tmp, folder, name, change, quant))
    return validate_many(folders)


@pytest.mark.parametrize("folder", GOOD)
def test_good_quantized_folder_has_no_shape_finding(results: dict[str, list[dict]], folder: str) -> None:
    found = [(f["code"], f["message"]) for f in results[folder]
             if f["code"].startswith(SHAPE_CODES) and f["code"] != "HFC610"]
    assert found == []
    assert not any(f["severity"] == "error" for f in results[folder])


@pytest.mark.parametrize("case", [f"{folder}--{defect}" for folder, d in BROKEN.items() for defect in d])
def test_broken_quantized_folder_is_an_error(results: dict[str, list[dict]], case: str) -> None:
    folder, defect = case.split("--")
    want = BROKEN[folder][defect][1]
    found = [f for f in results[case] if f["code"].startswith(SHAPE_CODES) and f["code"] != "HFC610"]
    assert [f["code"] for f in found] == want, found
    assert found[0]["severity"] == "error"
    assert found[0]["tensor"] and found[0]["tensor"].split(".")[-1] not in ("", "weight_shape")
    assert found[0]["file"] == "model.safetensors"


def test_fp8_transposed_expert_names_the_transposition(results: dict[str, list[dict]]) -> None:
    """The issue's case: one expert's down_proj.weight stored transposed in a DeepSeek-V3 FP8 layout."""
    finding = next(f for f in results["deepseek_v3-fp8--transposed"] if f["code"] == "HFC601")
    assert finding["tensor"] == EXPERT + "weight"
    assert "moe_intermediate_size" in finding["message"] and "transposed" in finding["message"]


def test_packed_weight_message_names_the_stored_tensor(results: dict[str, list[dict]]) -> None:
    finding = next(f for f in results["llama-gptq--transposed"] if f["code"] == "HFC601")
    assert finding["tensor"] == DOWN + "qweight"
    assert finding["message"].startswith(DOWN + "qweight [")
    assert "gptq 4-bit" in finding["message"] and "unpacks to " + DOWN + "weight" in finding["message"]


def test_scale_message_gives_the_derivation(results: dict[str, list[dict]]) -> None:
    finding = next(f for f in results["deepseek_v3-fp8--scale_shape"] if f["code"] == "HFC619")
    assert "[32, 16] in 16x16 blocks = [ceil(32/16), ceil(16/16)] needs [2, 1]" in finding["message"]


def test_unknown_scheme_is_skipped_bad_values_and_unquantized_weights_are_errors(
        results: dict[str, list[dict]]) -> None:
    def codes(name: str) -> list[str]:
        return [f["code"] for f in results[name] if f["code"].startswith("HFC6")]
    assert codes("hqq") == ["HFC607"]
    assert codes("bits") == ["HFC622"]
    assert "bits is 5" in next(f["message"] for f in results["bits"] if f["code"] == "HFC622")
    assert codes("blocks") == ["HFC622"]
    # bf16 weights under an fp8 quantization_config: one error, not a flood.
    assert codes("none") == ["HFC625"]


def test_fixture_sizes_stay_tiny() -> None:
    for folder in ALL:
        assert sum(f.stat().st_size for f in (QUANTIZED / folder).iterdir()) < 200_000, folder


def test_deepseek_v3_fp8_fixture_is_the_published_layout() -> None:
    """Weights in F8_E4M3 with their F32 block scales, the router and norms unquantized, and the
    multi-token-prediction layer after the last one."""
    tensors = load_file(QUANTIZED / "deepseek_v3-fp8" / "model.safetensors")
    config = json.loads((QUANTIZED / "deepseek_v3-fp8" / "config.json").read_text())
    b0, b1 = config["quantization_config"]["weight_block_size"]
    assert tensors[EXPERT + "weight"].dtype == torch.float8_e4m3fn
    for name, value in tensors.items():
        if name.endswith("weight_scale_inv"):
            weight = tensors[name.replace("weight_scale_inv", "weight")]
            assert value.dtype == torch.float32
            assert tuple(value.shape) == (math.ceil(weight.shape[0] / b0), math.ceil(weight.shape[1] / b1))
    assert tensors["model.layers.1.mlp.gate.weight"].dtype == torch.bfloat16
    mtp = f"model.layers.{config['num_hidden_layers']}."
    extras = ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.head.weight")
    assert {mtp + n for n in extras} <= set(tensors)


def test_transformers_reference_checks_quantized_folders_too(transformers: object, tmp_path: Path) -> None:
    """--reference transformers: transformers' own model gives the shapes, the scheme maps them."""
    folder = _copy(tmp_path, "llama-gptq", "gptq-transposed", BROKEN["llama-gptq"]["transposed"][0])
    found = validate_many([folder], "--reference", "transformers")["gptq-transposed"]
    errors = [f for f in found if f["severity"] == "error"]
    assert [f["code"] for f in errors] == ["HFC601"], found
    assert "(per transformers " in errors[0]["message"] and errors[0]["tensor"] == DOWN + "qweight"


def _bnb4_state_transposed(t: Tensors) -> None:
    """A 4-bit weight packed from the layer transposed: same bytes, its quant state records [in, out]."""
    name = DOWN + "weight.quant_state.bitsandbytes__nf4"
    state = json.loads(bytes(t[name].tolist()).decode())
    state["shape"] = state["shape"][::-1]
    t[name] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)


def test_bnb_4bit_transposed_weight_is_caught_by_its_quant_state_with_deep(tmp_path: Path) -> None:
    """The packed bytes cannot tell; the quant state (tensor bytes, so read with --deep) can."""
    folder = _copy(tmp_path, "llama-bnb-4bit", "bnb4-transposed", _bnb4_state_transposed)
    good = QUANTIZED / "llama-bnb-4bit"
    found = validate_many([folder, good], "--deep")
    errors = [f for f in found["bnb4-transposed"] if f["severity"] == "error"]
    assert [f["code"] for f in errors] == ["HFC601"], found
    assert errors[0]["tensor"] == DOWN + "weight.quant_state.bitsandbytes__nf4"
    assert "records " + DOWN + "weight of shape [64, 32]" in errors[0]["message"]
    assert not [f for f in found["llama-bnb-4bit"] if f["code"].startswith("HFC6")]


def test_deepseek_v3_multi_token_prediction_layer_is_tolerated_only_with_its_own_tensors(
        results: dict[str, list[dict]]) -> None:
    """The MTP layer after the last one loads as ignored (HFC610); the same index holding a plain
    decoder layer (no enorm/hnorm/eh_proj) is one layer too many (HFC604)."""
    assert [f["code"] for f in results["plain-extra"] if f["code"].startswith("HFC6")] == ["HFC604"]
    assert [f["code"] for f in results["deepseek_v3-fp8"] if f["code"].startswith("HFC6")] == ["HFC610"]


def test_router_bias_kept_in_float32_is_not_reported_as_cast(results: dict[str, list[dict]]) -> None:
    """DeepSeek-V3 stores e_score_correction_bias in F32 (transformers keeps it so); a norm left
    in F32 is still HFC605."""
    assert [f["code"] for f in results["published"] if f["code"].startswith("HFC6")] == []
    hfc605 = [f for f in results["norm-too"] if f["code"] == "HFC605"]
    assert len(hfc605) == 1 and hfc605[0]["message"].startswith("1 of ")


def test_fp8_dtype_orphan_scale_and_skip_list(results: dict[str, list[dict]]) -> None:
    """A bf16 weight beside its block scale (HFC620), a scale whose weight is gone (HFC621, and
    the weight is missing: HFC602), an F8 weight of a module listed as not converted (HFC623)."""
    def codes(name: str) -> list[str]:
        return [f["code"] for f in results[name] if f["code"].startswith("HFC6") and f["code"] != "HFC610"]
    assert codes("fp8-weight-bf16") == ["HFC620"]
    assert sorted(codes("fp8-weight-gone")) == ["HFC602", "HFC621"]
    assert codes("fp8-not-converted") == ["HFC623"]
    [finding] = [f for f in results["fp8-not-converted"] if f["code"] == "HFC623"]
    assert finding["tensor"] == EXPERT + "weight" and "lists " + EXPERT[:-1] + " as not converted" in finding["message"]
