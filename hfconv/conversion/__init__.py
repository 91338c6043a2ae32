"""``convert``: a model folder (``.bin`` or safetensors) -> a verified safetensors folder.

The package, one module per stage: ``plan`` (pure planner), ``write`` (shard writer),
``verify`` (bytes, CRC-32s, headers, validate), ``workers`` (thread/process pool),
``staging`` (paths, disk space, temporary folder, fsync, rename), ``manifest``, ``results``,
``errors`` and ``codes`` (HFC7xx). This module holds the public API and :func:`convert`.

Plan, then execute (STYLE habit 6):

1. read: discover SRC and parse every header/pickle with the restricted readers; refuse
   (:class:`InputRefused`) when a weight file the loader would read is broken or hostile;
2. plan: the ordered tensor list, alias resolution, output dtypes, shard plan
   (:func:`hfconv.sharding.plan_shards`) and the files to copy -- sizes only, no bytes;
3. check the free disk space;
4. write each output shard into a temporary folder beside DST: header, then every tensor's
   bytes straight out of the source file (``.bin`` storages are stored uncompressed and
   little-endian: byte for byte what safetensors stores) -- kernel-side with
   ``copy_file_range`` where source and output agree on the offset within a page, else
   through one reused 1 MiB buffer; numpy gathers non-contiguous views and swaps the
   bytes of a big-endian checkpoint; torch, imported only then, casts;
5. copy the non-weight files, write the index and, when casting, the updated config.json;
6. verify, on a second thread right behind the writer: every tensor's output bytes against
   the source's byte range (the output mapped, the source read, compared in C, a 4 MiB window at a time) or
   against its transform recomputed from the source; every ``.bin`` storage against the
   CRC-32 torch.save recorded (on the same windows when a tensor is its whole storage); every
   header as planned; then ``validate`` the folder: any error fails the conversion (HFC706
   new, HFC713 already in SRC) unless ``allow_invalid_output``;
7. with ``--fsync``, fsync (writeback is started as the bytes are written, so this waits for
   the tail only); then rename the temporary folder to DST. Any exception (a crash in a step, a full disk,
   Ctrl-C, SIGTERM via the CLI) removes the temporary folder, so DST is either complete or
   absent, and SRC is only ever opened for reading: each source file once, never through a
   symlink out of SRC (:func:`hfconv.fsutil.open_inside`).

Peak anonymous memory follows the largest tensor that needs transforming (at most one is
in memory at a time), never a shard or the model: copied tensors move page cache to page
cache and verification reads 4 MiB windows (the output's mapped and released as it goes, the
source's read into one reused buffer).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..contents import FolderContents, read_contents
from ..discovery import discover
from ..dtypes import DTYPE_ALIASES, DTYPE_CHOICES, canonical_dtype
from ..errors import OptionError, UsageError
from ..findings import Finding, finding
from ..interrupts import temporary_folder, uninterrupted
from ..sharding import INDEX_FILE, parse_size
from ..units import plural
from ..validation import check_contents
from ..weight_map import MapShard, MapTensor, shard_map, tensor_nbytes
from . import codes  # noqa: F401 - registers the HFC7xx codes
from .errors import (
    ConversionError,
    DestinationExistsError,
    InputRefused,
    VerificationError,
    write_failure,
)
from .in_place import convert_in_place
from .manifest import MANIFEST_FORMAT, stage_manifest
from .plan import ConversionPlan, PlannedTensor, ShardPlan, build_header, data_phase, plan_conversion
from .results import ConversionResult, ProgressCallback, ShardInfo, ValidationSummary
from .staging import (
    check_free_space,
    check_paths,
    fsync_dir,
    make_parents,
    make_temp_folder,
    missing_parents,
    publish,
    remove_parents,
    size_or_zero,
    write_other_files,
)
from .verify import raise_for_outcomes, validate_output
from .workers import progress_counter, run_tasks
from .write import ShardOutcome, ShardTask

__all__ = [
    "convert", "ConversionResult", "ShardInfo", "ValidationSummary", "ConversionError",
    "InputRefused", "VerificationError", "DestinationExistsError", "plan_conversion",
    "ConversionPlan", "ShardPlan", "PlannedTensor", "build_header", "data_phase", "DTYPE_CHOICES",
    "DTYPE_ALIASES", "canonical_dtype", "MANIFEST_FORMAT", "ProgressCallback", "write_failure", "plural",
    "OptionError", "validate_output",
]


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    *,
    max_shard_size: int | str = "5GB",
    dtype: str = "keep",
    verify: bool = True,
    manifest: str | os.PathLike | None = None,
    force: bool = False,
    jobs: int = 1,
    fsync: bool = False,
    progress: ProgressCallback | None = None,
    allow_invalid_output: bool = False,
    in_place: bool = False,
    delete_bin: bool = False,
) -> ConversionResult:
    """Convert a model folder to safetensors, streaming, and verify the result.

    Args:
        src: the model folder (``.bin`` single/sharded, with or without index, or safetensors).
        dst: the folder to create. It must not exist unless ``force``; it is created
            complete (by renaming a temporary folder beside it) or not at all.
        max_shard_size: shard limit, bytes or a Hub size string (``5GB``, ``500MB``, ``2GiB``).
        dtype: ``keep`` or ``float32``/``float16``/``bfloat16`` (or a :data:`DTYPE_ALIASES`
            short name: ``bf16``, ``fp16``, ``half``, ...) to cast floating tensors.
        verify: compare every output tensor with its source, byte for byte, and validate the
            output folder; False skips both.
        manifest: write per-tensor sha256 digests (``hfconv-manifest/1``) to this file.
        force: replace an existing DST folder (only once the new one is complete).
        jobs: write (and verify) output shards in this many processes.
        fsync: flush every written file and folder to the disk before DST appears, so DST
            is complete even after a power loss (like ``cp -r && sync``). Off, DST still
            appears only complete (atomic rename) after a crash, Ctrl-C, a full disk or a
            bad input, and the kernel writes the bytes back later, as it does for ``cp``.
        progress: called with ``(done_bytes, total_bytes)`` as bytes are written and verified.
        allow_invalid_output: write DST even when it fails validation (a salvage copy); the
            result then says so (``ok`` False, ``validation.findings`` the errors).
        in_place: no DST: write ``model.safetensors`` (or shards and their index) into SRC,
            beside its ``.bin`` files, verified, as the Hub's conversion does
            (:mod:`hfconv.conversion.in_place`); a cast, a manifest, ``force`` and
            ``allow_invalid_output`` do not apply.
        delete_bin: with ``in_place``, delete the ``.bin`` files (and their index) once the
            safetensors are verified and the folder validated; never before.

    Returns:
        The ConversionResult (``result.ok`` False only for an invalid output written with
        ``allow_invalid_output``).

    Raises:
        UsageError: SRC is not a folder, DST exists without ``force`` (DestinationExistsError),
            DST is inside SRC or the reverse, a component of DST's parent path is a file,
            ``force`` on a folder convert could not have written (see ``staging.check_paths``),
            or a bad option (OptionError, a UsageError naming the argument: ``jobs``,
            ``max_shard_size``, ``dtype``, ``manifest``, ``force``). DST's missing parents are
            created, and removed on failure.
        InputRefused: SRC holds a weight file that is broken, hostile (HFC201) or missing.
        ConversionError: not enough disk space (HFC705), writing failed (HFC714: a full disk,
            an I/O error), a source file changed during the conversion (HFC715).
        InputRefused: also when a ``.bin`` storage fails its recorded CRC-32 (HFC704 with HFC901).
        VerificationError: a tensor differs from its source (HFC701) or the output fails
            validation (HFC706: errors convert made; HFC713: errors already in the source).
    """
    if in_place or delete_bin:
        if not in_place:
            raise OptionError("delete_bin", " applies only to in_place")
        if dst is not None or manifest is not None or force or allow_invalid_output:
            raise UsageError("in_place writes into SRC: it takes no DST, manifest, force or allow_invalid_output")
        return convert_in_place(src, max_shard_size=max_shard_size, dtype=dtype, verify=verify,
                                delete_bin=delete_bin, jobs=jobs, fsync=fsync, progress=progress)
    if dst is None:
        raise UsageError("convert needs DST (or in_place=True)")
    started = time.perf_counter()
    # 1. Arguments and paths: nothing is read or written before they are all accepted.
    limit, dtype = _options(max_shard_size, dtype, jobs)
    paths = _paths(src, dst, manifest, force)

    # 2. Read SRC (headers and pickles only) and plan (sizes and byte ranges, no tensor bytes).
    contents = read_contents(discover(paths.src))
    plan = plan_conversion(contents, limit, dtype)
    _check_manifest_target(paths, plan)
    # The source's own validation errors (e.g. in a tokenizer file) are inherited, not ours.
    source_findings = list(check_contents(contents).findings) if verify else []

    # 3. Free space: shards plus copied files, with a margin (see staging.disk_margin).
    copy_bytes = sum(size_or_zero(contents.folder.path(n)) for n in plan.files_to_copy)
    check_free_space(sum(s.file_nbytes for s in plan.shards) + copy_bytes, paths.parent)

    # 4-7. Write, verify and rename into place. DST's missing parents are created like
    # mkdir -p, and removed again if the conversion fails.
    settings = _Settings(verify, force, jobs, fsync, allow_invalid_output, digest=manifest is not None)
    make_parents(paths.new_parents)
    try:
        outcomes, copied, summary = _convert_into(paths, contents, plan, source_findings, settings, progress)
    except BaseException:
        remove_parents(paths.new_parents)
        raise

    # 8. What was written, and how it was checked.
    return _result(paths, plan, outcomes, copied, summary, settings, started, shard_map(contents))


@dataclass(frozen=True)
class _Paths:
    """SRC, DST and the manifest as :func:`convert` uses them, checked (step 1)."""

    src: str
    dst: str
    """DST as given (for messages and the result)."""
    dst_abs: str
    parent: str
    """The folder DST goes into (the temporary folder is created there)."""
    new_parents: tuple[str, ...]
    """DST's missing parent folders, outermost first."""
    manifest: str | None
    """The manifest's absolute path, or None."""
    manifest_rel: str | None
    """The manifest's name inside DST when it is written into DST, else None."""
    manifest_arg: str | None
    """The manifest path as given (for messages)."""


@dataclass(frozen=True)
class _Settings:
    """The keyword arguments of :func:`convert` that steps 4-7 follow."""

    verify: bool
    force: bool
    jobs: int
    fsync: bool
    allow_invalid_output: bool
    digest: bool
    """Compute each tensor's sha256 (a manifest was asked for)."""


def _options(max_shard_size: int | str, dtype: str, jobs: int) -> tuple[int, str]:
    """The shard limit in bytes and the canonical dtype; OptionError (naming the argument, the
    CLI names its flag) for a bad value."""
    try:
        limit = parse_size(max_shard_size)
    except ValueError as exc:
        raise OptionError("max_shard_size", f": {exc}") from None
    dtype = canonical_dtype(dtype)
    if jobs < 1:
        raise OptionError("jobs", " must be at least 1")
    return limit, dtype


def _paths(src: str | os.PathLike[str], dst: str | os.PathLike[str], manifest: str | os.PathLike[str] | None,
           force: bool) -> _Paths:
    """Check SRC, DST (see :func:`staging.check_paths`) and where the manifest goes."""
    src_s, dst_s = os.fspath(src), os.fspath(dst)
    _, dst_abs = check_paths(src_s, dst_s, force)
    new_parents = tuple(missing_parents(dst_abs))
    manifest_path = os.path.abspath(os.fspath(manifest)) if manifest is not None else None
    # A manifest inside DST is written into the new folder (manifest_rel is its name there).
    manifest_rel = os.path.relpath(manifest_path, dst_abs) \
        if manifest_path is not None and manifest_path.startswith(dst_abs + os.sep) else None
    if manifest_path is not None and manifest_rel is None and not os.path.isdir(os.path.dirname(manifest_path)) \
            and os.path.dirname(manifest_path) not in new_parents:
        raise UsageError(f"the folder of manifest {manifest} does not exist")
    return _Paths(src_s, dst_s, dst_abs, os.path.dirname(dst_abs), new_parents, manifest_path, manifest_rel,
                  None if manifest is None else os.fspath(manifest))


def _check_manifest_target(paths: _Paths, plan: ConversionPlan) -> None:
    """A manifest written into DST must not take the name of a file convert writes there."""
    written = {*plan.files_to_copy, *(s.name for s in plan.shards), INDEX_FILE}
    if paths.manifest_rel is not None and paths.manifest_rel in written:
        raise OptionError("manifest", f" {paths.manifest_arg} would overwrite {paths.manifest_rel} in DST")


def _convert_into(paths: _Paths, contents: FolderContents, plan: ConversionPlan, source_findings: list[Finding],
                  settings: _Settings, progress: ProgressCallback | None
                  ) -> tuple[list[ShardOutcome], list[str], ValidationSummary | None]:
    """Steps 4-7: write and verify everything into a temporary folder beside DST, then rename it.

    Any exception removes the temporary folder (and a manifest written beside its target),
    so DST is either complete or absent. Returns the shard outcomes, the files copied and
    what ``validate`` said about the output (None without ``verify``).
    """
    if settings.verify or settings.digest:
        # numpy (~0.1 s to import) is first needed by the verifying thread; import it now on
        # the side, while the main thread starts copying (which mostly waits in syscalls).
        threading.Thread(target=_import_numpy, name="hfconv-import", daemon=True).start()
    advance = progress_counter(progress, plan.total_size, 2 if settings.verify else 1)
    manifest_tmp: str | None = None
    roots = tuple(str(r) for r in (contents.folder.root, contents.folder.blob_root) if r is not None)
    try:
        # The temporary folder is created and recorded for its removal in one uninterrupted step
        # (interrupts.temporary_folder), and so is the manifest beside DST: a signal in between
        # would leave it behind. Once renamed into place, there is nothing left to remove.
        with temporary_folder(lambda: make_temp_folder(paths.parent)) as tmp:
            # 4. Shards (written and, per shard, verified while still in the page cache).
            tasks = [ShardTask(shard, os.path.join(tmp, shard.name), settings.verify, settings.digest,
                               settings.fsync, roots) for shard in plan.shards]
            outcomes = run_tasks(tasks, settings.jobs, advance)
            raise_for_outcomes(plan.shards, outcomes)

            # 5. Index, non-weight files, config.json.
            copied = write_other_files(tmp, plan, contents, roots, settings.fsync)

            # 6. The output must pass validate (any error fails it, unless asked to write it anyway).
            summary = validate_output(tmp, source_findings, settings.allow_invalid_output) if settings.verify \
                else None

            # Manifest: inside DST it becomes part of the folder; elsewhere it is written beside
            # its target now and renamed once DST is in place.
            if paths.manifest is not None:
                with uninterrupted():
                    manifest_tmp = stage_manifest(tmp, paths.manifest, paths.manifest_rel, plan, outcomes,
                                                  settings.fsync)

            # 7. Make it visible: permissions, (with fsync) fsync, rename (old DST away last), and the
            # manifest beside it: all or nothing, a signal waits for its end (then DST is complete).
            with uninterrupted():
                publish(tmp, paths.dst_abs, settings.force, settings.fsync)
                if manifest_tmp is not None and paths.manifest is not None:
                    os.replace(manifest_tmp, paths.manifest)
                    manifest_tmp = None
                    if settings.fsync:
                        fsync_dir(os.path.dirname(paths.manifest))
    except BaseException as exc:
        if manifest_tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(manifest_tmp)
        if isinstance(exc, OSError):  # a step without its own wording: still one line, no traceback
            where = os.path.basename(exc.filename) if isinstance(exc.filename, str) else ""
            raise write_failure(exc, f"writing {where}" if where else "writing DST") from None
        raise
    return outcomes, copied, summary


def _result(paths: _Paths, plan: ConversionPlan, outcomes: list[ShardOutcome], copied: list[str],
            summary: ValidationSummary | None, settings: _Settings, started: float,
            source_map: Sequence[MapShard] = ()) -> ConversionResult:
    """The ConversionResult of a completed conversion (HFC716 when an invalid output was written)."""
    invalid = summary is not None and not summary.valid
    written_anyway = (finding("HFC716", f"output INVALID: {paths.dst} fails validation with "
                                        f"{plural(summary.errors, 'error')} (written anyway: "
                                        "allow_invalid_output=True)"),) if summary is not None and invalid else ()
    return ConversionResult(
        src=paths.src,
        dst=paths.dst,
        tensors=len(plan.tensors),
        bytes=plan.total_size,
        shards=tuple(ShardInfo(s.name, len(s.tensors), o.file_nbytes) for s, o in zip(plan.shards, outcomes)),
        dtype=plan.dtype,
        cast=sum(1 for t in plan.tensors if t.action == "cast"),
        dropped_aliases=dict(plan.dropped_aliases),
        copied_aliases=dict(plan.copied_aliases),
        files_copied=tuple(copied),
        files_skipped=dict(plan.files_skipped),
        seconds=time.perf_counter() - started,
        verified=settings.verify,
        validation=summary,
        findings=plan.findings + written_anyway,
        manifest=paths.manifest,
        durable=settings.fsync,
        source_map=source_map,
        output_map=tuple(MapShard(s.name, o.file_nbytes, tuple(MapTensor(t.name, t.shape, t.dtype,
                                                                         tensor_nbytes(t.dtype, t.shape))
                                                               for t in s.tensors))
                         for s, o in zip(plan.shards, outcomes)),
    )


def _import_numpy() -> None:
    with contextlib.suppress(ImportError):
        import numpy  # noqa: F401
