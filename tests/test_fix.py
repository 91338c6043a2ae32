"""``hfconv fix`` (issue 14) on real folders written by transformers: each fixable code broken on
purpose, fixed through the CLI, and the fixed folder loads in transformers with the original
tensors; ``--diff`` changes nothing; a process killed between two files leaves every file old or
new; hostile folders and symlinks are refused."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from hfconv import fix, validate

from helpers import CLI
from helpers import run_cli as run

INDEX = "model.safetensors.index.json"
TEMPLATE = "{% for m in messages %}{{ m['content'] }}<|im_end|>\n{% endfor %}"


SAVED = Path(__file__).resolve().parent.parent / "fixtures" / "saved" / "fix-llama"
"""A tiny Llama with a tokenizer and a chat template, saved by transformers in 9 shards
(``fixtures/make_saved_fixtures.py``: committed, so that no test here builds a model)."""


@pytest.fixture(scope="module")
def saved() -> Path:
    return SAVED


def test_saved_folder_validates_clean() -> None:
    """The folder every test here breaks and fixes starts clean (no error, no warning)."""
    report = validate(SAVED)
    assert not [f for f in report.findings if f.severity.value != "info"], report.findings
    config = json.loads((SAVED / "tokenizer_config.json").read_text())
    template = config.get("chat_template") or (SAVED / "chat_template.jinja").read_text()
    assert template == TEMPLATE


def fresh(saved: Path, tmp_path: Path, name: str = "model") -> Path:
    folder = tmp_path / name
    shutil.copytree(saved, folder)
    return folder


def codes(folder: Path) -> set[str]:
    return {f.code for f in validate(folder).findings}


def edit_json(path: Path, change, **dump) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, **({"indent": 2, "sort_keys": True} | dump)) + "\n")


_ORIGINAL: dict[Path, dict] = {}


def assert_loads_as_saved(folder: Path, saved: Path, transformers) -> None:
    """The fixed folder loads in transformers, every tensor equal to the one transformers saved."""
    import torch

    if saved not in _ORIGINAL:  # the model transformers saved, loaded once
        _ORIGINAL[saved] = transformers.LlamaForCausalLM.from_pretrained(saved).state_dict()
    original = _ORIGINAL[saved]
    fixed = transformers.LlamaForCausalLM.from_pretrained(folder).state_dict()
    assert sorted(original) == sorted(fixed)
    for name, tensor in original.items():
        assert torch.equal(tensor, fixed[name]), name


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mode) for p in sorted(folder.iterdir()) if p.is_file()}


def shard_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("model-*.safetensors"))


def drop_format(shard: Path) -> None:
    """Re-save a shard with safetensors, with __metadata__ but no "format" (HFC012)."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(shard), shard, metadata={"source": "an exporter"})


def break_safe(folder: Path) -> None:
    """Every safe fix's code at once: index (HFC301, HFC302, HFC303, HFC306), HFC012, HFC514,
    HFC507 and HFC401."""
    shards = shard_names(folder)

    def index(data: dict) -> None:
        weight_map = data["weight_map"]
        crowded = next(s for s in shards if list(weight_map.values()).count(s) > 1)
        moved = next(t for t, s in weight_map.items() if s == crowded)
        weight_map[moved] = next(s for s in shards if s != crowded)  # HFC303
        del weight_map["model.norm.weight"]  # HFC302
        weight_map["model.layers.9.ghost"] = shards[0]  # HFC301
        data["metadata"]["total_size"] = 12  # HFC306

    edit_json(folder / INDEX, index)
    drop_format(folder / shards[1])
    edit_json(folder / "config.json", lambda d: d.update(dtype="bfloat16"))
    edit_json(folder / "tokenizer_config.json", lambda d: d.update(tokenizer_file=None))
    generation = folder / "generation_config.json"
    duplicated = generation.read_text().replace('"use_cache": true', '"use_cache": true,\n  "pad_token_id": 0')
    generation.write_text(duplicated)


# --- safe fixes ------------------------------------------------------------------------------------
def test_every_safe_fix_repairs_a_folder_transformers_then_loads(saved: Path, tmp_path: Path, transformers) -> None:
    folder = fresh(saved, tmp_path)
    break_safe(folder)
    broken = codes(folder)
    assert {"HFC301", "HFC302", "HFC303", "HFC306", "HFC012", "HFC507", "HFC401"} <= broken, broken
    modes = {name: mode for name, (_data, mode) in snapshot(folder).items()}

    done = run("fix", str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    for code in ("HFC301", "HFC302", "HFC303", "HFC306", "HFC012", "HFC507", "HFC401", "HFC514"):
        assert code in done.stdout, (code, done.stdout)
    after = validate(folder)
    assert not [f for f in after.findings if f.severity.value != "info"], after.findings
    assert not {"HFC012", "HFC514", "HFC507", "HFC401"} & {f.code for f in after.findings}
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
    assert "tokenizer_file" not in json.loads((folder / "tokenizer_config.json").read_text())
    # The index is the one transformers wrote, byte for byte (its metadata kept, total_size recomputed).
    assert (folder / INDEX).read_bytes() == (saved / INDEX).read_bytes()
    assert {name: mode for name, (_d, mode) in snapshot(folder).items()} == modes  # modes kept (shards are 0600)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    assert_loads_as_saved(folder, saved, transformers)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 3
    assert fix(folder, dry_run=True).changes == ()  # nothing left to fix


def test_missing_index_and_metadata_are_written(saved: Path, tmp_path: Path, transformers) -> None:
    # Old -1-of-9 names without an index (HFC002): the index is written, naming them as they are.
    folder = fresh(saved, tmp_path)
    (folder / INDEX).unlink()
    for name in shard_names(folder):
        number = int(name.split("-")[1])
        (folder / name).rename(folder / f"model-{number}-of-9.safetensors")
    assert "HFC002" in codes(folder)
    done = run("fix", str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    index = json.loads((folder / INDEX).read_text())
    assert set(index["weight_map"].values()) == {f"model-{n}-of-9.safetensors" for n in range(1, 10)}
    assert index["metadata"]["total_size"] == json.loads((saved / INDEX).read_text())["metadata"]["total_size"]
    assert not [f for f in validate(folder).findings if f.severity.value != "info"]
    assert_loads_as_saved(folder, saved, transformers)

    # --unsafe-fixes renames them to the Hub's names; the index follows.
    done = run("fix", str(folder), "--unsafe-fixes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert shard_names(folder) == shard_names(saved)
    assert (folder / INDEX).read_text().count("-of-00009") == 21
    assert_loads_as_saved(folder, saved, transformers)

    # An index without "metadata" (HFC406) gets it back.
    folder = fresh(saved, tmp_path, "no-metadata")
    edit_json(folder / INDEX, lambda d: d.pop("metadata"))
    assert "HFC406" in codes(folder)
    assert fix(folder).exit_code == 0
    assert json.loads((folder / INDEX).read_text())["metadata"]["total_size"] == 23872
    assert "HFC406" not in codes(folder)

    # An index without "weight_map" (HFC307) beside a complete numbered set: regenerated from it.
    folder = fresh(saved, tmp_path, "no-weight-map")
    edit_json(folder / INDEX, lambda d: d.pop("weight_map"))
    assert "HFC307" in codes(folder)
    done = run("fix", str(folder))
    assert done.returncode == 0 and "HFC307" in done.stdout, done.stdout + done.stderr
    assert (folder / INDEX).read_bytes() == (saved / INDEX).read_bytes()
    assert_loads_as_saved(folder, saved, transformers)


def test_diff_prints_every_change_and_changes_nothing(saved: Path, tmp_path: Path) -> None:
    folder = fresh(saved, tmp_path)
    assert run("fix", str(folder), "--diff").returncode == 0  # nothing would change
    break_safe(folder)
    (folder / "trainer_state.json").write_text("{}")  # a training leftover: only with --unsafe-fixes
    before = snapshot(folder)
    done = run("fix", str(folder), "--diff", "--unsafe-fixes")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "--- a/config.json" in out and '-  "dtype": "bfloat16",' in out and '+  "dtype": "float32",' in out
    assert "--- a/tokenizer_config.json" in out and '-  "tokenizer_file": null' in out
    assert "--- a/model.safetensors.index.json" in out and '+    "model.norm.weight"' in out
    assert f"header {shard_names(folder)[1]}: " in out
    assert "delete trainer_state.json: " in out
    assert snapshot(folder) == before
    as_json = json.loads(run("fix", str(folder), "--diff", "--format", "json").stdout)
    assert as_json["applied"] is False and {c["file"] for c in as_json["changes"]} >= {"config.json", INDEX}
    assert snapshot(folder) == before


# --- unsafe fixes ----------------------------------------------------------------------------------
def test_unsafe_fixes_only_when_asked(saved: Path, tmp_path: Path, transformers) -> None:
    import torch

    folder = fresh(saved, tmp_path)
    shutil.copy(folder / shard_names(folder)[0], folder / "model-00001-of-00002.safetensors")  # stale (HFC007)
    torch.save({"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}, folder / "optimizer.pt")  # HFC011
    edit_json(folder / "generation_config.json", lambda d: d.update(bos_token_id=5, eos_token_id=2))  # HFC506, HFC513
    found = codes(folder)
    assert {"HFC007", "HFC011", "HFC506", "HFC513"} <= found, found

    done = run("fix", str(folder))
    assert done.returncode == 0, done.stdout + done.stderr  # warnings only
    assert done.stdout.count("(run with --unsafe-fixes)") >= 4, done.stdout
    assert {"HFC007", "HFC011", "HFC506", "HFC513"} <= codes(folder)

    done = run("fix", str(folder), "--unsafe-fixes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (folder / "optimizer.pt").exists() and not (folder / "model-00001-of-00002.safetensors").exists()
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["bos_token_id"] == 1 and generation["eos_token_id"] == [2, 3]
    assert not [f for f in validate(folder).findings if f.severity.value != "info"]
    assert_loads_as_saved(folder, saved, transformers)


# --- refusals --------------------------------------------------------------------------------------
class _Hostile:
    def __reduce__(self):  # what a malicious optimizer.pt holds
        return (os.system, ("echo owned",))


def test_refuses_hostile_pickle_and_symlinks(saved: Path, tmp_path: Path) -> None:
    folder = fresh(saved, tmp_path)
    edit_json(folder / "config.json", lambda d: d.update(dtype="bfloat16"))
    (folder / "optimizer.pt").write_bytes(pickle.dumps(_Hostile()))
    before = snapshot(folder)
    done = run("fix", str(folder), "--unsafe-fixes")
    assert done.returncode == 1 and "refused" in done.stdout and "HFC950" in done.stdout, done.stdout
    assert snapshot(folder) == before

    folder = fresh(saved, tmp_path, "linked")
    (folder / "config.json").rename(folder / "real-config.json")
    (folder / "config.json").symlink_to("real-config.json")
    edit_json(folder / "real-config.json", lambda d: d.update(dtype="bfloat16"))
    before = snapshot(folder)
    done = run("fix", str(folder))
    assert done.returncode == 1 and "symlink" in done.stdout, done.stdout
    assert (folder / "config.json").is_symlink() and snapshot(folder) == before

    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    folder = fresh(saved, tmp_path, "escaping")
    (folder / "special_tokens_map.json").symlink_to(outside)
    done = run("fix", str(folder))
    assert done.returncode == 1 and "HFC006" in done.stdout, done.stdout
    assert outside.read_text() == "{}"


# --- a crash between two files ---------------------------------------------------------------------
@pytest.mark.parametrize("pause_after", [2])
def test_killed_between_files_leaves_each_file_old_or_new(saved: Path, tmp_path: Path, pause_after: int) -> None:
    """SIGKILL after the Nth file replacement (HFCONV_FIX_PAUSE_AFTER, the library's test hook)."""
    broken = fresh(saved, tmp_path, "broken")
    edit_json(broken / "config.json", lambda d: d.update(dtype="bfloat16"))
    drop_format(broken / shard_names(broken)[1])
    edit_json(broken / INDEX, lambda d: d["metadata"].update(total_size=12))
    fixed = tmp_path / "fixed"
    shutil.copytree(broken, fixed)
    assert fix(fixed).exit_code == 0
    old, new = snapshot(broken), snapshot(fixed)
    changed = sorted(name for name in old if old[name][0] != new[name][0])
    assert len(changed) == 3, changed

    folder = tmp_path / "killed"
    shutil.copytree(broken, folder)
    proc = subprocess.Popen([*CLI, "fix", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HFCONV_FIX_PAUSE_AFTER": str(pause_after)})
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert "paused after file operation" in line, line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    now = {name: data for name, data in snapshot(folder).items() if not name.startswith(".")}
    assert sorted(now) == sorted(old)
    states = ["new" if now[name][0] == new[name][0] else "old" if now[name][0] == old[name][0] else "PARTIAL"
              for name in changed]
    assert states.count("new") == pause_after and "PARTIAL" not in states, states
    # Each file is one of the two states, so the folder validates as a mix of the two verdicts.
    assert codes(folder) <= codes(broken) | codes(fixed)
    (folder / ".config.json.hfconv-fix-k1ll3d.tmp").write_text('{"dtype": ')  # as a kill mid-write leaves it
    done = run("fix", str(folder))  # picks up where it stopped
    assert done.returncode == 0, done.stdout + done.stderr
    assert "removed .config.json.hfconv-fix-k1ll3d.tmp" in done.stdout
    assert snapshot(folder) == new


def test_a_write_that_fails_leaves_that_file_as_it_was(saved: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE below the shard's size: the header rewrite fails (EFBIG, HFC951), nothing is half written."""
    import resource

    folder = fresh(saved, tmp_path)
    shard = max(shard_names(folder), key=lambda n: (folder / n).stat().st_size)
    drop_format(folder / shard)
    edit_json(folder / "config.json", lambda d: d.update(dtype="bfloat16"))
    before = snapshot(folder)
    limit = (folder / shard).stat().st_size - 500
    assert limit > max(len(data) for name, (data, _mode) in before.items() if name.endswith(".json"))

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([*CLI, "fix", str(folder)], capture_output=True, text=True, timeout=120,
                          preexec_fn=small_files)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1 and "HFC951" in done.stdout and shard in done.stdout, done.stdout
    assert snapshot(folder) == before  # no temporary file left, the shard and the later config.json untouched


def old_names(saved: Path, folder: Path) -> None:
    """The shards under old-style names (-1-of-9), the index naming them."""
    for name in shard_names(folder):
        number = int(name.split("-")[1])
        (folder / name).rename(folder / f"model-{number}-of-9.safetensors")
    edit_json(folder / INDEX, lambda d: d.update(weight_map={
        t: f"model-{int(s.split('-')[1])}-of-9.safetensors" for t, s in d["weight_map"].items()}))


@pytest.mark.parametrize("pause_after", [4])
def test_killed_while_renaming_shards(saved: Path, tmp_path: Path, pause_after: int, transformers) -> None:
    """9 links, the index, 9 old names removed: killed after the 4th link (a rerun meets both names of
    four files), every tensor stays reachable through the index; the next run finishes the renames."""
    folder = fresh(saved, tmp_path)
    old_names(saved, folder)
    before = {p.name: p.read_bytes() for p in folder.glob("model-*-of-9.safetensors")}
    proc = subprocess.Popen([*CLI, "fix", str(folder), "--unsafe-fixes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HFCONV_FIX_PAUSE_AFTER": str(pause_after)})
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert "paused after file operation" in line, line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    index = json.loads((folder / INDEX).read_text())
    for tensor, shard in index["weight_map"].items():  # what the index names is there, whole
        assert (folder / shard).read_bytes() == before[f"model-{int(shard.split('-')[1])}-of-9.safetensors"], tensor
    assert not [f for f in validate(folder).findings if f.severity.value == "error"]
    done = run("fix", str(folder), "--unsafe-fixes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert shard_names(folder) == shard_names(saved) and not list(folder.glob("model-*-of-9.safetensors"))
    assert (folder / INDEX).read_bytes() == (saved / INDEX).read_bytes()
    assert_loads_as_saved(folder, saved, transformers)


def test_sigterm_between_files_exits_143_with_each_file_old_or_new(saved: Path, tmp_path: Path) -> None:
    folder = fresh(saved, tmp_path)
    edit_json(folder / "config.json", lambda d: d.update(dtype="bfloat16"))
    edit_json(folder / INDEX, lambda d: d["metadata"].update(total_size=12))
    before = snapshot(folder)
    proc = subprocess.Popen([*CLI, "fix", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HFCONV_FIX_PAUSE_AFTER": "1"})
    assert proc.stderr is not None and "paused after file operation 1" in proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err
    now = snapshot(folder)
    assert json.loads(now["config.json"][0])["dtype"] == "float32"  # the first file: new
    assert now[INDEX] == before[INDEX]  # the second: old
    assert sorted(now) == sorted(before)  # no temporary file left
