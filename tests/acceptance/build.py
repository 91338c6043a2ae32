"""The acceptance folders: every committed fixture folder, and broken copies of them.

Each case is a folder and the exact findings ``hfconv validate`` must report for it. The pristine
fixtures (``fixtures/llama-*``, ``fixtures/families/*``) are used in place; the broken ones are
copies made by the real libraries (torch.save, safetensors, json) with one defect each.

Run it by hand to look at the broken folders::

    python tests/acceptance/build.py OUT    # writes OUT/<case>/ for every broken case
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"

Codes = frozenset  # of (code, severity) pairs


def fixture_folders() -> list[str]:
    """Every committed fixture folder, relative to fixtures/ (``llama-bin``, ``families/gpt2``)."""
    names = [p.name for p in sorted(FIXTURES.glob("llama-*")) if p.is_dir()]
    names += [f"families/{p.name}" for p in sorted((FIXTURES / "families").iterdir()) if p.is_dir()]
    return names


PRISTINE: dict[str, Codes] = {
    # Every finding a committed fixture gets, infos included; a folder not named here gets none.
    "llama-legacy-bin": Codes({("HFC207", "info")}),       # pre-1.6 torch format
    "llama-tied-bin": Codes({("HFC206", "info")}),         # lm_head shares the embedding's storage
    "families/bert": Codes({("HFC610", "info")}),
    "families/gpt2": Codes({("HFC610", "info")}),
    "families/gpt_neox": Codes({("HFC610", "info")}),
}
NO_CARD = ("HFC030", "info")
"""save_pretrained writes no README.md, so every fixture also gets the no-model-card info."""
PRISTINE = {name: Codes({*PRISTINE.get(name, ()), NO_CARD}) for name in fixture_folders()}


@dataclass(frozen=True)
class Broken:
    """A copy of fixture ``source`` broken by ``make(folder, sentinel_dir)``; ``expected`` is the
    exact set of (code, severity) of its error and warning findings (infos are not compared)."""

    name: str
    source: str
    make: Callable[[Path, Path], None]
    expected: Codes


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _delete(name: str) -> Callable[[Path, Path], None]:
    return lambda folder, _: (folder / name).unlink()


def _truncate(name: str, keep: Callable[[int], int]) -> Callable[[Path, Path], None]:
    def make(folder: Path, _: Path) -> None:
        path = folder / name
        os.truncate(path, keep(path.stat().st_size))
    return make


def _index_wrong_shard(folder: Path, _: Path) -> None:
    # the embedding is in shard 1; the index says shard 3
    def edit(index: dict) -> None:
        index["weight_map"]["model.embed_tokens.weight"] = "model-00003-of-00003.safetensors"
    _edit_json(folder / "model.safetensors.index.json", edit)


def _index_missing_file(folder: Path, _: Path) -> None:
    def edit(index: dict) -> None:
        index["weight_map"]["model.norm.weight"] = "model-00004-of-00003.safetensors"
    _edit_json(folder / "model.safetensors.index.json", edit)


def _config(key: str, value: Callable[[object], object]) -> Callable[[Path, Path], None]:
    def make(folder: Path, _: Path) -> None:
        def edit(config: dict) -> None:
            config[key] = value(config[key])
        _edit_json(folder / "config.json", edit)
    return make


def _eos(token: str) -> Callable[[Path, Path], None]:
    def make(folder: Path, _: Path) -> None:
        _edit_json(folder / "tokenizer_config.json", lambda config: config.__setitem__("eos_token", token))
    return make


class _Payload:
    """Pickles as a call of os.system (global ``posix.system``): what a hostile checkpoint holds."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _hostile_pickle(folder: Path, sentinels: Path) -> None:
    import torch

    path = folder / "pytorch_model.bin"
    state = torch.load(path, weights_only=True)  # our own fixture
    state["model.extra"] = _Payload(sentinels / "pwned")
    torch.save(state, path)


def _drop_bin_tensor(folder: Path, _: Path) -> None:
    import torch

    path = folder / "pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    del state["model.layers.1.mlp.down_proj.weight"]
    torch.save(state, path)


def _wrong_shape_tensor(folder: Path, _: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    state = load_file(path)
    state["model.norm.weight"] = torch.ones(31)
    save_file(state, path, metadata={"format": "pt"})


E, W = "error", "warning"
BROKEN = [
    Broken("deleted-shard", "llama-safetensors-sharded", _delete("model-00002-of-00003.safetensors"),
           Codes({("HFC304", E)})),
    Broken("bin-deleted-shard", "llama-bin-sharded", _delete("pytorch_model-00003-of-00003.bin"),
           Codes({("HFC304", E)})),
    Broken("index-wrong-shard", "llama-safetensors-sharded", _index_wrong_shard, Codes({("HFC303", E)})),
    Broken("index-missing-file", "llama-safetensors-sharded", _index_missing_file,
           Codes({("HFC005", E), ("HFC304", E)})),
    Broken("truncated-safetensors", "llama-safetensors", _truncate("model.safetensors", lambda n: n - 100),
           Codes({("HFC110", E)})),
    Broken("truncated-bin", "llama-bin", _truncate("pytorch_model.bin", lambda n: n // 2), Codes({("HFC204", E)})),
    Broken("config-hidden-size", "llama-safetensors", _config("hidden_size", lambda h: 48), Codes({("HFC601", E)})),
    Broken("gpt2-n-embd", "families/gpt2", _config("n_embd", lambda n: 2 * n), Codes({("HFC601", E)})),
    Broken("wrong-shape-tensor", "llama-safetensors", _wrong_shape_tensor, Codes({("HFC601", E)})),
    Broken("missing-tensor", "llama-bin", _drop_bin_tensor, Codes({("HFC602", E)})),
    # an eos token the vocabulary lacks; special_tokens_map.json still says </s>
    Broken("eos-not-in-vocab", "llama-safetensors", _eos("<|im_end|>"), Codes({("HFC504", E), ("HFC515", W)})),
    # an eos token in the vocabulary, but not the one generation stops at
    Broken("eos-wrong-token", "llama-safetensors", _eos("<s>"),
           Codes({("HFC506", W), ("HFC513", W), ("HFC515", W)})),
    Broken("hostile-pickle", "llama-bin", _hostile_pickle, Codes({("HFC201", E)})),
]


def build(out: Path, sentinels: Path) -> dict[str, Path]:
    """Write every broken case under ``out``; the hostile payloads point into ``sentinels``."""
    folders = {}
    for case in BROKEN:
        folder = out / case.name
        shutil.copytree(FIXTURES / case.source, folder)
        case.make(folder, sentinels)
        folders[case.name] = folder
    return folders


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "acceptance-folders")
    target.mkdir(parents=True, exist_ok=True)
    (target / "_sentinels").mkdir(exist_ok=True)
    for path in build(target, target / "_sentinels").values():
        print(path)
