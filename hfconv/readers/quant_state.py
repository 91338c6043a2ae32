"""Read bitsandbytes 4-bit quant states: the small JSON a ``weight.quant_state.bitsandbytes__nf4``
(or ``__fp4``) U8 tensor holds.

bitsandbytes' ``QuantState.as_dict(packed=True)`` stores the non-tensor part of a 4-bit weight's
quant state (``quant_type``, ``blocksize``, ``dtype``, ``shape``, nested quantization fields) as
UTF-8 JSON bytes in one U8 tensor (``pack_dict_to_tensor``): a few hundred bytes. The recorded
``shape`` is the weight's shape before packing, which the packed ``[n, 1]`` bytes cannot tell.

Only these small tensors are read: a range over :data:`MAX_STATE_BYTES` is refused unread, one
file is opened once for all its states, and anything that is not a JSON object (bad UTF-8,
bad JSON, nesting too deep, a number too long) is skipped, never raised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from ..fsutil import open_regular
from ..tensors import FormatError

MAX_STATE_BYTES = 64 * 1024
"""Largest quant state read (a JSON of a few hundred bytes in practice)."""
_MIN_CHARGE = 64
"""Bytes of the budget each read costs at least."""


def parse_quant_state(raw: bytes) -> dict[str, Any] | None:
    """The JSON object a quant state tensor's bytes hold; None for anything else."""
    if len(raw) > MAX_STATE_BYTES:
        return None
    try:
        state = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, a too-long integer, nesting too deep
        return None
    return state if isinstance(state, dict) else None


def read_quant_states(path: str | os.PathLike, ranges: Iterable[tuple[str, int, int]],
                      budget: int) -> dict[str, dict[str, Any]]:
    """Key -> parsed quant state, for each ``(key, begin, end)`` absolute byte range of ``path``.

    Ranges longer than :data:`MAX_STATE_BYTES`, past ``budget`` bytes in all (each read counting
    at least 64), short (a file truncated since its header was read) or unparsable are left out;
    a file that cannot be opened as a regular file gives nothing.
    """
    states: dict[str, dict[str, Any]] = {}
    wanted = sorted((begin, end, key) for key, begin, end in ranges
                    if 0 <= begin <= end and end - begin <= MAX_STATE_BYTES)
    if not wanted:
        return states
    try:
        with open_regular(path) as handle:
            for begin, end, key in wanted:
                if end - begin > budget:
                    break
                budget -= max(end - begin, _MIN_CHARGE)  # many empty states cost reads too
                handle.seek(begin)
                raw = handle.read(end - begin)
                if len(raw) != end - begin:
                    continue
                state = parse_quant_state(raw)
                if state is not None:
                    states[key] = state
    except (OSError, FormatError):
        pass
    return states
