"""The committed fixtures under fixtures/ are real Hugging Face model folders.

Everything here uses the real libraries only (torch, safetensors,
sentencepiece, jinja2) and never hfconv, so a bug in hfconv cannot hide a bad
fixture.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SCRIPT = FIXTURES / "make_fixtures.py"

FOLDERS = {
    # name: (weight format, sharded, tied, dtype)
    "llama-safetensors": ("safetensors", False, False, torch.float32),
    "llama-safetensors-sharded": ("safetensors", True, False, torch.float32),
    "llama-bin": ("bin", False, False, torch.float32),
    "llama-bin-sharded": ("bin", True, False, torch.float32),
    "llama-bin-oldnames": ("bin", True, False, torch.float32),
    "llama-tied-bin": ("bin", False, True, torch.float32),
    "llama-tied-safetensors": ("safetensors", False, True, torch.float32),
    "llama-bf16-safetensors": ("safetensors", False, False, torch.bfloat16),
    "llama-legacy-bin": ("bin", False, False, torch.float32),
}
COMMON_FILES = {
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
}
MAX_SHARD_SIZE = 50_000  # "50KB" as huggingface_hub parses it
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    nq, nkv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (nq, h),
            p + "self_attn.k_proj.weight": (nkv, h),
            p + "self_attn.v_proj.weight": (nkv, h),
            p + "self_attn.o_proj.weight": (h, nq),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        })
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder, read with safetensors / torch.load(weights_only=True)."""
    out: dict[str, torch.Tensor] = {}
    for f in weight_files(folder):
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt") as sf:
                part = {k: sf.get_tensor(k) for k in sf.keys()}
        else:
            part = torch.load(f, weights_only=True, map_location="cpu")
        assert not set(part) & set(out), f"{f.name} repeats tensors"
        out.update(part)
    return out


@pytest.fixture(scope="module")
def sp_model() -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(FIXTURES / "_src" / "tokenizer.model"))


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_folder(FIXTURES / "llama-safetensors")


# ------------------------------------------------------------------ structure
@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_folder_is_complete(name):
    folder = FIXTURES / name
    files = {p.name for p in folder.iterdir()}
    assert COMMON_FILES <= files
    assert (folder / "tokenizer.model").read_bytes() == (FIXTURES / "_src" / "tokenizer.model").read_bytes()
    fmt, sharded, _, _ = FOLDERS[name]
    weights = [p.name for p in weight_files(folder)]
    if fmt == "safetensors":
        assert weights == (["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                            "model-00003-of-00003.safetensors"] if sharded else ["model.safetensors"])
        assert ("model.safetensors.index.json" in files) == sharded
    elif name == "llama-bin-oldnames":
        assert weights == ["pytorch_model-1-of-3.bin", "pytorch_model-2-of-3.bin", "pytorch_model-3-of-3.bin"]
        assert "pytorch_model.bin.index.json" in files
    else:
        assert weights == ([f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)]
                           if sharded else ["pytorch_model.bin"])
        assert ("pytorch_model.bin.index.json" in files) == sharded


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_json_written_like_transformers(name):
    folder = FIXTURES / name
    for p in folder.glob("*.json"):
        text = p.read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n", p

    cfg = _json(folder / "config.json")
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["tie_word_embeddings"] is FOLDERS[name][2]
    assert DTYPES[cfg["torch_dtype"]] is FOLDERS[name][3]
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # GQA
    assert cfg["head_dim"] * cfg["num_attention_heads"] == cfg["hidden_size"]
    assert _json(folder / "generation_config.json") == {
        "_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
        "transformers_version": cfg["transformers_version"],
    }
    tok = _json(folder / "tokenizer_config.json")
    assert tok["tokenizer_class"] == "LlamaTokenizer"
    assert (tok["bos_token"], tok["eos_token"], tok["unk_token"], tok["pad_token"]) == ("<s>", "</s>", "<unk>", None)
    assert {k: v["content"] for k, v in tok["added_tokens_decoder"].items()} == {"0": "<unk>", "1": "<s>", "2": "</s>"}
    assert all(v["special"] and not v["normalized"] for v in tok["added_tokens_decoder"].values())
    stm = _json(folder / "special_tokens_map.json")
    assert {k: v["content"] for k, v in stm.items()} == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    assert all("special" not in v for v in stm.values())


def test_chat_template_renders():
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    tok = _json(FIXTURES / "llama-safetensors" / "tokenizer_config.json")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(jinja2.TemplateError(msg))
    text = env.from_string(tok["chat_template"]).render(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ],
        bos_token=tok["bos_token"], eos_token=tok["eos_token"],
    )
    assert text == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]"


# ------------------------------------------------------------------ tokenizer
def test_sentencepiece_model(sp_model):
    cfg = _json(FIXTURES / "llama-safetensors" / "config.json")
    assert sp_model.get_piece_size() == cfg["vocab_size"]
    assert (sp_model.unk_id(), sp_model.bos_id(), sp_model.eos_id(), sp_model.pad_id()) == (0, 1, 2, -1)
    assert [sp_model.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    text = "The model weights are in a shard file."
    ids = sp_model.encode(text)
    assert 0 not in ids and sp_model.decode(ids) == text


# -------------------------------------------------------------------- weights
@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_weights_have_llama_names_shapes_dtypes(name, reference):
    fmt, _, tied, dtype = FOLDERS[name]
    folder = FIXTURES / name
    cfg = _json(folder / "config.json")
    shapes = expected_shapes(cfg)
    if tied and fmt == "safetensors":
        del shapes["lm_head.weight"]  # save_pretrained drops the tied head
    tensors = load_folder(folder)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == shapes
    assert {v.dtype for v in tensors.values()} == {dtype}
    # Every folder holds the same seeded weights.
    for k, v in tensors.items():
        ref = reference["model.embed_tokens.weight"] if (tied and k == "lm_head.weight") else reference[k]
        assert torch.equal(v, ref.to(dtype)), k
    if tied:
        assert torch.equal(tensors["model.embed_tokens.weight"], reference["model.embed_tokens.weight"])


@pytest.mark.parametrize("name", [n for n, v in FOLDERS.items() if v[1]])
def test_index_matches_shards(name):
    folder = FIXTURES / name
    fmt = FOLDERS[name][0]
    index_path = folder / ("model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json")
    index = _json(index_path)
    assert set(index) == {"metadata", "weight_map"}
    weight_map = index["weight_map"]
    assert list(weight_map) == sorted(weight_map)
    assert set(weight_map.values()) == {p.name for p in weight_files(folder)}

    shard_contents: dict[str, dict[str, torch.Tensor]] = {}
    for shard in sorted(set(weight_map.values())):
        path = folder / shard
        if fmt == "safetensors":
            with safe_open(str(path), framework="pt") as sf:
                assert sf.metadata() == {"format": "pt"}
                shard_contents[shard] = {k: sf.get_tensor(k) for k in sf.keys()}
        else:
            assert zipfile.is_zipfile(path)
            shard_contents[shard] = torch.load(path, weights_only=True, map_location="cpu")
    for tensor_name, shard in weight_map.items():
        assert tensor_name in shard_contents[shard], (tensor_name, shard)
    all_names = [k for c in shard_contents.values() for k in c]
    assert sorted(all_names) == sorted(weight_map)
    total = sum(t.numel() * t.element_size() for c in shard_contents.values() for t in c.values())
    assert index["metadata"] == {"total_size": total}

    # huggingface_hub's greedy rule: tensors in state-dict order, a new shard
    # starts only when the next tensor would not fit.
    cfg = _json(folder / "config.json")
    order = list(expected_shapes(cfg))
    shards = sorted(shard_contents, key=lambda s: [int(x) for x in re.findall(r"\d+", s)])
    flat = [k for s in shards for k in order if k in shard_contents[s]]
    assert flat == order
    sizes = [sum(t.numel() * t.element_size() for t in shard_contents[s].values()) for s in shards]
    assert all(sz <= MAX_SHARD_SIZE for sz in sizes)
    for nxt, sz in zip(shards[1:], sizes):
        first_next = next(k for k in order if k in shard_contents[nxt])
        t = shard_contents[nxt][first_next]
        assert sz + t.numel() * t.element_size() > MAX_SHARD_SIZE


def test_single_safetensors_metadata():
    for name, (fmt, sharded, _, _) in FOLDERS.items():
        if fmt == "safetensors" and not sharded:
            with safe_open(str(FIXTURES / name / "model.safetensors"), framework="pt") as sf:
                assert sf.metadata() == {"format": "pt"}


def test_tied_bin_shares_storage():
    sd = torch.load(FIXTURES / "llama-tied-bin" / "pytorch_model.bin", weights_only=True)
    emb, head = sd["model.embed_tokens.weight"], sd["lm_head.weight"]
    assert emb.untyped_storage().data_ptr() == head.untyped_storage().data_ptr()
    with zipfile.ZipFile(FIXTURES / "llama-tied-bin" / "pytorch_model.bin") as zf:
        storages = [n for n in zf.namelist() if re.search(r"/data/\d+$", n)]
    assert len(storages) == len(sd) - 1  # one storage serves both names


def test_untied_bin_does_not_share_storage():
    sd = torch.load(FIXTURES / "llama-bin" / "pytorch_model.bin", weights_only=True)
    ptrs = [t.untyped_storage().data_ptr() for t in sd.values()]
    assert len(set(ptrs)) == len(ptrs)


def test_legacy_bin_is_not_zip():
    path = FIXTURES / "llama-legacy-bin" / "pytorch_model.bin"
    assert not zipfile.is_zipfile(path)
    assert zipfile.is_zipfile(FIXTURES / "llama-bin" / "pytorch_model.bin")
    # legacy torch.save starts with a pickled magic number (protocol 2)
    assert path.read_bytes()[:2] == b"\x80\x02"


# ---------------------------------------------------------------- determinism
def test_rebuild_is_deterministic(tmp_path, sp_model):
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=120)
    for name in ["_src", *FOLDERS]:
        fresh_files = sorted(p.name for p in (tmp_path / name).iterdir())
        committed_files = sorted(p.name for p in (FIXTURES / name).iterdir())
        assert fresh_files == committed_files, name
        for fname in fresh_files:
            fresh, committed = tmp_path / name / fname, FIXTURES / name / fname
            if fname.endswith(".json"):
                assert fresh.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8"), (name, fname)
            elif fname.endswith(".safetensors"):
                assert fresh.read_bytes() == committed.read_bytes(), (name, fname)
            elif fname.endswith(".bin"):
                a = torch.load(fresh, weights_only=True)
                b = torch.load(committed, weights_only=True)
                assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), (name, fname)
            elif fname == "tokenizer.model":
                sp = spm.SentencePieceProcessor(model_file=str(fresh))
                n = sp.get_piece_size()
                assert n == sp_model.get_piece_size()
                assert [(sp.id_to_piece(i), sp.get_score(i)) for i in range(n)] == \
                       [(sp_model.id_to_piece(i), sp_model.get_score(i)) for i in range(n)]
