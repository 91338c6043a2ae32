"""Pause Python's cyclic garbage collector while a stage builds many acyclic objects.

The largest folders hold 100,000s of tensors: reading their headers and expanding their rule
tables builds millions of tuples, dicts and strings, none of them in a reference cycle. With the
collector on, CPython runs full collections over and over as they pile up (a 100 MB header
read about twice as slowly in a test); reference counting frees them all the same.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["gc_paused"]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic GC inside the block; restored on exit (errors included), and left
    alone when it was already off (so the pauses nest)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
