"""Makes ``tests/helpers.py`` importable (``from helpers import ...``) whatever pytest's import mode;
the fixtures several test modules share."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


@pytest.fixture(scope="module")
def transformers():
    """transformers, imported once for the module (slow); the tests skip without it."""
    try:
        import transformers as module
    except Exception as exc:  # not installed, or a broken install
        pytest.skip(f"transformers is not importable ({exc.__class__.__name__}: {exc}); "
                    "install hfconv[transformers] to compare with it")
    module.logging.set_verbosity_error()
    return module
