"""Library messages do not spell CLI flags (the CLI maps them to its flags).

Each case drives the library (``hfconv.convert`` / ``hfconv.load_test``) into a message that
names an option: the library names its keyword argument (``force=True``, ``max_memory``), never a
``--flag``; the same case through the CLI names the flag, as it always did.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hfconv.conversion import ConversionError, DestinationExistsError, convert
from hfconv.errors import UsageError
from hfconv.load import load_test

from helpers import FIXTURES, copy_fixture

FLAG = re.compile(r"(?<![\w-])--[a-z]")
NO_GPU_MAP = {f"cuda:{i}": 0 for i in range(torch.cuda.device_count())}
"""max_memory that keeps the GPUs out, so the cpu cases plan the same on a GPU machine."""
NO_GPU = [arg for device in NO_GPU_MAP for arg in ("--max-memory", f"{device}=0")]


def hfconv(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def no_flag(message: str) -> None:
    assert not FLAG.search(message), message


def messages(result) -> str:
    return "\n".join(f.message for f in result.findings)


def broken_config(tmp_path: Path) -> Path:
    """A real .bin folder whose config.json is cut short: an error convert's output inherits."""
    src = copy_fixture(tmp_path, "llama-bin")
    text = (src / "config.json").read_text()
    (src / "config.json").write_text(text[:-20])
    return src


# --- convert ------------------------------------------------------------------------------------

def test_destination_exists(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(DestinationExistsError) as err:
        convert(FIXTURES / "llama-bin", tmp_path / "out")
    no_flag(str(err.value))
    assert "force=True" in str(err.value)
    run = hfconv("convert", str(FIXTURES / "llama-bin"), str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert run.returncode == 2 and "or pass --force to replace it" in run.stderr, run.stderr


def test_force_only_replaces_a_folder(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file")
    with pytest.raises(UsageError) as err:
        convert(FIXTURES / "llama-bin", tmp_path / "out", force=True)
    no_flag(str(err.value))
    run = hfconv("convert", str(FIXTURES / "llama-bin"), str(tmp_path / "out"), "--force", "--quiet", cwd=tmp_path)
    assert run.returncode == 2 and "; --force only replaces a folder" in run.stderr, run.stderr


def test_manifest_folder_missing(tmp_path: Path) -> None:
    manifest = tmp_path / "nowhere" / "m.json"
    with pytest.raises(UsageError) as err:
        convert(FIXTURES / "llama-bin", tmp_path / "out", manifest=manifest)
    no_flag(str(err.value))
    run = hfconv("convert", str(FIXTURES / "llama-bin"), str(tmp_path / "out"), "--manifest", str(manifest),
                 "--quiet", cwd=tmp_path)
    assert run.returncode == 2 and f"the folder of --manifest {manifest} does not exist" in run.stderr, run.stderr


def test_invalid_output_refused_and_written_anyway(tmp_path: Path) -> None:
    src = broken_config(tmp_path)
    with pytest.raises(ConversionError) as err:
        convert(src, tmp_path / "out")
    assert err.value.code == "HFC713"
    no_flag(err.value.message)
    for f in err.value.findings:
        no_flag(f.message)
    written = convert(src, tmp_path / "anyway", allow_invalid_output=True)
    assert "HFC716" in [f.code for f in written.findings]
    no_flag(messages(written))

    run = hfconv("convert", str(src), str(tmp_path / "out2"), "--quiet", cwd=tmp_path)
    assert run.returncode == 1 and "or pass --allow-invalid-output to write it anyway" in run.stderr, run.stderr
    run = hfconv("convert", str(src), str(tmp_path / "out3"), "--quiet", "--format", "json", cwd=tmp_path)
    document = json.loads(run.stdout)
    assert "--allow-invalid-output to write it anyway" in document["error"]["message"]
    assert "--allow-invalid-output to write it anyway" in document["findings"][0]["message"]
    run = hfconv("convert", str(src), str(tmp_path / "out4"), "--allow-invalid-output", "--format", "json",
                 cwd=tmp_path)
    (invalid,) = [f for f in json.loads(run.stdout)["findings"] if f["code"] == "HFC716"]
    assert invalid["message"].endswith("(written anyway: --allow-invalid-output)"), invalid


# --- load-test ----------------------------------------------------------------------------------

def test_max_memory_names_a_missing_device(tmp_path: Path) -> None:
    result = load_test(FIXTURES / "llama-bin", max_memory={"cuda:99": "1GB"})
    assert result.codes() == ["HFC732"]
    no_flag(messages(result))
    run = hfconv("load-test", str(FIXTURES / "llama-bin"), "--max-memory", "cuda:99=1GB", "--format", "json",
                 cwd=tmp_path)
    assert json.loads(run.stdout)["findings"][0]["message"].startswith("--max-memory names cuda:99"), run.stdout


def test_balanced_does_not_fit(tmp_path: Path) -> None:
    result = load_test(FIXTURES / "llama-bin", device_map="balanced", max_memory={**NO_GPU_MAP, "cpu": "100KB"})
    assert result.codes() == ["HFC733"]
    no_flag(messages(result))
    run = hfconv("load-test", str(FIXTURES / "llama-bin"), "--device-map", "balanced", *NO_GPU,
                 "--max-memory", "cpu=100KB", cwd=tmp_path)
    assert "; use --device-map auto to offload to cpu and disk, or raise --max-memory" in run.stdout, run.stdout


@pytest.mark.parametrize(("limits", "cli_phrase"), [
    ({"cpu": "100KB", "disk": "0"}, "; raise --max-memory or allow disk"),
    ({"cpu": "30KB"}, "; raise its --max-memory"),
])
def test_auto_does_not_fit(tmp_path: Path, limits: dict, cli_phrase: str) -> None:
    result = load_test(FIXTURES / "llama-bin", max_memory={**NO_GPU_MAP, **limits}, offload_folder=tmp_path / "o")
    assert result.codes() == ["HFC733"]
    no_flag(messages(result))
    args = [arg for device, limit in limits.items() for arg in ("--max-memory", f"{device}={limit}")]
    run = hfconv("load-test", str(FIXTURES / "llama-bin"), *NO_GPU, *args, "--offload-folder", str(tmp_path / "o2"),
                 "--format", "json", cwd=tmp_path)
    assert json.loads(run.stdout)["findings"][0]["message"].endswith(cli_phrase), run.stdout


def test_loaded_despite_errors(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    generation = json.loads((folder / "generation_config.json").read_text())
    generation["top_p"] = 1.5
    (folder / "generation_config.json").write_text(json.dumps(generation))
    result = load_test(folder)
    assert "HFC744" in result.codes()
    no_flag(messages(result))
    run = hfconv("load-test", str(folder), cwd=tmp_path)
    assert "; --strict refuses them" in run.stdout, run.stdout


def test_forward_skipped(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    folder = copy_fixture(tmp_path, "llama-safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "nonesuch"
    (folder / "config.json").write_text(json.dumps(config))
    result = load_test(folder, forward=True)
    assert "HFC740" in result.codes()
    no_flag(messages(result))
    run = hfconv("load-test", str(folder), "--forward", "--format", "json", cwd=tmp_path)
    skipped = [f["message"] for f in json.loads(run.stdout)["findings"] if f["code"] == "HFC740"]
    assert skipped and skipped[0].startswith("--forward skipped: "), run.stdout


# --- the CLI's map: only the exact library phrase, at its place, of its code ----------------------

def test_flag_wording_touches_only_the_library_phrase() -> None:
    """The plan's header refusal (HFC704, a >100 MB header: too slow to build in a test) is mapped
    by the same table; a name from the folder that looks like a phrase is never rewritten."""
    from hfconv.cli._common import flag_wording

    refusal = "model.safetensors would need a header over 100 MB; use a smaller max_shard_size"
    assert flag_wording(refusal, "HFC704").endswith("; use a smaller --max-shard-size")
    assert flag_wording(refusal, "HFC713") == refusal  # another code: untouched
    named = "tensor 'x; use a smaller max_shard_size' is bad (HFC704)"
    assert flag_wording(named, "HFC704") == named  # the phrase mid-message comes from the folder
    assert flag_wording("max_memory names cuda:9 ...", "HFC732").startswith("--max-memory names cuda:9")


# --- validate: --reference and --trust-remote-code ------------------------------------------------

def custom_code_folder(tmp_path: Path, name: str, **config_changes) -> Path:
    """The llama family fixture (written by torch) with config.json changed."""
    folder = copy_fixture(tmp_path, "families/llama").rename(tmp_path / name)
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def validate_json(folder: Path, *args: str, cwd: Path, env: dict | None = None) -> dict[str, str]:
    """code -> message of ``hfconv validate FOLDER ARGS --format json``."""
    run = subprocess.run([sys.executable, "-m", "hfconv", "validate", str(folder), *args, "--format", "json"],
                         cwd=cwd, capture_output=True, text=True, timeout=300,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("HFCONV_")}, **(env or {})})
    assert run.returncode in (0, 1) and "Traceback" not in run.stderr, run.stderr
    return {f["code"]: f["message"] for f in json.loads(run.stdout)["findings"]}


def test_reference_rules_on_an_unknown_family(tmp_path: Path) -> None:
    """HFC606: the library names reference='rules', the CLI --reference rules."""
    from hfconv import validate

    folder = custom_code_folder(tmp_path, "unknown", model_type="nonesuch")
    [message] = [f.message for f in validate(folder, reference="rules").findings if f.code == "HFC606"]
    no_flag(message)
    assert " and reference='rules' was asked: only embedding sizes" in message, message
    cli = validate_json(folder, "--reference", "rules", cwd=tmp_path)["HFC606"]
    assert cli == message.replace("reference='rules'", "--reference rules"), cli


def test_trusted_custom_code_note(tmp_path: Path) -> None:
    """HFC807 with trust: the library names trust_remote_code=True, the CLI --trust-remote-code."""
    from hfconv import validate

    folder = custom_code_folder(tmp_path, "custom", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    (folder / "modeling_x.py").write_text("class XForCausalLM:\n    pass\n")
    report = validate(folder, trust_remote_code=True, reference="rules")
    [message] = [f.message for f in report.findings if f.code == "HFC807"]
    no_flag(message)
    assert message.endswith("time-limited subprocesses (trust_remote_code=True)"), message
    cli = validate_json(folder, "--trust-remote-code", "--reference", "rules", cwd=tmp_path)["HFC807"]
    assert cli.endswith("time-limited subprocesses (--trust-remote-code)"), cli


@pytest.mark.transformers
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_custom_code_without_trust(tmp_path: Path) -> None:
    """HFC609 when the folder's own code is not trusted: the flag mid-message, before the fallback
    (the library's wording, trust_remote_code=True, is asserted by
    tests/test_shapes.py::test_custom_code_is_not_imported_without_trust)."""
    folder = custom_code_folder(tmp_path, "untrusted", model_type="my_custom",
                                auto_map={"AutoConfig": "configuration_my.MyConfig"})
    (folder / "configuration_my.py").write_text("raise SystemExit('custom code ran')\n")
    cli = validate_json(folder, cwd=tmp_path)["HFC609"]
    assert cli.startswith("--reference auto: transformers ") and cli.endswith(
        " does not know model_type 'my_custom' and the folder's own code (auto_map) is only used with "
        "--trust-remote-code; only embedding sizes and the layer count were checked"), cli


@pytest.mark.transformers
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_trusted_reference_past_its_time_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HFC811 and HFC609 when trusted code runs past the time cap: both name the keyword in the
    library, the flag on the command line."""
    from hfconv import validate

    folder = custom_code_folder(tmp_path, "slow", model_type="slowllama", architectures=["SlowForCausalLM"],
                                auto_map={"AutoConfig": "configuration_slow.SlowConfig"})
    (folder / "configuration_slow.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("HFCONV_REMOTE_CODE_TIMEOUT", "1")
    report = validate(folder, trust_remote_code=True, reference="transformers")
    library = {f.code: f.message for f in report.findings}
    for code in ("HFC609", "HFC811"):
        no_flag(library[code])
        assert "importing the folder's own code (trust_remote_code=True) and building" in library[code]
    assert library["HFC609"].startswith("reference='transformers': importing the folder's own code")
    cli = validate_json(folder, "--trust-remote-code", "--reference", "transformers", cwd=tmp_path,
                        env={"HFCONV_REMOTE_CODE_TIMEOUT": "1"})
    assert cli["HFC811"] == "configuration_slow.py: importing the folder's own code (--trust-remote-code) and " \
        "building the reference model did not finish within 1 s (the time cap; the subprocess was stopped)"
    assert cli["HFC609"].startswith("--reference transformers: importing the folder's own code (--trust-remote-code) "
                                    "and building the reference model did not finish within 1 s"), cli["HFC609"]


def test_validate_flag_wording_touches_only_hfconv_text() -> None:
    """The validate phrases are rewritten only at their place: after the reference prefix, before
    the fixed fallback, at the end; text from the folder that looks like a phrase stays."""
    from hfconv.cli._common import flag_wording

    fallback = "; checked against hfconv's rule table instead"
    refused = ("reference='auto': transformers 5 refused the config: bad (the folder's own code, auto_map, is "
               "only used with trust_remote_code=True)" + fallback)
    assert flag_wording(refused, "HFC609") == refused.replace("reference='auto'", "--reference auto").replace(
        "trust_remote_code=True", "--trust-remote-code")
    named = "reference='auto': transformers 5 does not know model_type 'reference='auto': '" + fallback
    assert flag_wording(named, "HFC609") == "--reference auto" + named[len("reference='auto'"):]
    assert flag_wording(refused, "HFC606") == refused  # another code: untouched
