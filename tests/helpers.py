"""Helpers shared by the test modules (``tests/conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
LAYOUTS = [
    "llama-safetensors",
    "llama-safetensors-sharded",
    "llama-bin",
    "llama-bin-sharded",
    "llama-bin-oldnames",
    "llama-tied-bin",
    "llama-tied-safetensors",
    "llama-bf16-safetensors",
    "llama-legacy-bin",
]
"""Every fixture layout (see fixtures/make_fixtures.py)."""


def copy_fixture(tmp_path: Path, name: str) -> Path:
    """A writable copy of fixture ``name`` at ``tmp_path / name``."""
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst
