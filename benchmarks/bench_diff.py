"""``hfconv diff`` of a .bin folder against its safetensors conversion, against ``cat`` of both.

Makes (once, cached under --workdir) a Llama-shaped fp32 folder of about --size-gb GB saved by
torch.save in 2 .bin shards with their index, and its conversion by ``hfconv convert`` (one
model.safetensors); warms the page cache; then times, interleaved, --repeat rounds of

    cat                    every weight file of both folders, to /dev/null (the floor: each byte read once)
    hfconv diff            A B --format json (every tensor compared, byte for byte)
    hfconv diff --headers-only   names, dtypes and shapes (no tensor byte read)
    hfconv diff (1 layer changed)  A against a copy whose model.layers.0.mlp.up_proj.weight differs

and prints the median wall time, the ratio to cat, MB/s over both folders' tensor bytes and
peak memory. The issue's target: diff "near cat speed". Not a test: run it by hand.

    python benchmarks/bench_diff.py [--size-gb 1.6] [--repeat 3] [--workdir /tmp/hfconv-bench-diff]
"""

from __future__ import annotations

import argparse
import json
import os
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
    split_evenly,
)

ROOT = Path(__file__).resolve().parent.parent
CHANGED = "model.layers.0.mlp.up_proj.weight"


def build(work: Path, layers: int) -> tuple[Path, Path, Path]:
    """A (torch.save, 2 shards + index), B (its conversion), C (B with one tensor changed)."""
    import torch

    a, b, c = work / f"bin-{layers}L", work / f"st-{layers}L", work / f"tuned-{layers}L"
    if not (a / "DONE").exists():
        shutil.rmtree(a, ignore_errors=True)
        a.mkdir(parents=True)
        generator = torch.Generator().manual_seed(0)
        groups = split_evenly(llama_shapes(layers), 2)
        weight_map = {}
        for number, group in enumerate(groups, 1):
            name = f"pytorch_model-{number:05d}-of-{len(groups):05d}.bin"
            state = {n: torch.empty(s).uniform_(-0.05, 0.05, generator=generator) for n, s in group}
            torch.save(state, a / name)
            weight_map.update(dict.fromkeys(state, name))
            del state
        total = sum(4 * numel(s) for _, s in llama_shapes(layers))
        (a / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}, indent=2))
        (a / "config.json").write_text(json.dumps(llama_config(layers, bos_token_id=1, eos_token_id=2), indent=2))
        (a / "DONE").write_text("")
    if not (b / "DONE").exists():
        shutil.rmtree(b, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "hfconv", "convert", str(a), str(b), "--quiet"], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        (b / "DONE").write_text("")
    if not (c / "DONE").exists():
        from safetensors import safe_open
        from safetensors.torch import save_file

        shutil.rmtree(c, ignore_errors=True)
        shutil.copytree(b, c)
        with safe_open(str(b / "model.safetensors"), "pt") as handle:
            state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open has no iteration
        state[CHANGED] = state[CHANGED] * 1.01
        save_file(state, c / "model.safetensors", metadata={"format": "pt"})
        del state
    return a, b, c


def weight_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.suffix in (".bin", ".safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.6, help="size of the generated model (default 1.6)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/hfconv-bench-diff")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    layers = layers_for(args.size_gb)
    a, b, c = build(work, layers)
    files = weight_files(a) + weight_files(b)
    size = sum(os.path.getsize(f) for f in files)
    hfconv = [sys.executable, "-m", "hfconv", "diff", "--quiet", "--format", "json"]
    peers = {
        "cat A B": ["cat", *files],
        "hfconv diff A B": [*hfconv, str(a), str(b)],
        "hfconv diff --headers-only": [*hfconv, "--headers-only", str(a), str(b)],
    }
    subprocess.run(["cat", *files, *weight_files(c)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    runs: dict[str, list[Run]] = {name: [] for name in peers}
    changed: list[Run] = []
    os.environ["PYTHONPATH"] = str(ROOT)
    for _ in range(args.repeat):
        for name, cmd in peers.items():
            runs[name].append(measure(cmd))
        changed.append(measure([*hfconv, str(a), str(c)], ok_exit=1))
    runs["hfconv diff A C (1 layer changed)"] = changed
    floor = median_wall(runs["cat A B"])
    lines = [banner("bench_diff", work), "",
             f"A: {a.name} ({len(weight_files(a))} .bin shards), B: {b.name} (its conversion), "
             f"{size / 1e9:.2f} GB read by cat; {args.repeat} interleaved rounds, warm page cache", ""]
    lines += peer_table(runs, size, floor, "x cat", 36)
    lines += ["", f"hfconv diff A B / cat A B = {median_wall(runs['hfconv diff A B']) / floor:.2f}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
