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


def installed_transformers_4() -> str | None:
    """The installed transformers' version where it is 4.x or older (its loader refuses more
    than 5's), else None."""
    version = installed_transformers_version()
    return version if version is not None and version.split(".")[0] in ("2", "3", "4") else None
