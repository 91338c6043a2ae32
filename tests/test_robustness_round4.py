"""Hostile input and races, fourth round: ``fix``'s rename never replaces a name taken since the
plan nor links a symlink; ``validate --manifest`` reads tensors with ``pread`` (a file truncated
while hashed is a finding, not a SIGBUS); a single-group compressed-tensors ``ignore`` matched as
compressed-tensors matches it (``re:`` patterns too)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import CLI, FIXTURES
from helpers import run_cli as run

INDEX = "model.safetensors.index.json"


# --- 1. fix: a rename's link -------------------------------------------------------------------------

def _old_names(folder: Path) -> dict[str, str]:
    """The shards under old-style names (model-1-of-9), the index naming them; old -> Hub name."""
    renamed = {}
    for shard in sorted(folder.glob("model-*-of-00009.safetensors")):
        old = f"model-{int(shard.name.split('-')[1])}-of-9.safetensors"
        shard.rename(folder / old)
        renamed[old] = shard.name
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {t: f"model-{int(s.split('-')[1])}-of-9.safetensors" for t, s in index["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(index, indent=2))
    return renamed


@pytest.mark.parametrize("race", ["name taken", "source swapped for a symlink"])
def test_fix_rename_does_not_replace_a_name_taken_nor_link_a_symlink_since_the_plan(tmp_path: Path,
                                                                                     race: str) -> None:
    """``fix --unsafe-fixes`` links each old shard name to the Hub's name. Paused after the first link
    (HFCONV_FIX_PAUSE_AFTER, resumed by SIGUSR1), the folder changes under it: the Hub names not yet
    linked are taken by other files, or the old names not yet linked become symlinks to a file outside.
    The next link fails (HFC951, exit 1): nothing taken is overwritten, no symlink is linked."""
    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "saved" / "fix-llama", folder)
    renamed = _old_names(folder)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"a file outside the model folder")
    proc = subprocess.Popen([*CLI, "fix", str(folder), "--unsafe-fixes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HFCONV_FIX_PAUSE_AFTER": "1"})
    try:
        assert proc.stderr is not None and "paused after file operation 1 (linked" in proc.stderr.readline()
        pending = {old: new for old, new in renamed.items() if not (folder / new).exists()}
        assert len(pending) == 8
        for old, new in pending.items():
            if race == "name taken":
                (folder / new).write_bytes(b"taken since the plan")
            else:
                (folder / old).unlink()
                (folder / old).symlink_to(outside)
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1 and "Traceback" not in err, (proc.returncode, out, err)
    assert "HFC951" in out, out
    for old, new in pending.items():
        assert not (folder / new).is_symlink(), f"{new} is a link of the symlink {old}"
        if race == "name taken":
            assert (folder / new).read_bytes() == b"taken since the plan", f"{new} was overwritten"
        else:
            assert not (folder / new).exists()
    assert outside.read_bytes() == b"a file outside the model folder"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary left


def test_link_refuses_a_taken_name_and_a_symlink_source_in_process(tmp_path: Path) -> None:
    """FileOps.link itself, on real files: EEXIST is a failure (not the copy fallback's overwrite),
    a symlink source is refused even where the new name is free (``os.link`` would link the symlink)."""
    from hfconv.fixing.apply import FileOps, VerifyError
    from hfconv.tensors import FormatError

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(b"shard")
    (folder / "b.safetensors").write_bytes(b"taken")
    ops = FileOps(str(folder))
    with pytest.raises(VerifyError, match="appeared since"):
        ops.link("a.safetensors", "b.safetensors")
    assert (folder / "b.safetensors").read_bytes() == b"taken"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"outside")
    (folder / "c.safetensors").symlink_to(outside)
    with pytest.raises(FormatError, match="symlink"):
        ops.link("c.safetensors", "d.safetensors")
    assert not os.path.lexists(folder / "d.safetensors")
    ops.link("a.safetensors", "e.safetensors")  # the ordinary case: a hard link
    assert (folder / "e.safetensors").stat().st_ino == (folder / "a.safetensors").stat().st_ino
    ops.link("a.safetensors", "e.safetensors")  # linked already (a killed run): nothing to do


# --- 2. validate --manifest: tensors read with pread ---------------------------------------------

def _model_with_manifest(tmp_path: Path, big_elements: int) -> tuple[Path, Path]:
    """A safetensors folder written by safetensors (``big.weight`` of ``big_elements`` float32 and a
    small tensor after it) and a manifest of its tensors' digests."""
    import numpy as np
    from safetensors.numpy import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(FIXTURES / "llama-safetensors" / "config.json", folder / "config.json")
    tensors = {"big.weight": np.arange(big_elements, dtype=np.float32), "small.weight": np.ones(8, dtype=np.float32)}
    save_file(tensors, str(folder / "model.safetensors"))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": "hfconv-manifest/1", "tensors": {
        name: {"dtype": "F32", "shape": list(array.shape), "sha256": hashlib.sha256(array.tobytes()).hexdigest()}
        for name, array in tensors.items()}}))
    return folder, manifest


# Validates against the manifest in process, truncating the file once the hash of the big tensor has
# its first chunk (a C-level call observed with sys.setprofile, nothing replaced): the next chunk is
# then past the file's end, the truncation a download or a sync makes while validate runs.
_TRUNCATE_WHILE_HASHING = """
import json, os, sys
from hfconv import validate
folder, manifest, victim = sys.argv[1:4]
cut = [False]
def profile(frame, event, arg):
    if event == "c_call" and not cut[0] and getattr(arg, "__name__", "") == "update" and \\
            frame.f_code.co_name == "tensor_sha256":
        cut[0] = True
        os.truncate(victim, 4096)
sys.setprofile(profile)
report = validate(folder, manifest=manifest)
sys.setprofile(None)
print(json.dumps({"cut": cut[0], "matched": report.manifest_matched,
                  "findings": [[f.code, f.file, f.tensor, f.message] for f in report.findings]}))
"""


def test_manifest_hash_of_a_file_truncated_while_read_is_a_finding_not_sigbus(tmp_path: Path) -> None:
    folder, manifest = _model_with_manifest(tmp_path, 5 << 20)  # 20 MiB: more than one chunk (mapped: 16 MiB)
    proc = subprocess.run([sys.executable, "-c", _TRUNCATE_WHILE_HASHING, str(folder), str(manifest),
                           str(folder / "model.safetensors")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != -signal.SIGBUS, "validate --manifest was killed by SIGBUS reading a truncated file"
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["cut"] and not out["matched"]
    hits = {f[2]: f for f in out["findings"] if f[0] == "HFC721"}
    assert hits["big.weight"][1] == "model.safetensors", out
    assert "model.safetensors: reading 'big.weight' failed: file ended" in hits["big.weight"][3]
    assert "does not fit the file" in hits["small.weight"][3]  # its bytes are gone too


def test_manifest_of_a_file_whose_header_says_more_bytes_than_it_has(tmp_path: Path) -> None:
    """Cut before validate runs: the reader says so (HFC110, the file named) and the manifest's tensors
    are not in the weights (HFC722), each named; no tensor is read past the end."""
    folder, manifest = _model_with_manifest(tmp_path, 1 << 10)
    shard = folder / "model.safetensors"
    os.truncate(shard, shard.stat().st_size - 100)
    done = run("validate", str(folder), "--manifest", str(manifest), "--format", "json")
    assert done.returncode == 1, done.stdout + done.stderr
    found = {(f["code"], f.get("file"), f.get("tensor")) for f in json.loads(done.stdout)["findings"]}
    assert ("HFC110", "model.safetensors", "small.weight") in found, found
    assert {("HFC722", None, "big.weight"), ("HFC722", None, "small.weight")} <= found, found


# --- 3. convert: a cast reads its source with pread -------------------------------------------------

# Converts SRC to bfloat16 in process, truncating its shard when the first chunk of the big tensor is
# about to be cast (a C-level call observed with sys.setprofile / threading.setprofile, nothing
# replaced): the rest of the tensor is then past the file's end.
_TRUNCATE_WHILE_CASTING = """
import json, os, sys, threading
import torch  # imported before the profile hook (which would slow its import down)
from hfconv.conversion import convert
from hfconv.conversion.errors import ConversionError
src, dst, victim = sys.argv[1:4]
cut = [False]
def profile(frame, event, arg):
    if event == "c_call" and not cut[0] and getattr(arg, "__name__", "") == "copy_" and \\
            frame.f_code.co_name == "transformed_bytes":
        cut[0] = True
        os.truncate(victim, 4096)
threading.setprofile(profile)
sys.setprofile(profile)
try:
    convert(src, dst, dtype="bfloat16")
    out = {"error": None}
except ConversionError as exc:
    out = {"error": exc.code, "findings": [[f.code, f.file, f.tensor, f.message] for f in exc.findings]}
sys.setprofile(None)
print(json.dumps({**out, "cut": cut[0], "dst": os.path.exists(dst)}))
"""


def test_convert_cast_of_a_file_truncated_while_read_is_hfc701_not_sigbus(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FIXTURES / "llama-safetensors" / "config.json", src / "config.json")
    save_file({"big.weight": np.arange(3 * 32768, dtype=np.float32), "small.weight": np.ones(8, dtype=np.float32)},
              str(src / "model.safetensors"))  # big.weight: three steps of the cast
    dst = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _TRUNCATE_WHILE_CASTING, str(src), str(dst),
                           str(src / "model.safetensors")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != -signal.SIGBUS, "convert was killed by SIGBUS casting a truncated file"
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["cut"] and out["error"] == "HFC701" and not out["dst"], out
    [(code, file, tensor, message)] = out["findings"]
    assert (code, file, tensor) == ("HFC701", "model.safetensors", "big.weight"), out
    assert "reading model.safetensors failed: file ended" in message


# --- 4. compressed-tensors with one weight scheme: ``ignore`` matched as compressed-tensors does ----

def _ct_with_ignore(tmp_path: Path, name: str, ignore: list[str]) -> Path:
    """The committed compressed-tensors W8A8 folder (one config group, every Linear but lm_head
    quantized), its quantization_config's ignore list replaced."""
    folder = tmp_path / name
    shutil.copytree(FIXTURES / "quantized" / "llama-ct-w8a8", folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["ignore"] = ignore
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def test_single_group_compressed_tensors_ignore_matches_re_patterns(tmp_path: Path) -> None:
    """A ``re:`` ignore entry naming a module stored quantized: HFC623 (the multi-group path said so,
    the single-group one only matched plain names)."""
    folder = _ct_with_ignore(tmp_path, "re-ignore", ["lm_head", r"re:.*layers\.0\.mlp\.down_proj$"])
    done = run("validate", str(folder), "--format", "json")
    assert done.returncode == 1, done.stdout + done.stderr
    hits = [(f["file"], f["tensor"]) for f in json.loads(done.stdout)["findings"] if f["code"] == "HFC623"]
    assert hits == [("model.safetensors", "model.layers.0.mlp.down_proj.weight")], done.stdout


def test_single_group_compressed_tensors_ignore_good_and_hostile_entries(tmp_path: Path) -> None:
    """No false alarm: a pattern matching only the unquantized lm_head, a plain name compressed-tensors
    matches exactly (not as a suffix), and entries hfconv cannot match safely (a catastrophic pattern, an
    invalid one, a class name) are left out of the check rather than run or crashed on."""
    from hfconv import validate

    for name, ignore in [("lm-head-pattern", [r"re:.*lm_head$"]), ("suffix", ["lm_head", "down_proj"]),
                         ("hostile", ["lm_head", "re:(a+)+$", "re:[", "re:" + "a*" * 20, "Embedding"])]:
        folder = _ct_with_ignore(tmp_path, name, ignore)
        report = validate(folder)
        assert not [f for f in report.findings if f.severity.value != "info"], (name, report.findings)
