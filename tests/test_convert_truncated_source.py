"""A source file cut while convert verifies (or gathers a strided view) is an HFC701, never SIGBUS.

Reading a file through a mapping past its (new) end kills the process with SIGBUS: no message, no
clean-up, the temporary folder left in DST's parent. The verification and the gather of strided
views read the source with ``pread`` instead. Each case converts in a subprocess and truncates the
source at a moment seen by a profile hook (a function about to run, nothing replaced).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from helpers import FIXTURES

_CONVERT_CUTTING = """
import json, os, sys, threading
import torch  # imported before the profile hook (which would slow its import down)
from hfconv.conversion import convert
from hfconv.conversion.errors import ConversionError
src, dst, victim, when = sys.argv[1:5]
cut = [False]
def profile(frame, event, arg):
    if event == "call" and not cut[0] and frame.f_code.co_name == when:
        cut[0] = True
        os.truncate(victim, 4096)
threading.setprofile(profile)
sys.setprofile(profile)
try:
    convert(src, dst)
    out = {"error": None}
except ConversionError as exc:
    out = {"error": exc.code, "findings": [[f.code, f.file, f.tensor, f.message] for f in exc.findings]}
sys.setprofile(None)
threading.setprofile(None)
left = sorted(os.listdir(os.path.dirname(dst)))
print(json.dumps({**out, "cut": cut[0], "left": left}))
"""


def _convert_cutting(tmp_path: Path, src: Path, victim: Path, when: str) -> dict:
    dst = tmp_path / "work" / "out"
    dst.parent.mkdir()
    proc = subprocess.run([sys.executable, "-c", _CONVERT_CUTTING, str(src), str(dst), str(victim), when],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != -signal.SIGBUS, f"convert was killed by SIGBUS reading a truncated file ({when})"
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["cut"], out
    assert out["left"] == [], out  # no DST, no temporary folder
    return out


def test_source_cut_before_verification_is_hfc701(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FIXTURES / "llama-safetensors" / "config.json", src / "config.json")
    save_file({"big.weight": np.arange(3 << 20, dtype=np.float32), "small.weight": np.ones(8, dtype=np.float32)},
              str(src / "model.safetensors"))
    # Written in full, then cut as the verification of the first tensor starts.
    out = _convert_cutting(tmp_path, src, src / "model.safetensors", "_compare_tensor")
    assert out["error"] == "HFC701", out
    [(code, file, tensor, message)] = out["findings"]
    assert (code, file, tensor) == ("HFC701", "model.safetensors", "big.weight"), out
    assert "reading model.safetensors failed: file ended" in message


def test_source_cut_while_a_strided_view_is_gathered_is_hfc701(tmp_path: Path) -> None:
    import torch

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FIXTURES / "llama-safetensors" / "config.json", src / "config.json")
    # A transposed view saved as is: torch.save keeps its storage and strides (convert gathers it).
    weight = torch.arange(1024 * 768, dtype=torch.float32).reshape(1024, 768).t()
    torch.save({"big.weight": weight, "small.weight": torch.ones(8)}, src / "pytorch_model.bin")
    out = _convert_cutting(tmp_path, src, src / "pytorch_model.bin", "gather")
    assert out["error"] == "HFC701", out
    # The view's span was read before the cut; the next tensor read from the file is the one named.
    [(code, file, tensor, message)] = out["findings"]
    assert (code, file, tensor) == ("HFC701", "pytorch_model.bin", "small.weight"), out
    assert "reading pytorch_model.bin failed: file ended" in message
