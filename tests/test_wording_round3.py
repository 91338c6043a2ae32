"""Wording and one-source-of-truth items of the third review round: the folder check shared by the
CLI and the library, the finding-code check shared by --select/--ignore and the config file, the
repository root found once, git's attribute files in a linked worktree, progress bars kept out of
an ``-o`` report, and the placeholder repository URL in the docs.

One CLI subprocess per point, on committed fixtures or real folders (``git init``, ``git worktree
add``); the logic around it in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT

pytestmark = pytest.mark.filterwarnings("error")


def hfconv(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1", COLUMNS="100", **(env or {}))
    return subprocess.run([sys.executable, "-m", "hfconv", *args], env=full, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


# --- 1. one folder check, one wording: the CLI says what the library says --------------------------

def test_cli_words_a_non_folder_as_the_library_does(tmp_path: Path) -> None:
    from hfconv import validate
    from hfconv.errors import UsageError
    from hfconv.folder_check import check_folder

    link = tmp_path / "model"
    link.symlink_to(tmp_path / "gone")
    result = hfconv("inspect", str(link))
    with pytest.raises(UsageError) as library:
        validate(link)
    assert result.returncode == 2, result.stderr
    assert str(library.value) == f"{link} is a dangling symlink (to '{tmp_path / 'gone'}', which does not exist)"
    assert str(library.value) in result.stderr and "Traceback" not in result.stderr
    # Every other case, in the library (the CLI calls this very function).
    file = tmp_path / "config.json"
    file.write_text("{}")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = {file: f"{file} is a file, not a folder (give the model folder that contains it)",
             fifo: f"{fifo} is not a folder (a FIFO); give the model folder",
             tmp_path / "missing": f"{tmp_path / 'missing'} does not exist"}
    for path, message in cases.items():
        with pytest.raises(UsageError) as raised:
            check_folder(path)
        assert str(raised.value) == message
    with pytest.raises(UsageError, match=r"^no-such-model does not exist \(and is not a repo id in the local Hub"):
        validate("no-such-model")
    check_folder(FIXTURES / "llama-bin")


# --- 2. one check of finding codes for --select/--ignore and a config file ---------------------------

def test_config_file_and_options_word_an_unknown_code_alike(tmp_path: Path) -> None:
    from hfconv.codes import checked_codes
    from hfconv.config_file import ConfigError, read_config
    from hfconv.errors import UsageError

    tail = ("not a finding code or a prefix of one (codes are HFC followed by three digits, e.g. HFC3 or "
            "HFC301; hfconv codes lists them all)")
    config = tmp_path / "hfconv.toml"
    config.write_text('select = ["hfc3", "hfc9x", "\\u001b[2J"]\n')
    result = hfconv("validate", str(FIXTURES / "llama-bin"), "--config", str(config))
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert f"{config}: select: hfc9x, \\x1b[2J are {tail}" in result.stderr, result.stderr
    assert "\x1b" not in result.stderr  # a name from the file cannot drive the terminal
    with pytest.raises(ConfigError) as from_file:  # the library keeps the text; the CLI escapes it
        read_config(config)
    assert str(from_file.value) == f"{config}: select: hfc9x, \x1b[2J are {tail}"
    with pytest.raises(UsageError) as from_option:
        checked_codes(["HFC3", " hfc9x "], "--select")
    assert str(from_option.value) == f"--select: hfc9x is {tail}"
    assert checked_codes([" hfc3", "", "HFC301"], "--ignore") == ("HFC3", "HFC301")


# --- 3. one repository root, one way to open a config file --------------------------------------------

def test_config_file_is_opened_as_every_other_file_and_the_root_found_once(tmp_path: Path) -> None:
    from hfconv.config_file import ConfigError, find_config, read_config
    from hfconv.gitrepo import work_tree

    fifo = tmp_path / "hfconv.toml"
    os.mkfifo(fifo)
    result = hfconv("validate", str(FIXTURES / "llama-bin"), "--config", str(fifo), timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"{fifo}: is not a regular file (FIFO, device or socket); refused" in result.stderr, result.stderr
    # A linked worktree's .git is a file: it is the top of the repository for both users of the walk.
    top = tmp_path / "wt"
    model = top / "models" / "m"
    model.mkdir(parents=True)
    (top / ".git").write_text("gitdir: /elsewhere/.git/worktrees/wt\n")
    (top / "hfconv.toml").write_text("strict = true\n")
    assert work_tree(model) == str(top) and find_config(model) == str(top / "hfconv.toml")
    assert work_tree(tmp_path) is None
    link = model / "hfconv.toml"
    link.symlink_to(top / "hfconv.toml")
    with pytest.raises(ConfigError, match="is a symlink; not followed"):
        read_config(link, follow_symlinks=False)
    assert read_config(link).strict is True


# --- 4. registered examples that read as the check's own messages ---------------------------------------

def test_hfc408_example_names_a_model_type_that_really_has_no_schema() -> None:
    """HFC408's example once named olmo2, which has a family schema since: it must name one without."""
    import re

    from hfconv.checks.schemas import known_model_types
    from hfconv.findings import all_codes

    example = all_codes()["HFC408"].example
    named = re.search(r"model_type '([^']+)' has no family-specific schema", example)
    assert named is not None and named.group(1) not in known_model_types(), example


# --- 5. git's attribute and ignore files in a linked worktree (.git is a file) -------------------------

GIT = shutil.which("git")


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_lfs_routing_in_a_linked_worktree_reads_the_files_git_reads(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config" / "git").mkdir(parents=True)
    env = {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_ATTR_NOSYSTEM": "1", "XDG_CONFIG_HOME": "",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    genv = {k: v for k, v in dict(os.environ, **env).items() if not k.startswith("GIT_DIR")}

    def git(*args: str, cwd: Path) -> str:
        return subprocess.run([GIT or "git", *args], cwd=cwd, env=genv, capture_output=True, text=True,
                              check=True).stdout

    main, linked = tmp_path / "main", tmp_path / "linked"
    git("init", "-q", str(main), cwd=tmp_path)
    git("commit", "-q", "--allow-empty", "-m", "init", cwd=main)
    git("worktree", "add", "-q", str(linked), cwd=main)
    assert (linked / ".git").is_file()
    (main / ".git" / "info").mkdir(exist_ok=True)
    (main / ".git" / "info" / "attributes").write_text("*.dat filter=lfs\n")  # $GIT_COMMON_DIR/info/
    (main / ".git" / "info" / "exclude").write_text("*.tmp\n")
    git("config", "core.attributesFile", "~/lfs-attributes", cwd=main)
    (home / "lfs-attributes").write_text("*.ckpt filter=lfs\n")
    (home / ".config" / "git" / "ignore").write_text("*.log\n")  # core.excludesFile's default
    model = linked / "model"
    shutil.copytree(FIXTURES / "llama-safetensors", model)
    names = ["a.dat", "b.ckpt", "c.raw", "d.tmp", "e.log"]
    for name in names:
        with open(model / name, "wb") as handle:
            handle.truncate(11 * 1024 * 1024)  # sparse: its size is what git and the Hub see
    result = hfconv("validate", "--format", "json", "--select", "HFC039", str(model), env=env)
    assert result.returncode in (0, 1), result.stderr
    flagged = sorted(f["file"] for f in json.loads(result.stdout)["findings"])
    # git itself, in the linked worktree, on the same files
    paths = [f"model/{name}" for name in names]
    attrs = git("check-attr", "filter", "--", *paths, cwd=linked).splitlines()
    routed = {line.split(":")[0].removeprefix("model/") for line in attrs if line.endswith(": filter: lfs")}
    ignored = set(subprocess.run([GIT or "git", "check-ignore", *paths], cwd=linked, env=genv, capture_output=True,
                                 text=True).stdout.replace("model/", "").split())
    assert routed == {"a.dat", "b.ckpt"} and ignored == {"d.tmp", "e.log"}
    assert flagged == sorted(set(names) - routed - ignored) == ["c.raw"], result.stdout


# --- 6. on a terminal, bars stay on the terminal: never in an -o report ----------------------------

def test_bars_never_go_into_an_output_file_on_a_terminal(tmp_path: Path) -> None:
    import pty
    import select
    import shlex

    sharded = FIXTURES / "llama-safetensors-sharded"
    reports = {name: tmp_path / f"{name}.txt" for name in ("validate", "inspect")}
    hfconv_ = f"{shlex.quote(sys.executable)} -m hfconv"
    script = (f"{hfconv_} validate --deep {sharded} -o {reports['validate']}; "
              f"{hfconv_} inspect {sharded} -o {reports['inspect']}; test -t 1 && test -t 2 && echo on-a-terminal")
    main, child = pty.openpty()  # stdout and stderr on a terminal, as a person runs it
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", COLUMNS="100")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=child, stderr=child, env=env)
    os.close(child)
    chunks = []
    while select.select([main], [], [], 120)[0]:
        try:
            data = os.read(main, 65536)
        except OSError:  # the terminal closed
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    os.close(main)
    terminal = b"".join(chunks).decode("utf-8", "replace")
    assert "on-a-terminal" in terminal  # where inspect draws its shard bar (tests/test_html_reports.py)
    for name, report in reports.items():
        text = report.read_text(encoding="utf-8")
        assert str(sharded) in text and not set(text) & set("\u2588\u2593\u2591\r\x1b"), (name, text)
        assert "  shards  " not in text, text


# --- 7. the repository URL in the docs is a placeholder, and they say so ---------------------------------

def test_docs_say_the_repository_url_is_a_placeholder_to_replace() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("## In your pipeline", 1)[1].split("\n## ", 1)[0]
    hooks = (ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    action = (ROOT / "action.yml").read_text(encoding="utf-8")
    pre_commit, workflow = readme.split("<!-- pipeline:pre-commit -->")[0], readme.split("<!-- pipeline:action -->")[0]
    assert "`OWNER/hfconv` and `v0.1.0`\nare placeholders" in pre_commit and "git remote get-url origin" in pre_commit
    assert "`OWNER/hfconv@v0.1.0` is a\nplaceholder: replace it" in workflow
    assert "hfconv has none published" in hooks and "git remote get-url origin" in hooks
    assert "`uses: OWNER/hfconv@REV`, both placeholders" in action
    # No real-looking URL was invented: the only repository named is the placeholder.
    assert not {line for text in (readme, hooks, action) for line in text.splitlines()
                if "github.com/" in line and "github.com/OWNER/hfconv" not in line}
