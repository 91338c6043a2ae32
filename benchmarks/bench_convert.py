"""Benchmark: `hfconv convert` of a sharded `.bin` folder against `cp -r` and the usual recipes.

Makes (once, cached under --workdir) a Llama-shaped fp32 folder of about --size-gb GB in 5
`.bin` shards, and the same model with twice the layers (same largest tensor, twice the
bytes) to show that memory stays flat, or takes --src FOLDER. For each folder it runs, in a
fresh subprocess each, interleaved round by round, --repeat times (median reported):

    cp -r                       the floor: the same bytes copied by the kernel
    cp -r && sync               the durable floor (cp -r leaves the disk writes for later, as
                                hfconv does without --fsync)
    torch.load(mmap)+save_file  the best existing way: torch.load(mmap=True, weights_only=True)
                                and safetensors' save_file, shard by shard
    torch.load+save_file        the naive way
    hfconv --no-verify          hfconv convert --no-verify
    hfconv                      hfconv convert (every tensor compared bitwise, output validated)
    hfconv --fsync              the same, flushed to the disk before DST appears
    hfconv (zlib crc32)         verified, with the standard library's CRC-32 forced (only when
                                a SIMD one, isal or zlib-ng, is installed and hfconv uses it)

Verification checks every .bin storage's recorded CRC-32 as it compares the bytes. Before the
runs, the CRC-32 implementations installed are timed on 256 MiB (GB/s, one core): the
standard library's zlib.crc32 runs at ~1.5-2 GB/s, ISA-L's (pip install isal) and zlib-ng's
(pip install zlib-ng) at ~6 GB/s; hfconv uses the fastest installed (hfconv.checks.deep).
Measured here (2 shared cores, 0.89 GB in 5 .bin shards, CPU seconds of the whole verified
convert, 3 runs): before the CRC check 0.65-0.77 s user; with it, isal 0.70-0.81 s, zlib
0.94-1.16 s. So zlib's CRC-32 adds ~0.35 s of CPU per GB to verification (~45% of its CPU),
isal's ~0.05 s: with isal or zlib-ng installed the check is within noise of the old
verified convert.

and prints wall time, the ratio to `cp -r`, peak RSS (VmHWM, which counts memory-mapped
file pages too) and peak anonymous memory (RssAnon, the heap: what the issue's memory
target is about), both polled from /proc/<pid>/status every 2 ms. The page cache is warm
for every run (the folder is read once first), and `sync` runs, untimed, before each run
so that no run pays for the previous run's disk writes.

    python benchmarks/bench_convert.py [--size-gb 1.6] [--repeat 5] [--workdir /tmp/hfconv-bench]
    python benchmarks/bench_convert.py --src ./my-bin-model --no-double

Targets (issue 7): --no-verify <= 1.3x cp -r; with verification <= 2x cp -r; peak anonymous
memory <= 2x the largest tensor + 200 MB, and flat when the model doubles.

Each round runs every command once, in turn, so a busy moment of the machine slows a round's
floor and hfconv alike; the verdicts use the median of the per-round ratios (each hfconv run
over the `cp -r` of its own round), and the report gives the floor's spread and names the
rounds where it was an outlier (> 1.25x from its median). With two sizes, the last lines
split each command's time into a fixed start-up cost and a per-GB cost.
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
    split_evenly,
    weight_files,
    write_index,
)

SHARDS = 5

MMAP_PEER = r"""
import json, os, shutil, sys
import torch
from safetensors.torch import save_file
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out)
shards = sorted(f for f in os.listdir(src) if f.endswith(".bin"))
weight_map, total = {}, 0
for i, name in enumerate(shards, 1):
    state = torch.load(os.path.join(src, name), map_location="cpu", mmap=MMAP, weights_only=True)
    target = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
    save_file(state, os.path.join(out, target), metadata={"format": "pt"})
    for key, tensor in state.items():
        weight_map[key] = target
        total += tensor.numel() * tensor.element_size()
    del state
for f in os.listdir(src):
    if not f.endswith(".bin") and not f.endswith(".index.json"):
        shutil.copyfile(os.path.join(src, f), os.path.join(out, f))
with open(os.path.join(out, "model.safetensors.index.json"), "w") as fh:
    json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, fh, indent=2)
"""


def build_folder(folder: Path, layers: int) -> None:
    """A sharded .bin folder written by torch.save, split into SHARDS by the Hub's rule."""
    import torch

    if (folder / "DONE").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shapes = llama_shapes(layers)
    total = sum(4 * numel(s) for _, s in shapes)
    groups = split_evenly(shapes, SHARDS)
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"pytorch_model-{i:05d}-of-{len(groups):05d}.bin"
        state = {t: torch.empty(s).uniform_(-0.05, 0.05, generator=generator) for t, s in group}
        torch.save(state, folder / name)
        weight_map.update(dict.fromkeys(state, name))
        del state
    write_index(folder / "pytorch_model.bin.index.json", total, weight_map)
    (folder / "config.json").write_text(json.dumps(llama_config(layers), indent=2) + "\n")
    (folder / "DONE").write_text("")


def weight_stats(folder: Path) -> tuple[int, int, int]:
    """(weight bytes, shard count, largest tensor bytes) read with hfconv's own reader."""
    from hfconv.readers import read_weight_file

    files = weight_files(folder)
    largest = max(t.nbytes for p in files for t in read_weight_file(p).tensors.values())
    return sum(p.stat().st_size for p in files), len(files), largest


def crc_speeds(nbytes: int = 256 << 20) -> list[str]:
    nbytes = max(nbytes, 4 << 20) // (4 << 20) * (4 << 20)
    """GB/s of every CRC-32 implementation installed, over ``nbytes`` in 4 MiB chunks."""
    import os
    import time
    import zlib

    data = memoryview(os.urandom(nbytes))
    candidates = [("zlib (standard library)", zlib.crc32)]
    try:
        from isal import isal_zlib

        candidates.append(("isal", isal_zlib.crc32))
    except ImportError:
        candidates.append(("isal", None))
    try:
        from zlib_ng import zlib_ng

        candidates.append(("zlib-ng", zlib_ng.crc32))
    except ImportError:
        candidates.append(("zlib-ng", None))
    from hfconv.checks.deep import CRC32_IMPLEMENTATION

    lines = [f"CRC-32 on {nbytes >> 20} MiB, one core (hfconv uses: {CRC32_IMPLEMENTATION})"]
    expected = None
    for name, function in candidates:
        if function is None:
            lines.append(f"  {name:<26} not installed")
            continue
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            value = 0
            for pos in range(0, nbytes, 4 << 20):
                value = function(data[pos:pos + (4 << 20)], value)
            best = min(best, time.perf_counter() - started)
        expected = value if expected is None else expected
        lines.append(f"  {name:<26} {nbytes / best / 1e9:6.2f} GB/s" + ("" if value == expected else "  WRONG VALUE"))
    return lines


def peers(src: Path, out: Path) -> dict[str, list[str]]:
    from hfconv.checks.deep import CRC32_IMPLEMENTATION

    py = sys.executable
    zlib_forced = ["env", "HFCONV_CRC32=zlib", py, "-m", "hfconv.cli", "convert", str(src), str(out), "--quiet"]
    return {
        "cp -r": ["cp", "-r", str(src), str(out)],
        "cp -r && sync": ["sh", "-c", 'cp -r "$0" "$1" && sync', str(src), str(out)],
        "torch.load(mmap)+save_file": [py, "-c", MMAP_PEER.replace("MMAP", "True"), str(src), str(out)],
        "torch.load+save_file": [py, "-c", MMAP_PEER.replace("MMAP", "False"), str(src), str(out)],
        "hfconv --no-verify": [py, "-m", "hfconv.cli", "convert", str(src), str(out), "--quiet", "--no-verify"],
        "hfconv": [py, "-m", "hfconv.cli", "convert", str(src), str(out), "--quiet"],
        "hfconv --fsync": [py, "-m", "hfconv.cli", "convert", str(src), str(out), "--quiet", "--fsync"],
        **({"hfconv (zlib crc32)": zlib_forced} if CRC32_IMPLEMENTATION != "zlib" else {}),
    }


def bench(src: Path, work: Path, repeat: int) -> dict[str, list[Run]]:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["cat", *map(str, sorted(src.iterdir()))], stdout=subprocess.DEVNULL, check=True)  # warm
    runs: dict[str, list[Run]] = {}
    for round_number in range(repeat):
        for label, cmd in peers(src, out).items():
            subprocess.run(["sync"], check=True)
            runs.setdefault(label, []).append(measure(cmd))
            shutil.rmtree(out)
        print(f"  round {round_number + 1}/{repeat} done", file=sys.stderr)
    return runs


OUTLIER = 1.25
"""A floor run more than 25% away from the floor's median is an outlier: the machine was busy
(or idle) for that run, and a ratio against it says more about the machine than about hfconv."""

TARGETS = (("hfconv --no-verify", "cp -r", 1.3), ("hfconv", "cp -r", 2.0), ("hfconv --fsync", "cp -r && sync", None))
"""(run, floor, largest ratio): the speed targets (issue 7); None: reported, no target."""


def floor_spread(name: str, runs: list[Run]) -> tuple[str, list[int]]:
    """The floor's spread (min..max around the median) and the rounds whose floor was an outlier."""
    walls = [r[0] for r in runs]
    middle = median_wall(runs)
    outliers = [i for i, w in enumerate(walls) if w > middle * OUTLIER or w < middle / OUTLIER]
    text = (f"  floor {name}: median {middle:.3f} s, spread {min(walls):.3f}..{max(walls):.3f} s "
            f"({(max(walls) - min(walls)) / middle * 100:.0f}% of the median) over {len(walls)} interleaved rounds")
    if outliers:
        text += (f"; OUTLIER in round{'s' if len(outliers) > 1 else ''} "
                 f"{', '.join(str(i + 1) for i in outliers)} (> {OUTLIER}x from the median): ratios use each round's "
                 "own floor, and the verdicts below the median of those")
    return text, outliers


def round_ratios(runs: dict[str, list[Run]], name: str, floor: str) -> list[float]:
    """``name``'s wall over the floor's wall of the same round (interleaved runs share the
    machine's state, so a busy moment slows both)."""
    return [a[0] / b[0] for a, b in zip(runs[name], runs[floor])]


def verdicts(runs: dict[str, list[Run]]) -> list[str]:
    """One line per target: the median of the per-round ratios, their range, ok or MISSED."""
    import statistics

    lines = []
    for name, floor, limit in TARGETS:
        if name not in runs:
            continue
        ratios = round_ratios(runs, name, floor)
        middle = statistics.median(ratios)
        verdict = "no target" if limit is None else f"<= {limit}: {'ok' if middle <= limit else 'MISSED'}"
        lines.append(f"  target: {name:<20} {middle:.2f}x {floor} (rounds {min(ratios):.2f}..{max(ratios):.2f}; "
                     f"{verdict})")
    return lines


def report(label: str, src: Path, runs: dict[str, list[Run]]) -> list[str]:
    size, shards, largest = weight_stats(src)
    lines = [f"{label}: {src} -- {size / 1e9:.2f} GB in {shards} .bin shards, largest tensor "
             f"{largest / 1e6:.0f} MB (median of {len(next(iter(runs.values())))} interleaved rounds, "
             "warm page cache)"]
    cp = median_wall(runs["cp -r"])
    lines += peer_table(runs, size, cp, "x cp -r", 28)
    for floor in ("cp -r", "cp -r && sync"):
        lines.append(floor_spread(floor, runs[floor])[0])
    lines += verdicts(runs)
    limit = 2 * largest + 200e6
    anon = max(r[2] for name in ("hfconv", "hfconv --no-verify") for r in runs[name])
    lines.append(f"  target: peak anonymous memory {anon / 1e6:.0f} MB (<= 2x largest tensor + 200 MB = "
                 f"{limit / 1e6:.0f}: {'ok' if anon <= limit else 'MISSED'})")
    return lines


def cost_split(cases: list[tuple[str, Path, dict[str, list[Run]]]]) -> list[str]:
    """With two model sizes: each run's time as a fixed start-up cost plus a per-byte cost
    (a line through the two medians), so a missed ratio is seen to come from one or the other."""
    if len(cases) < 2:
        return []
    (_, small, small_runs), (_, big, big_runs) = cases[0], cases[1]
    small_bytes, big_bytes = weight_stats(small)[0], weight_stats(big)[0]
    if big_bytes <= small_bytes:
        return []
    lines = ["", "where the time goes (a line through the two sizes: fixed start-up + per-GB)"]
    for name in small_runs:
        if name not in big_runs:
            continue
        t1, t2 = median_wall(small_runs[name]), median_wall(big_runs[name])
        per_byte = (t2 - t1) / (big_bytes - small_bytes)
        fixed = t1 - per_byte * small_bytes
        lines.append(f"  {name:<28} fixed {fixed:6.2f} s  + {per_byte * 1e9:6.2f} s/GB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.6, help="size of the generated model (default 1.6)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/hfconv-bench")
    parser.add_argument("--src", default=None, help="benchmark this .bin folder instead of generated ones")
    parser.add_argument("--no-double", action="store_true", help="skip the model with twice the layers")
    parser.add_argument("--crc-bytes", type=int, default=256 << 20, help="bytes for the CRC-32 timing")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, Path]] = []
    if args.src:
        cases.append(("given", Path(args.src)))
    else:
        layers = layers_for(args.size_gb)
        cases.append(("model", work / f"convert-bin-{layers}L"))
        if not args.no_double:
            cases.append(("model x2 (more layers, same largest tensor)",
                          work / f"convert-bin-{layers_for(2 * args.size_gb)}L"))
        for _, folder in cases:
            n = int(folder.name.split("-")[-1][:-1])
            print(f"preparing {folder} ({n} layers) ...", file=sys.stderr)
            build_folder(folder, n)
    lines = [banner("bench_convert", work), ""] + crc_speeds(args.crc_bytes)
    measured = []
    for label, folder in cases:
        print(f"benchmarking {folder} ...", file=sys.stderr)
        runs = bench(folder, work, args.repeat)
        measured.append((label, folder, runs))
        lines += [""] + report(label, folder, runs)
    lines += cost_split(measured)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
