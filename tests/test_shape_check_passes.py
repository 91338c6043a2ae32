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
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfconv.checks import shapes
from hfconv.contents import CheckOptions, FolderContents, read_contents
from hfconv.discovery import discover
from hfconv.rules import compare as compare_module
from hfconv.rules import quantized
from hfconv.rules.compare import compare
from hfconv.rules.expected import (
    Dim,
    ExpandedTensors,
    ExpectedModel,
    ExpectedTensor,
    StoredShapes,
    TensorRun,
    _Template,
    expected_tensors,
)
from hfconv.rules.expression import ConfigValueError
from hfconv.rules.families import KNOWN_EXTRAS
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
    comparison, the layer and expert counts from every name, the trailing markers looked for in
    every stored name."""
    monkeypatch.setattr(quantized, "_fp8_all_fine", lambda *args: False)
    monkeypatch.setattr(compare_module, "_trailing_only", lambda *args: None)
    monkeypatch.setattr(ExpandedTensors, "indices", lambda self, pattern: None)
    original = shapes._trailing_held
    monkeypatch.setattr(shapes, "_trailing_held", lambda expected, config, tensors: original(
        dataclasses.replace(expected, trailing_layers=()), config, tensors))


@pytest.mark.parametrize("label", list(CHANGES))
def test_check_shapes_finds_what_the_general_path_finds(folders: dict[str, Path], label: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = folders[label]
    monkeypatch.setattr(compare_module, "_TEMPLATES_FROM", 0)  # the counts from the templates at any size
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
    expected, _ = shapes._reference(contents, config, shapes._stored_shapes(contents.loaded_tensors))
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
    expected, _ = shapes._reference(contents, config, shapes._stored_shapes(contents.loaded_tensors))
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


def _brute(model: ExpandedTensors, pattern: str) -> set[int]:
    regex = re.compile(pattern)
    return {int(m.group(1)) for name in model.index if (m := regex.match(name))}


def _model(rules: list[tuple[str, tuple[str, ...], list[Any]]]) -> ExpandedTensors:
    return ExpandedTensors(TensorRun(_Template(name, placeholders), tuple(ranges), (), (), False)
                           for name, placeholders, ranges in rules)


def test_run_indices_from_templates_as_from_every_name() -> None:
    """The layer and expert counts read from the rule templates: what a match of every expected name
    finds, on every table the fixtures' configs expand to and on templates made to mislead (literal
    digits, placeholders side by side); None where the form does not make it exact."""
    decided = 0
    for path in sorted((Path(__file__).parent.parent / "fixtures").glob("**/config.json")):
        try:
            model = expected_tensors(json.loads(path.read_text()))
        except ConfigValueError:
            continue
        if model is None or not isinstance(model.tensors, ExpandedTensors):
            continue
        for group in model.counts:
            found = model.tensors.indices(group.pattern)
            assert found == _brute(model.tensors, group.pattern), (path, group.pattern)
            decided += 1
    assert decided > 30
    tricky = _model([("model.layers.{i}.mlp.experts.{e}.w", ("i", "e"), [(3,), range(12)]),
                     ("model.layers.{i}.x.{i}.w", ("i",), [range(4)]),  # a placeholder named twice
                     ("model.blocks.7.layers.{i}.w", ("i",), [range(5)]),  # literal digits
                     ("model.layers.x{i}.w", ("i",), [range(2)])])
    patterns = [r"^model\.layers\.(\d+)\.", r"^model\.layers\.\d+\.mlp\.experts\.(\d+)\.", r"^model\.blocks\.(\d+)\.",
                r"^model\.blocks\.\d+\.layers\.(\d+)\.", r"^model\.layers\.x(\d+)\.",
                r"^model\.layers\.(\d+)\.x\.\d+\."]
    for pattern in patterns:
        assert tricky.indices(pattern) == _brute(tricky, pattern), pattern
    assert tricky.indices(r"^model\.layers\.1(\d+)\.") is None  # a literal digit in the pattern
    assert tricky.indices(r"^model\.layers\.(\d+)") is None  # the group not followed by a literal
    assert tricky.indices(r"^model\.layers\.\d+(\d+)\.") is None  # two digit runs side by side
    wide = _model([("model.layers.{i}.w", ("i",), [range(12)])])
    assert wide.indices(r"^model\.layers\.\d+(\d+)\.") is None and _brute(wide, r"^model\.layers\.\d+(\d+)\.") == {0, 1}
    for misleading in [("model.layers.1{i}.w", ("i",), [range(3)]),  # digits beside a placeholder
                       ("model.layers.{i}{e}.w", ("i", "e"), [range(2), range(2)])]:  # placeholders side by side
        assert all(_model([("model.layers.{i}.w", ("i",), [range(2)]), misleading]).indices(p) is None
                   for p in patterns)
    plain = _model([("model.layers.{i}.x.{i}.w", ("i",), [range(4)]), ("model.layers.{i}.y", ("i",), [(7,)])])
    assert plain.indices(r"^model\.layers\.(\d+)\.x\.\d+\.") == _brute(plain, r"^model\.layers\.(\d+)\.x\.\d+\.") == \
        {0, 1, 2, 3}


_SEGMENTS = st.lists(st.sampled_from(["a", "a", "{i}", "{j}", "{i}", "x{i}", "b1", "1", "{i}{j}", "2{j}"]),
                     min_size=1, max_size=6)
_AS = {"a": "a", "b1": r"b\d+", "1": r"\d+", "{i}": r"\d+", "{j}": r"\d+", "x{i}": r"x\d+", "{i}{j}": r"\d+",
       "2{j}": r"\d+"}


@settings(max_examples=300, deadline=None)
@given(_SEGMENTS, st.data(), st.sampled_from([(1,), (0, 5), tuple(range(12))]))
def test_run_indices_never_differ_from_a_match_of_every_name(segments: list[str], data: st.DataObject,
                                                            values: tuple[int, ...]) -> None:
    """Any template of these dotted parts, and a pattern written after it (each part as itself or as
    digits, one of them changed; the group at one of them; cut short, or with an end anchor): the
    templates' answer, where they give one, is what a match of every name finds."""
    name = ".".join(segments)
    placeholders = tuple(p for p in ("i", "j") if "{" + p + "}" in name)
    ranges = [values if k == 0 else (2,) for k in range(len(placeholders))]
    model = _model([(name, placeholders, ranges), ("a.{i}.b1.{j}", ("i", "j"), [range(3), range(2)])])
    tokens = [_AS[p] for p in segments]
    changed = data.draw(st.integers(0, 2 * len(tokens)))
    if changed < len(tokens):
        tokens[changed] = data.draw(st.sampled_from(["a", "1", r"\d+\d+", r"b1", r"x\d+"]))
    at = data.draw(st.integers(0, len(tokens) - 1))
    tokens[at] = r"(\d+)"
    tokens = tokens[:data.draw(st.integers(at + 1, len(tokens)))]
    pattern = "^" + r"\.".join(tokens) + data.draw(st.sampled_from(["", "$", r"\.", r"\.", r"\."]))
    found = model.indices(pattern)
    if found is not None:
        assert found == _brute(model, pattern)


_PATTERNS = [p for p, _ in KNOWN_EXTRAS] + [
    r"\x41bc", r"\u0041bc", r"(a)\1bc",  # character codes and a group reference: no literal of their own
    r"ab?c", r"x\.y+z", r"(a|b)c\.d", r"a|bc", r"\Amtp\.x", r"a*bc", r"(ab)?cd",
    r"^(?:model\.)?layers\.(?:61)\.", r"q\d\.rr", r"s.t", r"u\-v_w{2}"]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_required_text_is_in_every_match(data: st.DataObject) -> None:
    """The literal a pattern's every match holds (what lets the trailing layers' names skip a search
    for a known buffer's pattern): in every text the pattern finds a match in."""
    pattern = data.draw(st.sampled_from(_PATTERNS))
    text = data.draw(st.from_regex(pattern))
    match = re.search(pattern, text)
    assert match is not None and compare_module._required_text(pattern) in match.group()


@pytest.mark.parametrize("stored", [{"model.w": (2,), "model.x.mtp": (1,)}, {"model.w": (2,), "y.mtp": (1,)},
                                    {"model.w": (2,), "model.z.mtp": (1,)}])
def test_trailing_names_that_match_with_the_prefix_changed_are_not_ignored(stored: dict[str, tuple[int, ...]],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A name in a trailing layer that is an expected one with the base prefix removed or added is
    matched as the name-by-name comparison matches it, not ignored."""
    sizes = {"model.w": 2, "x.mtp": 1, "model.y.mtp": 1}
    tensors = {name: ExpectedTensor(name, (Dim(size),)) for name, size in sizes.items()}
    model = ExpectedModel(tensors=tensors, family=None, architecture=None, source="transformers test", prefix="model.",
                          allowed_extras=(r"mtp$",))
    bulk = compare(model, stored)
    monkeypatch.setattr(compare_module, "_trailing_only", lambda *args: None)
    assert bulk == compare(model, stored)
    assert [name for name, _ in bulk.ignored] == (["model.z.mtp"] if "model.z.mtp" in stored else [])


def test_embedding_rows_not_looked_for_without_a_vocabulary() -> None:
    """Without a tokenizer vocabulary no special token id is checked against the embedding rows, so
    the rows (a pass over every tensor name: 92,000 in DeepSeek-V3) are not looked for."""
    from hfconv.checks.tokenizer import _gather
    from hfconv.checks.tokenizer_embeddings import check_embedding_rows

    contents = _contents(Path(__file__).parent.parent / "fixtures" / "quantized" / FIXTURE)

    class Watched(dict[str, Any]):
        passes = 0

        def __iter__(self) -> Any:
            Watched.passes += 1
            return super().__iter__()

    contents.__dict__["loaded_tensors"] = Watched(contents.loaded_tensors)
    facts = _gather(contents)
    assert facts.vocab is None
    assert list(check_embedding_rows(facts)) == [] and Watched.passes == 0


def test_embedding_rows_looked_for_once_per_folder() -> None:
    """With a tokenizer, three checks read the embedding rows (vocab_size, special tokens, ids against
    rows): the pass over every tensor name is made once, and the findings are those of a pass each."""
    from hfconv.checks import tokenizer_embeddings
    from hfconv.checks.tokenizer import check_tokenizer

    folder = Path(__file__).parent.parent / "fixtures" / "llama-bin-sharded"
    looks = []
    look = tokenizer_embeddings._embedding_rows
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokenizer_embeddings, "_embedding_rows", lambda tensors: looks.append(1) or look(tensors))
        found = list(check_tokenizer(_contents(folder)))
    assert len(looks) == 1
    with pytest.MonkeyPatch.context() as patch:  # every reader of the rows looks for them itself
        patch.setattr(tokenizer_embeddings, "embedding_rows", lambda facts: look(facts.contents.loaded_tensors))
        assert found == list(check_tokenizer(_contents(folder)))


def test_index_names_with_shared_endings_as_each_run_names_them() -> None:
    """The index's names, made with the varying values' endings shared among runs (the experts of
    every layer): the names each run makes alone, in the same order, on DeepSeek-V3's table with 256
    experts and on runs whose endings or ranges differ."""
    config = json.loads((Path(__file__).parent.parent / "fixtures" / "quantized" / FIXTURE / "config.json").read_text())
    config.update(num_hidden_layers=4, n_routed_experts=256, first_k_dense_replace=1)
    model = expected_tensors(config)
    assert model is not None and isinstance(model.tensors, ExpandedTensors)
    runs = model.tensors.runs
    assert list(ExpandedTensors(runs).index) == [name for run in runs for name in run.names()]
    shared = range(3)
    both = ("i", "e")
    mixed = _model([("a.{i}.experts.{e}.w", both, [(0,), shared]), ("a.{i}.experts.{e}.w", both, [(1,), shared]),
                    ("b.{i}.experts.{e}.w", both, [(0,), range(5)]), ("b.{i}.experts.{e}.v", both, [(0,), shared]),
                    ("c.{e}.x.{i}", both, [(4,), shared])])
    assert list(mixed.index) == [name for run in mixed.runs for name in run.names()]
    assert len(mixed.index) == 3 + 3 + 5 + 3 + 3
