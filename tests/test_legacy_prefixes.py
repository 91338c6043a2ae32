"""Checkpoints written before a prefix rename: transformers 4's CLIPTextModel and CLIPVisionModel
(every Stable Diffusion ``text_encoder/``, every IP-Adapter ``image_encoder/``) hold
``text_model.embeddings...`` / ``vision_model.embeddings...``; transformers 5's classes name their
tensors ``embeddings...`` and strip the old prefix at load (a ``PrefixChange``). The generated
tables record those prefixes (``strip``), so both namings validate from the table, with no
transformers import, and a broken tensor is still named as the folder names it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from hfconv.rules.compare import compare
from hfconv.rules.generated import generated_expected

from helpers import stored_shapes, stored_state

pytestmark = pytest.mark.transformers

# validate with transformers hidden from hfconv (find_spec says it is not installed): the table
# alone answers, as on a validate-only install.
_WITHOUT_TRANSFORMERS = """\
import importlib.util
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *rest: None if name == "transformers" else find_spec(name, *rest)
from hfconv.cli import run
run()
"""


@pytest.fixture(scope="module")
def written(transformers, tmp_path_factory) -> Path:
    """CLIP's text and vision encoders as transformers 5 writes them, and as transformers 4 did:
    every name under the old prefix, with the index buffer it saved (Stable Diffusion 1.5's text
    encoder holds text_model.embeddings.position_ids)."""
    import torch

    root = tmp_path_factory.mktemp("legacy")
    t = transformers
    t.CLIPTextModel(t.CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=99,
        max_position_embeddings=64, bos_token_id=0, eos_token_id=2, pad_token_id=1)).save_pretrained(root / "text")
    t.CLIPVisionModel(t.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
        patch_size=10)).save_pretrained(root / "vision")
    for part, prefix, buffer in (("text", "text_model.", "embeddings.position_ids"),
                                 ("vision", "vision_model.", "embeddings.position_ids")):
        state = stored_state(root / part)
        rows = state["embeddings.position_embedding.weight"].shape[0]
        old = {prefix + name: tensor for name, tensor in state.items()}
        old[prefix + buffer] = torch.arange(rows)[None]
        shutil.copytree(root / part, root / f"{part}-v4")
        save_file(old, str(root / f"{part}-v4" / "model.safetensors"), metadata={"format": "pt"})
    return root


def _validate(folder: Path, cwd: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_TRANSFORMERS, "validate", str(folder)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("part", ["text-v4", "vision-v4"])
def test_old_prefix_validates_from_the_table(written: Path, tmp_path: Path, part: str) -> None:
    status, out = _validate(written / part, tmp_path)
    assert status == 0 and "OK: 0 error(s), 0 warning(s)" in out, out
    assert "HFC606" not in out and "HFC602" not in out and "HFC603" not in out, out


@pytest.mark.parametrize("part, prefix", [("text", "text_model."), ("vision", "vision_model.")])
def test_both_namings_match_every_tensor(written: Path, part: str, prefix: str) -> None:
    config = json.loads((written / part / "config.json").read_text())
    expected = generated_expected(config)
    assert expected is not None and expected.strip_prefixes == (prefix,)
    tensors = len(stored_shapes(written / part))
    for folder in (written / part, written / f"{part}-v4"):
        result = compare(expected, stored_shapes(folder))
        assert not result.mismatched and not result.missing and not result.unexpected, (folder, result)
        assert result.matched == tensors, (folder, result)


def test_broken_old_named_copy_is_caught_and_named_as_stored(written: Path, tmp_path: Path) -> None:
    folder = tmp_path / "text-v4"
    shutil.copytree(written / "text-v4", folder)
    state = stored_state(folder)
    bad = "text_model.encoder.layers.1.mlp.fc1.weight"
    state[bad] = state[bad].T.contiguous()
    del state["text_model.final_layer_norm.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    result = compare(generated_expected(config), stored_shapes(folder))
    assert [m.name for m in result.mismatched] == [bad], result
    assert list(result.missing) == ["text_model.final_layer_norm.weight"], result
    status, out = _validate(folder, tmp_path)
    assert status == 1 and f"HFC601 {bad} has shape [32, 37]" in out, out
    assert "HFC602 text_model.final_layer_norm.weight [32] is missing" in out, out  # its shape found too


@pytest.mark.parametrize("part, old", [("text", "text_model.final_layer_norm.weight"),
                                       ("vision", "vision_model.post_layernorm.weight")])
def test_some_names_under_the_old_prefix_validate(written: Path, tmp_path: Path, part: str, old: str) -> None:
    """The loader strips the old prefix from each name that has it, whatever the others do: a folder
    whose names are mostly new, one under the old prefix, loads in full (transformers 5 says nothing)."""
    folder = tmp_path / part
    shutil.copytree(written / part, folder)
    state = stored_state(folder)
    state[old] = state.pop(old.partition(".")[2])
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    result = compare(generated_expected(config), stored_shapes(folder))
    assert result.clean and result.matched == len(state), result
    if part == "text":  # one CLI run: both parts take the same path
        status, out = _validate(folder, tmp_path)
        assert status == 0 and "OK: 0 error(s), 0 warning(s)" in out, out
