"""The CLI as a gate (issue 17, points 12-14, 17, 18): usage errors are exit 2, outputs go where they
are asked to and nowhere else, several folders give one array, and no OSError is a traceback.

Every case runs the console entry point in a subprocess, on copies of the real fixtures.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT, copy_fixture

ENTRY = "from hfconv.cli import run; run()"
MISSING_SHARD = "model-00002-of-00003.safetensors"


def hfconv(*args: str, cwd: Path | None = None, env: dict | None = None, preexec=None, timeout: float = 120
           ) -> subprocess.CompletedProcess:
    """``hfconv ARGS`` as the console script runs it, output captured as bytes."""
    environment = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1")
    environment.update(env or {})
    return subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=cwd, env=environment, capture_output=True,
                          timeout=timeout, preexec_fn=preexec)


def text(out: bytes) -> str:
    return out.decode("utf-8")


@pytest.fixture()
def broken(tmp_path: Path) -> Path:
    """A sharded safetensors folder missing one of its shards: several errors."""
    folder = copy_fixture(tmp_path, "llama-safetensors-sharded")
    (folder / MISSING_SHARD).unlink()
    return folder


def assert_one_line_usage_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    err = text(result.stderr)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


# --- 12: --select / --ignore with an unknown code ---------------------------------------------------

@pytest.mark.parametrize("option, value, named", [
    ("--select", "HFC9999", "HFC9999"),
    ("--select", "foo", "foo"),
    ("--select", "HFC3,hfc88", "hfc88"),
    ("--ignore", "HFC99", "HFC99"),
])
def test_unknown_code_or_prefix_is_a_usage_error(broken: Path, option: str, value: str, named: str) -> None:
    result = hfconv("validate", str(broken), option, value)
    assert_one_line_usage_error(result, option, named, "not a finding code")
    assert result.stdout == b""


def test_known_codes_and_prefixes_still_filter(broken: Path) -> None:
    assert hfconv("validate", str(broken), "--select", "hfc3", "--ignore", "HFC0").returncode == 1
    # HFC7xx codes are registered by the conversion and loading modules: valid here too
    assert hfconv("validate", str(broken), "--select", "HFC7").returncode == 0


def test_code_registry_is_complete_and_needs_no_torch() -> None:
    """Every code registered anywhere in the package is known to --select, without importing torch."""
    program = ("import json, sys\nfrom hfconv.cli import known_codes\n"
               "print(json.dumps({'codes': sorted(known_codes()), 'torch': 'torch' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, check=True, timeout=120)
    data = json.loads(out.stdout)
    assert data["torch"] is False
    registered = set()
    for source in (ROOT / "hfconv").rglob("*.py"):
        registered.update(re.findall(r'register\(\s*"(HFC\d{3})"', source.read_text(encoding="utf-8")))
    assert registered and registered <= set(data["codes"]), sorted(registered - set(data["codes"]))


# --- 13: a check the user asked for that cannot run ---------------------------------------------------

@pytest.fixture()
def no_transformers(tmp_path: Path) -> dict:
    """An environment where ``import transformers`` fails for real: a package that raises on import
    shadows the installed one."""
    shadow = tmp_path / "shadow" / "transformers"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("transformers is shadowed by the test")\n')
    path = os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def test_reference_transformers_without_transformers_is_exit_2(tmp_path: Path, no_transformers: dict) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    result = hfconv("validate", str(folder), "--reference", "transformers", env=no_transformers)
    assert_one_line_usage_error(result, "--reference transformers", "transformers", "pip install transformers")
    # --reference auto falls back to the rule table, as before
    auto = hfconv("validate", str(folder), "--reference", "auto", env=no_transformers)
    assert auto.returncode == 0, auto.stderr
    assert "OK" in text(auto.stdout)


def test_forward_without_transformers_is_exit_2(tmp_path: Path, no_transformers: dict) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    result = hfconv("load-test", str(folder), "--forward", env=no_transformers)
    assert_one_line_usage_error(result, "--forward", "pip install transformers accelerate")


# --- 14: --output -------------------------------------------------------------------------------------

def test_output_into_a_fifo_writes_into_it(tmp_path: Path) -> None:
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as handle:
            received.append(handle.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result = hfconv("validate", str(FIXTURES / "llama-safetensors"), "-o", str(fifo), timeout=60)
    if reader.is_alive():  # nothing opened the FIFO for writing: unblock the reader
        with open(fifo, "wb"):
            pass
    reader.join(10)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert received and b"OK: 0 error(s)" in received[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.fifo"]


def test_output_through_a_symlink_writes_its_target_and_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "validate.json"
    target.parent.mkdir()
    target.write_text("old report\n")
    target.chmod(0o640)
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    result = hfconv("validate", str(FIXTURES / "llama-safetensors"), "--format", "json", "-o", str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["ok"] is True
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["validate.json"]  # no temporary file left


def test_output_regular_file_replaced_atomically_keeping_its_mode(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    report.write_text("old\n")
    report.chmod(0o600)
    result = hfconv("inspect", str(FIXTURES / "llama-bin"), "-o", str(report))
    assert result.returncode == 0, result.stderr
    assert "llama-bin" in report.read_text()
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_output_into_a_missing_folder_is_exit_2_before_any_work(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "report.json"
    result = hfconv("validate", str(FIXTURES / "llama-safetensors"), "-o", str(missing))
    assert_one_line_usage_error(result, "does not exist")
    dst = tmp_path / "converted"
    result = hfconv("convert", str(FIXTURES / "llama-bin"), str(dst), "-o", str(missing))
    assert_one_line_usage_error(result, "does not exist")
    assert not dst.exists(), "convert created DST before refusing its --output"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    result = hfconv("inspect", str(FIXTURES / "llama-bin"), "-o", str(missing))
    assert_one_line_usage_error(result, "does not exist")
    result = hfconv("load-test", str(FIXTURES / "llama-bin"), "-o", str(missing))
    assert_one_line_usage_error(result, "does not exist")


def test_output_inside_a_folder_the_command_reads_is_refused(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    config = (folder / "config.json").read_bytes()
    alias = tmp_path / "alias"
    alias.symlink_to(folder)
    for args in (
        ["validate", str(folder), "-o", str(folder / "config.json")],
        ["validate", str(FIXTURES / "llama-bin"), str(folder), "-o", str(folder / "report.txt")],
        ["validate", str(folder), "-o", str(alias / "config.json")],  # the same folder through a symlink
        ["validate", str(alias), "--format", "json", "-o", str(folder / "report.json")],
        ["inspect", str(folder), "-o", str(folder / "config.json")],
        ["load-test", str(folder), "-o", str(folder / "load.json")],
        ["convert", str(folder), str(tmp_path / "out"), "-o", str(folder / "convert.txt")],
    ):
        result = hfconv(*args)
        assert_one_line_usage_error(result, "inside")
    assert (folder / "config.json").read_bytes() == config
    shipped = sorted(p.name for p in (FIXTURES / "llama-safetensors").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == shipped
    assert not (tmp_path / "out").exists()
    # beside the folder is fine
    ok = hfconv("validate", str(folder), "-o", str(tmp_path / "folder-report.txt"))
    assert ok.returncode == 0 and "OK" in (tmp_path / "folder-report.txt").read_text()


# --- 17: several folders, --recursive, -o verdict -----------------------------------------------------

def test_recursive_json_is_always_an_array(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    copy_fixture(root, "llama-safetensors")
    result = hfconv("validate", str(root), "--recursive", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, list) and len(data) == 1 and data[0]["ok"] is True
    # several PATHs: an array (as before); one folder without --recursive: one object (as before)
    both = json.loads(hfconv("validate", str(FIXTURES / "llama-bin"), str(FIXTURES / "llama-bin"),
                             "--format", "json").stdout)
    assert isinstance(both, list) and len(both) == 2
    single = json.loads(hfconv("validate", str(FIXTURES / "llama-bin"), "--format", "json").stdout)
    assert isinstance(single, dict)


def test_recursive_text_ends_with_folder_and_failure_counts(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    copy_fixture(root, "llama-bin")
    broken = copy_fixture(root, "llama-safetensors-sharded")
    (broken / MISSING_SHARD).unlink()
    result = hfconv("validate", str(root), "--recursive")
    assert result.returncode == 1
    assert text(result.stdout).rstrip("\n").splitlines()[-1] == "2 folders, 1 failed"


def test_validate_output_says_the_verdict_on_stderr(broken: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = hfconv("validate", str(broken), "--format", "json", "-o", str(report))
    assert result.returncode == 1
    assert result.stdout == b""
    lines = text(result.stderr).splitlines()
    assert len(lines) == 1 and "FAILED" in lines[0] and str(broken) in lines[0], lines
    assert json.loads(report.read_text())["ok"] is False
    good = hfconv("validate", str(FIXTURES / "llama-bin"), "-o", str(tmp_path / "good.txt"))
    assert good.returncode == 0 and good.stderr == b""


# --- 18: inspect on something that is not a model folder -------------------------------------------

def test_inspect_empty_folder_fifo_and_dangling_symlinks(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (dangling / name).symlink_to(tmp_path / "gone" / name)
    (dangling / "pytorch_model.bin").symlink_to("missing-inside.bin")
    for folder, fmt in ((empty, "text"), (empty, "json"), (dangling, "text")):
        result = hfconv("inspect", str(folder), "--format", fmt)
        assert result.returncode == 1, (folder, fmt, result.stdout)
        assert result.stdout == b""
        lines = text(result.stderr).splitlines()
        assert len(lines) == 1 and "no weights and no config" in lines[0], lines
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    result = hfconv("inspect", str(fifo), timeout=30)
    assert_one_line_usage_error(result, "is not a folder (a FIFO)")
    # a real folder still inspects
    assert hfconv("inspect", str(FIXTURES / "llama-bin")).returncode == 0


# --- no OSError as a traceback; python -m hfconv ------------------------------------------------------

def _small_file_limit() -> None:
    """In the child: files may not grow past 300 bytes, and crossing it is EFBIG, not a SIGXFSZ kill."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))


def test_os_error_writing_the_output_is_one_line(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = hfconv("validate", str(FIXTURES / "llama-bin"), "--format", "json", "-o", str(report),
                    preexec=_small_file_limit)
    assert result.returncode == 1, (result.stdout, result.stderr)
    err = text(result.stderr)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and "report.json" in lines[0] and "File too large" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial report, no temporary file


def test_python_dash_m_hfconv(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hfconv", "validate", str(FIXTURES / "llama-bin")],
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert b"OK: 0 error(s)" in result.stdout


# --- SIGINT / SIGTERM: 130 / 143, for the commands convert does not handle itself -------------------

def _wait_blocked_on_fifo(process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the process sleeps in its open() of the FIFO (no reader yet): its report is complete,
    only the write is left. Where /proc does not say where a process sleeps, a generous wait."""
    import time

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        assert process.poll() is None, process.stderr.read()
        try:
            wchan = Path(f"/proc/{process.pid}/wchan").read_text()
        except OSError:
            wchan = ""
        if "partner" in wchan or "fifo" in wchan:
            return
        if wchan == "" or (wchan == "0" and time.monotonic() - start > 15):  # not informative here
            time.sleep(5)
            return
        time.sleep(0.05)
    raise AssertionError("the command never reached its output")


@pytest.mark.parametrize("command, signum, code", [
    ("validate", signal.SIGTERM, 143),
    ("inspect", signal.SIGINT, 130),
])
def test_signal_exit_codes(tmp_path: Path, command: str, signum: int, code: int) -> None:
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    process = subprocess.Popen([sys.executable, "-c", ENTRY, command, str(FIXTURES / "llama-bin"), "-o", str(fifo)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        _wait_blocked_on_fifo(process)
        process.send_signal(signum)
        assert process.wait(30) == code
        err = process.stderr.read().decode()
        assert "Traceback" not in err and "interrupted" in err, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.fifo"]
