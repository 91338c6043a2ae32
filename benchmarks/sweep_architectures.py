"""Sweep over transformers architectures: false alarms on good folders, missed defects on broken ones.

Not part of the test suite (it takes minutes). Run it from the repository root::

    python benchmarks/sweep_architectures.py                  # every causal/masked/seq2seq/vision type
    python benchmarks/sweep_architectures.py --types llama,gpt2,bert
    python benchmarks/sweep_architectures.py --limit 40 --jobs 2 --keep /tmp/sweep

For each ``model_type`` the installed transformers knows (no network: configs come from
``AutoConfig.for_model(model_type)`` with every size field shrunk: hidden 64, 2 layers, 4 heads,
vocab 512, 4 experts), the script

1. builds a tiny random model with the task's Auto class (causal LM, else masked LM, else
   seq2seq LM, else image classification, else the bare model); types that fail to build, or
   come out larger than ``--max-params``, are skipped with the reason printed;
2. saves it with ``save_pretrained`` as one ``model.safetensors``, sharded (small
   ``max_shard_size``: several shards plus ``model.safetensors.index.json``), sharded in
   bfloat16, and, the way transformers 4 wrote them (transformers 5 no longer writes .bin), as
   ``pytorch_model.bin``, sharded ``pytorch_model-0000k-of-0000n.bin`` with their index, and a
   ``pytorch_model.bin`` of the whole state dict (tied aliases sharing one storage, persistent
   buffers); ``generation_config.json`` comes from ``save_pretrained`` for models that can
   generate. The bare model and the sequence/token-classification heads of the same config are
   saved too (one ``model.safetensors`` each; ``--no-heads`` skips them);
3. validates every folder with ``reference="rules"`` and ``reference="auto"`` and prints every
   error or warning, grouped by code (each is a false alarm: these folders are good);
4. breaks copies of a few folders (``--mutate``) and checks that each defect is an error:
   a deleted shard, a truncated shard, a corrupt safetensors header length, config.json's
   hidden size / vocab_size / intermediate size / layer count changed, a tensor dropped from the
   index or pointed at the wrong shard, a tensor removed from the weights;
5. prints a summary: architectures tried / built / clean, false alarms per code, mutations missed.

Exit status 1 when there is any false alarm or missed mutation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import struct
import sys
import tempfile
import traceback
import warnings
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HIDDEN = 64
SMALL = {
    # widths
    "hidden_size": HIDDEN, "d_model": HIDDEN, "n_embd": HIDDEN, "n_embed": HIDDEN, "dim": HIDDEN,
    "embed_dim": HIDDEN, "word_embed_proj_dim": HIDDEN, "embedding_size": HIDDEN, "projection_dim": HIDDEN,
    "emb_dim": HIDDEN, "d_embed": HIDDEN,
    # feed-forward
    "intermediate_size": 128, "ffn_dim": 128, "d_ff": 128, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
    "d_inner": 128, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64, "ffn_hidden_size": 128,
    "hidden_dim": 128, "n_inner": None,
    # depth
    "num_hidden_layers": 2, "num_layers": 2, "n_layer": 2, "n_layers": 2, "encoder_layers": 2, "decoder_layers": 2,
    "num_decoder_layers": 2, "num_encoder_layers": 2, "num_blocks": 2,
    # heads
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_heads": 4, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    # vocabulary and positions
    "vocab_size": 512, "max_position_embeddings": 128, "n_positions": 128,
    # mixture of experts
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "n_shared_experts": 1, "num_shared_experts": 1,
    "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
    # latent attention (DeepSeek)
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
}
"""Overrides applied to every key a default config has (recursively into sub-configs)."""
CONDITIONAL = {"num_key_value_heads": 2, "num_kv_heads": 2, "head_dim": 16, "d_kv": 16, "d_head": 16}
"""Applied only where the default is an integer (None means 'derive' and stays None)."""
VOCAB = SMALL["vocab_size"]
TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "sep_token_id",
              "cls_token_id", "mask_token_id", "unk_token_id", "image_token_id", "image_token_index",
              "video_token_id", "audio_token_id", "forced_bos_token_id", "forced_eos_token_id")

TASKS = (  # in order of preference: bart is saved as BartForConditionalGeneration, bert as BertForMaskedLM
    ("seq2seq", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "AutoModelForSeq2SeqLM"),
    ("speech-seq2seq", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES", "AutoModelForSpeechSeq2Seq"),  # whisper
    ("masked", "MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM"),
    ("image-text", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "AutoModelForImageTextToText"),
    ("causal", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM"),
    ("image-cls", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "AutoModelForImageClassification"),
)
HEADS = (  # other classes saved beside the task's (one safetensors file each)
    ("base", "MODEL_MAPPING_NAMES", "AutoModel"),
    ("seq-cls", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "AutoModelForSequenceClassification"),
    ("token-cls", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "AutoModelForTokenClassification"),
)
MUTATE_DEFAULT = ("llama", "gpt2", "bert", "t5", "qwen2", "olmo2", "phi", "gpt_bigcode", "bart", "gemma3_text",
                  "deepseek_v3", "stablelm", "mpt", "bloom", "electra", "opt")
SHARD_SIZE = "40KB"
TIMEOUT_S = 90


# --- building ---------------------------------------------------------------------------------------

def _shrink(d: dict, layers_before: int | None) -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and (key.endswith("_config") or "model_type" in value):
            out[key] = _shrink(value, value.get("num_hidden_layers", layers_before))
        elif key in SMALL and (value is None or (isinstance(value, int) and not isinstance(value, bool))):
            out[key] = SMALL[key] if value is not None or key == "n_inner" else value
        elif key in CONDITIONAL and isinstance(value, int) and not isinstance(value, bool):
            out[key] = CONDITIONAL[key]
        elif isinstance(value, list) and layers_before and len(value) == layers_before and layers_before != 2:
            continue  # per-layer list (layer_types, ...): let the config class derive it again
        else:
            out[key] = value
    for key in TOKEN_KEYS:
        if isinstance(out.get(key), int) and out[key] >= VOCAB:
            out[key] = VOCAB - 1 - TOKEN_KEYS.index(key)
        elif isinstance(out.get(key), list):
            out[key] = [t if t < VOCAB else VOCAB - 2 for t in out[key] if isinstance(t, int)]
    return out


def build(model_type: str, max_params: int):
    """(model, task, auto class name) for ``model_type``, shrunk; raises on failure."""
    import torch
    import transformers
    from transformers.models.auto import modeling_auto

    task = auto_name = None
    for name, mapping, auto in TASKS:
        if model_type in getattr(modeling_auto, mapping):
            task, auto_name = name, auto
            break
    if task is None:
        task, auto_name = "base", "AutoModel"
    default = transformers.AutoConfig.for_model(model_type)
    d = default.to_dict()
    layers = next((d[k] for k in ("num_hidden_layers", "num_layers", "n_layer") if isinstance(d.get(k), int)), None)
    small = _shrink(d, layers)
    small.pop("model_type", None)
    small.pop("transformers_version", None)
    small.pop("architectures", None)
    if model_type == "mamba2":  # its heads must tile hidden_size * expand
        small["head_dim"] = small.get("hidden_size", 64) * small.get("expand", 2) // small.get("num_heads", 4)
        small["n_groups"] = 1
    config = type(default).from_dict(small)
    model = _instantiate(transformers, torch, auto_name, config, max_params)
    return model, task, auto_name, config


def _instantiate(transformers, torch, auto_name: str, config, max_params: int):
    torch.manual_seed(0)
    with torch.device("meta"):
        probe = getattr(transformers, auto_name).from_config(config)
    n = sum(p.numel() for p in probe.parameters())
    if n > max_params:
        raise RuntimeError(f"{n / 1e6:.1f}M parameters even when shrunk (limit {max_params / 1e6:.1f}M)")
    return getattr(transformers, auto_name).from_config(config)


def build_heads(model_type: str, config, task_cls: str, max_params: int) -> dict[str, object]:
    """The other heads of ``model_type`` (bare model, sequence/token classification), built from
    the same config; a head that fails to build is left out."""
    import torch
    import transformers
    from transformers.models.auto import modeling_auto

    out = {}
    for name, mapping, auto in HEADS:
        names = getattr(modeling_auto, mapping)
        if model_type not in names:
            continue
        try:
            model = _instantiate(transformers, torch, auto, config, max_params)
        except Exception:  # noqa: BLE001 - a head the tiny config cannot build
            continue
        if type(model).__name__ != task_cls:
            out[name] = model
    return out


def save_all(model, root: Path) -> dict[str, Path]:
    """Save ``model`` in every layout; returns variant -> folder."""
    import torch
    from safetensors.torch import load_file

    out = {"st-single": root / "st-single", "st-sharded": root / "st-sharded"}
    model.save_pretrained(out["st-single"])
    model.save_pretrained(out["st-sharded"], max_shard_size=SHARD_SIZE)
    # transformers 4's .bin layout, from the checkpoint-format tensors save_pretrained wrote.
    for variant, source in (("bin-single", "st-single"), ("bin-sharded", "st-sharded")):
        dst = root / variant
        src = out[source]
        dst.mkdir()
        for meta in ("config.json", "generation_config.json"):
            if (src / meta).exists():
                shutil.copy(src / meta, dst / meta)
        index = src / "model.safetensors.index.json"
        if not index.exists():
            torch.save(load_file(src / "model.safetensors"), dst / "pytorch_model.bin")
        else:
            data = json.loads(index.read_text())
            shards = sorted(set(data["weight_map"].values()))
            names = {s: s.replace("model-", "pytorch_model-").replace(".safetensors", ".bin") for s in shards}
            total = 0
            for shard in shards:
                tensors = load_file(src / shard)
                total += sum(t.numel() * t.element_size() for t in tensors.values())
                torch.save(tensors, dst / names[shard])
            new = {"metadata": {"total_size": total},
                   "weight_map": {k: names[v] for k, v in data["weight_map"].items()}}
            (dst / "pytorch_model.bin.index.json").write_text(json.dumps(new, indent=2, sort_keys=True) + "\n")
        out[variant] = dst
    # transformers 4 .bin with everything its state_dict held: tied aliases (one shared storage)
    # and persistent buffers, under checkpoint names.
    dst = root / "bin-v4"
    dst.mkdir()
    for meta in ("config.json", "generation_config.json"):
        if (out["st-single"] / meta).exists():
            shutil.copy(out["st-single"] / meta, dst / meta)
    state = model.state_dict()
    try:
        from transformers.core_model_loading import revert_weight_conversion

        state = revert_weight_conversion(model, state)
    except ImportError:
        pass
    torch.save({k: v.contiguous() if not v.is_contiguous() else v for k, v in state.items()},
               dst / "pytorch_model.bin")
    out["bin-v4"] = dst
    # Half precision, as most published checkpoints are: config.json's dtype follows.
    half = root / "st-bf16"
    model.to(torch.bfloat16).save_pretrained(half, max_shard_size=SHARD_SIZE)
    model.to(torch.float32)
    out["st-bf16"] = half
    return out


# --- validating -------------------------------------------------------------------------------------

def noisy(path: Path, reference: str) -> list[tuple[str, str, str]]:
    from hfconv import validate

    report = validate(path, reference=reference)
    return [(f.code, f.severity.value, f.message) for f in report.findings if f.severity.value in ("error", "warning")]


def loads_cleanly(path: Path, auto_name: str) -> bool:
    """The oracle for a mutation nobody flagged: transformers' own from_pretrained loads the
    folder with no missing, unexpected or mismatched weights (the change had no effect, e.g.
    num_key_value_heads in a GPTBigCode config, which uses multi_query)."""
    import transformers

    try:
        _, info = getattr(transformers, auto_name).from_pretrained(path, output_loading_info=True)
    except Exception:  # noqa: BLE001 - refusing to load is a defect
        return False
    return not (info.get("missing_keys") or info.get("unexpected_keys") or info.get("mismatched_keys")
                or info.get("error_msgs"))


def errors_of(path: Path, reference: str = "auto") -> set[str]:
    from hfconv import validate

    return {f.code for f in validate(path, reference=reference).findings if f.severity.value == "error"}


# --- mutations --------------------------------------------------------------------------------------

def _shards(folder: Path) -> list[Path]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return [folder / s for s in sorted(set(index["weight_map"].values()))]


def _edit_config(folder: Path, aliases: tuple[str, ...], change) -> str | None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key in aliases:
        if isinstance(config.get(key), int) and not isinstance(config.get(key), bool):
            config[key] = change(config[key])
            path.write_text(json.dumps(config, indent=2))
            return key
    for sub in ("text_config", "language_config", "decoder", "llm_config"):
        if isinstance(config.get(sub), dict):
            for key in aliases:
                value = config[sub].get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    config[sub][key] = change(value)
                    path.write_text(json.dumps(config, indent=2))
                    return f"{sub}.{key}"
    return None


def _edit_index(folder: Path, change) -> None:
    path = folder / "model.safetensors.index.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _drop_from_index(data: dict) -> None:
    del data["weight_map"][sorted(data["weight_map"])[0]]


def _wrong_shard(data: dict) -> None:
    wm = data["weight_map"]
    shards = sorted(set(wm.values()))
    name = sorted(wm)[0]
    wm[name] = next(s for s in shards if s != wm[name])


def _truncate(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - max(16, size // 3))


def _bad_header_length(path: Path) -> None:
    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        fh.seek(0)
        fh.write(struct.pack("<Q", n + 13))


def _remove_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    # The biggest tensor of the first layer: required in every architecture.
    layer = [k for k in tensors if ".0." in k] or list(tensors)
    victim = max(layer, key=lambda k: (tensors[k].numel(), k))
    del tensors[victim]
    save_file(tensors, path, metadata={"format": "pt"})


def _untie(folder: Path) -> str | None:
    """tie_word_embeddings true -> false where the folder stores the output embedding only once."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if config.get("tie_word_embeddings") is False:
        return "not tied"
    if config.get("tie_word_embeddings") is None and "tie_word_embeddings" not in config:
        return "tie_word_embeddings not in config.json"
    config["tie_word_embeddings"] = False
    path.write_text(json.dumps(config, indent=2))
    return None


HIDDEN_KEYS = ("hidden_size", "d_model", "n_embd", "dim", "n_embed")
VOCAB_KEYS = ("vocab_size",)
FFN_KEYS = ("intermediate_size", "ffn_dim", "d_ff", "encoder_ffn_dim", "n_inner", "d_inner", "hidden_dim")
GENERIC_BLIND = {"ffn+32", "remove-tensor", "hidden-x2", "hidden-x2-bin", "kv-heads", "head-dim-x2", "experts+1",
                 "untie"}
"""Mutations the generic check (--reference rules, family not in the table) may not see."""
LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers")


def mutations(folders: dict[str, Path]) -> list[tuple[str, str, object]]:
    """(name, base variant, apply(folder) -> None or a reason to skip)."""
    def config_change(keys, change):
        def apply(folder):
            key = _edit_config(folder, keys, change)
            return None if key else f"no {'/'.join(keys)} in config.json"
        return apply

    def needs_shards(fn):
        def apply(folder):
            shards = _shards(folder)
            if len(shards) < 2:
                return "only one shard"
            return fn(folder, shards)
        return apply

    return [
        ("delete-shard", "st-sharded", needs_shards(lambda f, s: s[-1].unlink())),
        ("truncate-shard", "st-sharded", needs_shards(lambda f, s: _truncate(s[len(s) // 2]))),
        ("truncate-single", "st-single", lambda f: _truncate(f / "model.safetensors")),
        ("truncate-bin", "bin-single", lambda f: _truncate(f / "pytorch_model.bin")),
        ("header-length", "st-single", lambda f: _bad_header_length(f / "model.safetensors")),
        ("header-length-shard", "st-sharded", needs_shards(lambda f, s: _bad_header_length(s[0]))),
        ("hidden-x2", "st-single", config_change(HIDDEN_KEYS, lambda v: v * 2)),
        ("vocab+64", "st-single", config_change(VOCAB_KEYS, lambda v: v + 64)),
        ("ffn+32", "st-single", config_change(FFN_KEYS, lambda v: v + 32)),
        ("layers+1", "st-single", config_change(LAYER_KEYS, lambda v: v + 1)),
        ("layers-1", "st-sharded", config_change(LAYER_KEYS, lambda v: v - 1)),
        ("hidden-x2-bin", "bin-sharded", config_change(HIDDEN_KEYS, lambda v: v * 2)),
        ("kv-heads", "st-single", config_change(("num_key_value_heads", "num_kv_heads"), lambda v: 1 if v != 1 else 4)),
        ("head-dim-x2", "st-single", config_change(("head_dim", "d_kv"), lambda v: v * 2)),
        ("experts+1", "st-single", config_change(("num_local_experts", "num_experts", "n_routed_experts"),
                                                 lambda v: v + 1)),
        ("untie", "st-single", _untie),
        ("index-drop", "st-sharded", needs_shards(lambda f, s: _edit_index(f, _drop_from_index))),
        ("index-wrong-shard", "st-sharded", needs_shards(lambda f, s: _edit_index(f, _wrong_shard))),
        ("remove-tensor", "st-single", _remove_tensor),
    ]


# --- one architecture -------------------------------------------------------------------------------

class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def handler(signum, frame):
        raise Timeout(f"took over {seconds}s")
    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_one(model_type: str, workdir: str, max_params: int, mutate: bool, heads: bool = True,
            keep: bool = False) -> dict:
    """Everything for one model_type, in a worker process; returns a plain dict. Its folders are
    deleted at the end unless ``keep`` (a full sweep with mutations writes tens of GB)."""
    try:
        return _run_one(model_type, workdir, max_params, mutate, heads)
    finally:
        if not keep:
            shutil.rmtree(Path(workdir) / model_type, ignore_errors=True)


def _run_one(model_type: str, workdir: str, max_params: int, mutate: bool, heads: bool) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    result: dict = {"type": model_type, "built": False, "alarms": [], "mutations": [], "variants": []}
    root = Path(workdir) / model_type
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        with time_limit(TIMEOUT_S):
            model, task, auto, config = build(model_type, max_params)
            result.update(task=task, cls=type(model).__name__)
            folders = save_all(model, root)
            if heads:
                for name, head in build_heads(model_type, config, type(model).__name__, max_params).items():
                    head.save_pretrained(root / f"head-{name}")
                    folders[f"head-{name}"] = root / f"head-{name}"
    except Exception as exc:  # noqa: BLE001 - a sweep reports and moves on
        result["skip"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        shutil.rmtree(root, ignore_errors=True)
        return result
    result["built"] = True
    result["variants"] = sorted(folders)
    for variant, folder in folders.items():
        for reference in ("rules", "auto"):
            try:
                for code, severity, message in noisy(folder, reference):
                    result["alarms"].append((variant, reference, code, severity, message))
            except Exception:  # noqa: BLE001
                result["alarms"].append((variant, reference, "CRASH", "error", traceback.format_exc(limit=-3)))
    from hfconv.rules.families import FAMILIES

    in_table = model_type in FAMILIES
    if mutate:
        for name, base, apply in mutations(folders):
            target = root / f"mut-{name}"
            shutil.copytree(folders[base], target)
            try:
                skipped = apply(target)
            except Exception as exc:  # noqa: BLE001
                skipped = f"mutation failed: {exc}"
            if skipped:
                result["mutations"].append((name, "skipped", skipped))
                continue
            for reference in ("rules", "auto"):
                try:
                    codes = errors_of(target, reference)
                except Exception:  # noqa: BLE001
                    codes = {"CRASH"}
                status = "caught" if codes else "MISSED"
                if not codes and reference == "rules" and not in_table and name in GENERIC_BLIND:
                    status = "generic-only"  # documented: without a rule table only embeddings and depth
                elif not codes and loads_cleanly(target, auto):
                    status = "harmless"  # transformers itself loads it with nothing missing or mismatched
                result["mutations"].append((f"{name}/{reference}", status, ",".join(sorted(codes))))
    return result


# --- driver -----------------------------------------------------------------------------------------

def all_types() -> list[str]:
    from transformers.models.auto import modeling_auto

    seen: dict[str, None] = {}
    for _, mapping, _ in TASKS:
        seen.update(dict.fromkeys(getattr(modeling_auto, mapping)))
    return list(seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", help="comma-separated model_types (default: every causal/masked/seq2seq/vision)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N types")
    parser.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--max-params", type=float, default=8e6)
    parser.add_argument("--mutate", default=",".join(MUTATE_DEFAULT),
                        help="comma-separated model_types whose folders are broken on purpose ('all', or '')")
    parser.add_argument("--no-heads", action="store_true", help="only the task's class, not the bare model and "
                        "classification heads")
    parser.add_argument("--keep", help="write the folders here and keep them (default: a temporary folder, each "
                        "architecture's folders deleted once it is done; with --mutate all, --keep needs ~50 GB)")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)

    types = args.types.split(",") if args.types else all_types()
    if args.limit:
        types = types[:args.limit]
    mutate = set(types) if args.mutate == "all" else set(filter(None, args.mutate.split(",")))
    workdir = args.keep or tempfile.mkdtemp(prefix="hfconv-sweep-")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    results = []
    # Fresh workers every few types: some models leak memory or leave global state behind.
    with multiprocessing.get_context("fork").Pool(args.jobs, maxtasksperchild=4) as pool:
        pending = [pool.apply_async(run_one, (t, workdir, int(args.max_params), t in mutate, not args.no_heads,
                                              bool(args.keep))) for t in types]
        for t, job in zip(types, pending, strict=True):
            try:
                r = job.get(timeout=TIMEOUT_S * 4)
            except Exception as exc:  # noqa: BLE001 - a worker died or hung
                r = {"type": t, "built": False, "skip": f"worker failed: {exc!r}", "alarms": [], "mutations": []}
            results.append(r)
            status = ("SKIP " + r["skip"]) if not r["built"] else \
                (f"{len(r['alarms'])} alarm(s)" if r["alarms"] else "clean")
            print(f"[{len(results):3d}/{len(types)}] {t:28s} {r.get('cls', ''):40s} {status}", flush=True)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return report(results)


def report(results: list[dict]) -> int:
    built = [r for r in results if r["built"]]
    clean = [r for r in built if not r["alarms"]]
    by_code: dict[str, list[tuple]] = defaultdict(list)
    for r in built:
        for variant, reference, code, severity, message in r["alarms"]:
            by_code[code].append((r["type"], variant, reference, severity, message))
    print("\n=== skipped ===")
    for r in results:
        if not r["built"]:
            print(f"  {r['type']:28s} {r['skip']}")
    print("\n=== false alarms on good folders (grouped by code) ===")
    for code in sorted(by_code):
        rows = by_code[code]
        print(f"{code}: {len(rows)} finding(s) in {len({x[0] for x in rows})} type(s)")
        shown: set[tuple] = set()
        for model_type, variant, reference, severity, message in rows:
            key = (model_type, message[:80])
            if key in shown:
                continue
            shown.add(key)
            print(f"  [{severity}] {model_type} {variant} --reference {reference}: {message[:400]}")
    missed = [(r["type"], m) for r in built for m in r["mutations"] if m[1] == "MISSED"]
    tried_mut = [(r["type"], m) for r in built for m in r["mutations"] if m[1] != "skipped"]
    harmless = [(r["type"], m) for r in built for m in r["mutations"] if m[1] == "harmless"]
    limited = [(r["type"], m) for r in built for m in r["mutations"] if m[1] == "generic-only"]
    print("\n=== mutations ===")
    for r in built:
        for name, status, detail in r["mutations"]:
            if status not in ("caught", "generic-only", "harmless"):
                print(f"  {r['type']:20s} {name:28s} {status} {detail}")
    print("\n=== summary ===")
    print(f"architectures tried:   {len(results)}")
    print(f"built and saved:       {len(built)}")
    print(f"clean (all variants):  {len(clean)}")
    print(f"with false alarms:     {len(built) - len(clean)}")
    for code in sorted(by_code):
        print(f"  {code}: {len(by_code[code])} finding(s), {len({x[0] for x in by_code[code]})} type(s)")
    print(f"mutations checked:     {len(tried_mut)}")
    print(f"  no effect on transformers' own load (not defects): {len(harmless)} "
          f"({', '.join(sorted({f'{t}:{m[0]}' for t, m in harmless}))})")
    print(f"  not seen by the generic check (--reference rules, no rule table): {len(limited)}")
    print(f"mutations missed:      {len(missed)}")
    for model_type, (name, _, _) in missed:
        print(f"  {model_type}: {name}")
    counts = Counter(r.get("task", "-") for r in built)
    print("tasks built:           " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if by_code or missed else 0


if __name__ == "__main__":
    sys.exit(main())
