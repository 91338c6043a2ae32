"""Sections a Ctrl-C or SIGTERM must not cut in two (a leaf: imports nothing from hfconv).

The CLI turns SIGINT and SIGTERM into a KeyboardInterrupt raised between any two bytecodes of
the main thread (:func:`hfconv.cli._common.on_signal`). Most of the work unwinds cleanly from
anywhere; a few steps do not, because they are two system calls whose state lives only in a
local variable in between:

- a temporary file or folder created, then handed to the code that removes it on failure
  (an interrupt in between leaves it behind);
- DST moved aside, then the new folder renamed into place (an interrupt in between loses the
  old DST; one right after makes the roll-back fail with an OSError that replaces the interrupt);
- a file renamed into place, then recorded for the roll-back (an interrupt in between leaves it).

Inside :func:`uninterrupted` the CLI's handler only remembers the signal; the interrupt is raised
when the (outermost) section ends, so the section runs whole or, when it fails, is rolled back
by its own code. Only the main thread's sections count (signal handlers run there only); a
section must be short and never wait for anything a signal should end.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from types import TracebackType

__all__ = ["deferring", "temporary_folder", "uninterrupted"]

_depth = 0
"""How many sections the main thread is inside."""
_pending = False
"""A signal came inside a section: raise KeyboardInterrupt when the outermost one ends."""


class _Section:
    __slots__ = ()

    def __enter__(self) -> None:
        global _depth
        if threading.current_thread() is threading.main_thread():
            # An interrupt before this store is raised here, before the section begins; after it,
            # the handler defers.
            _depth += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        global _depth, _pending
        if threading.current_thread() is not threading.main_thread():
            return
        # A signal before this store is remembered (and raised just below); after it, the
        # handler raises it itself.
        _depth -= 1
        if _depth == 0 and _pending:
            _pending = False
            raise KeyboardInterrupt


_SECTION = _Section()


def uninterrupted() -> _Section:
    """A ``with`` block in which the CLI's SIGINT / SIGTERM handler defers the interrupt to the
    block's end (see the module)."""
    return _SECTION


@contextlib.contextmanager
def temporary_folder(make: Callable[[], str]) -> Iterator[str]:
    """The folder ``make()`` creates (a ``tempfile.mkdtemp``), removed whole when the block ends.

    Created and recorded for its removal in one uninterrupted section (a signal in between left it
    behind); removed again when a signal cuts its removal short. An error of ``make`` propagates:
    there is nothing to remove.
    """
    import shutil  # (not at import: validate never makes a temporary folder)

    path = ""
    try:
        with uninterrupted():
            path = make()
        yield path
    finally:
        try:
            if path:
                shutil.rmtree(path, ignore_errors=True)
        except BaseException:  # a signal during the removal: removed all the same
            if path:
                shutil.rmtree(path, ignore_errors=True)
            raise


def deferring() -> bool:
    """For the signal handler: inside a section (the interrupt is then remembered, and raised
    when the section ends), or not (the handler raises it now)."""
    global _pending
    if _depth > 0 and threading.current_thread() is threading.main_thread():
        _pending = True
        return True
    return False
