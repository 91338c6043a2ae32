"""Benchmark: `hfconv load-test` of a sharded fp32 safetensors folder against the usual ways to load.

Makes (once, cached under --workdir) a Llama-shaped fp32 folder of about --size-gb GB in
safetensors shards of at most 500 MB with an index and a config.json, or takes --src FOLDER.
Each peer runs in a fresh subprocess, interleaved round by round, --repeat times (median
wall reported); the page cache is warm for every run (the shards are read once first):

    cat                      the floor: every shard read once, to /dev/null
    import torch             the other fixed cost of any torch loader
    load_file                safetensors.torch.load_file of each shard (memory-mapped: returns
                             without reading most bytes)
    from_pretrained          transformers AutoModelForCausalLM.from_pretrained on cpu (also
                             memory-mapped: a "load" that does not touch the bytes)
    accelerate dispatch      accelerate's load_checkpoint_and_dispatch, device_map="auto",
                             max_memory={"cpu": "--cpu-limit"}, the rest offloaded to disk
    hfconv cpu               hfconv load-test (every byte read into memory and checksummed)
    hfconv cpu+disk          hfconv load-test --max-memory cpu=--cpu-limit, the rest on disk

For each: wall time, the ratio to `cat` + `import torch`, peak RSS (VmHWM, which counts
memory-mapped file pages too) and peak anonymous memory (RssAnon: the heap), both polled
from /proc/<pid>/status every 2 ms.

    python benchmarks/bench_load.py [--size-gb 1.93] [--repeat 3] [--cpu-limit 1GiB]
                                    [--workdir /tmp/hfconv-bench-load] [--src FOLDER]

Targets (issue 5): hfconv cpu within 1.3x of cat + import torch and faster than
from_pretrained; hfconv cpu+disk peak RSS <= the cpu limit + 300 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from _common import (
    Run,
    banner,
    layers_for,
    llama_config,
    llama_shapes,
    measure,
    median_wall,
    numel,
    peer_table,
    write_index,
)

MAX_SHARD = 500_000_000

LOAD_FILE_PEER = r"""
import sys
from safetensors.torch import load_file
for path in sys.argv[1:]:
    state = load_file(path)
    del state
"""

FROM_PRETRAINED_PEER = r"""
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
"""

ACCELERATE_PEER = r"""
import sys, torch
import accelerate.utils.modeling as modeling
from accelerate import init_empty_weights, load_checkpoint_and_dispatch
from transformers import AutoConfig, AutoModelForCausalLM
# accelerate 1.x asks safetensors for device "disk" when a whole shard is offloaded, which
# safetensors refuses ("device disk is invalid"); read such shards on cpu, as it means to.
_load = modeling.safe_load_file
modeling.safe_load_file = lambda path, device="cpu": _load(path, device="cpu" if device == "disk" else device)
src, limit, offload = sys.argv[1], sys.argv[2], sys.argv[3]
config = AutoConfig.from_pretrained(src)
with init_empty_weights():
    model = AutoModelForCausalLM.from_config(config)
model = load_checkpoint_and_dispatch(model, src, device_map="auto", max_memory={"cpu": limit},
                                     offload_folder=offload, no_split_module_classes=["LlamaDecoderLayer"],
                                     dtype=torch.float32)
"""


def build_folder(folder: Path, layers: int) -> None:
    """A sharded fp32 safetensors folder with index and config.json, as save_pretrained writes it."""
    import torch
    from safetensors.torch import save_file

    from hfconv.sharding import plan_shards, shard_file_name

    if (folder / "DONE").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shapes = dict(llama_shapes(layers))
    shards = plan_shards([(name, 4 * numel(shape)) for name, shape in shapes.items()], MAX_SHARD)
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for number, names in enumerate(shards, 1):
        file_name = shard_file_name(number, len(shards))
        state = {n: torch.empty(shapes[n]).uniform_(-0.05, 0.05, generator=generator) for n in names}
        save_file(state, folder / file_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file_name))
        del state
    total = sum(4 * numel(s) for s in shapes.values())
    write_index(folder / "model.safetensors.index.json", total, weight_map)
    config = llama_config(layers, bos_token_id=1, eos_token_id=2)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "DONE").write_text("")


def shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")


def peers(src: Path, work: Path, cpu_limit: str) -> dict[str, list[str]]:
    py = sys.executable
    files = [str(p) for p in shard_files(src)]
    offload = str(work / "offload")
    hfconv = [py, "-m", "hfconv.cli", "load-test", str(src), "--quiet", "--format", "json"]
    return {
        "cat": ["cat", *files],
        "import torch": [py, "-c", "import torch"],
        "load_file": [py, "-c", LOAD_FILE_PEER, *files],
        "from_pretrained": [py, "-c", FROM_PRETRAINED_PEER, str(src)],
        f"accelerate dispatch cpu={cpu_limit}": [py, "-c", ACCELERATE_PEER, str(src), cpu_limit, offload],
        "hfconv cpu": hfconv,
        f"hfconv cpu={cpu_limit}+disk": [*hfconv, "--max-memory", f"cpu={cpu_limit}", "--offload-folder", offload],
    }


def bench(src: Path, work: Path, repeat: int, cpu_limit: str,
          skip: set[str]) -> dict[str, list[Run]]:
    subprocess.run(["cat", *map(str, shard_files(src))], stdout=subprocess.DEVNULL, check=True)  # warm
    runs: dict[str, list[Run]] = {}
    for round_number in range(repeat):
        for label, cmd in peers(src, work, cpu_limit).items():
            if any(label.startswith(s) for s in skip):
                continue
            shutil.rmtree(work / "offload", ignore_errors=True)
            (work / "offload").mkdir()
            runs.setdefault(label, []).append(measure(cmd, error_tail=3000))
        print(f"  round {round_number + 1}/{repeat} done", file=sys.stderr)
    shutil.rmtree(work / "offload", ignore_errors=True)
    return runs


def report(src: Path, runs: dict[str, list[Run]], cpu_limit: str) -> list[str]:
    from hfconv.sharding import parse_size

    files = shard_files(src)
    size = sum(p.stat().st_size for p in files)
    repeat = len(next(iter(runs.values())))
    lines = [f"{src}: {size / 1e9:.2f} GB fp32 in {len(files)} safetensors shards "
             f"(median of {repeat}, warm page cache)"]
    median = {name: median_wall(results) for name, results in runs.items()}
    floor = median.get("cat", 0) + median.get("import torch", 0)
    lines += peer_table(runs, size, floor, "x floor", 30)
    lines.append(f"  (floor = cat + import torch = {floor:.2f} s)")
    checks = []
    if "hfconv cpu" in median and floor:
        ratio = median["hfconv cpu"] / floor
        checks.append(f"hfconv cpu {ratio:.2f}x floor (<= 1.3: {'ok' if ratio <= 1.3 else 'MISSED'})")
    if "hfconv cpu" in median and "from_pretrained" in median:
        faster = median["hfconv cpu"] < median["from_pretrained"]
        checks.append(f"vs from_pretrained {median['hfconv cpu']:.2f} s < {median['from_pretrained']:.2f} s "
                      f"({'ok' if faster else 'MISSED'})")
    disk = f"hfconv cpu={cpu_limit}+disk"
    if disk in runs:
        limit = parse_size(cpu_limit) + 300_000_000
        peak = max(r[1] for r in runs[disk])
        verdict = "ok" if peak <= limit else "MISSED"
        checks.append(f"cpu+disk peak RSS {peak / 1e6:.0f} MB (<= {limit / 1e6:.0f}: {verdict})")
    if checks:
        lines.append("  targets: " + "; ".join(checks))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.93, help="size of the generated model (default 1.93)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu-limit", default="1GiB", help="cpu limit of the cpu+disk runs (default 1GiB)")
    parser.add_argument("--workdir", default="/tmp/hfconv-bench-load")
    parser.add_argument("--src", default=None, help="benchmark this safetensors folder instead of a generated one")
    parser.add_argument("--skip", action="append", default=[], help="skip peers whose label starts with this")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.src:
        src = Path(args.src)
    else:
        layers = layers_for(args.size_gb)
        src = work / f"llama-{layers}L-safetensors"
        print(f"preparing {src} ({layers} layers) ...", file=sys.stderr)
        build_folder(src, layers)
    print(f"benchmarking {src} ...", file=sys.stderr)
    runs = bench(src, work, args.repeat, args.cpu_limit, set(args.skip))
    lines = [banner("bench_load", work), ""]
    lines += report(src, runs, args.cpu_limit)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
