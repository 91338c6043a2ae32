"""load-test's options as data: ``max_memory`` limits and the ``device_map`` argument (a
strategy, a JSON file, or a mapping), checked before anything is read.

The CLI parses its strings (``--max-memory cpu=20GiB``) into the mapping these take.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import OptionError, UsageError
from ..units import parse_size
from .device_map import STRATEGIES, DeviceMapSyntaxError, parse_device, read_device_map

__all__ = ["MAX_MAP_FILE", "parse_max_memory", "resolve_device_map"]

MAX_MAP_FILE = 64 << 20
"""A device map file larger than this is refused unread."""


def parse_max_memory(max_memory: Mapping[Any, Any] | None) -> dict[str, int]:
    """``{device: limit}`` (device names as ``parse_device`` takes them, limits in bytes or size
    strings) -> ``{canonical device: bytes}``.

    Raises:
        OptionError: a bad device, the meta device, a device named twice, a bad size.
    """
    limits: dict[str, int] = {}
    for key, value in (max_memory or {}).items():
        try:
            device = parse_device(key)
        except DeviceMapSyntaxError as exc:
            raise OptionError("max_memory", f": {exc}") from None
        if device == "meta":
            raise OptionError("max_memory", ": the meta device holds no data and takes no limit")
        if device in limits:
            raise OptionError("max_memory", f" names {device} twice; give one limit per device")
        if value in (0, "0"):
            limits[device] = 0
            continue
        try:
            limits[device] = parse_size(value)
        except ValueError as exc:
            raise OptionError("max_memory", f" {device}: {exc}") from None
    return limits


def resolve_device_map(device_map: str | Mapping[str, Any]) -> str | dict[str, str]:
    """A strategy name, or the parsed map of a JSON file (or mapping).

    Raises:
        UsageError: a mapping that is not a device map.
        OptionError: a file that is missing, not a file, too large, unreadable or not a device map.
    """
    if isinstance(device_map, Mapping):
        try:
            return read_device_map(device_map)
        except DeviceMapSyntaxError as exc:
            raise UsageError(str(exc)) from None
    if device_map in STRATEGIES:
        return device_map
    path = Path(device_map)
    if not path.exists():
        raise OptionError("device_map", f" {device_map!r}: not found (give {', '.join(STRATEGIES)} or a JSON file "
                          "that exists)")
    if not path.is_file():
        raise OptionError("device_map", f" {device_map!r} is neither {', '.join(STRATEGIES)} nor a JSON file")
    if path.stat().st_size > MAX_MAP_FILE:
        raise OptionError("device_map", f" {device_map}: file larger than 64 MB")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError("device_map", f" {device_map}: cannot read: {exc}") from None
    try:
        return read_device_map(text)
    except DeviceMapSyntaxError as exc:
        raise OptionError("device_map", f" {device_map}: {exc}") from None
