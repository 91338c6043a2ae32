"""Bounded work on the folder's .py files (issue 16): a file under the 5 MB size cap can still
cost gigabytes as a syntax tree (4.9 MB of tiny tuples: 1.9 GB). The tokens are counted first and
a file over the cap is a finding naming it (HFC812), within 10 s and 500 MB of the run's baseline.

Every case runs the command line in a subprocess under a 2 GiB address-space cap and a timeout;
the memory is the peak RSS of that process alone, measured by a wrapper whose only child it is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
AS_LIMIT = 2 * 2**30
_WRAPPER = f"""
import json, resource, subprocess, sys
def cap():
    resource.setrlimit(resource.RLIMIT_AS, ({AS_LIMIT}, {AS_LIMIT}))
proc = subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", *sys.argv[1:]],
                      capture_output=True, text=True, preexec_fn=cap)
print(json.dumps({{"status": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
                  "rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}}))
"""


def validate_cli(folder: Path, *args: str, timeout: float = 60) -> tuple[dict, int, float, int]:
    """(JSON report, exit status, wall seconds, peak RSS in bytes) of ``hfconv validate``."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _WRAPPER, "validate", str(folder), "--format", "json", *args],
                          capture_output=True, text=True, timeout=timeout, check=True, cwd=folder.parent)
    wall = time.monotonic() - start
    result = json.loads(done.stdout)
    assert "Traceback" not in result["stderr"], result["stderr"]
    return json.loads(result["stdout"]), result["status"], wall, result["rss_kb"] * 1024


def tuples_file(path: Path, size: int = 4_900_000) -> None:
    """``x = [(0,), (1,), ...]``: a valid module of ``size`` bytes (under the 5 MB source cap)."""
    body = ",".join(f"({i % 10},)" for i in range((size - 8) // 5))
    path.write_text(f"x = [{body}]\n")


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory) -> int:
    folder = tmp_path_factory.mktemp("base") / "llama"
    shutil.copytree(FIXTURES / "llama-safetensors", folder)
    (folder / "modeling_x.py").write_text("x = [(1,), (2,)]\n")
    report, status, _wall, rss = validate_cli(folder)
    assert status == 0, report["findings"]
    return rss


@pytest.mark.parametrize("name,referenced", [("modeling_x.py", True), ("helpers.py", False)])
def test_py_file_of_tiny_tuples_is_not_parsed(tmp_path, baseline_rss, name, referenced):
    folder = tmp_path / "llama"
    shutil.copytree(FIXTURES / "llama-safetensors", folder)
    tuples_file(folder / name)
    assert (folder / name).stat().st_size < 5_000_000
    if referenced:
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
        (folder / "config.json").write_text(json.dumps(config))
    report, status, wall, rss = validate_cli(folder)
    assert wall < 10, wall
    assert rss < baseline_rss + 500 * 2**20, (rss, baseline_rss)
    [found] = [f for f in report["findings"] if f["code"] == "HFC812"]
    assert found["file"] == name and found["severity"] == "warning"
    assert f"{name} holds over 300000 tokens, more than hfconv parses per file (300000)" in found["message"]
    assert not [f for f in report["findings"] if f["code"] in ("HFC802", "HFC803")]  # not claimed either way
    assert status == 0


def test_small_py_files_are_still_scanned(tmp_path):
    """The cap leaves real code alone: a risky call in a normal file is still found."""
    folder = tmp_path / "llama"
    shutil.copytree(FIXTURES / "llama-safetensors", folder)
    lines = [f"def f{i}(a, b):\n    return [(a, b, {i})] * 2\n" for i in range(3000)]
    (folder / "modeling_x.py").write_text("import os\n" + "".join(lines) + "os.system('true')\n")
    report, status, wall, _rss = validate_cli(folder)
    assert wall < 10, wall
    assert [f["code"] for f in report["findings"] if f["code"].startswith("HFC8")] == ["HFC804"]
    assert any("line 6002: calls os.system" in f["message"] for f in report["findings"])
