"""Bugs found while removing repeated code (third review): ``diff`` of a file truncated while it
is compared, ``fix``'s copy fallback through a symlink, and Hub repo ids named as such by
``inspect``, ``convert`` and ``load-test``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES

# Compares A with B in process, truncating B's file once the first 1 MiB chunk has been read:
# the second chunk of the same tensor is then past the file's end (the truncation a download or
# a sync makes while diff runs, made at a deterministic point).
_TRUNCATE_WHILE_COMPARING = """
import json, os, sys
from hfconv.comparison import diff
a, b, victim = sys.argv[1:4]
cut = [False]
def progress(done, total):
    if done and not cut[0]:
        cut[0] = True
        os.truncate(victim, 4096)
result = diff(a, b, progress=progress)
print(json.dumps({"cut": cut[0], "findings": [[f.code, f.file, f.tensor, f.message] for f in result.findings],
                  "status": {t.name: t.status for t in result.tensors}}))
"""


def test_diff_of_a_file_truncated_while_compared_is_a_finding_not_sigbus(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    tensors = {"big.weight": np.arange(3 << 18, dtype=np.float32), "small.weight": np.ones(8, dtype=np.float32)}
    save_file(tensors, str(a / "model.safetensors"))  # big.weight: 3 MiB, 3 chunks of 1 MiB
    shutil.copytree(a, b)
    proc = subprocess.run([sys.executable, "-c", _TRUNCATE_WHILE_COMPARING, str(a), str(b),
                           str(b / "model.safetensors")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != -signal.SIGBUS, "diff was killed by SIGBUS reading a truncated file"
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    import json

    out = json.loads(proc.stdout)
    assert out["cut"]
    hits = {f[2]: f for f in out["findings"] if f[0] == "HFC960"}
    assert hits["big.weight"][1] == "model.safetensors", out
    assert "B: model.safetensors: reading 'big.weight' failed: file ended" in hits["big.weight"][3]
    assert out["status"] == {"big.weight": "unreadable", "small.weight": "unreadable"}  # its bytes are gone too


def test_fix_link_copy_fallback_does_not_follow_a_symlink_or_open_a_fifo(tmp_path: Path) -> None:
    """``fix``'s rename links the new name; where the link fails it copies. A shard swapped for a
    symlink (or a FIFO) since the plan must be refused there too, not read through. The link is made
    to fail for real: the new name was taken meanwhile (EEXIST), which the plan had ruled out."""
    from hfconv.fixing.apply import FileOps
    from hfconv.tensors import FormatError

    folder = tmp_path / "model"
    folder.mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"bytes from outside the model folder")
    (folder / "model-1-of-2.safetensors").symlink_to(outside)
    taken = folder / "model-00001-of-00002.safetensors"
    taken.write_bytes(b"taken")
    ops = FileOps(str(folder))
    with pytest.raises(FormatError, match="symlink"):
        ops.link("model-1-of-2.safetensors", "model-00001-of-00002.safetensors")
    assert taken.read_bytes() == b"taken" and sorted(p.name for p in folder.iterdir()) == [
        "model-00001-of-00002.safetensors", "model-1-of-2.safetensors"]  # no temporary left
    os.mkfifo(folder / "model-2-of-2.safetensors")  # open() would block forever on it
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"taken")
    with pytest.raises(FormatError, match="not a regular file"):
        ops.link("model-2-of-2.safetensors", "model-00002-of-00002.safetensors")


def test_inspect_convert_and_load_test_name_a_hub_repo_as_org_name_at_revision(tmp_path: Path) -> None:
    """As validate does: a repo id resolved in the local Hub cache is reported as ``org/name@<short
    commit>``, not as the cache's snapshot path."""
    from test_hub_cache import C2, cache_snapshot, run

    cache = tmp_path / "hub"
    cache_snapshot(cache, "acme/tiny-llama", C2, FIXTURES / "llama-bin", refs=("v2",))
    shown = f"acme/tiny-llama@{C2[:7]}"
    inspected = run(cache, "inspect", "acme/tiny-llama@v2")
    assert inspected.returncode == 0 and inspected.stdout.splitlines()[0] == shown, inspected.stdout
    converted = run(cache, "convert", "acme/tiny-llama@v2", str(tmp_path / "out"), "--quiet", "--no-verify")
    assert converted.returncode == 0 and converted.stdout.splitlines()[0] == f"converted {shown} -> {tmp_path / 'out'}"
    loaded = run(cache, "load-test", "acme/tiny-llama@v2", "--quiet")
    assert loaded.returncode == 0 and loaded.stdout.startswith(f"load-test {shown}: OK"), loaded.stdout
    assert "snapshots" not in inspected.stdout + converted.stdout + loaded.stdout
