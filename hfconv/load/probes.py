"""What the machine has: this process's memory (/proc), free memory per device, and the
limits a plan is made under.

Off Linux the /proc probes fall back to ``getrusage`` and ``sysconf``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

__all__ = ["capacities", "mem_available", "peak_rss", "proc_status"]

_GPU_HEADROOM = 0.9
_CPU_HEADROOM = 0.9
_DISK_HEADROOM = 0.95


def proc_status() -> dict[str, int]:
    """VmHWM, VmRSS and RssAnon of this process in bytes (empty off Linux)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def peak_rss() -> int | None:
    """Peak resident set of this process (VmHWM, else ru_maxrss), bytes."""
    status = proc_status()
    if "VmHWM" in status:
        return status["VmHWM"]
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):  # pragma: no cover - every supported platform has one
        return None


def mem_available() -> int:
    """MemAvailable (else the free pages), bytes."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8 << 30




def capacities(torch_mod: Any, limits: Mapping[str, int], offload_root: str, disk_needed: bool
                ) -> dict[str, int | None]:
    """Every device the machine has -> the limit to plan with (``max_memory`` or free memory)."""
    caps: dict[str, int | None] = {}
    if torch_mod.cuda.is_available():
        for index in range(torch_mod.cuda.device_count()):
            name = f"cuda:{index}"
            if name in limits:
                caps[name] = limits[name]
                continue
            free, _ = torch_mod.cuda.mem_get_info(index)
            caps[name] = int(free * _GPU_HEADROOM)
    caps["cpu"] = limits.get("cpu", int(mem_available() * _CPU_HEADROOM))
    if "disk" in limits:
        caps["disk"] = limits["disk"]
    elif disk_needed:
        caps["disk"] = int(shutil.disk_usage(offload_root).free * _DISK_HEADROOM)
    else:
        caps["disk"] = None  # safetensors shards stay mapped: disk placement writes nothing
    return caps
