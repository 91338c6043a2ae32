"""The hostile corpus through the real CLI, each case in a subprocess under hard limits.

For every case (tests/hostile/generate.py builds them, fresh per session) the case's commands
run in one subprocess (``_runner.py``) with an address-space limit (RLIMIT_AS), a CPU-time
limit, a wall-clock timeout, a private working directory, HOME and TMPDIR. Each case is its own
test (``test_hostile_case[name]``), so pytest-xdist spreads the corpus over its workers. The
assertions, per case:

* validate exits with the case's code and reports one of its codes as an error naming the
  file (and the tensor, global or key where there is one); convert refuses and leaves no DST;
  load-test refuses (with the case's code where it has one);
* the peak resident memory stays under a bound;
* no payload ran: the sentinel folder stays empty;
* nothing was written anywhere but the case's private temp folders: the whole corpus (every
  case's folder and the sentinels) and the parent of the corpus are unchanged, no file appeared
  in the repository and its fixtures are unchanged, and the temp folders are left empty.

The corpus is built once per session (per xdist worker) at collection time (the case names
parametrize the tests) in a private temporary folder that is removed at exit.

``test_payloads_are_live`` proves that the corpus is really hostile: a real
``torch.load(weights_only=False)`` on the live cases creates their sentinels.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .generate import SENTINELS, Case, build_corpus

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().parent / "_runner.py"

ADDRESS_SPACE_LIMIT = 2 << 30
"""RLIMIT_AS for every run: far below what the bombs in the corpus would need if a cap failed
(a 512 MB zip bomb, a 4 TiB view, an 8 GiB tensor, a 32 GB memo), and enough for Python,
hfconv and a torch import."""
PEAK_RSS_LIMIT = 256 << 20
"""Peak resident memory a validate-only run may reach (VmHWM, measured by the runner itself).
The largest input in the corpus is a 40 MB JSON file; the bombs would need gigabytes."""
PEAK_RSS_LIMIT_TORCH = 1 << 30
"""The same for runs that may import torch (convert, load-test): torch alone takes 200 MB+."""
CPU_SECONDS_LIMIT = 60
WALL_TIMEOUT = 90


def _limits() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS_LIMIT, CPU_SECONDS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.setsid()


def _snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """path -> (kind, size, mtime) of everything under root, symlinks not followed."""
    listing: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            listing[os.path.relpath(path, root)] = (st.st_mode >> 12, st.st_size if not os.path.isdir(path) else 0,
                                                    st.st_mtime_ns)
    return listing


_REPO_SKIP = (".git", "__pycache__", ".pytest_cache", ".hypothesis", "fuzz", ".venv", "venv", "build",
              "bench-data", ".mypy_cache", ".ruff_cache")  # tool caches: mypy and ruff may run meanwhile


def _commands(case: Case, work: Path) -> list[list[str]]:
    commands = []
    for command in case.commands:
        if command == "validate":
            commands.append(["validate", str(case.path), "--format", "json", *case.validate_args])
        elif command == "convert":
            commands.append(["convert", str(case.path), str(work / "dst"), "--quiet"])
        elif command == "load-test":
            commands.append(["load-test", str(case.path), "--format", "json", *case.load_test_args])
        else:  # pragma: no cover
            raise ValueError(command)
    return commands


def _run_case(case: Case, work_root: Path) -> dict:
    work = work_root / case.name
    for sub in ("home", "tmp", "cwd"):
        (work / sub).mkdir(parents=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work / "home"),
        "TMPDIR": str(work / "tmp"),
        "HF_HOME": str(work / "home" / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "NO_COLOR": "1",
        "OMP_NUM_THREADS": "1",
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(RUNNER), json.dumps(_commands(case, work))], cwd=work / "cwd",
                              env=env, capture_output=True, text=True, timeout=WALL_TIMEOUT, preexec_fn=_limits)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WALL_TIMEOUT} s", "work": work}
    wall = time.perf_counter() - started
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        return {"error": f"runner exited {proc.returncode} without a result:\n{proc.stderr[-3000:]}", "work": work}
    result.update(work=work, wall=wall)
    return result


def _build_once() -> tuple[Path, list[Case]]:
    """The corpus, built once per session when this module is collected (the case names
    parametrize the tests), in a private temporary folder removed at exit."""
    base = Path(tempfile.mkdtemp(prefix="hfconv-hostile-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    corpus = base / "corpus"
    corpus.mkdir()
    return base, build_corpus(corpus)


_BASE, _CASES = _build_once()


def _disk_state() -> dict:
    """What the commands must not change: the whole corpus (sentinels included), the corpus's
    parent folder and the repository."""
    return {"corpus": _snapshot(_BASE / "corpus"), "base": set(os.listdir(_BASE)) - {"work"},
            "repo": _snapshot(ROOT, _REPO_SKIP)}


def test_corpus_is_large_and_covers_every_rule() -> None:
    assert len(_CASES) >= 40
    rules = {c.rule.split(":")[0] for c in _CASES}
    for rule in ("allow-list only", "caps", "parser differential", "content, not extension", "containment",
                 "training leftovers", "chat template sandbox", "load-test sizes from headers"):
        assert rule in rules, rule


KNOWN_BUGS: dict[str, str] = {}
"""Case name -> why it fails today (a strict xfail: the fix turns it into a failure to remove)."""


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=pytest.mark.xfail(reason=KNOWN_BUGS[c.name],
                                                                                       strict=True))
                                  if c.name in KNOWN_BUGS else pytest.param(c, id=c.name) for c in _CASES])
def test_hostile_case(case: Case) -> None:
    before = _disk_state()
    result = _run_case(case, _BASE / "work")
    after = _disk_state()
    assert "error" not in result, result.get("error")
    runs = {r["args"][0]: r for r in result["results"]}

    # 1. validate: exit code, and a finding naming the file (and tensor/global/key).
    run = runs["validate"]
    assert run["exit"] == case.exit_code, (run["exit"], run["stdout"][-2000:], run["stderr"])
    report = json.loads(run["stdout"])
    failing = ("error", "warning") if "--strict" in case.validate_args else ("error",)
    errors = [f for f in report["findings"] if f["severity"] in failing]
    if case.codes:
        hits = [f for f in errors if f["code"] in case.codes and f["file"] == case.file]
        assert hits, f"expected {case.codes} on {case.file}, got {[(f['code'], f['file']) for f in errors]}"
        if case.detail is not None:
            assert any(case.detail in (f["tensor"] or "") or case.detail in f["message"] for f in hits), \
                f"{case.detail!r} not named in {[(f['tensor'], f['message']) for f in hits]}"
    else:
        assert not errors, errors

    # 2. convert: refused, and no DST (nor a temporary folder beside it) left behind; or, where
    #    the hostile file is a training leftover, converted without it.
    if "convert" in runs:
        run = runs["convert"]
        assert run["exit"] == case.convert_exit, (run["exit"], run["stdout"][-2000:], run["stderr"])
        made = sorted(p.name for p in result["work"].iterdir() if p.name.startswith("dst"))
        if case.convert_exit:
            assert made == [], made
        else:
            assert made == ["dst"], made
            assert case.weight_file not in os.listdir(result["work"] / "dst")

    # 3. load-test: refused before anything is loaded (or, for the offload case, loaded in place).
    if "load-test" in runs:
        run = runs["load-test"]
        assert run["exit"] == case.load_exit, (run["exit"], run["stdout"][-2000:], run["stderr"])
        load_report = json.loads(run["stdout"])
        codes = {f["code"] for f in load_report["findings"]}
        assert case.expect_load_code is None or case.expect_load_code in codes, codes
        devices = {d["device"] for d in load_report.get("devices") or ()}
        assert case.load_device is None or case.load_device in devices, devices

    # 4. bounded: memory measured by the runner; time by the caps in _limits / WALL_TIMEOUT.
    limit = PEAK_RSS_LIMIT if case.commands == ("validate",) else PEAK_RSS_LIMIT_TORCH
    assert result["peak_rss"] < limit, f"peak RSS {result['peak_rss'] >> 20} MB"

    # 5. nothing ran, nothing left behind in the private temp folders.
    assert not case.sentinel.exists()
    assert list((_BASE / "corpus" / SENTINELS).iterdir()) == [], "a payload ran"
    assert not any((result["work"] / "tmp").iterdir()), list((result["work"] / "tmp").iterdir())
    assert not any((result["work"] / "cwd").iterdir()), list((result["work"] / "cwd").iterdir())

    # 6. nothing written outside the private temp folders: the corpus (every case's folder, not
    #    only this one's) and its parent unchanged; no new path anywhere in the repository, and the
    #    fixtures (the commands' other inputs) unchanged. Edits to existing source files are not
    #    compared: people edit them while tests run.
    assert after["corpus"] == before["corpus"], "the commands modified the input folders"
    assert after["base"] == before["base"], after["base"] ^ before["base"]
    created = sorted(set(after["repo"]) - set(before["repo"]))
    assert not created, f"files created in the repository: {created[:10]}"
    fixtures = {k: v for k, v in before["repo"].items() if k.startswith("fixtures")}
    assert fixtures == {k: v for k, v in after["repo"].items() if k.startswith("fixtures")}


_LIVE_SCRIPT = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import torch
for path in json.loads(sys.argv[1]):
    try:
        torch.load(path, weights_only=False)
    except BaseException:
        pass
time.sleep(0.5)  # subprocess.Popen payloads touch their sentinel asynchronously
"""


def test_payloads_are_live(tmp_path: Path) -> None:
    """The corpus is not a strawman: torch.load runs the payloads that hfconv refused."""
    pytest.importorskip("torch")
    cases = [c for c in build_corpus(tmp_path / "corpus") if c.live]
    assert len(cases) >= 10
    files = [str(c.path / c.weight_file) for c in cases]
    (tmp_path / "cwd").mkdir()
    subprocess.run([sys.executable, "-c", _LIVE_SCRIPT, json.dumps(files)], cwd=tmp_path / "cwd", timeout=120,
                   capture_output=True, preexec_fn=_limits, env={**os.environ, "TMPDIR": str(tmp_path)})
    dead = [c.name for c in cases if not c.sentinel.exists()]
    assert not dead, f"payloads that torch.load did not run: {dead}"
    shutil.rmtree(tmp_path / "corpus" / SENTINELS)
