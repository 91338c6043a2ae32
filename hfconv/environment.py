"""What the machine hfconv runs on has installed, where a verdict depends on it."""

from __future__ import annotations

from functools import cache


@cache
def installed_transformers_version() -> str | None:
    """The installed transformers' version, read from its package metadata (never imported), or None."""
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except Exception:  # noqa: BLE001 - not installed, or broken metadata: no version to go by
        return None


def transformers_4_installed() -> bool:
    """True where the installed transformers is 4.x or older: its loader refuses more than 5's."""
    version = installed_transformers_version()
    return version is not None and version.split(".")[0] in ("2", "3", "4")
