"""Index checks: the weight index and the shards must describe the same tensors."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from operator import attrgetter

from ..contents import MAX_INDEX_SHARDS, MAX_WEIGHT_FILES, FolderContents, IndexFile
from ..dtypes import SAFETENSORS_BITS, total_nbytes
from ..findings import Finding, Severity, finding, register
from ..tensors import WeightFile
from ..units import plural
from .layout import MAX_FINDINGS_PER_CODE, Uncounted, capped, some

register("HFC311", "error", "index names too many shards",
         f"The index names more than {MAX_INDEX_SHARDS:,} distinct shard files (the Hub's 5-digit shard names "
         "stop at 99,999; real checkpoints have a few thousand at most). hfconv refuses to check it: a 12 MB "
         "index of 300,000 made-up shard names would otherwise cost minutes.",
         "Regenerate the index from the shards that exist (hfconv convert writes one), or re-save the model.",
         "model.safetensors.index.json names 300,000 distinct shard files, more than hfconv checks (100,000, "
         "MAX_INDEX_SHARDS; the Hub's 5-digit shard names stop at 99,999); it was not checked")
register("HFC310", "error", "too many weight files",
         f"The folder holds more than {MAX_WEIGHT_FILES:,} weight files (shards, or files named like them). "
         "hfconv reads the headers of that many and stops (a folder of 100,000 empty shards would otherwise "
         "take minutes), so the rest were never checked. Real checkpoints have at most a few thousand shards.",
         "Remove stray shard files; re-save the model with a larger max_shard_size so it has fewer shards.",
         f"12,000 weight files were not read (model-10001-of-22000.safetensors, ...): hfconv reads at most "
         f"{MAX_WEIGHT_FILES} weight file headers per folder (MAX_WEIGHT_FILES)")


@capped
def check_index(contents: FolderContents) -> Iterator[Finding | Uncounted]:
    """Every index entry is in its shard, every shard tensor is indexed, sizes add up."""
    folder = contents.folder
    for name, why in contents.index_errors.items():
        if name not in contents.json_errors:  # parse errors are already reported by the read check
            yield finding(contents.index_error_codes.get(name, "HFC307"), f"{name} {why}", file=name)
    if contents.unread_weights:
        unread = contents.unread_weights
        yield finding("HFC310", f"{len(unread):,} weight files were not read ({some(unread, 3)}): hfconv reads at most "
                      f"{MAX_WEIGHT_FILES:,} weight file headers per folder (MAX_WEIGHT_FILES), so these were not "
                      "checked", file=unread[0])
    for shard, index_name in contents.unsafe_names.items():
        yield finding("HFC006", f"{index_name} names shard {shard!r}, which is outside the model folder; "
                      "it was not opened", file=index_name, tensor=None)

    for weight_set in folder.weight_sets.values():
        index = contents.indexes.get(weight_set.index) if weight_set.index else None
        if index is None or weight_set.single:
            continue
        yield from _check_one_index(contents, index)

    for name, weight_file in contents.weights.items():
        if not weight_file.tensors:
            yield finding("HFC309", f"{name} holds no tensors", file=name)


def _check_one_index(contents: FolderContents, index: IndexFile) -> Iterator[Finding | Uncounted]:
    folder = contents.folder
    shard_names = [s for s in index.shard_names if s not in contents.unsafe_names]
    existing = [s for s in shard_names if folder.has(s)]
    if shard_names and not existing:
        yield finding("HFC003", f"{index.name} names {plural(len(shard_names), 'shard file')} but none of them exists",
                      file=index.name)
    elif len(existing) < len(shard_names):
        tensors_per_shard = Counter(index.weight_map.values())
        for shard in shard_names:
            if not folder.has(shard):
                count = tensors_per_shard[shard]
                yield finding("HFC304",
                              f"{shard} is named by {index.name} for {plural(count, 'tensor')} but is missing",
                              file=shard)

    readable: dict[str, WeightFile] = {s: contents.weights[s] for s in existing if s in contents.weights}
    unread = set(contents.unread_weights)
    for shard in existing:
        if shard not in readable and shard not in unread:
            yield finding("HFC308", f"{shard} could not be read, so its {index.name} entries are unchecked", file=shard)

    if _all_in_place(index.weight_map, readable):
        yield from _check_total_size(index, readable, complete=len(readable) == len(shard_names))
        return
    # Where each tensor really lives, over every readable shard of the index.
    first, shared = _holders(readable)

    # One finding per bad entry, until capped() would only count them (an index may list 300,000).
    made: Counter[str] = Counter()
    severity: dict[str, Severity] = {}
    for tensor, shard in index.weight_map.items():
        if shard in contents.unsafe_names or shard not in readable:
            continue
        if tensor in readable[shard].tensors:
            continue
        elsewhere = shared.get(tensor) or ([first[tensor]] if tensor in first else [])
        code = "HFC303" if elsewhere else "HFC301"
        made[code] += 1
        if made[code] > MAX_FINDINGS_PER_CODE + 1:
            continue
        if elsewhere:
            item = finding("HFC303", f"{index.name} maps {tensor!r} to {shard}, but it is in {elsewhere[0]}",
                           file=index.name, tensor=tensor)
        else:
            item = finding("HFC301", f"{index.name} maps {tensor!r} to {shard}, which does not contain it",
                           file=shard, tensor=tensor)
        severity[code] = item.severity
        yield item
    for code, count in made.items():
        if count > MAX_FINDINGS_PER_CODE + 1:
            yield Uncounted(code, count - MAX_FINDINGS_PER_CODE - 1, severity[code])

    for tensor, shard in first.items():
        shards = shared.get(tensor) or [shard]
        if len(shards) > 1:
            yield finding("HFC305", f"{tensor!r} is stored in {len(shards)} shards ({', '.join(shards)})",
                          file=shards[0], tensor=tensor)
        if tensor not in index.weight_map:
            yield finding("HFC302", f"{shards[0]} holds {tensor!r}, which {index.name} does not list; "
                          "loaders will not load it", file=shards[0], tensor=tensor)

    yield from _check_total_size(index, readable, complete=len(readable) == len(shard_names))


def _all_in_place(weight_map: dict[str, str], readable: dict[str, WeightFile]) -> bool:
    """The common case, decided in C (100,000s of entries in the largest folders): each shard's
    tensors are all mapped to that shard, and the index lists as many entries as the shards hold
    tensors. Then no tensor is in two shards (it maps to one), and the entries are exactly the
    stored tensors (one entry each, as many as there are): every entry names the one shard holding
    its tensor, and the shards hold nothing else."""
    if sum(len(w.tensors) for w in readable.values()) != len(weight_map):
        return False
    for shard, weight_file in readable.items():
        named = list(map(weight_map.get, weight_file.tensors))
        if named.count(shard) != len(named):
            return False
    return True


def _holders(readable: dict[str, WeightFile]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(tensor name -> the first shard holding it, in shard order; name -> every shard holding it,
    for the names in more than one).

    The first shards by dict.update in C (100,000s of names in the largest folders); the
    per-name lists only when some name is in two shards.
    """
    first: dict[str, str] = {}
    for shard, weight_file in readable.items():
        first.update(dict.fromkeys(weight_file.tensors, shard))
    if len(first) == sum(len(w.tensors) for w in readable.values()):
        return first, {}
    holders: dict[str, list[str]] = {}
    for shard, weight_file in readable.items():
        for tensor in weight_file.tensors:
            holders.setdefault(tensor, []).append(shard)
    first = {tensor: shards[0] for tensor, shards in holders.items()}
    return first, {tensor: shards for tensor, shards in holders.items() if len(shards) > 1}


def _check_total_size(index: IndexFile, readable: dict[str, WeightFile], complete: bool) -> Iterator[Finding]:
    total = index.metadata.get("total_size")
    if total is None or not complete:
        return
    if isinstance(total, bool) or not isinstance(total, (int, float)):
        yield finding("HFC306", f"metadata.total_size in {index.name} is {total!r}, not a number", file=index.name)
        return
    # The tensor bytes first, in bulk: what every safetensors writer records.
    if total == sum(w.tensor_nbytes for w in readable.values()):
        return
    if total not in _plausible_total_sizes(readable):
        actual = sum(w.tensor_nbytes for w in readable.values())
        yield finding("HFC306", f"metadata.total_size in {index.name} is {total} but the shards' tensors hold "
                      f"{actual} bytes", file=index.name)


def _plausible_total_sizes(readable: dict[str, WeightFile]) -> set[float]:
    """The sums the ecosystem's writers have recorded, all of them legitimate.

    huggingface_hub sums unique storage bytes; older transformers summed tensor bytes of the first
    tensor per storage and counted a bool as 1/8 byte.
    """
    per_file = {name: _tensor_sizes(w) for name, w in readable.items()}
    tensor_bytes = sum(size for size, _ in per_file.values())
    storage_bytes = sum(w.storage_nbytes for w in readable.values() if w.storages)
    storage_bytes += sum(per_file[name][0] for name, w in readable.items() if not w.storages)
    first_per_storage = 0
    bool_as_bits = 0.0
    for name, weight_file in readable.items():
        if all(meta.storage_key is None for meta in weight_file.tensors.values()):
            # Every tensor is its own storage (safetensors): the sums per file, in bulk. The
            # terms are multiples of 1/8, so floats add them exactly in any order (below 2**50).
            first_per_storage += per_file[name][0]
            bool_as_bits += per_file[name][1]
            continue
        seen: set[str] = set()
        for meta in weight_file.tensors.values():
            if meta.storage_key is not None:
                if meta.storage_key in seen:
                    continue
                seen.add(meta.storage_key)
            first_per_storage += meta.nbytes
            bits = SAFETENSORS_BITS[meta.dtype] if meta.dtype != "BOOL" else 1
            bool_as_bits += meta.numel * bits / 8
    return {tensor_bytes, storage_bytes, first_per_storage, bool_as_bits, int(bool_as_bits)}


def _tensor_sizes(weight_file: WeightFile) -> tuple[int, float]:
    """(bytes of the file's tensors, the same with a bool counted as 1/8 byte)."""
    metas = weight_file.tensors.values()
    numels = list(map(math.prod, map(_SHAPE, metas)))
    dtypes = list(map(_DTYPE, metas))
    return total_nbytes(dtypes, numels), float(sum(map(_bits_over_8, dtypes, numels)))


def _bits_over_8(dtype: str, numel: int) -> float:
    return numel * (SAFETENSORS_BITS[dtype] if dtype != "BOOL" else 1) / 8


_SHAPE = attrgetter("shape")
_DTYPE = attrgetter("dtype")
