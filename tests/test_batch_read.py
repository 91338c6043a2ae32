"""Reading many weight files at once (hfconv.readers.batch): the half a forked child reads comes back
exactly as reading every file here would give it, broken files included, and a child that fails
changes nothing but the time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hfconv.readers import batch

pytestmark = pytest.mark.skipif(not batch._FORK, reason="the child is forked on Linux only")


def _folder(tmp_path: Path) -> list[Path]:
    """Twelve files written by safetensors, some of them then broken the ways folders break."""
    paths = []
    for i in range(12):
        path = tmp_path / f"model-{i + 1:05d}-of-00012.safetensors"
        tensors = {f"model.layers.{i}.mlp.experts.{e}.w": torch.full((2, 3), float(e)) for e in range(30)}
        save_file(tensors, str(path), metadata={"format": "pt"})
        paths.append(path)
    paths[3].write_bytes(paths[3].read_bytes()[:200])  # header cut short
    data = bytearray(paths[5].read_bytes())
    data[8] = ord("x")  # a header that is no longer JSON
    paths[5].write_bytes(bytes(data))
    paths[7].write_bytes(paths[7].read_bytes() + b"\0" * 16)  # trailing bytes
    torch.save({"w": torch.ones(2)}, paths[9])  # a torch checkpoint under a safetensors name
    paths[11].write_bytes(b"")
    return paths


# Run in a fresh single-threaded interpreter: a process with other threads (pytest-xdist's) never
# forks. Prints, as JSON: how many forks, and whether the child's reads equal the reads made here.
_PROGRAM = textwrap.dedent("""
    import json, os, sys
    import hfconv.readers.batch as batch
    from hfconv.tensors import FormatError

    forks = []
    os.register_at_fork(before=lambda: forks.append(1))
    if sys.argv[1] == "child fails":
        batch._encode = lambda result: 1 / 0  # raises in the child, which then sends nothing
    paths = sys.argv[2:]
    shared = {f"model.layers.{i}.mlp.experts.{e}.w": f"model.layers.{i}.mlp.experts.{e}.w"
              for i in range(12) for e in range(30)}
    both = batch.read_weight_files(paths, shared_names=shared, child=True)
    here = [batch.read_one(path, shared) for path in paths]

    def key(result):
        if isinstance(result, FormatError):
            return ["error", result.code, result.message, result.tensor]
        return ["file", result == result, repr(result)]

    same_names = all(name is shared[name] for result in both if not isinstance(result, FormatError)
                     for name in result.tensors)
    print(json.dumps({"forks": len(forks), "equal": [key(a) == key(b) for a, b in zip(both, here)],
                      "count": len(both), "errors": [key(r)[1] for r in both if isinstance(r, FormatError)],
                      "shared": same_names}))
""")


@pytest.mark.parametrize("mode", ["child reads", "child fails"])
def test_child_reads_as_this_process_would(tmp_path: Path, mode: str) -> None:
    paths = _folder(tmp_path)
    done = subprocess.run([sys.executable, "-c", _PROGRAM, mode, *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["forks"] == 1  # the child was started
    assert result["count"] == 12 and all(result["equal"])
    # The broken files are reported the same whichever process read them (3, 5, 7, 9 and 11 by the child).
    assert sorted(result["errors"]) == ["HFC101", "HFC102", "HFC104", "HFC111", "HFC202"]
    assert result["shared"]  # tensor names are the index's own strings, whichever process read them


def test_when_a_child_is_worth_it() -> None:
    """Every other safetensors file, for a folder that takes long enough to read; nothing for a
    small folder, for torch checkpoints, or while this process has other threads."""
    import threading

    many = [f"model-{i:05d}-of-00163.safetensors" for i in range(163)]
    if threading.active_count() == 1:  # (pytest-xdist's workers run threads)
        assert batch._child_share(many, 92_000) == list(range(1, 163, 2))
    assert batch._child_share(many[:3], 92_000) == []  # too few files
    assert batch._child_share(many[:8], 1_000) == []  # too little to read
    assert batch._child_share([p.replace(".safetensors", ".bin") for p in many], 92_000) == []
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert batch._child_share(many, 92_000) == []  # never fork a process with other threads
    finally:
        stop.set()
        other.join()
