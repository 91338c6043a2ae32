"""A signal during the opening of a model file never closes a descriptor twice.

Ctrl-C and SIGTERM become an exception between any two bytecodes of the main thread. The
open helpers hand a fresh descriptor to a file object; an exception in that hand-over once
made the cleanup close the descriptor that the half-built file object closed again later:
the second close hit the shard being written (CI: "bad file descriptor writing
model-00001-of-00008.safetensors" instead of "interrupted"). Here the exception is injected
at every bytecode of the open, in turn, as a signal handler would raise it.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from types import FrameType

import pytest

from hfconv import fsutil
from hfconv.fsutil import open_inside, open_regular

from helpers import interrupt_at, walk_interrupts

_TRACED = {os.path.normcase(fsutil.__file__), os.path.normcase(os.__file__), "<frozen os>"}  # os.open, open()


def _in_traced_files(frame: FrameType) -> bool:
    return os.path.normcase(frame.f_code.co_filename) in _TRACED


def _interrupt_everywhere(open_file: Callable[[], object]) -> int:
    """Interrupt ``open_file`` at each bytecode in turn; returns how many places were tried.

    The objects that exist already are frozen out of the collections after each try: a full
    collection of a test process that has imported torch and transformers takes a few hundred
    milliseconds, and there are hundreds of tries (a minute of the suite, where a second does)."""
    gc.freeze()
    try:
        return walk_interrupts(lambda at: _open_at(at, open_file))
    finally:
        gc.unfreeze()


def _open_at(at: int, open_file: Callable[[], object]) -> tuple[bool, BaseException | None]:
    opened: list[object] = []
    fired, raised = interrupt_at(at, lambda: opened.append(open_file()), _in_traced_files)
    if not fired:
        opened[0].close()  # type: ignore[attr-defined]
        return fired, raised
    assert not opened, f"bytecode {at}: opened although interrupted"
    # Files opened now take the numbers just freed; dropping the exception's frames (and with them
    # any half-built file object) afterwards must not close them.
    bystanders = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]
    _drop_frames(raised)
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
    return fired, raised


def _drop_frames(exc: BaseException | None) -> None:
    """Let go of every frame ``exc`` (and the exceptions chained to it) holds."""
    while exc is not None:
        exc.__traceback__ = None
        exc = exc.__context__ or exc.__cause__


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
