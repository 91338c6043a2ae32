"""Quantized schemes that validate used to skip (HFC607), now checked (issue 18, third session):
MXFP4 (gpt-oss), GPTQ marlin, AWQ gemv_fast/marlin/ipex, compressed-tensors with several config
groups; bitsandbytes 4-bit quant states read without --deep; quantized_view at tensor count.

Each scheme has a tiny real folder in ``fixtures/quantized/`` (``fixtures/make_quantized_fixtures.py``
names the library that wrote it); the broken copies are made here, and every folder goes through
the CLI in one subprocess (``hfconv validate A B C ... --format json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from safetensors import safe_open

from hfconv.readers.quant_state import MAX_STATE_BYTES, parse_quant_state
from hfconv.rules.expected import expected_tensors
from hfconv.rules.quantized import Scheme, ct_group_of, expected_shapes, quantized_view, scheme_of
from hfconv.tensors import TensorMeta

from helpers import ROOT, copy_quantized

QUANTIZED = ROOT / "fixtures" / "quantized"
Tensors = dict[str, torch.Tensor]
DOWN = "model.layers.0.mlp.down_proj."
EXPERTS = "model.layers.0.mlp.experts.down_proj_"
STATE = DOWN + "weight.quant_state.bitsandbytes__nf4"


def _put(name: str, shape: tuple[int, ...]) -> Callable[[Tensors], None]:
    def change(t: Tensors) -> None:
        t[name] = torch.zeros(shape, dtype=t[name].dtype)
    return change


def _drop(name: str) -> Callable[[Tensors], None]:
    def change(t: Tensors) -> None:
        del t[name]
    return change


def _mxfp4_transposed(t: Tensors) -> None:
    """down_proj [E, in 64, out 32] packed as if it were [E, 32, 64]: blocks [4, 64, 1, 16]."""
    t[EXPERTS + "blocks"] = torch.zeros((4, 64, 1, 16), dtype=torch.uint8)
    t[EXPERTS + "scales"] = torch.zeros((4, 64, 1), dtype=torch.uint8)


def _state(change: Callable[[dict[str, Any]], bytes]) -> Callable[[Tensors], None]:
    def edit(t: Tensors) -> None:
        state = json.loads(bytes(t[STATE].tolist()).decode())
        t[STATE] = torch.tensor(list(change(state)), dtype=torch.uint8)
    return edit


def _transposed_state(state: dict[str, Any]) -> bytes:
    state["shape"] = state["shape"][::-1]
    return json.dumps(state).encode()


def _quant(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(quant: dict[str, Any]) -> None:
        quant.update(changes)
    return edit


def _group0_targets(targets: list[str]) -> Callable[[dict[str, Any]], None]:
    def edit(quant: dict[str, Any]) -> None:
        quant["config_groups"]["group_0"]["targets"] = targets
    return edit


def _ignore_too(pattern: str) -> Callable[[dict[str, Any]], None]:
    def edit(quant: dict[str, Any]) -> None:
        quant["ignore"].append(pattern)
    return edit


# name -> (fixture, tensor change, quantization_config change, the HFC6xx codes expected)
CASES: dict[str, tuple[str, Callable[[Tensors], None] | None, Callable[[dict[str, Any]], None] | None, list[str]]] = {
    # 1. MXFP4 (gpt-oss experts)
    "mxfp4": ("gpt_oss-mxfp4", None, None, []),
    "mxfp4--transposed": ("gpt_oss-mxfp4", _mxfp4_transposed, None, ["HFC601"]),
    "mxfp4--scale_shape": ("gpt_oss-mxfp4", _put(EXPERTS + "scales", (4, 32, 3)), None, ["HFC619"]),
    "mxfp4--scale_missing": ("gpt_oss-mxfp4", _drop(EXPERTS + "scales"), None, ["HFC618"]),
    # 2. GPTQ marlin (B [in/16, out*2], s [in/group, out]); bitblas stays skipped
    "gptq-marlin": ("llama-gptq-marlin", None, None, []),
    "gptq-marlin--transposed": ("llama-gptq-marlin", _put(DOWN + "B", (2, 128)), None, ["HFC601"]),
    "gptq-marlin--scale_shape": ("llama-gptq-marlin", _put(DOWN + "s", (2, 32)), None, ["HFC619"]),
    "gptq-marlin--scale_missing": ("llama-gptq-marlin", _drop(DOWN + "s"), None, ["HFC618"]),
    "gptq-bitblas": ("llama-gptq", None, _quant(checkpoint_format="bitblas"), ["HFC607"]),
    # 3. AWQ gemv_fast (int16 [out/4, in]), marlin, ipex (GEMM layout)
    "awq-gemv_fast": ("llama-awq-gemv_fast", None, None, []),
    "awq-gemv_fast--transposed": ("llama-awq-gemv_fast", _put(DOWN + "qweight", (32, 64)), None, ["HFC601"]),
    "awq-gemv_fast--scale_shape": ("llama-awq-gemv_fast", _put(DOWN + "scales", (31, 64)), None, ["HFC619"]),
    "awq-gemv_fast--scale_missing": ("llama-awq-gemv_fast", _drop(DOWN + "qzeros"), None, ["HFC618"]),
    "awq-marlin": ("llama-awq-marlin", None, None, []),
    "awq-marlin--transposed": ("llama-awq-marlin", _put(DOWN + "qweight", (2, 128)), None, ["HFC601"]),
    "awq-marlin--scale_shape": ("llama-awq-marlin", _put(DOWN + "scales", (4, 33)), None, ["HFC619"]),
    "awq-marlin--scale_missing": ("llama-awq-marlin", _drop(DOWN + "scales"), None, ["HFC618"]),
    "awq-ipex": ("llama-awq", None, _quant(version="ipex"), []),
    "awq-ipex--transposed": ("llama-awq", _put(DOWN + "qweight", (32, 8)), _quant(version="ipex"), ["HFC601"]),
    "awq-llm-awq": ("llama-awq", None, _quant(version="llm-awq"), ["HFC607"]),
    # 4. compressed-tensors, two config groups: attention W8A8 by regex, the other Linears W4A16
    "ct-mixed": ("llama-ct-mixed", None, None, []),
    "ct-mixed--transposed": ("llama-ct-mixed", _put(DOWN + "weight_packed", (64, 4)), None, ["HFC601"]),
    "ct-mixed--scale_shape": ("llama-ct-mixed", _put("model.layers.0.self_attn.k_proj.weight_scale", (32, 2)),
                              None, ["HFC619"]),
    "ct-mixed--scale_missing": ("llama-ct-mixed", _drop("model.layers.0.self_attn.o_proj.weight_scale"), None,
                                ["HFC618"]),
    "ct-mixed--ignored": ("llama-ct-mixed", None, _ignore_too(r"re:.*mlp\.up_proj$"), ["HFC623", "HFC623"]),
    "ct-mixed--class_target": ("llama-ct-mixed", None, _group0_targets(["LlamaAttention"]), ["HFC607"]),
    "ct-mixed--redos": ("llama-ct-mixed", None, _group0_targets(["re:(a+)+$"]), ["HFC607"]),
    # 5. bitsandbytes 4-bit: the quant state read without --deep, bounded and hostile-safe
    "bnb4--state_transposed": ("llama-bnb-4bit", _state(_transposed_state), None, ["HFC601"]),
    "bnb4--state_huge": ("llama-bnb-4bit", _state(lambda s: b" " * (MAX_STATE_BYTES + 1) + json.dumps(s).encode()),
                         None, []),
    "bnb4--state_deep": ("llama-bnb-4bit", _state(lambda s: b"[" * 30_000 + b"]" * 30_000), None, []),
    "bnb4--state_garbage": ("llama-bnb-4bit", _state(lambda s: b"\xff\xfe{not json"), None, []),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Every case validated in one CLI run (no --deep)."""
    tmp = tmp_path_factory.mktemp("schemes2")
    folders = [copy_quantized(tmp, case[0], name, case[1], case[2]) for name, case in CASES.items()]
    # --reference rules: gpt_oss has no rule table, and building transformers' model for it takes
    # about 10 s a folder; the Llama folders are checked against the rule table either way.
    proc = subprocess.run([sys.executable, "-m", "hfconv", "validate", *map(str, folders), "--format", "json",
                           "--reference", "rules"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    return {Path(r["path"]).name: r["findings"] for r in data}


def _shape_findings(results: dict[str, list[dict]], name: str) -> list[dict]:
    # HFC606: gpt_oss is not in the rule table (config.json's sizes check its experts); HFC610: ignored buffers
    return [f for f in results[name] if f["code"].startswith("HFC6") and f["code"] not in ("HFC606", "HFC610")]


@pytest.mark.parametrize("case", list(CASES))
def test_scheme_case_gives_its_findings(results: dict[str, list[dict]], case: str) -> None:
    found = _shape_findings(results, case)
    assert sorted(f["code"] for f in found) == CASES[case][3], found
    if CASES[case][3] and CASES[case][3][0] != "HFC607":
        assert all(f["severity"] == "error" and f["file"] == "model.safetensors" and f["tensor"] for f in found)
    if not CASES[case][3]:
        assert not any(f["severity"] == "error" for f in results[case])


def test_messages_name_the_stored_tensor_and_the_reason(results: dict[str, list[dict]]) -> None:
    def one(case: str) -> dict:
        [finding] = _shape_findings(results, case)
        return finding
    mxfp4 = one("mxfp4--transposed")
    assert mxfp4["tensor"] == EXPERTS + "blocks" and "unpacks to model.layers.0.mlp.experts.down_proj" in \
        mxfp4["message"]
    assert one("gptq-marlin--transposed")["tensor"] == DOWN + "B"
    assert "calculate_zeros_width" in one("awq-gemv_fast--scale_shape")["message"]
    assert "int8 per channel" in one("ct-mixed--scale_shape")["message"]  # the attention group's scheme
    assert "BitBLAS" in one("gptq-bitblas")["message"] and "config.json does not record" in \
        one("gptq-bitblas")["message"]
    assert "class name other than Linear" in one("ct-mixed--class_target")["message"]
    assert "too complex" in one("ct-mixed--redos")["message"]
    state = one("bnb4--state_transposed")
    assert state["tensor"] == STATE and "records " + DOWN + "weight of shape [64, 32]" in state["message"]


class _Meta(NamedTuple):
    dtype: str
    shape: tuple[int, ...]


def _headers(folder: str) -> dict[str, _Meta]:
    with safe_open(str(QUANTIZED / folder / "model.safetensors"), "pt") as f:
        return {k: _Meta(f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}  # noqa: SIM118


def test_mxfp4_without_a_reference_uses_the_config_sizes() -> None:
    """No rule table for gpt_oss and no transformers: num_local_experts, hidden_size and
    intermediate_size still give each expert projection's shape."""
    config = json.loads((QUANTIZED / "gpt_oss-mxfp4" / "config.json").read_text())
    scheme = scheme_of(config["quantization_config"])
    assert isinstance(scheme, Scheme) and scheme.method == "mxfp4"
    tensors = _headers("gpt_oss-mxfp4")
    assert quantized_view(scheme, tensors, expected_shapes(None, config)).issues == []
    tensors[EXPERTS + "blocks"] = _Meta("U8", (4, 64, 1, 16))
    tensors[EXPERTS + "scales"] = _Meta("U8", (4, 64, 1))
    view = quantized_view(scheme, tensors, expected_shapes(None, config))
    assert [(i.code, i.tensor) for i in view.issues] == [("HFC601", EXPERTS + "blocks")]
    assert "config.json implies [4, 64, 32]" in view.issues[0].message and "transposed" in view.issues[0].message
    assert view.logical["model.layers.0.mlp.experts.gate_up_proj"] == (4, 32, 128)


def test_compressed_tensors_group_of_a_module_follows_match_targets() -> None:
    """Exact names before re: patterns before class names; a target two groups name is the later
    group's; ignore entries (names or patterns) leave a module unquantized."""
    def group(fmt: str, bits: int, strategy: str, targets: list[str]) -> dict[str, Any]:
        return {"format": fmt, "targets": targets, "weights": {"num_bits": bits, "strategy": strategy,
                                                               "group_size": 16 if strategy == "group" else None}}
    quant = {"quant_method": "compressed-tensors", "format": "mixed-precision", "ignore": ["lm_head", "re:.*gate$"],
             "config_groups": {"a": group("pack-quantized", 4, "group", ["Linear"]),
                               "b": group("int-quantized", 8, "channel", [r"re:.*self_attn\..*"]),
                               "c": group("float-quantized", 8, "tensor", ["model.layers.0.self_attn.q_proj"]),
                               "d": group("naive-quantized", 8, "channel", ["re:.*down_proj"])}}
    scheme = scheme_of(quant)
    assert isinstance(scheme, Scheme) and len(scheme.groups) == 4

    def layout(stem: str) -> str | None:
        found = ct_group_of(scheme, stem)
        return found.layout if found is not None else None
    assert layout("model.layers.0.self_attn.q_proj") == "float-quantized"
    assert layout("model.layers.1.self_attn.q_proj") == "int-quantized"
    assert layout("model.layers.1.mlp.up_proj") == "pack-quantized"
    assert layout("model.layers.1.mlp.down_proj") == "naive-quantized"
    assert layout("model.layers.1.mlp.gate") is None and layout("lm_head") is None
    quant["config_groups"]["e"] = group("int-quantized", 8, "channel", ["Linear"])  # "Linear" again: e wins
    later = scheme_of(quant)
    assert isinstance(later, Scheme) and ct_group_of(later, "model.layers.1.mlp.up_proj").layout == "int-quantized"


@pytest.mark.parametrize("raw", [b"{}" + b" " * MAX_STATE_BYTES, b"[" * 40_000 + b"]" * 20_000, b"\xff",
                                 b'{"shape": [' + b"9" * 5000 + b"]}", b"[1, 2]"])
def test_quant_state_parse_refuses_what_is_not_a_small_json_object(raw: bytes) -> None:
    assert parse_quant_state(raw) is None


def test_quantized_view_looks_up_no_tensor_per_module_on_a_well_formed_fp8_folder() -> None:
    """At 45,000 FP8 modules (DeepSeek-V3), per-module lookups and messages were most of validate's
    shape-check time: a well-formed folder is now read in bulk passes. Same view as before."""
    folder = QUANTIZED / "deepseek_v3-fp8"
    config = json.loads((folder / "config.json").read_text())
    scheme = scheme_of(config["quantization_config"])
    assert isinstance(scheme, Scheme)
    expected = expected_tensors(config)
    stored = {name: TensorMeta(name, meta.dtype, meta.shape) for name, meta in _headers("deepseek_v3-fp8").items()}

    class Counting(dict[str, TensorMeta]):
        lookups = 0

        def get(self, key: str, default: Any = None) -> Any:
            Counting.lookups += 1
            return super().get(key, default)

        def __getitem__(self, key: str) -> TensorMeta:
            Counting.lookups += 1
            return super().__getitem__(key)

    view = quantized_view(scheme, Counting(stored), expected_shapes(expected, config))
    modules = sum(name.endswith(".weight_scale_inv") for name in stored)
    assert view.issues == [] and view.modules == modules > 50
    lacking = sum(n.endswith("weight_scale_inv") and n[: -len("_scale_inv")] not in expected.tensors for n in stored)
    assert Counting.lookups <= lacking < modules  # only names the rule table lacks (the MTP layer)
    assert set(view.quantized) == {n for n in stored if n.endswith("weight_scale_inv")} | \
        {n[: -len("_scale_inv")] for n in stored if n.endswith("weight_scale_inv")}
    assert view.logical == {n: m.shape for n, m in stored.items() if not n.endswith("weight_scale_inv")}
    # Headers in another order (weights and scales not listed alike): the same view.
    shuffled = quantized_view(scheme, dict(reversed(list(stored.items()))), expected_shapes(expected, config))
    assert (shuffled.quantized, shuffled.logical, shuffled.modules) == (view.quantized, view.logical, view.modules)
    # One scale of the wrong shape: the module-by-module path words it.
    name = next(n for n in stored if n.endswith("down_proj.weight_scale_inv"))
    broken = dict(stored, **{name: stored[name]._replace(shape=(9, 9))})
    assert [i.code for i in quantized_view(scheme, broken, expected_shapes(expected, config)).issues] == ["HFC619"]
