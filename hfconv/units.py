"""Units for people: byte sizes and counts as short text.

A leaf module: it imports nothing from hfconv, so every layer (the operations, their results'
``to_text``, the renderers, the CLI) can use it without pulling in another.
"""

from __future__ import annotations

__all__ = ["human_bytes", "human_count"]


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
