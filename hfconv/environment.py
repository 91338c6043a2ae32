"""What the machine hfconv runs on has installed, where a verdict depends on it."""

from __future__ import annotations

import math
import os
from functools import cache
from typing import TYPE_CHECKING, Any

from .interrupts import uninterrupted

if TYPE_CHECKING:  # pragma: no cover
    import subprocess


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


# --- subprocesses for code hfconv does not run itself --------------------------------------------
REMOTE_CODE_TIMEOUT_VAR = "HFCONV_REMOTE_CODE_TIMEOUT"
"""Seconds a subprocess importing the folder's own code (--trust-remote-code) may take."""
REFERENCE_TIMEOUT_VAR = "HFCONV_REFERENCE_TIMEOUT"
"""Seconds the subprocess building a transformers reference model (no folder code) may take."""
REFERENCE_MEMORY_VAR = "HFCONV_REFERENCE_MEMORY_MB"
"""Address space, in MiB, the subprocess building a transformers reference model (or importing the
folder's code) may map beyond what importing torch and transformers mapped."""
DEFAULT_REFERENCE_TIMEOUT_S = 30.0
DEFAULT_REFERENCE_MEMORY = 512 * 2**20
"""A model on the meta device needs little memory: Llama-3.1-405B, Qwen3-235B-A22B and DeepSeek-V3
map 110-160 MiB beyond the imports."""


def seconds_from_env(name: str, default: float) -> float:
    """A positive number of seconds from environment variable ``name``, else ``default``."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


def remote_code_timeout(default: float) -> float:
    """The time limit for importing the folder's own code (``HFCONV_REMOTE_CODE_TIMEOUT``)."""
    return seconds_from_env(REMOTE_CODE_TIMEOUT_VAR, default)


def reference_timeout() -> float:
    """The time limit for building a reference model (``HFCONV_REFERENCE_TIMEOUT``)."""
    return seconds_from_env(REFERENCE_TIMEOUT_VAR, DEFAULT_REFERENCE_TIMEOUT_S)


def reference_memory() -> int:
    """The address space, in bytes, a reference build may map beyond its imports
    (``HFCONV_REFERENCE_MEMORY_MB``)."""
    mib = seconds_from_env(REFERENCE_MEMORY_VAR, DEFAULT_REFERENCE_MEMORY / 2**20)
    return int(mib * 2**20)


def sandbox_env(work: str) -> dict[str, str]:
    """The environment of a Python subprocess that imports transformers (and maybe folder code):
    offline (nothing is downloaded on behalf of a folder), with the Hub and module caches inside
    ``work`` (its fresh working directory), and none of the user's PYTHON*/HF_*/TRANSFORMERS_*
    settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    env.update({
        "HF_HOME": os.path.join(work, "hf"),
        "HF_MODULES_CACHE": os.path.join(work, "modules"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONDONTWRITEBYTECODE": "1",
        # torch and transformers write caches (torchinductor_<user>, ...) into the temp folder:
        # keep them in the child's own folder, removed with it, never in the user's TMPDIR.
        "TMPDIR": work, "TEMP": work, "TMP": work,
    })
    return env


def cap_address_space(headroom: int) -> int | None:
    """Limit this process's address space to what it maps now plus ``headroom`` bytes (soft and
    hard limit alike, never above the limit it inherited, so nothing it runs later can raise it).
    Called by a subprocess after its own imports (torch maps very different amounts, CPU or CUDA
    build), before it builds a model or imports a folder's code. Returns the limit, or None where
    it cannot be set."""
    try:
        import resource

        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            size = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:"))
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = size + int(headroom)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        return limit
    except (ImportError, OSError, StopIteration, ValueError):  # not Linux: the time limit still holds
        return None


CAP_SOURCE = ("def _hfconv_cap(headroom):\n"
              "    try:\n"
              "        import resource\n"
              "        with open('/proc/self/status') as h:\n"
              "            size = next(int(l.split()[1]) * 1024 for l in h if l.startswith('VmSize:'))\n"
              "        hard = resource.getrlimit(resource.RLIMIT_AS)[1]\n"
              "        limit = size + headroom if hard == resource.RLIM_INFINITY else min(size + headroom, hard)\n"
              "        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
              "    except Exception:\n"
              "        pass\n")
"""Python source defining ``_hfconv_cap(headroom)``: :func:`cap_address_space` for a child that
cannot import hfconv."""


def run_python(code: str, args: list[str], work: str, timeout: float) -> int | None:
    """Run ``code`` in a separate Python (``-I``: no user site, no PYTHON* settings) in ``work``
    with :func:`sandbox_env`, in a session of its own, stdout and stderr to files in ``work``
    (``stdout``, ``stderr``: a pipe could be held open by a grandchild, or flooded).

    Returns the exit status, or None when it ran past ``timeout`` seconds. Either way the child and
    everything it started in its session are killed before this returns.

    Raises:
        OSError: the subprocess could not be started.
    """
    import subprocess
    import sys

    with open(os.path.join(work, "stdout"), "wb") as out, open(os.path.join(work, "stderr"), "wb") as err:
        proc = None
        try:
            # Started and handed to the kill below in one step: a signal in between (Popen waits
            # for the exec) would leave the folder's code running, in a session of its own, with
            # no time limit.
            with uninterrupted():
                proc = subprocess.Popen([sys.executable, "-I", "-c", code, *args], cwd=work, env=sandbox_env(work),
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            try:
                if proc is not None:
                    kill_group(proc)
            except BaseException:  # a signal as it was killed (a timeout and a Ctrl-C at once): killed all the same
                if proc is not None:
                    kill_group(proc)
                raise


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """Kill a child started with ``start_new_session`` and whatever it spawned in its session."""
    import contextlib
    import signal
    import subprocess

    if hasattr(os, "killpg"):
        with contextlib.suppress(OSError):  # the group is already gone
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def file_tail(path: str, limit: int = 65536) -> str:
    """The last ``limit`` bytes of a file a child wrote, as text ("" when it is missing)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
