"""Step 1 of load-test: validate the folder and refuse one with errors that affect loading
(any error, with ``strict``): a hostile pickle never reaches torch, a broken header never
reaches a reader."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..findings import Finding, Severity, finding
from ..report import Layout
from .results import Refused

if TYPE_CHECKING:  # pragma: no cover
    from ..contents import FolderContents

__all__ = ["Gate", "Validated", "affects_loading", "validate_for_loading"]

_LOADING_CODES = ("HFC1", "HFC2", "HFC3", "HFC6", "HFC9", "HFC402", "HFC406", "HFC411", "HFC412", "HFC413",
                  "HFC414")
"""Validation errors that stop a load wherever they are: weight files (HFC1xx safetensors,
HFC2xx pickles), the index and shards (HFC3xx), config.json's schema and consistency (HFC402,
HFC411-414), tensor shapes (HFC6xx) and bytes (HFC9xx)."""
_LOAD_FILES = ("config.json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")


def affects_loading(item: Finding) -> bool:
    """Whether a validation error stops load-test (without --strict): errors in the weights, the
    index, config.json or the layout of the weight files; not tokenizer, generation-config or
    custom-code files, which load-test never reads."""
    if item.code.startswith(_LOADING_CODES):
        return True
    if item.code.startswith("HFC0") or item.code == "HFC401":
        return item.file is None or item.file.endswith(_LOAD_FILES)
    return False


@dataclass(frozen=True)
class Gate:
    """What the validation step keeps, drops and refuses, and where it reports its phases."""

    select: tuple[str, ...]
    ignore: tuple[str, ...]
    strict: bool
    phase: Callable[[str], None]


@dataclass(frozen=True)
class Validated:
    """A folder that passed the gate: its contents (headers read once) and what to report."""

    contents: FolderContents
    """The read stage's result."""
    layout: Layout | None
    passed: list[Finding]
    """HFC744 when errors that do not affect loading were let through."""


def validate_for_loading(root: Path, gate: Gate, phases: dict[str, float]) -> Validated:
    """Validate ``root`` (timed as the ``validate`` phase).

    Raises:
        Refused: HFC730 and every validation error, when some error stops the load.
    """
    from ..contents import read_contents
    from ..discovery import discover
    from ..validation import check_contents

    # 1. Validate, reading every header once (the later steps use the same contents).
    gate.phase("validating")
    tick = time.perf_counter()
    contents = read_contents(discover(root))
    report = check_contents(contents, select=gate.select, ignore=gate.ignore)
    phases["validate"] = time.perf_counter() - tick
    # 2. Refuse on an error that affects loading (any error, with strict).
    errors = [f for f in report.findings if f.severity is Severity.ERROR]
    blocking = errors if gate.strict else [f for f in errors if affects_loading(f)]
    if blocking:
        first = blocking[0]
        summary = finding("HFC730", f"refused to load: validation found {len(blocking)} error"
                          f"{'s' if len(blocking) != 1 else ''}{' that affect loading' if not gate.strict else ''} "
                          f"({_quoted(first)})")
        raise Refused([summary, *errors], report.layout, report.shard_map)
    # 3. The others are let through, with a warning that names them.
    passed: list[Finding] = []
    if errors:
        noun = "error that does" if len(errors) == 1 else "errors that do"
        passed.append(finding("HFC744", f"loaded despite {len(errors)} validation {noun} not affect loading "
                              f"({'; '.join(_quoted(f) for f in errors[:3])}{'; ...' if len(errors) > 3 else ''}); "
                              "strict=True refuses them"))
    return Validated(contents, report.layout, passed)


def _quoted(item: Finding) -> str:
    """``CODE file: message`` with the file named once (most messages start with it)."""
    named = item.file is not None and not item.message.startswith(item.file)
    return f"{item.code} {f'{item.file}: ' if named else ''}{item.message}"
