"""A signal during convert's last steps (DST renamed into place, the shards moved into SRC, the
temporary folder and the manifest created) never loses the old DST, never leaves a file behind,
never turns into an OSError, and the CLI says what it left.

The CLI's handler (:func:`hfconv.cli._common.on_signal`) raises KeyboardInterrupt between any two
bytecodes of the main thread; here it is called, as the signal would call it, at every bytecode
of the step in turn (sys.settrace, as tests/test_interrupted_open.py does). Inside
:func:`hfconv.interrupts.uninterrupted` it defers the interrupt to the section's end.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from click.testing import CliRunner

from hfconv import interrupts
from hfconv.cli import _common
from hfconv.cli import main as cli_main
from hfconv.conversion import in_place, staging

from helpers import FIXTURES, interrupt_at, walk_interrupts


def _module_files(*modules: Any) -> set[str]:
    return {os.path.normcase(m.__file__) for m in modules}


@pytest.fixture(autouse=True)
def _tempfile_names_made() -> None:
    """tempfile makes its name generator once, under a lock taken outside a ``try``: an interrupt
    there (old code) would hang the next test, not fail it."""
    import tempfile

    tempfile._get_candidate_names()  # type: ignore[attr-defined]


def _in(*modules: Any) -> Callable[[FrameType], bool]:
    files = _module_files(*modules)
    return lambda frame: os.path.normcase(frame.f_code.co_filename) in files


# --- DST renamed into place (with force: the old DST moved aside, then removed) ----------------

def _folder(path: Path, content: str) -> Path:
    path.mkdir()
    (path / "model.safetensors").write_text(content)
    return path


@pytest.mark.parametrize("force", [True, False])
def test_a_signal_anywhere_in_the_rename_into_place_keeps_one_whole_dst(tmp_path: Path, force: bool) -> None:
    import shutil
    import tempfile

    counts = _in(staging, interrupts, os, tempfile, shutil)

    def run(at: int) -> tuple[bool, BaseException | None]:
        parent = tmp_path / str(at)
        parent.mkdir()
        dst, tmp = parent / "out", _folder(parent / ".hfconv-tmp", "new")
        if force:
            _folder(dst, "old")
        fired, raised = interrupt_at(at, functools.partial(staging.install, str(tmp), str(dst), force), counts)
        # The new DST in place (the interrupt came after the rename), or the old one and the
        # temporary folder (the caller removes it): never no DST, never the old one left aside.
        names = sorted(p.name for p in parent.iterdir())
        if tmp.exists():
            assert fired and names == ([".hfconv-tmp", "out"] if force else [".hfconv-tmp"]), (at, names)
            assert not force or (dst / "model.safetensors").read_text() == "old"
        else:
            assert names == ["out"] and (dst / "model.safetensors").read_text() == "new", (at, names)
        shutil.rmtree(parent)
        return fired, raised

    assert walk_interrupts(run) >= (100 if force else 10)  # the whole step was walked


# --- in place: each shard renamed into SRC and recorded for the roll-back ----------------------

def test_a_signal_anywhere_in_the_move_into_src_leaves_no_unrecorded_file(tmp_path: Path) -> None:
    import shutil

    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json"]
    def run(at: int) -> tuple[bool, BaseException | None]:
        root, tmp = tmp_path / str(at), tmp_path / str(at) / ".hfconv-tmp"
        tmp.mkdir(parents=True)
        for name in names:
            (tmp / name).write_text(name)
        moved: list[str] = []
        fired, raised = interrupt_at(at, functools.partial(in_place._move_into, str(tmp), str(root), names,
                                                            moved, False),
                                      _in(in_place, interrupts, os))
        in_src = sorted(p.name for p in root.iterdir() if p.name != ".hfconv-tmp")
        assert in_src == sorted(moved), f"bytecode {at}: {in_src} in SRC, {moved} recorded for the roll-back"
        assert fired or moved == names
        shutil.rmtree(root)
        return fired, raised

    assert walk_interrupts(run) >= 30


# --- convert to DST: the temporary folder, the manifest beside DST, the rename -----------------

def test_a_signal_anywhere_around_the_temporary_files_leaves_nothing_beside_dst(tmp_path: Path) -> None:
    """Every bytecode of convert's own step function (_convert_into) and of what creates, renames
    and removes its temporary folder and manifest: afterwards DST and the manifest are both
    there, complete, or neither is, and nothing else is."""
    import shutil

    from hfconv import convert

    source = FIXTURES / "llama-safetensors"
    # The manifest's writing (stage_manifest) is one uninterrupted step: its bytecodes are not
    # walked one by one (that would take seconds), the step as a whole is.
    # mkdtemp and the sections' own bytecodes are walked by the tests above (suite time).
    steps = {sys.modules["hfconv.conversion"]._convert_into.__code__, staging.make_temp_folder.__code__,
             staging.publish.__code__, staging.install.__code__,
             interrupts.temporary_folder.__wrapped__.__code__}  # type: ignore[attr-defined]

    def counts(frame: FrameType) -> bool:
        return frame.f_code in steps

    def run(at: int) -> tuple[bool, BaseException | None]:
        parent = tmp_path / str(at)
        parent.mkdir()
        fired, raised = interrupt_at(at, functools.partial(convert, source, parent / "out", verify=False,
                                                            manifest=parent / "digests.json"), counts,
                                      distinct=True)  # (the sections' own places once: walked above)
        names = sorted(p.name for p in parent.iterdir())
        assert names in (([], ["digests.json", "out"]) if fired else (["digests.json", "out"],)), \
            f"bytecode {at}: {names} left"
        shutil.rmtree(parent)
        return fired, raised

    assert walk_interrupts(run) >= 10


# --- the CLI: a signal after DST is in place is not "no DST was created" -----------------------

def test_an_interrupt_after_dst_is_in_place_says_so(tmp_path: Path) -> None:
    """The signal comes once DST is renamed into place (the first bytecode of the result's
    assembly): exit 143 as for any SIGTERM, and the line says DST is there, whole."""
    from hfconv import conversion

    convert_file = os.path.normcase(conversion.__file__ or "")
    runner = CliRunner()
    dst = tmp_path / "out"

    def run() -> None:
        done = runner.invoke(cli_main, ["convert", str(FIXTURES / "llama-safetensors"), str(dst), "--quiet"])
        raise SystemExit((done.exit_code, done.stderr))

    fired, raised = interrupt_at(1, run, lambda frame: os.path.normcase(frame.f_code.co_filename) == convert_file
                                  and frame.f_code.co_name == "_result")
    assert fired and isinstance(raised, SystemExit)
    code, err = raised.code  # type: ignore[misc]
    assert code == 143 and dst.is_dir(), err
    assert err.strip().splitlines() == ["interrupted after DST was complete and in place."], err


# --- fix's file replacement and the report written with --output: temporary file beside the target -

def _replace_everywhere(tmp_path: Path, replace: Callable[[Path], None], counts: Callable[[FrameType], bool]) -> int:
    """``replace(target)`` (target holds "old"; the call writes "new") with the signal at each counted
    bytecode in turn: the folder holds the target, old or new, and nothing else. Returns the count."""
    import shutil

    def run(at: int) -> tuple[bool, BaseException | None]:
        folder = tmp_path / str(at)
        folder.mkdir()
        target = folder / "config.json"
        target.write_text("old")
        fired, raised = interrupt_at(at, functools.partial(replace, target), counts)
        assert sorted(p.name for p in folder.iterdir()) == ["config.json"], f"bytecode {at}: left behind"
        assert target.read_text() in (("old", "new") if fired else ("new",))
        shutil.rmtree(folder)
        return fired, raised

    return walk_interrupts(run)


def test_a_signal_anywhere_in_fix_replacing_a_file_leaves_no_temporary_file(tmp_path: Path) -> None:
    import tempfile

    from hfconv.fixing import apply

    def replace(target: Path) -> None:
        apply.FileOps(str(target.parent)).write_text(target.name, "new", expected="old")

    steps = {apply.FileOps.write_text.__code__, apply.FileOps._replacing.__wrapped__.__code__,
             tempfile.mkstemp.__code__, tempfile._mkstemp_inner.__code__,  # type: ignore[attr-defined]
             interrupts._Section.__enter__.__code__, interrupts._Section.__exit__.__code__}
    assert _replace_everywhere(tmp_path, replace, lambda frame: frame.f_code in steps) > 50


def test_a_signal_anywhere_in_writing_the_report_file_leaves_no_temporary_file(tmp_path: Path) -> None:
    import tempfile

    def replace(target: Path) -> None:
        _common.write_file(str(target), b"new")

    steps = {_common.write_file.__code__, tempfile.mkstemp.__code__,
             tempfile._mkstemp_inner.__code__,  # type: ignore[attr-defined]
             interrupts._Section.__enter__.__code__, interrupts._Section.__exit__.__code__}
    assert _replace_everywhere(tmp_path, replace, lambda frame: frame.f_code in steps) > 50


# --- the folder's own code, run in a child of its own session: started, then handed to its kill -----

def _children_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the child by its command line in /proc")
def test_a_signal_anywhere_in_starting_the_code_child_leaves_no_child_running(tmp_path: Path) -> None:
    from hfconv import environment

    marker = f"hfconv-test-child-{os.getpid()}"
    steps = {interrupts._Section.__enter__.__code__, interrupts._Section.__exit__.__code__}
    # run_python up to its wait (the start and the hand-over) and its kill; the wait is what a
    # signal is meant to cut short; Popen's own bytecodes are not walked one by one, each one
    # would start a Python.
    code = environment.run_python.__code__
    lines, first = inspect.getsourcelines(environment.run_python)
    waiting = first + next(i for i, line in enumerate(lines) if "proc.wait(" in line)

    def counts(frame: FrameType) -> bool:  # and the kill after the wait
        line = frame.f_lineno or 0
        return frame.f_code in steps or (frame.f_code is code and (line < waiting or
                                                                   "kill_group" in lines[line - first]))

    def traced(frame: FrameType) -> bool:
        return frame.f_code in steps or frame.f_code is code

    def run(at: int) -> tuple[bool, BaseException | None]:
        work = tmp_path / str(at)
        work.mkdir()
        fired, raised = interrupt_at(at, functools.partial(environment.run_python, "import time; time.sleep(60)",
                                                            [marker], str(work), 0.01),
                                      counts, traced=traced)
        assert _children_with(marker) == [], f"bytecode {at}: the child still runs"
        return fired, raised

    try:
        assert walk_interrupts(run) >= 20
    finally:
        for pid in _children_with(marker):
            os.kill(pid, signal.SIGKILL)


# --- the chat-template child, a fork of this process: forked, then handed to its kill -------------

def _children() -> set[int]:
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as handle:
            found.update(int(pid) for pid in handle.read().split())
    return found


@pytest.mark.skipif(not os.path.exists(f"/proc/self/task/{os.getpid()}/children"), reason="lists children in /proc")
def test_a_signal_anywhere_in_forking_the_template_child_leaves_no_child(tmp_path: Path) -> None:
    from hfconv.checks import chat_template

    if not chat_template._FORK:
        pytest.skip("the child is forked on Linux only")
    parent = os.getpid()
    steps = {interrupts._Section.__enter__.__code__, interrupts._Section.__exit__.__code__}
    # _run_forked from the fork to the wait for the child's output, and its clean-up (each place
    # once): every signal after the fork forks a child, the poll loop's places are not walked.
    code = chat_template._run_forked.__code__
    lines, first = inspect.getsourcelines(chat_template._run_forked)
    forking = first + next(i for i, line in enumerate(lines) if "os.fork()" in line)
    polling = first + next(i for i, line in enumerate(lines) if "poller = " in line)
    cleaning = first + next(i for i, line in enumerate(lines) if line.strip() == "finally:" and i > polling - first)

    def traced(frame: FrameType) -> bool:  # not in the forked child, which inherits the trace function
        return os.getpid() == parent and (frame.f_code in steps or frame.f_code is code)

    def counts(frame: FrameType) -> bool:
        line = frame.f_lineno or 0
        return frame.f_code in steps or forking <= line < polling or line >= cleaning

    template = chat_template.ChatTemplate("tokenizer_config.json", "default", "{{ messages[0]['content'] }}")
    before = _children()
    def run(at: int) -> tuple[bool, BaseException | None]:
        # Only here, not in the forked child (which inherits the trace function).
        fired, raised = interrupt_at(at, functools.partial(chat_template.run_child, [template], None, {}, True),
                                      counts, distinct=True, traced=traced)
        assert _children() == before, f"bytecode {at}: a child left running or unreaped"
        return fired, raised

    assert walk_interrupts(run) >= 40


# --- load-test: the folder for .bin tensors offloaded to disk -----------------------------------

def test_a_signal_anywhere_around_the_offload_folder_leaves_nothing_in_it(tmp_path: Path) -> None:
    """load-test of a .bin folder with the cpu capped (so its tensors go to disk), the signal at
    each place of the step that makes and removes hfconv-offload-*: the offload folder given
    (created by load-test, so removed again when empty) is gone afterwards."""
    pytest.importorskip("torch")
    from hfconv import load

    # From the folder's creation to the load (each place once; mkdtemp itself and the sections are
    # walked by the tests above: every place here costs a load-test), and its removal.
    code = load._load_and_verify.__code__
    lines, first = inspect.getsourcelines(load._load_and_verify)
    making = first + next(i for i, line in enumerate(lines) if "mkdtemp(" in line)
    loading = first + next(i for i, line in enumerate(lines) if "Loader(" in line or "_load_into(" in line)

    def counts(frame: FrameType) -> bool:  # (inside a section, every place defers alike: not walked here)
        line = frame.f_lineno or first
        return interrupts._depth == 0 and (making <= line <= loading or "rmtree" in lines[line - first])

    def run(at: int) -> tuple[bool, BaseException | None]:
        offload = tmp_path / str(at) / "offload"
        fired, raised = interrupt_at(at, functools.partial(load.load_test, FIXTURES / "llama-bin",
                                                            max_memory={"cpu": "50KB"}, offload_folder=offload),
                                      counts, distinct=True, traced=lambda frame: frame.f_code is code)
        assert not offload.exists(), f"bytecode {at}: {sorted(p.name for p in offload.iterdir())} left"
        return fired, raised

    assert walk_interrupts(run) >= 10


def test_an_interrupt_after_the_in_place_safetensors_are_in_src_leaves_them_and_says_so(tmp_path: Path) -> None:
    """A signal at each place of convert --in-place once its shards are in SRC: they stay, the
    temporary folder goes; and the CLI's line says the conversion is complete (exit 143)."""
    import shutil

    from hfconv import convert

    code = in_place.convert_in_place.__code__
    lines, first = inspect.getsourcelines(in_place.convert_in_place)
    done = first + 1 + next(i for i, line in enumerate(lines) if "_move_into(tmp" in line)
    result = first + next(i for i, line in enumerate(lines) if line.startswith("    written = "))
    # ... and the removal of the temporary folder (interrupts.temporary_folder, as its block ends).
    removal = interrupts.temporary_folder.__wrapped__.__code__  # type: ignore[attr-defined]
    removal_lines, removal_first = inspect.getsourcelines(interrupts.temporary_folder)
    removing = removal_first + next(i for i, line in enumerate(removal_lines) if line.strip() == "finally:")

    def after_move(frame: FrameType) -> bool:  # to the try's end
        line = frame.f_lineno or 0
        return done <= line < result if frame.f_code is code else line >= removing

    def in_code(frame: FrameType) -> bool:
        return frame.f_code is code or frame.f_code is removal

    def convert_at(at: int) -> tuple[bool, BaseException | None]:
        src = tmp_path / str(at)
        shutil.copytree(FIXTURES / "llama-bin", src)
        fired, raised = interrupt_at(at, functools.partial(convert, src, in_place=True, verify=False), after_move,
                                      distinct=True, traced=in_code)
        assert (src / "model.safetensors").is_file(), f"bytecode {at}: the conversion was undone"
        assert not [p.name for p in src.iterdir() if p.name.startswith(".hfconv-")], f"bytecode {at}: left"
        return fired, raised

    assert walk_interrupts(convert_at) >= 10

    src = tmp_path / "cli"
    shutil.copytree(FIXTURES / "llama-bin", src)
    runner = CliRunner()

    def run() -> None:
        result = runner.invoke(cli_main, ["convert", str(src), "--in-place", "--quiet"])
        raise SystemExit((result.exit_code, result.stderr))

    fired, raised = interrupt_at(1, run, after_move, traced=in_code)
    assert fired and isinstance(raised, SystemExit)
    exit_code, err = raised.code  # type: ignore[misc]
    assert exit_code == 143 and (src / "model.safetensors").is_file(), err
    assert err.strip().splitlines() == ["interrupted after the conversion was complete: its safetensors are in SRC."]
