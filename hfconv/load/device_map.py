"""Device maps: plan one (``auto``, ``balanced``, ``sequential``) or read one. Pure: no torch, no I/O.

The planner takes ``(tensor name, nbytes)`` pairs and device capacities as plain integers,
never tensors or devices, so it is tested with integers (STYLE habit 6). Its output is a
:class:`DevicePlan` in the ``{module_prefix: device}`` form ``from_pretrained(device_map=...)``
takes.

Placement units (modules):

* a decoder block is the name up to and including its layer number (``model.layers.7``,
  ``transformer.h.3``, ``encoder.block.2``, ``bert.encoder.layer.0``); a block is never split
  across devices (accelerate's ``no_split_module_classes``);
* any other tensor belongs to its parent module (``model.embed_tokens``, ``model.norm``,
  ``lm_head``); a top-level tensor without a dot is its own unit.

Units are placed in model order, not file order (safetensors sorts names, so ``lm_head``
and ``model.layers.10`` come before ``model.layers.2`` in a file): input embeddings first,
then each stack of blocks in numeric order followed by the modules that close it
(``model.norm`` after ``model.layers.*``, an encoder before its decoder), then the rest,
and output heads (``lm_head``) last. As in accelerate's ``infer_auto_device_map``:

* devices are filled in order (``cuda:0``, ``cuda:1``, ..., ``cpu``, ``disk``) and a unit that
  does not fit moves the plan to the next device for good (the pipeline never goes back);
* tensors sharing one storage (a tied ``lm_head``) pull their modules onto the device of
  the first one placed, and their bytes count once;
* when the plan offloads, room for the largest block still to place is kept on the first
  GPU (for layers brought back from cpu or disk) and, when disk is used, on the cpu.
  accelerate keeps that room even when nothing is offloaded; hfconv only when it is used,
  so a model that fits exactly on one device is planned onto it.

Strategies:

* ``sequential``: fill each device in order, up to its capacity;
* ``balanced``: spread the units over the GPUs: each GPU in turn is filled up to the smallest
  budget with which the units left still fit on the GPUs left (the optimal contiguous split,
  where accelerate's ``get_balanced_memory`` approximates it with ``total / n`` plus 1.25
  blocks and can leave the last GPU nearly empty); GPUs only (the cpu when there is no GPU):
  a model that does not fit is a plan error rather than an offload;
* ``auto``: ``balanced`` when the model fits on the GPUs, else GPUs, then cpu, then disk
  (sequential with the offload reserves).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "STRATEGIES", "DEVICE_KINDS", "DevicePlan", "PlanError", "DeviceMapSyntaxError", "Unit",
    "module_of", "block_of", "group_units", "plan_device_map", "plan_from_map", "read_device_map",
    "parse_device", "device_sort_key", "resolve", "unused_keys", "compact_modules",
]

STRATEGIES = ("auto", "balanced", "sequential")
DEVICE_KINDS = ("cuda:N", "cpu", "disk", "meta")

# Plan error codes (registered, with their documentation, in hfconv.load.codes).
UNASSIGNED = "HFC731"
UNKNOWN_DEVICE = "HFC732"
EXCEEDS_MEMORY = "HFC733"

# A block: the shortest prefix ending in ``<stack>.<number>``; the leftmost match wins, so an
# MoE expert (``model.layers.3.mlp.experts.5``) belongs to its decoder block.
_BLOCK = re.compile(r"^((?:[^.]+\.)*?(?:layers|layer|h|block|blocks)\.(\d+))(?:\.|$)")
_EMBEDDING = re.compile(r"(?:^|\.)(?:embed\w*|\w*embeddings?|wte|wpe|shared|tok_embeddings|word_embeddings)(?:\.|$)")
_HEAD = re.compile(r"^(?:lm_head|(?:\w+\.)?lm_head|embed_out|output|score|classifier|qa_outputs|cls)(?:\.|$)")
_CUDA = re.compile(r"^cuda:(\d+)$")


class PlanError(Exception):
    """A device map that cannot be used: a tensor left unassigned, an unknown device, or not
    enough memory. ``code`` is the finding code to report; nothing has been loaded."""

    def __init__(self, code: str, message: str, tensor: str | None = None, device: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.tensor = tensor
        self.device = device


class DeviceMapSyntaxError(ValueError):
    """A device map file or device name that is not well formed (a usage error, exit 2)."""


# --- devices ----------------------------------------------------------------------------------

def parse_device(value: Any) -> str:
    """The canonical name of a device as device maps and ``--max-memory`` write it.

    Args:
        value: ``0`` or ``"0"`` (= ``cuda:0``), ``"cuda"`` (= ``cuda:0``), ``"cuda:N"``, ``"cpu"``,
            ``"disk"`` or ``"meta"`` (case-insensitive strings).

    Returns:
        ``cuda:N``, ``cpu``, ``disk`` or ``meta``.

    Raises:
        DeviceMapSyntaxError: anything else (``mps``, ``-1``, ``cuda:x``, ``True``).
    """
    if isinstance(value, bool):
        raise DeviceMapSyntaxError(f"invalid device {value!r}: use an integer GPU index, 'cuda:N', 'cpu', "
                                   "'disk' or 'meta'")
    if isinstance(value, int):
        if value < 0:
            raise DeviceMapSyntaxError(f"invalid device {value}: GPU indices start at 0")
        return f"cuda:{value}"
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return f"cuda:{int(text)}"
        if text == "cuda":
            return "cuda:0"
        match = _CUDA.match(text)
        if match:
            return f"cuda:{int(match.group(1))}"
        if text in ("cpu", "disk", "meta"):
            return text
    raise DeviceMapSyntaxError(f"invalid device {value!r}: use an integer GPU index, 'cuda:N', 'cpu', 'disk' or "
                               "'meta'")


def device_sort_key(device: str) -> tuple[int, int]:
    """Order devices as accelerate fills them: GPUs by index, then cpu, disk, meta."""
    match = _CUDA.match(device)
    if match:
        return (0, int(match.group(1)))
    return ({"cpu": 1, "disk": 2, "meta": 3}.get(device, 4), 0)


def _is_gpu(device: str) -> bool:
    return device.startswith("cuda:")


# --- units --------------------------------------------------------------------------------------

def block_of(name: str) -> tuple[str, str, int] | None:
    """``(block, stack, number)`` for a tensor inside a numbered block, else None.

    ``model.layers.7.mlp.up_proj.weight`` -> ``("model.layers.7", "model.layers", 7)``.
    """
    match = _BLOCK.match(name)
    if not match:
        return None
    block = match.group(1)
    return block, block.rsplit(".", 1)[0], int(match.group(2))


def module_of(name: str) -> str:
    """The placement unit of a tensor: its block, else its parent module, else itself."""
    found = block_of(name)
    if found:
        return found[0]
    return name.rsplit(".", 1)[0] if "." in name else name


@dataclass(frozen=True)
class Unit:
    """One placement unit: a block or a module, with the tensors it holds."""

    name: str
    tensors: tuple[str, ...]
    nbytes: int
    """Bytes of its tensors, each storage counted once."""
    block: bool


def group_units(items: Sequence[tuple[str, int]], tied: Sequence[Sequence[str]] = ()) -> list[Unit]:
    """Group tensors into units and put the units in model order (see the module docstring).

    Args:
        items: ``(tensor name, nbytes)``; names must be unique, sizes non-negative.
        tied: groups of tensor names sharing one storage: only the first member of a group
            counts its bytes.

    Returns:
        The units, in placement order.

    Raises:
        ValueError: a repeated name or a negative size.
    """
    free = _free_aliases(tied)
    members: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    seen: set[str] = set()
    for name, size in items:
        if name in seen:
            raise ValueError(f"tensor {name!r} appears twice")
        if size < 0:
            raise ValueError(f"tensor {name!r} has a negative size {size}")
        seen.add(name)
        unit = module_of(name)
        members.setdefault(unit, []).append(name)
        sizes[unit] = sizes.get(unit, 0) + (0 if name in free else size)
    order = _model_order(list(members))
    return [Unit(u, tuple(members[u]), sizes[u], block_of(u + ".") is not None) for u in order]


def _free_aliases(tied: Sequence[Sequence[str]]) -> set[str]:
    """Every member of a tied group but the first: their bytes are the first one's."""
    return {name for group in tied for name in list(group)[1:]}


def _model_order(units: list[str]) -> list[str]:
    stacks: dict[str, list[tuple[int, str]]] = {}
    embeddings: list[str] = []
    heads: list[str] = []
    others: list[str] = []
    for unit in units:
        found = block_of(unit + ".")
        if found:
            stacks.setdefault(found[1], []).append((found[2], unit))
        elif _HEAD.match(unit):
            heads.append(unit)
        elif _EMBEDDING.search(unit):
            embeddings.append(unit)
        else:
            others.append(unit)
    # An encoder runs before its decoder whatever the file order says.
    stack_names = sorted(stacks, key=lambda s: (0 if "encoder" in s.split(".") else 1, list(stacks).index(s)))
    closing: dict[str, list[str]] = {s: [] for s in stack_names}
    rest: list[str] = []
    for unit in others:
        owner = _closing_stack(unit, stack_names)
        (closing[owner] if owner else rest).append(unit)
    ordered = list(embeddings)
    for stack in stack_names:
        ordered.extend(unit for _, unit in sorted(stacks[stack]))
        ordered.extend(closing[stack])
    return ordered + rest + heads


def _closing_stack(unit: str, stacks: list[str]) -> str | None:
    """The stack whose parent module also holds ``unit`` (``model.norm`` closes ``model.layers``)."""
    best: tuple[int, str] | None = None
    for stack in stacks:
        parent = stack.rsplit(".", 1)[0] if "." in stack else ""
        if parent and (unit.startswith(parent + ".")):
            depth = parent.count(".") + 1
            if best is None or depth > best[0]:
                best = (depth, stack)
    return best[1] if best else None


# --- the plan -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DevicePlan:
    """Where every tensor goes, in the ``{module: device}`` form of ``from_pretrained``."""

    strategy: str
    """``auto``, ``balanced``, ``sequential`` or ``file``."""
    modules: dict[str, str]
    """Module prefix -> device, in placement order (a device map ``from_pretrained`` accepts)."""
    tensors: dict[str, str]
    """Tensor name -> device, for every tensor."""
    bytes: dict[str, int]
    """Device -> bytes placed there (shared storages once), for every device used."""
    capacities: dict[str, int | None] = field(default_factory=dict)
    """Device -> the limit the plan respected (None: unlimited), in device order."""
    reserved: dict[str, int] = field(default_factory=dict)
    """Device -> bytes kept free for offloaded layers brought back (accelerate's rule)."""
    notes: tuple[str, ...] = ()
    """What the plan did that the strategy's name does not say (``balanced`` without a GPU)."""

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices holding at least one tensor, in device order."""
        return tuple(sorted(set(self.tensors.values()), key=device_sort_key))

    @property
    def tensor_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for device in self.tensors.values():
            counts[device] = counts.get(device, 0) + 1
        return {d: counts[d] for d in sorted(counts, key=device_sort_key)}

    @property
    def offloads(self) -> bool:
        """True when some tensor is on cpu or disk although a GPU is in the plan, or on disk."""
        used = set(self.tensors.values())
        has_gpu = any(_is_gpu(d) for d in self.capacities) or any(_is_gpu(d) for d in used)
        return "disk" in used or (has_gpu and "cpu" in used)

    def module_rows(self) -> list[tuple[str, str]]:
        """:attr:`modules` for humans (see :func:`compact_modules`): what a renderer lists."""
        return compact_modules(self.modules)

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "modules": dict(self.modules),
            "bytes": dict(self.bytes),
            "tensors": self.tensor_counts,
            "limits": dict(self.capacities),
            "reserved": dict(self.reserved),
            "notes": list(self.notes),
        }


def describe_key(key: str, keys: Sequence[str] | Mapping[str, Any]) -> str:
    """A device map key for a message: ``""`` is the whole model, or the rest of it when other
    keys exist (the longest matching prefix wins)."""
    if key:
        return repr(key)
    return "'' (the rest of the model)" if len(keys) > 1 else "'' (the whole model)"


def plan_device_map(
    items: Sequence[tuple[str, int]],
    capacities: Mapping[str, int | None],
    strategy: str = "auto",
    tied: Sequence[Sequence[str]] = (),
) -> DevicePlan:
    """Plan a device map for tensors of the given sizes.

    Args:
        items: ``(tensor name, nbytes)`` as loaded (after any dtype cast), in file order.
        capacities: device (``cuda:N``, ``cpu``, ``disk``) -> bytes it may hold, or None for no
            limit. Order does not matter; devices with capacity 0 are skipped.
        strategy: ``auto``, ``balanced`` or ``sequential`` (see the module docstring).
        tied: groups of tensor names sharing one storage: kept on one device, bytes counted once.

    Returns:
        The DevicePlan.

    Raises:
        ValueError: unknown strategy, repeated name, negative size or capacity.
        PlanError: ``HFC733`` when the tensors do not fit the devices (the message names the
            largest module when no device can hold it, else the total and the limits).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    caps = _check_capacities(capacities)
    units = group_units(items, tied)
    steps = _steps(units, _partners(units, tied))
    gpus = [d for d in caps if _is_gpu(d)]
    zeroed = [parse_device(d) for d, c in capacities.items() if c == 0 and parse_device(d) != "meta"]
    if strategy == "balanced" or (strategy == "auto" and gpus):
        targets = gpus or (["cpu"] if "cpu" in caps else [])
        placed = _balanced_fill(steps, targets, caps)
        if placed is not None:
            notes = () if gpus else ("balanced spreads the model over GPUs and this machine has none (or none "
                                     "allowed): the plan puts it on the cpu",)
            return replace(_plan(strategy, units, placed, caps, {}), notes=notes)
        if strategy == "balanced":
            raise _does_not_fit(units, targets, caps, "balanced (GPUs only, no offload)", zeroed)
    devices = [d for d in caps if d != "meta"]
    # Plan, then plan again keeping accelerate's reserves on the devices the offload needs.
    reserve: set[str] = set()
    for _ in range(3):
        kept: dict[str, int] = {}
        placed = _fill(steps, devices, caps, reserve, kept)
        if placed is None:
            raise _does_not_fit(units, devices, caps, strategy, zeroed)
        needed = _needed_reserves(placed, gpus, caps)
        if needed <= reserve:
            _check_runnable(units, placed, caps)
            return _plan(strategy, units, placed, caps, {d: kept[d] for d in sorted(kept, key=device_sort_key)})
        reserve |= needed
    raise AssertionError("reserves did not settle")  # pragma: no cover - each round adds a device, two at most


def _check_capacities(capacities: Mapping[str, int | None]) -> dict[str, int | None]:
    caps: dict[str, int | None] = {}
    for device, cap in capacities.items():
        name = parse_device(device)
        if name == "meta":
            continue
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ValueError(f"capacity of {name} must be a non-negative integer or None, got {cap!r}")
        if cap == 0:
            continue
        caps[name] = cap
    return {d: caps[d] for d in sorted(caps, key=device_sort_key)}


def _partners(units: list[Unit], tied: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """Unit -> the other units it must share a device with (through tied tensors)."""
    unit_of = {t: u.name for u in units for t in u.tensors}
    links: dict[str, list[str]] = {}
    for group in tied:
        names = [unit_of[t] for t in group if t in unit_of]
        for a in names:
            for b in names:
                if a != b and b not in links.setdefault(a, []):
                    links[a].append(b)
    return links


@dataclass(frozen=True)
class _Step:
    """What one placement decision moves: a unit and the later units tied to it."""

    units: tuple[Unit, ...]

    @property
    def nbytes(self) -> int:
        return sum(u.nbytes for u in self.units)

    @property
    def largest(self) -> int:
        return max(u.nbytes for u in self.units)


def _steps(units: list[Unit], partners: dict[str, list[str]]) -> list[_Step]:
    """Units in placement order, each with the later units tied to it (accelerate pulls them)."""
    by_name = {u.name: u for u in units}
    done: set[str] = set()
    steps: list[_Step] = []
    for unit in units:
        if unit.name in done:
            continue
        group = [unit]
        done.add(unit.name)
        pending = list(partners.get(unit.name, ()))
        while pending:
            other = pending.pop(0)
            if other not in done:
                done.add(other)
                group.append(by_name[other])
                pending.extend(partners.get(other, ()))
        steps.append(_Step(tuple(group)))
    return steps


def _largest_ahead(steps: list[_Step]) -> list[int]:
    """For each step, the largest unit from there on (accelerate's "max layer size")."""
    out = [0] * len(steps)
    best = 0
    for i in range(len(steps) - 1, -1, -1):
        best = max(best, steps[i].largest)
        out[i] = best
    return out


def _fill(steps: list[_Step], devices: list[str], limits: Mapping[str, int | None],
          reserve: set[str] = frozenset(), kept: dict[str, int] | None = None  # type: ignore[assignment]
          ) -> dict[str, str] | None:
    """Sequential fill: unit -> device, or None when the steps run out of devices.

    On the devices in ``reserve``, room for the largest unit still to place is kept free;
    ``kept`` receives that room as it was when the fill reached each reserving device.
    """
    ahead = _largest_ahead(steps) if reserve else []
    placed: dict[str, str] = {}
    used = {d: 0 for d in devices}
    index = 0
    for i, step in enumerate(steps):
        size = step.nbytes
        while True:
            if index >= len(devices):
                return None
            device = devices[index]
            limit = limits.get(device)
            keep = ahead[i] if device in reserve else 0
            if kept is not None and device in reserve:
                kept.setdefault(device, keep)
            if limit is None or used[device] + size <= limit - keep:
                break
            index += 1  # never back: the pipeline runs device after device
        used[device] += size
        for unit in step.units:
            placed[unit.name] = device
    return placed


def _balanced_fill(steps: list[_Step], devices: list[str], caps: Mapping[str, int | None]) -> dict[str, str] | None:
    """Fill device after device, each up to the smallest budget the rest still fits in.

    The first budget is the optimal largest load; recomputing it for what is left spreads the
    remainder evenly too (900/900/800/801 rather than 900/900/900/701).
    """
    placed: dict[str, str] = {}
    i = 0
    for k, device in enumerate(devices):
        budget = _balanced_budget(steps[i:], {d: caps[d] for d in devices[k:]})
        if budget is None:
            return None
        limit = _min(budget, caps[device])
        used = 0
        while i < len(steps) and used + steps[i].nbytes <= limit:
            used += steps[i].nbytes
            for unit in steps[i].units:
                placed[unit.name] = device
            i += 1
    return placed if i == len(steps) else None


def _balanced_budget(steps: list[_Step], caps: Mapping[str, int | None]) -> int | None:
    """The smallest per-device load with which the steps fit on ``caps``' devices, or None."""
    devices = list(caps)
    if not devices or _fill(steps, devices, caps) is None:
        return None
    low = max((s.nbytes for s in steps), default=0)
    high = sum(s.nbytes for s in steps)
    # Greedy filling under a common budget is optimal for contiguous splits (filling a device
    # as far as the budget allows never hurts the next), so a binary search on the budget
    # finds the smallest largest load.
    while low < high:
        middle = (low + high) // 2
        limits = {d: _min(middle, caps[d]) for d in devices}
        if _fill(steps, devices, limits) is not None:
            high = middle
        else:
            low = middle + 1
    return low


def _min(a: int, b: int | None) -> int:
    return a if b is None else min(a, b)


def _check_runnable(units: list[Unit], placed: Mapping[str, str], caps: Mapping[str, int | None]) -> None:
    """An offloaded module runs on the execution device (the first GPU, else the cpu), brought
    back there when its turn comes: that device must be able to hold the largest of them.

    accelerate plans such a map and fails (or swaps) when the model runs; here it is an error.
    """
    used = set(placed.values())
    gpus = sorted((d for d in used | set(caps) if _is_gpu(d)), key=device_sort_key)
    offload = {"cpu", "disk"} if gpus else {"disk"}
    moved = [u for u in units if placed[u.name] in offload and u.nbytes]
    if not moved:
        return
    runner = gpus[0] if gpus else "cpu"
    room = caps.get(runner, 0)
    largest = max(moved, key=lambda u: u.nbytes)
    if room is not None and largest.nbytes > room:
        raise PlanError(EXCEEDS_MEMORY, f"{largest.name} ({_fmt(largest.nbytes)}) is offloaded to "
                        f"{placed[largest.name]} and must be brought back to {runner} to run, but {runner} can hold "
                        f"{_fmt(room)}; raise its max_memory", tensor=largest.name, device=runner)


def _needed_reserves(placed: Mapping[str, str], gpus: list[str], caps: Mapping[str, int | None]) -> set[str]:
    used = set(placed.values())
    needed: set[str] = set()
    if gpus and used & {"cpu", "disk"}:
        needed.add(gpus[0])
    if "disk" in used and "cpu" in caps:
        needed.add("cpu")
    return needed


def _does_not_fit(units: list[Unit], devices: list[str], caps: Mapping[str, int | None], what: str,
                  zeroed: Sequence[str] = ()) -> PlanError:
    total = sum(u.nbytes for u in units)
    largest = max(units, key=lambda u: u.nbytes, default=None)
    shown = [f"{d} {_fmt(caps[d])}" for d in devices] + \
        [f"{d} 0 B" for d in sorted(set(zeroed) - set(devices), key=device_sort_key)]
    limits = ", ".join(shown) or "no device"
    if largest is not None and devices and all((cap := caps[d]) is not None and cap < largest.nbytes for d in devices):
        message = (f"{largest.name} needs {_fmt(largest.nbytes)} and cannot be split, but no device can hold it "
                   f"(limits: {limits})")
        return PlanError(EXCEEDS_MEMORY, message, tensor=largest.name)
    message = f"the model needs {_fmt(total)} and does not fit with device map {what} (limits: {limits})"
    if what.startswith("balanced"):
        message += "; use device_map='auto' to offload to cpu and disk, or raise max_memory"
    elif "disk" not in devices:
        message += "; raise max_memory or allow disk"
    return PlanError(EXCEEDS_MEMORY, message)


def _plan(strategy: str, units: list[Unit], placed: Mapping[str, str], caps: Mapping[str, int | None],
          reserved: dict[str, int]) -> DevicePlan:
    modules = {u.name: placed[u.name] for u in units}
    tensors = {t: placed[u.name] for u in units for t in u.tensors}
    used: dict[str, int] = {}
    for unit in units:
        used[placed[unit.name]] = used.get(placed[unit.name], 0) + unit.nbytes
    return DevicePlan(strategy=strategy, modules=modules, tensors=tensors,
                      bytes={d: used[d] for d in sorted(used, key=device_sort_key)},
                      capacities=dict(caps), reserved=reserved)


def _fmt(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


# --- device maps from a file ------------------------------------------------------------------

def read_device_map(source: str | bytes | Mapping[str, Any]) -> dict[str, str]:
    """Parse a ``{module_prefix: device}`` map as ``from_pretrained(device_map=...)`` takes it.

    Args:
        source: JSON text (or bytes), or an already parsed mapping. Keys are module or tensor
            name prefixes (``""`` = the whole model, or the rest of it beside other keys); values
            are devices (see :func:`parse_device`).

    Returns:
        prefix -> canonical device name, in the file's order.

    Raises:
        DeviceMapSyntaxError: not JSON, not an object, a non-string key, an invalid device, or
            no entry at all.
    """
    if isinstance(source, (str, bytes)):
        try:
            data = json.loads(source, object_pairs_hook=_no_duplicates)
        except (ValueError, RecursionError) as exc:
            raise DeviceMapSyntaxError(f"device map is not valid JSON: {exc}") from None
    else:
        data = source
    if not isinstance(data, Mapping):
        raise DeviceMapSyntaxError("device map must be a JSON object mapping module names to devices, e.g. "
                                   '{"model.embed_tokens": 0, "model.layers": "cpu", "lm_head": 0}')
    result: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise DeviceMapSyntaxError(f"device map key {key!r} is not a string")
        try:
            result[key] = parse_device(value)
        except DeviceMapSyntaxError as exc:
            raise DeviceMapSyntaxError(f"device map entry {key!r}: {exc}") from None
    if not result:
        raise DeviceMapSyntaxError('device map is empty; use {"": "cpu"} to put the whole model on one device')
    return result


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def resolve(device_map: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """Each tensor's device by the longest matching prefix, as accelerate resolves a map.

    A key matches a tensor when it is the tensor's name, a dotted prefix of it
    (``model.layers.1`` matches ``model.layers.1.mlp.up_proj.weight``, not
    ``model.layers.10...``), or ``""``.

    Args:
        device_map: prefix -> device (canonical names, see :func:`read_device_map`).
        names: the tensor names.

    Returns:
        tensor -> device, in the order of ``names``.

    Raises:
        PlanError: ``HFC731`` when a tensor matches no key (the message names up to 3).
    """
    result: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        key = name
        while key not in device_map:
            if not key:
                break
            key = key.rsplit(".", 1)[0] if "." in key else ""
        if key in device_map:
            result[name] = device_map[key]
        else:
            missing.append(name)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise PlanError(UNASSIGNED, f"the device map assigns no device to {len(missing)} tensor"
                        f"{'s' if len(missing) != 1 else ''}: {shown}; add their module (or \"\" for the rest)",
                        tensor=missing[0])
    return result


def plan_from_map(
    device_map: Mapping[str, str],
    items: Sequence[tuple[str, int]],
    capacities: Mapping[str, int | None],
    tied: Sequence[Sequence[str]] = (),
) -> DevicePlan:
    """Check a given map against the tensors and the devices, and account its bytes.

    Args:
        device_map: prefix -> canonical device (:func:`read_device_map`).
        items: ``(tensor name, nbytes)``.
        capacities: the devices that exist -> their limit (None: unlimited); ``meta`` always
            exists and holds nothing.
        tied: groups of tensor names sharing one storage (bytes once per device).

    Returns:
        The DevicePlan (``strategy="file"``; ``modules`` is the map itself).

    Raises:
        PlanError: ``HFC732`` a device that does not exist, ``HFC731`` a tensor left
            unassigned, ``HFC733`` a device over its limit.
    """
    caps = {parse_device(d): c for d, c in capacities.items()}
    for key, device in device_map.items():
        if device != "meta" and device not in caps:
            have = ", ".join(sorted(caps, key=device_sort_key)) or "none"
            raise PlanError(UNKNOWN_DEVICE, f"the device map puts {describe_key(key, device_map)} on {device}, "
                            f"which this machine does not have (devices: {have})", device=device)
    sizes = dict(items)
    if len(sizes) != len(items):
        raise ValueError("a tensor name appears twice")
    tensors = resolve(device_map, [name for name, _ in items])
    free = _free_aliases(tied)
    first_of = {name: list(group)[0] for group in tied for name in list(group)[1:]}
    used: dict[str, int] = {}
    for name, device in tensors.items():
        shared = name in free and tensors.get(first_of[name]) == device
        used[device] = used.get(device, 0) + (0 if shared else sizes[name])
    for device, nbytes in used.items():
        limit = caps.get(device)
        if device != "meta" and limit is not None and nbytes > limit:
            raise PlanError(EXCEEDS_MEMORY, f"the device map puts {_fmt(nbytes)} on {device}, over its limit of "
                            f"{_fmt(limit)}", device=device)
    units = group_units([(name, size) for name, size in items if tensors[name] != "meta"], tied)
    modules = {u.name: _unit_device(u, tensors) for u in units}
    _check_runnable(units, modules, {d: c for d, c in caps.items() if c != 0})
    return DevicePlan(strategy="file", modules=dict(device_map), tensors=tensors,
                      bytes={d: used[d] for d in sorted(used, key=device_sort_key)},
                      capacities={d: caps[d] for d in sorted(caps, key=device_sort_key)})


def _unit_device(unit: Unit, tensors: Mapping[str, str]) -> str:
    """Where a map puts a unit: the device of its largest share (a map may split a module)."""
    devices = [tensors[t] for t in unit.tensors]
    return max(set(devices), key=lambda d: (devices.count(d), -device_sort_key(d)[0]))


def unused_keys(device_map: Mapping[str, str], names: Sequence[str]) -> list[str]:
    """Keys of a map that match no tensor (a typo, or a module without weights)."""
    prefixes: set[str] = {""}
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefixes.add(".".join(parts[:i]))
    return [key for key in device_map if key not in prefixes]


def compact_modules(modules: Mapping[str, str]) -> list[tuple[str, str]]:
    """Plan lines for humans: runs of consecutive blocks on one device collapsed.

    ``model.layers.0`` .. ``model.layers.15`` on ``cuda:0`` -> ``("model.layers.0-15", "cuda:0")``.
    """
    lines: list[tuple[str, str]] = []
    run: tuple[str, int, int, str] | None = None  # stack, first, last, device

    def flush() -> None:
        nonlocal run
        if run is not None:
            stack, first, last, device = run
            lines.append((f"{stack}.{first}" if first == last else f"{stack}.{first}-{last}", device))
            run = None

    for module, device in modules.items():
        found = block_of(module + ".")
        if found and found[0] == module:
            _, stack, number = found
            if run is not None and run[0] == stack and run[3] == device and number == run[2] + 1:
                run = (stack, run[1], number, device)
                continue
            flush()
            run = (stack, number, number, device)
            continue
        flush()
        lines.append((module, device))
    flush()
    return lines
