"""Acceptance: every fixture folder, and broken copies of them, with the exact finding codes
``hfconv validate`` must report (as check-jsonschema's ``tests/acceptance`` does for schemas).

All folders go through ONE ``hfconv validate --format json PATH...`` subprocess (the JSON is an
array, one object per folder); each folder is then one parametrized test over the parsed result.
The cases are in ``build.py`` next to this file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .build import BROKEN, FIXTURES, PRISTINE, fixture_folders
from .build import build as build_broken

ENTRY = "from hfconv.cli import run; run()"
FOLDERS = fixture_folders()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The broken folders built once, then every folder validated in one subprocess."""
    root = tmp_path_factory.mktemp("acceptance")
    sentinels = root / "sentinels"
    sentinels.mkdir()
    broken = build_broken(root / "broken", sentinels)
    paths = {name: FIXTURES / name for name in FOLDERS}
    paths.update({f"broken/{name}": folder for name, folder in broken.items()})
    result = subprocess.run([sys.executable, "-c", ENTRY, "validate", "--format", "json",
                             *(str(p) for p in paths.values())],
                            capture_output=True, timeout=300, cwd=root,
                            env=dict(os.environ, NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1"))
    stderr = result.stderr.decode("utf-8", "replace")
    try:
        documents = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"validate printed no JSON (exit {result.returncode}): {stderr[-3000:]}")
    assert isinstance(documents, list), documents
    by_path = {os.path.realpath(d["path"]): d for d in documents}
    return {"returncode": result.returncode, "stderr": stderr, "sentinels": sentinels,
            "documents": documents,
            "results": {name: by_path.get(os.path.realpath(path)) for name, path in paths.items()}}


def _codes(document: dict, severities: tuple[str, ...]) -> set[tuple[str, str]]:
    return {(f["code"], f["severity"]) for f in document["findings"] if f["severity"] in severities}


def test_one_run_over_every_folder(run: dict) -> None:
    # exit 1: some folders have errors; one object per PATH; no traceback; no payload ran
    assert run["returncode"] == 1, run["stderr"][-3000:]
    assert "Traceback" not in run["stderr"], run["stderr"][-3000:]
    assert len(run["documents"]) == len(FOLDERS) + len(BROKEN)
    assert all(document is not None for document in run["results"].values()), \
        [name for name, document in run["results"].items() if document is None]
    assert not any(run["sentinels"].iterdir())


def test_expectations_name_real_folders() -> None:
    assert set(PRISTINE) <= set(FOLDERS)
    assert {case.source for case in BROKEN} <= set(FOLDERS)
    assert len({case.name for case in BROKEN}) == len(BROKEN)
    assert len(FOLDERS) >= 9 + 15  # every llama layout and every family


@pytest.mark.parametrize("name", FOLDERS)
def test_fixture_folder(run: dict, name: str) -> None:
    """A committed fixture: exactly the findings listed in PRISTINE (infos included), ok."""
    document = run["results"][name]
    assert document is not None
    assert _codes(document, ("error", "warning", "info")) == set(PRISTINE.get(name, ())), document["findings"]
    assert document["ok"] is True
    assert document["summary"]["errors"] == document["summary"]["warnings"] == 0
    assert document["summary"]["tensors"] > 0


@pytest.mark.parametrize("case", BROKEN, ids=[case.name for case in BROKEN])
def test_broken_folder(run: dict, case) -> None:
    """A broken copy: exactly its error and warning codes; ok only without errors; each error
    names the file it is about."""
    document = run["results"][f"broken/{case.name}"]
    assert document is not None
    assert _codes(document, ("error", "warning")) == set(case.expected), document["findings"]
    errors = [f for f in document["findings"] if f["severity"] == "error"]
    assert document["ok"] is (not errors)
    assert document["summary"]["errors"] == len(errors)
    assert all(f["file"] or f["tensor"] for f in errors), errors
