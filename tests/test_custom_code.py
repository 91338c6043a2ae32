"""Custom code checks (HFC801..HFC810): auto_map by ast, the static scan, and --trust-remote-code."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import hfconv.checks.custom_code as custom_code
from hfconv.checks.custom_code import load_tokenizer_in_subprocess, scan_source
from hfconv.cli import main
from hfconv.findings import REGISTRY
from hfconv.validation import validate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GOOD = sorted(p.name for p in FIXTURES.glob("llama-*") if p.is_dir())
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def copy_fixture(tmp_path: Path, name: str = "llama-safetensors") -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def found(report, code: str) -> list:
    return [f for f in report.findings if f.code == code]


def write_tokenizer_json(folder: Path) -> None:
    """A loadable tokenizer.json over the fixture's SentencePiece pieces (see test_tokenizer_checks)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    (folder / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(["<unk>", "<s>", "</s>"])],
        "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }, ensure_ascii=False), encoding="utf-8")


def custom_tokenizer_folder(tmp_path: Path, body: str = "pass") -> tuple[Path, Path]:
    """A real fixture whose tokenizer is custom code that writes a sentinel file (its cwd) on import."""
    folder = copy_fixture(tmp_path)
    sentinel = tmp_path / "SENTINEL"
    write_tokenizer_json(folder)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(
        tokenizer_class="XTokenizer",
        auto_map={"AutoTokenizer": ["tokenization_x.XTokenizer", "tokenization_x.XTokenizer"]}))
    (folder / "tokenization_x.py").write_text(textwrap.dedent(f"""\
        import os
        with open({str(sentinel)!r}, "w") as handle:
            handle.write(os.getcwd())

        from transformers import PreTrainedTokenizerFast


        class XTokenizer(PreTrainedTokenizerFast):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                {body}
        """))
    return folder, sentinel


def test_codes_are_registered_with_docs():
    for number in range(801, 811):
        entry = REGISTRY[f"HFC{number}"]
        assert entry.title and entry.why and entry.fix and entry.example


@pytest.mark.parametrize("name", GOOD)
def test_good_fixtures_have_no_custom_code_findings(name):
    assert [f for f in validate(FIXTURES / name).findings if f.code.startswith("HFC8")] == []


# --- never imported without --trust-remote-code -------------------------------------------------
def test_sentinel_never_appears_without_trust_remote_code(tmp_path):
    folder, sentinel = custom_tokenizer_folder(tmp_path)
    report = validate(folder)
    result = CliRunner().invoke(main, ["validate", str(folder), "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not sentinel.exists()
    [note] = found(report, "HFC807")
    assert note.file == "tokenization_x.py" and "not imported" in note.message
    # The scan names the write outside the folder, with file and line.
    [scan] = found(report, "HFC804")
    assert scan.file == "tokenization_x.py" and scan.message.startswith("tokenization_x.py line 2: open(")
    assert found(report, "HFC805") == [] and found(report, "HFC806") == []


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed")
def test_trust_remote_code_imports_in_a_subprocess_with_temp_cwd(tmp_path):
    folder, sentinel = custom_tokenizer_folder(tmp_path)
    cwd_before = os.getcwd()
    report = validate(folder, trust_remote_code=True)
    assert sentinel.exists(), [f.message for f in report.findings]
    child_cwd = sentinel.read_text()
    assert child_cwd != cwd_before and Path(child_cwd).name.startswith("hfconv-trust-")
    assert Path(child_cwd).parent == Path(tempfile.gettempdir())
    assert not Path(child_cwd).exists()  # the temp dir is removed afterwards
    assert "tokenization_x" not in __import__("sys").modules
    assert [f.code for f in report.findings if f.code in ("HFC805", "HFC806", "HFC810")] == []


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed")
def test_trust_remote_code_failure_is_a_finding(tmp_path):
    folder, _sentinel = custom_tokenizer_folder(tmp_path, body="raise RuntimeError('tokenizer boom')")
    [hit] = found(validate(folder, trust_remote_code=True), "HFC805")
    assert hit.severity.value == "error" and "RuntimeError: tokenizer boom" in hit.message


def test_trust_remote_code_without_transformers_is_skipped(tmp_path, monkeypatch):
    folder, sentinel = custom_tokenizer_folder(tmp_path)
    child = custom_code._CHILD.replace("import transformers\n", "import transformers_not_installed_x\n")
    monkeypatch.setattr(custom_code, "_CHILD", child)
    [hit] = found(validate(folder, trust_remote_code=True), "HFC806")
    assert hit.severity.value == "info" and "not installed" in hit.message
    assert not sentinel.exists()


def test_subprocess_timeout_kills_the_child(tmp_path, monkeypatch):
    marker = tmp_path / "late"
    monkeypatch.setattr(custom_code, "_CHILD", f"import time; time.sleep(5); open({str(marker)!r}, 'w')")
    result = load_tokenizer_in_subprocess(str(tmp_path), timeout=0.5)
    assert result.status == "timeout"
    assert not marker.exists()


def test_timeout_becomes_a_finding(tmp_path, monkeypatch):
    folder, _sentinel = custom_tokenizer_folder(tmp_path)
    monkeypatch.setattr(custom_code, "_CHILD", "import time; time.sleep(5)")
    monkeypatch.setattr(custom_code, "TRUST_TIMEOUT_S", 0.5)
    [hit] = found(validate(folder, trust_remote_code=True), "HFC810")
    assert hit.severity.value == "error"


# --- auto_map -----------------------------------------------------------------------------------
def _with_auto_map(tmp_path: Path, auto_map: dict, files: dict[str, str]) -> Path:
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(auto_map=auto_map))
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def test_auto_map_file_missing(tmp_path):
    folder = _with_auto_map(tmp_path, {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}, {})
    [hit] = found(validate(folder), "HFC801")
    assert hit.file == "config.json" and "modeling_x.py is not in the folder" in hit.message


def test_auto_map_class_missing(tmp_path):
    folder = _with_auto_map(tmp_path, {"AutoConfig": "configuration_x.XConfig",
                                       "AutoModel": "modeling_x.XModel"}, {
        "configuration_x.py": "from transformers import PretrainedConfig\nclass XConfig(PretrainedConfig):\n    pass\n",
        "modeling_x.py": "import torch\nclass YModel(torch.nn.Module):\n    pass\n",
    })
    report = validate(folder)
    [hit] = found(report, "HFC802")
    assert "modeling_x.py defines no XModel" in hit.message
    assert {f.file for f in found(report, "HFC807")} == {"configuration_x.py", "modeling_x.py"}


def test_auto_map_class_bound_by_import_or_assignment_counts(tmp_path):
    folder = _with_auto_map(tmp_path, {"AutoConfig": "modeling_x.XConfig", "AutoModel": "modeling_x.XModel"}, {
        "modeling_x.py": """\
            try:
                from .configuration_x import XConfig
            except ImportError:
                XConfig = None
            class _Base:
                pass
            XModel = _Base
            """,
    })
    assert found(validate(folder), "HFC802") == []


@pytest.mark.parametrize("reference, code", [
    ("modeling.sub.XModel", "HFC808"),
    ("modeling.X-Model", "HFC808"),
    ("modeling-x.XModel", "HFC801"),
    ("XModel", "HFC808"),
    ("org/repo--modeling.XModel", "HFC809"),
])
def test_auto_map_reference_forms(tmp_path, reference, code):
    folder = _with_auto_map(tmp_path, {"AutoModel": reference}, {})
    [hit] = found(validate(folder), code)
    assert hit.file == "config.json" and reference in hit.message


def test_syntax_error_in_referenced_file_is_an_error(tmp_path):
    folder = _with_auto_map(tmp_path, {"AutoModel": "modeling_x.XModel"}, {
        "modeling_x.py": "class XModel(:\n    pass\n",
        "helper.py": "def f(:\n",
    })
    hits = {f.file: f for f in found(validate(folder), "HFC803")}
    assert hits["modeling_x.py"].severity.value == "error" and "line 1" in hits["modeling_x.py"].message
    assert hits["helper.py"].severity.value == "warning"


# --- static scan --------------------------------------------------------------------------------
def _scan(source: str) -> list[tuple[int, str]]:
    return [(u.line, u.what) for u in scan_source(ast.parse(textwrap.dedent(source)))]


def test_scan_names_risky_imports_and_calls():
    uses = _scan("""\
        import os
        import subprocess as sp
        from os import system
        import socket, requests
        os.system("rm -rf /")
        sp.run(["ls"])
        eval("1+1")
        exec("x = 1")
        __import__("os")
        os.execv("/bin/sh", [])
        from urllib.request import urlopen
        import importlib
        importlib.import_module("x")
        open("/etc/passwd")
        import shutil
        shutil.rmtree("/tmp/x")
        """)
    assert uses == [
        (2, "import subprocess"),
        (3, "from os import system"),
        (4, "import requests"),
        (4, "import socket"),
        (5, "os.system"),
        (6, "subprocess.run"),
        (7, "eval"),
        (8, "exec"),
        (9, "__import__"),
        (10, "os.execv"),
        (11, "from urllib.request import ..."),
        (13, "importlib.import_module"),
        (14, "open('/etc/passwd')"),
        (16, "shutil.rmtree"),
    ]


def test_scan_leaves_ordinary_model_code_alone():
    assert _scan("""\
        import os
        import math
        from shutil import copyfile
        from urllib.parse import urlparse
        import torch
        from transformers import PreTrainedModel
        from .configuration_x import XConfig

        VOCAB = os.path.join(os.path.dirname(__file__), "vocab.txt")

        def save_vocabulary(self, save_directory):
            copyfile(self.vocab_file, os.path.join(save_directory, "vocab.txt"))
            with open(os.path.join(save_directory, "merges.txt"), "w") as f:
                f.write("x")
            return torch.nn.functional.softmax(torch.zeros(2), dim=-1) * math.pi
        """) == []


def test_scan_findings_name_file_and_line(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "modeling_x.py").write_text("import torch\n\nimport subprocess\n")
    [hit] = found(validate(folder), "HFC804")
    assert hit.file == "modeling_x.py" and hit.severity.value == "warning"
    assert hit.message == ("modeling_x.py line 3: import subprocess (starts processes); review it before "
                           "trusting this code")
