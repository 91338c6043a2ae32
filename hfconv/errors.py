"""Exception types shared across hfconv's layers. A leaf: it imports nothing from hfconv.

The library raises these; the CLI maps them to a message and an exit code
(:func:`hfconv.cli_common.usage_errors`: :class:`UsageError` -> exit 2).
"""

from __future__ import annotations

__all__ = ["OptionError", "UsageError"]


class UsageError(Exception):
    """The command cannot run at all (exit code 2): bad path, bad option."""


class OptionError(UsageError):
    """A bad value of one argument of a library function.

    ``str()`` names the argument as the library spells it (``max_memory: ...``); the CLI
    names its flag instead (``--max-memory: ...``), so library messages spell no CLI flag.
    """

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(f"{option}{detail}")
        self.option = option
        """The keyword argument (``max_memory``, ``device_map``, ``offload_folder``)."""
        self.detail = detail
        """The rest of the message, from its first character after the argument's name."""
