"""--reference transformers on quantized folders: the model is built through transformers' own
quantizer for the scheme (``get_hf_quantizer`` + ``preprocess_model`` on the meta device, as
``from_pretrained`` does), and DeepSeek-V3's multi-token-prediction layer is tolerated as the
class's ``_keys_to_ignore_on_load_unexpected`` declares it.

Folders are the committed ones written by the real libraries (``fixtures/quantized``), and
copies broken with safetensors. One CLI subprocess validates them all (each transformers
reference is a subprocess of its own: seconds each).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from hfconv.rules.transformers_reference import trailing_extras

from helpers import FIXTURES, validate_many

QUANTIZED = FIXTURES / "quantized"
needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None,
    reason="transformers and torch are needed for --reference transformers")


def _shape_findings(found: list[dict]) -> list[dict]:
    return [f for f in found if f["code"].startswith("HFC6") and f["code"] != "HFC610"]


@needs_transformers
def test_quantizer_reference_good_broken_and_fallback(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "fp8-broken"
    shutil.copytree(QUANTIZED / "deepseek_v3-fp8", broken)
    tensors = load_file(broken / "model.safetensors")
    transposed = "model.layers.1.mlp.experts.2.down_proj.weight"
    tensors[transposed] = tensors[transposed].t().contiguous()  # same bytes, [16, 32] for [32, 16]
    del tensors["model.layers.2.self_attn.o_proj.weight_scale_inv"]  # a missing scale
    # lm_head quantized, although transformers' fp8 quantizer keeps it a plain layer (its default
    # skip list): hfconv's own layout has no skip list here (no modules_to_not_convert) and passes it.
    tensors["lm_head.weight"] = tensors["lm_head.weight"].to(torch.float8_e4m3fn)
    tensors["lm_head.weight_scale_inv"] = torch.ones(4, 2)
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})

    bnb = importlib.util.find_spec("bitsandbytes") is not None
    found = validate_many([broken, QUANTIZED / "llama-bnb-4bit"], "--reference", "transformers")

    # 1. The broken copy: each defect named with its file and tensor, and nothing else: the rest of
    # the folder is the good fixture, its multi-token-prediction layer (model.layers.3) included,
    # which is no extra layer (HFC604) for transformers either (point 2).
    shape = {(f["code"], f["tensor"]): f for f in _shape_findings(found["fp8-broken"])}
    assert set(shape) == {("HFC601", transposed), ("HFC618", "model.layers.2.self_attn.o_proj.weight"),
                          ("HFC614", "lm_head.weight")}, shape
    assert all(f["file"] == "model.safetensors" and f["severity"] == "error" for f in shape.values())
    assert "transposed" in shape["HFC601", transposed]["message"]
    assert "FineGrainedFP8HfQuantizer keeps lm_head unquantized" in shape["HFC614", "lm_head.weight"]["message"]

    # 2. bitsandbytes' quantizer cannot run without its library: a warning saying so, and the
    # shapes still checked with hfconv's layout (no error on the good folder).
    bnb_shape = _shape_findings(found["llama-bnb-4bit"])
    assert not [f for f in bnb_shape if f["severity"] == "error"], bnb_shape
    if not bnb:
        [note] = bnb_shape
        assert (note["code"], note["severity"], note["file"]) == ("HFC613", "warning", "config.json"), note
        assert "bitsandbytes" in note["message"] and "hfconv's own bitsandbytes 4-bit" in note["message"]


def test_trailing_layer_only_where_it_holds_its_own_tensors() -> None:
    """DeepSeek-V3's ``model\\.layers\\.61.*`` stands for the layer at num_hidden_layers, whatever that
    is, where it holds a tensor no modelled layer has (enorm, eh_proj); a plain decoder layer there
    stays a layer more than the config says."""
    modelled = {f"model.layers.{i}.{part}": (4,) for i in range(3)
                for part in ("input_layernorm.weight", "mlp.down_proj.weight")}
    declared = (r"model\.layers\.61.*",)
    config = {"num_hidden_layers": 3, "num_nextn_predict_layers": 1}
    mtp = [*modelled, "model.layers.3.input_layernorm.weight", "model.layers.3.enorm.weight"]
    plain = [*modelled, "model.layers.3.input_layernorm.weight", "model.layers.3.mlp.down_proj.weight"]
    assert trailing_extras(declared, modelled, config, mtp) == (r"^model\.layers\.3\.",)
    assert trailing_extras(declared, modelled, config, plain) == ()
    past = [*modelled, "model.layers.4.enorm.weight"]  # beyond num_nextn_predict_layers
    assert trailing_extras(declared, modelled, config, past) == ()
