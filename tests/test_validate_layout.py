"""validate: good fixtures pass; each layout/index defect gives its own finding and exit 1."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from hfconv.cli import main
from hfconv.validation import validate

from helpers import FIXTURES, copy_fixture

GOOD = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and p.name.startswith("llama-"))
SHARDED_ST = "llama-safetensors-sharded"
SHARDED_BIN = "llama-bin-sharded"


def read_index(folder: Path, name: str = "model.safetensors.index.json") -> dict:
    return json.loads((folder / name).read_text())


def write_index(folder: Path, data: dict, name: str = "model.safetensors.index.json") -> None:
    (folder / name).write_text(json.dumps(data, indent=2))


def codes(folder: Path, **kwargs) -> list[str]:
    return validate(folder, **kwargs).codes()


def assert_finding(folder: Path, code: str, file: str | None = None, tensor: str | None = None) -> None:
    report = validate(folder)
    assert not report.ok
    matches = [f for f in report.findings if f.code == code]
    assert matches, f"expected {code}, got {[(f.code, f.message) for f in report.findings]}"
    if file is not None:
        assert any(f.file == file for f in matches), [(f.file, f.message) for f in matches]
    if tensor is not None:
        assert any(f.tensor == tensor for f in matches), [(f.tensor, f.message) for f in matches]


@pytest.mark.parametrize("name", GOOD)
def test_good_fixture_has_no_errors_or_warnings(name: str) -> None:
    report = validate(FIXTURES / name)
    bad = [f for f in report.findings if f.severity.value != "info"]
    assert report.ok and not bad, bad
    assert report.summary.tensors >= 20
    assert report.summary.parameters > 0


@pytest.mark.parametrize("name", GOOD)
def test_good_fixture_cli_exit_0(name: str) -> None:
    result = CliRunner().invoke(main, ["validate", str(FIXTURES / name)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_layout_of_sharded_safetensors() -> None:
    layout = validate(FIXTURES / SHARDED_ST).layout
    assert layout.format == "safetensors" and layout.sharded
    assert layout.index == "model.safetensors.index.json"
    assert layout.shards == tuple(f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3))


def test_layout_of_old_bin_naming() -> None:
    layout = validate(FIXTURES / "llama-bin-oldnames").layout
    assert layout.format == "bin" and layout.sharded
    assert layout.shards == tuple(f"pytorch_model-{i}-of-3.bin" for i in (1, 2, 3))


def test_indexed_tensor_missing_from_its_shard(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    index = read_index(folder)
    index["weight_map"]["model.layers.0.extra.weight"] = "model-00001-of-00003.safetensors"
    write_index(folder, index)
    assert_finding(folder, "HFC301", tensor="model.layers.0.extra.weight")


def test_shard_tensor_not_in_index(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    index = read_index(folder)
    del index["weight_map"]["model.norm.weight"]
    write_index(folder, index)
    assert_finding(folder, "HFC302", tensor="model.norm.weight")


def test_tensor_indexed_to_wrong_shard(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    index = read_index(folder)
    real = index["weight_map"]["lm_head.weight"]
    other = next(s for s in sorted(set(index["weight_map"].values())) if s != real)
    index["weight_map"]["lm_head.weight"] = other
    write_index(folder, index)
    report = validate(folder)
    [f] = [f for f in report.findings if f.code == "HFC303"]
    assert f.tensor == "lm_head.weight" and real in f.message


def test_shard_file_missing(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    (folder / "model-00002-of-00003.safetensors").unlink()
    assert_finding(folder, "HFC304", file="model-00002-of-00003.safetensors")


def test_unreferenced_stale_shard(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    shutil.copy(folder / "model-00001-of-00003.safetensors", folder / "model-00001-of-00004.safetensors")
    report = validate(folder)
    assert "HFC007" in report.codes()
    report = validate(folder, strict=True)
    assert not report.ok


def test_duplicate_tensor_across_shards(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    index = read_index(folder)
    name = "lm_head.weight"
    home = index["weight_map"][name]
    other = next(s for s in sorted(set(index["weight_map"].values())) if s != home)
    tensors = load_file(folder / other)
    tensors[name] = load_file(folder / home)[name]
    save_file(tensors, folder / other, metadata={"format": "pt"})
    assert_finding(folder, "HFC305", tensor=name)


def test_total_size_mismatch(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    index = read_index(folder)
    index["metadata"]["total_size"] += 4
    write_index(folder, index)
    report = validate(folder)
    assert "HFC306" in report.codes()
    assert not validate(folder, strict=True).ok


def test_total_size_for_bin_accepts_tensor_bytes(tmp_path: Path) -> None:
    assert "HFC306" not in codes(FIXTURES / SHARDED_BIN)


def test_shard_numbering_gap_without_index(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    (folder / "model.safetensors.index.json").unlink()
    (folder / "model-00002-of-00003.safetensors").unlink()
    found = codes(folder)
    assert "HFC002" in found and "HFC005" in found


def test_shard_numbering_mixed_totals(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    os.rename(folder / "model-00003-of-00003.safetensors", folder / "model-00003-of-00004.safetensors")
    index = read_index(folder)
    index["weight_map"] = {k: v.replace("00003-of-00003", "00003-of-00004") for k, v in index["weight_map"].items()}
    write_index(folder, index)
    assert_finding(folder, "HFC005")


def test_shards_without_index(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_BIN)
    (folder / "pytorch_model.bin.index.json").unlink()
    assert_finding(folder, "HFC002")


def test_index_without_shards(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    for shard in folder.glob("model-*.safetensors"):
        shard.unlink()
    assert_finding(folder, "HFC003", file="model.safetensors.index.json")


@pytest.mark.parametrize("safetensors, bin_", [("llama-safetensors", "llama-bin"),
                                               ("llama-safetensors-sharded", "llama-bin-sharded"),
                                               ("llama-tied-safetensors", "llama-tied-bin")])
def test_second_weight_format_holding_the_same_tensors_is_info(tmp_path: Path, safetensors: str, bin_: str) -> None:
    folder = copy_fixture(tmp_path, safetensors)
    for path in (FIXTURES / bin_).glob("pytorch_model*"):
        shutil.copy(path, folder / path.name)
    report = validate(folder, strict=True)
    [f] = [f for f in report.findings if f.code == "HFC004"]
    assert f.severity.value == "info" and "same tensors" in f.message
    assert f.file.startswith("pytorch_model") and "model.safetensors" in f.message
    assert report.ok and report.layout.format == "mixed"
    assert report.layout.shards[0].startswith("model")


def test_stale_second_weight_format_is_a_warning(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    folder = copy_fixture(tmp_path, "llama-safetensors")
    state = load_file(folder / "model.safetensors")
    state["lm_head.weight"] = state["lm_head.weight"].half()
    del state["model.norm.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    report = validate(folder)
    [f] = [f for f in report.findings if f.code == "HFC004"]
    assert f.severity.value == "warning" and f.file == "pytorch_model.bin"
    assert "'model.norm.weight'" in f.message and "'lm_head.weight' F32 [200, 32] vs F16 [200, 32]" in f.message
    assert report.layout.shards == ("model.safetensors",)


@pytest.mark.parametrize("evil", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_name_escaping_folder_is_refused(tmp_path: Path, evil: str) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    # Something a careless reader would open, outside the folder.
    (tmp_path / "outside.safetensors").write_bytes((FIXTURES / "llama-safetensors" / "model.safetensors").read_bytes())
    index = read_index(folder)
    index["weight_map"]["model.norm.weight"] = evil
    write_index(folder, index)
    report = validate(folder)
    escaped = [f for f in report.findings if f.code == "HFC006"]
    assert escaped and evil in escaped[0].message
    assert not report.ok


def test_symlinked_shard_pointing_outside_is_refused(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    outside = tmp_path / "elsewhere.safetensors"
    os.replace(folder / "model.safetensors", outside)
    os.symlink(outside, folder / "model.safetensors")
    assert_finding(folder, "HFC006", file="model.safetensors")


def test_truncated_safetensors_shard(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    shard = folder / "model-00002-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    report = validate(folder)
    assert "HFC110" in report.codes()
    assert "HFC308" in report.codes()  # its index entries could not be checked


def test_truncated_bin_shard(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_BIN)
    shard = folder / "pytorch_model-00002-of-00003.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    report = validate(folder)
    assert not report.ok
    assert any(f.file == "pytorch_model-00002-of-00003.bin" and f.severity.value == "error" for f in report.findings)


def test_no_weights(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    (folder / "model.safetensors").unlink()
    assert_finding(folder, "HFC001")


def test_no_weights_but_models_in_subfolders_names_them(tmp_path: Path) -> None:
    """A diffusers pipeline's root (model_index.json, the text encoder in text_encoder/): still an
    error, which names the subfolders to validate instead of only saying there are no weights."""
    root = tmp_path / "pipeline"
    root.mkdir()
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    for part in ("text_encoder", "text_encoder_2"):
        shutil.copytree(FIXTURES / "llama-safetensors", root / part)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "config.json").write_text("{}")  # a config without weights: no model
    report = validate(root)
    [hfc001] = [f for f in report.findings if f.code == "HFC001"]
    assert not report.ok and hfc001.file == "text_encoder/config.json", hfc001
    assert "but text_encoder/ and text_encoder_2/ each hold a model" in hfc001.message, hfc001.message


def test_fifo_is_never_opened(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    report = validate(folder)  # would block forever if the FIFO were opened for reading
    assert "HFC008" in report.codes()


def test_select_and_ignore(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    (folder / "model-00002-of-00003.safetensors").unlink()
    assert set(codes(folder, select=["HFC304"])) == {"HFC304"}
    assert "HFC304" not in codes(folder, ignore=["HFC3"])


def test_cli_missing_path_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_cli_file_instead_of_folder_exits_2() -> None:
    result = CliRunner().invoke(main, ["validate", str(FIXTURES / "llama-bin" / "config.json")])
    assert result.exit_code == 2


def test_cli_broken_folder_exits_1_and_json_matches_schema(tmp_path: Path) -> None:
    import jsonschema

    folder = copy_fixture(tmp_path, SHARDED_ST)
    (folder / "model-00002-of-00003.safetensors").unlink()
    result = CliRunner().invoke(main, ["validate", str(folder), "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    schema = json.loads((FIXTURES.parent / "schemas" / "report.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(data)
    assert data["ok"] is False and data["summary"]["errors"] >= 1
    assert any(f["code"] == "HFC304" and f["file"] == "model-00002-of-00003.safetensors" for f in data["findings"])


def test_cli_json_for_several_paths_is_an_array() -> None:
    result = CliRunner().invoke(
        main, ["validate", str(FIXTURES / "llama-bin"), str(FIXTURES / SHARDED_ST), "--format", "json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert isinstance(data, list) and [d["ok"] for d in data] == [True, True]


def test_cli_github_annotations(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, SHARDED_ST)
    (folder / "model-00002-of-00003.safetensors").unlink()
    result = CliRunner().invoke(main, ["validate", str(folder), "--format", "github"], catch_exceptions=False)
    assert result.exit_code == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith("::error ")]
    assert any("model-00002-of-00003.safetensors" in line and "HFC304" in line for line in lines)


def test_text_report_compresses_layer_ranges(tmp_path: Path) -> None:
    from hfconv.findings import finding
    from hfconv.render import group_findings

    findings = [finding("HFC302", f"x.bin holds 'model.layers.{i}.mlp.up_proj.weight', which the index does not list",
                        file="x.bin", tensor=f"model.layers.{i}.mlp.up_proj.weight") for i in range(32)]
    [group] = group_findings(findings)
    assert group.tensor == "model.layers.{0..31}.mlp.up_proj.weight"
    assert group.count == 32 and "{0..31}" in group.message


def test_hub_repo_id_resolves_from_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    blob_dir = repo / "blobs"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    blob_dir.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    for src in (FIXTURES / "llama-safetensors").iterdir():
        blob = blob_dir / f"blob-{src.name}"
        shutil.copy(src, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / src.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(main, ["validate", "acme/tiny-llama"], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_trainer_leftovers_are_warnings(tmp_path: Path) -> None:
    """What Trainer writes beside a model: its pickles import only training classes."""
    import random

    import numpy as np
    import torch
    import transformers

    folder = copy_fixture(tmp_path, "llama-safetensors")
    module = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0).state_dict(), folder / "scheduler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               folder / "rng_state.pth")
    torch.save(transformers.TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[]),
               folder / "training_args.bin")
    (folder / "trainer_state.json").write_text("{}")
    report = validate(folder)
    leftovers = {f.file: f for f in report.findings if f.code == "HFC011"}
    assert set(leftovers) == {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin",
                              "trainer_state.json"}
    assert {f.severity.value for f in leftovers.values()} == {"warning"}
    assert report.ok and not validate(folder, strict=True).ok


def test_leftover_pickle_importing_anything_else_is_an_error(tmp_path: Path) -> None:
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    folder = copy_fixture(tmp_path, "llama-safetensors")
    (folder / "training_args.bin").write_bytes(pickle.dumps({"args": Payload()}, protocol=2))
    report = validate(folder)
    [leftover] = [f for f in report.findings if f.code == "HFC011"]
    assert leftover.severity.value == "error" and leftover.file == "training_args.bin"
    assert f"'{os.system.__module__}.system'" in leftover.message
    assert not report.ok


def test_leftovers_that_hold_no_pickle_are_warnings(tmp_path: Path) -> None:
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    folder = copy_fixture(tmp_path, "llama-safetensors")
    (folder / "optimizer.pt").write_bytes(b"not a pickle at all")
    (folder / "scheduler.pt").write_bytes(b"")
    (folder / "training_args.bin").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:"
                                              + "0" * 64 + "\nsize 5304\n")
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(pickle.dumps(Payload(), protocol=2))
    (folder / "rng_state.pth").symlink_to(outside)
    report = validate(folder)
    leftovers = {f.file: f for f in report.findings if f.code == "HFC011"}
    assert set(leftovers) == {"optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth"}
    assert {f.severity.value for f in leftovers.values()} == {"warning"}
    assert "git-lfs pointer" in leftovers["training_args.bin"].message
    assert "not opened" in leftovers["rng_state.pth"].message  # never read outside the folder
    assert "HFC006" in {f.code for f in report.findings if f.file == "rng_state.pth"}


def adapter_folder(tmp_path: Path, fmt: str) -> tuple[Path, dict]:
    """A PEFT LoRA adapter folder as PeftModel.save_pretrained writes it (no config.json)."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / f"adapter-{fmt}"
    folder.mkdir()
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    state = {f"{prefix}.lora_A.weight": torch.randn(8, 32), f"{prefix}.lora_B.weight": torch.zeros(32, 8)}
    if fmt == "safetensors":
        save_file(state, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    else:
        torch.save(state, folder / "adapter_model.bin")
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
        "base_model_name_or_path": "meta-llama/Llama-2-7b-hf", "task_type": "CAUSAL_LM"}))
    return folder, state


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_adapter_weights_are_read_and_checked(tmp_path: Path, fmt: str) -> None:
    folder, state = adapter_folder(tmp_path, fmt)
    report = validate(folder, strict=True)
    assert report.ok, report.findings
    assert report.summary.tensors == 2 and report.layout.shards == (f"adapter_model.{fmt}",)
    weights = folder / f"adapter_model.{fmt}"
    weights.write_bytes(weights.read_bytes()[:300])  # truncated in transit
    broken = validate(folder)
    assert not broken.ok and {f.file for f in broken.findings if f.severity.value == "error"} == {weights.name}


def test_adapter_bin_converts_to_one_adapter_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from hfconv.conversion import convert

    folder, state = adapter_folder(tmp_path, "bin")
    result = convert(folder, tmp_path / "out", max_shard_size="1KB")  # PEFT knows no shards
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert [s.name for s in result.shards] == ["adapter_model.safetensors"]
    output = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert output.keys() == state.keys() and all(output[k].equal(v) for k, v in state.items())


@pytest.mark.parametrize("metadata, flagged", [(None, False), ({"format": "pt"}, False), ({"format": "mlx"}, False),
                                               ({"source": "x"}, True), ({"format": "np"}, True)])
def test_safetensors_format_metadata(tmp_path: Path, metadata, flagged: bool) -> None:
    from safetensors.torch import load_file, save_file

    folder = copy_fixture(tmp_path, "llama-safetensors")
    save_file(load_file(folder / "model.safetensors"), folder / "model.safetensors", metadata=metadata)
    found = [f for f in validate(folder).findings if f.code == "HFC012"]
    assert bool(found) == flagged
    if flagged:
        assert found[0].file == "model.safetensors" and found[0].severity.value == "warning"


def test_adapter_beside_full_weights_is_not_a_second_format(tmp_path: Path) -> None:
    folder, _ = adapter_folder(tmp_path, "bin")
    for name in ("model.safetensors", "config.json"):
        shutil.copy(FIXTURES / "llama-safetensors" / name, folder / name)
    report = validate(folder)
    assert report.layout.format == "safetensors" and report.layout.shards == ("model.safetensors",)
    assert "HFC004" not in {f.code for f in report.findings}
    assert "HFC608" not in {f.code for f in report.findings}  # the full weights' shapes are checked
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    assert "HFC601" in {f.code for f in validate(folder).findings}


def test_torch_checkpoint_named_safetensors_is_an_error(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-bin")
    (folder / "pytorch_model.bin").rename(folder / "model.safetensors")
    [f] = [f for f in validate(folder).findings if f.severity.value == "error"]
    assert f.code == "HFC202" and f.file == "model.safetensors" and "rename it pytorch_model.bin" in f.message


@pytest.mark.parametrize("installed, severity", [("4.57.1", "error"), ("5.0.0", "warning"), (None, "warning")])
def test_safetensors_format_metadata_with_transformers_4_installed(tmp_path: Path, monkeypatch, installed,
                                                                   severity) -> None:
    """transformers 4.x's from_pretrained refuses a __metadata__ without format=pt/tf/flax/mlx: where
    it is the installed transformers, the folder does not load for this user."""
    from safetensors.torch import load_file, save_file

    from hfconv import environment

    monkeypatch.setattr(environment, "installed_transformers_version", lambda: installed)
    folder = copy_fixture(tmp_path, "llama-safetensors")
    save_file(load_file(folder / "model.safetensors"), folder / "model.safetensors", metadata={"source": "x"})
    [hit] = [f for f in validate(folder).findings if f.code == "HFC012"]
    assert hit.severity.value == severity
    if installed == "4.57.1":
        assert "the installed transformers 4.57.1 refuses to load it" in hit.message
