"""``hfconv load-test``: real loads of every fixture layout on cpu and on cpu+disk, corruption,
hostile input, plan errors, --forward, the CLI, and (where present) CUDA devices.

The loaded tensors are compared with what torch (``weights_only=True``: the fixtures are
trusted) and safetensors read from the same files.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import hfconv.tensor_bytes as tensor_bytes
from hfconv.cli import main
from hfconv.contents import read_contents
from hfconv.discovery import discover
from hfconv.load import checksum_bytes, checksum_tensor, executor, forward, load_test, transfer
from hfconv.load.checksum import checksum_torch
from hfconv.load.located import locate_tensor
from hfconv.render.load import render_load_text
from hfconv.validation import UsageError

from helpers import FIXTURES, LAYOUTS, copy_fixture, mixed_state, save_big_endian

SMALL_CPU = 70_000
RUN_ONLY_CPU = 40_000
"""Bytes: enough cpu to bring back one block (37 KB) to run it, too little to keep any: all on disk."""
"""Bytes: with this cpu limit (less room kept for the largest block) the fixtures put the embedding
on cpu, the rest on disk."""

NO_GPU = {f"cuda:{i}": 0 for i in range(torch.cuda.device_count())}
"""--max-memory that keeps the GPUs out, so the cpu tests plan the same on a GPU machine."""


def cpu_only(**limits) -> dict:
    return {**NO_GPU, **limits}


cuda = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
needs_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than 2 CUDA GPUs")


def source_state(folder: Path) -> dict[str, torch.Tensor]:
    """What transformers would load: safetensors first, else every .bin."""
    safe = sorted(folder.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for path in safe:
        state.update(load_file(path))
    if not safe:
        for path in sorted(folder.glob("*.bin")):
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    return state


def write_map(tmp_path: Path, mapping: dict) -> str:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(mapping))
    return str(path)


# --- the checksum ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 7, 8, 4095, 4096, 4097, 3 * 4096 + 13, 70_000])
def test_checksum_is_the_same_in_numpy_and_torch(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    expected = checksum_bytes(data)
    assert checksum_tensor(torch.from_numpy(data.copy())) == expected
    assert checksum_torch(torch.from_numpy(data.copy())) == expected  # the accelerator code, on cpu
    # unaligned source bytes (a bf16 tensor after an odd one in a safetensors file)
    padded = np.concatenate([np.zeros(3, np.uint8), data])
    assert checksum_bytes(padded[3:]) == expected
    assert checksum_tensor(torch.from_numpy(padded)[3:]) == expected
    assert checksum_torch(torch.from_numpy(padded)[3:]) == expected


def test_checksum_catches_flipped_bits_and_swapped_words() -> None:
    data = np.random.default_rng(0).integers(0, 256, 10 * 4096 + 100, dtype=np.uint8)
    base = checksum_bytes(data)
    for position in (0, 1, 4095, 4096, 5000, len(data) - 1):
        for bit in (0, 7):
            changed = data.copy()
            changed[position] ^= 1 << bit
            assert checksum_bytes(changed) != base, (position, bit)
    words = data[: 10 * 4096].view("<u8")
    for a, b in ((0, 1), (0, 512), (3, 515), (7, 2048 + 7), (100, 5000)):  # same row, same column, both differ
        swapped = data.copy()
        view = swapped[: 10 * 4096].view("<u8")
        view[a], view[b] = words[b], words[a]
        assert checksum_bytes(swapped) != base, (a, b)
    # a whole page moved: the zero page of a hole, pages out of order
    pages = data.copy()
    pages[4096:8192], pages[8192:12288] = data[8192:12288].copy(), data[4096:8192].copy()
    assert checksum_bytes(pages) != base


# --- real loads -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_loads_every_layout_on_cpu(layout: str) -> None:
    folder = FIXTURES / layout
    done: list[tuple[int, int]] = []
    result = load_test(folder, max_memory=cpu_only(), progress=lambda d, t: done.append((d, t)))
    assert result.ok, result.findings
    assert result.exit_code == 0 and result.findings == ()
    state = source_state(folder)
    assert result.tensors == len(state)
    assert [d.device for d in result.devices] == ["cpu"]
    unique = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state.values()}
    assert result.bytes == sum(unique.values())  # a tied storage is read once
    assert done[-1][0] == done[-1][1] == result.bytes
    cpu = result.devices[0]
    largest = max(t.numel() * t.element_size() for t in state.values())
    assert cpu.peak_bytes == largest  # one reused buffer, not the model
    assert result.plan.strategy == "auto" and set(result.plan.tensors.values()) == {"cpu"}
    assert {"validate", "plan", "load", "total"} <= set(result.phases)
    assert result.peak_rss and result.peak_anon and result.throughput


@pytest.mark.parametrize("layout", LAYOUTS)
def test_loads_every_layout_on_cpu_and_disk(layout: str, tmp_path: Path) -> None:
    offload = tmp_path / "offload"
    limit = SMALL_CPU // 2 if "bf16" in layout else SMALL_CPU
    result = load_test(FIXTURES / layout, max_memory=cpu_only(cpu=limit), offload_folder=offload)
    assert result.ok, result.findings
    devices = {d.device: d for d in result.devices}
    assert set(devices) == {"cpu", "disk"}
    assert devices["cpu"].bytes <= limit and devices["cpu"].peak_bytes <= limit
    assert result.plan.modules["model.embed_tokens"] == "cpu" and result.plan.modules["model.norm"] == "disk"
    assert result.tensors == len(source_state(FIXTURES / layout))
    bin_source = "bin" in layout
    assert ("offload folder" in devices["disk"].note) == bin_source
    assert not offload.exists()  # the offload files were removed, and the folder load-test made


def test_every_tensor_arrives_as_torch_and_safetensors_read_it() -> None:
    for layout in LAYOUTS:
        folder = FIXTURES / layout
        contents = read_contents(discover(folder))
        state = source_state(folder)
        for shard in contents.shards_of(contents.folder.loaded_set):
            weight_file = contents.weights[shard]
            size = os.path.getsize(folder / shard)
            with open(folder / shard, "rb") as handle:
                for meta in weight_file.tensors.values():
                    loc = locate_tensor(meta, weight_file, shard, size, meta.dtype)
                    flat, landed = transfer.to_device(handle.fileno(), loc, "cpu", transfer.Scratch())
                    assert landed == checksum_bytes(flat.numpy())
                    tensor = transfer.as_tensor(flat, loc)
                    expected = state[meta.name]
                    assert tensor.dtype == expected.dtype and tensor.shape == expected.shape
                    assert torch.equal(tensor.view(torch.uint8), expected.contiguous().view(torch.uint8)), meta.name


def test_strided_and_sliced_bin_views(tmp_path: Path) -> None:
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    state = {"model.embed_tokens.weight": base, "model.layers.0.mlp.w.weight": base.t(),
             "model.layers.0.mlp.v.weight": base[2:5, 1:7], "lm_head.weight": base[1]}
    folder = tmp_path / "views"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text('{"model_type": "hfconv-test"}')  # else validation fails (HFC009)
    for limits in (cpu_only(), cpu_only(cpu=300)):  # 300 bytes: room to run the largest block, not keep it
        result = load_test(folder, max_memory=limits, offload_folder=tmp_path / "off")
        assert result.ok, result.findings
        assert result.tensors == 4
    contents = read_contents(discover(folder))
    weight_file = contents.weights["pytorch_model.bin"]
    size = os.path.getsize(folder / "pytorch_model.bin")
    with open(folder / "pytorch_model.bin", "rb") as handle:
        for name, expected in state.items():
            loc = locate_tensor(weight_file.tensors[name], weight_file, "pytorch_model.bin", size, "F32")
            got = transfer.as_tensor(transfer.to_device(handle.fileno(), loc, "cpu", transfer.Scratch())[0], loc)
            assert torch.equal(got, expected), name


def test_big_endian_bin_loads_swapped(tmp_path: Path, monkeypatch) -> None:
    state = {name: tensor for name, tensor in mixed_state().items() if not tensor.is_complex()}
    folder = tmp_path / "be"
    folder.mkdir()
    save_big_endian(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text('{"model_type": "hfconv-test"}')  # else validation fails (HFC009)
    loaded: dict[str, torch.Tensor] = {}
    check = executor.check_loaded

    def capture(tensor, flat, loc, device):
        loaded[loc.name] = tensor.clone()
        return check(tensor, flat, loc, device)

    monkeypatch.setattr(executor, "check_loaded", capture)
    result = load_test(folder, max_memory=cpu_only())
    assert result.ok, result.findings
    assert set(loaded) == set(state) - {"lm_head.weight"}  # the alias shares the embedding's load
    for name, tensor in loaded.items():
        assert torch.equal(tensor, state[name]), name
    # offloaded to disk: the offload files hold the little-endian bytes accelerate expects
    offload = tmp_path / "off"
    result = load_test(folder, max_memory=cpu_only(cpu=400), offload_folder=offload)
    assert {d.device for d in result.devices} == {"disk"}
    assert result.ok, result.findings
    import hashlib
    for name, tensor in state.items():
        target = offload / (hashlib.sha256(f"pytorch_model.bin\0{name}".encode()).hexdigest() + ".dat")
        if target.exists():
            assert target.read_bytes() == tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), name


def test_all_on_disk_and_not_kept(tmp_path: Path) -> None:
    result = load_test(FIXTURES / "llama-bin-sharded", max_memory=cpu_only(cpu=RUN_ONLY_CPU),
                       offload_folder=tmp_path / "o")
    assert result.ok and [d.device for d in result.devices] == ["disk"]
    assert result.devices[0].peak_bytes == result.bytes


def test_dtype_cast_on_load() -> None:
    result = load_test(FIXTURES / "llama-safetensors", max_memory=cpu_only(), dtype="bfloat16")
    assert result.ok and result.dtype == "bfloat16"
    cpu = result.devices[0]
    assert cpu.bytes == 125_568 and cpu.planned_bytes == 125_568 // 2
    assert cpu.peak_bytes == 200 * 32 * 2  # the largest tensor (the embedding), cast
    with pytest.raises(UsageError, match="^dtype must be one of"):  # the CLI writes --dtype
        load_test(FIXTURES / "llama-safetensors", dtype="int8")


# --- corruption and hostile input ------------------------------------------------------------------

def test_bytes_corrupted_on_the_way_to_the_device_are_caught(monkeypatch) -> None:
    from hfconv.readers import read_weight_file

    victim = "model.layers.1.mlp.up_proj.weight"
    shard = FIXTURES / "llama-safetensors-sharded" / "model-00002-of-00003.safetensors"
    begin = read_weight_file(shard).tensors[victim].data_offsets[0]
    real = transfer.read_exact

    def flaky(fd, buffer, offset):  # a bit flips as the bytes arrive
        real(fd, buffer, offset)
        if offset == begin:
            buffer[1234] ^= 0x10

    monkeypatch.setattr(transfer, "read_exact", flaky)
    result = load_test(FIXTURES / "llama-safetensors-sharded", max_memory=cpu_only())
    assert not result.ok and result.exit_code == 1
    assert result.codes() == ["HFC734"]
    (mismatch,) = result.findings
    assert mismatch.tensor == victim and mismatch.file == shard.name
    assert "differ from the source" in mismatch.message and "cpu" in mismatch.message


def test_corrupted_offload_file_is_caught(monkeypatch, tmp_path: Path) -> None:
    real = tensor_bytes.copy_range

    def bad_copy(src, dst, offset, count):
        real(src, dst, offset, count)
        os.pwrite(dst, b"\x00\x01", count // 2)

    monkeypatch.setattr(tensor_bytes, "copy_range", bad_copy)
    result = load_test(FIXTURES / "llama-bin", max_memory=cpu_only(cpu=RUN_ONLY_CPU), offload_folder=tmp_path / "o")
    assert not result.ok
    mismatches = [f for f in result.findings if f.code == "HFC734"]
    assert len(mismatches) == 20 and all("on disk" in f.message for f in mismatches)
    # every tensor is bad: the run stops after 20 rather than listing hundreds
    assert result.findings[-1].code == "HFC735" and "stopped after 20" in result.findings[-1].message


def test_a_failing_transfer_is_a_finding_and_the_run_goes_on(monkeypatch) -> None:
    real = transfer.to_device

    def failing(fd, loc, *rest):
        if loc.name == "model.norm.weight":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(fd, loc, *rest)

    monkeypatch.setattr(transfer, "to_device", failing)
    result = load_test(FIXTURES / "llama-bin")
    assert result.codes() == ["HFC735"] and result.findings[0].tensor == "model.norm.weight"
    assert "out of memory" in result.findings[0].message
    assert result.tensors == 20


def test_hostile_bin_is_refused_before_torch_sees_it(monkeypatch, tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    folder = copy_fixture(tmp_path, "llama-bin")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": Evil()}, protocol=2))

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must never see an untrusted pickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(transfer, "to_device", forbidden)
    result = load_test(folder, forward=True)
    assert not result.ok and result.exit_code == 1
    assert result.codes()[0] == "HFC730" and "HFC201" in result.codes()
    assert "HFC201" in result.findings[0].message
    assert result.plan is None and result.devices == ()
    assert not (tmp_path / "pwned").exists()


# --- plan errors and map files -----------------------------------------------------------------------

def test_map_file_with_prefixes_meta_and_an_unused_key(tmp_path: Path) -> None:
    path = write_map(tmp_path, {"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu",
                                "lm_head": "meta", "model.layer.9": "cpu"})
    result = load_test(FIXTURES / "llama-bin-sharded", device_map=path, offload_folder=tmp_path / "o")
    assert result.ok, result.findings
    assert sorted(result.codes()) == ["HFC738", "HFC739"]
    assert result.plan.strategy == "file" and result.plan.tensors["lm_head.weight"] == "meta"
    devices = {d.device: d.tensors for d in result.devices}
    assert devices == {"cpu": 2, "disk": 18}  # lm_head is on meta: not loaded


@pytest.mark.parametrize("mapping, code", [
    ({"model": "cpu"}, "HFC731"),  # lm_head unassigned
    ({"": "cuda:7"}, "HFC732"),
])
def test_map_errors_before_anything_loads(mapping: dict, code: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(transfer, "to_device", lambda *a: pytest.fail("loaded despite a plan error"))
    result = load_test(FIXTURES / "llama-safetensors", device_map=write_map(tmp_path, mapping))
    assert result.codes() == [code] and result.exit_code == 1


def test_limits_that_cannot_be_met(tmp_path: Path) -> None:
    result = load_test(FIXTURES / "llama-bin", max_memory=cpu_only(cpu="50KB", disk="50KB"),
                       offload_folder=tmp_path / "o")
    assert result.codes() == ["HFC733"] and "125.6 KB" in result.findings[0].message
    mapped = load_test(FIXTURES / "llama-bin", device_map=write_map(tmp_path, {"": "cpu"}),
                       max_memory={"cpu": "100KB"})
    assert mapped.codes() == ["HFC733"] and "cpu" in mapped.findings[0].message
    missing = load_test(FIXTURES / "llama-bin", max_memory={"cuda:99": "1GB"})
    assert missing.codes() == ["HFC732"] and "cuda:99" in missing.findings[0].message
    balanced = load_test(FIXTURES / "llama-bin", device_map="balanced", max_memory=cpu_only(cpu="100KB"))
    assert balanced.codes() == ["HFC733"] and "device_map='auto'" in balanced.findings[0].message


def test_offloaded_blocks_the_cpu_cannot_run_are_refused_before_reading(monkeypatch) -> None:
    monkeypatch.setattr(transfer, "pread_full", lambda *a: pytest.fail("read despite a plan error"))
    result = load_test(FIXTURES / "llama-safetensors", max_memory=cpu_only(cpu="1KB"))
    assert result.codes() == ["HFC733"] and "brought back to cpu" in result.findings[0].message
    assert result.devices == () and result.plan is None


@pytest.mark.parametrize("device_map, max_memory, words", [
    ("nope.json", None, "not found"),
    ("BADJSON", None, "not valid JSON"),
    ("auto", {"cpu": "lots"}, "invalid size"),
    ("auto", {"mps": "1GB"}, "invalid device"),
])
def test_usage_errors(device_map: str, max_memory, words: str, tmp_path: Path) -> None:
    if device_map == "BADJSON":
        device_map = str(tmp_path / "bad.json")
        Path(device_map).write_text("{not json")
    with pytest.raises(UsageError, match=words):
        load_test(FIXTURES / "llama-bin", device_map=device_map, max_memory=max_memory)
    with pytest.raises(UsageError, match="not a folder"):
        load_test(FIXTURES / "llama-bin" / "config.json")


def test_library_names_arguments_and_the_cli_names_flags(tmp_path: Path) -> None:
    """A bad option is an OptionError naming the argument (``offload_folder``, ``device_map``,
    ``max_memory``); the CLI turns it into the same message with the flag (exit 2)."""
    from hfconv.errors import OptionError

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [({"offload_folder": blocker / "sub"}, ["--offload-folder", str(blocker / "sub")]),
             ({"device_map": str(tmp_path / "nope.json")}, ["--device-map", str(tmp_path / "nope.json")])]
    for kwargs, flags in cases:
        with pytest.raises(OptionError) as raised:
            load_test(FIXTURES / "llama-bin", max_memory=cpu_only(), **kwargs)
        option = next(iter(kwargs))
        assert raised.value.option == option and str(raised.value).startswith(option)
        assert "--" not in str(raised.value), str(raised.value)
        run = _console("load-test", str(FIXTURES / "llama-bin"), *flags, cwd=tmp_path)
        assert run.returncode == 2, run.stdout + run.stderr
        assert f"Error: {flags[0]}{raised.value.detail}" in run.stderr, run.stderr
    with pytest.raises(OptionError, match="^max_memory names cpu twice"):
        load_test(FIXTURES / "llama-bin", max_memory={"cpu": "1GB", "CPU": "2GB"})


# --- --forward ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, limits", [("llama-safetensors", None), ("llama-tied-bin", {"cpu": SMALL_CPU}),
                                            ("llama-tied-safetensors", None)])
def test_forward_on_the_same_map(layout: str, limits, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    result = load_test(FIXTURES / layout, max_memory=limits, forward=True, offload_folder=tmp_path / "o")
    assert result.ok, result.findings
    fwd = result.forward
    assert fwd is not None and fwd.finite and fwd.output == "logits"
    assert fwd.shape == (1, fwd.tokens, 200) and fwd.tokens >= 3
    assert fwd.model_class == "LlamaForCausalLM" and "forward" in result.phases
    assert "logits [1, " in render_load_text(result)


def test_forward_skipped_without_transformers(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name.split(".")[0] in ("transformers", "accelerate"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    result = load_test(FIXTURES / "llama-safetensors", forward=True)
    assert result.ok and result.forward is None
    assert result.codes() == ["HFC740"] and result.findings[0].severity.value == "info"
    assert "not installed" in result.findings[0].message


def test_forward_failure_and_non_finite_logits(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    folder = copy_fixture(tmp_path, "llama-safetensors")
    state = load_file(folder / "model.safetensors")
    state["model.norm.weight"] = torch.full_like(state["model.norm.weight"], float("nan"))
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    result = load_test(folder, forward=True)
    assert result.codes() == ["HFC742"] and not result.forward.finite
    assert "NaN or infinite" in result.findings[0].message

    def broken(*args, **kwargs):
        raise RuntimeError("size mismatch for model.norm.weight")

    monkeypatch.setattr(forward, "build_model", broken)
    failed = load_test(FIXTURES / "llama-safetensors", forward=True)
    assert failed.codes() == ["HFC741"] and "size mismatch" in failed.findings[0].message


# --- the CLI ----------------------------------------------------------------------------------------

def run(*args: str):
    return CliRunner().invoke(main, ["load-test", *args], catch_exceptions=False)


def test_cli_text_and_json(tmp_path: Path) -> None:
    no_gpu = [arg for device in NO_GPU for arg in ("--max-memory", f"{device}=0")]
    result = run(str(FIXTURES / "llama-bin-sharded"), "--max-memory", f"cpu={SMALL_CPU}", "--offload-folder",
                 str(tmp_path / "o"), "--quiet", *no_gpu)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"load-test {FIXTURES / 'llama-bin-sharded'}: OK, 21 tensors")
    assert "model.layers.0-1    disk" in result.stdout and "peak RSS" in result.stdout
    out = tmp_path / "load.json"
    result = run(str(FIXTURES / "llama-safetensors"), "--format", "json", "-o", str(out), *no_gpu)
    assert result.exit_code == 0 and result.stdout == ""
    document = json.loads(out.read_text())
    assert document["ok"] is True and document["summary"]["tensors"] == 21
    assert document["devices"][0]["device"] == "cpu" and document["plan"]["modules"]["lm_head"] == "cpu"
    assert set(document["summary"]["seconds"]) >= {"validate", "plan", "load", "total"}


def test_cli_exit_codes(tmp_path: Path) -> None:
    assert run(str(tmp_path / "missing")).exit_code == 2
    assert run(str(FIXTURES / "llama-bin"), "--device-map", str(tmp_path / "nope.json")).exit_code == 2
    assert run(str(FIXTURES / "llama-bin"), "--max-memory", "cpu1GB").exit_code == 2
    assert run(str(FIXTURES / "llama-bin"), "--max-memory", "gpu=1GB").exit_code == 2
    assert run(str(FIXTURES / "llama-bin"), "--max-memory", "cpu=1Gb").exit_code == 2
    bad_map = write_map(tmp_path, {"": "cuda:9"})
    failed = run(str(FIXTURES / "llama-bin"), "--device-map", bad_map, "--format", "json")
    assert failed.exit_code == 1 and json.loads(failed.stdout)["findings"][0]["code"] == "HFC732"
    folder = copy_fixture(tmp_path, "llama-bin")
    (folder / "pytorch_model.bin").write_bytes(b"<html>not a checkpoint</html>")
    refused = run(str(folder))
    assert refused.exit_code == 1 and "HFC730" in refused.output and "HFC202" in refused.output


def test_cli_help_has_examples() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "hfconv load-test ./my-model --device-map balanced" in result.output
    assert "Exit code" in result.output


def test_cli_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, hfconv.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- CUDA ---------------------------------------------------------------------------------------------

@cuda
@needs_gpu
@pytest.mark.parametrize("layout", ["llama-safetensors-sharded", "llama-bin", "llama-tied-bin"])
def test_loads_onto_one_gpu(layout: str) -> None:
    result = load_test(FIXTURES / layout, device_map="auto")
    assert result.ok, result.findings
    (gpu,) = result.devices
    assert gpu.device == "cuda:0" and gpu.peak_bytes >= result.bytes
    mapped = load_test(FIXTURES / layout, device_map={"model.layers": 0, "": "cpu"})
    assert mapped.ok and {d.device for d in mapped.devices} == {"cuda:0", "cpu"}
    loose = load_test(FIXTURES / layout, device_map={"": 0}, keep=False)  # each tensor freed once verified
    assert loose.ok and loose.devices[0].peak_bytes < loose.bytes


@cuda
@needs_gpu
def test_corruption_on_the_gpu_is_caught(monkeypatch) -> None:
    real = transfer.to_device

    def flaky(fd, loc, *rest):
        flat, landed = real(fd, loc, *rest)
        if loc.name == "model.embed_tokens.weight":
            assert flat.is_cuda and landed is None  # summed on the GPU, after the transfer
            flat[77] += 1
        return flat, landed

    monkeypatch.setattr(transfer, "to_device", flaky)
    result = load_test(FIXTURES / "llama-safetensors", device_map={"": 0})
    assert result.codes() == ["HFC734"] and "cuda:0" in result.findings[0].message


@cuda
@needs_gpu
def test_forward_on_the_gpu() -> None:
    pytest.importorskip("transformers")
    result = load_test(FIXTURES / "llama-safetensors", forward=True, dtype="bfloat16")
    assert result.ok, result.findings
    assert result.forward.finite and result.plan.devices == ("cuda:0",)


@cuda
@needs_gpus
def test_balanced_over_several_gpus() -> None:
    result = load_test(FIXTURES / "llama-safetensors", device_map="balanced")
    assert result.ok, result.findings
    assert len([d for d in result.devices if d.device.startswith("cuda:")]) >= 2
    assert all(d.peak_bytes > 0 for d in result.devices)


# --- the console script -------------------------------------------------------------------------

def _console(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``hfconv ...`` as the installed console script runs it (hfconv.cli:run), output piped."""
    import sys

    return subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_console_script_exit_keeps_reports_and_exit_codes(tmp_path: Path) -> None:
    """The console script leaves without torch's teardown once torch is loaded: the piped
    report, the --output file and the exit code must all still arrive whole."""
    good = _console("load-test", str(FIXTURES / "llama-safetensors-sharded"), "--quiet", "--format", "json",
                    cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["summary"]["errors"] == 0

    broken = copy_fixture(tmp_path, "llama-safetensors")
    shard = broken / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8])  # truncated: validation refuses it
    report = tmp_path / "report.json"
    bad = _console("load-test", str(broken), "--quiet", "--format", "json", "--output", str(report), cwd=tmp_path)
    assert bad.returncode == 1, bad.stderr
    assert bad.stdout == ""
    assert json.loads(report.read_text())["summary"]["errors"] >= 1

    usage = _console("load-test", str(tmp_path / "missing"), cwd=tmp_path)
    assert usage.returncode == 2
    assert "does not exist" in usage.stderr
