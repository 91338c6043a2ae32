"""The file system side of ``convert``: paths, free space, the temporary folder, copies, fsync, rename.

DST appears complete or not at all: everything is written into a temporary folder beside it,
which :func:`install` renames into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..contents import FolderContents
from ..errors import OptionError, UsageError
from ..folder_check import check_folder
from ..fsutil import fsync_dir, open_inside, umask
from ..interrupts import uninterrupted
from ..sharding import INDEX_FILE
from ..tensor_bytes import write_all
from ..tensors import FormatError
from ..units import human_bytes
from .errors import ConversionError, DestinationExistsError, write_failure
from .plan import ConversionPlan
from .write import copy_source

__all__ = [
    "check_paths", "missing_parents", "make_parents", "remove_parents", "check_free_space", "make_temp_folder",
    "write_other_files", "publish", "install", "copy_file", "write_small", "updated_config", "fsync_path",
    "fsync_dir", "disk_margin", "existing_ancestor", "size_or_zero", "umask",
]


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_HUB_HIDDEN = frozenset({".gitattributes", ".cache", ".huggingface", ".git"})
"""Hidden entries a downloaded model folder may hold (git clone, huggingface_hub's local_dir)."""


_HFCONV_OUTPUTS = frozenset({"model.safetensors", INDEX_FILE})
"""One of these is in every folder convert writes."""


def check_paths(src: str, dst: str, force: bool) -> tuple[str, str]:
    """SRC's real path and DST's absolute path, once SRC is a folder, neither contains the
    other, and DST is absent (or, with ``force``, a folder convert could have written)."""
    check_folder(src)  # the one "is not a folder" check: says what it is instead
    src_real = os.path.realpath(src)
    dst_abs = os.path.abspath(dst)
    dst_real = os.path.realpath(dst_abs)
    if dst_real == src_real or dst_real.startswith(src_real + os.sep) or src_real.startswith(dst_real + os.sep):
        raise UsageError(f"DST {dst} must be outside SRC {src} (and must not contain it)")
    if os.path.lexists(dst_abs):
        if not force:
            raise DestinationExistsError(f"{dst} exists; choose another DST or pass force=True to replace it")
        if os.path.islink(dst_abs) or not os.path.isdir(dst_abs):
            raise UsageError(f"{dst} exists and is not a folder; force=True only replaces a folder")
        why = _replace_refusal(dst, dst_abs)
        if why:
            raise OptionError("force", f" refuses to replace {_escape_name(dst)}: {why}; remove it yourself or "
                                       "choose another DST")
    return src_real, dst_abs


def _replace_refusal(dst: str, dst_abs: str) -> str | None:
    """Why ``--force`` must not delete the folder ``dst`` (None: empty, or a model folder
    hfconv could have written). A typo must not remove a home directory or a source tree."""
    try:
        names = os.listdir(dst_abs)
    except OSError as exc:
        return f"it cannot be listed ({exc.strerror or exc})"
    if not names:
        return None
    weights = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".h5", ".gguf")))
    if weights:
        return f"it holds weights convert never writes ({', '.join(_escape_name(n) for n in weights[:3])})"
    if not any(name in _HFCONV_OUTPUTS for name in names):
        return "it is not a folder hfconv wrote (no model.safetensors or model.safetensors.index.json in it)"
    strays = sorted(n for n in names if n.startswith(".") and n not in _HUB_HIDDEN and not n.startswith(".hfconv-"))
    if strays:
        shown = ", ".join(_escape_name(n) for n in strays[:3]) + (", ..." if len(strays) > 3 else "")
        return f"it holds files a model folder does not ({shown})"
    return None


def _escape_name(name: str) -> str:
    from ..render import escape_text

    return escape_text(name)


def missing_parents(dst_abs: str) -> list[str]:
    """The folders above DST that do not exist yet, outermost first (``mkdir -p`` creates them)."""
    missing: list[str] = []
    parent = os.path.dirname(dst_abs)
    while not os.path.lexists(parent):
        missing.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if not os.path.isdir(parent):
        raise UsageError(f"DST cannot be created: {parent} is not a folder")
    return missing[::-1]


def remove_parents(created: Sequence[str]) -> None:
    """Remove the folders convert created above DST, innermost first, if they are empty."""
    for folder_path in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(folder_path)


def existing_ancestor(path: str) -> str:
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def disk_margin(output_bytes: int) -> int:
    """Room left free beyond the output itself: 1% of the output, at least 16 MiB, at most
    1 GiB. The file system needs blocks of its own for the new files (extents, directory
    entries, journal) and a disk filled to the last byte breaks other programs writing to it;
    both grow with the output but not without bound, hence the clamp."""
    return max(16 << 20, min(1 << 30, output_bytes // 100))


def size_or_zero(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _open_source(roots: tuple[str, ...], path: Path, name: str) -> io.BufferedReader:
    """A source file opened once, checked on its descriptor (HFC715 when it changed)."""
    try:
        return open_inside(path, roots)
    except FormatError as exc:
        raise ConversionError("HFC715", f"{name} changed during the conversion: {exc.message}") from None


def copy_file(roots: tuple[str, ...], src_path: Path, dst_path: Path, durable: bool, name: str) -> int:
    """Copy one non-weight file's content (never its permission bits); fsync it if ``durable``.

    The source is opened once (never through a symlink out of ``roots``) and copied from
    that descriptor: it cannot be swapped for another file between the check and the copy.
    """
    with _open_source(roots, src_path, name) as source:
        try:
            dst_path.parent.mkdir(parents=True, exist_ok=True)
            size = os.fstat(source.fileno()).st_size
            fd = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                copy_source(source.fileno(), fd, 0, size, lambda n: None)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise write_failure(exc, f"writing {name}") from None
    return size


def updated_config(roots: tuple[str, ...], path: Path, planned: Mapping[str, Any] | None, data: bytes) -> bytes:
    """The cast's config.json (``data``), once config.json is re-read through one checked
    descriptor and still says what was planned from (HFC715 otherwise)."""
    with _open_source(roots, path, "config.json") as source:
        try:
            text = source.read(64 << 20)
            current = json.loads(text)
        except (OSError, ValueError):
            current = None
    if current != planned:
        raise ConversionError("HFC715", "config.json changed during the conversion")
    return data


def write_small(path: Path, data: bytes, durable: bool) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_failure(exc, f"writing {path.name}") from None


def install(tmp: str, dst: str, force: bool) -> None:
    """Rename the finished folder to DST; with force, the old DST goes only after that.

    The renames are one uninterrupted step: a signal between moving the old DST aside and
    renaming the new one into place would lose the old DST (the roll-back never ran), and one
    right after the rename would make the roll-back fail (DST is no longer empty) with an
    OSError in place of the interrupt; and the old DST is removed whole, never left half removed.
    """
    with uninterrupted():
        if not os.path.lexists(dst):
            os.rename(tmp, dst)
            return
        if not force:  # created by someone else while we worked
            raise DestinationExistsError(f"{dst} appeared during the conversion; nothing replaced")
        old = tempfile.mkdtemp(prefix=".hfconv-old-", dir=os.path.dirname(dst))
        os.rmdir(old)
        os.rename(dst, old)
        try:
            os.rename(tmp, dst)
        except OSError:
            os.rename(old, dst)
            raise
        shutil.rmtree(old, ignore_errors=True)


def make_parents(folders: Sequence[str]) -> None:
    """Create DST's missing parents (outermost first), like ``mkdir -p``; HFC714 when that fails."""
    try:
        for folder_path in folders:
            os.mkdir(folder_path)
    except OSError as exc:
        remove_parents(folders)
        raise write_failure(exc, f"creating {folder_path}") from None


def check_free_space(output: int, parent: str) -> None:
    """HFC705 unless the file system DST goes to has ``output`` bytes free plus a margin."""
    margin = disk_margin(output)
    where = existing_ancestor(parent)
    free = shutil.disk_usage(where).free
    if free < output + margin:
        raise ConversionError("HFC705", f"DST needs {human_bytes(output)} + {human_bytes(margin)} margin (room the "
                                        f"file system needs beside the data), {human_bytes(free)} free on {where}")


def make_temp_folder(parent: str) -> str:
    """The temporary folder beside DST that everything is written into (HFC714 when it cannot be)."""
    try:
        return tempfile.mkdtemp(prefix=".hfconv-", dir=parent)
    except OSError as exc:
        raise write_failure(exc, f"creating a temporary folder in {parent}") from None


def write_other_files(tmp: str, plan: ConversionPlan, contents: FolderContents, roots: tuple[str, ...],
                      durable: bool) -> list[str]:
    """Step 5: the index, the non-weight files and (when casting) the updated config.json.

    Returns the files copied, in order.
    """
    if plan.is_sharded:
        write_small(Path(tmp) / INDEX_FILE, plan.index_json(), durable)
    root = contents.folder.root
    copied_files = []
    for name in plan.files_to_copy:
        target = Path(tmp) / name
        if name == "config.json" and plan.config_json is not None:
            write_small(target, updated_config(roots, root / name, contents.config, plan.config_json), durable)
        else:
            copy_file(roots, root / name, target, durable, name)
        copied_files.append(name)
    return copied_files


def publish(tmp: str, dst_abs: str, force: bool, durable: bool) -> None:
    """Step 7: permissions as ``mkdir`` would give, (with ``durable``) fsync, rename to DST."""
    mode = 0o777 & ~umask()
    for dirpath, _dirs, _files in os.walk(tmp):
        os.chmod(dirpath, mode)
        if durable:
            fsync_dir(dirpath)
    install(tmp, dst_abs, force)
    if durable:
        fsync_dir(os.path.dirname(dst_abs))
