"""Everyday wording (issue 15, "Wording" and "Library"): what a new user reads when a folder is
empty, a FIFO, a dangling symlink, another framework's weights; inspect --tensors; the manifest
verdict; --help and README statements; the library's exports.

Every case runs the console entry point (or a fresh interpreter) in a subprocess, on copies of
the real fixtures (written by torch, safetensors and sentencepiece).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from helpers import FIXTURES, ROOT, copy_fixture

ENTRY = "from hfconv.cli import run; run()"


def hfconv(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1", COLUMNS="100")
    return subprocess.run([sys.executable, "-c", ENTRY, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def findings(*folders: Path) -> list[dict]:
    """The findings of one validate run over the folders (one run: each subprocess costs ~0.5 s)."""
    result = hfconv("validate", *map(str, folders), "--format", "json", timeout=60)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    reports = json.loads(result.stdout)
    return [f for report in (reports if isinstance(reports, list) else [reports]) for f in report["findings"]]


def findings_by_folder(*folders: Path) -> list[list[dict]]:
    result = hfconv("validate", *map(str, folders), "--format", "json", timeout=60)
    assert "Traceback" not in result.stderr
    reports = json.loads(result.stdout)
    return [report["findings"] for report in (reports if isinstance(reports, list) else [reports])]


# --- FIFOs ---------------------------------------------------------------------------------------

def test_fifo_given_as_path_is_not_a_folder(tmp_path: Path) -> None:
    fifo = tmp_path / "model"
    os.mkfifo(fifo)
    for command in ("validate", "inspect"):
        result = hfconv(command, str(fifo), timeout=30)
        assert result.returncode == 2, result
        assert "is not a folder (a FIFO)" in result.stderr and "is a file" not in result.stderr


def test_fifo_weight_file_gets_one_finding(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    hfc008 = [f for f in findings(folder) if f["code"] == "HFC008"]
    assert len(hfc008) == 1, hfc008
    assert hfc008[0]["file"] == "model.safetensors"
    assert hfc008[0]["message"].startswith("model.safetensors is a FIFO, not a regular file")


# --- dangling symlinks ---------------------------------------------------------------------------

def test_dangling_symlinks_are_called_dangling(tmp_path: Path) -> None:
    outside = copy_fixture(tmp_path, "llama-safetensors")
    for name in ("model.safetensors", "tokenizer_config.json"):
        (outside / name).unlink()
        (outside / name).symlink_to(tmp_path / "gone" / name)  # absolute, outside, missing
    (outside / "notes.txt").symlink_to("../gone/notes.txt")
    inside = copy_fixture(tmp_path / "inside", "llama-safetensors")
    (inside / "model.safetensors").unlink()
    (inside / "model.safetensors").symlink_to("model-renamed.safetensors")  # inside the folder, missing
    # a symlink that leaves the folder to a file that exists keeps its wording
    real = copy_fixture(tmp_path / "real", "llama-safetensors")
    (real / "notes.txt").symlink_to(FIXTURES / "llama-bin" / "config.json")
    of_outside, of_inside, of_real = findings_by_folder(outside, inside, real)
    found = {f["file"]: f["message"] for f in of_outside}
    for name in ("model.safetensors", "tokenizer_config.json", "notes.txt"):
        assert name in found, found
        assert "is a dangling symlink" in found[name] and "which does not exist" in found[name], found[name]
        assert "pointing outside" not in found[name]
    [weights] = [f for f in of_inside if f["file"] == "model.safetensors"]
    assert "model.safetensors is a dangling symlink (to 'model-renamed.safetensors'" in weights["message"]
    [link] = [f for f in of_real if f["file"] == "notes.txt"]
    assert "is a symlink pointing outside the model folder" in link["message"]


# --- folders without weights -----------------------------------------------------------------------

def test_folder_without_weights_prints_weights_none(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    tokenizer_only = tmp_path / "tokenizer-only"
    tokenizer_only.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (tokenizer_only / name).write_bytes((FIXTURES / "llama-safetensors" / name).read_bytes())
    for folder in (empty, tokenizer_only):
        result = hfconv("validate", str(folder))
        assert result.returncode == 1
        lines = result.stdout.splitlines()
        assert lines[1] == "  weights: none", lines
        assert "single file" not in result.stdout and "0 file(s)" not in result.stdout
    (tokenizer_only / "config.json").write_bytes((FIXTURES / "llama-safetensors" / "config.json").read_bytes())
    result = hfconv("inspect", str(tokenizer_only))
    assert "  weights: none\n" in result.stdout and "single file" not in result.stdout, result.stdout


def _write_gguf(path: Path) -> None:
    """A GGUF v3 file per the spec: magic, version, tensor count, one metadata pair."""
    key, value = b"general.architecture", b"llama"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
                     + struct.pack("<I", 8) + struct.pack("<Q", len(value)) + value)


OTHER_FORMATS = {
    # name -> bytes of a minimal file of that format (a name is what hfconv goes by)
    "tf_model.h5": b"\x89HDF\r\n\x1a\n" + bytes(504),  # the HDF5 signature of an empty superblock
    "flax_model.msgpack": b"\x80",  # msgpack of {}
    "model-q4_k_m.gguf": None,  # written by _write_gguf
    "onnx/model.onnx": b"\x08\x08",  # ModelProto{ir_version: 8}
}


def test_other_framework_weights_are_named(tmp_path: Path) -> None:
    cases = [("tf_model.h5", "TensorFlow"), ("flax_model.msgpack", "Flax"), ("model-q4_k_m.gguf", "GGUF"),
             ("onnx/model.onnx", "ONNX")]
    folders = []
    for i, (name, _) in enumerate(cases):
        folder = copy_fixture(tmp_path / str(i), "llama-safetensors")
        (folder / "model.safetensors").unlink()
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        if OTHER_FORMATS[name] is None:
            _write_gguf(path)
        else:
            path.write_bytes(OTHER_FORMATS[name])
        folders.append(folder)
    for (name, label), found in zip(cases, findings_by_folder(*folders)):
        [hfc001] = [f for f in found if f["code"] == "HFC001"]
        assert hfc001["message"].startswith(f"{name} ({label}) found: hfconv reads PyTorch and safetensors weights")
        assert hfc001["file"] == name


# --- colons --------------------------------------------------------------------------------------

def test_reader_refusals_read_as_sentences(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors")
    (folder / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 125000\n")
    result = hfconv("validate", str(folder))
    assert "HFC010 model.safetensors is a git-lfs pointer" in result.stdout, result.stdout
    assert "model.safetensors: is" not in result.stdout


# --- inspect --tensors -----------------------------------------------------------------------------

def test_inspect_lists_tensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    folder = FIXTURES / "llama-safetensors-sharded"
    expected = {}
    for shard in sorted(folder.glob("model-*.safetensors")):
        with safe_open(str(shard), "np") as handle:
            for name in handle.keys():
                array = handle.get_tensor(name)
                expected[name] = (list(array.shape), shard.name, array.nbytes)
    result = hfconv("inspect", str(folder), "--tensors", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["tensor_list"]
    assert {r["name"]: (r["shape"], r["shard"], r["bytes"]) for r in rows} == expected
    assert {r["dtype"] for r in rows} == {"F32"}
    text = hfconv("inspect", str(folder), "--tensors").stdout
    assert "  tensors (21 tensors of the weights loaders read):" in text
    assert any(line.split()[:3] == ["lm_head.weight", "[200,", "32]"] and "model-00003-of-00003.safetensors" in line
               and line.endswith("25,600") for line in text.splitlines()), text
    plain = hfconv("inspect", str(folder)).stdout
    assert "lm_head.weight" not in plain  # the table only with --tensors
    assert "--tensors" in hfconv("inspect", "--help").stdout


# --- validate --manifest -----------------------------------------------------------------------------

def test_manifest_match_is_said(tmp_path: Path) -> None:
    dst, manifest = tmp_path / "out", tmp_path / "manifest.json"
    from hfconv import convert

    convert(FIXTURES / "llama-bin", dst, manifest=manifest)  # the setup; what is tested goes through the CLI
    result = hfconv("validate", str(dst), "--manifest", str(manifest))
    assert result.returncode == 0 and "21 tensors match the manifest" in result.stdout, result.stdout
    data = json.loads(manifest.read_text())
    data["tensors"]["model.norm.weight"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    result = hfconv("validate", str(dst), "--manifest", str(manifest))
    assert result.returncode == 1 and "match the manifest" not in result.stdout
    result = hfconv("validate", str(dst), "--manifest", str(manifest), "--ignore", "HFC721")
    assert "match the manifest" not in result.stdout  # an ignored mismatch is still no match


# --- --help and README -------------------------------------------------------------------------------

def test_help_and_readme_explain_reference_auto_and_remote_code() -> None:
    help_text = " ".join(hfconv("validate", "--help").stdout.split())
    readme = " ".join((ROOT / "README.md").read_text().split())
    for text in (help_text, readme):
        assert "rule table first" in text and "generated from transformers" in text
        assert "architectures neither covers" in text
        assert "not a sandbox" in text and "user's rights" in text


# --- library -------------------------------------------------------------------------------------

def test_library_exports_and_missing_path(tmp_path: Path) -> None:
    program = (
        "import sys, hfconv\n"
        "names = dir(hfconv)\n"
        "print(all(n in names and n in hfconv.__all__ for n in ('validate', 'inspect', 'convert', 'load_test')))\n"
        "print('torch' in sys.modules)\n"
        "from hfconv.validation import UsageError\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        hfconv.validate(path)\n"
        "    except UsageError as exc:\n"
        "        print(exc)\n"
    )
    file = tmp_path / "config.json"
    file.write_text("{}")
    out = subprocess.run([sys.executable, "-c", program, str(tmp_path / "nonexistent"), str(file)],
                         capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert out[:2] == ["True", "False"], out
    assert out[2] == f"{tmp_path / 'nonexistent'} does not exist", out
    assert out[3].startswith(f"{file} is a file, not a folder"), out
    library = (ROOT / "README.md").read_text().split("### Library", 1)[1].split("\n## ", 1)[0]
    assert "convert" in library and "load_test" in library


# --- the convert failure page ------------------------------------------------------------------------

def test_convert_failure_banner_is_sentences(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "llama-safetensors-sharded")
    (folder / "model-00002-of-00003.safetensors").unlink()
    page = tmp_path / "convert.html"
    result = hfconv("convert", str(folder), str(tmp_path / "out"), "--format", "html", "-o", str(page))
    assert result.returncode == 1 and not (tmp_path / "out").exists()
    html = page.read_text()
    assert "would be lost. No DST was created." in html, html[:3000]
