"""Settings from a config file (issue 12): ``[tool.hfconv]`` in a pyproject.toml or an
``hfconv.toml``, in the model folder or its repository root; flags override them; an unknown key
or code is exit 2 naming it. Through the CLI, on a copy of a real fixture with a stale shard
(HFC007, a warning, about one file) in a git repository made in tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import FIXTURES

STALE = "model-00001-of-00004.safetensors"


def hfconv(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1", **extra)
    return subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def repository(tmp_path: Path) -> tuple[Path, Path]:
    """A repository root (with .git) holding models/m: a good folder plus a stale shard."""
    root = tmp_path / "repo"
    model = root / "models" / "m"
    shutil.copytree(FIXTURES / "llama-safetensors-sharded", model)
    shutil.copy(model / "model-00001-of-00003.safetensors", model / STALE)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, timeout=60)
    return root, model


def codes(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [f["code"] for f in json.loads(result.stdout)["findings"]]


def test_pyproject_at_the_repository_root(tmp_path: Path) -> None:
    root, model = repository(tmp_path)
    (root / "pyproject.toml").write_text('[project]\nname = "m"\n\n[tool.hfconv]\nstrict = true\n')
    strict = hfconv("validate", str(model), "--format", "json", cwd=tmp_path)
    assert strict.returncode == 1 and "HFC007" in codes(strict)
    assert f"hfconv: settings from {root / 'pyproject.toml'}" in strict.stderr.splitlines()
    overridden = hfconv("validate", str(model), "--no-strict", cwd=tmp_path)
    assert overridden.returncode == 0, overridden.stdout

    (root / "pyproject.toml").write_text('[tool.hfconv]\nstrict = true\n[tool.hfconv.per-file-ignores]\n'
                                         f'"models/m/{STALE}" = ["HFC007"]\n"*.md" = ["HFC0"]\n')
    ignored = hfconv("validate", str(model), "--format", "json", cwd=tmp_path)
    assert ignored.returncode == 0 and "HFC007" not in codes(ignored), ignored.stdout


def test_hfconv_toml_in_the_model_folder_wins_and_flags_override_it(tmp_path: Path) -> None:
    root, model = repository(tmp_path)
    (root / "pyproject.toml").write_text('[tool.hfconv]\nstrict = true\n')
    (model / "hfconv.toml").write_text('strict = true\nignore = ["HFC007"]\n[per-file-ignores]\n'
                                       '"*-of-00004.safetensors" = ["HFC00"]\n')
    nearest = hfconv("validate", str(model), "--format", "json", cwd=tmp_path)
    assert nearest.returncode == 0 and "HFC007" not in codes(nearest)
    assert f"hfconv: settings from {model / 'hfconv.toml'}" in nearest.stderr.splitlines()
    (model / "hfconv.toml").write_text('strict = true\nignore = ["HFC007"]\n')
    flags = hfconv("validate", str(model), "--format", "json", "--ignore", "HFC030", cwd=tmp_path)
    assert flags.returncode == 1 and "HFC007" in codes(flags)  # --ignore replaces the file's ignore
    unset = hfconv("validate", str(model), "--no-config", cwd=tmp_path)
    assert unset.returncode == 0 and "settings from" not in unset.stderr


def test_no_repository_root_above_reads_only_the_model_folder(tmp_path: Path) -> None:
    model = tmp_path / "models" / "m"
    shutil.copytree(FIXTURES / "llama-safetensors-sharded", model)
    shutil.copy(model / "model-00001-of-00003.safetensors", model / STALE)
    (tmp_path / "hfconv.toml").write_text("strict = true\n")  # above the folder, no .git: not read
    result = hfconv("validate", str(model), cwd=tmp_path)
    assert result.returncode == 0 and "settings from" not in result.stderr
    chosen = hfconv("validate", str(model), "--config", str(tmp_path / "hfconv.toml"), cwd=tmp_path)
    assert chosen.returncode == 1


def test_unknown_key_or_code_is_exit_2_naming_it(tmp_path: Path) -> None:
    root, model = repository(tmp_path)
    config = root / "pyproject.toml"
    for text, named in (('[tool.hfconv]\nstrict = true\nignored = ["HFC007"]\n', "unknown key 'ignored'"),
                        ('[tool.hfconv]\nselect = ["HFC999"]\n', "select: HFC999 is not a finding code"),
                        ('[tool.hfconv.per-file-ignores]\n"*.bin" = ["HFX1"]\n', "HFX1 is not a finding code"),
                        ('[tool.hfconv\n', "not valid TOML")):
        config.write_text(text)
        result = hfconv("validate", str(model), cwd=tmp_path)
        assert result.returncode == 2, (text, result.stdout, result.stderr)
        assert str(config) in result.stderr and named in result.stderr, result.stderr
        assert result.stdout == "" and "Traceback" not in result.stderr


def test_a_config_file_never_hides_an_error(tmp_path: Path) -> None:
    """The folder's own hfconv.toml is written by whoever wrote the folder: it can quiet warnings and
    infos, not errors (a missing shard here; a hostile pickle alike). The command line can."""
    _, model = repository(tmp_path)
    (model / "model-00002-of-00003.safetensors").unlink()
    (model / "hfconv.toml").write_text('select = ["HFC0"]\nignore = ["HFC3"]\n[per-file-ignores]\n"*" = ["HFC"]\n')
    configured = hfconv("validate", str(model), "--format", "json", cwd=tmp_path)
    assert configured.returncode == 1
    found = codes(configured)
    assert "HFC304" in found and "HFC007" not in found  # the stale shard's warning is quieted, the error is not
    commanded = hfconv("validate", str(model), "--ignore", "HFC304", cwd=tmp_path)
    assert commanded.returncode == 0, commanded.stdout


def test_a_symlink_or_fifo_named_like_a_config_is_never_read(tmp_path: Path) -> None:
    """A symlink may lead out of the folder (SECURITY.md: nothing outside it is read): exit 2
    naming it, its target unread; a FIFO is passed over, never opened (no hang)."""
    _, model = repository(tmp_path)
    outside = tmp_path / "secret.toml"
    outside.write_text("strict = true\n")
    (model / "hfconv.toml").symlink_to(outside)
    linked = hfconv("validate", str(model), cwd=tmp_path)
    assert linked.returncode == 2 and f"{model / 'hfconv.toml'} is a symlink" in linked.stderr
    (model / "hfconv.toml").unlink()
    os.mkfifo(model / "hfconv.toml")
    fifo = hfconv("validate", str(model), cwd=tmp_path)
    assert fifo.returncode == 1 and "settings from" not in fifo.stderr  # 1: validate reports the FIFO itself
    assert "hfconv.toml" in fifo.stdout


def test_a_hub_cache_snapshot_has_no_config(tmp_path: Path) -> None:
    """A downloaded repo (files are symlinks into blobs/) is not the user's repository: its
    hfconv.toml is not looked for, so it neither sets anything nor stops the command."""
    repo = tmp_path / "hub" / "models--org--name"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(FIXTURES / "llama-safetensors", snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "cfg").write_text('ignore = ["HFC"]\n')
    (snapshot / "hfconv.toml").symlink_to(Path("..", "..", "blobs", "cfg"))
    result = hfconv("validate", "org/name", cwd=tmp_path, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "settings from" not in result.stderr and "symlink" not in result.stderr
