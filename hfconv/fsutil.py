"""File-system helpers that treat names from a model folder as untrusted."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from .tensors import FormatError


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file.

    FIFOs, devices and sockets are refused before any read (opening a FIFO for reading would
    block forever). ``O_NONBLOCK`` makes the open itself return at once for a FIFO.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise FormatError("HFC008", f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError("HFC008", "is not a regular file (FIFO, device or socket); refused")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_inside(root: Path, candidate: Path) -> bool:
    """True when ``candidate`` (after resolving symlinks) lies inside ``root``."""
    try:
        candidate.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def is_safe_relative_name(name: str) -> bool:
    """A name from an index or config is usable only as a plain relative path without ``..``."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or ":" in name[:3]:
        return False
    parts = name.replace("\\", "/").split("/")
    return all(part not in ("", ".", "..") for part in parts)
