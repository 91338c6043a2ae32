"""hfconv in a publishing pipeline (issue 12): the pre-commit hook, run by pre-commit's own
``try-repo`` in a model repository made with git; the GitHub Action, its steps' command lines run
as the runner runs them (``bash -eo pipefail``, inputs in the environment, GITHUB_* files); and
every snippet of the README's "In your pipeline" section, as written.

pre-commit installs a ``language: python`` hook by building a virtual environment and pip-installing
hfconv into it (half a minute to a minute here, mostly the package index); the suite runs the
``hfconv-validate-system`` hook instead (the same entry and arguments, the hfconv on PATH: this
checkout's), and checks that the two hooks differ in nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from test_render_formats import sarif_schema

from helpers import ROOT, copy_fixture

yaml = pytest.importorskip("yaml", reason="needs pyyaml (pip install -e '.[dev]')")

BIN = str(Path(sys.executable).parent)
MISSING_SHARD = "model-00002-of-00003.safetensors"


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main",
                    *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def model_repository(tmp_path: Path) -> Path:
    """A git repository holding a good model folder at its root, committed."""
    repo = copy_fixture(tmp_path, "llama-safetensors-sharded")
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "model", cwd=repo)
    return repo


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RUNNER_", "PRE_COMMIT"))}
    env.update(PATH=BIN + os.pathsep + env.get("PATH", ""), PRE_COMMIT_HOME=str(tmp_path / "pre-commit-home"),
               NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


# --- pre-commit ----------------------------------------------------------------------------------

def hooks() -> dict[str, dict]:
    return {hook["id"]: hook for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}


def test_hook_definitions() -> None:
    found = hooks()
    python, system = found["hfconv-validate"], found["hfconv-validate-system"]
    assert python["language"] == "python" and system["language"] == "system"
    assert python["entry"] == "hfconv validate" and python["pass_filenames"] is False and python["args"] == ["."]
    assert {k: v for k, v in python.items() if k not in ("id", "language", "description")} == \
        {k: v for k, v in system.items() if k not in ("id", "language", "description")}


def hook_repository(tmp_path: Path) -> Path:
    """This checkout's hook definitions as a repository pre-commit can try."""
    repo = tmp_path / "hooks"
    repo.mkdir()
    shutil.copy(ROOT / ".pre-commit-hooks.yaml", repo)
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "hooks", cwd=repo)
    return repo


def try_repo(hook_repo: Path, model_repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pre_commit", "try-repo", str(hook_repo), "hfconv-validate-system",
                           "--all-files"], cwd=model_repo, env=env, capture_output=True, text=True, timeout=300)


def test_pre_commit_try_repo_passes_a_good_model_and_fails_a_broken_one(tmp_path: Path) -> None:
    pytest.importorskip("pre_commit", reason="needs pre-commit (pip install -e '.[dev]')")
    hook_repo, model_repo = hook_repository(tmp_path), model_repository(tmp_path)
    env = environment(tmp_path)
    good = try_repo(hook_repo, model_repo, env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert re.search(r"hfconv validate\.+Passed", good.stdout), good.stdout

    git("rm", "-q", MISSING_SHARD, cwd=model_repo)
    broken = try_repo(hook_repo, model_repo, env)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert re.search(r"hfconv validate\.+Failed", broken.stdout)
    assert "HFC304" in broken.stdout and MISSING_SHARD in broken.stdout


# --- the GitHub Action -----------------------------------------------------------------------------

def run_action(tmp_path: Path, workspace: Path, **inputs: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Every step of action.yml, as the runner runs a composite action's ``shell: bash`` steps;
    the first step that fails ends the run (its result is returned)."""
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    values = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    unknown = set(inputs) - set(values)
    assert not unknown, unknown
    values.update(inputs)
    files = tmp_path / "runner"
    files.mkdir(exist_ok=True)
    github = {name: files / name.lower() for name in ("GITHUB_PATH", "GITHUB_OUTPUT", "GITHUB_ENV",
                                                      "GITHUB_STEP_SUMMARY")}
    for path in github.values():
        path.touch()
    base = environment(tmp_path, GITHUB_ACTIONS="true", GITHUB_ACTION_PATH=str(ROOT), GITHUB_WORKSPACE=str(workspace),
                       RUNNER_TEMP=str(files), **{k: str(v) for k, v in github.items()})
    result = None
    for step in action["runs"]["steps"]:
        assert step["shell"] == "bash" and "uses" not in step
        env = dict(base)
        for name, value in (step.get("env") or {}).items():
            env[name] = re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", lambda m: values[m.group(1)], str(value))
        assert "${{" not in step["run"], "the script takes inputs from its env, never by substitution"
        script = files / "step.sh"
        script.write_text(step["run"])
        result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=workspace,
                                env=env, capture_output=True, text=True, timeout=300)
        if result.returncode:
            break
    assert result is not None
    return result, github["GITHUB_STEP_SUMMARY"]


def test_action_annotates_and_writes_sarif(tmp_path: Path) -> None:
    """A broken folder: annotations, a valid SARIF log, the report in the job summary, exit 1 (a
    good folder passing the action: the README's workflow, below)."""
    workspace = model_repository(tmp_path).parent
    (workspace / "llama-safetensors-sharded" / MISSING_SHARD).unlink()
    broken, summary = run_action(tmp_path, workspace, path="llama-safetensors-sharded", install="false",
                                 sarif="hfconv.sarif", strict="true", ignore="HFC030")
    assert broken.returncode == 1, broken.stderr
    assert re.search(r"^::error file=llama-safetensors-sharded/model-00002-of-00003\.safetensors,title=HFC304::HFC304 ",
                     broken.stdout, re.M), broken.stdout
    log = json.loads((workspace / "hfconv.sarif").read_text())
    jsonschema.Draft7Validator(sarif_schema()).validate(log)
    assert "HFC304" in {r["ruleId"] for r in log["runs"][0]["results"]}
    assert "HFC304" in summary.read_text()


def test_action_bad_input_is_exit_2(tmp_path: Path) -> None:
    workspace = model_repository(tmp_path).parent
    result, _ = run_action(tmp_path, workspace, path="llama-safetensors-sharded", install="false", select="HFC999",
                           sarif="hfconv.sarif")
    assert result.returncode == 2
    assert "HFC999" in result.stderr and not (workspace / "hfconv.sarif").exists()


# --- the README's "In your pipeline" snippets, as written -------------------------------------------

def readme_block(marker: str) -> str:
    """The fenced block right after ``<!-- pipeline:MARKER -->`` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text.split(f"<!-- pipeline:{marker} -->\n", 1)[1]
    block = re.match(r"```\w+\n(.*?\n)```\n", after, re.S)
    assert block, marker
    return block.group(1)


def published_hooks(tmp_path: Path) -> Path:
    """This checkout's hooks as the repository the README's snippet names, tagged with its ``rev``;
    the python hook's install (pip, half a minute) replaced by the hfconv on PATH (this checkout's)."""
    repo = tmp_path / "published-hooks"
    repo.mkdir()
    definitions = hooks()
    definitions["hfconv-validate"]["language"] = "system"
    (repo / ".pre-commit-hooks.yaml").write_text(yaml.safe_dump(list(definitions.values())))
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "hooks", cwd=repo)
    return repo


def test_readme_pipeline_snippets(tmp_path: Path) -> None:
    """The README's config in a model repository's pyproject.toml, its .pre-commit-config.yaml with
    `pre-commit run`, and its workflow's hfconv step through action.yml: a model with a stale shard
    passes only because the config's per-file-ignores says so."""
    pytest.importorskip("pre_commit", reason="needs pre-commit (pip install -e '.[dev]')")
    repo = tmp_path / "model-repo"
    model = repo / "models" / "my-model"
    shutil.copytree(ROOT / "fixtures" / "llama-safetensors-sharded", model)
    shutil.copy(model / "model-00001-of-00003.safetensors", model / "model-00001-of-00004.safetensors")
    (repo / "pyproject.toml").write_text(readme_block("config"))
    env = environment(tmp_path)
    git("init", "-q", cwd=repo)
    unconfigured = subprocess.run(["hfconv", "validate", "models/my-model", "--no-config", "--strict"], cwd=repo,
                                  env=env, capture_output=True, text=True, timeout=120)
    assert unconfigured.returncode == 1 and "HFC007" in unconfigured.stdout

    # pre-commit, with the snippet's repository and rev standing for this checkout's hooks
    pre_commit_config = readme_block("pre-commit")
    hook_repo = published_hooks(tmp_path)
    git("tag", re.search(r"rev: (\S+)", pre_commit_config).group(1), cwd=hook_repo)
    (repo / ".pre-commit-config.yaml").write_text(pre_commit_config.replace("https://github.com/OWNER/hfconv",
                                                                            str(hook_repo)))
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "model", cwd=repo)
    hook = subprocess.run([sys.executable, "-m", "pre_commit", "run", "--all-files"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert hook.returncode == 0, hook.stdout + hook.stderr
    assert re.search(r"hfconv validate\.+Passed", hook.stdout)

    # the workflow: checkout, this action with the snippet's inputs, upload-sarif
    workflow = yaml.safe_load(readme_block("action"))
    steps = workflow["jobs"]["hfconv"]["steps"]
    ours = [s for s in steps if s.get("uses", "").startswith("OWNER/hfconv@")]
    assert len(ours) == 1 and steps[0]["uses"].startswith("actions/checkout@")
    inputs = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in ours[0]["with"].items()}
    result, summary = run_action(tmp_path, repo, install="false", **inputs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "::error" not in result.stdout and "::warning" not in result.stdout
    sarif = json.loads((repo / inputs["sarif"]).read_text())
    assert [s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif@")][0]["with"] == \
        {"sarif_file": inputs["sarif"]}
    assert sarif["runs"][0]["tool"]["driver"]["name"] == "hfconv"
    assert "OK" in summary.read_text()


def test_readme_explain_snippet(tmp_path: Path) -> None:
    result = subprocess.run(["bash", "-e", "-c", readme_block("explain")], cwd=tmp_path, env=environment(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HFC304 (error): ")
    assert "HFC301  error" in result.stdout
    assert "HFC304" in {entry["code"] for entry in json.loads((tmp_path / "codes.json").read_text())}
