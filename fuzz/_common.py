"""Shared plumbing for the atheris harnesses (see fuzz/README.md).

Each harness hands the reader a real file (the readers take paths and refuse anything that
is not a regular file). The file is an anonymous one (O_TMPFILE) in RAM-backed /dev/shm,
reached through /proc/self/fd: millions of cheap rewrites, and nothing left behind when
libFuzzer exits (it does not run Python's exit handlers). The only exception a reader may
raise is ``hfconv.tensors.FormatError``; anything else propagates and atheris records a crash.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
from collections.abc import Callable

MAX_INPUT = 1 << 20


class Scratch:
    """One scratch file the harness rewrites for every input."""

    def __init__(self, suffix: str):
        folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
        try:
            self.fd = os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o600)
            self.path = f"/proc/self/fd/{self.fd}"
        except (AttributeError, OSError):  # no O_TMPFILE here: a named file, removed on a clean exit
            self.fd, self.path = tempfile.mkstemp(prefix="hfconv-fuzz-", suffix=suffix, dir=folder)

    def write(self, data: bytes) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)


def limit_memory(mib: int = 2048) -> None:
    """Bound the address space so a cap the readers forget shows up as a MemoryError crash."""
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        want = mib << 20
        if hard == resource.RLIM_INFINITY or hard > want:
            resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (ValueError, OSError):  # pragma: no cover - not fatal for a fuzz run
        print("fuzz: could not set RLIMIT_AS", file=sys.stderr)


def reader_target(read: Callable[[str], object], wrap: Callable[[bytes], bytes], suffix: str,
                  format_error: type) -> Callable[[bytes], None]:
    """The libFuzzer entry point for one reader.

    The first input byte picks a mode (odd: ``wrap`` the payload into a well-formed container,
    even: the payload is the file as is). Only ``format_error`` may escape ``read``, and it must
    carry an HFC code and a message (renderers rely on both).
    """
    scratch = Scratch(suffix)

    def test_one_input(data: bytes) -> None:
        if not data or len(data) > MAX_INPUT:
            return
        mode, payload = data[0], data[1:]
        scratch.write(wrap(payload) if mode & 1 else payload)
        try:
            read(scratch.path)
        except format_error as err:
            code, message = getattr(err, "code", None), getattr(err, "message", None)
            if not (isinstance(code, str) and code.startswith("HFC") and message):
                raise AssertionError(f"FormatError without code/message: {code!r} {message!r}") from None

    return test_one_input


def fuzz(target: Callable[[bytes], None]) -> None:
    import atheris

    limit_memory()
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
