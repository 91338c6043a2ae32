"""``hfconv validate`` of good folders imports only what it uses: not the other commands' modules,
not the standard-library modules of paths it does not take (a thread pool for one folder, temporary
folders and subprocesses for --trust-remote-code, hashes for SARIF, manifests and Hub-cache blobs),
not torch nor jinja2. Start-up is paid on every run, and on a CI job validating a folder it is a
large part of the time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from hfconv.cli import COMMANDS, main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

FORBIDDEN = (
    "torch", "jinja2",
    # the other commands, and what only they import
    "hfconv.cli.convert", "hfconv.cli.load_test", "hfconv.cli.fix", "hfconv.cli.diff", "hfconv.cli.inspect",
    "hfconv.cli.explain", "hfconv.conversion", "hfconv.load", "hfconv.fixing", "hfconv.comparison",
    "hfconv.render.html", "difflib",
    # one folder at a time is validated without a thread pool (concurrent.futures imports logging)
    "concurrent.futures", "logging", "queue",
    # subprocesses (--trust-remote-code, --reference transformers; a chat template's child is forked),
    # hashes (SARIF, --manifest, Hub-cache blobs), --deep and --manifest's byte reads, SARIF's URIs
    "subprocess", "hashlib", "hfconv.tensor_bytes", "mmap", "urllib.parse",
    # package data (the schemas, the generated tables) is read beside the modules: importlib.resources'
    # readers import these
    "importlib.resources", "zipfile", "tempfile", "shutil",
    # the checks of a folder's own code and of --deep's byte reads
    "hfconv.checks.custom_code", "hfconv.checks.deep",
)
WITH_CHAT_TEMPLATE = frozenset({"jinja2", "hashlib", "importlib.resources", "zipfile", "tempfile", "shutil"})
"""A folder with a chat template checks it with jinja2 (imported before its child is forked), and
jinja2 imports hashlib; its tokenizer.model is read with sentencepiece, which imports
importlib.resources."""

# Runs `hfconv validate` in this process (click's entry point, not a new interpreter) on each
# folder given in turn, and after each names the forbidden modules imported so far: those not
# already there before hfconv was imported (an editable install's path hook imports urllib.parse
# at start-up, for one).
_PROGRAM = """
import json, sys
before = set(sys.modules)
from hfconv.cli import main
for folder in sys.argv[1:]:
    try:
        main.main(args=["validate", folder], prog_name="hfconv", standalone_mode=False)
        code = 0
    except SystemExit as exc:
        code = exc.code
    print(json.dumps({"code": code, "imported": [m for m in %r if m in sys.modules and m not in before]}))
"""


def test_validate_imports_only_what_it_uses() -> None:
    """A sharded safetensors folder with no tokenizer, then a sharded .bin folder with a
    SentencePiece tokenizer and a chat template (both good: exit 0)."""
    folders = [FIXTURES / "saved" / "gate-sharded", FIXTURES / "llama-bin-sharded"]
    done = subprocess.run([sys.executable, "-c", _PROGRAM % (FORBIDDEN,), *map(str, folders)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plain, templated = (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))
    assert plain == {"code": 0, "imported": []}, plain
    assert templated["code"] == 0 and set(templated["imported"]) <= WITH_CHAT_TEMPLATE, templated


def test_help_lists_every_command_with_its_short_help() -> None:
    """The subcommands' modules load when a command is looked up; --help looks every one up."""
    output = CliRunner().invoke(main, ["--help"]).output
    commands = output.split("Commands:", 1)[1].splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in commands if line.strip()}
    assert sorted(listed) == sorted(COMMANDS)
    assert listed["validate"].startswith("Check that model folders will load")
    assert listed["load-test"].startswith("Load every tensor")
    assert all(listed.values())
