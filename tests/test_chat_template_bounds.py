"""Hostile chat templates through the real CLI under an address-space cap and a timeout (issue 16).

Each template is a few hundred bytes that would take minutes or gigabytes in jinja2 (nested loops
over literal lists, constant-folded format strings with huge widths, strings doubled in a loop,
huge joins, recursion). ``hfconv validate`` must finish under 10 s and 500 MB over its own baseline,
and say which cap a template hit (HFC523) instead of going silent or dying.
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

_LIMITED = r"""
import json, resource, subprocess, sys, time
cap = 2 << 30
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
start = time.monotonic()
proc = subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", *sys.argv[1:]],
                      capture_output=True, text=True, timeout=60)
print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr[-2000:],
                  "seconds": time.monotonic() - start,
                  "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""

NESTED_LITERAL_LOOPS = "".join("{%% for v%d in [0,1,2,3,4,5,6,7,8,9] %%}" % i for i in range(9)) + \
    "{% endfor %}" * 9
CONSTANT_FOLDED_FORMAT = "{{ '%999999999s' % 'x' }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
STRING_DOUBLING = ("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}"
                   "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
MACRO_DOUBLING = ("{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}"
                  "{{ d('x', 40) }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
HUGE_JOIN = "{{ range(100000)|join('x' * 100000) }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
HUGE_FORMAT_CALL = "{% for m in messages %}{{ '{:>999999999}'.format(m['content']) }}{% endfor %}"
FOLDED_FILTER = "{{ 'x'|center(999999999) }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
NESTED_RANGES = "{% for i in range(10**6) %}{% for j in range(10**6) %}{% endfor %}{% endfor %}"
RECURSION = "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"
REPEAT = "{{ 'x' * 10**9 }}{% for m in messages %}{{ m['content'] }}{% endfor %}"

CASES = {
    # name: (template, cap hfconv must name: "memory", "time", or None when it may just finish)
    "nested_literal_loops": (NESTED_LITERAL_LOOPS, "time"),
    "constant_folded_format": (CONSTANT_FOLDED_FORMAT, "memory"),
    "string_doubling": (STRING_DOUBLING, "memory"),
    "macro_doubling": (MACRO_DOUBLING, "memory"),
    "huge_join": (HUGE_JOIN, "memory"),
    "huge_format_call": (HUGE_FORMAT_CALL, "memory"),
    "folded_filter": (FOLDED_FILTER, "memory"),
    "nested_ranges": (NESTED_RANGES, None),
    "recursion": (RECURSION, None),
    "repeat": (REPEAT, "memory"),
}


def _folder(tmp_path: Path, template: str) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "llama-safetensors", folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["chat_template"] = template
    path.write_text(json.dumps(config), encoding="utf-8")
    return folder


def _validate(folder: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _LIMITED, "validate", str(folder), "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def baseline_kib(tmp_path_factory) -> int:
    folder = _folder(tmp_path_factory.mktemp("baseline"), "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return _validate(folder)["peak_kib"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_template_is_bounded_and_named(tmp_path, name, baseline_kib):
    template, cap = CASES[name]
    run = _validate(_folder(tmp_path, template))
    assert "Traceback" not in run["stderr"], run["stderr"]
    assert run["rc"] in (0, 1), run
    report = json.loads(run["stdout"])
    assert run["seconds"] < 10, f"{name}: {run['seconds']:.1f} s"
    assert run["peak_kib"] - baseline_kib < 500 * 1024, f"{name}: peak {run['peak_kib']} KiB"
    hits = [f for f in report["findings"] if f["code"] == "HFC523"]
    if cap is not None:
        assert hits, f"{name}: no HFC523 in {report['findings']}"
        assert f"{cap} cap" in hits[0]["message"], hits[0]["message"]
        assert hits[0]["file"] == "tokenizer_config.json"
        assert hits[0]["severity"] == ("error" if cap == "memory" else "warning")
        assert report["ok"] is (cap != "memory")


def test_real_chat_template_is_untouched(tmp_path):
    """The fixture's own template: no HFC523, and the probe still finds turn ends (HFC513 where they are wrong)."""
    start = time.monotonic()
    run = _validate(_folder(tmp_path, "{% for m in messages %}<s>{{ m['content'] }}<unk>\n{% endfor %}"))
    report = json.loads(run["stdout"])
    codes = [f["code"] for f in report["findings"]]
    assert "HFC523" not in codes and "HFC513" in codes
    assert time.monotonic() - start < 10
