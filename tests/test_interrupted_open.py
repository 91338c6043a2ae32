"""A signal during the opening of a model file never closes a descriptor twice.

Ctrl-C and SIGTERM become an exception between any two bytecodes of the main thread. The
open helpers hand a fresh descriptor to a file object; an exception in that hand-over once
made the cleanup close the descriptor that the half-built file object closed again later:
the second close hit the shard being written (CI: "bad file descriptor writing
model-00001-of-00008.safetensors" instead of "interrupted"). Here the exception is injected
at every bytecode of the open, in turn, as a signal handler would raise it.
"""

from __future__ import annotations

import dis
import gc
import os
import sys
from collections.abc import Callable

import pytest

from hfconv import fsutil
from hfconv.fsutil import open_inside, open_regular

_TRACED = {os.path.normcase(fsutil.__file__), os.path.normcase(os.__file__), "<frozen os>"}  # os.fdopen


_NOP = dis.opmap["NOP"]


class _Interrupt:
    """A trace function raising KeyboardInterrupt at the ``at``-th bytecode of the traced files."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.count = 0
        self.fired = False

    def __call__(self, frame, event, arg):
        if os.path.normcase(frame.f_code.co_filename) not in _TRACED:
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        # (Not at a NOP: no handler runs there, and an exception raised there skips every except.)
        if event == "opcode" and frame.f_code.co_code[frame.f_lasti] != _NOP:
            self.count += 1
            if self.count == self.at:
                self.fired = True
                raise KeyboardInterrupt
        return self


def _interrupt_everywhere(open_file: Callable[[], object]) -> int:
    """Interrupt ``open_file`` at each bytecode in turn; returns how many places were tried.

    The objects that exist already are frozen out of the collections after each try: a full
    collection of a test process that has imported torch and transformers takes a few hundred
    milliseconds, and there are hundreds of tries (a minute of the suite, where a second does)."""
    gc.freeze()
    try:
        return _each_bytecode(open_file)
    finally:
        gc.unfreeze()


def _each_bytecode(open_file: Callable[[], object]) -> int:
    at = 1
    while True:
        interrupt = _Interrupt(at)
        raised: BaseException | None = None
        handle = None
        sys.settrace(interrupt)
        try:
            handle = open_file()
        except BaseException as exc:  # noqa: BLE001 - what the interrupt turned into is the point
            raised = exc
        finally:
            sys.settrace(None)
        if not interrupt.fired:
            assert handle is not None
            handle.close()  # type: ignore[attr-defined]
            return at - 1
        assert handle is None
        assert isinstance(raised, KeyboardInterrupt), f"bytecode {at}: {raised!r} instead of the interrupt"
        # Files opened now take the numbers just freed; dropping the exception (and with it any
        # half-built file object in its frames) must not close them.
        bystanders = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]
        raised = None
        gc.collect()
        try:
            for fd in bystanders:
                os.fstat(fd)  # EBADF: closed by someone else's cleanup
        finally:
            for fd in bystanders:
                try:
                    os.close(fd)
                except OSError:
                    pass
        at += 1


@pytest.fixture()
def weights(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    path = folder / "sub" / "model.safetensors"
    path.write_bytes(b"x" * 64)
    return folder, path


def test_an_interrupt_anywhere_in_open_inside_is_the_interrupt_and_closes_nothing_twice(weights):
    folder, path = weights
    tried = _interrupt_everywhere(lambda: open_inside(path, (folder,)))
    assert tried > 20  # the whole open was walked, not one line of it


def test_an_interrupt_anywhere_in_open_regular_is_the_interrupt_and_closes_nothing_twice(weights):
    _, path = weights
    tried = _interrupt_everywhere(lambda: open_regular(path, follow_symlinks=False))
    assert tried > 10


def test_the_refusals_still_hold(weights, tmp_path):
    folder, _ = weights
    os.mkfifo(folder / "pipe")
    for target in (folder / "pipe", folder / "sub"):
        with pytest.raises(fsutil.FormatError, match="not a regular file"):
            open_inside(target, (folder,))
        with pytest.raises(fsutil.FormatError, match="not a regular file"):
            open_regular(target)
    with open_inside(folder / "sub" / "model.safetensors", (folder,)) as handle:
        assert handle.read() == b"x" * 64
