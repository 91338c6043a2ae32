"""The transformers reference is built in a subprocess: trusted folder code out of hfconv's own
process (issue 16), bounded time and memory for configs with absurd sizes (issue 16), and config
refusals of transformers' own classes as errors (issue 17, point 6).

Every case runs the command line in a subprocess under a 2 GiB address-space cap and a timeout,
on folders written by transformers' own ``save_pretrained``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.transformers

AS_LIMIT = 2 * 2**30
SAVED = Path(__file__).resolve().parent.parent / "fixtures" / "saved"
_CLI = ("import sys, atexit\n"
        "atexit.register(lambda: sys.stderr.write('\\nTORCH-IMPORTED: %s\\n' % ('torch' in sys.modules)))\n"
        "from hfconv.cli import run\n"
        "run()\n")


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def hfconv(*args: str, cwd: Path, env: dict | None = None, timeout: float = 60) -> tuple[dict, int, float, str]:
    """(the JSON report, exit status, wall seconds, stderr) of ``hfconv validate ... --format json``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HFCONV_")}
    full_env.update(env or {})
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _CLI, "validate", *args, "--format", "json"], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout, preexec_fn=_cap)
    wall = time.monotonic() - start
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout), proc.returncode, wall, proc.stderr


def codes(report: dict) -> dict[str, dict]:
    return {f["code"]: f for f in report["findings"]}


@pytest.fixture(scope="module")
def saved() -> Path:
    """Tiny folders as save_pretrained writes them: llama, resnet, videomae, llava (committed, written
    by fixtures/make_saved_fixtures.py: no transformers import or model build in the test process)."""
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed; install hfconv[transformers] to compare with it")
    return SAVED


def copy_with(saved: Path, name: str, tmp_path: Path, change) -> Path:
    folder = tmp_path / name
    shutil.copytree(saved / name, folder)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


# --- trusted code out of its box ------------------------------------------------------------------
CONFIGURATION = """\
import json, os, sys, time
record = {"cwd": os.getcwd(), "offline": [os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE")],
          "in_hfconv": "hfconv.cli" in sys.modules}
with open("SENTINEL", "w") as handle:
    handle.write("written by the folder's code")
try:
    from huggingface_hub import hf_hub_download
    hf_hub_download("openai-community/gpt2", "config.json")
    record["download"] = "downloaded"
except Exception as exc:
    record["download"] = type(exc).__name__
with open(RECORD, "w") as handle:
    json.dump(record, handle)
time.sleep(SLEEP)

from transformers import LlamaConfig


class SlowConfig(LlamaConfig):
    model_type = "slowllama"
"""
MODELING = """\
from transformers import LlamaForCausalLM

from .configuration_slow import SlowConfig


class SlowForCausalLM(LlamaForCausalLM):
    config_class = SlowConfig
"""


def custom_folder(saved: Path, tmp_path: Path, sleep: float) -> tuple[Path, Path]:
    record = tmp_path / "record.json"
    folder = copy_with(saved, "llama", tmp_path, lambda c: c.update(
        model_type="slowllama", architectures=["SlowForCausalLM"],
        auto_map={"AutoConfig": "configuration_slow.SlowConfig",
                  "AutoModelForCausalLM": "modeling_slow.SlowForCausalLM"}))
    source = CONFIGURATION.replace("RECORD", repr(str(record))).replace("SLEEP", repr(sleep))
    (folder / "configuration_slow.py").write_text(source)
    (folder / "modeling_slow.py").write_text(MODELING)
    return folder, record


def test_trusted_code_that_hangs_at_import_is_stopped_at_the_time_cap(saved, tmp_path):
    """configuration_slow.py sleeps 120 s at import: hfconv stops it at HFCONV_REMOTE_CODE_TIMEOUT
    and says so (error HFC811 naming the file and the cap); it used to hang in hfconv's process."""
    folder, _record = custom_folder(saved, tmp_path, sleep=120)
    report, status, wall, _ = hfconv(str(folder), "--trust-remote-code", "--reference", "transformers",
                                     cwd=tmp_path, env={"HFCONV_REMOTE_CODE_TIMEOUT": "4"}, timeout=45)
    assert wall < 25, wall
    assert status == 1
    found = codes(report)["HFC811"]
    assert found["severity"] == "error" and found["file"] == "configuration_slow.py"
    assert "did not finish within 4 s (the time cap" in found["message"]
    assert "time cap" in codes(report)["HFC609"]["message"]


def test_trusted_code_runs_in_a_fresh_directory_offline(saved, tmp_path):
    """The folder's code runs in a subprocess: its cwd is a fresh temporary directory (removed
    after), the Hub is offline whatever the user's settings, and nothing lands in the user's cwd
    or Hub cache."""
    folder, record = custom_folder(saved, tmp_path, sleep=0)
    run = tmp_path / "run"
    run.mkdir()
    hub = tmp_path / "hub-home"
    report, status, wall, stderr = hfconv(
        str(folder), "--trust-remote-code", "--reference", "transformers", cwd=run,
        env={"HF_HOME": str(hub), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}, timeout=90)
    assert wall < 60, wall
    seen = json.loads(record.read_text())
    assert not (run / "SENTINEL").exists() and not (folder / "SENTINEL").exists()
    assert seen["cwd"] != str(run) and Path(seen["cwd"]).name.startswith("hfconv-reference-")
    assert Path(seen["cwd"]).parent == Path(tempfile.gettempdir())
    assert not Path(seen["cwd"]).exists()  # with the SENTINEL it held
    assert seen["offline"] == ["1", "1"] and not seen["in_hfconv"]
    assert "Offline" in seen["download"] or "NotFound" in seen["download"], seen["download"]
    assert not hub.exists() or not any(hub.rglob("*")), sorted(hub.rglob("*"))
    # The reference was built from the trusted code (no fallback) and the folder is fine.
    assert status == 0 and "HFC609" not in codes(report) and "HFC811" not in codes(report), report["findings"]
    assert "TORCH-IMPORTED: False" in stderr


# --- bounded time and memory ----------------------------------------------------------------------
@pytest.mark.parametrize("name,change,reference,message", [
    ("resnet", lambda c: c.update(depths=[10_000_000, 1]), "auto",
     "config.json depths sums to 10000001 layers; hfconv builds reference models with at most 1024"),
    ("llava", lambda c: c["vision_config"].update(num_hidden_layers=1_000_000), "transformers",
     "config.json vision_config.num_hidden_layers is 1000000; hfconv builds reference models with at most 1024"),
    ("videomae", lambda c: c.update(image_size=2048, num_frames=16, hidden_size=768), "auto",
     "config.json image_size is 2048 with patch_size 16: 131072 image positions; hfconv builds reference "
     "models with at most 65536"),
    ("resnet", lambda c: c.update(num_experts=10**9), "auto",
     "config.json num_experts is 1000000000; hfconv builds reference models with at most 65536"),
])
def test_absurd_sizes_are_refused_before_building(saved, tmp_path, name, change, reference, message):
    folder = copy_with(saved, name, tmp_path, change)
    report, _status, wall, stderr = hfconv(str(folder), "--reference", reference, cwd=tmp_path, timeout=40)
    assert wall < 10, wall
    found = codes(report)["HFC609"]
    assert message in found["message"] and found["file"] == "config.json"
    assert "TORCH-IMPORTED: False" in stderr


def test_reference_build_over_the_memory_cap_is_stopped(saved, tmp_path):
    """VideoMAE computes its sinusoid table in real memory at construction (in Python loops): a
    size under the pre-checks still meets the subprocess's address-space cap, named in the
    finding (the same folder with its own sizes builds under that cap)."""
    folder = copy_with(saved, "videomae", tmp_path, lambda c: c.update(image_size=384, hidden_size=3600))
    report, status, wall, _ = hfconv(str(folder), cwd=tmp_path, env={"HFCONV_REFERENCE_MEMORY_MB": "48"},
                                     timeout=60)
    assert wall < 30, wall
    assert "needed more than 48 MiB of memory beyond its imports (the memory cap" in codes(report)["HFC609"]["message"]


def test_reference_build_over_the_time_cap_is_stopped(saved, tmp_path):
    report, _status, wall, _ = hfconv(str(saved / "resnet"), cwd=tmp_path, env={"HFCONV_REFERENCE_TIMEOUT": "1"},
                                      timeout=60)
    assert wall < 15, wall
    assert "did not finish within 1 s (the time cap" in codes(report)["HFC609"]["message"]


# --- issue 17 point 6: what transformers' own classes refuse is an error ---------------------------
def test_model_class_refusal_is_an_error_naming_config_json(saved, tmp_path):
    """An unknown rope_type: LlamaConfig accepts it, LlamaForCausalLM raises KeyError, so
    from_pretrained fails: an error on config.json (it was an HFC609 info), and the command line
    still never imports torch itself."""
    folder = copy_with(saved, "llama", tmp_path, lambda c: c.update(
        rope_parameters={"rope_type": "no_such_rope", "rope_theta": 10000.0}))
    report, status, wall, stderr = hfconv(str(folder), "--reference", "transformers", cwd=tmp_path, timeout=90)
    assert status == 1 and wall < 60
    found = codes(report)["HFC611"]
    assert found["severity"] == "error" and found["file"] == "config.json"
    assert "LlamaForCausalLM" in found["message"] and "KeyError: 'no_such_rope'" in found["message"]
    assert "HFC609" not in codes(report)
    assert "TORCH-IMPORTED: False" in stderr
