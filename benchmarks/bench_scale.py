"""hfconv validate and inspect at tensor count, against the two peers that read the same headers.

Layouts are built as sparse files: real safetensors headers written here per the format (an
8-byte little-endian length, the JSON header padded with spaces to 8 bytes, as safetensors
writes it) and the tensor data left as a hole (``truncate``), so a 671B model costs a few
hundred MB of disk blocks at most. Layouts:

- ``deepseek-v3``: DeepSeek-V3 (671B, FP8 with 128x128 block scales) from its published
  config.json and tensor names: 61 layers (3 dense, 58 MoE with 256 routed experts and one shared
  expert), the multi-token-prediction layer 61, a ``weight_scale_inv`` per FP8 weight: 91,991
  tensors in 163 shards with a real index.
- ``llama-405b``: Llama-3.1-405B in bf16 (126 layers, 1,137 tensors, 191 shards).
- ``tiny-200k``: one file of 200,000 tiny tensors (a Llama config of 22,222 layers, hidden size 4).
- ``shards-2000``: 2,000 shards (a tiny Llama of 2,000 layers, one layer per shard).

Peers, each in its own process like hfconv:

- ``hub``: huggingface_hub's ``get_local_safetensors_metadata`` (the local twin of
  ``get_safetensors_metadata``: index, then every shard header into TensorInfo objects), plus
  the index cross-check (every tensor of the weight map in the shard it names, and no tensor
  outside it).
- ``safe_open``: safetensors' ``safe_open`` on each file, a loop over ``keys()`` with
  ``get_slice(name).get_shape()``.

Every tool runs interleaved (round by round), the median wall time of the rounds is reported
with the highest peak RSS, and each peer's ratio to hfconv validate. Then the growth tables:
hfconv and the peers at 1x, 2x, 4x and 8x the tensors (one file) and the shards.

Usage: python benchmarks/bench_scale.py [--rounds 3] [--work DIR] [--only deepseek-v3,...] [--no-growth]
The default run takes about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import compileall
import json
import math
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import Run, banner, measure

ROOT = Path(__file__).resolve().parent.parent

Entry = tuple[str, str, tuple[int, ...]]
"""(tensor name, safetensors dtype, shape)."""

BYTES = {"F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4, "I32": 4}

# --- writing safetensors files as headers over holes ---------------------------------------------


def write_sparse_safetensors(path: Path, entries: list[Entry], metadata: dict[str, str] | None = None) -> int:
    """A safetensors file holding ``entries`` in order, data a hole. Returns the data bytes."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in entries:
        size = math.prod(shape) * BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        handle.truncate(8 + len(raw) + offset)
    return offset


def write_sharded(folder: Path, entries: list[Entry], shards: int, name: str = "model-{:05d}-of-{:05d}.safetensors",
                  split: str = "bytes") -> None:
    """``entries`` cut in order into ``shards`` files (about equal bytes, or equal counts), plus
    model.safetensors.index.json."""
    sizes = [math.prod(shape) * BYTES[dtype] for _, dtype, shape in entries]
    weights = sizes

    def greedy(limit: float) -> list[list[Entry]]:
        """huggingface_hub's rule: in order, a new shard when the next tensor would not fit."""
        groups: list[list[Entry]] = [[]]
        acc = 0.0
        for entry, weight in zip(entries, weights, strict=True):
            if groups[-1] and acc + weight > limit:
                groups.append([])
                acc = 0.0
            groups[-1].append(entry)
            acc += weight
        return groups

    if split == "count":  # as even as counts go: the first ones one tensor more
        size, extra = divmod(len(entries), shards)
        cuts = [k * size + min(k, extra) for k in range(shards + 1)]
        groups = [entries[cuts[k]:cuts[k + 1]] for k in range(shards)]
    else:  # the smallest max shard size giving at most ``shards`` files (fewer files as it grows)
        low, high = max(weights) - 1.0, float(sum(weights))
        while high - low > max(1.0, high * 1e-6):
            middle = (low + high) / 2
            low, high = (middle, high) if len(greedy(middle)) > shards else (low, middle)
        groups = greedy(high)
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(groups, start=1):
        file = name.format(k, len(groups))
        total += write_sparse_safetensors(folder / file, group, {"format": "pt"})
        weight_map.update((n, file) for n, _, _ in group)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_config(folder: Path, config: dict) -> None:
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config.get("bos_token_id", 0), "eos_token_id": config.get("eos_token_id", 1),
         "transformers_version": "4.46.3"}, indent=2))


# --- DeepSeek-V3 ---------------------------------------------------------------------------------

DEEPSEEK_V3_CONFIG: dict = {
    # deepseek-ai/DeepSeek-V3 config.json as published, without its auto_map (the layout carries no
    # modeling code; transformers has deepseek_v3 built in).
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": 3,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "initializer_range": 0.02,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 8,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 4,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1",
    "use_cache": True,
    "v_head_dim": 128,
    "vocab_size": 129280,
}


def deepseek_v3_entries(config: dict) -> list[Entry]:
    """The tensors of deepseek-ai/DeepSeek-V3, named and shaped from ``config``: every Linear in
    FP8 with an F32 ``weight_scale_inv`` of ceil(out/128) x ceil(in/128), norms and the router in
    bf16 (the router's bias in F32), and the MTP layer's own embedding, projections and head."""
    c = config
    bs0, bs1 = c["quantization_config"]["weight_block_size"]
    hidden, heads = c["hidden_size"], c["num_attention_heads"]
    qk_head = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]

    def fp8(name: str, out: int, inp: int) -> list[Entry]:
        return [(name + ".weight", "F8_E4M3", (out, inp)),
                (name + ".weight_scale_inv", "F32", (-(-out // bs0), -(-inp // bs1)))]

    def mlp(p: str, inter: int) -> list[Entry]:
        return (fp8(p + "gate_proj", inter, hidden) + fp8(p + "up_proj", inter, hidden)
                + fp8(p + "down_proj", hidden, inter))

    def layer(i: int) -> list[Entry]:
        p = f"model.layers.{i}."
        a = p + "self_attn."
        out: list[Entry] = [(p + "input_layernorm.weight", "BF16", (hidden,))]
        out += fp8(a + "q_a_proj", c["q_lora_rank"], hidden)
        out += [(a + "q_a_layernorm.weight", "BF16", (c["q_lora_rank"],))]
        out += fp8(a + "q_b_proj", heads * qk_head, c["q_lora_rank"])
        out += fp8(a + "kv_a_proj_with_mqa", c["kv_lora_rank"] + c["qk_rope_head_dim"], hidden)
        out += [(a + "kv_a_layernorm.weight", "BF16", (c["kv_lora_rank"],))]
        out += fp8(a + "kv_b_proj", heads * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"])
        out += fp8(a + "o_proj", hidden, heads * c["v_head_dim"])
        out += [(p + "post_attention_layernorm.weight", "BF16", (hidden,))]
        if i < c["first_k_dense_replace"]:
            out += mlp(p + "mlp.", c["intermediate_size"])
        else:
            experts = c["n_routed_experts"]
            out += [(p + "mlp.gate.weight", "BF16", (experts, hidden)),
                    (p + "mlp.gate.e_score_correction_bias", "F32", (experts,))]
            for e in range(experts):
                out += mlp(f"{p}mlp.experts.{e}.", c["moe_intermediate_size"])
            out += mlp(p + "mlp.shared_experts.", c["moe_intermediate_size"] * c["n_shared_experts"])
        if i >= c["num_hidden_layers"]:  # the multi-token-prediction module
            vocab = c["vocab_size"]
            out += [(p + "embed_tokens.weight", "BF16", (vocab, hidden)),
                    (p + "enorm.weight", "BF16", (hidden,)), (p + "hnorm.weight", "BF16", (hidden,)),
                    (p + "eh_proj.weight", "BF16", (hidden, 2 * hidden)),
                    (p + "shared_head.head.weight", "BF16", (vocab, hidden)),
                    (p + "shared_head.norm.weight", "BF16", (hidden,))]
        return out

    entries: list[Entry] = [("model.embed_tokens.weight", "BF16", (c["vocab_size"], hidden))]
    for i in range(c["num_hidden_layers"] + c["num_nextn_predict_layers"]):
        entries += layer(i)
    entries += [("model.norm.weight", "BF16", (hidden,)), ("lm_head.weight", "BF16", (c["vocab_size"], hidden))]
    return entries


def build_deepseek_v3(folder: Path, transposed_expert: bool = False) -> None:
    entries = deepseek_v3_entries(DEEPSEEK_V3_CONFIG)
    if transposed_expert:  # one expert's down_proj stored [2048, 7168] instead of [7168, 2048]
        target = "model.layers.10.mlp.experts.7.down_proj.weight"
        entries = [(n, d, s[::-1] if n == target else s) for n, d, s in entries]
    write_sharded(folder, entries, 163, "model-{:05d}-of-{:06d}.safetensors")
    write_config(folder, DEEPSEEK_V3_CONFIG)


# --- Llama-3.1-405B and the tiny Llamas ----------------------------------------------------------

LLAMA_405B_CONFIG: dict = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "hidden_size": 16384, "initializer_range": 0.02, "intermediate_size": 53248,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 128,
    "num_hidden_layers": 126, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.42.3", "use_cache": True, "vocab_size": 128256,
}


def tiny_llama_config(layers: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4,
            "intermediate_size": 8, "num_hidden_layers": layers, "num_attention_heads": 2,
            "num_key_value_heads": 1, "vocab_size": 16, "torch_dtype": "float32", "tie_word_embeddings": False,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 64, "bos_token_id": 0, "eos_token_id": 1}


def llama_entries(config: dict, dtype: str) -> list[Entry]:
    """Tensors of a LlamaForCausalLM as save_pretrained orders them (embedding, layers, norm, head)."""
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * (h // config["num_attention_heads"])
    entries: list[Entry] = [("model.embed_tokens.weight", dtype, (vocab, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        entries += [(p + "input_layernorm.weight", dtype, (h,)),
                    (p + "mlp.down_proj.weight", dtype, (h, inter)),
                    (p + "mlp.gate_proj.weight", dtype, (inter, h)),
                    (p + "mlp.up_proj.weight", dtype, (inter, h)),
                    (p + "post_attention_layernorm.weight", dtype, (h,)),
                    (p + "self_attn.k_proj.weight", dtype, (kv, h)),
                    (p + "self_attn.o_proj.weight", dtype, (h, h)),
                    (p + "self_attn.q_proj.weight", dtype, (h, h)),
                    (p + "self_attn.v_proj.weight", dtype, (kv, h))]
    entries += [("model.norm.weight", dtype, (h,)), ("lm_head.weight", dtype, (vocab, h))]
    return entries


def build_llama_405b(folder: Path) -> None:
    write_sharded(folder, llama_entries(LLAMA_405B_CONFIG, "BF16"), 191)
    write_config(folder, LLAMA_405B_CONFIG)


def build_tiny_file(folder: Path, tensors: int) -> None:
    """One model.safetensors of about ``tensors`` tiny F32 tensors (9 per layer, 3 more)."""
    config = tiny_llama_config(max(1, -(-(tensors - 3) // 9)))
    write_sparse_safetensors(folder / "model.safetensors", llama_entries(config, "F32"), {"format": "pt"})
    write_config(folder, config)


def build_shards(folder: Path, shards: int) -> None:
    """A tiny Llama of ``shards`` layers, one layer per shard (the first and last take the rest)."""
    config = tiny_llama_config(shards)
    write_sharded(folder, llama_entries(config, "F32"), shards, split="count")
    write_config(folder, config)


LAYOUTS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "deepseek-v3": ("DeepSeek-V3 (671B, FP8, 163 shards)", build_deepseek_v3),
    "llama-405b": ("Llama-3.1-405B (bf16, 191 shards)", build_llama_405b),
    "tiny-200k": ("one file of 200,000 tiny tensors", lambda f: build_tiny_file(f, 200_000)),
    "shards-2000": ("2,000 shards", lambda f: build_shards(f, 2000)),
}

# --- the tools -----------------------------------------------------------------------------------

HUB_PEER = r"""
import sys
from huggingface_hub import get_local_safetensors_metadata
folder = sys.argv[1]
repo = get_local_safetensors_metadata(folder)
# The index cross-check: every tensor the weight map names is in the shard it names, and every
# tensor of a shard is in the weight map (under that shard).
held = {}
for shard, meta in repo.files_metadata.items():
    for name in meta.tensors:
        held[name] = shard
bad = [n for n, s in repo.weight_map.items() if held.get(n) != s] + [n for n in held if n not in repo.weight_map]
count = sum(len(m.tensors) for m in repo.files_metadata.values())
params = sum(sum(m.parameter_count.values()) for m in repo.files_metadata.values())
print(count, params, len(bad))
sys.exit(1 if bad else 0)
"""

SAFE_OPEN_PEER = r"""
import json, os, sys
from safetensors import safe_open
folder = sys.argv[1]
index = os.path.join(folder, "model.safetensors.index.json")
if os.path.exists(index):
    with open(index) as handle:
        files = sorted(set(json.load(handle)["weight_map"].values()))
else:
    files = ["model.safetensors"]
count = params = 0
for file in files:
    with safe_open(os.path.join(folder, file), framework="pt") as f:
        for name in f.keys():
            shape = f.get_slice(name).get_shape()
            n = 1
            for d in shape:
                n *= d
            params += n
            count += 1
print(count, params)
"""

TOOLS: dict[str, Callable[[Path], list[str]]] = {
    "hfconv validate": lambda f: [sys.executable, "-m", "hfconv", "validate", str(f)],
    "hfconv inspect": lambda f: [sys.executable, "-m", "hfconv", "inspect", str(f)],
    "hub metadata + index": lambda f: [sys.executable, "-c", HUB_PEER, str(f)],
    "safe_open loop": lambda f: [sys.executable, "-c", SAFE_OPEN_PEER, str(f)],
}


def run_rounds(folders: dict[str, Path], tools: list[str], rounds: int) -> dict[tuple[str, str], list[Run]]:
    """Every tool on every folder, ``rounds`` times, interleaved: round 1 of everything, then round 2."""
    results: dict[tuple[str, str], list[Run]] = {}
    for _ in range(rounds):
        for key, folder in folders.items():
            for tool in tools:
                results.setdefault((key, tool), []).append(measure(TOOLS[tool](folder), error_tail=3000))
    return results


def tensor_count(folder: Path) -> int:
    count = 0
    for path in folder.glob("*.safetensors"):
        with open(path, "rb") as handle:
            (n,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(n))
        count += len(header) - ("__metadata__" in header)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--work", type=Path, default=None, help="where to build (default: a temp folder)")
    parser.add_argument("--only", default=",".join(LAYOUTS), help="comma-separated layouts")
    parser.add_argument("--no-growth", action="store_true", help="skip the 1x-8x growth tables")
    parser.add_argument("--growth-rounds", type=int, default=1)
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    # As an installed hfconv is (pip compiles a wheel's modules), and as the peers are: with
    # PYTHONDONTWRITEBYTECODE set, a checkout's edited modules would be compiled on every run.
    compileall.compile_dir(str(ROOT / "hfconv"), quiet=1)
    work = args.work or Path(tempfile.mkdtemp(prefix="hfconv-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(banner("bench_scale", work))
    started = time.perf_counter()
    try:
        folders: dict[str, Path] = {}
        for key in args.only.split(","):
            title, build = LAYOUTS[key]
            folder = work / key
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            t0 = time.perf_counter()
            build(folder)
            print(f"built {key}: {tensor_count(folder):,} tensors in {len(list(folder.glob('*.safetensors')))} "
                  f"files ({time.perf_counter() - t0:.1f} s)", flush=True)
            folders[key] = folder
        tools = list(TOOLS)
        results = run_rounds(folders, tools, args.rounds)
        print()
        print(main_table(folders, tools, results, args.rounds))
        if not args.no_growth:
            print()
            print(growth(work, tools, args.growth_rounds))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def _cell(results: list[Run]) -> str:
    wall = statistics.median(r[0] for r in results)
    return f"{wall:.2f} s, {max(r[1] for r in results) / 1e6:.0f} MB"


def main_table(folders: dict[str, Path], tools: list[str], results: dict[tuple[str, str], list[Run]],
               rounds: int) -> str:
    """Markdown: one row per layout, a cell per tool (median wall, peak RSS), then peer / validate ratios."""
    peers = [t for t in tools if not t.startswith("hfconv")]
    head = ["folder", "tensors", *tools, *(f"{p} / validate" for p in peers)]
    lines = [f"median of {rounds} interleaved rounds; wall time and peak RSS of the whole process",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, folder in folders.items():
        base = statistics.median(r[0] for r in results[(key, "hfconv validate")])
        cells = [LAYOUTS[key][0], f"{tensor_count(folder):,}"]
        cells += [_cell(results[(key, t)]) for t in tools]
        cells += [f"{statistics.median(r[0] for r in results[(key, p)]) / base:.2f}x" for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def growth(work: Path, tools: list[str], rounds: int) -> str:
    """Time at 1x, 2x, 4x and 8x the tensors (one file, 25,000 up) and the shards (250 up)."""
    lines: list[str] = []
    for what, base, build in (("tensors in one file", 25_000, build_tiny_file), ("shards", 250, build_shards)):
        folders: dict[str, Path] = {}
        for factor in (1, 2, 4, 8):
            folder = work / f"growth-{what.split()[0]}-{factor}x"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder, base * factor)
            folders[f"{factor}x"] = folder
        results = run_rounds(folders, tools, rounds)
        lines += [f"growth with {what} (median wall s of {rounds}; per-1x ratio in brackets)",
                  "| | " + " | ".join(f"{f} ({base * int(f[:-1]):,})" for f in folders) + " |",
                  "|---|" + "---|" * len(folders)]
        for tool in tools:
            walls = [statistics.median(r[0] for r in results[(f, tool)]) for f in folders]
            lines.append(f"| {tool} | " + " | ".join(f"{w:.2f} ({w / walls[0]:.1f})" for w in walls) + " |")
        lines.append("")
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
