"""Names from a folder cannot inject into any output format (issue 16: output injection, non-UTF-8
file names, a folder tree thousands deep under --recursive).

Hostile names reach the reports three ways, all written for real: tensor names in a safetensors
file (the safetensors library), tensor names in an index's weight_map, and file names on disk
(symlinks pointing outside the folder, one of them with the bytes ff fe, which are not UTF-8).
Every case runs the console entry point in a subprocess and reads its output as bytes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, copy_fixture

ENTRY = "from hfconv.cli import run; run()"
CLEAR = "\x1b[2J\x1b[H"  # clear the screen, cursor home
OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"  # write 'rm -rf ~' to the clipboard
CONCEAL = "\x1b[8m"  # hide what follows
FORGED = "\n  OK: 0 error(s), 0 warning(s)\n"  # a verdict line of its own
C1_CSI = "\x9b31m"  # the one-character CSI of the C1 set
BIDI = "\u202egnp.exe"
VERDICT = re.compile(rb"^\s*(OK|FAILED): \d+ error")


def hfconv(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1")
    return subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=cwd, env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A broken sharded folder whose tensor and file names carry terminal escapes, forged verdict
    lines, C1 and bidi controls and a non-UTF-8 file name."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    root = tmp_path_factory.mktemp("hostile")
    folder = copy_fixture(root, "llama-safetensors-sharded")
    outside = root / "outside.txt"
    outside.write_text("a file outside the folder\n")
    # real tensors under hostile names, written by the safetensors library
    shard = folder / "model-00001-of-00003.safetensors"
    tensors = load_file(shard)
    extra = {f"model.layers.0.{OSC52}x.weight": 2, f"x{FORGED}": 3, f"model.norm{C1_CSI}.weight": 4}
    for name, size in extra.items():
        tensors[name] = np.zeros(size, dtype=np.float32)
    save_file(tensors, shard, metadata={"format": "pt"})
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"].update({name: shard.name for name in extra})
    # names in the index that no shard holds: errors quoting them
    for name in (f"{CLEAR}clear", f"{CONCEAL}hidden", f"model.layers.9.x{FORGED}", '<script>alert("x")</script>', BIDI):
        index["weight_map"][name] = shard.name
    index_path.write_text(json.dumps(index))
    # file names: symlinks pointing outside the folder are named in HFC006 errors
    os.symlink(outside, folder / f"evil{CLEAR}{FORGED}name.txt")
    os.symlink(outside, os.path.join(os.fsencode(folder), b"\xff\xfe.txt"))
    return folder


def assert_no_raw_controls(data: bytes) -> None:
    body = data.decode("utf-8")  # strict: valid UTF-8
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]", body), \
        [c for c in body if ord(c) < 32 and c not in "\n\t"][:5]


def test_text_report_escapes_every_name(hostile: Path, tmp_path: Path) -> None:
    result = hfconv("validate", str(hostile))
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr
    assert_no_raw_controls(result.stdout)
    out = result.stdout.decode()
    verdicts = [line for line in result.stdout.splitlines() if VERDICT.match(line)]
    assert verdicts == [verdicts[-1]] and verdicts[0].lstrip().startswith(b"FAILED"), verdicts
    for shown in (r"\x1b[2J\x1b[Hclear", r"\x1b]52;c;cm0gLXJmIH4=\x07", r"\x1b[8mhidden",
                  r"x\n  OK: 0 error(s), 0 warning(s)\n", r"\x9b31m", r"\u202egnp.exe", r"\xff\xfe.txt",
                  r"evil\x1b[2J\x1b[H\n  OK: 0 error(s)"):
        assert shown in out, shown
    # the same through --output, and inspect's text
    written = tmp_path / "report.txt"
    assert hfconv("validate", str(hostile), "-o", str(written)).returncode == 1
    assert_no_raw_controls(written.read_bytes())
    assert written.read_bytes() == result.stdout
    inspected = hfconv("inspect", str(hostile))
    assert inspected.returncode == 0, inspected.stderr
    assert_no_raw_controls(inspected.stdout)


def test_github_annotations_cannot_be_forged(hostile: Path) -> None:
    result = hfconv("validate", str(hostile), "--format", "github")
    assert result.returncode == 1
    assert_no_raw_controls(result.stdout)
    lines = result.stdout.decode().splitlines()
    assert lines and all(re.match(r"::(error|warning|notice) [^:]*::HFC\d{3} ", line) for line in lines), lines
    # properties: ':' and ',' are escaped (a file name cannot add a property or end the command)
    symlink = next(line for line in lines if "evil" in line)
    assert r"file=" in symlink and r"\x1b[2J" in symlink and "%3A" in symlink.split("::")[1]


def test_json_is_utf8_and_keeps_names_as_data(hostile: Path, tmp_path: Path) -> None:
    result = hfconv("validate", str(hostile), "--format", "json")
    assert result.returncode == 1
    assert_no_raw_controls(result.stdout)
    report = json.loads(result.stdout.decode("utf-8"))
    for value in _strings(report):
        value.encode("utf-8")  # no lone surrogate anywhere
    tensors = {f["tensor"] for f in report["findings"]}
    assert f"{CLEAR}clear" in tensors and f"model.layers.9.x{FORGED}" in tensors  # data, exact
    files = {f["file"] for f in report["findings"]}
    assert r"\xff\xfe.txt" in files
    written = tmp_path / "report.json"
    assert hfconv("validate", str(hostile), "--format", "json", "-o", str(written)).returncode == 1
    assert json.loads(written.read_bytes().decode("utf-8")) == report
    inspected = hfconv("inspect", str(hostile), "--format", "json")
    assert inspected.returncode == 0
    json.loads(inspected.stdout.decode("utf-8"))


def test_sarif_with_a_non_utf8_file_name(hostile: Path, tmp_path: Path) -> None:
    written = tmp_path / "report.sarif"
    for args in (["--format", "sarif"], ["--format", "sarif", "-o", str(written)]):
        result = hfconv("validate", str(hostile), *args, cwd=hostile.parent)
        assert result.returncode == 1
        assert b"Traceback" not in result.stderr, result.stderr
    log_bytes = written.read_bytes()
    assert log_bytes == result.stdout or result.stdout == b""
    log = json.loads(log_bytes.decode("utf-8"))
    for value in _strings(log):
        value.encode("utf-8")
    uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"]]
    assert f"{hostile.name}/%FF%FE.txt" in uris  # the file's own bytes, percent-encoded
    messages = [r["message"]["text"] for r in log["runs"][0]["results"]]
    assert any(r"\xff\xfe.txt" in m for m in messages)


def test_html_escapes_markup_and_controls(hostile: Path, tmp_path: Path) -> None:
    written = tmp_path / "report.html"
    result = hfconv("validate", str(hostile), "--format", "html", "-o", str(written))
    assert result.returncode == 1, result.stderr
    page = written.read_bytes()
    assert_no_raw_controls(page)
    body = page.decode()
    assert "<script>" not in body and "&lt;script&gt;" in body
    assert r"\x1b]52;c;" in body and r"\xff\xfe.txt" in body


def test_non_utf8_file_name_in_every_format(tmp_path: Path) -> None:
    """Only the non-UTF-8 name (no other hostile name): no traceback, valid UTF-8, in every format."""
    folder = copy_fixture(tmp_path, "llama-safetensors")
    os.symlink(FIXTURES / "llama-bin" / "config.json", os.path.join(os.fsencode(folder), b"\xff\xfe"))
    for fmt in ("text", "json", "github", "sarif", "html"):
        result = hfconv("validate", str(folder), "--format", fmt, cwd=tmp_path)
        assert result.returncode == 1, (fmt, result.stderr)
        assert b"Traceback" not in result.stderr
        assert re.search(rb"\\+xff\\+xfe|%FF%FE", result.stdout), fmt
        result.stdout.decode("utf-8")


def test_recursive_walk_of_a_very_deep_tree(tmp_path: Path) -> None:
    """--recursive over a tree 1,500 folders deep finds the model at the bottom (no RecursionError)."""
    root = tmp_path / "deep"
    os.mkdir(root)
    path = str(root)
    for _ in range(1500):
        path = os.path.join(path, "d")
        os.mkdir(path)
    model = Path(path) / "model"
    os.mkdir(model)
    for item in (FIXTURES / "llama-safetensors").iterdir():
        (model / item.name).write_bytes(item.read_bytes())
    try:
        result = hfconv("validate", str(root), "--recursive", "--format", "json")
        assert b"RecursionError" not in result.stderr and b"Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.returncode == 0, result.stderr[-2000:]
        reports = json.loads(result.stdout)
        assert [r["path"] for r in reports] == [str(model)] and reports[0]["ok"]
    finally:  # pytest's own clean-up recurses: empty the tree from the bottom up
        for item in model.iterdir():
            item.unlink()
        model.rmdir()
        while path != str(root):
            os.rmdir(path)
            path = os.path.dirname(path)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
