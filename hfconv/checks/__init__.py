"""Checks take a read folder and yield Findings. CHECKS lists them in report order."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..contents import FolderContents
from ..findings import Finding
from .dtype import check_dtype
from .hub import check_hub
from .index import check_index
from .layout import capped, check_hygiene, check_layout, check_read_errors, check_weight_metadata
from .manifest import check_manifest
from .model_card import check_model_card
from .schemas import check_schemas
from .shapes import check_shapes
from .tokenizer import check_tokenizer

Check = Callable[[FolderContents], Iterable[Finding]]

# Two checks are imported only for a folder that needs them: their parsers and records are start-up
# time every other validate would pay. (findings.all_codes imports them for the registry.)
def check_custom_code(contents: FolderContents) -> Iterable[Finding]:
    """checks/custom_code.py, for a folder with Python files or an auto_map in a JSON file (a superset of
    the folders its own check_custom_code looks at: keep the two in step)."""
    if not contents.folder.python_files and not any(isinstance(data, dict) and "auto_map" in data
                                                    for data in contents.json.values()):
        return ()
    from .custom_code import check_custom_code as check

    return check(contents)


def check_deep(contents: FolderContents) -> Iterable[Finding]:
    """checks/deep.py, when tensor bytes are read (--deep)."""
    if not contents.options.deep:
        return ()
    from .deep import check_deep as check

    return check(contents)


_CHECKS: list[Check] = [
    check_read_errors,
    check_layout,
    check_weight_metadata,
    check_hygiene,
    check_model_card,
    check_hub,
    check_index,
    check_schemas,
    check_tokenizer,
    check_dtype,
    check_custom_code,
    check_shapes,
    check_manifest,
    check_deep,
]

CHECKS: list[Check] = [capped(check) for check in _CHECKS]
"""Every check capped (layout.capped): at most MAX_FINDINGS_PER_CODE findings of each code, then one
summary finding per code, so no check can emit one finding per tensor (or token) without bound.
Wrapping a check that is already capped changes nothing."""
