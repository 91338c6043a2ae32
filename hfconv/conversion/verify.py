"""Verifying what was written: bytes against the source, CRC-32s, headers, then ``validate``.

Runs on a helper thread right behind the writer, on the bytes still in the page cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from ..findings import Finding, finding
from ..readers.safetensors_header import read_safetensors
from ..tensor_bytes import StorageRecord
from ..tensors import FormatError
from ..units import plural
from .errors import InputRefused, VerificationError, write_failure
from .plan import PlannedTensor, ShardPlan
from .results import ValidationSummary
from .staging import fsync_path
from .write import TRANSFORM_LOCK, Batch, ShardOutcome, ShardTask, Sources, read_source, release, transformed_bytes

__all__ = ["check_batch", "check_header", "finish_shard", "raise_for_outcomes", "validate_output"]


_COMPARE_CHUNK = 4 << 20
"""Bytes compared per step (and the window of a mapping resident at a time)."""


def check_batch(task: ShardTask, batch: Batch, sources: Sources,
                progress: Callable[[int], None]) -> tuple[list[tuple[str, str]], dict[str, str], list[Finding]]:
    """Verify (and digest, for the manifest) tensors just written.

    Maps only the batch's range of the output file. A tensor copied unchanged is compared
    directly with its source file's byte range (read with pread, compared in C); a
    transformed one with its bytes recomputed from the source. Returns (problems, digests,
    HFC901 findings of source storages failing their CRC-32).
    """
    import numpy as np

    problems: list[tuple[str, str]] = []
    digests: dict[str, str] = {}
    corrupt: list[Finding] = []
    begin = batch[0][1]
    end = batch[-1][1] + batch[-1][0].nbytes
    start = begin - begin % mmap.ALLOCATIONGRANULARITY
    out_map = None
    if end > begin:
        with open(task.path, "rb") as handle:
            out_map = mmap.mmap(handle.fileno(), end - start, offset=start, access=mmap.ACCESS_READ)
    try:
        out = np.frombuffer(out_map, dtype=np.uint8) if out_map is not None else None
        for tensor, offset in batch:
            at = offset - start
            record = tensor.record if task.verify else None
            # A copied tensor that is its whole storage: its CRC-32 is computed on the windows
            # compared; any other storage is read once more for it (from the page cache).
            fused = record is not None and tensor.action == "copy" and tensor.nbytes > 0 and \
                (tensor.offset, tensor.nbytes) == (record.begin, record.nbytes)
            if record is not None and not fused:
                corrupt += _check_crc(tensor, record, sources)
            if tensor.nbytes == 0:
                digests[tensor.name] = hashlib.sha256(b"").hexdigest()
                continue
            assert out is not None and out_map is not None
            if task.verify:
                why = _compare_tensor(tensor, out, out_map, at, sources, progress, record if fused else None, corrupt)
                if why:
                    problems.append((tensor.name, why))
            if task.digest:
                digests[tensor.name] = _sha256(out_map, at, at + tensor.nbytes)
        del out
    finally:
        if out_map is not None:
            with contextlib.suppress(BufferError):
                out_map.close()
    return problems, digests, corrupt


def _compare_tensor(tensor: PlannedTensor, out: Any, out_map: mmap.mmap, at: int, sources: Sources,
                    progress: Callable[[int], None], fused: StorageRecord | None, corrupt: list[Finding]) -> str:
    """Compare one written tensor (at ``at`` in the batch's mapping) with its source; why it
    differs, or "". ``fused``: its storage record, whose CRC-32 is computed on the same windows
    (an HFC901 is appended to ``corrupt`` when it fails)."""

    if tensor.action == "copy":
        crc = [0] if fused is not None else None
        same = _ranges_equal(out, at, _source_windows(tensor, sources, tensor.offset, tensor.nbytes), progress,
                             out_map, crc)
        if fused is not None and same and crc is not None and crc[0] != fused.crc32:
            corrupt.append(_crc_finding(tensor, fused, crc[0]))
    else:
        with TRANSFORM_LOCK:  # one transformed tensor in memory at a time
            expected = transformed_bytes(tensor, sources)
            windows = (expected[pos:pos + _COMPARE_CHUNK] for pos in range(0, tensor.nbytes, _COMPARE_CHUNK))
            same = _ranges_equal(out, at, windows, progress, out_map)
            del windows, expected
    if same:
        return ""
    what = "its cast" if tensor.action == "cast" else "the source"
    return f"output bytes differ from {what} ({tensor.source_file})"


def _source_windows(tensor: PlannedTensor, sources: Sources, begin: int, nbytes: int) -> Iterator[Any]:
    """``nbytes`` of the tensor's source file from ``begin``, as successive uint8 windows of up
    to :data:`_COMPARE_CHUNK` bytes, read (``pread``) into one reused buffer: each is valid until
    the next is asked for.

    Read, not mapped: a source file cut during the conversion is an HFC701 naming the tensor,
    where a mapping of it would end the process with SIGBUS (no message, the temporary folder
    left behind). The bytes come from the page cache, where the writer has just read them.
    """
    import numpy as np

    buffer = np.empty(min(_COMPARE_CHUNK, nbytes), dtype=np.uint8)
    for pos in range(begin, begin + nbytes, _COMPARE_CHUNK):
        window = buffer[:min(_COMPARE_CHUNK, begin + nbytes - pos)]
        read_source(tensor, sources, window.data, pos)
        yield window


def _ranges_equal(a: Any, a_off: int, windows: Iterable[Any], progress: Callable[[int], None],
                  a_map: mmap.mmap | None = None, crc: list[int] | None = None) -> bool:
    """Compare a byte range of the uint8 array ``a`` from ``a_off`` with the successive uint8
    ``windows`` of the other side, in C.

    Windows are compared as 64-bit words (twice as fast as bytes) into one reused result
    buffer. ``a_map`` is the mapping behind ``a``, if any: each compared window is released
    from the resident set once compared. With ``crc`` (a one-item list), the CRC-32 of the
    windows is computed on them, while they are in the cache.
    """
    import numpy as np

    result = np.empty(_COMPARE_CHUNK // 8, dtype=bool)
    pos = 0
    for right in windows:
        step = len(right)
        left = a[a_off + pos:a_off + pos + step]
        if crc is not None:
            crc[0] = _crc32(right, crc[0])
        if step % 8 == 0:
            left, right, out = left.view(np.uint64), right.view(np.uint64), result[:step // 8]
            np.equal(left, right, out=out)
            same = bool(out.all())
        else:
            same = bool(np.array_equal(left, right))
        del left, right
        release(a_map, a_off + pos, step)
        if not same:
            return False
        pos += step
        progress(step)
    return True


def _check_crc(tensor: PlannedTensor, record: StorageRecord, sources: Sources) -> list[Finding]:
    """The storage ``tensor`` views, read from the source, against its recorded CRC-32."""
    value = 0
    for window in _source_windows(tensor, sources, record.begin, record.nbytes):
        value = _crc32(window, value)
    return [] if value == record.crc32 else [_crc_finding(tensor, record, value)]


def _crc_finding(tensor: PlannedTensor, record: StorageRecord, computed: int) -> Finding:
    from ..checks.deep import crc_mismatch

    assert record.crc32 is not None
    return crc_mismatch(tensor.source_file, record.key, record.first_user, record.crc32, computed)


def _crc32(data: Any, value: int = 0) -> int:
    from ..checks.deep import crc32

    return crc32(data, value)


def _sha256(mapped: mmap.mmap, begin: int, end: int) -> str:
    digest = hashlib.sha256()
    with memoryview(mapped) as view:
        for pos in range(begin, end, _COMPARE_CHUNK):
            stop = min(pos + _COMPARE_CHUNK, end)
            digest.update(view[pos:stop])
            release(mapped, pos, stop - pos)
    return digest.hexdigest()


def check_header(task: ShardTask) -> list[tuple[str, str]]:
    """The written header, parsed by the strict reader, says exactly what was planned."""
    shard = task.shard
    try:
        written = read_safetensors(task.path)
    except FormatError as exc:
        return [("", f"{shard.name}: the written file does not parse: {exc.message} ({exc.code})")]
    base = len(shard.header)
    planned, offset = [], base
    for t in shard.tensors:
        planned.append((t.name, t.dtype, t.shape, (offset, offset + t.nbytes)))
        offset += t.nbytes
    found = [(m.name, m.dtype, m.shape, m.data_offsets) for m in written.tensors.values()]
    if found != planned or dict(written.metadata or {}) != dict(shard.metadata):
        return [("", f"{shard.name}: the written header does not describe the planned tensors and metadata")]
    return []


def finish_shard(task: ShardTask, checks: list[Future]) -> ShardOutcome:
    """Collect a shard's batch checks (already run: same single thread), check its header, fsync it."""
    problems: list[tuple[str, str]] = []
    digests: dict[str, str] = {}
    corrupt: list[Finding] = []
    for future in checks:
        found, sums, bad = future.result()
        problems += found
        digests.update(sums)
        corrupt += bad
    if task.verify:
        problems = check_header(task) + problems
    if task.durable:
        try:
            fsync_path(task.path)
        except OSError as exc:
            raise write_failure(exc, f"flushing {task.shard.name} to the disk") from None
    return ShardOutcome(task.shard.name, os.stat(task.path).st_size, digests, tuple(problems), tuple(corrupt))


def validate_output(tmp: str, source_findings: list[Finding], allow_invalid: bool) -> ValidationSummary:
    """``validate`` the output: any error fails the conversion, unless ``allow_invalid``.

    Errors the source did not have are hfconv's bug (HFC706); errors already in the source
    (HFC713) fail it too: an output that does not load is not a conversion. With
    ``allow_invalid`` the summary carries the errors and the result is not ok.
    """
    from ..validation import validate

    report = validate(tmp, publishing=False)  # the output must load; whether the Hub takes it is validate's question
    source_codes = {f.code for f in source_findings if f.severity.value == "error"}
    errors = [f for f in report.findings if f.severity.value == "error"]
    new = [f for f in errors if f.code not in source_codes]
    inherited = len(errors) - len(new)
    if errors and not allow_invalid:
        first = (new or errors)[0]
        where = f"{first.file}: " if first.file and not first.message.startswith(first.file) else ""
        if new:
            head = finding("HFC706", f"the output would fail validation with {plural(len(new), 'error')} the source "
                           "does not have (a bug in hfconv: please report it)")
            message = f"the output would fail validation: {first.code} {where}{first.message}"
            raise VerificationError("HFC706", message, (head, *errors))
        message = (f"the output would fail validation with {plural(inherited, 'error')} already in the source (first: "
                   f"{first.code} {where}{first.message}); fix the source, or pass allow_invalid_output=True to "
                   "write it anyway")
        raise VerificationError("HFC713", message, (finding("HFC713", message), *errors))
    return ValidationSummary(errors=len(errors), warnings=report.warnings, inherited_errors=inherited,
                             codes=tuple(sorted({f.code for f in report.findings})), findings=tuple(errors))


def raise_for_outcomes(shards: Sequence[ShardPlan], outcomes: Sequence[ShardOutcome]) -> None:
    """After step 4: a source storage failing its CRC-32 refuses the input (HFC704 with the
    HFC901s); an output tensor differing from its source fails the conversion (HFC701)."""
    corrupt = [f for o in outcomes for f in o.corrupt]
    if corrupt:
        files = sorted({f.file for f in corrupt if f.file})
        count = len(corrupt)
        message = (f"the source is corrupted: {count} .bin storage{'s' if count != 1 else ''} of "
                   f"{', '.join(files)} fail{'s' if count == 1 else ''} the CRC-32 torch.save recorded (a flipped "
                   "bit on disk or in a transfer); re-download it")
        raise InputRefused("HFC704", message, (finding("HFC704", message), *corrupt))
    mismatches = [(shard, name, why) for shard, o in zip(shards, outcomes) for name, why in o.mismatches]
    if mismatches:
        found = tuple(finding("HFC701", f"{name or shard.name}: {why}", file=shard.name, tensor=name or None)
                      for shard, name, why in mismatches)
        raise VerificationError("HFC701", f"{plural(len(mismatches), 'tensor')} differ"
                                          f"{'s' if len(mismatches) == 1 else ''} from the source; first: "
                                          f"{found[0].message}", found)
