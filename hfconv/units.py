"""Units for people: byte sizes and counts as short text, and sizes as people write them
(``5GB``, ``2GiB``: :func:`parse_size`, which ``--max-shard-size`` and ``--max-memory`` use).

A leaf module: it imports nothing from hfconv, so every layer (the operations, their results'
``to_text``, the renderers, the CLI) can use it without pulling in another.
"""

from __future__ import annotations

import math
import re

__all__ = ["human_bytes", "human_count", "parse_size", "plural"]


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 tensor``, ``2 tensors``, ``1,000 files`` (``many`` for irregular plurals)."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


def human_bytes(n: float) -> str:
    """A byte count in decimal units: ``512 B``, ``1.5 KB``, ``2.0 GB`` (TB is the largest)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def human_count(n: int) -> str:
    """A count with a K/M/B suffix: ``999``, ``1.5K``, ``7.2B``."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


_SI = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_BINARY = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_size(size: int | str) -> int:
    """Parse a size the way the Hub does: ``5GB`` = 5*10**9, ``5GiB`` = 5*2**30.

    Args:
        size: a positive int (bytes), or a string: a number (``"1000"``, ``"1.5"``) with an
            optional unit ``B``, ``KB``, ``MB``, ``GB``, ``TB`` (powers of 10) or ``KiB``,
            ``MiB``, ``GiB``, ``TiB`` (powers of 2). Units are case-insensitive except that
            ``Gb``/``Mb``/``Kb``/``Tb`` (a capital prefix with a lowercase ``b``) are refused:
            transformers reads those as *bits*, huggingface_hub as bytes.

    Returns:
        The size in bytes, at least 1 (fractions of a byte round down).

    Raises:
        ValueError: not a size, zero or negative, or an ambiguous/unknown unit; the message
            says what is accepted.
    """
    accepted = "use e.g. 5GB (5*10^9 bytes), 5GiB (5*2^30), 500MB, 200KB or a number of bytes"
    if isinstance(size, bool):
        raise ValueError(f"invalid size {size!r}: {accepted}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"invalid size {size}: must be a positive number of bytes")
        return size
    if not isinstance(size, str):
        raise ValueError(f"invalid size {size!r}: {accepted}")
    match = _SIZE_RE.match(size)
    if not match:
        raise ValueError(f"invalid size {size!r}: {accepted}")
    number, unit = match.group(1), match.group(2)
    if len(unit) == 2 and unit[0].isupper() and unit[1] == "b":
        raise ValueError(f"ambiguous size {size!r}: '{unit}' means bits to transformers and bytes to "
                         f"huggingface_hub; write {number}{unit.upper()} for bytes")
    key = unit.upper()
    multiplier = _SI.get(key) or _BINARY.get(key)
    if multiplier is None:
        raise ValueError(f"invalid size {size!r}: unknown unit {unit!r}; {accepted}")
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(f"invalid size {size!r}: {accepted}")
    # Integers are parsed exactly (no float rounding for large byte counts).
    result = int(number) * multiplier if number.isdigit() else int(value * multiplier)
    if result <= 0:
        raise ValueError(f"invalid size {size!r}: must be at least one byte")
    return result
