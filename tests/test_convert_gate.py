"""convert as a CI gate (issue 17 points 1, 2, 15, 16; issue 16's file flip): never exit 0 on a
broken output, never certify a corrupted source, fail in one line on a full disk, exit
130/143 on a signal, and never copy a file that turned into a symlink out of SRC.

Everything runs through the console script in a subprocess, on folders written by
transformers (and torch.save, as transformers 4.x wrote pytorch_model.bin), broken on
purpose; faults are real (RLIMIT_FSIZE, signals, an immutable or read-only folder, a
thread flipping a file).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from helpers import signal_while

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
LOST = "model.layers.1.post_attention_layernorm.weight"


def hfconv(*args: str, cwd: Path, preexec=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".hfconv-")]


def no_traceback(run: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-3000:]


@pytest.fixture(scope="module")
def saved() -> dict:
    """A tiny LlamaForCausalLM saved by save_pretrained (single file and 2 shards), and its state dict
    (committed, written by fixtures/make_saved_fixtures.py: no transformers import or model build here)."""
    from safetensors.torch import load_file

    base = FIXTURES / "saved"
    tensors = load_file(base / "gate-single" / "model.safetensors")
    order = json.loads((base / "gate-order.json").read_text())
    state = {name: tensors[name].clone() for name in order}  # the model's state_dict order
    return {"base": {"single": base / "gate-single", "sharded": base / "gate-sharded"}, "state": state}


def bin_folder(saved: dict, folder: Path, state: dict) -> Path:
    """save_pretrained's config files, weights as torch.save(state) in pytorch_model.bin."""
    shutil.copytree(saved["base"]["single"], folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin",
                                                                                     "*.index.json"))
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def shard_without(saved: dict, folder: Path, name: str) -> Path:
    """The sharded save, with ``name`` dropped from the shard holding it (the index still lists it)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(saved["base"]["sharded"], folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"][name]
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    return folder


# --- point 1: an output that fails validation is a failed conversion --------------------------

def _broken(saved: dict, tmp_path: Path, case: str) -> tuple[Path, str]:
    """A broken folder and the error code its output fails validation with."""
    state = dict(saved["state"])
    src = tmp_path / "src"
    if case == "lost-in-shard":
        return shard_without(saved, src, LOST), "HFC602"
    if case == "lm-head-missing-untied":
        del state["lm_head.weight"]
        return bin_folder(saved, src, state), "HFC602"
    if case.startswith("prefix-"):
        prefix = case.removeprefix("prefix-")
        return bin_folder(saved, src, {prefix + k: v for k, v in state.items()}), "HFC602"
    assert case == "config-not-json"
    bin_folder(saved, src, state)
    text = (src / "config.json").read_text()
    (src / "config.json").write_text(text[:-20])
    return src, "HFC401"


CASES = ["lost-in-shard", "lm-head-missing-untied", "prefix-module.", "prefix-_orig_mod.",
         "prefix-_fsdp_wrapped_module.", "config-not-json"]


@pytest.mark.parametrize("case", CASES)
def test_output_failing_validation_is_a_failed_conversion(saved, tmp_path, case):
    src, code = _broken(saved, tmp_path, case)
    run = hfconv("convert", str(src), str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 1, run.stdout + run.stderr
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
    first = run.stderr.splitlines()[0]
    assert first.startswith("conversion failed (HFC713): the output would fail validation") and \
        first.endswith("no DST was created."), first
    assert f"error   {code} " in run.stderr  # the errors are listed, as validate lists them
    if case != "lost-in-shard":
        return
    assert LOST in run.stderr
    report = hfconv("convert", str(src), str(tmp_path / "out"), "--quiet", "--format", "json", cwd=tmp_path)
    assert report.returncode == 1 and not (tmp_path / "out").exists()
    document = json.loads(report.stdout)
    assert document["ok"] is False and document["error"]["code"] == "HFC713"
    assert code in {f["code"] for f in document["findings"]}


def test_allow_invalid_output_writes_it_and_still_says_invalid(saved, tmp_path):
    src = shard_without(saved, tmp_path / "src", LOST)
    run = hfconv("convert", str(src), str(tmp_path / "out"), "--quiet", "--allow-invalid-output", cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 1, run.stdout + run.stderr
    assert (tmp_path / "out" / "config.json").exists() and not leftovers(tmp_path)
    assert "output INVALID" in run.stdout.splitlines()[0]
    assert "HFC602" in run.stdout and LOST in run.stdout
    json_run = hfconv("convert", str(src), str(tmp_path / "out2"), "--quiet", "--allow-invalid-output",
                      "--format", "json", cwd=tmp_path)
    assert json_run.returncode == 1
    document = json.loads(json_run.stdout)
    assert document["ok"] is False and document["output_valid"] is False
    assert [f["code"] for f in document["validation"]["findings"]] == ["HFC602"]
    assert "output INVALID" in json_run.stderr
    assert "--allow-invalid-output" in hfconv("convert", "--help", cwd=tmp_path).stdout


def test_repaired_index_is_a_valid_output(saved, tmp_path):
    """What convert repairs (the index, regenerated from the shards) is not an error of the output."""
    src = tmp_path / "src"
    shutil.copytree(saved["base"]["sharded"], src)
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"][LOST] = next(s for s in shards if s != index["weight_map"][LOST])  # the wrong shard
    index_path.write_text(json.dumps(index))
    run = hfconv("convert", str(src), str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verified  yes" in run.stdout
    assert hfconv("validate", str(tmp_path / "out"), cwd=tmp_path).returncode == 0


# --- point 2: a flipped bit in a .bin storage -------------------------------------------------

def flip_bit(path: Path, member_suffix: str = "/data/3", at: int = 5) -> None:
    """Flip one bit inside a storage's stored bytes (the zip directory keeps the old CRC-32)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + at] ^= 0x10
    path.write_bytes(bytes(data))


def test_flipped_bit_fails_verified_convert(saved, tmp_path):
    src = bin_folder(saved, tmp_path / "src", saved["state"])
    flip_bit(src / "pytorch_model.bin")
    run = hfconv("convert", str(src), str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    no_traceback(run)
    assert run.returncode == 1, run.stdout + run.stderr
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
    assert run.stderr.startswith("conversion failed (HFC704): the source is corrupted")
    assert "error   HFC901 pytorch_model.bin: storage data/3" in run.stderr and "CRC-32" in run.stderr

    unchecked = hfconv("convert", str(src), str(tmp_path / "raw"), "--quiet", "--no-verify", cwd=tmp_path)
    assert unchecked.returncode == 0
    assert "verified  no (--no-verify: nothing was checked" in unchecked.stdout


def test_crc_is_checked_for_partial_and_tied_storages(saved, tmp_path):
    """Storages viewed in part (a slice, a column) or by two names: each one's CRC-32 is checked."""
    state = dict(saved["state"])
    embed = state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"].clone()  # storage data/0
    state["lm_head.weight"] = embed  # untied config: written as a copy (HFC703)
    state["extra.half"], state["extra.column"] = embed[:64], embed[:, 1]  # unknown names: warnings only
    src = bin_folder(saved, tmp_path / "src", state)
    good = hfconv("convert", str(src), str(tmp_path / "good"), "--quiet", cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    flip_bit(src / "pytorch_model.bin", "/data/0", at=4 * 16 * 100 + 2)  # row 100: no slice views it
    bad = hfconv("convert", str(src), str(tmp_path / "bad"), "--quiet", cwd=tmp_path)
    assert bad.returncode == 1 and "HFC901" in bad.stderr, bad.stdout + bad.stderr
    assert not (tmp_path / "bad").exists()


# --- point 15: a full disk, a read-only parent --------------------------------------------------

def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so write() fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_size_limit_mid_write_is_one_line(saved, tmp_path):
    src = bin_folder(saved, tmp_path / "src", saved["state"])
    run = hfconv("convert", str(src), str(tmp_path / "out"), "--quiet", "--max-shard-size", "20KB",
                 cwd=tmp_path, preexec=_file_size_limit(12_000))
    no_traceback(run)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("conversion failed (HFC714): file too large"), lines[0]
    assert "writing model-0000" in lines[0] and "-of-0000" in lines[0] and lines[0].endswith("no DST was created.")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def _make_read_only(folder: Path) -> bool:
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return True
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True) if shutil.which("chattr") else None
    return bool(done and done.returncode == 0)


def test_read_only_dst_parent_is_one_line(saved, tmp_path):
    src = bin_folder(saved, tmp_path / "src", saved["state"])
    parent = tmp_path / "ro"
    parent.mkdir()
    if not _make_read_only(parent):
        pytest.skip("cannot make a folder read-only for root here (no chattr)")
    try:
        run = hfconv("convert", str(src), str(parent / "out"), "--quiet", cwd=tmp_path)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(parent)], capture_output=True)
        parent.chmod(0o755)
    no_traceback(run)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.startswith("conversion failed (HFC714): ") and "creating a temporary folder" in run.stderr
    assert list(parent.iterdir()) == []


# --- point 16: SIGINT / SIGTERM ------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_bin(tmp_path_factory) -> Path:
    """A 256 MB .bin folder (so that a conversion is still running when the signal comes)."""
    src = tmp_path_factory.mktemp("big") / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "hfconv-test"}))
    torch.save({f"w{i}": torch.ones(8 << 20, dtype=torch.float32) for i in range(8)}, src / "pytorch_model.bin")
    return src


def _writing(work: Path, before_index: bool = False) -> bool:
    """A temporary folder in ``work`` holds a shard (and, with ``before_index``, not the index yet:
    the shards are still being written, the rename into place is steps away)."""
    try:
        return any(p.name.startswith(".hfconv-") and any(p.iterdir())
                   and not (before_index and (p / "model.safetensors.index.json").exists()) for p in work.iterdir())
    except OSError:  # renamed or removed while we looked
        return False


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_convert_exits_130_143_and_leaves_nothing(big_bin, tmp_path, signum, code):
    for attempt in range(5):  # again only when this process was descheduled past the whole write
        work = tmp_path / f"work{attempt}"
        work.mkdir()
        process = subprocess.Popen([sys.executable, "-c", "from hfconv.cli import run; run()", "convert",
                                    str(big_bin), str(work / "out"), "--quiet", "--fsync", "--max-shard-size", "64MB"],
                                   cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 60
        while not _writing(work) and process.poll() is None:  # the temporary folder holds a shard
            assert time.monotonic() < deadline
            time.sleep(0.002)
        # Seen with the process stopped: shards still being written (the index comes after them).
        if process.poll() is None and signal_while(process, signum,
                                                   functools.partial(_writing, work, before_index=True)):
            break
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, (process.returncode, out, err)
        shutil.rmtree(work)
    else:
        raise AssertionError("the conversion was never caught writing its shards")
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, (process.returncode, out, err)
    assert err.strip().splitlines() == ["interrupted; no DST was created."], err
    assert list(work.iterdir()) == []


# --- issue 16: a file flipped between a regular file and a symlink to a secret --------------------

def test_file_flipped_to_a_symlink_never_copies_the_secret(saved, tmp_path):
    secret = b"TOP-SECRET-7f3a9c"
    (tmp_path / "secret.txt").write_bytes(secret)
    src = bin_folder(saved, tmp_path / "src", saved["state"])
    note = src / "note.txt"
    note.write_text("an ordinary note\n")
    stop = threading.Event()

    def flip() -> None:
        regular, link = src / ".note-regular", src / ".note-link"
        while not stop.is_set():
            regular.write_text("an ordinary note\n")
            os.replace(regular, note)
            os.symlink(tmp_path / "secret.txt", link)
            os.replace(link, note)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        outcomes = []
        for attempt in range(2):
            out = tmp_path / f"out{attempt}"
            run = hfconv("convert", str(src), str(out), "--quiet", cwd=tmp_path)
            no_traceback(run)
            outcomes.append(run.returncode)
            assert secret.decode() not in run.stdout + run.stderr
            if out.exists():
                for path in out.rglob("*"):
                    assert path.is_dir() or secret not in path.read_bytes(), path
            else:
                assert run.returncode == 1 and "(HFC715)" in run.stderr, run.stderr
        # the library itself, many times (a subprocess start is slower than the race)
        from hfconv import convert
        from hfconv.conversion import ConversionError

        for attempt in range(30):
            out = tmp_path / f"lib{attempt}"
            try:
                convert(src, out, verify=False)
            except ConversionError as exc:
                assert exc.code == "HFC715", exc.message
                continue
            for path in out.rglob("*"):
                assert path.is_dir() or secret not in path.read_bytes(), path
    finally:
        stop.set()
        flipper.join()
