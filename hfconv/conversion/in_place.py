"""``convert(src, in_place=True)``: safetensors written beside the ``.bin`` files of SRC, as
the Hub's safetensors conversion does.

1. read SRC and plan as :func:`hfconv.conversion.convert` does; refuse a folder that already
   holds safetensors weights, a Hub cache snapshot, a cast (the ``.bin`` files and config.json
   would then disagree), and any file convert would write that SRC already has;
2. write and verify the shards (every tensor byte for byte, every storage's CRC-32), the
   index and the other files into a hidden temporary folder inside SRC, and validate it;
3. move the shards into SRC (each ``rename`` is atomic), the index last, so a loader sees the
   new weights only once every shard is in place; a failure removes the shards already moved;
4. only then, with ``delete_bin``, delete the ``.bin`` files of the weights loaders read and
   their index.
"""

from __future__ import annotations

import os
import time

from ..contents import read_contents
from ..discovery import discover
from ..dtypes import canonical_dtype
from ..errors import OptionError, UsageError
from ..findings import finding, register
from ..fsutil import fsync_dir
from ..interrupts import temporary_folder, uninterrupted
from ..sharding import INDEX_FILE, parse_size
from ..units import plural
from ..validation import check_contents, check_folder
from .errors import ConversionError, write_failure
from .plan import plan_conversion
from .results import ConversionResult, ProgressCallback, ShardInfo, ValidationSummary
from .staging import check_free_space, make_temp_folder, umask, write_other_files
from .verify import raise_for_outcomes, validate_output
from .workers import progress_counter, run_tasks
from .write import ShardTask

__all__ = ["convert_in_place"]

register("HFC717", "info", "converted in place",
         "The safetensors weights were written beside the .bin files of the folder and verified; "
         "loaders that prefer safetensors (transformers does) now read them.",
         "Nothing to do. The .bin files stay, for old clients; delete them with --delete-bin once you "
         "no longer need them.",
         "model.safetensors written beside pytorch_model.bin and verified; the .bin files stay")
register("HFC718", "info", ".bin files deleted",
         "With --delete-bin the .bin weights (and their index) are deleted, only after the safetensors "
         "written beside them were verified tensor by tensor and the folder validated.",
         "Nothing to do; the folder now holds safetensors weights only.",
         "deleted pytorch_model-00001-of-00002.bin, pytorch_model-00002-of-00002.bin and "
         "pytorch_model.bin.index.json after verification")


def convert_in_place(src: str | os.PathLike[str], *, max_shard_size: int | str = "5GB", dtype: str = "keep",
                     verify: bool = True, delete_bin: bool = False, jobs: int = 1, fsync: bool = False,
                     progress: ProgressCallback | None = None) -> ConversionResult:
    """Write SRC's ``.bin`` weights as safetensors into SRC itself (see the module).

    Raises:
        UsageError: SRC is not a folder, holds no ``.bin`` weights or holds safetensors weights
            already, is a Hub cache snapshot, already has a file convert would write; a cast
            (``dtype``), or ``delete_bin`` without ``verify`` (OptionError).
        InputRefused, ConversionError, VerificationError: as :func:`hfconv.conversion.convert`.
    """
    started = time.perf_counter()
    # 1. Options, SRC, plan.
    try:
        limit = parse_size(max_shard_size)
    except ValueError as exc:
        raise OptionError("max_shard_size", f": {exc}") from None
    if canonical_dtype(dtype) != "keep":
        raise OptionError("dtype", " cannot be combined with in_place: the .bin files and config.json would "
                                   "disagree with the safetensors beside them; convert to another folder to cast")
    if delete_bin and not verify:
        raise OptionError("delete_bin", " needs verify: the .bin files are deleted only after verification")
    if jobs < 1:
        raise OptionError("jobs", " must be at least 1")
    check_folder(src)
    root = os.fspath(src)
    contents = read_contents(discover(root))
    folder = contents.folder
    if folder.blob_root is not None:
        raise UsageError(f"{root} is a snapshot of the Hub cache; writing into it would change the cache: "
                         "convert it to another folder instead")
    chosen = folder.loaded_set
    if chosen is None or chosen.format != "bin":
        what = "safetensors weights already" if chosen is not None else "no weights"
        raise UsageError(f"{root} holds {what}; in-place conversion writes safetensors beside .bin weights")
    plan = plan_conversion(contents, limit, "keep")
    targets = [s.name for s in plan.shards] + ([INDEX_FILE] if plan.is_sharded else [])
    present = [name for name in targets if os.path.lexists(os.path.join(root, name))]
    if present:
        raise UsageError(f"{root} already has {', '.join(present)}; in-place conversion never replaces a file")
    source_findings = list(check_contents(contents).findings) if verify else []
    check_free_space(sum(s.file_nbytes for s in plan.shards), root)

    # 2. Write, verify and validate in a hidden folder inside SRC (same file system: renames).
    roots = tuple(str(r) for r in (folder.root, folder.blob_root) if r is not None)
    advance = progress_counter(progress, plan.total_size, 2 if verify else 1)
    moved: list[str] = []
    deleted: list[str] = []
    try:
        with temporary_folder(lambda: make_temp_folder(root)) as tmp:
            tasks = [ShardTask(shard, os.path.join(tmp, shard.name), verify, False, fsync, roots)
                     for shard in plan.shards]
            outcomes = run_tasks(tasks, jobs, advance)
            raise_for_outcomes(plan.shards, outcomes)
            write_other_files(tmp, plan, contents, roots, fsync)
            summary: ValidationSummary | None = validate_output(tmp, source_findings, False) if verify else None
            # 3. Into SRC: shards first, the index last. Once all are moved the conversion is done: a
            # signal after that removes only the temporary folder.
            _move_into(tmp, root, targets, moved, fsync)
        # 4. The .bin files, only now: all of them or, interrupted before, none.
        if delete_bin:
            with uninterrupted():
                for name in (*contents.shards_of(chosen), *((chosen.index,) if chosen.index else ())):
                    try:
                        os.unlink(os.path.join(root, name))
                        deleted.append(name)
                    except FileNotFoundError:
                        pass
                if fsync:
                    fsync_dir(root)
    except BaseException as exc:
        committed = len(moved) == len(targets)
        if not committed:
            for name in moved:
                try:
                    os.unlink(os.path.join(root, name))
                except OSError:
                    pass
        if isinstance(exc, OSError) and not committed:
            raise write_failure(exc, f"writing into {root}") from None
        raise
    written = " and ".join(targets) if len(targets) <= 2 else f"{plural(len(plan.shards), 'shard')} and {INDEX_FILE}"
    notes = [finding("HFC717", f"{written} written beside {', '.join(contents.shards_of(chosen))} and "
                               f"{'verified' if verify else 'not verified (verify=False)'}"
                               + ("" if delete_bin else "; the .bin files stay"))]
    if deleted:
        notes.append(finding("HFC718", f"deleted {', '.join(deleted)} after verification"))
    return ConversionResult(
        src=root, dst=root, tensors=len(plan.tensors), bytes=plan.total_size,
        shards=tuple(ShardInfo(s.name, len(s.tensors), o.file_nbytes) for s, o in zip(plan.shards, outcomes)),
        dtype="keep", cast=0, dropped_aliases=dict(plan.dropped_aliases), copied_aliases=dict(plan.copied_aliases),
        files_copied=(), files_skipped=dict(plan.files_skipped), seconds=time.perf_counter() - started,
        verified=verify, validation=summary, findings=(*plan.findings, *notes), durable=fsync,
        in_place=True, written=tuple(targets), deleted=tuple(deleted),
    )


def _move_into(tmp: str, root: str, names: list[str], moved: list[str], durable: bool) -> None:
    """Rename each of ``names`` from ``tmp`` into ``root`` (never over an existing file)."""
    mode = 0o666 & ~umask()
    for name in names:
        source, target = os.path.join(tmp, name), os.path.join(root, name)
        os.chmod(source, mode)
        if os.path.lexists(target):
            raise ConversionError("HFC714", f"moving {name} into {root} failed: {name} appeared there during the "
                                            "conversion; the folder is as it was")
        with uninterrupted():  # renamed and recorded for the roll-back in one step
            try:
                os.rename(source, target)
            except OSError as exc:
                raise ConversionError("HFC714", f"moving {name} into {root} failed: {exc.strerror or exc}; the "
                                                "folder is as it was") from None
            moved.append(name)
    if durable:
        fsync_dir(root)


