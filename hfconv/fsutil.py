"""File-system helpers that treat names from a model folder as untrusted."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

from .tensors import FormatError


def open_regular(path: str | os.PathLike, follow_symlinks: bool = True) -> io.BufferedReader:
    """Open ``path`` for reading only if it is a regular file (not through a symlink unless
    ``follow_symlinks``: ``O_NOFOLLOW``, so a file swapped for a link after a check is refused too).

    FIFOs, devices and sockets are refused before any read (opening a FIFO for reading would
    block forever). ``O_NONBLOCK`` makes the open itself return at once for a FIFO.
    """
    nofollow = 0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0)
    try:
        return _open_regular_fd(path, lambda: os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | nofollow),
                                "is not a regular file (FIFO, device or socket); refused")
    except OSError as exc:
        if nofollow and os.path.islink(path):
            raise FormatError("HFC008", "is a symlink; not followed") from None
        raise FormatError("HFC008", f"cannot open: {exc.strerror}") from None


def _open_regular_fd(name: str | os.PathLike, open_fd: Callable[[], int], refusal: str) -> io.BufferedReader:
    """A reader (named ``name``) over the descriptor ``open_fd()`` returns, once it is a regular
    file (switched back to blocking reads); else HFC008 ``refusal``, nothing left open.

    The reader owns the descriptor from the moment it exists. Opening a descriptor and handing it
    to ``os.fdopen`` afterwards leaves a window where a signal (Ctrl-C, SIGTERM) turns into an
    exception: the cleanup then closes a descriptor the half-built reader also closes, and the
    second close hits whatever file got that number meanwhile (a shard being written: seen as
    "bad file descriptor" instead of "interrupted"). ``open(opener=...)`` adopts the descriptor
    inside C, where no signal handler runs: an interrupt in the opener itself (Python) can leak the
    descriptor, never close one twice.

    Raises:
        FormatError: HFC008 ``refusal`` (a folder, FIFO, device or socket).
        OSError: opening failed otherwise (the caller words it).
    """
    try:
        handle = open(name, "rb", opener=lambda _name, _flags: open_fd())
    except IsADirectoryError:
        raise FormatError("HFC008", refusal) from None
    try:
        fd = handle.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError("HFC008", refusal)
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return handle
    except BaseException:
        handle.close()
        raise


def open_inside(path: str | os.PathLike, roots: tuple[str | os.PathLike | None, ...]) -> io.BufferedReader:
    """Open ``path`` for reading only if the file opened is a regular file inside one of ``roots``.

    Checking a path and then opening it by name is a race: between the two, a local attacker
    can turn ``note.txt`` into a symlink to a secret outside the folder. Here the path is
    resolved once, then opened component by component from the root's own descriptor with
    ``O_NOFOLLOW`` (a component turned into a symlink since is refused, not followed), and the
    opened descriptor is checked with ``fstat``: what is read is what was checked. A symlink
    inside the folder (or, in a Hub cache snapshot, into its ``blobs/``) is fine.

    Raises:
        FormatError: HFC008 when the path resolves outside every root, a component is (now)
            a symlink, or the file is not a regular file.
    """
    if not _CAN_WALK:  # pragma: no cover - platforms without openat/O_NOFOLLOW
        return open_regular(path)
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError) as exc:
        raise FormatError("HFC008", f"cannot resolve: {exc}") from None
    for root in roots:
        if root is None:
            continue
        base = os.path.realpath(root)
        rel = os.path.relpath(real, base)
        if rel in (os.curdir, os.pardir) or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
            continue
        return _open_beneath(base, rel.split(os.sep))
    raise FormatError("HFC008", "resolves outside the model folder (a symlink pointing out); refused")


_CAN_WALK = hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _open_beneath(base: str, parts: list[str]) -> io.BufferedReader:
    try:
        directory = os.open(base, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    except OSError as exc:
        raise FormatError("HFC008", f"cannot open its folder: {exc.strerror}") from None
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC, dir_fd=directory)
            except OSError as exc:
                raise FormatError("HFC008", _walk_error(exc, part)) from None
            # Swapped before the close: an interrupt in between may leak a descriptor, never
            # make the clean-up below close one twice (see _open_regular_fd).
            outer, directory = directory, inner
            os.close(outer)
        flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
        try:
            return _open_regular_fd(os.path.join(base, *parts), lambda: os.open(parts[-1], flags, dir_fd=directory),
                                    "is not a regular file (a folder, FIFO, device or socket); refused")
        except OSError as exc:
            raise FormatError("HFC008", _walk_error(exc, parts[-1])) from None
    finally:
        os.close(directory)


def _walk_error(exc: OSError, part: str) -> str:
    import errno

    if exc.errno in (errno.ELOOP, errno.ENOTDIR, getattr(errno, "EMLINK", -1)):
        return f"{part!r} became a symlink or changed type while being read; refused"
    return f"cannot open: {exc.strerror}"


def link_problem(path: str | os.PathLike[str]) -> str:
    """What is wrong with a symlink of the folder that hfconv did not follow: ``is a dangling
    symlink (to 'X', which does not exist)`` when its target is missing, else ``is a symlink
    pointing outside the model folder``."""
    try:
        dangling = os.path.islink(path) and not os.path.exists(path)
        target = os.readlink(path) if dangling else ""
    except (OSError, ValueError):
        dangling, target = False, ""
    if dangling:
        return f"is a dangling symlink (to {target!r}, which does not exist)"
    return "is a symlink pointing outside the model folder"


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


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(mode: int) -> str | None:
    """``"a FIFO"``, ``"a character device"``, ``"a block device"`` or ``"a socket"`` for such a
    file's ``st_mode``; None for a regular file, a folder or a symlink."""
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            return kind
    return None


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (a rename into it) to disk; best effort: some file systems refuse."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask, read from /proc where it can be: setting it to read it back (the
    fallback) briefly changes it for every thread."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def read_package_text(*parts: str) -> str:
    """A file shipped inside the hfconv package (``read_package_text("schemas", name)``), read
    beside the modules. Not through importlib.resources: its readers import zipfile, tempfile
    and shutil, about 7 ms of every start-up, for a package always installed as files.

    Raises:
        OSError: no such file.
    """
    with open(os.path.join(_PACKAGE_DIR, *parts), encoding="utf-8") as handle:
        return handle.read()
