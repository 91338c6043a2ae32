"""Makes ``tests/helpers.py`` importable (``from helpers import ...``) whatever pytest's import mode;
the fixtures several test modules share."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


def pytest_configure(config: pytest.Config) -> None:
    """Compile hfconv's modules to bytecode once, before any test starts a subprocess.

    Most tests run ``python -m hfconv`` in a subprocess. Where PYTHONDONTWRITEBYTECODE is set (or
    hfconv's sources changed since its ``__pycache__`` was written) every one of those processes
    compiles hfconv's ~100 modules again: ~0.1 s of CPU each, a quarter of a short CLI run. Only
    ``hfconv/__pycache__`` is written (what Python writes itself when allowed), once, by the xdist
    controller (or the only process); a folder that cannot be written is left as it is."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller compiled before starting it
        return
    import compileall

    compileall.compile_dir(str(Path(_TESTS).parent / "hfconv"), quiet=2)


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
