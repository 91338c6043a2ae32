"""The JSON report of the contract (``--format json``), and the JSON text every command prints."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..findings import REGISTRY
from ..report import Report
from .common import json_safe

__all__ = ["dumps_json", "render_json"]


def dumps_json(value: object) -> str:
    """The JSON text hfconv prints: indented, UTF-8 safe (see :func:`json_safe`), newline-terminated."""
    return json.dumps(json_safe(value), indent=2) + "\n"


def render_json(reports: Sequence[Report], array: bool | None = None) -> str:
    """The contract's JSON: one object for one folder, an array for several (``array=True``: an
    array even of one, as ``--recursive`` and several PATHs print)."""
    objects = [_json_object(r) for r in reports]
    if array is None:
        array = len(objects) != 1
    return dumps_json(objects if array else objects[0])


def _json_object(report: Report) -> dict:
    data = report.to_json()
    for item in data["findings"]:
        item["fix"] = REGISTRY[item["code"]].fix  # an extension of the contract: how to fix it
    return data
