"""``hfconv convert``: round trips checked bitwise with the real libraries, and the safety rules.

Sources are loaded with torch (``weights_only=True``: the fixtures and the files built here
are trusted) or safetensors; outputs with safetensors. Tensors are compared as raw bytes
(``view(torch.uint8)``), so NaN payloads and -0.0 count, unlike ``torch.equal``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import hfconv.conversion as conversion
import hfconv.conversion.write as conversion_write
from hfconv.cli import main
from hfconv.conversion import (
    ConversionError,
    DestinationExistsError,
    InputRefused,
    VerificationError,
    convert,
)
from hfconv.conversion.verify import check_header
from hfconv.tensor_bytes import copy_methods, reset_copy_methods
from hfconv.validation import UsageError, validate

from helpers import FIXTURES, LAYOUTS, mixed_state, save_big_endian

WEIGHT_SUFFIXES = (".bin", ".safetensors")


# --- helpers ----------------------------------------------------------------------------------

def raw(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes in row-major order (bitwise comparison)."""
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, name: str = "") -> None:
    assert a.dtype == b.dtype, name
    assert tuple(a.shape) == tuple(b.shape), name
    assert torch.equal(raw(a), raw(b)), f"{name}: bytes differ"


def load_source(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict as transformers would read it (safetensors preferred)."""
    names = sorted(p.name for p in folder.iterdir())
    safe = [n for n in names if n.endswith(".safetensors")]
    state: dict[str, torch.Tensor] = {}
    if safe:
        for name in safe:
            state.update(load_file(folder / name))
        return state
    for name in names:
        if name.endswith(".bin") and name != "training_args.bin":
            state.update(torch.load(folder / name, map_location="cpu", weights_only=True))
    return state


def load_output(folder: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(path))
    return state


def model_folder(tmp_path: Path, state: dict[str, torch.Tensor], *, name: str = "src", config: dict | None = None,
                 file: str = "pytorch_model.bin") -> Path:
    """A .bin model folder with ``config`` and ``state``.

    The default config names a model type no one knows, so that validate checks only the
    generic fields: ``state`` is any tensors, and convert requires an output that validates.
    """
    folder = tmp_path / name
    folder.mkdir()
    cfg = config if config is not None else {"model_type": "hfconv-test"}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    torch.save(state, folder / file)
    return folder


def no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".hfconv-")]


def check_output_folder(src: Path, dst: Path, result) -> None:
    """Index, file copies and validation of a converted folder."""
    shards = sorted(p.name for p in dst.glob("*.safetensors"))
    assert shards == sorted(s.name for s in result.shards)
    written = {}
    for shard in shards:
        with safe_open(dst / shard, "pt") as handle:
            for key in handle.keys():
                written[key] = shard
            meta = handle.metadata()
        assert meta["format"] == "pt"
        if result.dropped_aliases:
            assert json.loads(meta["hfconv_dropped_aliases"]) == dict(result.dropped_aliases)
    if len(shards) > 1:
        index = json.loads((dst / "model.safetensors.index.json").read_text())
        assert index["weight_map"] == written
        total = sum(t.numel() * t.element_size() for t in load_output(dst).values())
        assert index["metadata"]["total_size"] == total == result.bytes
    else:
        assert shards == ["model.safetensors"]
        assert not (dst / "model.safetensors.index.json").exists()
    assert not any(alias in written for alias in result.dropped_aliases)
    assert not (dst / "pytorch_model.bin.index.json").exists()
    for path in src.iterdir():
        if path.name.endswith(WEIGHT_SUFFIXES) or path.name.endswith(".index.json"):
            continue
        if path.name == "config.json" and result.dtype != "keep":
            continue
        assert (dst / path.name).read_bytes() == path.read_bytes(), path.name
    report = validate(dst)
    assert report.ok, [f.message for f in report.findings]


# --- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("max_shard_size", ["5GB", "40KB"])
def test_round_trip_every_fixture(tmp_path, layout, max_shard_size):
    src = FIXTURES / layout
    dst = tmp_path / "out"
    result = convert(src, dst, max_shard_size=max_shard_size)
    assert result.verified and result.validation is not None
    source, output = load_source(src), load_output(dst)
    expected = {k: v for k, v in source.items() if k not in result.dropped_aliases}
    assert set(output) == set(expected)
    for name, tensor in expected.items():
        assert_same_bits(output[name], tensor, name)
    assert result.tensors == len(output)
    assert len(result.shards) == (1 if max_shard_size == "5GB" else len(list(dst.glob("model-*.safetensors"))))
    if max_shard_size == "40KB":
        assert len(result.shards) > 1
    check_output_folder(src, dst, result)
    no_leftovers(tmp_path)


def test_tied_bin_drops_lm_head_and_says_so(tmp_path):
    result = convert(FIXTURES / "llama-tied-bin", tmp_path / "out")
    assert dict(result.dropped_aliases) == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "HFC702" in [f.code for f in result.findings]
    output = load_output(tmp_path / "out")
    assert "lm_head.weight" not in output and "model.embed_tokens.weight" in output


def test_untied_alias_is_copied(tmp_path):
    weight = torch.randn(8, 4)
    config = {"model_type": "hfconv-test", "tie_word_embeddings": False}
    src = model_folder(tmp_path, {"model.embed_tokens.weight": weight, "lm_head.weight": weight,
                                  "first_half": weight[:4], "cols": weight[:, 1]}, config=config)
    result = convert(src, tmp_path / "out")
    assert set(result.copied_aliases) == {"lm_head.weight", "first_half", "cols"}
    assert not result.dropped_aliases
    assert [f.code for f in result.findings].count("HFC703") == 3
    output = load_output(tmp_path / "out")
    for name, tensor in load_source(src).items():
        assert_same_bits(output[name], tensor, name)


def test_noncontiguous_offset_and_expanded_views(tmp_path):
    big = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    halves = torch.randn(2, 3, 4, dtype=torch.float16)
    state = {
        "transposed": torch.randn(5, 7).T,                        # non-contiguous
        "offset_row": big[2],                                      # storage offset 20
        "offset_block": big[1:4, 2:5],                             # offset and strides
        "expanded": torch.arange(3, dtype=torch.int64).expand(4, 3),  # stride 0
        "permuted_f16": halves.permute(2, 0, 1),
        "bools": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 3),
    }
    src = model_folder(tmp_path, state)
    result = convert(src, tmp_path / "out", max_shard_size="100B")
    output = load_output(tmp_path / "out")
    for name, tensor in state.items():
        assert_same_bits(output[name], tensor, name)
    assert result.tensors == len(state)


@pytest.mark.parametrize("dtype", ["keep", "bfloat16"])
def test_big_endian_bin_is_written_little_endian(tmp_path, dtype):
    state = mixed_state()
    config = {"model_type": "hfconv-test", "tie_word_embeddings": True}
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(config))
    save_big_endian(state, src / "pytorch_model.bin")
    report = validate(src)
    assert "HFC212" in {f.code for f in report.findings}
    assert not [f for f in report.findings if f.severity == "error" and f.code.startswith("HFC2")]
    manifest = tmp_path / "manifest.json"
    result = convert(src, tmp_path / "out", max_shard_size="200B", dtype=dtype, manifest=manifest)
    assert result.dropped_aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    output = load_output(tmp_path / "out")
    assert set(output) == set(state) - {"lm_head.weight"}
    for name, tensor in output.items():
        expected = state[name]
        if dtype != "keep" and expected.is_floating_point():
            expected = expected.to(torch.bfloat16)
        assert_same_bits(tensor, expected, name)
    # the manifest's digests are of the little-endian bytes, on both sides
    assert not validate(tmp_path / "out", manifest=manifest, select=["HFC72"]).findings
    if dtype == "keep":
        # same digests, and the source's tied alias checked against its target's entry
        assert not validate(src, manifest=manifest, select=["HFC72"]).findings


def test_tensor_larger_than_shard_limit_gets_its_own_shard(tmp_path):
    state = {"a": torch.randn(10), "big": torch.randn(1000), "b": torch.randn(10), "c": torch.randn(10)}
    src = model_folder(tmp_path, state)
    result = convert(src, tmp_path / "out", max_shard_size="1KB")
    names = [s.name for s in result.shards]
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    layout = [sorted(load_file(tmp_path / "out" / n)) for n in names]
    assert layout == [["a"], ["big"], ["b", "c"]]
    assert result.shards[1].bytes > 1000


def test_nan_payloads_and_signed_zero_survive(tmp_path):
    bits = torch.tensor([0x7FC00000, 0x7FC00001, 0xFFC12345, 0x80000000, 0x7F800000], dtype=torch.int64)
    weird = bits.to(torch.int32).view(torch.float32)
    src = model_folder(tmp_path, {"weird": weird})
    convert(src, tmp_path / "out")
    assert_same_bits(load_output(tmp_path / "out")["weird"], weird)


def test_bf16_source_and_shards_without_index(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "llama-bin-sharded", src)
    (src / "pytorch_model.bin.index.json").unlink()
    result = convert(src, tmp_path / "out", max_shard_size="60KB")
    source = load_source(src)
    output = load_output(tmp_path / "out")
    assert set(source) == set(output)
    for name, tensor in source.items():
        assert_same_bits(output[name], tensor, name)
    assert result.is_sharded
    bf16 = convert(FIXTURES / "llama-bf16-safetensors", tmp_path / "bf16")
    out16 = load_output(tmp_path / "bf16")
    assert all(t.dtype == torch.bfloat16 for t in out16.values()) and bf16.cast == 0


# --- dtype casts ------------------------------------------------------------------------------

@pytest.mark.parametrize(("layout", "target"), [
    ("llama-bin", "bfloat16"),
    ("llama-legacy-bin", "float16"),          # unaligned legacy storages
    ("llama-bf16-safetensors", "float32"),
    ("llama-safetensors-sharded", "bfloat16"),
])
def test_dtype_cast(tmp_path, layout, target):
    dst = tmp_path / "out"
    result = convert(FIXTURES / layout, dst, dtype=target, max_shard_size="30KB")
    wanted = getattr(torch, target)
    output = load_output(dst)
    for name, tensor in load_source(FIXTURES / layout).items():
        assert_same_bits(output[name], tensor.to(wanted), name)
    config = json.loads((dst / "config.json").read_text())
    assert config["torch_dtype"] == target
    source_config = json.loads((FIXTURES / layout / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "torch_dtype"} == \
        {k: v for k, v in source_config.items() if k != "torch_dtype"}
    assert result.cast == sum(1 for t in load_source(FIXTURES / layout).values() if t.dtype != wanted)
    check_output_folder(FIXTURES / layout, dst, result)


def test_cast_leaves_integers_and_noncontiguous_floats_right(tmp_path):
    config = {"model_type": "hfconv-test", "dtype": "float32"}
    state = {"w": torch.randn(6, 5).T, "ids": torch.arange(7, dtype=torch.int64),
             "mask": torch.ones(3, dtype=torch.bool), "d": torch.randn(4, dtype=torch.float64)}
    src = model_folder(tmp_path, state, config=config)
    result = convert(src, tmp_path / "out", dtype="float16")
    output = load_output(tmp_path / "out")
    assert_same_bits(output["w"], state["w"].to(torch.float16))
    assert_same_bits(output["d"], state["d"].to(torch.float16))
    assert_same_bits(output["ids"], state["ids"])
    assert_same_bits(output["mask"], state["mask"])
    assert result.cast == 2
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["dtype"] == "float16" and "torch_dtype" not in cfg  # the key the config uses, none added


# --- safety -----------------------------------------------------------------------------------

class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_bin_refused_and_never_executed(tmp_path):
    sentinel = tmp_path / "pwned"
    src = model_folder(tmp_path, {"w": torch.zeros(2), "x": _Evil(str(sentinel))})
    assert not sentinel.exists()  # torch.save pickled the call without making it
    dst = tmp_path / "out"
    with pytest.raises(InputRefused) as info:
        convert(src, dst)
    assert info.value.code == "HFC704"
    assert "HFC201" in [f.code for f in info.value.findings]
    assert not sentinel.exists() and not dst.exists()
    no_leftovers(tmp_path)
    runner = CliRunner()
    outcome = runner.invoke(main, ["convert", str(src), str(dst), "--format", "json"], catch_exceptions=False)
    assert outcome.exit_code == 1
    document = json.loads(outcome.stdout)
    assert document["ok"] is False and "HFC201" in [f["code"] for f in document["findings"]]
    assert not sentinel.exists() and not dst.exists()
    # The payload is live: an unrestricted torch.load runs it (this is what hfconv never does).
    torch.load(src / "pytorch_model.bin", weights_only=False)
    assert sentinel.exists()


def test_crash_mid_write_leaves_no_dst(tmp_path, monkeypatch):
    src = FIXTURES / "llama-bin-sharded"
    dst = tmp_path / "out"
    calls = {"n": 0}
    original = conversion_write.write_tensor

    def crashing(fd, tensor, sources, progress):
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError(28, "No space left on device")
        return original(fd, tensor, sources, progress)

    monkeypatch.setattr(conversion_write, "write_tensor", crashing)
    with pytest.raises(conversion.ConversionError) as failed:
        convert(src, dst, max_shard_size="30KB")
    assert failed.value.code == "HFC714"
    assert failed.value.message.startswith("no space left on device writing model-000")
    assert calls["n"] == 7
    assert not dst.exists()
    no_leftovers(tmp_path)


@pytest.mark.parametrize("durable", [False, True])
def test_fsync_flushes_every_file_and_folder_only_when_asked(tmp_path, monkeypatch, durable):
    """--fsync: every shard, copied file, index, manifest and folder is fsynced before the
    rename; without it nothing is (the kernel writes back later, as for cp -r)."""
    synced: list[str] = []
    original = os.fsync

    def recording(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return original(fd)

    monkeypatch.setattr(os, "fsync", recording)
    dst = tmp_path / "out"
    result = convert(FIXTURES / "llama-bin-sharded", dst, max_shard_size="30KB", fsync=durable,
                     manifest=tmp_path / "m.json")
    assert result.durable is durable and result.to_json()["durable"] is durable
    if not durable:
        assert synced == []
        return
    names = {Path(p).name for p in synced}
    assert {s.name for s in result.shards} <= names
    assert {"config.json", "model.safetensors.index.json"} <= names
    assert any(n.startswith(".hfconv-manifest-") for n in names)
    assert synced.count(str(tmp_path)) == 2  # after the renames: DST's parent, the manifest's folder
    # everything else was flushed inside the temporary folder (or the manifest's temp file),
    # that is before the rename made DST visible
    assert all("/.hfconv-" in p for p in synced if p != str(tmp_path))


def test_interrupt_during_verification_leaves_no_dst(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(conversion, "validate_output", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(FIXTURES / "llama-bin", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    no_leftovers(tmp_path)


def test_corrupted_write_is_caught_by_verification(tmp_path, monkeypatch):
    original = conversion_write.copy_range

    def flipping(src_fd, dst_fd, offset, count, progress):
        original(src_fd, dst_fd, offset, count, progress)
        if count > 1000:  # a tensor, not a small file copy: overwrite its last byte
            position = os.lseek(dst_fd, 0, os.SEEK_CUR)
            last = os.pread(src_fd, 1, offset + count - 1)
            os.pwrite(dst_fd, bytes([last[0] ^ 0xFF]), position - 1)

    monkeypatch.setattr(conversion_write, "copy_range", flipping)
    with pytest.raises(VerificationError) as info:
        convert(FIXTURES / "llama-bin", tmp_path / "out")
    assert info.value.code == "HFC701"
    assert all(f.code == "HFC701" and f.tensor for f in info.value.findings)
    assert not (tmp_path / "out").exists()
    no_leftovers(tmp_path)
    # --no-verify trusts the writer: the same corruption goes through, as documented.
    result = convert(FIXTURES / "llama-bin", tmp_path / "unverified", verify=False)
    assert not result.verified and result.validation is None


def test_copy_paths_give_identical_output(tmp_path, monkeypatch, request):
    """Page-aligned copies go kernel-side (copy_file_range, else sendfile); others through pread."""
    src = FIXTURES / "llama-safetensors"  # one source file: the header padding puts every tensor in phase
    calls = {"copy_file_range": 0}
    real_copy_file_range = os.copy_file_range

    def counting(*args):
        calls["copy_file_range"] += 1
        return real_copy_file_range(*args)

    monkeypatch.setattr(os, "copy_file_range", counting)
    convert(src, tmp_path / "native")
    assert calls["copy_file_range"] >= 21  # every tensor, plus the copied small files

    def unsupported(*args, **kwargs):
        raise OSError(38, "Function not implemented")

    reset_copy_methods()
    request.addfinalizer(reset_copy_methods)
    monkeypatch.setattr(os, "copy_file_range", unsupported)
    convert(src, tmp_path / "sendfile")
    assert copy_methods() == ("sendfile", "pread")
    monkeypatch.setattr(os, "sendfile", unsupported)
    convert(src, tmp_path / "pread")
    assert copy_methods() == ("pread",)
    reference = (tmp_path / "native" / "model.safetensors").read_bytes()
    for name in ("sendfile", "pread"):
        assert (tmp_path / name / "model.safetensors").read_bytes() == reference
    header = int.from_bytes(reference[:8], "little")
    original = (src / "model.safetensors").read_bytes()
    first_tensor = min(json.loads(original[8:8 + int.from_bytes(original[:8], "little")]).items(),
                       key=lambda kv: kv[1]["data_offsets"][0] if kv[0] != "__metadata__" else 1 << 60)
    assert (8 + header) % 4096 == (8 + int.from_bytes(original[:8], "little")
                                  + first_tensor[1]["data_offsets"][0]) % 4096


def test_written_header_is_checked(tmp_path):
    """The header check compares what the strict reader parses with the plan."""
    from hfconv.contents import read_contents
    from hfconv.discovery import discover

    plan = conversion.plan_conversion(read_contents(discover(FIXTURES / "llama-bin")), 10**9)
    task = conversion_write.ShardTask(plan.shards[0], str(tmp_path / "model.safetensors"), True, False)
    save_file({"w": torch.zeros(3)}, task.path)
    assert check_header(task)[0][1].endswith("does not describe the planned tensors and metadata")
    (tmp_path / "model.safetensors").write_bytes(b"garbage!")
    assert "does not parse" in check_header(task)[0][1]


def test_errors_survive_the_trip_from_a_worker_process():
    import pickle

    error = VerificationError("HFC701", "w: output bytes differ", ())
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is VerificationError and copy.code == "HFC701" and copy.message == error.message
    assert [f.code for f in copy.findings] == ["HFC701"]


def test_dst_exists_and_force(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    (dst / "model.safetensors").write_bytes(b"an earlier output")  # a folder convert could have written
    with pytest.raises(DestinationExistsError):
        convert(FIXTURES / "llama-bin", dst)
    assert (dst / "keep.txt").read_text() == "old"
    convert(FIXTURES / "llama-bin", dst, force=True)
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").exists()
    no_leftovers(tmp_path)


def test_option_errors_name_the_argument_not_the_flag(tmp_path):
    """The library names its keyword argument (OptionError.option); the CLI writes the flag."""
    from hfconv.errors import OptionError

    src = FIXTURES / "llama-bin"
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    cases = [
        (dict(jobs=0), "jobs", "jobs must be at least 1"),
        (dict(max_shard_size="lots"), "max_shard_size", "max_shard_size: "),
        (dict(dtype="int4"), "dtype", "dtype must be one of keep, float32, float16, bfloat16"),
        (dict(manifest=tmp_path / "out" / "config.json"), "manifest", "would overwrite config.json in DST"),
    ]
    for kwargs, option, text in cases:
        with pytest.raises(OptionError) as info:
            convert(src, tmp_path / "out", **kwargs)
        assert info.value.option == option and text in str(info.value) and "--" not in str(info.value), kwargs
    with pytest.raises(OptionError) as info:
        convert(src, taken, force=True)
    assert info.value.option == "force" and str(info.value).startswith("force refuses to replace")
    assert not (tmp_path / "out").exists() and (taken / "notes.txt").read_text() == "mine"
    # The CLI still words it with the flag.
    run = CliRunner().invoke(main, ["convert", str(src), str(taken), "--force"])
    assert run.exit_code == 2 and "--force refuses to replace" in run.output, run.output


def test_dst_inside_src_or_src_missing_is_usage_error(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "llama-bin", src)
    with pytest.raises(UsageError):
        convert(src, src / "out")
    with pytest.raises(UsageError):
        convert(src, src, force=True)
    with pytest.raises(UsageError, match="missing does not exist"):  # validation.check_folder's wording
        convert(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        convert(tmp_path / "weights.bin", tmp_path / "out")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UsageError):
        convert(src, tmp_path / "a-file" / "out")
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in (FIXTURES / "llama-bin").iterdir())


def test_not_enough_disk_space(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(ConversionError) as info:
        convert(FIXTURES / "llama-bin", tmp_path / "out")
    assert info.value.code == "HFC705"
    assert not (tmp_path / "out").exists()
    no_leftovers(tmp_path)


def test_missing_shard_is_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "llama-bin-sharded", src)
    (src / "pytorch_model-00002-of-00003.bin").unlink()
    with pytest.raises(InputRefused, match="missing"):
        convert(src, tmp_path / "out")
    (src / "pytorch_model.bin.index.json").unlink()
    with pytest.raises(InputRefused, match="complete"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_file_selection(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "llama-safetensors", src)
    shutil.copy(FIXTURES / "llama-bin" / "pytorch_model.bin", src / "pytorch_model.bin")  # stale format
    torch.save({"lr": torch.tensor(1.0)}, src / "optimizer.pt")
    (src / "training_args.bin").write_bytes(b"not a model")
    (src / "README.md").write_text("# model\n")
    (src / "sub").mkdir()
    (src / "sub" / "extra.json").write_text("{}")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (src / "notes.txt").symlink_to(outside)
    (src / "inside.txt").symlink_to(src / "README.md")
    result = convert(src, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        ["README.md", "config.json", "generation_config.json", "inside.txt", "model.safetensors",
         "special_tokens_map.json", "sub/extra.json", "tokenizer.model", "tokenizer_config.json"])
    assert (out / "inside.txt").read_text() == "# model\n" and not (out / "inside.txt").is_symlink()
    codes = {f.file: f.code for f in result.findings}
    assert codes["pytorch_model.bin"] == "HFC711"
    assert codes["optimizer.pt"] == codes["training_args.bin"] == "HFC708"
    assert codes["notes.txt"] == "HFC707"
    assert set(result.files_skipped) == {"pytorch_model.bin", "optimizer.pt", "training_args.bin", "notes.txt"}


def test_manifest_digests(tmp_path):
    manifest = tmp_path / "manifest.json"
    result = convert(FIXTURES / "llama-tied-bin", tmp_path / "out", manifest=manifest, max_shard_size="40KB")
    document = json.loads(manifest.read_text())
    assert document["format"] == "hfconv-manifest/1"
    assert document["dropped_aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    output = load_output(tmp_path / "out")
    assert set(document["tensors"]) == set(output)
    for name, entry in document["tensors"].items():
        assert entry["sha256"] == hashlib.sha256(raw(output[name]).numpy().tobytes()).hexdigest()
        assert entry["shape"] == list(output[name].shape)
        with safe_open(tmp_path / "out" / entry["file"], "pt") as handle:
            assert name in handle.keys()
    assert result.manifest == str(manifest)
    # A manifest inside DST becomes part of the folder.
    convert(FIXTURES / "llama-bin", tmp_path / "out2", manifest=tmp_path / "out2" / "manifest.json")
    assert json.loads((tmp_path / "out2" / "manifest.json").read_text())["format"] == "hfconv-manifest/1"
    with pytest.raises(UsageError, match="overwrite"):
        convert(FIXTURES / "llama-bin", tmp_path / "out3", manifest=tmp_path / "out3" / "config.json")
    assert not (tmp_path / "out3").exists()


def test_jobs_give_identical_files(tmp_path):
    one = convert(FIXTURES / "llama-bin-sharded", tmp_path / "one", max_shard_size="30KB")
    seen: list[tuple[int, int]] = []
    many = convert(FIXTURES / "llama-bin-sharded", tmp_path / "many", max_shard_size="30KB", jobs=3,
                   progress=lambda done, total: seen.append((done, total)))
    assert [s.name for s in one.shards] == [s.name for s in many.shards]
    for shard in one.shards:
        assert (tmp_path / "one" / shard.name).read_bytes() == (tmp_path / "many" / shard.name).read_bytes()
    assert seen[-1] == (many.bytes, many.bytes)


def test_progress_counts_written_and_verified_bytes(tmp_path):
    seen: list[tuple[int, int]] = []
    result = convert(FIXTURES / "llama-bin", tmp_path / "out", progress=lambda d, t: seen.append((d, t)))
    # the model's bytes, each counted half written and half verified
    assert seen[0] == (0, result.bytes) and seen[-1] == (result.bytes, result.bytes)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_header_is_what_safetensors_writes(tmp_path):
    """Same layout rules as the safetensors library: 8-byte aligned data start, space padding."""
    state = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int16)}
    src = model_folder(tmp_path, state)
    convert(src, tmp_path / "out")
    data = (tmp_path / "out" / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert n % 8 == 0
    header = json.loads(data[8:8 + n])
    assert list(header)[0] == "__metadata__"
    assert data[8:8 + n].rstrip(b" ").endswith(b"}")
    save_file(state, tmp_path / "reference.safetensors")
    reference = load_file(tmp_path / "reference.safetensors")
    for name, tensor in load_file(tmp_path / "out" / "model.safetensors").items():
        assert_same_bits(tensor, reference[name], name)


# --- CLI --------------------------------------------------------------------------------------

def test_cli_exit_codes_and_outputs(tmp_path):
    runner = CliRunner()
    dst = tmp_path / "out"
    ok = runner.invoke(main, ["convert", str(FIXTURES / "llama-tied-bin"), str(dst), "--quiet"],
                       catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    assert "tensors   20" in ok.stdout and "verified  yes" in ok.stdout
    assert "lm_head.weight (tied to model.embed_tokens.weight)" in ok.stdout
    exists = runner.invoke(main, ["convert", str(FIXTURES / "llama-bin"), str(dst)], catch_exceptions=False)
    assert exists.exit_code == 2 and "--force" in exists.output
    missing = runner.invoke(main, ["convert", str(tmp_path / "nope"), str(tmp_path / "x")], catch_exceptions=False)
    assert missing.exit_code == 2
    bad_size = runner.invoke(main, ["convert", str(FIXTURES / "llama-bin"), str(tmp_path / "y"),
                                    "--max-shard-size", "5Gb"], catch_exceptions=False)
    assert bad_size.exit_code == 2 and "bits" in bad_size.output
    report = tmp_path / "report.json"
    forced = runner.invoke(main, ["convert", str(FIXTURES / "llama-bin-sharded"), str(dst), "--force",
                                  "--format", "json", "--output", str(report), "--max-shard-size", "40KB",
                                  "--dtype", "bfloat16", "--jobs", "2"], catch_exceptions=False)
    assert forced.exit_code == 0, forced.output
    document = json.loads(report.read_text())
    assert document["ok"] is True and document["verified"] is True
    assert document["index"] == "model.safetensors.index.json" and len(document["shards"]) > 1
    assert document["dtype"] == "bfloat16" and document["cast"] == 21
    assert sum(s["bytes"] for s in document["shards"]) > document["bytes"] == 125568 // 2
    assert not list(tmp_path.glob(".hfconv-*"))
