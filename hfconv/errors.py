"""Exception types shared across hfconv's layers. A leaf: it imports nothing from hfconv.

The library raises these; the CLI maps them to a message and an exit code
(:func:`hfconv.cli_common.usage_errors`: :class:`UsageError` -> exit 2).
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """The command cannot run at all (exit code 2): bad path, bad option."""
