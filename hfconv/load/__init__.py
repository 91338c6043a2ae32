"""``load-test``: plan a device map, load every tensor onto its device, prove every byte arrived.

Plan, then execute (STYLE habit 6); one module per step of :func:`load_test`:

1. :mod:`.gate`: validate the folder and refuse one with errors that affect loading;
2. :mod:`.located`: where every tensor's bytes are, from the headers validate read;
3. :mod:`.probes` and :mod:`.device_map` (pure): the devices and their free memory, then the
   plan (or the given map checked) under ``max_memory``: a tensor left unassigned, a device
   the machine lacks or a device over its limit is an error before anything is read;
4. :mod:`.executor` with :mod:`.transfer`: load shard by shard, tensor by tensor, in file
   order, through reused host buffers;
5. :mod:`.checksum` and :mod:`.sources`: verify each tensor where it landed against the bytes
   in the file, read again in a second thread (:mod:`.executor` compares them);
6. :mod:`.forward`: with ``forward``, one forward pass with transformers on the same map.

:mod:`.results` holds what it returns; :mod:`.options` checks ``device_map`` and
``max_memory``; :mod:`.codes` registers HFC730..746. The renderers are in
:mod:`hfconv.render.load`.

GPU tensors stay on their device until the whole model is loaded (``keep``), as when the
model is served: the peak memory per GPU is the footprint of serving, and a GPU that cannot
really hold its share fails here (``keep=False`` frees each one once verified). cpu tensors
are read into one reused buffer (the size of the largest of them), checksummed there and
dropped: a served model maps its cpu weights from the page cache rather than copying them,
the plan has checked the cpu limit, and faulting in gigabytes of fresh memory would only
measure the kernel's page zeroing. Host memory therefore stays near one tensor plus a 64 MiB
staging buffer, whatever the model's size.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..dtypes import DTYPE_CHOICES, canonical_dtype
from ..errors import OptionError
from ..findings import Finding, Severity, finding
from ..folder_check import check_folder
from ..interrupts import temporary_folder
from ..tensor_bytes import storage_records
from ..weight_map import shard_map
from . import codes as codes
from .checksum import checksum_bytes, checksum_tensor
from .device_map import DevicePlan, PlanError, device_sort_key, plan_device_map, plan_from_map, unused_keys
from .executor import MAX_LOAD_ERRORS, Loader, device_stats
from .forward import run_forward
from .gate import Gate, Validated, affects_loading, validate_for_loading
from .located import FolderBytes, locate_folder
from .options import parse_max_memory, resolve_device_map
from .probes import capacities, peak_rss, proc_status
from .results import DeviceStats, ForwardResult, LoadResult, Refused
from .sources import SourceChecksums

__all__ = [
    "DTYPE_CHOICES", "DeviceStats", "ForwardResult", "LoadResult", "affects_loading", "checksum_bytes",
    "checksum_tensor", "load_test",
]


@dataclass(frozen=True)
class _Options:
    """load_test's arguments, checked (step 0)."""

    strategy_or_map: str | dict[str, str]
    limits: dict[str, int]
    offload_folder: str | os.PathLike[str] | None
    dtype: str
    forward: bool
    progress: Callable[[int, int], None] | None
    keep: bool
    gate: Gate


def load_test(
    path: str | os.PathLike[str],
    *,
    device_map: str | Mapping[str, Any] = "auto",
    max_memory: Mapping[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    dtype: str | None = None,
    forward: bool = False,
    progress: Callable[[int, int], None] | None = None,
    keep: bool = True,
    phase: Callable[[str], None] | None = None,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    strict: bool = False,
) -> LoadResult:
    """Load every tensor of a model folder onto its planned device and verify every byte.

    Args:
        path: the model folder.
        device_map: ``auto``, ``balanced``, ``sequential`` (planned; see :mod:`hfconv.load.device_map`),
            a JSON file path, or a ``{module_prefix: device}`` mapping.
        max_memory: device (``0``, ``cuda:1``, ``cpu``, ``disk``) -> limit (bytes or a size string
            such as ``"20GiB"``). Devices not named get their free memory minus headroom (90%
            of free GPU memory and of MemAvailable; 95% of the offload folder's free disk);
            ``0`` keeps a device out of the plan.
        offload_folder: where ``disk`` tensors of ``.bin`` sources are written (a fresh
            subfolder, removed afterwards); default: the system temp dir. Safetensors sources
            are left in (and read back from) their own shards.
        dtype: ``keep`` (None) or ``float32``/``float16``/``bfloat16``: floating tensors are cast
            on their device after verification (``disk`` tensors keep their stored dtype).
        forward: also build the model with transformers on the same map and run one forward pass.
        progress: called as ``progress(bytes_done, bytes_total)`` after each tensor.
        keep: keep GPU tensors on their devices until all are loaded (the serving
            footprint); False frees each one once verified. cpu tensors are never kept (they
            pass through one reused buffer; see the module docstring).
        phase: told each phase as it starts: ``validating``, ``importing torch``,
            ``loading``, ``forward pass`` (a progress display's label).
        select, ignore: validation codes (or prefixes) kept / dropped, as ``validate`` takes them.
        strict: refuse a folder with any validation error; by default only errors that affect
            loading (:func:`affects_loading`) refuse it, the others are a warning (HFC744).

    Returns:
        The LoadResult; ``result.ok`` is the verdict, ``result.exit_code`` the CLI's.

    Raises:
        UsageError: path is not a folder, a bad ``device_map`` file or device name, a bad
            ``max_memory`` entry, an unknown ``dtype``.
    """
    # 0. The options, checked before anything is read.
    started = time.perf_counter()
    check_folder(path)  # the one "is not a folder" check: says what it is instead
    root = Path(path)
    dtype = canonical_dtype(dtype)
    options = _Options(resolve_device_map(device_map), parse_max_memory(max_memory), offload_folder, dtype,
                       forward, progress, keep,
                       Gate(tuple(select or ()), tuple(ignore or ()), strict, phase or (lambda _name: None)))
    phases: dict[str, float] = {}
    # 1-6. The steps; a refusal or an I/O failure without its own finding ends in a result too.
    try:
        return _run(root, options, phases, started)
    except Refused as refused:
        phases["total"] = time.perf_counter() - started
        return LoadResult(path=str(path), findings=tuple(refused.findings), layout=refused.layout, dtype=dtype,
                          phases=phases, peak_rss=peak_rss(), kept=keep, shard_map=refused.shard_map)
    except OSError as exc:  # a step without its own finding (a full offload disk, ...): a finding, no traceback
        phases["total"] = time.perf_counter() - started
        where = f" ({exc.filename})" if isinstance(exc.filename, str) else ""
        failed = finding("HFC735", f"load-test could not finish: {exc.strerror or exc}{where}")
        return LoadResult(path=str(path), findings=(failed,), dtype=dtype, phases=phases, peak_rss=peak_rss(),
                          kept=keep)


def _run(root: Path, options: _Options, phases: dict[str, float], started: float) -> LoadResult:
    """Steps 1-6; raises Refused for a folder or plan that is not loaded."""
    # 1. Validate: a folder with errors that affect loading (any, with strict) never reaches torch.
    validated = validate_for_loading(root, options.gate, phases)

    # 2. Where every tensor's bytes are (from the headers validate read).
    tick = time.perf_counter()
    folder = locate_folder(root, validated.contents, options.dtype)
    if folder.problems:
        raise Refused(folder.problems, validated.layout, shard_map(validated.contents))
    phases["plan"] = time.perf_counter() - tick

    # 3. Plan (the devices and their free memory come from torch). Nothing is read before
    # the plan is accepted: a refused plan costs no I/O.
    options.gate.phase("importing torch")
    tick = time.perf_counter()
    import torch

    phases["import"] = time.perf_counter() - tick
    tick = time.perf_counter()
    offload_root = str(options.offload_folder) if options.offload_folder is not None else tempfile.gettempdir()
    with _offload_root(offload_root):
        plan, findings = _plan(torch, folder, options, offload_root, validated)
        phases["plan"] += time.perf_counter() - tick
        options.gate.phase("loading")

        # 4-5. Load and verify, shard by shard.
        stats, loaded, peak_anon = _load_and_verify(torch, root, validated, folder, plan, options, offload_root,
                                                    phases)
        findings.extend(loaded)

        # 6. One forward pass on the same map.
        forward_result = _forward_step(root, validated, plan, options, offload_root, findings, phases)
    phases["total"] = time.perf_counter() - started
    return LoadResult(
        path=str(root), findings=tuple(findings), layout=validated.layout, plan=plan, devices=stats,
        dtype=options.dtype, phases=phases, peak_rss=peak_rss(),
        peak_anon=max(peak_anon, proc_status().get("RssAnon", 0)) or None, forward=forward_result,
        kept=options.keep, shard_map=shard_map(validated.contents))


@contextlib.contextmanager
def _offload_root(offload_root: str) -> Iterator[None]:
    """The offload folder exists while the steps run; the folders load-test made for it are
    removed afterwards (an offload folder load-test made is not left behind)."""
    created = _missing_folders(offload_root)
    try:
        try:
            os.makedirs(offload_root, exist_ok=True)
        except OSError as exc:
            raise OptionError("offload_folder", f" {offload_root}: {exc.strerror or exc}") from None
        yield
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _missing_folders(path: str) -> list[str]:
    """``path`` and its parents that do not exist, outermost first."""
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.lexists(current) and os.path.dirname(current) != current:
        missing.append(current)
        current = os.path.dirname(current)
    return missing[::-1]


def _plan(torch: Any, folder: FolderBytes, options: _Options, offload_root: str, validated: Validated
          ) -> tuple[DevicePlan, list[Finding]]:
    """Step 3: the plan (or the given map, checked) and the findings about it.

    Raises:
        Refused: a device the machine lacks, or a plan error (HFC731..733).
    """
    # 3a. What each device can hold.
    try:
        caps = capacities(torch, options.limits, offload_root, folder.disk_writes)
    except OSError as exc:
        raise OptionError("offload_folder", f" {offload_root}: {exc.strerror or exc}") from None
    findings: list[Finding] = list(validated.passed)
    for device in options.limits:
        if device not in caps:
            have = ", ".join(sorted(caps, key=device_sort_key))
            raise Refused([finding("HFC732", f"max_memory names {device}, which this machine does not have "
                                   f"(devices: {have})")], validated.layout)
    # 3b. The plan, or the map checked against the tensors and the devices.
    items = [(loc.name, loc.out_nbytes) for loc in folder.located]
    try:
        if isinstance(options.strategy_or_map, str):
            plan = plan_device_map(items, caps, options.strategy_or_map, folder.tied)
        else:
            plan = plan_from_map(options.strategy_or_map, items, caps, folder.tied)
            for key in unused_keys(options.strategy_or_map, [name for name, _ in items]):
                findings.append(finding("HFC738", f"device map key {key!r} matches no tensor", tensor=key))
    except PlanError as exc:
        raise Refused([finding(exc.code, exc.message, tensor=exc.tensor)], validated.layout,
                      shard_map(validated.contents)) from None
    # 3c. What the plan does that deserves a note.
    findings.extend(_plan_notes(plan, folder.tied))
    findings.extend(finding("HFC745", note) for note in plan.notes)
    return plan, findings


def _plan_notes(plan: DevicePlan, tied: list[list[str]]) -> list[Finding]:
    """HFC739 for tensors left on meta, HFC737 for tied tensors the plan splits."""
    notes: list[Finding] = []
    on_meta = [name for name, device in plan.tensors.items() if device == "meta"]
    if on_meta:
        noun = "tensor is" if len(on_meta) == 1 else "tensors are"
        notes.append(finding("HFC739", f"{len(on_meta)} {noun} mapped to meta and were not loaded (e.g. {on_meta[0]})",
                             tensor=on_meta[0]))
    for group in tied:
        first = plan.tensors.get(group[0])
        for name in group[1:]:
            if plan.tensors.get(name) != first:
                notes.append(finding("HFC737", f"{name} shares its storage with {group[0]} but is placed on "
                                     f"{plan.tensors.get(name)}, not {first}", tensor=name))
    return notes


def _load_and_verify(torch: Any, root: Path, validated: Validated, folder: FolderBytes, plan: DevicePlan,
                     options: _Options, offload_root: str, phases: dict[str, float]
                     ) -> tuple[tuple[DeviceStats, ...], list[Finding], int]:
    """Steps 4-5 (timed as the ``load`` phase): ``(what each device received, the findings,
    peak anonymous memory)``.

    The source side of the checksums runs in a second thread (numpy releases the GIL) ahead
    of the loader; the offload files are removed afterwards.
    """
    # 4a. The offload folder (only when .bin tensors go to disk), removed whole afterwards.
    tick = time.perf_counter()
    with contextlib.ExitStack() as stack:
        offload_dir: str | None = None
        if folder.disk_writes and "disk" in plan.devices:
            try:
                offload_dir = stack.enter_context(temporary_folder(
                    lambda: tempfile.mkdtemp(prefix="hfconv-offload-", dir=offload_root)))
            except OSError as exc:
                raise OptionError("offload_folder", f" {offload_root}: {exc.strerror or exc}") from None
        return _load_into(torch, root, validated, folder, plan, options, offload_dir, phases, tick)


def _load_into(torch: Any, root: Path, validated: Validated, folder: FolderBytes, plan: DevicePlan,
               options: _Options, offload_dir: str | None, phases: dict[str, float], tick: float
               ) -> tuple[tuple[DeviceStats, ...], list[Finding], int]:
    """Steps 4-5 with the offload folder made: the peak counters, the sources, the load."""
    contents = validated.contents
    chosen = contents.folder.loaded_set
    to_load = [loc for loc in folder.located if plan.tensors[loc.name] != "meta"]
    for device in plan.devices:
        if device.startswith("cuda:"):
            torch.cuda.reset_peak_memory_stats(device)
    records = {(shard, r.key): r for shard in (contents.shards_of(chosen) if chosen else ())
               if (wf := contents.weights.get(shard)) is not None and wf.format != "safetensors"
               for r in storage_records(wf) if r.crc32 is not None}
    roots = tuple(r for r in (root, contents.folder.blob_root) if r is not None)
    sources = SourceChecksums(root, to_load, records, roots)
    try:
        loader = Loader(root, plan, folder.located, options.keep, offload_dir, options.progress, sources)
        loader.roots = roots
        try:
            # 4b. Load and verify every tensor.
            loader.run()
            for device in plan.devices:
                if device.startswith("cuda:"):
                    torch.cuda.synchronize(device)
            # 5. The storages' CRC-32s, then what each device received.
            corrupt = sources.crc_findings() if loader.errors < MAX_LOAD_ERRORS else []
            phases["load"] = time.perf_counter() - tick
            stats = device_stats(torch, plan, loader, folder.disk_writes)
            findings = [*corrupt, *loader.findings]
            if not any(d.tensors for d in stats):
                findings.append(finding("HFC743", f"nothing was loaded: {_why_nothing(folder, plan)}"))
        finally:
            loader.kept.clear()
    finally:
        sources.close()
    return stats, findings, loader.peak_anon


def _why_nothing(folder: FolderBytes, plan: DevicePlan) -> str:
    on_meta = sum(1 for loc in folder.located if plan.tensors.get(loc.name) == "meta")
    if not on_meta:
        return "the folder holds no tensors to load"
    return f"the device map puts all {on_meta} tensors on meta" if on_meta != 1 else \
        "the device map puts its only tensor on meta"


def _forward_step(root: Path, validated: Validated, plan: DevicePlan, options: _Options, offload_root: str,
                  findings: list[Finding], phases: dict[str, float]) -> ForwardResult | None:
    """Step 6 (only with ``forward``, and only when the weights loaded cleanly); appends its findings."""
    if not options.forward:
        return None
    tick = time.perf_counter()
    forward_result = None
    if any(f.severity is Severity.ERROR for f in findings):
        findings.append(finding("HFC740", "forward=True skipped: the weights did not load cleanly (see the errors)"))
    else:
        options.gate.phase("forward pass")
        forward_result, notes = run_forward(root, validated.contents.config or {}, plan, options.dtype, offload_root)
        findings.extend(notes)
    phases["forward"] = time.perf_counter() - tick
    if forward_result is not None:  # one duration: the phase's (building the model included)
        forward_result = replace(forward_result, seconds=phases["forward"])
    return forward_result
