"""What the benchmarks share: the Llama-shaped folder they build, the subprocess probe, the table.

Imported by the ``bench_*.py`` scripts from their own folder (``python benchmarks/bench_x.py``
puts ``benchmarks/`` first on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HIDDEN, INTER, VOCAB = 2048, 5632, 32000
WEIGHT_SUFFIXES = (".bin", ".safetensors")

Shapes = list[tuple[str, tuple[int, ...]]]
Run = tuple[float, int, int]
"""One measured run: (wall seconds, peak VmHWM bytes, peak RssAnon bytes)."""


# --- the Llama-shaped folder -------------------------------------------------------------------

def llama_shapes(layers: int, hidden: int = HIDDEN, inter: int = INTER, vocab: int = VOCAB) -> Shapes:
    """Tensor names and shapes of a Llama with ``layers`` blocks (4 query heads per kv head)."""
    kv = hidden // 4
    shapes: Shapes = [("model.embed_tokens.weight", (vocab, hidden))]
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


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def layers_for(size_gb: float) -> int:
    """Blocks of the default-sized Llama whose fp32 weights come closest to ``size_gb`` GB."""
    fixed = 4 * (2 * VOCAB * HIDDEN + HIDDEN)
    per_layer = sum(4 * numel(s) for _, s in llama_shapes(1)) - fixed
    return max(1, round((size_gb * 1e9 - fixed) / per_layer))


def split_evenly(shapes: Shapes, shards: int) -> list[Shapes]:
    """``shapes`` (fp32) in order, cut into at most ``shards`` groups of about equal bytes."""
    limit = sum(4 * numel(s) for _, s in shapes) / shards
    groups: list[Shapes] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 4 * numel(shape)
        if groups[-1] and size + nbytes > limit and len(groups) < shards:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    return groups


def write_index(path: Path, total: int, weight_map: dict[str, str]) -> None:
    path.write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))


def llama_config(layers: int, hidden: int = HIDDEN, inter: int = INTER, vocab: int = VOCAB, **extra) -> dict:
    """config.json of an fp32 Llama (16 heads, 4 kv heads, untied); ``extra`` keys go last."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
            "num_key_value_heads": 4, "vocab_size": vocab, "torch_dtype": "float32",
            "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, **extra}


def weight_files(folder: Path) -> list[Path]:
    """The folder's .bin and .safetensors files, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)


# --- measuring a subprocess --------------------------------------------------------------------

def measure(cmd: list[str], error_tail: int | None = None, ok_exit: int = 0) -> Run:
    """Run ``cmd``; return (wall seconds, peak RSS bytes, peak RssAnon bytes).

    Both are polled from /proc/<pid>/status every 2 ms. VmHWM is the kernel's high-water mark
    of the child's resident set (reset by exec, so unlike ru_maxrss it does not count the
    forked copy of this process before exec); RssAnon is sampled, so its peak is a lower bound.
    A failing ``cmd`` (an exit code other than ``ok_exit``) ends the benchmark with its stderr
    (the last ``error_tail`` characters).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hwm = anon = 0
    status_path = f"/proc/{proc.pid}/status"
    while proc.poll() is None:
        try:
            with open(status_path) as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]) * 1024)
                    elif line.startswith("RssAnon:"):
                        anon = max(anon, int(line.split()[1]) * 1024)
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != ok_exit:
        if error_tail is not None:
            err = err[-error_tail:]
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    return wall, hwm, anon


def median_wall(results: list[Run]) -> float:
    return statistics.median(r[0] for r in results)


# --- printing ----------------------------------------------------------------------------------

def banner(name: str, work: Path) -> str:
    return f"{name}: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, workdir {work}"


def peer_table(runs: dict[str, list[Run]], size: int, floor: float, ratio_label: str, width: int) -> list[str]:
    """Header, rule and one row per peer: median wall, wall / ``floor`` ('-' without one), MB/s
    over ``size`` bytes, and the highest peak RSS and peak anonymous memory of its runs."""
    header = f"  {'':<{width}}{'wall s':>8}{ratio_label:>9}{'MB/s':>8}{'peak RSS MB':>13}{'peak anon MB':>14}"
    lines = [header, "  " + "-" * (len(header) - 2)]
    for name, results in runs.items():
        wall = median_wall(results)
        hwm = max(r[1] for r in results)
        anon = max(r[2] for r in results)
        ratio = f"{wall / floor:>9.2f}" if floor else f"{'-':>9}"
        lines.append(f"  {name:<{width}}{wall:>8.2f}{ratio}{size / 1e6 / wall:>8.0f}{hwm / 1e6:>13.0f}"
                     f"{anon / 1e6:>14.0f}")
    return lines
