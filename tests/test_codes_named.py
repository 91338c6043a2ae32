"""Every registered finding code is produced for real by some test.

The tests here produce the codes no other test named (HFC115, HFC307, HFC309, HFC706, HFC709,
HFC710, HFC712, HFC716, HFC737, HFC904), each on a real folder written by torch/safetensors, through
the CLI in a subprocess or the public library function. ``test_every_code_is_named_in_a_test``
fails when a registered code is named in no test file, except the codes in its commented
allow-list (codes no input can produce).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, copy_fixture

ENTRY = "from hfconv.cli import run; run()"
TESTS = ROOT / "tests"


def hfconv(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=dict(os.environ, NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1"))


def by_code(findings: list, code: str) -> list:
    return [f for f in findings if (f["code"] if isinstance(f, dict) else f.code) == code]


def _edit_json(path: Path, edit) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document, indent=2) + "\n")


def _spec(shape: list[int], tensor):
    """A float32 tensor as safetensors' own serializer takes it: a TensorSpec pointing at the
    tensor's memory (safetensors >= 0.8; the caller keeps the tensor alive), else its bytes."""
    try:
        from safetensors import TensorSpec
    except ImportError:
        return {"dtype": "float32", "shape": shape, "data": tensor.numpy().tobytes()}
    return TensorSpec(dtype="float32", shape=shape, data_ptr=tensor.data_ptr(),
                      data_len=tensor.numel() * tensor.element_size())


# --- validate: HFC307, HFC309, HFC115 (one run over three folders) ---------------------------------

def test_validate_index_malformed_empty_shard_unbuildable_shape(tmp_path: Path) -> None:
    import torch
    from safetensors import serialize_file
    from safetensors.torch import load_file, save_file

    # HFC307: an index whose weight_map is a list, not an object
    malformed = copy_fixture(tmp_path, "llama-safetensors-sharded")
    _edit_json(malformed / "model.safetensors.index.json",
               lambda index: index.__setitem__("weight_map", sorted(index["weight_map"])))
    # HFC309: a safetensors file safetensors wrote with no tensor in it
    empty = copy_fixture(tmp_path / "empty", "llama-safetensors")
    save_file({}, empty / "model.safetensors", metadata={"format": "pt"})
    # HFC115: a zero-element tensor whose int64 strides overflow; safetensors writes it, and its
    # own load_file then refuses the whole file
    unbuildable = copy_fixture(tmp_path / "unbuildable", "llama-safetensors")
    path = unbuildable / "model.safetensors"
    state = load_file(path)
    masked_bias = "model.layers.0.self_attn.masked_bias"
    state[masked_bias] = torch.zeros(0)
    specs = {name: _spec(list(t.shape), t) for name, t in state.items()}
    specs[masked_bias] = _spec([0, 2**33, 2**30], state[masked_bias])  # no element: no bytes
    serialize_file(specs, path, metadata={"format": "pt"})
    with pytest.raises(Exception, match="overflow"):
        load_file(path)
    del state

    result = hfconv("validate", "--format", "json", str(malformed), str(empty), str(unbuildable))
    assert result.returncode == 1, result.stderr
    documents = {os.path.realpath(d["path"]): d["findings"] for d in json.loads(result.stdout)}
    malformed_findings, empty_findings, unbuildable_findings = (
        documents[os.path.realpath(folder)] for folder in (malformed, empty, unbuildable))

    (index_error,) = by_code(malformed_findings, "HFC307")
    assert index_error["severity"] == "error" and index_error["file"] == "model.safetensors.index.json"
    assert "weight_map" in index_error["message"]
    (no_tensors,) = by_code(empty_findings, "HFC309")
    assert no_tensors["severity"] == "error" and no_tensors["file"] == "model.safetensors"
    (shape,) = by_code(unbuildable_findings, "HFC115")
    assert shape["severity"] == "error" and shape["file"] == "model.safetensors"
    assert shape["tensor"] == masked_bias and "overflow" in shape["message"]


# --- convert: HFC709, HFC710, HFC712, HFC716, HFC706 (the library function: in-process, fast) -------

def test_convert_dtype_cast_is_noted(tmp_path: Path) -> None:
    from hfconv import convert

    dst = tmp_path / "out"
    result = convert(copy_fixture(tmp_path, "llama-bin"), dst, dtype="float16")
    assert result.ok
    (cast,) = by_code(result.findings, "HFC709")
    assert cast.severity.value == "info" and "float16" in cast.message
    assert json.loads((dst / "config.json").read_text())["torch_dtype"] == "float16"


def test_convert_without_config_cast_and_written_invalid(tmp_path: Path) -> None:
    from hfconv import convert

    src = copy_fixture(tmp_path, "llama-bin")
    (src / "config.json").unlink()  # HFC009 in SRC and DST: only allow_invalid_output writes DST
    dst = tmp_path / "out"
    result = convert(src, dst, dtype="float16", allow_invalid_output=True)
    assert not result.ok
    (not_updated,) = by_code(result.findings, "HFC710")
    assert not_updated.severity.value == "warning" and "config.json is missing" in not_updated.message
    (invalid,) = by_code(result.findings, "HFC716")
    assert invalid.severity.value == "error" and "INVALID" in invalid.message
    assert (dst / "model.safetensors").is_file() and not (dst / "config.json").exists()


def test_convert_regenerates_a_wrong_index(tmp_path: Path) -> None:
    from hfconv import convert

    src = copy_fixture(tmp_path, "llama-safetensors-sharded")
    _edit_json(src / "model.safetensors.index.json",  # the embedding is in shard 1
               lambda index: index["weight_map"].__setitem__("model.embed_tokens.weight",
                                                             "model-00003-of-00003.safetensors"))
    dst = tmp_path / "out"
    result = convert(src, dst, max_shard_size="50KB")
    assert result.ok
    (regenerated,) = by_code(result.findings, "HFC712")
    assert regenerated.severity.value == "warning" and "HFC303" in regenerated.message
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["model.embed_tokens.weight"] == "model-00001-of-00003.safetensors"


def test_convert_output_failing_validation_is_refused(tmp_path: Path) -> None:
    """HFC706: the output has an error the source did not have. Produced for real by changing
    SRC's config.json while convert runs (after SRC was validated, before it is copied), from
    the public progress callback: as another process editing SRC would."""
    from hfconv import convert

    src = copy_fixture(tmp_path, "llama-safetensors")
    dst = tmp_path / "out"

    def progress(done: int, total: int) -> None:
        _edit_json(src / "config.json", lambda config: config.__setitem__("hidden_size", 48))

    with pytest.raises(Exception) as info:
        convert(src, dst, progress=progress)
    assert getattr(info.value, "code", None) == "HFC706", info.value
    codes = [f.code for f in info.value.findings]
    assert codes[0] == "HFC706" and "HFC601" in codes
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["llama-safetensors"]


# --- load-test: HFC737 (the library function) --------------------------------------------------

def test_load_test_tied_tensors_split(tmp_path: Path) -> None:
    from hfconv import load_test

    src = copy_fixture(tmp_path, "llama-tied-bin")
    result = load_test(src, device_map={"lm_head": "disk", "model": "cpu"}, offload_folder=tmp_path)
    assert result.ok, result.findings
    (split,) = by_code(result.findings, "HFC737")
    assert split.severity.value == "warning" and split.tensor == "lm_head.weight"
    assert "model.embed_tokens.weight" in split.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama-tied-bin"]  # offload files removed


# --- validate --deep: HFC904 ------------------------------------------------------------------------

def _position(pid: int, path: str) -> int | None:
    """The file offset of ``pid``'s open descriptor on ``path`` (None when it has none)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    return next(int(line.split()[1]) for line in info if line.startswith("pos:"))
        except (OSError, StopIteration):
            continue
    return None


@pytest.mark.skipif(not os.path.isdir("/proc/self/fdinfo"), reason="needs Linux /proc")
def test_deep_read_of_a_shard_that_shrank(tmp_path: Path) -> None:
    """HFC904: a shard shrinks after its header was read, before --deep reads its bytes (a
    file being replaced or a failing disk). The validate process is stopped (SIGSTOP) every
    2 ms until it is deep-reading shard 1 (its offset 1 MiB past the header), then shard 3 is
    truncated and the process continued: shard 3's reads come up short."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = copy_fixture(tmp_path, "llama-safetensors-sharded")
    first, last = (str(folder / f"model-0000{i}-of-00003.safetensors") for i in (1, 3))
    state = load_file(first)
    state["model.extra"] = torch.zeros(4 << 20)  # 16 MiB: shard 1's deep read is the window
    save_file(state, first, metadata={"format": "pt"})
    _edit_json(folder / "model.safetensors.index.json",
               lambda index: index["weight_map"].__setitem__("model.extra", "model-00001-of-00003.safetensors"))
    with open(first, "rb") as handle:
        header_end = 8 + int.from_bytes(handle.read(8), "little")

    process = subprocess.Popen([sys.executable, "-c", ENTRY, "validate", "--deep", "--format", "json", str(folder)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, NO_COLOR="1"))
    shrunk = False
    try:
        while not shrunk and process.poll() is None:
            time.sleep(0.002)
            os.kill(process.pid, signal.SIGSTOP)
            try:
                position = _position(process.pid, os.path.realpath(first))
                # Past the header by more than a read buffer: the deep read (reading the header
                # may leave the offset a buffer beyond it).
                if position is not None and position > header_end + (1 << 20):
                    os.truncate(last, 100)
                    shrunk = True
            except FileNotFoundError:  # it exited meanwhile
                pass
            finally:
                os.kill(process.pid, signal.SIGCONT)
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if not shrunk:
        pytest.skip("the deep read finished before it could be observed")
    assert process.returncode == 1, err
    unreadable = by_code(json.loads(out)["findings"], "HFC904")
    assert unreadable and all(f["severity"] == "error" for f in unreadable), json.loads(out)["findings"]
    assert {f["file"] for f in unreadable} == {"model-00003-of-00003.safetensors"}
    assert all(f["tensor"] and "ends" in f["message"] for f in unreadable), unreadable
    assert "Traceback" not in err


# --- every registered code is named in a test --------------------------------------------------------

# --- allow-list start (this block is not counted as naming a code)
# Codes no input can produce; each is a defensive check. Remove a code from here once a test
# produces it (the test below fails while an allow-listed code is named by another test).
UNREACHABLE = {
    # load-test: the loaded tensor is built from exactly the header's byte count, viewed as the
    # header's dtype and reshaped to its shape (then cast to --dtype with the same mapping the
    # check uses): a mismatch needs a bug in the loader itself.
    "HFC736",
}
# --- allow-list end


def _registry() -> dict:
    import hfconv

    for module in pkgutil.walk_packages(hfconv.__path__, "hfconv."):
        if not module.name.endswith("__main__"):  # __main__ would run the CLI
            importlib.import_module(module.name)
    from hfconv.findings import REGISTRY

    return REGISTRY


def _test_text() -> str:
    texts = []
    for path in sorted(TESTS.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.resolve() == Path(__file__).resolve():
            head, _, rest = text.partition("# --- allow-list start")
            text = head + rest.partition("# --- allow-list end")[2]
        texts.append(text)
    return "\n".join(texts)


def test_every_code_is_named_in_a_test() -> None:
    registry = _registry()
    assert len(registry) > 100
    named = _test_text()
    assert UNREACHABLE <= set(registry), UNREACHABLE - set(registry)
    unnamed = sorted(code for code in registry if code not in named and code not in UNREACHABLE)
    assert not unnamed, f"registered codes no test names: {unnamed} (produce each in a test)"
    stale = sorted(code for code in UNREACHABLE if code in named)
    assert not stale, f"allow-listed as unreachable but named by a test: {stale} (drop them from UNREACHABLE)"
