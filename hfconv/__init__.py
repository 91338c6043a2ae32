"""hfconv: validate, convert and load-test Hugging Face model folders without trusting them.

    from hfconv import validate, convert, load_test, inspect, diff
    report = validate("path/to/model")

The public functions are imported lazily so that ``import hfconv`` (and ``hfconv validate``)
never pays for torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "validate": ("hfconv.validation", "validate"),
    "inspect": ("hfconv.inspection", "inspect"),
    "convert": ("hfconv.conversion", "convert"),
    "load_test": ("hfconv.load", "load_test"),
    "fix": ("hfconv.fixing", "fix"),
    "diff": ("hfconv.comparison", "diff"),
    "Report": ("hfconv.report", "Report"),
    "Finding": ("hfconv.findings", "Finding"),
    "Severity": ("hfconv.findings", "Severity"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'hfconv' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy exports too (``dir(hfconv)`` lists ``convert`` and ``load_test`` without importing torch)."""
    return sorted({*globals(), *_EXPORTS})
