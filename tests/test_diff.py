"""``hfconv diff A B`` (issue 14): through the console script, on folders written by torch
and safetensors (the fixtures, a copy saved again) and by ``hfconv convert`` from them.

- a folder against its conversion (bin -> safetensors, resharded) reports identical weights;
- a copy with one changed layer names exactly that layer (tensors and block);
- a cast between the folders is recognised; ``--headers-only`` reads no tensor byte;
- metadata: config keys, tokenizer.json vocabulary by content;
- JSON follows schemas/diff.schema.json; HTML is one page with the layer map;
- a broken shard is a finding naming the file (exit 1), a missing folder exit 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
CHANGED = "model.layers.1.mlp.up_proj.weight"


def hfconv(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hfconv", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def no_traceback(run: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-3000:]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """fixtures/llama-bin (torch.save), its conversion by ``hfconv convert`` (3 shards), a copy
    with one layer changed (saved by safetensors), and fixtures/llama-bf16-safetensors (the same
    weights cast to bfloat16 by torch)."""
    from safetensors.torch import save_file

    base = tmp_path_factory.mktemp("diff")
    shutil.copytree(FIXTURES / "llama-bin", base / "bin")
    converted = hfconv("convert", str(base / "bin"), str(base / "st"), "--quiet", "--max-shard-size", "100KB",
                       cwd=base)
    assert converted.returncode == 0, converted.stderr
    assert len(list((base / "st").glob("model-*.safetensors"))) > 1
    state = torch.load(base / "bin" / "pytorch_model.bin", weights_only=True)
    state[CHANGED] = state[CHANGED] * 1.01
    shutil.copytree(base / "bin", base / "tuned", ignore=shutil.ignore_patterns("*.bin"))
    save_file({k: v.contiguous() for k, v in state.items()}, base / "tuned" / "model.safetensors",
              metadata={"format": "pt"})
    return {"base": base, "bin": base / "bin", "st": base / "st", "tuned": base / "tuned",
            "bf16": FIXTURES / "llama-bf16-safetensors"}


_RUNS: dict[tuple[str, ...], tuple[int, dict]] = {}


def diff_json(a: Path, b: Path, *extra: str) -> tuple[int, dict]:
    """``hfconv diff A B --format json``: exit code and document (each run once per module)."""
    key = (str(a), str(b), *extra)
    if key not in _RUNS:
        run = hfconv("diff", str(a), str(b), "--format", "json", *extra, cwd=a.parent)
        no_traceback(run)
        _RUNS[key] = (run.returncode, json.loads(run.stdout))
    return _RUNS[key]


def test_a_folder_against_its_conversion_is_identical(saved):
    run = hfconv("diff", str(saved["bin"]), str(saved["st"]), cwd=saved["base"])
    no_traceback(run)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "weights IDENTICAL" in run.stdout.splitlines()[0]
    code, data = diff_json(saved["bin"], saved["st"])
    assert code == 0 and data["weights_identical"]
    assert data["format_a"] == "bin" and data["format_b"] == "safetensors"
    assert {t["status"] for t in data["tensors"]} == {"identical"}
    assert len(data["tensors"]) == len(torch.load(saved["bin"] / "pytorch_model.bin", weights_only=True))
    # every byte of both folders' tensors read once
    assert data["bytes_read"] == 2 * sum(t["numel"] * 4 for t in data["tensors"])


def test_one_changed_layer_is_named_exactly(saved):
    code, data = diff_json(saved["bin"], saved["tuned"])
    assert code == 1
    changed = [t for t in data["tensors"] if t["status"] != "identical"]
    assert [t["name"] for t in changed] == [CHANGED], changed
    row = changed[0]
    assert row["status"] == "different" and row["differing"] > 0
    assert 0.009 < row["rel_l2"] < 0.011  # scaled by 1.01: ||0.01 A|| / ||A||
    assert row["max_abs"] > 0
    assert [b["block"] for b in data["blocks"] if b["change"] != 0] == ["model.layers.1"]
    run = hfconv("diff", str(saved["bin"]), str(saved["tuned"]), cwd=saved["base"])
    assert run.returncode == 1
    assert "weights DIFFER: 1 tensor different" in run.stdout and CHANGED in run.stdout
    assert "blocks changed: model.layers.1 (" in run.stdout


def test_a_cast_between_the_folders_is_recognised(saved):
    code, data = diff_json(saved["bin"], saved["bf16"])
    assert code == 0, data["counts"]
    assert data["cast"] == "F32 -> BF16"
    assert {t["status"] for t in data["tensors"]} == {"cast"}
    assert all(0 < t["max_abs"] < 0.01 for t in data["tensors"])  # what the cast explains
    assert {"file": "config.json", "key": "torch_dtype", "change": "changed", "a": "float32",
            "b": "bfloat16"} in data["metadata"] or any(m["key"] in ("dtype", "torch_dtype") for m in data["metadata"])
    # the changed layer cast to bf16 differs beyond the cast
    code, data = diff_json(saved["tuned"], saved["bf16"])
    assert code == 1
    assert [t["name"] for t in data["tensors"] if t["status"] == "different"] == [CHANGED]


def test_headers_only_reads_no_bytes_and_sees_shapes(saved, tmp_path):
    code, data = diff_json(saved["bin"], saved["tuned"], "--headers-only")
    assert code == 0 and data["bytes_read"] == 0 and {t["status"] for t in data["tensors"]} == {"same_header"}
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(saved["tuned"], other)
    tensors = load_file(other / "model.safetensors")
    tensors["model.norm.weight"] = torch.ones(17)
    tensors["extra.bias"] = torch.zeros(2)
    del tensors["lm_head.weight"]
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    code, data = diff_json(saved["bin"], other, "--headers-only")
    assert code == 1
    status = {t["name"]: t["status"] for t in data["tensors"] if t["status"] != "same_header"}
    assert status == {"model.norm.weight": "shape", "lm_head.weight": "only_a", "extra.bias": "only_b"}


def test_metadata_and_tokenizer_differences_are_listed(saved, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(saved["st"], a)
    shutil.copytree(saved["st"], b)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "ab": 5}
    tokenizer = {"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": None,
                 "post_processor": None, "decoder": None,
                 "model": {"type": "BPE", "vocab": vocab, "merges": ["a b"], "unk_token": "<unk>"}}
    (a / "tokenizer.json").write_text(json.dumps(tokenizer))
    tokenizer["model"]["vocab"] = {**{k: v for k, v in vocab.items() if k != "ab"}, "ba": 5}
    tokenizer["model"]["merges"] = [["b", "a"]]
    (b / "tokenizer.json").write_text(json.dumps(tokenizer, indent=4))
    config = json.loads((b / "config.json").read_text())
    config["rope_theta"] = 500000.0
    config.pop("max_position_embeddings")
    (b / "config.json").write_text(json.dumps(config))
    (b / "generation_config.json").write_text('{"bos_token_id": 1,')  # not JSON: a warning, not compared
    code, data = diff_json(a, b)
    assert code == 0  # weights identical: metadata differences are listed, not failed
    assert [(f["code"], f["severity"], f["file"]) for f in data["findings"]] == \
        [("HFC962", "warning", "generation_config.json")]
    keys = {(m["file"], m["key"], m["change"]) for m in data["metadata"]}
    assert ("config.json", "rope_theta", "changed") in keys
    assert ("config.json", "max_position_embeddings", "only_a") in keys
    tok = data["tokenizer"]
    assert tok["only_a"] == ["ab"] and tok["only_b"] == ["ba"] and tok["merges_only_a"] == 1
    run = hfconv("diff", str(a), str(b), cwd=tmp_path)
    assert "config.json: rope_theta: 10000.0 -> 500000.0" in run.stdout
    assert "1 token only in A: 'ab'" in run.stdout


def test_json_follows_its_schema_and_html_is_one_page(saved, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "schemas" / "diff.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for other in ("st", "tuned", "bf16"):
        _, data = diff_json(saved["bin"], saved[other])
        jsonschema.Draft202012Validator(schema).validate(data)
    page = tmp_path / "diff.html"
    run = hfconv("diff", str(saved["bin"]), str(saved["tuned"]), "--format", "html", "-o", str(page), cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert 'class="layer-map"' in html and CHANGED in html


def test_a_broken_shard_is_named_and_a_missing_folder_is_a_usage_error(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved["st"], broken)
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.write_bytes(b"\xff" * 16)
    run = hfconv("diff", str(saved["bin"]), str(broken), cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 1
    assert f"HFC960 error: B: {shard.name} could not be read" in run.stdout
    code, data = diff_json(saved["bin"], broken)
    unread = {t["name"] for t in data["tensors"] if t["status"] == "unreadable"}
    index = json.loads((broken / "model.safetensors.index.json").read_text())["weight_map"]
    assert unread == {name for name, file in index.items() if file == shard.name}  # not "only in A"
    assert code == 1 and {t["status"] for t in data["tensors"]} == {"identical", "unreadable"}
    run = hfconv("diff", str(saved["bin"]), str(tmp_path / "absent"), cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 2 and "does not exist" in run.stderr


def test_big_endian_strided_and_every_dtype_compare_by_value(tmp_path):
    """torch.save of every dtype, a transposed view, slices and a tied alias, as a big-endian
    machine writes it, against the same state little-endian (identical) and against
    safetensors with four tensors changed (exactly those named, each with its statistics)."""
    from safetensors.torch import save_file

    from helpers import mixed_state, save_big_endian

    state = mixed_state()
    folders = {name: tmp_path / name for name in ("be", "le", "st")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "llama"}')
    save_big_endian(state, folders["be"] / "pytorch_model.bin")
    torch.save(state, folders["le"] / "pytorch_model.bin")
    changed = {k: v.contiguous().clone() for k, v in state.items() if k != "lm_head.weight"}
    changed["model.layers.0.f16"] += 1
    changed["model.layers.0.i32"] = torch.tensor([1, -2, 70001], dtype=torch.int32)
    changed["model.layers.0.c64"] *= 2
    changed["model.layers.0.block"] += 0.5  # a strided slice in the .bin
    save_file(changed, folders["st"] / "model.safetensors", metadata={"format": "pt"})
    code, data = diff_json(folders["be"], folders["le"])
    assert code == 0 and {t["status"] for t in data["tensors"]} == {"identical"}
    # the tied alias is the same storage on both sides: its bytes are read once, as its partner's
    assert data["bytes_read"] == 2 * sum(t["bytes"] for t in data["tensors"] if t["name"] != "lm_head.weight")
    code, data = diff_json(folders["be"], folders["st"])
    assert code == 1
    rows = {t["name"]: t for t in data["tensors"] if t["status"] != "identical"}
    assert {n: t["status"] for n, t in rows.items()} == {
        "model.layers.0.block": "different", "model.layers.0.f16": "different", "model.layers.0.i32": "different",
        "model.layers.0.c64": "different", "lm_head.weight": "tied"}
    assert rows["model.layers.0.block"]["max_abs"] == 0.5 and rows["model.layers.0.block"]["differing"] == 9
    assert rows["model.layers.0.f16"]["max_abs"] == pytest.approx(1.0, abs=1e-3)
    assert rows["model.layers.0.i32"]["max_abs"] == 1 and rows["model.layers.0.i32"]["differing"] == 1
    assert rows["model.layers.0.i32"]["rel_l2"] is None  # not a floating tensor
    assert rows["model.layers.0.c64"]["differing"] == 3  # compared by bytes


def test_a_hub_repo_id_is_resolved_from_the_local_cache(saved, tmp_path):
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny" / "snapshots" / ("a" * 40)
    (cache / "models--acme--tiny" / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(saved["st"].iterdir()):  # as hf_hub_download stores them: symlinks into blobs/
        blob = cache / "models--acme--tiny" / "blobs" / file.name.replace(".", "_")
        blob.write_bytes(file.read_bytes())
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    (cache / "models--acme--tiny" / "refs").mkdir()
    (cache / "models--acme--tiny" / "refs" / "main").write_text("a" * 40)
    run = hfconv("diff", "acme/tiny", str(saved["bin"]), "--format", "json", cwd=tmp_path, HF_HUB_CACHE=str(cache))
    no_traceback(run)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(run.stdout)
    assert data["a"] == "acme/tiny" and data["weights_identical"] and data["bytes_read"] > 0


def test_a_cast_with_nan_inf_and_overflow_is_recognised(tmp_path):
    """float32 -> bfloat16 by torch, special values included: NaN (whose bfloat16 payload torch
    writes as it likes), +-inf, signed zeros, subnormals and a value the cast rounds to inf."""
    from safetensors.torch import save_file

    values = torch.randn(300, 10, generator=torch.Generator().manual_seed(1)) * 10
    values[0] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 3.4e38, -3.4e38, 1e-40,
                              65504.0, 1e-8])
    for name, tensor in (("f32", values), ("bf16", values.to(torch.bfloat16))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        save_file({"w": tensor, "other": tensor[1:] * 2}, tmp_path / name / "model.safetensors",
                  metadata={"format": "pt"})
    code, data = diff_json(tmp_path / "f32", tmp_path / "bf16")
    assert code == 0 and data["cast"] == "F32 -> BF16", data["tensors"]
    assert {t["name"]: t["status"] for t in data["tensors"]} == {"w": "cast", "other": "cast"}
    assert {t["name"]: t["max_abs"] for t in data["tensors"]}["w"] == "inf"  # 3.4e38 became inf
