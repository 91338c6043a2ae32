"""Benchmark: `hfconv validate` reads metadata only, so its cost does not grow with tensor bytes.

Builds (once, cached under --workdir) Llama-shaped folders of about 1.9 GB in 5 shards, in
both formats, and the same tensors at 4x the bytes (hidden and intermediate sizes doubled),
then prints for each: validate's wall time, peak RSS and bytes read (rchar from
/proc/<pid>/io, i.e. every byte the process read through read(2)), next to the time `cat`
takes to read the shards once.

    python benchmarks/bench_validate.py [--workdir /tmp/hfconv-bench] [--repeat 3]

Targets (issue 2): validate reads < 1% of the folder's bytes, finishes < 1 s, peak RSS
< 200 MB, and its time does not grow with tensor bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Runs validate in-process, then reports the process's own read counter before exiting.
PROBE = r"""
import sys
from hfconv.cli import main
code = 0
try:
    main(["validate", sys.argv[1], "--format", "json"], standalone_mode=False)
except SystemExit as exc:
    code = exc.code or 0
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
# VmHWM is this process's own peak; ru_maxrss would carry the parent's peak across exec.
rss_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(f"BENCH rchar={io['rchar']} rss_kb={rss_kb}", file=sys.stderr)
"""


def llama_shapes(hidden: int, inter: int, layers: int, vocab: int, kv_heads_ratio: int = 4) -> list[tuple[str, tuple]]:
    kv = hidden // kv_heads_ratio
    shapes: list[tuple[str, tuple]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (kv, hidden)),
            (p + "self_attn.v_proj.weight", (kv, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
            (p + "input_layernorm.weight", (hidden,)),
            (p + "post_attention_layernorm.weight", (hidden,)),
        ]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return shapes


def build_folder(folder: Path, fmt: str, hidden: int, inter: int, layers: int, vocab: int, shards: int = 5) -> None:
    """Write a sharded folder with the real libraries (torch.save / safetensors save_file)."""
    import torch
    from safetensors.torch import save_file

    if (folder / "DONE").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    shapes = llama_shapes(hidden, inter, layers, vocab)
    total = sum(4 * _numel(s) for _, s in shapes)
    per_shard = total / shards
    groups: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 4 * _numel(shape)
        if groups[-1] and size + nbytes > per_shard and len(groups) < shards:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    n = len(groups)
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors" if fmt == "safetensors" else f"pytorch_model-{i:05d}-of-{n:05d}.bin"
        tensors = {t: torch.full(s, 0.01 * (j + 1), dtype=torch.float32) for j, (t, s) in enumerate(group)}
        if fmt == "safetensors":
            save_file(tensors, folder / name, metadata={"format": "pt"})
        else:
            torch.save(tensors, folder / name)
        weight_map.update({t: name for t in tensors})
        del tensors
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
              "num_key_value_heads": 4, "vocab_size": vocab, "torch_dtype": "float32",
              "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "DONE").write_text("")


def _numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".bin", ".safetensors"))


def time_cat(folder: Path) -> float:
    shards = sorted(str(p) for p in folder.iterdir() if p.suffix in (".bin", ".safetensors"))
    start = time.perf_counter()
    subprocess.run(["cat", *shards], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def time_validate(folder: Path) -> tuple[float, int, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, str(folder)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    line = next(line for line in proc.stderr.splitlines() if line.startswith("BENCH "))
    fields = dict(item.split("=") for item in line.split()[1:])
    report = json.loads(proc.stdout)
    assert report["ok"], report["findings"]
    return wall, int(fields["rchar"]), int(fields["rss_kb"]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/hfconv-bench")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(args.workdir)
    cases = []
    for scale, (hidden, inter) in (("1x", (2048, 5632)), ("4x", (4096, 11264))):
        for fmt in ("safetensors", "bin"):
            folder = work / f"validate-{fmt}-{scale}"
            print(f"preparing {folder} ...", file=sys.stderr)
            build_folder(folder, fmt, hidden, inter, layers=8, vocab=32000)
            cases.append((f"{fmt} {scale}", folder))

    header = f"{'folder':<18}{'GB':>7}{'shards':>7}{'cat s':>8}{'validate s':>12}{'ratio':>8}{'read MB':>9}{'read %':>9}{'peak RSS MB':>13}"
    print(header)
    print("-" * len(header))
    for label, folder in cases:
        size = folder_bytes(folder)
        shards = sum(1 for p in folder.iterdir() if p.suffix in (".bin", ".safetensors"))
        cat = statistics.median(time_cat(folder) for _ in range(args.repeat))
        runs = [time_validate(folder) for _ in range(args.repeat)]
        wall = statistics.median(r[0] for r in runs)
        read = max(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        print(f"{label:<18}{size / 1e9:>7.2f}{shards:>7}{cat:>8.2f}{wall:>12.3f}{wall / cat:>8.2f}"
              f"{read / 1e6:>9.2f}{100 * read / size:>8.3f}%{rss / 1e6:>13.1f}")
    print("\nread MB counts every byte the validate process read (Python, hfconv and its JSON included).")


if __name__ == "__main__":
    main()
