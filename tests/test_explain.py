"""``hfconv explain CODE`` and ``hfconv codes`` (issue 12): the registry on the command line, text
and JSON; a code that is not one is exit 2 naming the nearest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hfconv.findings import all_codes


def hfconv(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "hfconv", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_explain_prints_title_severity_why_fix_example() -> None:
    entry = all_codes()["HFC304"]
    result = hfconv("explain", "hfc304")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"HFC304 ({entry.severity.value}): {entry.title}"
    flat = " ".join(line.strip() for line in lines)
    for label, text in (("Why:", entry.why), ("Fix:", entry.fix), ("Example:", entry.example)):
        assert f"{label} {text}" in flat
    assert max(len(line) for line in lines) <= 100


def test_codes_lists_every_code_as_text_and_json() -> None:
    registry = all_codes()
    as_json = hfconv("codes", "--format", "json")
    assert as_json.returncode == 0
    entries = json.loads(as_json.stdout)
    assert [e["code"] for e in entries] == list(registry)
    assert entries[0] == {"code": entries[0]["code"], **{k: entries[0][k] for k in
                                                          ("severity", "title", "why", "fix", "example")}}
    first = registry[entries[0]["code"]]
    assert (entries[0]["title"], entries[0]["fix"], entries[0]["severity"]) == (first.title, first.fix,
                                                                                first.severity.value)
    as_text = hfconv("codes", "HFC3")
    assert as_text.returncode == 0
    listed = [line.split()[0] for line in as_text.stdout.splitlines()]
    assert listed == [code for code in registry if code.startswith("HFC3")]
    assert f"HFC304  {registry['HFC304'].severity.value:<7}  {registry['HFC304'].title}" in as_text.stdout


def test_unknown_code_is_exit_2_with_close_matches() -> None:
    result = hfconv("explain", "HFC3O4")  # a letter O for the zero
    assert result.returncode == 2 and result.stdout == ""
    assert "HFC3O4 is not a finding code; did you mean HFC304" in result.stderr
    prefix = hfconv("explain", "HFC30")
    assert prefix.returncode == 2 and "did you mean HFC301, HFC302" in prefix.stderr
