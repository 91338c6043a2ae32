"""Correctness at tensor count (issue 18): verdicts on folders of 100,000s of tensors.

The files are well formed safetensors files written per the format (an 8-byte length, the JSON
header padded to 8 bytes as safetensors pads it, then the tensor bytes, all zero here, left as a
hole by truncate) and read back by safetensors itself before hfconv sees them. No timing asserts:
speed is shown by benchmarks/bench_scale.py.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from hfconv.rules.expected import MAX_COUNT, CapReached, expected_tensors
from hfconv.rules.expression import ConfigValueError


def _write_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...]]]) -> None:
    """F32 tensors ``entries`` (name, shape) in order; the data section zero (a hole)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in entries:
        size = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)


def _llama(layers: int) -> dict:
    """config.json of a Llama with hidden size 4 (2 heads, 1 kv head), 16 tokens, untied."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4,
            "intermediate_size": 8, "num_hidden_layers": layers, "num_attention_heads": 2,
            "num_key_value_heads": 1, "vocab_size": 16, "torch_dtype": "float32", "tie_word_embeddings": False,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 64, "bos_token_id": 0, "eos_token_id": 1}


def _llama_entries(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of _llama(layers), as save_pretrained names and shapes them."""
    entries: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (16, 4))]
    for i in range(layers):
        p = f"model.layers.{i}."
        entries += [(p + "input_layernorm.weight", (4,)), (p + "mlp.down_proj.weight", (4, 8)),
                    (p + "mlp.gate_proj.weight", (8, 4)), (p + "mlp.up_proj.weight", (8, 4)),
                    (p + "post_attention_layernorm.weight", (4,)), (p + "self_attn.k_proj.weight", (2, 4)),
                    (p + "self_attn.o_proj.weight", (4, 4)), (p + "self_attn.q_proj.weight", (4, 4)),
                    (p + "self_attn.v_proj.weight", (2, 4))]
    return entries + [("model.norm.weight", (4,)), ("lm_head.weight", (16, 4))]


def _validate(folder: Path) -> tuple[int, list[dict]]:
    proc = subprocess.run([sys.executable, "-m", "hfconv", "validate", str(folder), "--format", "json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)["findings"]


def _safetensors_count(path: Path) -> int:
    with safe_open(str(path), framework="np") as handle:
        return len(list(handle.keys()))


def test_300k_tiny_tensors_in_one_file_are_checked_not_refused(tmp_path):
    """A well-formed file of 281,703 tiny tensors (safetensors reads it; the issue had 400,000):
    the rule table plans 500,803 expected tensors (bias rules included), past the old fixed cap
    of 500,000 that made this an HFC611 error. The cap now grows with the stored tensors (twice
    them), so every shape is checked."""
    layers = 31_300
    folder = tmp_path / "tiny-400k"
    folder.mkdir()
    _write_safetensors(folder / "model.safetensors", _llama_entries(layers))
    (folder / "config.json").write_text(json.dumps(_llama(layers)))
    assert _safetensors_count(folder / "model.safetensors") == 9 * layers + 3
    code, findings = _validate(folder)
    assert code == 0, findings
    # The one warning: a 25 MB+ header, which huggingface_hub's metadata API refuses (HFC103).
    assert [f["code"] for f in findings if f["severity"] in ("error", "warning")] == ["HFC103"], findings


def test_100k_tensors_in_shards_get_the_right_findings(tmp_path):
    """100,000 tensors in 8 shards with a real index, one tensor left out of its shard (the index
    still names it) and one index entry pointing at the wrong shard: exactly those findings, each
    naming its tensor and file."""
    layers = 11_111
    entries = _llama_entries(layers)
    folder = tmp_path / "sharded-100k"
    folder.mkdir()
    shards = 8
    per = -(-len(entries) // shards)
    weight_map: dict[str, str] = {}
    for k in range(shards):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        weight_map.update((n, name) for n, _ in entries[k * per:(k + 1) * per])
    lost = "model.layers.7000.mlp.down_proj.weight"
    kept = [(n, s) for n, s in entries if n != lost]
    for name in dict.fromkeys(weight_map.values()):
        _write_safetensors(folder / name, [(n, s) for n, s in kept if weight_map[n] == name])
    moved = "model.layers.123.self_attn.q_proj.weight"
    real_shard = weight_map[moved]
    weight_map[moved] = "model-00008-of-00008.safetensors"
    total = sum(math.prod(s) * 4 for _, s in kept)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(_llama(layers)))
    assert sum(_safetensors_count(p) for p in folder.glob("*.safetensors")) == len(kept) == 100_001

    code, findings = _validate(folder)
    assert code == 1
    problems = sorted((f["code"], f["tensor"], f["file"]) for f in findings if f["severity"] in ("error", "warning"))
    assert problems == [
        ("HFC301", lost, weight_map[lost]),
        ("HFC303", moved, "model.safetensors.index.json"),
        ("HFC602", lost, None),
    ], problems
    [misplaced] = [f for f in findings if f["code"] == "HFC303"]
    assert real_shard in misplaced["message"]


@pytest.mark.parametrize("config, stored, verdict", [
    # 70,000 layers need 630,003 tensors: stored, a cap (no verdict); 1,000 stored cannot hold them.
    ({"num_hidden_layers": 70_000}, 630_003, CapReached),
    ({"num_hidden_layers": 70_000}, 1_000, ConfigValueError),
    # Unknown folder (stored=0): the fixed caps refuse, as before.
    ({"num_hidden_layers": 70_000}, 0, ConfigValueError),
    # 60,000 layers plan 960,003 tensors (bias rules included), past the cap for 100,000 stored,
    # which cannot hold the 540,003 required ones: wrong.
    ({"num_hidden_layers": 60_000}, 100_000, ConfigValueError),
])
def test_caps_are_no_verdict_where_the_weights_could_fit(config, stored, verdict):
    """Past MAX_COUNT or the expansion cap, CapReached (HFC612, a warning) when the stored tensors
    could hold what config.json asks for, ConfigValueError (HFC611, an error) when they cannot."""
    assert config["num_hidden_layers"] > MAX_COUNT or stored
    with pytest.raises(ConfigValueError) as raised:
        expected_tensors({**_llama(4), **config}, stored=stored)
    assert (type(raised.value) is CapReached) == (verdict is CapReached), raised.value.message
    assert raised.value.fields[0] == "num_hidden_layers"


# --- the bulk paths are the per-tensor paths' equals ----------------------------------------


FAMILY_FIXTURES = sorted(p for p in (Path(__file__).parent.parent / "fixtures" / "families").iterdir()
                         if (p / "config.json").exists())


@pytest.mark.parametrize("folder", FAMILY_FIXTURES, ids=lambda p: p.name)
def test_expanded_runs_give_every_tensor_once_in_natural_order(folder):
    """A rule table expands to runs (name -> run index, ExpectedTensors made on lookup): iterating
    gives each name once, in natural order (layers.2 before layers.10), and each ExpectedTensor
    has its run's shape and optional flag."""
    from hfconv.rules.expected import ExpandedTensors, natural_key

    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 12  # two-digit layers: natural order differs from string order
    for key in ("n_layer", "num_layers"):
        if key in config:
            config[key] = 12
    model = expected_tensors(config)
    assert model is not None and isinstance(model.tensors, ExpandedTensors)
    names = list(model.tensors)
    assert len(names) == len(set(names)) == len(model.tensors) == len(model.tensors.index)
    assert names == sorted(names, key=natural_key)
    for name in names:
        tensor, run = model.tensors[name], model.tensors.index[name]
        assert (tensor.name, tensor.shape, tensor.optional) == (name, run.shape, run.optional)
        assert tensor.shape == tuple(d.value for d in tensor.dims)


def test_a_later_rule_naming_a_tensor_again_wins_as_in_a_dict():
    """Two runs naming one tensor: the later one's shape, as dict.update would keep."""
    from hfconv.rules.expected import Dim, ExpandedTensors, TensorRun, _Template

    first = TensorRun(_Template("a.{i}.w", ("i",)), (range(3),), (Dim(1),), (1,), False)
    second = TensorRun(_Template("a.1.w", ()), (), (Dim(2),), (2,), True)
    tensors = ExpandedTensors([first, second])
    assert list(tensors) == ["a.0.w", "a.1.w", "a.2.w"]
    assert tensors["a.1.w"].shape == (2,) and tensors["a.1.w"].optional
    assert tensors["a.0.w"].shape == (1,) and not tensors["a.0.w"].optional


def test_headers_listed_out_of_file_order_are_read_alike(tmp_path):
    """The header fast path skips the offset sort when the entries are in file order; entries in
    another order (the name order safetensors writes while the data is laid out by dtype) are
    read the same, and a gap or an overlap is refused either way."""
    from hfconv.readers.safetensors_header import read_safetensors
    from hfconv.tensors import FormatError

    def write(path: Path, entries: list[tuple[str, int, int]], total: int) -> None:
        header = {name: {"dtype": "F32", "shape": [(end - begin) // 4], "data_offsets": [begin, end]}
                  for name, begin, end in entries}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(total))

    in_order, shuffled = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write(in_order, [("x", 0, 8), ("y", 8, 24), ("z", 24, 28)], 28)
    write(shuffled, [("z", 24, 28), ("x", 0, 8), ("y", 8, 24)], 28)
    a, b = read_safetensors(in_order), read_safetensors(shuffled)
    assert {n: (m.shape, m.data_offsets) for n, m in a.tensors.items()} == \
        {n: (m.shape, m.data_offsets) for n, m in b.tensors.items()}
    for entries in ([("z", 24, 28), ("x", 0, 8), ("y", 12, 24)], [("x", 0, 8), ("y", 4, 24), ("z", 24, 28)]):
        broken = tmp_path / "c.safetensors"
        write(broken, entries, 28)
        with pytest.raises(FormatError) as caught:
            read_safetensors(broken)
        assert caught.value.code in ("HFC108", "HFC109")


# --- a model_type transformers does not know: said without starting its subprocess -------------


_COUNT_POPEN = ("import sys, atexit\n"
                "started = []\n"
                "sys.addaudithook(lambda event, args: started.append(args) if event == 'subprocess.Popen' else None)\n"
                "atexit.register(lambda: sys.stderr.write('\\nPOPEN: %d\\n' % len(started)))\n"
                "from hfconv.cli import run\n"
                "run()\n")


@pytest.mark.transformers
@pytest.mark.parametrize("auto_map", [False, True])
def test_unknown_model_type_is_said_without_building_a_reference(tmp_path, auto_map):
    """--reference auto on a model_type transformers does not know: the same HFC609 the reference
    subprocess would give, read from transformers' auto mappings without starting it (~4 s)."""
    import importlib.metadata

    folder = tmp_path / "model"
    folder.mkdir()
    config = _llama(2) | {"model_type": "hfconv-unknown-type"}
    if auto_map:
        config["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    _write_safetensors(folder / "model.safetensors", _llama_entries(2))
    proc = subprocess.run([sys.executable, "-c", _COUNT_POPEN, "validate", str(folder), "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    assert "POPEN: 0" in proc.stderr, proc.stderr
    found = {f["code"]: f for f in json.loads(proc.stdout)["findings"]}
    want = (f"transformers {importlib.metadata.version('transformers')} does not know model_type "
            "'hfconv-unknown-type'")
    if auto_map:
        want += " and the folder's own code (auto_map) is only used with --trust-remote-code"
    assert want in found["HFC609"]["message"]


def test_a_tensor_kept_in_float32_does_not_decide_the_dominant_dtype(tmp_path):
    """HFC605 counts only the tensors not kept in float32 whatever torch_dtype says: with one
    BF16 and one F32 weight left, BF16 (first seen) is the dominant dtype and the F32 one is
    reported, even when a kept-in-float32 F32 tensor comes first."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_llama(1) | {"torch_dtype": "bfloat16"}))
    header: dict[str, object] = {}
    offset = 0
    for name, dtype, size in [("model.layers.0.mlp.gate.e_score_correction_bias", "F32", 4),
                              ("model.layers.0.input_layernorm.weight", "BF16", 2),
                              ("model.layers.0.post_attention_layernorm.weight", "F32", 4)]:
        header[name] = {"dtype": dtype, "shape": [4], "data_offsets": [offset, offset + 4 * size]}
        offset += 4 * size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    _status, findings = _validate(folder)
    found = [f for f in findings if f["code"] == "HFC605"]
    assert len(found) == 1 and found[0]["message"].startswith("1 of 2 tensors are F32"), findings


@pytest.mark.parametrize("change", ["as is", "layer dropped", "last layer dropped", "transposed", "known extra in MTP",
                                    "layer past MTP", "MTP prefix stripped"])
def test_trailing_layers_compared_in_bulk_as_name_by_name(monkeypatch, change):
    """A folder whose only unknown names are the trailing layers the class ignores (DeepSeek-V3's
    multi-token prediction) is compared in bulk, with the same result as name by name."""
    from hfconv.checks import shapes
    from hfconv.contents import CheckOptions, read_contents
    from hfconv.discovery import discover
    from hfconv.rules import compare as compare_module

    calls = []
    original = compare_module._compare
    monkeypatch.setattr(compare_module, "_compare", lambda e, a, **k: calls.append((e, a)) or original(e, a, **k))
    folder = Path(__file__).parent.parent / "fixtures" / "quantized" / "deepseek_v3-fp8"
    list(shapes.check_shapes(read_contents(discover(folder), CheckOptions())))
    monkeypatch.setattr(compare_module, "_compare", original)
    expected, actual = calls[0]
    mtp = f"model.layers.{expected.counts[0].expected}."  # the layer after the last: multi-token prediction
    assert any(name.startswith(mtp) for name in actual)
    names, stored = list(actual), dict(actual)
    if change == "layer dropped":
        stored = {n: s for n, s in stored.items() if not n.startswith("model.layers.0.")}
    elif change == "transposed":
        stored[names[3]] = tuple(reversed(stored[names[3]]))
    elif change == "known extra in MTP":
        stored[mtp + "self_attn.rotary_emb.inv_freq"] = (4,)
    elif change == "layer past MTP":
        stored[f"model.layers.{expected.counts[0].expected + 1}.input_layernorm.weight"] = (4,)
    elif change == "MTP prefix stripped":
        stored = {n.removeprefix("model.") if n.startswith(mtp) else n: s for n, s in stored.items()}
    bulk = [original(expected, stored, any_mismatch=flag) for flag in (False, True)]
    if change == "as is":  # the bulk path was taken, and the MTP layer is ignored
        index = expected.tensors.index
        wants = [index.get(n, compare_module.NO_TENSOR) for n in stored]
        assert compare_module._trailing_only(expected, stored, [n.startswith(mtp) for n in stored], list(stored),
                                             wants, index, False) == bulk[0]
        assert bulk[0].ignored and all(name.startswith(mtp) for name, _ in bulk[0].ignored)
    monkeypatch.setattr(compare_module, "_trailing_only", lambda *args: None)
    one_by_one = [original(expected, stored, any_mismatch=flag) for flag in (False, True)]
    assert bulk == one_by_one


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from(["s1", "s2", "s3"])), max_size=12),
       st.lists(st.tuples(st.sampled_from("abcdefg"), st.sampled_from(["s1", "s2", "s3", "s4"])), max_size=12))
def test_index_in_place_shortcut_agrees_with_the_holders(stored, entries):
    """The index check's common-case shortcut says yes exactly where the full holder map agrees
    with the index entry for entry and no tensor is in two shards."""
    from hfconv.checks.index import _all_in_place, _holders
    from hfconv.tensors import TensorMeta, WeightFile

    shards: dict[str, dict[str, TensorMeta]] = {}
    for name, shard in stored:
        shards.setdefault(shard, {})[name] = TensorMeta(name=name, dtype="F32", shape=(1,))
    readable = {shard: WeightFile(path=shard, format="safetensors", tensors=held) for shard, held in shards.items()}
    weight_map = dict(entries)
    first, shared = _holders(readable)
    assert _all_in_place(weight_map, readable) == (first == weight_map and not shared)


def test_run_names_as_the_template_over_every_placeholder_value() -> None:
    """TensorRun.names' shortcut for one varying placeholder (the fixed ones filled in once, then
    concatenation) names exactly what formatting the template for every value combination names."""
    import itertools

    from hfconv.rules.expected import TensorRun, _Template

    def general(run: TensorRun) -> list[str]:
        return list(itertools.starmap(run.template.format.format, itertools.product(*run.ranges)))

    cases = [("model.layers.{i}.mlp.experts.{e}.w", ("i", "e"), [(3,), range(5)]),
             ("layers.{i}.experts.{e}.w", ("i", "e"), [range(4), (7,)]),
             ("a.{i}.b.{i}.c.{e}", ("i", "e"), [(2,), range(3)]),  # a placeholder named twice
             ("a.{i}.b.{i}.c.{e}", ("i", "e"), [range(3), (2,)]),
             ("x.{i}.y.{j}.z.{e}", ("i", "j", "e"), [(1,), (0,), range(12)]),
             ("x.{i}.y.{j}.z.{e}", ("i", "j", "e"), [range(2), range(2), (5,)])]
    for name, placeholders, ranges in cases:
        run = TensorRun(_Template(name, placeholders), tuple(ranges), (), (), False)
        assert run.names() == general(run), name
    # And over the largest real table: DeepSeek-V3's 256 experts a layer.
    config = json.loads((Path(__file__).parent.parent / "fixtures" / "quantized" / "deepseek_v3-fp8" /
                         "config.json").read_text())
    config.update(num_hidden_layers=4, n_routed_experts=256, first_k_dense_replace=1)
    model = expected_tensors(config)
    assert all(run.names() == general(run) for run in model.tensors.runs)
    assert len(model.tensors) > 3 * 256 * 3


def test_trailing_layers_of_any_pattern_take_their_label() -> None:
    """The trailing layers' patterns may come from a remote model's class (--reference transformers
    with --trust-remote-code) and use anchors a multiline search of all names joined reads
    otherwise (``\\A``): each name still gets its label, in any order, and nothing crashes."""
    from hfconv.rules.compare import compare
    from hfconv.rules.expected import Dim, ExpectedModel, ExpectedTensor

    weight = ExpectedTensor("w", (Dim(2),), False)
    model = ExpectedModel(tensors={"w": weight}, family=None, architecture=None, source="transformers test",
                          allowed_extras=(r"\Amtp\.x", r"mtp\.y"))
    for stored in ({"w": (2,), "mtp.x": (1,), "mtp.y": (1,)}, {"w": (2,), "mtp.y": (1,), "mtp.x": (1,)}):
        result = compare(model, stored)
        assert sorted(name for name, _ in result.ignored) == ["mtp.x", "mtp.y"]
        assert not result.unexpected and not result.mismatched
