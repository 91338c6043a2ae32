"""``hfconv convert SRC --in-place [--delete-bin]`` (issue 14): safetensors written beside the
``.bin`` files of SRC, verified; the ``.bin`` files deleted only after verification. Through the
console script, on folders written by torch.save (the fixtures); faults are real (RLIMIT_FSIZE,
a storage whose bytes no longer match their CRC-32)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import zipfile
from pathlib import Path

import pytest

from helpers import CLI, copy_fixture, signal_while

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent


def hfconv(*args: str, cwd: Path, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, preexec_fn=preexec, env={**os.environ, "PYTHONPATH": str(ROOT)})


def listing(folder: Path) -> dict[str, str]:
    """Every entry of ``folder`` (hidden ones included) with its sha256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in folder.iterdir()}


def safetensors_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    state: dict = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    return state


def bin_state(folder: Path) -> dict:
    state: dict = {}
    for shard in sorted(folder.glob("*.bin")):
        state.update(torch.load(shard, weights_only=True))
    return state


def test_in_place_writes_verified_safetensors_beside_the_bin_files(tmp_path):
    src = copy_fixture(tmp_path, "llama-bin-sharded")
    before = listing(src)
    run = hfconv("convert", str(src), "--in-place", "--quiet", "--max-shard-size", "100KB", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "in place  2 shards and model.safetensors.index.json written beside pytorch_model-00001-of-00003.bin" \
        in run.stdout and "the .bin files stay" in run.stdout
    after = listing(src)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of SRC changed
    assert sorted(set(after) - set(before)) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                                "model.safetensors.index.json"]
    index = json.loads((src / "model.safetensors.index.json").read_text())
    expected = bin_state(src)
    got = safetensors_state(src)
    assert set(index["weight_map"]) == set(expected) == set(got)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    check = hfconv("validate", str(src), cwd=tmp_path)
    assert check.returncode == 0, check.stdout
    # a second run refuses: the folder holds safetensors now, nothing is replaced
    again = hfconv("convert", str(src), "--in-place", cwd=tmp_path)
    assert again.returncode == 2 and "holds safetensors weights already" in again.stderr
    assert listing(src) == after


def test_delete_bin_leaves_only_the_verified_safetensors(tmp_path):
    src = copy_fixture(tmp_path, "llama-tied-bin")
    expected = bin_state(src)
    run = hfconv("convert", str(src), "--in-place", "--delete-bin", "--quiet", "--format", "json", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["in_place"] and report["written"] == ["model.safetensors"]
    assert report["deleted"] == ["pytorch_model.bin"]
    assert [f["code"] for f in report["findings"] if f["code"] in ("HFC717", "HFC718")] == ["HFC717", "HFC718"]
    assert not list(src.glob("*.bin")) and not [p for p in src.iterdir() if p.name.startswith(".")]
    got = safetensors_state(src)
    assert all(torch.equal(expected[k], got[k]) for k in got)
    assert set(expected) - set(got) == {"lm_head.weight"}  # tied: dropped, re-tied on load


@pytest.mark.parametrize("args, words", [
    (("--in-place", "DST"), "--in-place writes into SRC; give no DST"),
    (("DST", "--delete-bin"), "--delete-bin applies only with --in-place"),
    (("--in-place", "--dtype", "bf16"), "--in-place cannot be combined with --dtype"),
    (("--in-place", "--delete-bin", "--no-verify"), "--delete-bin needs verification"),
])
def test_option_refusals_touch_nothing(tmp_path, args, words):
    src = copy_fixture(tmp_path, "llama-bin")
    before = listing(src)
    run = hfconv("convert", str(src), *[str(tmp_path / "dst") if a == "DST" else a for a in args], cwd=tmp_path)
    assert run.returncode == 2 and words in run.stderr, run.stderr
    assert listing(src) == before and not (tmp_path / "dst").exists()


def _file_size_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))


def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path):
    src = copy_fixture(tmp_path, "llama-bin")
    before = listing(src)
    run = hfconv("convert", str(src), "--in-place", "--delete-bin", "--quiet", cwd=tmp_path, preexec=_file_size_limit)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr and "HFC714" in run.stderr
    assert listing(src) == before  # no safetensors, no temporary folder, the .bin kept


def test_a_corrupt_storage_is_refused_and_the_bin_kept(tmp_path):
    src = copy_fixture(tmp_path, "llama-bin")
    path = src / "pytorch_model.bin"
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 1000)
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0x01  # one flipped bit: the recorded CRC-32 no longer matches
    path.write_bytes(bytes(data))
    before = listing(src)
    run = hfconv("convert", str(src), "--in-place", "--delete-bin", "--quiet", cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "HFC901" in run.stderr and "Traceback" not in run.stderr
    assert listing(src) == before


def test_a_hub_cache_snapshot_is_refused(tmp_path):
    """Writing into a snapshot would change the cache (its files are symlinks into blobs/)."""
    repo = tmp_path / "hub" / "models--acme--tiny"
    snapshot = repo / "snapshots" / ("b" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted((ROOT / "fixtures" / "llama-bin").iterdir()):
        blob = repo / "blobs" / file.name.replace(".", "_")
        blob.write_bytes(file.read_bytes())
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    before = listing(repo / "blobs")
    run = hfconv("convert", str(snapshot), "--in-place", cwd=tmp_path)
    assert run.returncode == 2 and "snapshot of the Hub cache" in run.stderr, run.stderr
    source = ROOT / "fixtures" / "llama-bin"
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(p.name for p in source.iterdir())
    assert listing(repo / "blobs") == before


def test_sigterm_mid_write_leaves_the_folder_as_it_was(tmp_path):
    src = copy_fixture(tmp_path, "llama-bin")
    torch.save({f"model.layers.{i}.mlp.up_proj.weight": torch.ones(1024, 1024) for i in range(24)},
               src / "pytorch_model.bin")  # 100 MB: long enough to be interrupted while written
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 24}))
    before = listing(src)
    import time

    def writing() -> bool:
        """model.safetensors is in the temporary folder, not yet whole (96 MiB of tensors)."""
        try:
            return any(p.name.startswith(".hfconv-") and (p / "model.safetensors").stat().st_size < 96 << 20
                       for p in src.iterdir())
        except OSError:
            return False

    for _attempt in range(5):  # again only when this process was descheduled past the whole write
        proc = subprocess.Popen([*CLI, "convert", str(src), "--in-place", "--quiet"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 60
        while not writing() and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        if proc.poll() is None and signal_while(proc, signal.SIGTERM, writing):  # seen with the process stopped
            break
        proc.communicate(timeout=60)  # it finished (the source's own errors fail its validation: HFC713)
        for name in ("model.safetensors", "model.safetensors.index.json"):
            (src / name).unlink(missing_ok=True)
        assert listing(src) == before
    else:
        raise AssertionError("the conversion was never caught writing")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, out, err)
    assert "Traceback" not in err and "nothing was written into SRC" in err
    assert listing(src) == before
