"""The file operations of ``fix``, each atomic: a temporary file beside the target, written,
flushed to the disk, given the target's mode and renamed over it; a hard link for a rename
(the old name goes only once the index names the new one); an unlink for a deletion.

A crash (a kill, a power loss) between two operations leaves every file either old or new.
Temporary files of a run that was killed are named ``.NAME.hfconv-fix-XXXX.tmp`` and removed
by the next run.

``HFCONV_FIX_PAUSE_AFTER=N`` is a test hook: after the Nth file operation the process writes a
line to stderr and sleeps a minute, so that a test can kill it between two files (a real
crash, not a simulated one); a SIGUSR1 ends the pause early, so that a test can change the
folder under a running fix (a race made deterministic) and let it go on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import stat
import struct
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping

from ..fsutil import fsync_dir, open_regular, umask
from ..interrupts import uninterrupted
from ..readers.safetensors_header import read_safetensors
from ..tensor_bytes import copy_range, write_all
from ..tensors import FormatError, WeightFile

__all__ = ["FileOps", "TEMP_RE", "VerifyError", "header_bytes", "remove_stale_temporaries"]

TEMP_RE = re.compile(r"^\..+\.hfconv-fix-[A-Za-z0-9_]+\.tmp$")
"""Names of fix's own temporary files (only these are ever removed as leftovers)."""
PAUSE_ENV = "HFCONV_FIX_PAUSE_AFTER"
_COMPARE_CHUNK = 1 << 20
_NO_HARD_LINKS = frozenset(
    e for e in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", None))
    if e is not None
)
"""``link()`` errors that mean "no hard link here" (a file system without them, too many links, a
protected_hardlinks refusal): the new name is copied instead. Any other error (EEXIST: the name
was taken since the plan) is the rename's failure."""


class VerifyError(Exception):
    """A rewritten file does not read back as the original's tensors: it was not installed."""


def remove_stale_temporaries(root: str) -> list[str]:
    """Delete the temporary files an interrupted fix left in ``root``; their names."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        if TEMP_RE.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except OSError:
                pass
    return removed


class FileOps:
    """Atomic operations inside one folder, counted for the pause hook."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.count = 0
        value = os.environ.get(PAUSE_ENV, "")
        self.pause_after = int(value) if value.isdigit() else None

    def _done(self, what: str) -> None:
        self.count += 1
        if self.pause_after is not None and self.count == self.pause_after:
            _pause(f"hfconv: paused after file operation {self.count} ({what}; {PAUSE_ENV})\n")

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    @contextlib.contextmanager
    def _replacing(self, name: str) -> Iterator[tuple[int, str]]:
        """A temporary file beside ``name`` (its descriptor and path) to write in the block; then
        flushed, given the target's mode and renamed over ``name``; removed if anything fails.

        The descriptor is closed once, in one place: a second close (an error or an interrupt
        after the first) would close whatever file got that number meanwhile.
        """
        target = self.path(name)
        folder, base = os.path.split(target)
        tmp = ""
        try:
            # Created and recorded for the clean-up below in one step (hfconv.interrupts): a
            # signal in between would leave the temporary file in the model folder.
            with uninterrupted():
                fd, tmp = tempfile.mkstemp(prefix=f".{base}.hfconv-fix-", suffix=".tmp", dir=folder)
            try:
                yield fd, tmp
                try:
                    mode = stat.S_IMODE(os.lstat(target).st_mode)
                except FileNotFoundError:
                    mode = 0o666 & ~umask()
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            if os.path.islink(target):
                raise OSError(f"{name} became a symlink; not written through")
            os.replace(tmp, target)
        except BaseException:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        fsync_dir(folder)

    def write_text(self, name: str, text: str, expected: str | None = None) -> None:
        """Replace (or create) ``name`` with ``text`` (UTF-8); with ``expected``, only while the
        file still holds that text (it was not edited since it was read)."""
        if expected is not None:
            with open_regular(self.path(name)) as handle:
                if handle.read(len(expected.encode("utf-8")) + 1) != expected.encode("utf-8"):
                    raise VerifyError(f"{name} changed since hfconv fix read it")
        elif os.path.lexists(self.path(name)):
            raise VerifyError(f"{name} appeared since hfconv fix listed the folder")
        with self._replacing(name) as (fd, _):
            write_all(fd, text.encode("utf-8"))
        self._done(f"wrote {name}")

    def rewrite_header(self, name: str, weight_file: WeightFile, metadata: Mapping[str, str]) -> None:
        """Replace ``name`` with the same tensors under a new ``__metadata__``; the tensor bytes are
        copied by byte range and compared with the original's before the rename."""
        source = self.path(name)
        try:
            current = read_safetensors(source)
        except FormatError as exc:
            raise VerifyError(f"{name} no longer reads as it did: {exc.message}") from None
        if current.tensors != weight_file.tensors or current.header_nbytes != weight_file.header_nbytes:
            raise VerifyError(f"{name} changed since hfconv fix read it")
        header = header_bytes(weight_file, metadata)
        old_base = 8 + weight_file.header_nbytes
        src_fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            data_bytes = os.fstat(src_fd).st_size - old_base
            with self._replacing(name) as (fd, tmp):
                write_all(fd, struct.pack("<Q", len(header)) + header)
                copy_range(src_fd, fd, old_base, data_bytes)
                _verify(tmp, weight_file, metadata, src_fd, old_base, 8 + len(header), data_bytes)
        finally:
            os.close(src_fd)
        self._done(f"rewrote the header of {name}")

    def link(self, name: str, new_name: str) -> None:
        """``new_name`` as a second name of ``name`` (the old name stays until :meth:`delete`);
        nothing to do where a killed run already linked it.

        ``name`` must be a regular file (``os.link`` of a symlink would link the symlink itself);
        ``new_name`` must not exist: a name taken since the plan is never replaced.

        Raises:
            FormatError: ``name`` is (now) a symlink or not a regular file.
            VerifyError: ``new_name`` exists (appeared since the plan).
            OSError: linking or copying failed otherwise.
        """
        source, target = self.path(name), self.path(new_name)
        try:
            if os.path.samefile(source, target) and not os.path.islink(target) and not os.path.islink(source):
                return
        except OSError:
            pass
        # The source opened as every other operation opens it: a regular file, not through a symlink
        # (one swapped in since the plan is refused, as is a FIFO, which would block).
        with open_regular(source, follow_symlinks=False) as handle:
            opened = os.fstat(handle.fileno())
            try:
                os.link(source, target, follow_symlinks=False)
            except FileExistsError:
                raise VerifyError(f"{new_name} appeared since hfconv fix listed the folder; not replaced") from None
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                self._copy_as(handle.fileno(), opened.st_size, new_name)
            else:
                linked = os.lstat(target)
                if (linked.st_dev, linked.st_ino) != (opened.st_dev, opened.st_ino):
                    # ``name`` was swapped (for a symlink, another file) between the open and the link:
                    # the new name is of what it became, and is taken back.
                    os.unlink(target)
                    raise FormatError("HFC008", "changed (swapped for a symlink or another file) while it was "
                                      "being linked; not linked")
        fsync_dir(os.path.dirname(target))
        self._done(f"linked {name} as {new_name}")

    def _copy_as(self, src_fd: int, size: int, new_name: str) -> None:
        """No hard links here (some file systems): copy, flush and install under ``new_name``."""
        with self._replacing(new_name) as (fd, _):
            copy_range(src_fd, fd, 0, size)
            if os.path.lexists(self.path(new_name)):
                raise VerifyError(f"{new_name} appeared since hfconv fix listed the folder; not replaced")

    def delete(self, name: str) -> None:
        os.unlink(self.path(name))
        fsync_dir(os.path.dirname(self.path(name)))
        self._done(f"deleted {name}")


def _pause(line: str) -> None:
    """The test hook's pause: a minute, or until a SIGUSR1 (blocked first: one sent as soon as the
    line is read is waited for, not the signal's default action, which ends the process)."""
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is None or not hasattr(signal, "sigtimedwait"):  # pragma: no cover - not POSIX
        sys.stderr.write(line)
        sys.stderr.flush()
        time.sleep(60)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {usr1})
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
        signal.sigtimedwait({usr1}, 60)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {usr1})


def header_bytes(weight_file: WeightFile, metadata: Mapping[str, str]) -> bytes:
    """A safetensors header (padded with spaces to 8 bytes, as safetensors writes) holding
    ``metadata`` and ``weight_file``'s tensors, in file order, at their data offsets."""
    import json

    base = 8 + weight_file.header_nbytes
    entries: dict[str, object] = {"__metadata__": dict(metadata)}
    ordered = sorted(weight_file.tensors.values(), key=lambda t: (t.data_offsets or (0, 0)))
    for meta in ordered:
        if meta.data_offsets is None:
            raise ValueError(f"tensor {meta.name!r} has no byte range")
        begin, end = meta.data_offsets
        entries[meta.name] = {"dtype": meta.dtype, "shape": list(meta.shape),
                              "data_offsets": [begin - base, end - base]}
    raw = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def _verify(tmp: str, original: WeightFile, metadata: Mapping[str, str], src_fd: int, old_base: int,
            new_base: int, data_bytes: int) -> None:
    """The new file reads as the original's tensors (names, dtypes, shapes, byte ranges, bytes)
    with the new metadata."""
    try:
        rewritten = read_safetensors(tmp)
    except FormatError as exc:
        raise VerifyError(f"the rewritten file does not read back: {exc.message}") from None
    if rewritten.metadata != dict(metadata):
        raise VerifyError("the rewritten header does not hold the new metadata")
    shift = new_base - old_base
    for name, meta in original.tensors.items():
        new = rewritten.tensors.get(name)
        if new is None or (new.dtype, new.shape) != (meta.dtype, meta.shape) or meta.data_offsets is None or \
                new.data_offsets != (meta.data_offsets[0] + shift, meta.data_offsets[1] + shift):
            raise VerifyError(f"tensor {name!r} differs in the rewritten header")
    if len(rewritten.tensors) != len(original.tensors):
        raise VerifyError("the rewritten header holds another number of tensors")
    _compare_bytes(src_fd, old_base, tmp, new_base, data_bytes)


def _compare_bytes(src_fd: int, old_base: int, tmp: str, new_base: int, count: int) -> None:
    with open(tmp, "rb") as new:
        done = 0
        while done < count:
            want = min(_COMPARE_CHUNK, count - done)
            a = os.pread(src_fd, want, old_base + done)
            b = os.pread(new.fileno(), want, new_base + done)
            if a != b or not a:
                raise VerifyError(f"tensor bytes differ after byte {done} of the data section")
            done += len(a)


