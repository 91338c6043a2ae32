"""validate --manifest re-checks a converted folder against the digests convert wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hfconv.cli import main
from hfconv.conversion import convert
from hfconv.validation import validate

from helpers import FIXTURES


@pytest.fixture()
def converted(tmp_path: Path) -> tuple[Path, Path]:
    manifest = tmp_path / "manifest.json"
    dst = tmp_path / "out"
    convert(FIXTURES / "llama-bin-sharded", dst, max_shard_size="60KB", manifest=manifest)
    return dst, manifest


def test_converted_folder_matches_its_manifest(converted: tuple[Path, Path]) -> None:
    dst, manifest = converted
    report = validate(dst, manifest=str(manifest))
    assert report.ok and not [f for f in report.findings if f.code.startswith("HFC72")]
    result = CliRunner().invoke(main, ["validate", str(dst), "--manifest", str(manifest)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_source_bin_folder_matches_the_manifest_too(converted: tuple[Path, Path]) -> None:
    _, manifest = converted
    assert validate(FIXTURES / "llama-bin-sharded", manifest=str(manifest)).ok


def test_source_with_a_dropped_tie_is_checked_against_its_target(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    convert(FIXTURES / "llama-tied-bin", tmp_path / "out", manifest=manifest)
    assert json.loads(manifest.read_text())["dropped_aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert not validate(FIXTURES / "llama-tied-bin", manifest=str(manifest), select=["HFC72"]).findings
    # The same names, but lm_head no longer equals the embedding it was tied to.
    untied = tmp_path / "untied"
    shutil.copytree(FIXTURES / "llama-tied-bin", untied)
    state = torch.load(untied / "pytorch_model.bin", weights_only=True)
    state["lm_head.weight"] = state["lm_head.weight"].clone() + 1
    torch.save(state, untied / "pytorch_model.bin")
    [f] = validate(untied, manifest=str(manifest), select=["HFC72"]).findings
    assert f.code == "HFC721" and f.tensor == "lm_head.weight" and "model.embed_tokens.weight" in f.message


def test_flipped_byte_is_caught(converted: tuple[Path, Path]) -> None:
    dst, manifest = converted
    from hfconv.readers import read_weight_file

    shard = sorted(dst.glob("model-*.safetensors"))[0]
    meta = next(iter(read_weight_file(shard).tensors.values()))
    data = bytearray(shard.read_bytes())
    data[meta.data_offsets[0] + 3] ^= 0x01
    shard.write_bytes(bytes(data))
    report = validate(dst, manifest=str(manifest))
    assert not report.ok
    [f] = [f for f in report.findings if f.code == "HFC721"]
    assert f.tensor == meta.name and f.file == shard.name


def test_missing_and_extra_tensors(converted: tuple[Path, Path], tmp_path: Path) -> None:
    dst, manifest = converted
    data = json.loads(manifest.read_text())
    removed = sorted(data["tensors"])[0]
    del data["tensors"][removed]
    data["tensors"]["ghost.weight"] = {"file": "x", "dtype": "F32", "shape": [1], "sha256": "0" * 64}
    manifest.write_text(json.dumps(data))
    codes = {(f.code, f.tensor) for f in validate(dst, manifest=str(manifest)).findings}
    assert ("HFC722", "ghost.weight") in codes and ("HFC723", removed) in codes


def test_non_contiguous_bin_tensor_digest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "llama-bin", src)
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    # Strided views of the right shapes, saved as such (the output must still validate).
    (hidden,) = state["model.norm.weight"].shape
    state["model.norm.weight"] = torch.arange(2 * hidden, dtype=torch.float32)[::2]
    rows, cols = state["model.layers.0.mlp.up_proj.weight"].shape
    state["model.layers.0.mlp.up_proj.weight"] = torch.arange(rows * cols, dtype=torch.float32).reshape(cols, rows).T
    torch.save(state, src / "pytorch_model.bin")
    manifest = tmp_path / "m.json"
    convert(src, tmp_path / "dst", manifest=manifest)
    report = validate(src, manifest=str(manifest), select=["HFC72"])
    assert report.ok, report.findings


def test_not_a_manifest(tmp_path: Path) -> None:
    bogus = tmp_path / "m.json"
    bogus.write_text('{"format": "other"}')
    assert "HFC720" in validate(FIXTURES / "llama-safetensors", manifest=str(bogus)).codes()
