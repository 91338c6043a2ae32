"""Shard planning: which tensors go into which output file. Pure: no torch, no I/O.

The planner takes ``(name, nbytes)`` pairs, never tensors, so it is tested with integers
(as huggingface_hub's ``split_state_dict_into_shards_factory`` is).

The packing rule is the Hub's: walk the tensors in their original order, start a new shard
when the next tensor would push the current one past ``max_shard_size``, and give a tensor
larger than the limit a shard of its own. One difference on purpose: huggingface_hub emits
an oversized tensor's shard *before* the shard it was filling when it met it, which moves
that tensor ahead of its predecessors in the file order; here the shard being filled is
closed first, so the output keeps the tensors in their original order end to end.
"""

from __future__ import annotations

from collections.abc import Sequence

from .units import parse_size

__all__ = ["parse_size", "plan_shards", "shard_file_name", "SINGLE_FILE", "INDEX_FILE"]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

def plan_shards(items: Sequence[tuple[str, int]], max_shard_size: int) -> list[list[str]]:
    """Split tensors into shards with the Hub's packing rule, keeping their order.

    Args:
        items: ``(name, nbytes)`` in the order the tensors must appear in the output.
        max_shard_size: the limit in bytes (see :func:`parse_size`); a tensor larger than
            it gets a shard of its own, which is then larger than the limit.

    Returns:
        Shards, each a non-empty list of names; concatenated they are the names of ``items``
        in order. Empty when ``items`` is empty.

    Raises:
        ValueError: ``max_shard_size`` is not positive, a size is negative, or a name repeats.
    """
    if max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size}")
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    seen: set[str] = set()
    for name, size in items:
        if size < 0:
            raise ValueError(f"tensor {name!r} has a negative size {size}")
        if name in seen:
            raise ValueError(f"tensor {name!r} appears twice")
        seen.add(name)
        if size > max_shard_size:
            if current:
                shards.append(current)
            shards.append([name])
            current, current_size = [], 0
            continue
        if current and current_size + size > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current:
        shards.append(current)
    return shards


def shard_file_name(number: int, count: int) -> str:
    """The Hub's name of shard ``number`` (1-based) of ``count``.

    ``shard_file_name(1, 1)`` is ``model.safetensors``; ``shard_file_name(2, 3)`` is
    ``model-00002-of-00003.safetensors`` (five digits, more when ``count`` needs them).

    Raises:
        ValueError: ``number`` outside ``1..count``.
    """
    if not 1 <= number <= count:
        raise ValueError(f"shard number {number} outside 1..{count}")
    if count == 1:
        return SINGLE_FILE
    return f"model-{number:05d}-of-{count:05d}.safetensors"
