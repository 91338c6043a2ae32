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
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import llama_config, llama_shapes, numel, split_evenly, weight_files, write_index

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


def build_folder(folder: Path, fmt: str, hidden: int, inter: int, layers: int, vocab: int, shards: int = 5) -> None:
    """Write a sharded folder with the real libraries (torch.save / safetensors save_file)."""
    import torch
    from safetensors.torch import save_file

    if (folder / "DONE").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    shapes = llama_shapes(layers, hidden, inter, vocab)
    total = sum(4 * numel(s) for _, s in shapes)
    groups = split_evenly(shapes, shards)
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
    write_index(folder / index, total, weight_map)
    (folder / "config.json").write_text(json.dumps(llama_config(layers, hidden, inter, vocab), indent=2))
    (folder / "DONE").write_text("")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in weight_files(folder))


def time_cat(folder: Path) -> float:
    shards = [str(p) for p in weight_files(folder)]
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
        shards = len(weight_files(folder))
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
