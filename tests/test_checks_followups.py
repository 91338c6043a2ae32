"""Follow-ups in the checks layer (after issues 16/17), each through the real CLI on real folders.

1. An index listing 300,000 names validates in seconds (weight_map entries are checked by a plain
   loop, not jsonschema).
2. Every check is capped: at most 1,000 findings per code, then one summary finding.
3. A .bin whose pickle walk stops early says why, in words (not "<pickle walk stopped: ...>").
4. Chat templates run in a forked child where fork is available, with the same caps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from helpers import copy_fixture

_CLI = [sys.executable, "-c", "from hfconv.cli import run; run()"]


def _validate(folder: Path, *args: str, timeout: float = 120) -> tuple[int, dict, float]:
    start = time.monotonic()
    proc = subprocess.run([*_CLI, "validate", str(folder), "--format", "json", *args],
                          capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - start
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, report, seconds


_TIMED = r"""
import json, resource, subprocess, sys
before = resource.getrusage(resource.RUSAGE_CHILDREN)
proc = subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", *sys.argv[1:]],
                      capture_output=True, text=True, timeout=120)
after = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr[-3000:], "cpu": cpu}))
"""


def _validate_cpu(folder: Path, *args: str) -> tuple[int, dict, float]:
    """As _validate, with the CPU seconds of hfconv (and every process it started) instead of wall time."""
    proc = subprocess.run([sys.executable, "-c", _TIMED, "validate", str(folder), "--format", "json", *args],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout)
    assert "Traceback" not in run["stderr"], run["stderr"]
    return run["rc"], json.loads(run["stdout"]), run["cpu"]


def _codes(report: dict) -> list[str]:
    return [f["code"] for f in report["findings"]]


# --- 1. a 300k-entry weight_map ------------------------------------------------------------------
def test_huge_index_validates_in_seconds(tmp_path):
    folder = copy_fixture(tmp_path, "llama-safetensors-sharded")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    for i in range(300_000):
        index["weight_map"][f"model.extra.{i}.weight"] = shards[i % len(shards)]
    index_path.write_text(json.dumps(index))

    rc, report, seconds = _validate_cpu(folder)
    assert rc == 1
    codes = _codes(report)
    assert codes.count("HFC301") == 1001  # 1,000 listed, then one summary
    [summary] = [f for f in report["findings"] if "more HFC301" in f["message"]]
    assert summary["message"].startswith("299,000 more HFC301 finding(s)"), summary  # not capped twice
    assert "HFC406" not in codes  # every entry is a shard file name
    # CPU seconds (wall time on 2 busy shared cores is about twice that): before 3.7-4.8 s, jsonschema
    # descending into 300,000 entries (and 300,000 HFC301 findings built to be counted); now 1.1-1.3 s.
    assert seconds < 3.0, seconds


def test_bad_weight_map_entries_keep_their_schema_findings(tmp_path):
    """Entries that are not strings are the read stage's HFC307; an empty shard name is HFC406's."""
    folder = copy_fixture(tmp_path, "llama-safetensors-sharded")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    assert "lm_head.weight" in index["weight_map"]
    index["weight_map"]["lm_head.weight"] = ""
    index["weight_map"]["odd name"] = ""
    index_path.write_text(json.dumps(index))

    rc, report, _ = _validate(folder, "--select", "HFC406")
    assert rc == 1
    messages = sorted(f["message"] for f in report["findings"] if f["code"] == "HFC406")
    assert messages == [
        f"model.safetensors.index.json: $.weight_map[{name!r}] must be a shard file name, not an empty string; "
        "regenerate the index (hfconv convert writes one)" for name in ("lm_head.weight", "odd name")
    ]


# --- 2. every check capped -----------------------------------------------------------------------
def test_every_check_caps_its_findings(tmp_path):
    """The shapes check reports each tensor that is not part of the model (HFC603); 1,500 of them
    give 1,000 findings and one that counts the other 500."""
    from safetensors.numpy import load_file, save_file

    folder = copy_fixture(tmp_path, "llama-safetensors")
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    for i in range(1500):
        tensors[f"model.layers.0.extra_{i}.weight"] = np.zeros((2,), dtype=np.float32)
    save_file(tensors, weights, metadata={"format": "pt"})

    rc, report, _ = _validate(folder)
    assert rc == 0  # HFC603 is a warning
    hits = [f for f in report["findings"] if f["code"] == "HFC603"]
    assert len(hits) == 1001
    [summary] = [f for f in hits if "more HFC603" in f["message"]]
    assert summary["message"].startswith("500 more HFC603 finding(s)")


# --- 3. a leftover whose pickle walk stops says why, in words ------------------------------------
def test_leftover_walk_that_stops_says_why_in_words(tmp_path):
    import pickle

    start = pickle.dumps({"output_dir": "run"}, protocol=2)[:-1]  # no STOP yet
    cases = {
        "malformed": (start + b"\xff.", "the pickle is malformed", "unknown opcode 0xff at byte"),
        "cut-short": (start, "the pickle is cut short", "pickle ends without STOP"),
        "over-the-cap": (start + b"N0" * 2_100_000 + b".", "stopped at its limit of 2000000 opcodes",
                         "more than 2000000 opcodes"),
    }
    folders = []
    for name, (data, _, _) in cases.items():
        folder = copy_fixture(tmp_path / name, "llama-safetensors")
        (folder / "training_args.bin").write_bytes(data)
        folders.append(folder)
    proc = subprocess.run([*_CLI, "validate", *map(str, folders), "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    for report, (why, detail) in zip(json.loads(proc.stdout), ((w, d) for _, w, d in cases.values())):
        [leftover] = [f for f in report["findings"] if f["code"] == "HFC011"]
        assert leftover["severity"] == "error" and leftover["file"] == "training_args.bin"
        message = leftover["message"]
        assert "<pickle walk stopped" not in message and "which no training run writes" not in message, message
        assert why in message and detail in message and "do not torch.load it" in message, message


# --- 4. chat templates in a forked child -----------------------------------------------------------
_TEMPLATES = {
    # template: (code expected, or None)
    "{% for m in messages %}<s>{{ m['content'] }}<unk>\n{% endfor %}": "HFC513",  # turn ends with <unk>, not eos
    "{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}": None,
    "{% for m in messages %}{{ m['content'] }}{% endfor": "HFC512",
    "{{ messages.__class__ }}": "HFC518",
    "{{ 'x'|center(999999999) }}{% for m in messages %}{{ m['content'] }}{% endfor %}": "HFC523",
}


def test_forked_checks_agree_with_spawned_ones():
    """The fork (Linux) and the fresh-Python fallback give the same verdicts."""
    from hfconv.checks.chat_template import ChatTemplate, run_child

    templates = [ChatTemplate("tokenizer_config.json", f"t{i}", source) for i, source in enumerate(_TEMPLATES)]
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    forked = run_child(templates, 0, specials, fork=True)
    spawned = run_child(templates, 0, specials, fork=False)
    assert forked == spawned
    assert forked[1] is None and all(verdict.checked for verdict in forked[0])
    verdicts = forked[0]
    assert verdicts[0].after == "<unk>\n" and verdicts[2].error and verdicts[3].internal


def test_parallel_folders_keep_their_chat_template_findings(tmp_path):
    """--jobs 4: forking from a process with several validate threads gives each folder its own findings."""
    folders = []
    for i, template in enumerate(_TEMPLATES):
        folder = copy_fixture(tmp_path / f"f{i}", "llama-safetensors")
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["chat_template"] = template
        config_path.write_text(json.dumps(config))
        folders.append(folder)
    proc = subprocess.run([*_CLI, "validate", *map(str, folders), "--jobs", "4", "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    reports = json.loads(proc.stdout)
    assert len(reports) == len(folders)
    for report, expected in zip(reports, _TEMPLATES.values()):
        codes = {f["code"] for f in report["findings"]} & {"HFC512", "HFC513", "HFC518", "HFC523"}
        assert codes == ({expected} if expected else set()), (report["path"], report["findings"])
