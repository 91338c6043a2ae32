"""Discovery and the layout/index checks stay bounded on hostile folders (issue 16).

Each case runs the real CLI in a subprocess under a 2 GiB address-space cap and a timeout, and
asserts the wall time: a listing cap that hides files, a folder thousands of levels deep, an index
naming tens of thousands of missing shards, tens of thousands of shard files without an index.
Every cap that hides something is an error finding naming the cap, never a silent exit 0.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

from safetensors.numpy import save_file

from hfconv.checks.layout import MAX_FINDINGS_PER_CODE
from hfconv.contents import MAX_WEIGHT_FILES
from hfconv.discovery import MAX_DEPTH, MAX_LISTED_FILES

from helpers import copy_fixture

ADDRESS_SPACE_LIMIT = 2 << 30
WALL_LIMIT = 10.0
"""The issue's goal for every command on any input."""


def _limits() -> None:  # in the child, between fork and exec
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def validate_json(folder: Path, *args: str, timeout: float = 60) -> tuple[int, dict, str, float]:
    """``hfconv validate FOLDER --format json`` under the limits: (exit code, report, stderr, seconds)."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", "from hfconv.cli import run; run()", "validate", str(folder), "--format", "json", *args],
        capture_output=True, text=True, timeout=timeout, preexec_fn=_limits, cwd=folder.parent,
    )
    elapsed = time.monotonic() - start
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout), proc.stderr, elapsed


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/hfconv-never-runs",))


def _evil_files(folder: Path) -> None:
    """What the filler hides: a pickle that runs a command and custom tokenizer code."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "optimizer.pt").write_bytes(pickle.dumps({"state": _Payload()}, protocol=2))
    (folder / "tokenization_evil.py").write_text("import os\nos.system('touch /tmp/hfconv-never-runs')\n")


def _empty_files(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        for name in names:
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def test_listing_cap_that_hides_files_is_an_error(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    _empty_files(folder / "a_logs", (f"step{i:06d}.txt" for i in range(MAX_LISTED_FILES)))
    _evil_files(folder / "z_code")
    code, report, _, elapsed = validate_json(folder)
    assert code == 1 and not report["ok"]
    capped = [f for f in report["findings"] if f["code"] == "HFC015"]
    assert len(capped) == 1 and capped[0]["severity"] == "error"
    message = capped[0]["message"]
    assert "MAX_LISTED_FILES" in message and f"{MAX_LISTED_FILES:,}" in message and "a_logs/" in message
    assert elapsed < WALL_LIMIT, elapsed
    # convert would copy only what was listed: it refuses instead of writing an incomplete DST.
    dst = tmp_path / "dst"
    converted = subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", "convert", str(folder),
                                str(dst), "--quiet"], capture_output=True, text=True, timeout=120)
    assert converted.returncode == 1 and "HFC704" in converted.stderr and "HFC015" in converted.stderr
    assert "Traceback" not in converted.stderr and not dst.exists()


def test_listing_reaches_files_below_the_filler_within_the_cap(tmp_path: Path) -> None:
    """Breadth first: the top level and the next are listed before a big folder's contents run out
    the cap, and a folder under the cap is listed whole (the hidden pickle is found and named)."""
    folder = copy_fixture(tmp_path, "llama-safetensors")
    _empty_files(folder / "a_logs", (f"step{i:05d}.txt" for i in range(20_000)))
    _evil_files(folder / "z_code")
    code, report, _, elapsed = validate_json(folder)
    assert code == 1
    codes = {(f["code"], f["file"], f["severity"]) for f in report["findings"]}
    assert ("HFC011", "z_code/optimizer.pt", "error") in codes
    assert not any(f["code"] == "HFC015" for f in report["findings"])
    assert elapsed < WALL_LIMIT, elapsed


def _nest(root: Path, depth: int, leaf: str, data: bytes) -> None:
    """``root/d/d/.../d/leaf`` ``depth`` folders deep, built through directory descriptors
    (the path itself is longer than most tools accept)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open(leaf, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)


def _unnest(root: Path, depth: int, leaf: str) -> None:
    """Remove what :func:`_nest` built, deepest first (pytest's own clean-up, shutil.rmtree,
    recurses once per level and would fail on it in every later session)."""
    fds = [os.open(root, os.O_RDONLY)]
    try:
        for _ in range(depth):
            fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
        os.unlink(leaf, dir_fd=fds[-1])
        while len(fds) > 1:
            os.close(fds.pop())
            os.rmdir("d", dir_fd=fds[-1])
    finally:
        for fd in fds:
            os.close(fd)


def test_file_1500_folders_deep_is_a_finding_not_a_traceback(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    _nest(folder, 1500, "tokenization_evil.py", b"import os\nos.system('true')\n")
    try:
        code, report, _, elapsed = validate_json(folder)
    finally:
        _unnest(folder, 1500, "tokenization_evil.py")
    assert code == 1
    deep = [f for f in report["findings"] if f["code"] == "HFC016"]
    assert len(deep) == 1 and deep[0]["severity"] == "error"
    assert deep[0]["file"] == "/".join(["d"] * MAX_DEPTH) and "MAX_DEPTH" in deep[0]["message"]
    assert elapsed < WALL_LIMIT, elapsed


def test_files_at_the_depth_cap_are_still_checked(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    _nest(folder, MAX_DEPTH, "optimizer.pt", pickle.dumps({"state": _Payload()}, protocol=2))
    code, report, _, _ = validate_json(folder)
    assert code == 1
    leftover = "/".join(["d"] * MAX_DEPTH) + "/optimizer.pt"
    assert any(f["code"] == "HFC011" and f["file"] == leftover and f["severity"] == "error"
               for f in report["findings"]), report["findings"]
    assert not any(f["code"] == "HFC016" for f in report["findings"])


def test_index_naming_20000_missing_shards_is_bounded(tmp_path: Path) -> None:
    """Three real shards and 20,000 distinct missing ones: each missing shard was counted over the
    whole weight map (quadratic), and every one became a finding."""
    folder = copy_fixture(tmp_path, "llama-safetensors-sharded")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    missing = 20_000
    index["weight_map"].update({f"ghost.{i}.weight": f"model-{i + 4:05d}-of-{missing + 3:05d}.safetensors"
                                for i in range(missing)})
    index_path.write_text(json.dumps(index))
    code, report, _, elapsed = validate_json(folder)
    assert code == 1
    absent = [f for f in report["findings"] if f["code"] == "HFC304"]
    assert len(absent) == MAX_FINDINGS_PER_CODE + 1
    summary = absent[-1]
    assert summary["severity"] == "error"
    assert f"{missing - MAX_FINDINGS_PER_CODE:,} more HFC304" in summary["message"]
    assert elapsed < WALL_LIMIT, elapsed


def test_25000_empty_shards_without_an_index_are_bounded(tmp_path: Path) -> None:
    """Numbering checks were quadratic (list.count per shard); past MAX_WEIGHT_FILES the headers
    are not read, and that cap is an error naming it."""
    folder = tmp_path / "shards"
    total = 25_000
    _empty_files(folder, (f"model-{i:05d}-of-{total:05d}.safetensors" for i in range(1, total + 1)))
    code, report, _, elapsed = validate_json(folder)
    assert code == 1
    by_code: dict[str, list[dict]] = {}
    for f in report["findings"]:
        by_code.setdefault(f["code"], []).append(f)
    assert "HFC002" in by_code
    (unread,) = by_code["HFC310"]
    assert f"{total - MAX_WEIGHT_FILES:,} weight files were not read" in unread["message"]
    assert "MAX_WEIGHT_FILES" in unread["message"]
    short = by_code["HFC101"]  # every header read is 0 bytes long
    assert len(short) == MAX_FINDINGS_PER_CODE + 1
    assert f"{MAX_WEIGHT_FILES - MAX_FINDINGS_PER_CODE:,} more HFC101" in short[-1]["message"]
    assert elapsed < WALL_LIMIT, elapsed


def test_shard_names_with_gaps_and_huge_totals_stay_short(tmp_path: Path) -> None:
    """A shard name claiming 10^12 shards does not make a set (or a message) that big."""
    folder = tmp_path / "gaps"
    folder.mkdir()
    import numpy as np

    for number in (1, 3):
        save_file({f"w{number}": np.zeros(2, np.float32)},
                  str(folder / f"model-{number:05d}-of-999999999999.safetensors"), metadata={"format": "pt"})
    code, report, _, elapsed = validate_json(folder)
    assert code == 1
    (gap,) = [f for f in report["findings"] if f["code"] == "HFC005" and "missing from" in f["message"]]
    assert gap["message"].startswith("999,999,999,997 shard(s) of 999,999,999,999 missing")
    assert len(gap["message"]) < 400
    assert elapsed < WALL_LIMIT, elapsed


def test_index_naming_300000_shards_is_refused_by_its_cap(tmp_path: Path) -> None:
    """The issue's case: a 12 MB index naming 300,000 distinct missing shards (killed after 60 s)."""
    folder = copy_fixture(tmp_path, "llama-safetensors-sharded")
    index_path = folder / "model.safetensors.index.json"
    count = 300_000
    index_path.write_text(json.dumps({"metadata": {}, "weight_map": {
        f"model.layers.{i}.weight": f"model-{i + 1:06d}-of-{count:06d}.safetensors" for i in range(count)}}))
    code, report, _, elapsed = validate_json(folder)
    assert code == 1
    (capped,) = [f for f in report["findings"] if f["code"] == "HFC311"]
    assert capped["severity"] == "error" and capped["file"] == "model.safetensors.index.json"
    assert "300,000 distinct shard files" in capped["message"] and "MAX_INDEX_SHARDS" in capped["message"]
    assert elapsed < WALL_LIMIT, elapsed
