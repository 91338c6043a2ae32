"""Repo ids resolved offline in the local Hub cache: ``org/name@revision`` (a branch or tag in
``refs/``, a commit, a commit prefix), org-less ids, reports named ``org/name@<short commit>``,
no guess without ``refs/main``, and ``--deep`` checking every blob against its hash (HFC040).

The cache is laid out as huggingface_hub's ``hf_hub_download`` writes it (``blobs/<etag>``: the
sha256 of an LFS file, the git blob id of another; ``snapshots/<commit>/<file>`` relative
symlinks; ``refs/<revision>`` holding the commit), and huggingface_hub itself resolves it
(``snapshot_download(local_files_only=True)``) to the same folders hfconv does.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hfconv.validation import validate

from helpers import FIXTURES

ENTRY = "from hfconv.cli import run; run()"
C1 = "aaaa1111" + "1" * 32  # main of acme/tiny-llama
C2 = "aaaa2222" + "2" * 32  # its tag v2
C3 = "c3" * 20              # main of gpt2
LFS_SUFFIXES = (".safetensors", ".bin", ".model")  # the Hub's default .gitattributes routes these to LFS


def _etag(data: bytes, name: str) -> str:
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id


def cache_snapshot(cache: Path, repo_id: str, commit: str, source: Path, refs: tuple[str, ...] = ()) -> Path:
    """``source``'s files as the snapshot ``commit`` of ``repo_id``, as hf_hub_download stores them."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / _etag(data, file.name)
        if not blob.exists():
            blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    cache = tmp_path / "hub"
    cache_snapshot(cache, "acme/tiny-llama", C1, FIXTURES / "llama-safetensors", refs=("main",))
    cache_snapshot(cache, "acme/tiny-llama", C2, FIXTURES / "llama-bin", refs=("v2",))
    cache_snapshot(cache, "gpt2", C3, FIXTURES / "families" / "gpt2", refs=("main",))
    return cache


def run(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=120, env=env,
                          cwd=cache.parent)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_the_layout_is_what_huggingface_hub_resolves(cache: Path) -> None:
    from huggingface_hub import snapshot_download

    for repo_id, revision, commit in [("acme/tiny-llama", "main", C1), ("acme/tiny-llama", "v2", C2),
                                      ("acme/tiny-llama", C2, C2), ("gpt2", "main", C3)]:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True)
        assert Path(folder) == cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit


def test_repo_ids_with_revisions_name_the_report(cache: Path) -> None:
    specs = {"acme/tiny-llama": C1, "acme/tiny-llama@main": C1, "acme/tiny-llama@v2": C2,
             f"acme/tiny-llama@{C2[:9]}": C2, f"acme/tiny-llama@{C1}": C1, "gpt2": C3, "gpt2@main": C3}
    proc = run(cache, "validate", "--format", "json", *specs)
    documents = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    names = [spec.split("@")[0] for spec in specs]
    assert [d["path"] for d in documents] == [f"{name}@{commit[:7]}" for name, commit in zip(names, specs.values())]
    formats = [d["layout"]["format"] for d in documents]
    assert formats == ["safetensors", "safetensors", "bin", "bin", "safetensors", "safetensors", "safetensors"]
    text = run(cache, "validate", "acme/tiny-llama@v2")
    assert text.returncode == 0 and text.stdout.splitlines()[0] == f"acme/tiny-llama@{C2[:7]}"


def test_no_refs_main_is_a_usage_error_not_a_guess(cache: Path) -> None:
    (cache / "models--acme--tiny-llama" / "refs" / "main").unlink()
    proc = run(cache, "validate", "acme/tiny-llama")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "has no refs/main" in proc.stderr and "acme/tiny-llama@<branch, tag or commit>" in proc.stderr
    assert C1[:7] in proc.stderr and C2[:7] in proc.stderr  # the cached snapshots, to pick from
    assert run(cache, "validate", "acme/tiny-llama@v2").returncode == 0  # a named revision still resolves


@pytest.mark.parametrize(("spec", "words"), [
    ("acme/tiny-llama@v3", "no branch, tag or commit 'v3'"),
    ("acme/tiny-llama@aaaa", "matches 2 cached snapshots"),
    ("acme/tiny-llama@../../x", "is not a branch, tag or commit name"),
])
def test_revisions_not_in_the_cache_are_usage_errors(cache: Path, spec: str, words: str) -> None:
    proc = run(cache, "validate", spec)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr


def test_the_python_api_takes_repo_ids(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    report = validate("acme/tiny-llama@v2")
    assert report.ok and report.path == f"acme/tiny-llama@{C2[:7]}" and report.layout.format == "bin"
    assert validate(cache / "models--gpt2" / "snapshots" / C3).path == f"gpt2@{C3[:7]}"


def test_deep_checks_every_blob_against_its_hash(cache: Path) -> None:
    snapshot = cache / "models--acme--tiny-llama" / "snapshots" / C1
    weights = (snapshot / "model.safetensors").resolve()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the low mantissa byte of the last float: still a finite number
    weights.write_bytes(bytes(data))
    config = (snapshot / "config.json").resolve()
    config.write_text(config.read_text() + "\n")
    assert hfc040(json.loads(run(cache, "validate", "--format", "json", "acme/tiny-llama").stdout)) == {}  # offline
    proc = run(cache, "validate", "--format", "json", "--deep", "acme/tiny-llama", "acme/tiny-llama@v2", "gpt2")
    corrupt, shared, clean = json.loads(proc.stdout)
    assert proc.returncode == 1 and clean["ok"] and hfc040(clean) == {}
    found = hfc040(corrupt)
    assert set(found) == {"model.safetensors", "config.json"}
    assert "(sha256)" in found["model.safetensors"] and weights.name in found["model.safetensors"]
    assert "(git blob id)" in found["config.json"]
    assert set(hfc040(shared)) == {"config.json"}  # v2's config.json is the same blob


def test_blobs_in_the_cache_wide_shared_store_are_inside(cache: Path) -> None:
    """huggingface_hub's shared Xet store: ``blobs/<etag>`` of a repo links on to
    ``<cache>/blobs/<2 hex>/<xet hash>`` (utils/_shared_blobs.py); that is the cache, not outside it."""
    blobs = cache / "models--acme--tiny-llama" / "blobs"
    store = cache / "blobs" / "5e"
    store.mkdir(parents=True)
    for blob in sorted(blobs.iterdir()):
        shared = store / ("5e" + hashlib.sha256(blob.name.encode()).hexdigest()[2:])
        blob.rename(shared)
        os.symlink(os.path.relpath(shared, blobs), blob)
    proc = run(cache, "validate", "--format", "json", "--deep", "acme/tiny-llama")
    document = json.loads(proc.stdout)
    assert proc.returncode == 0 and [f["code"] for f in document["findings"]] == ["HFC030"], document["findings"]


def hfc040(document: dict) -> dict[str, str]:
    return {f["file"]: f["message"] for f in document["findings"] if f["code"] == "HFC040"}
