"""Tokenizer folders the real stack refuses or misreads (issue 17, points 7-11), through the CLI.

Every folder is written by the real libraries (transformers 5 ``save_pretrained``, the tokenizers
library's ``model.save`` for the slow vocabulary files a transformers 4.x save writes beside
tokenizer.json, sentencepiece's trainer); defects are injected into copies of them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LLAMA_SP = FIXTURES / "_src" / "tokenizer.model"  # 200 pieces: <unk> <s> </s> at 0, 1, 2
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world, this is a tiny corpus for tokenizers.",
          "Numbers 12345 and symbols !?., are here; so are (brackets).", "Ueber naive cafe, deja vu."] * 30


def validate(*folders: Path, extra: tuple[str, ...] = ()) -> list[dict]:
    """``hfconv validate --format json`` in a subprocess: one report per folder."""
    proc = subprocess.run([sys.executable, "-c", "from hfconv.cli import run; run()", "validate",
                           *map(str, folders), "--format", "json", *extra], capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1), proc.stderr
    out = json.loads(proc.stdout)
    reports = out if isinstance(out, list) else [out]
    assert len(reports) == len(folders)
    return reports


def codes(report: dict, prefix: str = "HFC5") -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in report["findings"]:
        if f["code"].startswith(prefix):
            out.setdefault(f["code"], []).append(f)
    return out


def loud(report: dict) -> list[tuple[str, str, str]]:
    """Tokenizer/config-id findings above info: false alarms on a good folder."""
    return [(f["code"], f["severity"], f["message"]) for f in report["findings"]
            if f["code"].startswith("HFC5") and f["severity"] != "info"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, transformers) -> dict[str, Path]:
    """Good folders: what transformers 5 saves, plus the slow files a transformers 4.x save wrote beside."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("tokenizers")
    src = root / "src"
    src.mkdir()
    (src / "corpus.txt").write_text("\n".join(CORPUS), encoding="utf-8")
    # A SentencePiece model whose <unk> is not piece 0 (pad 0, eos 1, unk 2), as T5's.
    spm.SentencePieceTrainer.train(input=str(src / "corpus.txt"), model_prefix=str(src / "sp_t5"), vocab_size=60,
                                   model_type="unigram", character_coverage=1.0, minloglevel=2,
                                   hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    wordpiece.model.save(str(src), "wp")
    bytelevel = Tokenizer(models.BPE())
    bytelevel.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bytelevel.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<s>", "<pad>", "</s>", "<unk>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bytelevel.model.save(str(src), "bl")

    def source(name: str, files: dict[str, Path]) -> str:
        folder = src / name
        folder.mkdir()
        for target, path in files.items():
            shutil.copy(path, folder / target)
        return str(folder)

    t = transformers
    built = {
        "bert": (t.BertTokenizer.from_pretrained(source("bert", {"vocab.txt": src / "wp-vocab.txt"})), None),
        "gpt2": (t.GPT2Tokenizer.from_pretrained(source("gpt2", {"vocab.json": src / "bl-vocab.json",
                                                                 "merges.txt": src / "bl-merges.txt"})), None),
        "roberta": (t.RobertaTokenizer.from_pretrained(source("roberta", {"vocab.json": src / "bl-vocab.json",
                                                                          "merges.txt": src / "bl-merges.txt"})), None),
        "llama": (t.LlamaTokenizer.from_pretrained(source("llama", {"tokenizer.model": LLAMA_SP})),
                  ("tokenizer.model", LLAMA_SP)),
        "t5": (t.T5Tokenizer.from_pretrained(source("t5", {"spiece.model": src / "sp_t5.model"})),
               ("spiece.model", src / "sp_t5.model")),
        "xlmr": (t.XLMRobertaTokenizer.from_pretrained(source("xlmr", {"sentencepiece.bpe.model": LLAMA_SP})),
                 ("sentencepiece.bpe.model", LLAMA_SP)),
        "camembert": (t.CamembertTokenizer.from_pretrained(
            source("camembert", {"sentencepiece.bpe.model": src / "sp_t5.model"})),
            ("sentencepiece.bpe.model", src / "sp_t5.model")),
        "plbart": (t.PLBartTokenizer.from_pretrained(source("plbart", {"sentencepiece.bpe.model": LLAMA_SP})), None),
    }
    out: dict[str, Path] = {}
    for name, (tokenizer, slow) in built.items():
        fast = root / f"{name}-v5"
        tokenizer.save_pretrained(str(fast))
        out[f"{name}-v5"] = fast
        if name == "plbart":
            continue  # transformers 5 saves PLBart's SentencePiece file itself
        both = root / f"{name}-both"
        shutil.copytree(fast, both)
        if slow is not None:  # transformers 4.x save_vocabulary copies the SentencePiece file it loaded
            shutil.copy(slow[1], both / slow[0])
        else:  # ... and writes the WordPiece / BPE files from the fast model
            tokenizer.backend_tokenizer.model.save(str(both))
        out[f"{name}-both"] = both
    return out


def _swap_two_tokens(folder: Path) -> tuple[str, str]:
    """Make tokenizer.json stale: two ordinary tokens trade ids. Returns them."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    if isinstance(vocab, dict):
        plain = [t for t in vocab if t.isalpha() and len(t) > 1][:2]
        a, b = plain
        vocab[a], vocab[b] = vocab[b], vocab[a]
    else:  # Unigram: [piece, score] by id
        i = next(i for i, (piece, _score) in enumerate(vocab) if piece.strip("\u2581").isalpha() and i > 8)
        vocab[i], vocab[i + 1] = vocab[i + 1], vocab[i]
        a, b = vocab[i][0], vocab[i + 1][0]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return a, b


# --- point 7: a stale tokenizer.json beside the slow vocabulary ---------------------------------
def test_folders_transformers_writes_have_no_tokenizer_false_alarm(saved):
    names = sorted(saved)
    reports = validate(*(saved[n] for n in names))
    noisy = {n: loud(r) for n, r in zip(names, reports) if loud(r)}
    # The one expected remark: CamembertTokenizer's own duplicate <unk> (point 11), a warning.
    assert set(noisy) <= {"camembert-v5", "camembert-both"}, noisy
    for name in noisy:
        assert [(c, s) for c, s, _m in noisy[name]] == [("HFC508", "warning")], noisy[name]


STALE_KINDS = ["bert", "gpt2", "roberta", "llama", "t5", "xlmr", "camembert"]
"""vocab.txt, byte-level vocab.json + merges.txt (twice), tokenizer.model, spiece.model (Unigram, T5's extra
ids), sentencepiece.bpe.model with XLM-R's and CamemBERT's fairseq id layouts."""


def test_stale_tokenizer_json_beside_slow_vocabulary_is_an_error(saved, tmp_path):
    swapped = {}
    for name in STALE_KINDS:  # (one CLI run for all of them)
        shutil.copytree(saved[f"{name}-both"], tmp_path / name)
        swapped[name] = _swap_two_tokens(tmp_path / name)
    for name, report in zip(STALE_KINDS, validate(*(tmp_path / n for n in STALE_KINDS))):
        [hit] = codes(report)["HFC519"]
        a, b = swapped[name]
        assert hit["severity"] == "error" and hit["file"] == "tokenizer.json", name
        assert repr(a) in hit["message"] and repr(b) in hit["message"], (name, hit["message"])
        assert "disagree on 2 token(s)" in hit["message"], (name, hit["message"])


def test_stale_tokenizer_json_fails_the_gate(tmp_path, transformers):
    """A llama fixture (weights, config) whose tokenizer.json is stale: exit 1; fresh: exit 0."""
    folder = tmp_path / "llama"
    shutil.copytree(FIXTURES / "llama-safetensors", folder)
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(LLAMA_SP, source / "tokenizer.model")
    transformers.LlamaTokenizer.from_pretrained(str(source)).save_pretrained(str(folder))
    [report] = validate(folder)
    assert report["ok"] and not loud(report), report["findings"]
    _swap_two_tokens(folder)
    [report] = validate(folder)
    assert not report["ok"] and "HFC519" in codes(report)


def test_compare_is_fast_on_a_256k_vocabulary(tmp_path):
    from tokenizers import Tokenizer, models

    folder = tmp_path / "big"
    folder.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(256_000)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    vocab = {w: i for i, w in enumerate(words)}
    vocab["w7"], vocab["w8"] = vocab["w8"], vocab["w7"]
    Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]")).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "unk_token": "[UNK]"}))
    import time

    from hfconv.checks import tokenizer as tok
    from hfconv.contents import read_contents
    from hfconv.discovery import discover

    facts = tok._gather(read_contents(discover(folder)))
    start = time.process_time()
    [hit] = list(tok._check_fast_against_slow(facts))
    assert time.process_time() - start < 0.5
    assert "'w7' is id 12 in vocab.txt but id 13 in tokenizer.json" in hit.message


# --- point 8: a slow SentencePiece class beside tokenizer.json alone -------------------------------
def test_slow_class_without_its_sentencepiece_file_is_a_warning(saved, tmp_path):
    folder = tmp_path / "llama"
    shutil.copytree(saved["llama-v5"], folder)
    [report] = validate(folder)
    assert "HFC520" not in codes(report)  # transformers 5 wrote it ("backend": "tokenizers")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["backend"]  # as transformers 4.x wrote a LlamaTokenizerFast loaded from tokenizer.json alone
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    [report] = validate(folder)
    [hit] = codes(report)["HFC520"]
    assert hit["severity"] == "warning" and "LlamaTokenizer" in hit["message"] and "tokenizer.model" in hit["message"]
    shutil.copy(LLAMA_SP, folder / "tokenizer.model")
    [report] = validate(folder)
    assert "HFC520" not in codes(report)


# --- point 9: tokenizers transformers saves but cannot use -----------------------------------------
def test_unk_token_outside_the_model_vocabulary(tmp_path, transformers):
    from tokenizers import Tokenizer, models

    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    folder = tmp_path / "bpe"
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                         eos_token="</s>").save_pretrained(str(folder))
    reloaded = transformers.AutoTokenizer.from_pretrained(str(folder))
    with pytest.raises(Exception, match="Unk token"):
        reloaded("abc ZZ")  # what every user of the folder meets
    [report] = validate(folder)
    [hit] = codes(report)["HFC521"]
    assert hit["severity"] == "error" and hit["tensor"] == "$.model.unk_token" and "'<unk>'" in hit["message"]


def test_slow_tokenizer_unk_only_an_added_token(tmp_path, transformers):
    source = tmp_path / "src"
    source.mkdir()
    (source / "vocab.json").write_text(json.dumps({"hello": 0, "world": 1, "h@@": 2}))
    (source / "merges.txt").write_text("#version: 0.2\nh e\n")
    folder = tmp_path / "ctrl"
    transformers.CTRLTokenizer.from_pretrained(str(source)).save_pretrained(str(folder))
    assert transformers.AutoTokenizer.from_pretrained(str(folder)).convert_tokens_to_ids(["zzz"]) == [None]
    [report] = validate(folder)
    [hit] = codes(report)["HFC521"]
    assert hit["severity"] == "error" and hit["file"] == "vocab.json"


def test_reference_transformers_builds_the_tokenizer(saved, tmp_path):
    """--reference transformers loads the tokenizer in a subprocess; its exception is an error."""
    folder = tmp_path / "broken"
    shutil.copytree(saved["bert-v5"], folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "BertPreTokenizerV9"}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    [plain] = validate(folder)
    assert "HFC522" not in codes(plain)  # seconds of work: only when asked for
    [report] = validate(folder, extra=("--reference", "transformers"))
    [hit] = codes(report)["HFC522"]
    assert hit["severity"] == "error" and "PreTokenizer" in hit["message"]


# --- point 10: nested configs ------------------------------------------------------------------
def test_nested_config_ids_checked_against_their_own_vocab_size(tmp_path, transformers):
    t = transformers
    text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    # (Config files as save_pretrained writes them; building the models would only cost time.)
    siglip = tmp_path / "siglip"
    config = t.SiglipConfig(text_config=text, vision_config=vision)
    config.architectures = ["SiglipModel"]
    config.save_pretrained(str(siglip))
    assert json.loads((siglip / "config.json").read_text())["text_config"]["bos_token_id"] == 49406
    # A vision encoder-decoder whose decoder's eos id is past the decoder's vocabulary.
    decoder = t.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32, bos_token_id=0,
                           eos_token_id=0)
    encoder = t.ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          image_size=28, patch_size=14)
    ved = tmp_path / "ved"
    config = t.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.architectures = ["VisionEncoderDecoderModel"]
    config.save_pretrained(str(ved))
    config = json.loads((ved / "config.json").read_text())
    config["decoder"]["eos_token_id"] = 500
    (ved / "config.json").write_text(json.dumps(config))
    siglip_report, ved_report = validate(siglip, ved, extra=("--reference", "rules"))
    hits = {f["tensor"]: f for f in codes(siglip_report).get("HFC505", [])}
    # SigLIP never generates with them, and transformers itself writes them: warnings, at their real place.
    assert set(hits) == {"$.text_config.bos_token_id", "$.text_config.eos_token_id"}
    assert {f["severity"] for f in hits.values()} == {"warning"}
    assert "49406 is not below text_config.vocab_size 64" in hits["$.text_config.bos_token_id"]["message"]
    [hit] = codes(ved_report)["HFC505"]
    assert hit["tensor"] == "$.decoder.eos_token_id" and hit["severity"] == "error"
    assert "500 is not below decoder.vocab_size 64" in hit["message"]


# --- point 11: severity where transformers writes the folder itself ----------------------------------
def test_camembert_duplicate_unk_is_a_warning_with_a_fix_that_works(saved, tmp_path, transformers):
    folder = tmp_path / "camembert"
    shutil.copytree(saved["camembert-v5"], folder)
    [report] = validate(folder)
    [hit] = codes(report)["HFC508"]
    assert hit["severity"] == "warning"
    assert "twice (ids 3 and 6)" in hit["message"]
    # Re-saving (the old advice) writes the same file again.
    resaved = tmp_path / "resaved"
    transformers.AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(resaved))
    assert codes(validate(resaved)[0])["HFC508"][0]["severity"] == "warning"
    # The advice given works: rename the second entry, give the added token the first id.
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["vocab"][6][0] = "<unk>NOTUSED2"
    for token in data["added_tokens"]:
        if token["content"] == "<unk>":
            token["id"] = 3
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    [report] = validate(folder)
    assert "HFC508" not in codes(report)
    fixed = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert fixed.unk_token_id == 3 == fixed("\u2603", add_special_tokens=False)["input_ids"][-1]


def test_plbart_language_codes_are_not_missing_special_tokens(saved):
    [report] = validate(saved["plbart-v5"])
    assert "HFC504" not in codes(report), codes(report)
