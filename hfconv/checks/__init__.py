"""Checks take a read folder and yield Findings. CHECKS lists them in report order."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..contents import FolderContents
from ..findings import Finding
from .index import check_index
from .layout import check_layout, check_read_errors

Check = Callable[[FolderContents], Iterable[Finding]]

CHECKS: list[Check] = [
    check_read_errors,
    check_layout,
    check_index,
]
