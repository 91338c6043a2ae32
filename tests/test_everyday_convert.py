"""Everyday convert (issue 15): short dtype names, DST's parents made (and unmade on failure),
the config's own dtype key, plural forms, --force that refuses to delete a folder hfconv did
not write, a free-space message that says what it needs, progress lines in a log, escaped
names, validate's finding style, and an HTML page that says INVALID when it is.

Everything runs through the CLI in a subprocess on the committed fixtures (written by torch,
safetensors and sentencepiece); faults are real (RLIMIT_FSIZE, a sparse file larger than the
free disk).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from helpers import copy_fixture

ROOT = Path(__file__).resolve().parent.parent


def hfconv(*args: str, cwd: Path, env: dict | None = None, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180, preexec_fn=preexec,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def no_traceback(run: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]


def test_short_dtype_parents_dtype_key_plurals_progress_and_escaped_names(tmp_path):
    """--dtype bf16; DST's missing parents created; a transformers-5 config (only `dtype`) keeps
    only `dtype`; `1 tensor` in shard lines; progress lines in a log over the model's bytes; a
    SRC name with a newline does not forge a line."""
    src = copy_fixture(tmp_path, "llama-bin")
    src = src.rename(tmp_path / "src\nconverted forged -> x")
    config = json.loads((src / "config.json").read_text())
    config["dtype"] = config.pop("torch_dtype")
    (src / "config.json").write_text(json.dumps(config, indent=2))
    dst = tmp_path / "new" / "deeper" / "out"
    run = hfconv("convert", str(src), str(dst), "--dtype", "bf16", "--max-shard-size", "30KB", cwd=tmp_path,
                 env={"HFCONV_PROGRESS_INTERVAL": "0"})
    no_traceback(run)
    assert run.returncode == 0, run.stdout + run.stderr
    written = json.loads((dst / "config.json").read_text())
    assert written["dtype"] == "bfloat16" and "torch_dtype" not in written, written
    assert not re.search(r"\b1 tensors\b", run.stdout), run.stdout
    assert re.search(r"\b1 tensor\b", run.stdout), run.stdout  # the embedding is a shard of its own
    assert "dtype     21 tensors cast to bfloat16" in run.stdout
    assert not any(line.startswith("converted forged") for line in run.stdout.splitlines()), run.stdout
    assert "src\\nconverted forged" in run.stdout
    # A line every HFCONV_PROGRESS_INTERVAL seconds on a stderr that is not a terminal, over the
    # model's bytes (not twice them: write and verify count half each).
    model_bytes = re.search(r"bytes     (\S+ \S+) \(", run.stdout).group(1)
    lines = [line for line in run.stderr.splitlines() if line.startswith("convert (write+verify): ")]
    assert lines, run.stderr
    assert all(f" of {model_bytes} (" in line and "/s" in line for line in lines), (model_bytes, lines)

    # A config with both keys gets both; the old torch_dtype-only config stays torch_dtype-only,
    # and --dtype half / --quiet (no progress lines at all).
    src2 = copy_fixture(tmp_path, "llama-safetensors")
    both = json.loads((src2 / "config.json").read_text())
    both["dtype"] = both["torch_dtype"]
    (src2 / "config.json").write_text(json.dumps(both, indent=2))
    (tmp_path / "empty").mkdir()  # an empty DST: --force may replace it
    run = hfconv("convert", str(src2), str(tmp_path / "empty"), "--dtype", "half", "--force", "--quiet",
                 cwd=tmp_path, env={"HFCONV_PROGRESS_INTERVAL": "0"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr == "", run.stderr
    written = json.loads((tmp_path / "empty" / "config.json").read_text())
    assert written["dtype"] == written["torch_dtype"] == "float16", written


def test_failed_conversion_removes_the_parents_it_created(tmp_path):
    """A write that fails (RLIMIT_FSIZE: a full disk) leaves neither DST nor the parents convert made."""
    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    run = hfconv("convert", str(ROOT / "fixtures" / "llama-bin"), str(tmp_path / "made" / "by" / "out"),
                 cwd=tmp_path, preexec=small_files)
    no_traceback(run)
    assert run.returncode == 1 and "HFC714" in run.stderr, run.stderr
    assert run.stderr.rstrip().endswith("."), run.stderr  # the banner is a sentence
    assert not (tmp_path / "made").exists(), list(tmp_path.rglob("*"))


def test_force_refuses_a_folder_hfconv_did_not_write(tmp_path):
    """--force on a home directory (by a typo) or a folder of other files: exit 2, nothing deleted."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export X=1\n")
    (home / "model.safetensors").write_bytes(b"not really")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("\\documentclass{article}\n")
    for target in (home, notes):
        run = hfconv("convert", str(ROOT / "fixtures" / "llama-safetensors"), str(target), "--force", cwd=tmp_path)
        no_traceback(run)
        assert run.returncode == 2, run.stdout + run.stderr
        assert "--force refuses to replace" in run.stderr, run.stderr
    assert ".bashrc" in run.stderr or "not a folder hfconv wrote" in run.stderr
    assert (home / ".bashrc").exists() and (notes / "thesis.tex").exists()


def test_free_space_message_says_what_it_needs(tmp_path):
    """A source larger than the free disk (a sparse safetensors file): the message gives the
    output, the margin and the free space; the error banner escapes the folder name."""
    src = copy_fixture(tmp_path, "llama-safetensors")
    free = shutil.disk_usage(tmp_path).free
    count = (free + (8 << 30)) // 4
    header = json.dumps({"huge": {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    big = src / "extra.safetensors"
    with open(big, "wb") as handle:  # the safetensors layout; the data is a hole
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + count * 4)
    (src / "model.safetensors").rename(src / "model-00001-of-00002.safetensors")
    big.rename(src / "model-00002-of-00002.safetensors")
    parent = tmp_path / "disk\nerror   HFC000 forged"
    parent.mkdir()
    run = hfconv("convert", str(src), str(parent / "out"), "--no-verify", cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 1, run.stdout + run.stderr
    first = run.stderr.splitlines()[0]
    assert first.startswith("conversion failed (HFC705): DST needs "), run.stderr
    assert re.search(r"needs \d+\.\d GB \+ \d+\.\d [MG]B margin \(.*\), \d+\.\d GB free on ", first), first
    assert not any(line.startswith("error   HFC000") for line in run.stderr.splitlines()), run.stderr
    assert not (parent / "out").exists()


def test_allow_invalid_output_html_says_invalid(tmp_path):
    """--allow-invalid-output --format html: the page shows the INVALID verdict and the findings."""
    src = copy_fixture(tmp_path, "llama-safetensors")
    generation = json.loads((src / "generation_config.json").read_text())
    generation["top_p"] = 1.5
    (src / "generation_config.json").write_text(json.dumps(generation))
    page = tmp_path / "page.html"
    run = hfconv("convert", str(src), str(tmp_path / "out"), "--allow-invalid-output", "--format", "html",
                 "-o", str(page), cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 1, run.stdout + run.stderr
    html = page.read_text()
    assert "INVALID" in html and "CONVERTED" not in html, html[:2000]
    assert "HFC405" in html and "top_p" in html
    assert run.stderr.rstrip().endswith("--allow-invalid-output)."), run.stderr
