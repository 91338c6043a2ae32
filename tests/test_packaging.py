"""Packaging (issue 12): the light install (no torch for validate, inspect and convert without
--dtype; one line naming the install for load-test and convert --dtype), installs that work from
a checkout, no link to a page that does not exist, ``python -m hfconv``, ``--version``, LICENSE.

"Without torch" is real: the command runs in a subprocess whose import system refuses ``torch``
(a meta path finder that raises ModuleNotFoundError, as a Python without torch installed does),
on copies of the real fixtures. A torch-less virtual environment (``python -m venv`` + ``pip
install .``) behaves the same; it is not built here (half a minute of pip).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from helpers import ROOT, copy_fixture

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

WITHOUT_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
for name in [n for n in sys.modules if n == "torch" or n.startswith("torch.")]:
    del sys.modules[name]
sys.argv = ["hfconv", *sys.argv[1:]]
from hfconv.cli import run
run()
"""


def hfconv(*args: str, cwd: Path, torch: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1")
    program = WITHOUT_TORCH if not torch else "from hfconv.cli import run; run()"
    return subprocess.run([sys.executable, "-c", program, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_torch_is_an_extra_pulled_by_transformers_and_dev() -> None:
    project = pyproject()["project"]
    assert "torch" not in requirement_names(project["dependencies"])
    extras = project["optional-dependencies"]
    for extra in ("torch", "transformers", "dev"):
        assert "torch" in requirement_names(extras[extra]), extra
    assert "pre-commit" in requirement_names(extras["dev"])  # the pipeline tests run it


def test_validate_inspect_convert_run_without_torch(tmp_path: Path) -> None:
    copy_fixture(tmp_path, "llama-bin-sharded")
    validated = hfconv("validate", "llama-bin-sharded", "--format", "json", cwd=tmp_path, torch=False)
    assert validated.returncode == 0, validated.stderr
    assert json.loads(validated.stdout)["ok"] is True
    inspected = hfconv("inspect", "llama-bin-sharded", cwd=tmp_path, torch=False)
    assert inspected.returncode == 0 and "pytorch_model-00001-of-00003.bin" in inspected.stdout, inspected.stderr
    converted = hfconv("convert", "llama-bin-sharded", "out", "-q", cwd=tmp_path, torch=False)
    assert converted.returncode == 0, converted.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "Traceback" not in validated.stderr + inspected.stderr + converted.stderr


def test_load_test_and_convert_dtype_without_torch_exit_2_naming_the_install(tmp_path: Path) -> None:
    copy_fixture(tmp_path, "llama-safetensors")
    for args, what in ((("load-test", "llama-safetensors", "-q"), "load-test"),
                       (("convert", "llama-safetensors", "out", "-q", "--dtype", "bf16"), "convert --dtype")):
        result = hfconv(*args, cwd=tmp_path, torch=False)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0] == f"hfconv: error: {what} needs torch, which is not installed; install it: pip install torch"
    assert not (tmp_path / "out").exists()
    reference = hfconv("validate", "llama-safetensors", "--reference", "transformers", cwd=tmp_path, torch=False)
    assert reference.returncode == 2 and "Traceback" not in reference.stderr
    assert "install it: pip install torch transformers accelerate" in reference.stderr  # one command for both


def test_advice_names_installs_that_work_from_a_checkout(tmp_path: Path) -> None:
    """No finding, help text or message names the unpublished hfconv[...] extras, and the SARIF
    log links no package page (hfconv is not on a package index)."""
    registry = hfconv("codes", "--format", "json", cwd=tmp_path).stdout
    forward_help = hfconv("load-test", "--help", cwd=tmp_path).stdout
    for text in (registry, forward_help):
        assert "hfconv[" not in text
    assert "pip install transformers accelerate" in registry  # HFC740's fix, as the CLI's --forward gate says
    copy_fixture(tmp_path, "llama-safetensors-sharded")
    (tmp_path / "llama-safetensors-sharded" / "model-00002-of-00003.safetensors").unlink()
    sarif = hfconv("validate", "llama-safetensors-sharded", "--format", "sarif", cwd=tmp_path)
    assert sarif.returncode == 1
    driver = json.loads(sarif.stdout)["runs"][0]["tool"]["driver"]
    assert "pypi.org" not in sarif.stdout
    assert driver.get("informationUri", "https://").startswith("https://")


def test_python_m_hfconv_and_version(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    version = subprocess.run([sys.executable, "-m", "hfconv", "--version"], capture_output=True, text=True,
                             env=env, timeout=60)
    assert version.returncode == 0
    assert version.stdout.strip() == f"hfconv, version {metadata.version('hfconv')}"
    copy_fixture(tmp_path, "llama-safetensors")
    validated = subprocess.run([sys.executable, "-m", "hfconv", "validate", "llama-safetensors"], cwd=tmp_path,
                               capture_output=True, text=True, env=env, timeout=120)
    assert validated.returncode == 0 and "OK" in validated.stdout, validated.stderr


def test_license_file_matches_pyproject() -> None:
    assert pyproject()["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "END OF TERMS AND CONDITIONS" in text


def test_readme_links_nothing_outside_the_repository() -> None:
    """Every relative link of the README and DEVELOPERS.md names a file inside the repository."""
    for doc in ("README.md", "DEVELOPERS.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (ROOT / target.split("#", 1)[0]).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), (doc, target)
