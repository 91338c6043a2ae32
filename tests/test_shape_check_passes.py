"""The shape check's bulk passes (issue 18: DeepSeek-V3's 92,000 FP8 tensors) give the findings the
general path gives, on good folders and broken ones.

Each fast path is switched off here the way it gives up at a doubt (the bulk FP8 view returns
False, the trailing-layer comparison None, the trailing-marker witnesses find nothing), and the
results with and without it are compared: findings, their order and messages, and the view's
logical shapes, quantized names and unquantized tensors. The folders are the DeepSeek-V3 FP8
fixture (written by transformers' quantizer and safetensors) changed and written back with
safetensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hfconv.checks import shapes
from hfconv.contents import CheckOptions, FolderContents, read_contents
from hfconv.discovery import discover
from hfconv.rules import compare as compare_module
from hfconv.rules import quantized
from hfconv.rules.compare import compare
from hfconv.rules.expected import StoredShapes, expected_tensors
from hfconv.rules.quantized import Scheme, expected_shapes, quantized_view, scheme_of

from helpers import copy_quantized

FIXTURE = "deepseek_v3-fp8"
EXPERT = "model.layers.1.mlp.experts.0.down_proj"
MTP = "model.layers.3."  # num_hidden_layers is 3: the multi-token-prediction layer


def _transpose(t: dict[str, Any]) -> None:
    t[EXPERT + ".weight"] = t[EXPERT + ".weight"].T.contiguous()


def _drop(prefix: str) -> Callable[[dict[str, Any]], None]:
    def change(t: dict[str, Any]) -> None:
        for name in [n for n in t if n.startswith(prefix)]:
            del t[name]
    return change


def _extra_layer(t: dict[str, Any]) -> None:
    for name in [n for n in t if n.startswith("model.layers.2.")]:
        t["model.layers.4." + name.removeprefix("model.layers.2.")] = t[name].clone()


def _rename(t: dict[str, Any]) -> None:
    for suffix in (".weight", ".weight_scale_inv"):
        t[EXPERT + "x" + suffix] = t.pop(EXPERT + suffix)


def _unmarked_mtp(t: dict[str, Any]) -> None:
    for marker in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "eh_proj.weight_scale_inv"):
        t.pop(MTP + marker, None)


def _scale_shape(t: dict[str, Any]) -> None:
    t[EXPERT + ".weight_scale_inv"] = t[EXPERT + ".weight_scale_inv"][:1].clone()


CHANGES: dict[str, Callable[[dict[str, Any]], None] | None] = {
    "as is": None,
    "transposed expert weight": _transpose,
    "missing scale": _drop(EXPERT + ".weight_scale_inv"),
    "missing weight": _drop(EXPERT + ".weight"),
    "missing layer": _drop("model.layers.1."),
    "missing MTP layer": _drop(MTP),
    "extra layer": _extra_layer,
    "renamed tensor": _rename,
    "MTP layer without its marker": _unmarked_mtp,
    "scale of another shape": _scale_shape,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("passes")
    return {label: copy_quantized(tmp, FIXTURE, f"f{k}", change) for k, (label, change) in enumerate(CHANGES.items())}


def _contents(folder: Path) -> FolderContents:
    return read_contents(discover(folder), CheckOptions())


def _findings(folder: Path) -> list[tuple[str, str, str | None, str | None]]:
    return [(f.code, f.message, f.file, f.tensor) for f in shapes.check_shapes(_contents(folder))]


def _general(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every bulk path gives up, as at a doubt: the module-by-module view, the name-by-name
    comparison, the trailing markers looked for in every stored name."""
    monkeypatch.setattr(quantized, "_fp8_all_fine", lambda *args: False)
    monkeypatch.setattr(compare_module, "_trailing_only", lambda *args: None)
    original = shapes._trailing_held
    monkeypatch.setattr(shapes, "_trailing_held", lambda expected, config, tensors: original(
        dataclasses.replace(expected, trailing_layers=()), config, tensors))


@pytest.mark.parametrize("label", list(CHANGES))
def test_check_shapes_finds_what_the_general_path_finds(folders: dict[str, Path], label: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = folders[label]
    bulk = _findings(folder)
    with monkeypatch.context() as patch:
        _general(patch)
        general = _findings(folder)
    assert bulk == general
    codes = {code for code, *_ in bulk}
    if label in ("as is", "missing MTP layer"):  # loaders need no MTP layer
        assert not codes - {"HFC605", "HFC610"}, bulk
    else:  # each change is found
        assert codes & {"HFC601", "HFC602", "HFC603", "HFC604", "HFC618", "HFC619", "HFC621", "HFC610"}, bulk


@pytest.mark.parametrize("label", ["as is", "transposed expert weight", "missing layer", "renamed tensor",
                                   "extra layer", "MTP layer without its marker"])
@pytest.mark.parametrize("order", ["as stored", "reversed"])
def test_bulk_view_and_comparison_agree_with_the_general_ones(folders: dict[str, Path], label: str, order: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulk FP8 view (its logical shapes as lists, looked up once for the comparison too) and the
    module-by-module view: the same logical shapes, quantized names, unquantized tensors and
    comparison, with the headers in their order and reversed (weights and scales not listed alike)."""
    contents = _contents(folders[label])
    config = contents.config
    assert config is not None
    scheme = scheme_of(config["quantization_config"])
    assert isinstance(scheme, Scheme)
    expected, _ = shapes._reference(contents, config)
    expected = shapes._trailing_held(expected, config, contents.loaded_tensors)
    tensors = dict(contents.loaded_tensors)
    if order == "reversed":
        tensors = dict(reversed(list(tensors.items())))
    bulk = quantized_view(scheme, tensors, expected_shapes(expected, config))
    with monkeypatch.context() as patch:
        patch.setattr(quantized, "_fp8_all_fine", lambda *args: False)
        general = quantized_view(scheme, tensors, expected_shapes(expected, config))
    if label in ("as is", "missing layer", "extra layer", "MTP layer without its marker"):
        assert isinstance(bulk.shapes, StoredShapes)  # the bulk path was taken
    assert bulk.issues == general.issues and bulk.modules == general.modules
    assert bulk.logical == general.logical and list(bulk.shapes) == list(general.logical)
    assert bulk.quantized == general.quantized
    assert bulk.unquantized(tensors) == general.unquantized(tensors)
    for flag in (False, True):
        want = compare_module._compare(expected, dict(general.logical), any_mismatch=flag)
        assert compare_module._compare(expected, bulk.shapes, any_mismatch=flag) == want
        with monkeypatch.context() as patch:
            patch.setattr(compare_module, "_trailing_only", lambda *args: None)
            assert compare_module._compare(expected, bulk.shapes, any_mismatch=flag) == want
    assert compare(expected, bulk.shapes) == compare(expected, general.logical)
    # Another model (suggest_fix's trials): the names looked up in this one's index are not reused.
    other = expected_tensors({**config, "moe_intermediate_size": 8})
    assert other is not None
    assert compare(other, bulk.shapes) == compare(other, dict(general.logical))


@pytest.mark.parametrize("label", ["as is", "missing MTP layer", "MTP layer without its marker", "extra layer"])
def test_trailing_markers_found_by_name_as_by_every_name(folders: dict[str, Path], label: str) -> None:
    """The trailing layers kept where a marker tensor is stored at its usual name: as kept when
    every stored name is searched for the markers."""
    contents = _contents(folders[label])
    config = contents.config
    assert config is not None
    expected, _ = shapes._reference(contents, config)
    assert expected.trailing_layers == ("model.layers.3",)
    tensors = contents.loaded_tensors
    bulk = shapes._trailing_held(expected, config, tensors)
    general = shapes._trailing_held(dataclasses.replace(expected, trailing_layers=()), config, tensors)
    assert bulk.allowed_extras == general.allowed_extras
    assert bool(bulk.allowed_extras) == (label in ("as is", "extra layer"))
    # A marker stored under another name than the usual one (a renamed stem): still found.
    moved = {("model." + name if name.startswith(MTP) else name): meta for name, meta in tensors.items()}
    assert shapes._trailing_held(expected, config, moved).allowed_extras == \
        shapes._trailing_held(dataclasses.replace(expected, trailing_layers=()), config, moved).allowed_extras
