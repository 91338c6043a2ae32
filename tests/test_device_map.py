"""The device-map planner and map files: plain integers, no torch, no GPU."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfconv.load.device_map import (
    DeviceMapSyntaxError,
    PlanError,
    compact_modules,
    group_units,
    module_of,
    parse_device,
    plan_device_map,
    plan_from_map,
    read_device_map,
    resolve,
    unused_keys,
)

GiB = 1 << 30


def llama(layers: int = 4, block: int = 100, embed: int = 50, head: int = 50, *, alphabetical: bool = True,
          tied: bool = False) -> list[tuple[str, int]]:
    """A Llama-shaped tensor list; by default in safetensors' (alphabetical) file order."""
    items = [("model.embed_tokens.weight", embed)]
    for i in range(layers):
        items += [(f"model.layers.{i}.self_attn.q_proj.weight", block // 2),
                  (f"model.layers.{i}.mlp.down_proj.weight", block - block // 2 - 1),
                  (f"model.layers.{i}.input_layernorm.weight", 1)]
    items.append(("model.norm.weight", 1))
    if not tied:
        items.append(("lm_head.weight", head))
    return sorted(items) if alphabetical else items


def caps(*gpus: int | None, cpu: int | None = None, disk: int | None = None, no_disk: bool = False) -> dict:
    out: dict[str, int | None] = {f"cuda:{i}": g for i, g in enumerate(gpus)}
    if cpu is not None:
        out["cpu"] = cpu
    if not no_disk:
        out["disk"] = disk
    return out


def order(plan) -> list[str]:
    return list(plan.modules)


# --- units ---------------------------------------------------------------------------------------

def test_units_are_blocks_and_parent_modules_in_model_order_not_file_order() -> None:
    items = llama(layers=12)
    names_in_file = [name for name, _ in items]  # safetensors' order: alphabetical
    assert names_in_file[0] == "lm_head.weight"
    ten, two = "model.layers.10.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"
    assert names_in_file.index(ten) < names_in_file.index(two)
    names = [u.name for u in group_units(items)]
    assert names == ["model.embed_tokens", *[f"model.layers.{i}" for i in range(12)], "model.norm", "lm_head"]
    assert all(u.block for u in group_units(items) if u.name.startswith("model.layers."))


@pytest.mark.parametrize("name, unit", [
    ("model.layers.7.mlp.up_proj.weight", "model.layers.7"),
    ("model.layers.3.block_sparse_moe.experts.5.w1.weight", "model.layers.3"),  # an expert stays in its block
    ("transformer.h.3.attn.c_attn.weight", "transformer.h.3"),
    ("encoder.block.2.layer.0.SelfAttention.q.weight", "encoder.block.2"),
    ("bert.encoder.layer.11.output.dense.bias", "bert.encoder.layer.11"),
    ("model.embed_tokens.weight", "model.embed_tokens"),
    ("lm_head.weight", "lm_head"),
    ("logit_scale", "logit_scale"),
    ("model.layers_norm.weight", "model.layers_norm"),
])
def test_module_of(name: str, unit: str) -> None:
    assert module_of(name) == unit


def test_encoder_runs_before_decoder_and_closing_norms_follow_their_stack() -> None:
    items = sorted([("shared.weight", 10), ("encoder.final_layer_norm.weight", 1),
                    ("decoder.final_layer_norm.weight", 1), ("lm_head.weight", 10)]
                   + [(f"{s}.block.{i}.layer.0.w", 5) for s in ("encoder", "decoder") for i in range(3)])
    names = [u.name for u in group_units(items)]
    assert names == ["shared", "encoder.block.0", "encoder.block.1", "encoder.block.2", "encoder.final_layer_norm",
                     "decoder.block.0", "decoder.block.1", "decoder.block.2", "decoder.final_layer_norm", "lm_head"]


def test_gpt2_names() -> None:
    items = sorted([("transformer.wte.weight", 10), ("transformer.wpe.weight", 2), ("transformer.ln_f.weight", 1),
                    ("transformer.h.0.attn.c_attn.weight", 5), ("transformer.h.1.attn.c_attn.weight", 5)])
    assert [u.name for u in group_units(items)] == [
        "transformer.wpe", "transformer.wte", "transformer.h.0", "transformer.h.1", "transformer.ln_f"]


def test_repeated_name_and_negative_size_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        group_units([("a.w", 1), ("a.w", 1)])
    with pytest.raises(ValueError, match="negative"):
        plan_device_map([("a.w", -1)], {"cpu": 10})
    with pytest.raises(ValueError, match="strategy"):
        plan_device_map([("a.w", 1)], {"cpu": 10}, "fastest")


# --- planning ------------------------------------------------------------------------------------

def test_everything_fits_on_one_device() -> None:
    items = llama()
    total = sum(size for _, size in items)
    for strategy in ("auto", "sequential", "balanced"):
        plan = plan_device_map(items, caps(cpu=total, disk=None), strategy)
        assert set(plan.tensors.values()) == {"cpu"}, strategy
        assert plan.bytes == {"cpu": total} and plan.reserved == {} and not plan.offloads
    plan = plan_device_map(items, caps(total, total, cpu=10 * total), "sequential")
    assert plan.devices == ("cuda:0",)  # sequential fills the first GPU; exactly full is fine
    assert plan.tensor_counts == {"cuda:0": len(items)}


def test_auto_and_balanced_spread_blocks_evenly_over_gpus_sequential_does_not() -> None:
    items = llama(layers=4)  # embed 50, 4 x 100, norm 1, head 50 = 501
    balanced = plan_device_map(items, caps(GiB, GiB, cpu=GiB), "balanced")
    auto = plan_device_map(items, caps(GiB, GiB, cpu=GiB), "auto")
    sequential = plan_device_map(items, caps(GiB, GiB, cpu=GiB), "sequential")
    assert balanced.modules == auto.modules
    assert balanced.modules == {"model.embed_tokens": "cuda:0", "model.layers.0": "cuda:0", "model.layers.1": "cuda:0",
                                "model.layers.2": "cuda:1", "model.layers.3": "cuda:1", "model.norm": "cuda:1",
                                "lm_head": "cuda:1"}
    assert balanced.bytes == {"cuda:0": 250, "cuda:1": 251}
    assert sequential.devices == ("cuda:0",)


def test_balanced_over_four_gpus_is_the_smallest_largest_load_and_even() -> None:
    items = llama(layers=32, block=100, embed=100, head=100)  # 34 units of 100 bytes and a 1-byte norm
    plan = plan_device_map(items, caps(GiB, GiB, GiB, GiB, cpu=GiB), "balanced")
    assert plan.bytes == {"cuda:0": 900, "cuda:1": 900, "cuda:2": 800, "cuda:3": 801}


def test_balanced_respects_a_smaller_gpu() -> None:
    plan = plan_device_map(llama(layers=8), caps(250, GiB, cpu=GiB), "balanced")
    assert plan.bytes["cuda:0"] <= 250
    assert plan.bytes["cuda:0"] + plan.bytes["cuda:1"] == sum(s for _, s in llama(layers=8))


def test_balanced_without_gpu_uses_the_cpu_and_never_offloads() -> None:
    assert plan_device_map(llama(), caps(cpu=GiB), "balanced").devices == ("cpu",)
    with pytest.raises(PlanError) as err:
        plan_device_map(llama(), caps(200, 200, cpu=GiB), "balanced")
    assert err.value.code == "HFC733" and "device_map='auto'" in err.value.message


def test_auto_offloads_to_cpu_then_disk_keeping_room_for_the_largest_block() -> None:
    items = llama(layers=4)
    plan = plan_device_map(items, caps(200, 200, cpu=150, disk=None), "auto")
    # 501 bytes do not fit 400 bytes of GPU: accelerate's rule keeps 100 bytes (one block) free on
    # cuda:0 for offloaded layers, and on the cpu because disk is used.
    assert plan.reserved == {"cuda:0": 100, "cpu": 100}
    assert plan.bytes["cuda:0"] <= 200 - 100
    assert plan.modules["model.embed_tokens"] == "cuda:0"
    assert plan.modules["lm_head"] == "disk"
    assert plan.offloads
    _assert_monotone(plan)


def test_cpu_only_machine_offloads_to_disk() -> None:
    items = llama(layers=4)
    plan = plan_device_map(items, caps(cpu=300, disk=None), "auto")
    assert plan.devices == ("cpu", "disk")
    assert plan.reserved == {"cpu": 100} and plan.bytes["cpu"] <= 200
    assert plan_device_map(items, caps(cpu=300, disk=None), "sequential").modules == plan.modules
    # Everything on disk is fine while the cpu can take back one block to run it ...
    assert plan_device_map(items, caps(cpu=100, disk=None), "auto").devices == ("disk",)
    # ... and an error when it cannot: the model could never run.
    with pytest.raises(PlanError) as err:
        plan_device_map(items, caps(cpu=99, disk=None), "auto")
    assert err.value.device == "cpu" and "brought back to cpu" in err.value.message
    with pytest.raises(PlanError):
        plan_device_map(items, caps(cpu=0, disk=None), "auto")


def test_one_block_larger_than_a_gpu_moves_on_and_never_comes_back() -> None:
    items = llama(layers=8, block=100)
    items = [(n, 400 if n.startswith("model.layers.1.mlp") else s) for n, s in items]  # layer 1: 451 bytes
    plan = plan_device_map(items, caps(620, 300, cpu=GiB), "sequential")
    # The model needs offloading, so cuda:0 keeps 451 bytes free for the largest block
    # (accelerate's rule) and takes only the embedding and layer 0.
    assert plan.reserved == {"cuda:0": 451}
    assert plan.modules["model.embed_tokens"] == plan.modules["model.layers.0"] == "cuda:0"
    assert plan.modules["model.layers.1"] == "cpu"  # too big for cuda:1, cannot be split
    later = [f"model.layers.{i}" for i in range(2, 8)] + ["model.norm", "lm_head"]
    assert all(plan.modules[m] == "cpu" for m in later)  # cuda:1 is behind: never back
    _assert_monotone(plan)
    # Larger than every GPU: offloaded, it could never be brought back to cuda:0 to run.
    with pytest.raises(PlanError) as err:
        plan_device_map(items, caps(300, 300, cpu=GiB), "auto")
    assert err.value.code == "HFC733" and err.value.tensor == "model.layers.1" and err.value.device == "cuda:0"
    assert "brought back to cuda:0" in err.value.message


def test_a_block_larger_than_every_device_is_named() -> None:
    items = [(n, 10_000 if n.startswith("model.layers.2.mlp") else s) for n, s in llama()]
    with pytest.raises(PlanError) as err:
        plan_device_map(items, caps(1000, 1000, cpu=1000, disk=1000), "auto")
    assert err.value.code == "HFC733" and err.value.tensor == "model.layers.2"
    assert "cannot be split" in err.value.message


def test_limits_that_cannot_be_met() -> None:
    with pytest.raises(PlanError) as err:
        plan_device_map(llama(), caps(100, cpu=100, disk=100), "auto")
    assert err.value.code == "HFC733" and "501 B" in err.value.message
    with pytest.raises(PlanError):
        plan_device_map(llama(), caps(cpu=500, no_disk=True), "sequential")


def test_zero_capacity_leaves_a_device_out() -> None:
    plan = plan_device_map(llama(), caps(0, GiB, cpu=GiB), "auto")
    assert plan.devices == ("cuda:1",) and "cuda:0" not in plan.capacities


def test_tied_lm_head_joins_the_embedding_and_counts_once() -> None:
    items = llama(layers=4)
    tied = [("model.embed_tokens.weight", "lm_head.weight")]
    plan = plan_device_map(items, caps(GiB, GiB, cpu=GiB), "auto", tied)
    assert plan.modules["lm_head"] == plan.modules["model.embed_tokens"] == "cuda:0"
    assert sum(plan.bytes.values()) == sum(s for _, s in items) - 50


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 500), min_size=1, max_size=30),
       gpus=st.lists(st.integers(0, 2000), max_size=4),
       cpu=st.integers(0, 3000), strategy=st.sampled_from(["auto", "sequential", "balanced"]))
def test_plans_respect_limits_never_split_blocks_and_keep_order(sizes, gpus, cpu, strategy) -> None:
    items = [("model.embed_tokens.weight", sizes[0])]
    items += [(f"model.layers.{i}.mlp.w{j}", s // 2 + j) for i, s in enumerate(sizes[1:]) for j in range(2)]
    items.append(("lm_head.weight", sizes[0]))
    capacities = caps(*gpus, cpu=cpu, disk=None)
    try:
        plan = plan_device_map(items, capacities, strategy)
    except PlanError as exc:
        assert exc.code == "HFC733"
        if strategy != "balanced":  # with an unlimited disk, only the execution device can be too small
            assert "brought back" in exc.message
        return
    assert set(plan.tensors) == {name for name, _ in items}
    for device, used in plan.bytes.items():
        limit = plan.capacities[device]
        assert limit is None or used <= limit
    for name, device in plan.tensors.items():
        assert plan.modules[module_of(name)] == device  # a block is on one device
    _assert_monotone(plan)
    gpus = [d for d in plan.capacities if d.startswith("cuda:")]
    runner = gpus[0] if gpus else "cpu"
    offload = {"cpu", "disk"} if gpus else {"disk"}
    offloaded = [u.nbytes for u in group_units(items) if plan.modules[u.name] in offload]
    room = plan.capacities.get(runner, 0)
    if offloaded:  # the execution device can take back the largest offloaded block
        assert room is None or max(offloaded) <= room


def _assert_monotone(plan) -> None:
    from hfconv.load.device_map import device_sort_key

    keys = [device_sort_key(d) for d in plan.modules.values()]
    assert keys == sorted(keys), plan.modules


# --- device maps from files ---------------------------------------------------------------------

def test_read_device_map_accepts_from_pretrained_forms() -> None:
    text = json.dumps({"model.embed_tokens": 0, "model.layers.0": "cuda:1", "model.layers.1": "CPU",
                       "model.norm": "disk", "lm_head": "meta", "": "cuda"})
    assert read_device_map(text) == {"model.embed_tokens": "cuda:0", "model.layers.0": "cuda:1",
                                     "model.layers.1": "cpu", "model.norm": "disk", "lm_head": "meta", "": "cuda:0"}


@pytest.mark.parametrize("text, words", [
    ("{", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ("{}", "empty"),
    ('{"a": "mps"}', "invalid device 'mps'"),
    ('{"a": -1}', "start at 0"),
    ('{"a": true}', "invalid device True"),
    ('{"a": "cuda:x"}', "invalid device"),
    ('{"a": 0, "a": 1}', "twice"),
])
def test_read_device_map_errors(text: str, words: str) -> None:
    with pytest.raises(DeviceMapSyntaxError, match=words):
        read_device_map(text)


@pytest.mark.parametrize("value, device", [(0, "cuda:0"), ("3", "cuda:3"), ("cuda", "cuda:0"), (" cuda:2 ", "cuda:2"),
                                           ("cpu", "cpu"), ("DISK", "disk"), ("meta", "meta")])
def test_parse_device(value, device: str) -> None:
    assert parse_device(value) == device


def test_resolve_uses_the_longest_dotted_prefix() -> None:
    device_map = {"model": "cpu", "model.layers.1": "cuda:0", "model.layers.10": "cuda:1", "": "disk"}
    names = ["model.layers.1.mlp.w", "model.layers.10.mlp.w", "model.layers.100.mlp.w", "model.norm.weight",
             "lm_head.weight", "modelx.w"]
    assert resolve(device_map, names) == {"model.layers.1.mlp.w": "cuda:0", "model.layers.10.mlp.w": "cuda:1",
                                          "model.layers.100.mlp.w": "cpu", "model.norm.weight": "cpu",
                                          "lm_head.weight": "disk", "modelx.w": "disk"}


def test_unassigned_tensors_are_an_error() -> None:
    with pytest.raises(PlanError) as err:
        resolve({"model": "cpu"}, ["model.norm.weight", "lm_head.weight"])
    assert err.value.code == "HFC731" and err.value.tensor == "lm_head.weight"
    assert "lm_head.weight" in err.value.message


def test_plan_from_map_checks_devices_and_limits() -> None:
    items = llama(layers=2)
    capacities = caps(1000, cpu=1000)
    plan = plan_from_map({"model.layers": "cuda:0", "": "cpu"}, items, capacities)
    assert plan.strategy == "file" and plan.modules == {"model.layers": "cuda:0", "": "cpu"}
    assert plan.bytes == {"cuda:0": 200, "cpu": 101}
    with pytest.raises(PlanError) as err:
        plan_from_map({"": "cuda:3"}, items, capacities)
    assert err.value.code == "HFC732" and "cuda:3" in err.value.message and "cuda:0, cpu, disk" in err.value.message
    with pytest.raises(PlanError) as err:
        plan_from_map({"": "cuda:0"}, items, caps(200, cpu=1000))
    assert err.value.code == "HFC733" and err.value.device == "cuda:0"
    meta = plan_from_map({"": "cpu", "lm_head": "meta"}, items, caps(cpu=1000))
    assert meta.tensors["lm_head.weight"] == "meta"
    with pytest.raises(PlanError) as err:  # disk blocks that the cpu could never take back to run
        plan_from_map({"": "disk"}, items, caps(cpu=99))
    assert err.value.code == "HFC733" and err.value.device == "cpu"
    assert plan_from_map({"": "disk"}, items, caps(cpu=100)).bytes == {"disk": 301}


def test_plan_from_map_counts_a_shared_storage_once_per_device() -> None:
    items = [("model.embed_tokens.weight", 50), ("lm_head.weight", 50)]
    tied = [("model.embed_tokens.weight", "lm_head.weight")]
    assert plan_from_map({"": "cpu"}, items, caps(cpu=50), tied).bytes == {"cpu": 50}
    split = plan_from_map({"model": "cpu", "lm_head": "disk"}, items, caps(cpu=50), tied)
    assert split.bytes == {"cpu": 50, "disk": 50}


def test_unused_keys() -> None:
    assert unused_keys({"model.layer.0": "cpu", "model.layers.0": "cpu", "": "cpu"},
                       ["model.layers.0.w"]) == ["model.layer.0"]


def test_compact_modules_collapses_runs_of_blocks() -> None:
    modules = {"model.embed_tokens": "cuda:0", **{f"model.layers.{i}": "cuda:0" for i in range(3)},
               **{f"model.layers.{i}": "cpu" for i in range(3, 5)}, "model.layers.5": "disk", "lm_head": "disk"}
    assert compact_modules(modules) == [("model.embed_tokens", "cuda:0"), ("model.layers.0-2", "cuda:0"),
                                        ("model.layers.3-4", "cpu"), ("model.layers.5", "disk"), ("lm_head", "disk")]
