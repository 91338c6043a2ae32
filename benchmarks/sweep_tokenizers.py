"""Sweep hfconv's tokenizer / special-token checks over many tokenizer kinds, offline.

For each tokenizer kind (SentencePiece Llama/Mistral/Gemma/T5/XLM-R/..., byte-level BPE like
GPT-2/Llama-3/Qwen2/RoBERTa/Whisper, WordPiece like BERT, Unigram, CLIP's BPE, ...) the script
trains a tiny vocabulary (``sentencepiece.SentencePieceTrainer`` or the ``tokenizers`` library),
wraps it in the real transformers tokenizer class, saves it with ``save_pretrained`` next to a
tiny matching model saved with ``save_pretrained`` too, and runs ``hfconv.validate`` on the
folder. Every error or warning on such a good folder is a false alarm. It then breaks copies of
some good folders (special token past the embedding, config ids disagreeing with the tokenizer,
a special token outside the vocabulary, truncated tokenizer.json, a tokenizer.model that is not
SentencePiece, an auto_map to a missing .py, a chat template that does not parse, ...) and checks
that each defect is reported with the expected code.

Not part of the test suite. Needs transformers, tokenizers, sentencepiece and protobuf
(transformers reads tokenizer.model through protobuf). Run from the repository root:

    python benchmarks/sweep_tokenizers.py                 # all kinds, summary table
    python benchmarks/sweep_tokenizers.py --keep DIR      # keep the folders in DIR
    python benchmarks/sweep_tokenizers.py -k gemma -v     # only kinds matching 'gemma', all findings

Exit status 1 when any good folder has a false alarm or any mutation goes undetected.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

from hfconv.validation import validate  # noqa: E402

transformers.logging.set_verbosity_error()

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a tiny corpus for testing tokenizers.",
    "Numbers 12345 and symbols !?., are here; so are (brackets) and 'quotes'.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
    "User: what is the capital of France? Assistant: Paris is the capital of France.",
    "def main():\n    return 42  # code too",
    "Über naïve café — unicode façade déjà vu.",
] * 40

# --- chat templates (shaped like the published ones) --------------------------------------------
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


# --- sources: tiny trained vocabularies -----------------------------------------------------------
class Sources:
    """Tiny vocabularies trained once per run, as the files the tokenizer classes read."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.corpus = root / "corpus.txt"
        self.corpus.write_text("\n".join(CORPUS), encoding="utf-8")
        self._sp("sp_llama", "bpe", 320, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True)
        self._sp("sp_t5", "unigram", 80, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
        self._sp("sp_gemma", "bpe", 330, pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True,
                 pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                 user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"])
        self._sp("sp_fairseq", "unigram", 80, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
        self._sp("sp_albert", "unigram", 80, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                 control_symbols=["[CLS]", "[SEP]", "[MASK]"])
        self._bytelevel()
        self._wordpiece()
        self._clip()

    def _sp(self, name: str, kind: str, vocab: int, **kwargs) -> None:
        spm.SentencePieceTrainer.train(input=str(self.corpus), model_prefix=str(self.root / name), vocab_size=vocab,
                                       model_type=kind, character_coverage=1.0, minloglevel=2,
                                       hard_vocab_limit=False, **kwargs)

    def sp(self, name: str) -> Path:
        return self.root / f"{name}.model"

    def _bytelevel(self) -> None:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.model.save(str(self.root), "bytelevel")
        self.bytelevel = tok
        roberta = Tokenizer(models.BPE())
        roberta.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        roberta.train_from_iterator(CORPUS, trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        roberta.model.save(str(self.root), "roberta")

    def _wordpiece(self) -> None:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
            vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
        tok.model.save(str(self.root), "wordpiece")
        self.wordpiece = tok

    def _clip(self) -> None:
        tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>",
            show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.model.save(str(self.root), "clip")

    def unigram_fast(self) -> Tokenizer:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
            vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
        return tok

    def llama3_fast(self) -> Tokenizer:
        """Byte-level BPE with Llama-3's special tokens added after the base vocabulary."""
        tok = Tokenizer.from_str(self.bytelevel.to_str())
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<|reserved_special_token_2|>", "<|eot_id|>"]
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
            special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
        return tok

    def folder(self, name: str, files: dict[str, Path]) -> Path:
        """A source folder holding ``files`` (name -> source path), for Class.from_pretrained."""
        out = self.root / "dirs" / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for target, source in files.items():
            shutil.copy(source, out / target)
        return out


# --- tiny models ------------------------------------------------------------------------------------
SMALL = dict(num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)


def model_config(family: str, vocab_size: int, ids: dict):
    t = transformers
    ids = {k: v for k, v in ids.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id",
                                                 "decoder_start_token_id")}
    if family == "llama":
        return t.LlamaForCausalLM, t.LlamaConfig(hidden_size=16, num_key_value_heads=1, vocab_size=vocab_size,
                                                 **SMALL, **ids)
    if family == "mistral":
        return t.MistralForCausalLM, t.MistralConfig(hidden_size=16, num_key_value_heads=1, vocab_size=vocab_size,
                                                     **SMALL, **ids)
    if family == "qwen2":
        return t.Qwen2ForCausalLM, t.Qwen2Config(hidden_size=16, num_key_value_heads=1, vocab_size=vocab_size,
                                                 **SMALL, **ids)
    if family == "gemma":
        return t.GemmaForCausalLM, t.GemmaConfig(hidden_size=16, num_key_value_heads=1, head_dim=8,
                                                 vocab_size=vocab_size, **SMALL, **ids)
    if family == "phi3":
        return t.Phi3ForCausalLM, t.Phi3Config(hidden_size=16, num_key_value_heads=1, vocab_size=vocab_size,
                                               **SMALL, **ids)
    if family == "gpt2":
        return t.GPT2LMHeadModel, t.GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                               vocab_size=vocab_size, **ids)
    if family == "llava":
        text = t.LlamaConfig(hidden_size=16, num_key_value_heads=1, vocab_size=vocab_size, **SMALL, **ids)
        vision = t.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, image_size=28, patch_size=14, projection_dim=16)
        return t.LlavaForConditionalGeneration, t.LlavaConfig(text_config=text, vision_config=vision,
                                                              image_token_index=vocab_size - 62 - 2, **ids)
    if family == "bert":
        ids.pop("bos_token_id", None), ids.pop("eos_token_id", None)
        return t.BertForMaskedLM, t.BertConfig(hidden_size=16, vocab_size=vocab_size, **SMALL, **ids)
    if family == "roberta":
        return t.RobertaForMaskedLM, t.RobertaConfig(hidden_size=16, vocab_size=vocab_size,
                                                     **dict(SMALL, max_position_embeddings=80), **ids)
    if family == "t5":
        return t.T5ForConditionalGeneration, t.T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                                        vocab_size=vocab_size, **ids)
    if family == "bart":
        return t.BartForConditionalGeneration, t.BartConfig(
            d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, vocab_size=vocab_size, **ids)
    raise ValueError(family)


def ids_from_tokenizer(tok, family: str) -> dict:
    """The config ids a careful user sets: those of the tokenizer's special tokens."""
    ids = {}
    for role in ("bos", "eos", "pad"):
        token = getattr(tok, f"{role}_token", None)
        ids[f"{role}_token_id"] = tok.convert_tokens_to_ids(token) if token is not None else None
    if family in ("t5", "bart"):
        ids["decoder_start_token_id"] = ids["pad_token_id"] if family == "t5" else ids["eos_token_id"]
    return ids


# --- cases -------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    kind: str
    """The tokenizer kind it exercises (summary rows)."""
    build: Callable[[Sources], object]
    family: str = "llama"
    vocab_pad: int = 0
    """Extra embedding rows past len(tokenizer) (padded vocab_size)."""
    pad_multiple: int = 0
    """Round vocab_size up to this multiple (0: no rounding)."""
    files: str = "json"
    """Which vocabulary files the folder ships: ``json`` (what v5 writes), ``both`` (plus the
    SentencePiece model), ``model`` (SentencePiece model only)."""
    sp_source: str | None = None
    """Source SentencePiece model copied for ``both`` / ``model``, and its file name."""
    sp_name: str = "tokenizer.model"
    chat_template: str | None = None
    generation_eos: list[str] | None = None
    """Tokens whose ids go into generation_config.json eos_token_id (chat models)."""
    post: Callable[[Path], None] | None = None
    """Edits applied after saving (AddedToken dicts, v4-style files, ...)."""
    ids_override: dict = field(default_factory=dict)
    expected: tuple[str, ...] = ()
    """Codes that are right to warn about on this variant (not counted as false alarms)."""


def sp_class(cls_name: str, sp: str, fname: str, **kwargs):
    def build(src: Sources):
        d = src.folder(f"{cls_name}-{sp}-{fname}", {fname: src.sp(sp)})
        return getattr(transformers, cls_name).from_pretrained(str(d), **kwargs)
    return build


def bl_class(cls_name: str, source: str = "bytelevel", **kwargs):
    def build(src: Sources):
        d = src.folder(f"{cls_name}-{source}", {"vocab.json": src.root / f"{source}-vocab.json",
                                                "merges.txt": src.root / f"{source}-merges.txt"})
        return getattr(transformers, cls_name).from_pretrained(str(d), **kwargs)
    return build


def with_changes(build, added: list | None = None, special: dict | None = None, attrs: dict | None = None):
    """Wrap a builder: add tokens after training, add special tokens, set attributes."""
    def wrapped(src: Sources):
        tok = build(src)
        if added:
            tok.add_tokens(added)
        if special:
            tok.add_special_tokens(special)
        for key, value in (attrs or {}).items():
            setattr(tok, key, value)
        return tok
    return wrapped


def llama3(src: Sources, instruct: bool = False):
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=src.llama3_fast(), bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>" if instruct else "<|end_of_text|>")
    return tok


def qwen2_chat(src: Sources):
    tok = bl_class("Qwen2Tokenizer")(src)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    return tok


def bert_slowfiles(src: Sources, cls_name: str = "BertTokenizer"):
    d = src.folder(f"{cls_name}-wp", {"vocab.txt": src.root / "wordpiece-vocab.txt"})
    return getattr(transformers, cls_name).from_pretrained(str(d))


def wordpiece_fast(src: Sources):
    tok = Tokenizer.from_str(src.wordpiece.to_str())
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def unigram_fast(src: Sources):
    return transformers.PreTrainedTokenizerFast(tokenizer_object=src.unigram_fast(), unk_token="<unk>",
                                                eos_token="</s>", pad_token="<pad>")


def clip(src: Sources):
    d = src.folder("clip", {"vocab.json": src.root / "clip-vocab.json", "merges.txt": src.root / "clip-merges.txt"})
    return transformers.CLIPTokenizer.from_pretrained(str(d))


def whisper(src: Sources):
    tok = bl_class("WhisperTokenizer")(src)
    specials = ["<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.add_tokens(["<|0.00|>", "<|0.02|>"])
    return tok


def gemma_chat(src: Sources):
    tok = sp_class("GemmaTokenizer", "sp_gemma", "tokenizer.model")(src)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    return tok


def phi3(src: Sources):
    tok = sp_class("LlamaTokenizer", "sp_llama", "tokenizer.model")(src)
    tok.add_special_tokens({"additional_special_tokens": ["<|assistant|>", "<|end|>", "<|system|>", "<|user|>"]})
    tok.add_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.pad_token = "<|endoftext|>"
    tok.eos_token = "<|endoftext|>"
    return tok


def wordlevel_fast(src: Sources):
    words = sorted({w for line in CORPUS for w in line.lower().replace(".", " ").replace(",", " ").split()})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]")


def wav2vec2(src: Sources):
    chars = sorted({c for line in CORPUS for c in line.upper() if c != " "})
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *chars])}
    d = src.root / "dirs" / "wav2vec2"
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab))
    return transformers.Wav2Vec2CTCTokenizer(str(d / "vocab.json"))


def byt5(src: Sources):
    return transformers.ByT5Tokenizer(extra_ids=10)


def canine(src: Sources):
    return transformers.CanineTokenizer()


def marian(src: Sources):
    d = src.root / "dirs" / "marian"
    d.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(src.sp("sp_fairseq")))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {t: i for i, t in enumerate(["</s>", "<unk>", *[p for p in pieces if p not in ("</s>", "<unk>", "<s>")],
                                         "<pad>"])}
    (d / "vocab.json").write_text(json.dumps(vocab))
    shutil.copy(src.sp("sp_fairseq"), d / "source.spm")
    shutil.copy(src.sp("sp_fairseq"), d / "target.spm")
    return transformers.MarianTokenizer.from_pretrained(str(d))


def multi_template(src: Sources):
    tok = qwen2_chat(src)
    tok.chat_template = {"default": CHATML_TEMPLATE, "tool_use": CHATML_TEMPLATE.replace("helpful", "tool-using")}
    return tok


def llava_tokenizer(src: Sources):
    tok = sp_class("LlamaTokenizer", "sp_llama", "tokenizer.model")(src)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"], "pad_token": "<pad>"})
    return tok


def image_token_dict(src: Sources):
    """extra_special_tokens as a dict (v5 model-specific tokens: tokenizer.image_token)."""
    tok = sp_class("LlamaTokenizer", "sp_llama", "tokenizer.model",
                   extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})(src)
    return tok


# --- post-save edits -----------------------------------------------------------------------------
def as_added_token_dicts(folder: Path) -> None:
    """Write the special tokens of tokenizer_config.json as AddedToken dicts (as transformers 4.3x did)."""
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text())
    for role in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        if isinstance(data.get(role), str):
            data[role] = {"__type": "AddedToken", "content": data[role], "lstrip": False, "normalized": False,
                          "rstrip": False, "single_word": False, "special": True}
    path.write_text(json.dumps(data, indent=2))


def v4_layout(folder: Path) -> None:
    """Add what transformers 4.x save_pretrained writes besides: special_tokens_map.json and
    added_tokens_decoder in tokenizer_config.json (built from the saved tokenizer.json)."""
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    tj = json.loads((folder / "tokenizer.json").read_text()) if (folder / "tokenizer.json").exists() else None
    stm = {}
    for role in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        value = cfg.get(role)
        if value is not None:
            text = value if isinstance(value, str) else value["content"]
            stm[role] = {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False}
    extra = cfg.pop("extra_special_tokens", None)
    if isinstance(extra, list) and extra:
        cfg["additional_special_tokens"] = extra
        stm["additional_special_tokens"] = extra
    (folder / "special_tokens_map.json").write_text(json.dumps(stm, indent=2))
    if tj is not None:
        cfg["added_tokens_decoder"] = {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in tj["added_tokens"]}
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))


def v3_layout(folder: Path) -> None:
    """What transformers < 4.34 wrote: no added_tokens_decoder; added_tokens.json for the tokens past the
    base vocabulary; special_tokens_map.json with AddedToken dicts; stale path keys."""
    v4_layout(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    decoder = cfg.pop("added_tokens_decoder", {})
    tj = json.loads((folder / "tokenizer.json").read_text()) if (folder / "tokenizer.json").exists() else None
    base = tj["model"]["vocab"] if tj else {}
    base_size = (max(base.values()) + 1 if isinstance(base, dict) else len(base)) if base else 0
    extra = {t["content"]: int(i) for i, t in decoder.items() if int(i) >= base_size}
    if extra:
        (folder / "added_tokens.json").write_text(json.dumps(extra, indent=2))
    cfg.update({"name_or_path": "/home/someone/models/src", "special_tokens_map_file": "/home/someone/.cache/stm.json"})
    # Old save_pretrained wrote "tokenizer_file": null beside the slow vocabulary files it always saved; beside
    # tokenizer.json alone the null makes transformers 4.x fail to load (HFC507), so only write it there.
    slow_files = ("tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
    if any((folder / name).exists() for name in slow_files):
        cfg["tokenizer_file"] = None
    for role in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if isinstance(cfg.get(role), str):
            cfg[role] = {"__type": "AddedToken", "content": cfg[role], "lstrip": False, "normalized": True,
                         "rstrip": False, "single_word": False}
    cfg_path.write_text(json.dumps(cfg, indent=2))


def chain(*fns):
    def run(folder: Path) -> None:
        for fn in fns:
            fn(folder)
    return run


def cases() -> list[Case]:
    llama = sp_class("LlamaTokenizer", "sp_llama", "tokenizer.model")
    llama_sp = dict(sp_source="sp_llama", sp_name="tokenizer.model")
    t5 = sp_class("T5Tokenizer", "sp_t5", "spiece.model")
    t5_sp = dict(sp_source="sp_t5", sp_name="spiece.model", family="t5")
    out = [
        # SentencePiece BPE, Llama / Mistral style
        Case("llama", "sp-bpe llama", llama, **llama_sp),
        Case("llama-both", "sp-bpe llama", llama, files="both", **llama_sp),
        Case("llama-model-only", "sp-bpe llama", llama, files="model", **llama_sp),
        Case("llama-legacy-false", "sp-bpe llama", sp_class("LlamaTokenizer", "sp_llama", "tokenizer.model",
                                                             legacy=False), files="both", **llama_sp),
        Case("llama-no-bos", "sp-bpe llama", sp_class("LlamaTokenizer", "sp_llama", "tokenizer.model",
                                                       add_bos_token=False, add_eos_token=True), **llama_sp),
        Case("llama-pad-eos", "sp-bpe llama", with_changes(llama, attrs={"pad_token": "</s>"}), **llama_sp),
        Case("llama-pad-unk", "sp-bpe llama", with_changes(llama, attrs={"pad_token": "<unk>"}), files="both",
             **llama_sp),
        Case("llama-pad-added", "sp-bpe llama", with_changes(llama, special={"pad_token": "<pad>"}), files="both",
             **llama_sp),
        Case("llama-padded-vocab", "sp-bpe llama", llama, pad_multiple=64, files="both", **llama_sp),
        Case("llama-added-tokens", "sp-bpe llama",
             with_changes(llama, added=["<tool>", "hello world", AddedToken("<think>", special=False)],
                          special={"additional_special_tokens": ["<|sep|>"]}), files="both", **llama_sp),
        Case("llama-chat", "sp-bpe llama", llama, chat_template=LLAMA2_TEMPLATE, files="both",
             generation_eos=["</s>"], **llama_sp),
        Case("llama-addedtoken-dicts", "sp-bpe llama", llama, post=as_added_token_dicts, **llama_sp),
        Case("llama-v4-layout", "sp-bpe llama", with_changes(llama, special={"pad_token": "<pad>"}),
             files="both", post=v4_layout, chat_template=LLAMA2_TEMPLATE, **llama_sp),
        Case("llama-v3-layout", "sp-bpe llama", with_changes(llama, special={"pad_token": "<pad>"}),
             files="both", post=v3_layout, **llama_sp),
        Case("mistral-inst", "sp-bpe llama", with_changes(
            llama, special={"additional_special_tokens": ["[INST]", "[/INST]"]}), family="mistral",
             chat_template=MISTRAL_TEMPLATE, generation_eos=["</s>"], files="both", **llama_sp),
        Case("codellama", "sp-bpe codellama", sp_class("CodeLlamaTokenizer", "sp_llama", "tokenizer.model"),
             **llama_sp),
        Case("phi3", "sp-bpe phi3", phi3, family="phi3", chat_template=PHI3_TEMPLATE,
             generation_eos=["<|endoftext|>", "<|end|>", "<|assistant|>"], files="both", **llama_sp),
        # SentencePiece with other special layouts
        Case("gemma", "sp-bpe gemma", sp_class("GemmaTokenizer", "sp_gemma", "tokenizer.model"), family="gemma",
             sp_source="sp_gemma"),
        Case("gemma-chat-both", "sp-bpe gemma", gemma_chat, family="gemma", files="both", sp_source="sp_gemma",
             chat_template=GEMMA_TEMPLATE, generation_eos=["<eos>", "<end_of_turn>"]),
        # transformers 5 never writes this one (GemmaTokenizer always saves tokenizer.json) but records the
        # absolute vocab_file it loaded from; without tokenizer.json transformers 4.x opens that path: HFC507.
        Case("gemma-model-only", "sp-bpe gemma", sp_class("GemmaTokenizer", "sp_gemma", "tokenizer.model"),
             family="gemma", files="model", sp_source="sp_gemma", expected=("HFC507",)),
        Case("t5", "sp-unigram t5", t5, **t5_sp),
        Case("t5-both-padded", "sp-unigram t5", t5, files="both", vocab_pad=28, **t5_sp),
        Case("t5-model-only", "sp-unigram t5", t5, files="model", **t5_sp),
        Case("t5-no-extra-ids", "sp-unigram t5", sp_class("T5Tokenizer", "sp_t5", "spiece.model", extra_ids=0),
             files="both", **t5_sp),
        Case("t5-v4-layout", "sp-unigram t5", t5, files="both", post=v4_layout, **t5_sp),
        Case("t5-v3-layout", "sp-unigram t5", t5, files="both", post=v3_layout, vocab_pad=28, **t5_sp),
        Case("pegasus", "sp-unigram pegasus", sp_class("PegasusTokenizer", "sp_t5", "spiece.model"), family="bart"),
        Case("siglip", "sp-unigram siglip (sentencepiece backend)",
             sp_class("SiglipTokenizer", "sp_t5", "spiece.model"), family="t5"),
        Case("xlm-roberta", "sp-unigram fairseq", sp_class("XLMRobertaTokenizer", "sp_fairseq",
                                                           "sentencepiece.bpe.model"), family="roberta"),
        Case("xlm-roberta-both", "sp-unigram fairseq", sp_class("XLMRobertaTokenizer", "sp_fairseq",
                                                                "sentencepiece.bpe.model"), family="roberta",
             files="both", sp_source="sp_fairseq", sp_name="sentencepiece.bpe.model"),
        Case("camembert", "sp-unigram fairseq", sp_class("CamembertTokenizer", "sp_fairseq",
                                                         "sentencepiece.bpe.model"), family="roberta"),
        Case("mbart", "sp-unigram fairseq", sp_class("MBartTokenizer", "sp_fairseq", "sentencepiece.bpe.model"),
             family="bart"),
        Case("nllb", "sp-unigram fairseq", sp_class("NllbTokenizer", "sp_fairseq", "sentencepiece.bpe.model"),
             family="bart"),
        Case("deberta-v2", "sp-unigram deberta", sp_class("DebertaV2Tokenizer", "sp_fairseq", "spm.model"),
             family="bert"),
        Case("xlnet", "sp-unigram xlnet", sp_class("XLNetTokenizer", "sp_fairseq", "spiece.model"), family="bert"),
        Case("bigbird", "sp-unigram bigbird", sp_class("BigBirdTokenizer", "sp_fairseq", "spiece.model"),
             family="bert"),
        Case("albert", "sp-unigram albert", sp_class("AlbertTokenizer", "sp_albert", "spiece.model"),
             family="bert"),
        Case("albert-both", "sp-unigram albert", sp_class("AlbertTokenizer", "sp_albert", "spiece.model"),
             family="bert", files="both", sp_source="sp_albert", sp_name="spiece.model"),
        # byte-level BPE
        Case("gpt2", "bytelevel gpt2", bl_class("GPT2Tokenizer"), family="gpt2"),
        Case("gpt2-pad-eos", "bytelevel gpt2", with_changes(bl_class("GPT2Tokenizer"),
                                                            attrs={"pad_token": "<|endoftext|>"}), family="gpt2"),
        Case("gpt2-padded", "bytelevel gpt2", bl_class("GPT2Tokenizer"), family="gpt2", pad_multiple=64),
        Case("gpt2-v4-layout", "bytelevel gpt2", bl_class("GPT2Tokenizer"), family="gpt2", post=v4_layout),
        Case("gpt2-v3-layout", "bytelevel gpt2", with_changes(bl_class("GPT2Tokenizer"), added=["<tool>"],
                                                              special={"pad_token": "<|pad|>"}),
             family="gpt2", post=v3_layout),
        Case("codegen", "bytelevel codegen", bl_class("CodeGenTokenizer"), family="gpt2"),
        Case("qwen2", "bytelevel qwen2", bl_class("Qwen2Tokenizer"), family="qwen2"),
        Case("qwen2-chat", "bytelevel qwen2", qwen2_chat, family="qwen2", chat_template=CHATML_TEMPLATE,
             generation_eos=["<|im_end|>", "<|endoftext|>"], pad_multiple=64),
        Case("qwen2-chat-v4", "bytelevel qwen2", qwen2_chat, family="qwen2", chat_template=CHATML_TEMPLATE,
             generation_eos=["<|im_end|>", "<|endoftext|>"], post=v4_layout),
        Case("llama3", "bytelevel llama3", llama3, pad_multiple=64),
        Case("llama3-instruct", "bytelevel llama3", lambda s: llama3(s, instruct=True),
             chat_template=LLAMA3_TEMPLATE, generation_eos=["<|end_of_text|>", "<|eot_id|>"]),
        Case("roberta", "bytelevel roberta", bl_class("RobertaTokenizer", "roberta"), family="roberta"),
        Case("roberta-v4-layout", "bytelevel roberta", bl_class("RobertaTokenizer", "roberta"), family="roberta",
             post=v4_layout),
        Case("bart", "bytelevel bart", bl_class("BartTokenizer", "roberta"), family="bart"),
        Case("longformer", "bytelevel longformer", bl_class("LongformerTokenizer", "roberta"), family="roberta"),
        Case("whisper", "bytelevel whisper", whisper, family="gpt2"),
        Case("clip", "bpe clip", clip, family="bert"),
        # WordPiece
        Case("bert", "wordpiece bert", bert_slowfiles, family="bert"),
        Case("bert-v4-layout", "wordpiece bert", bert_slowfiles, family="bert", post=v4_layout),
        Case("bert-v3-layout", "wordpiece bert", bert_slowfiles, family="bert", post=v3_layout),
        Case("distilbert", "wordpiece distilbert", lambda s: bert_slowfiles(s, "DistilBertTokenizer"),
             family="bert"),
        Case("electra-padded", "wordpiece electra", lambda s: bert_slowfiles(s, "ElectraTokenizer"),
             family="bert", vocab_pad=56),
        Case("wordpiece-fast", "wordpiece fast", wordpiece_fast, family="bert"),
        Case("wordlevel-fast", "wordlevel fast", wordlevel_fast, family="bert"),
        # Unigram (tokenizers)
        Case("unigram-fast", "unigram fast", unigram_fast, family="t5"),
        # no vocabulary file / character vocabularies
        Case("byt5", "bytes byt5", byt5, family="t5"),
        Case("canine", "chars canine", canine, family="bert", vocab_pad=0),
        Case("wav2vec2", "chars wav2vec2-ctc", wav2vec2, family="bert"),
        # SentencePiece backend (transformers 5 keeps the .model file)
        Case("speecht5", "sp-backend speecht5", sp_class("SpeechT5Tokenizer", "sp_fairseq", "spm_char.model"),
             family="t5"),
        Case("bert-generation", "sp-backend bert-generation",
             sp_class("BertGenerationTokenizer", "sp_fairseq", "spiece.model"), family="bert"),
        Case("gpt-sw3", "sp-backend gpt-sw3", sp_class("GPTSw3Tokenizer", "sp_fairseq", "spiece.model"),
             family="gpt2"),
        Case("marian", "sp-backend marian", marian, family="bart"),
        # chat-template and multimodal variants
        Case("qwen2-multi-template", "bytelevel qwen2", multi_template, family="qwen2",
             generation_eos=["<|im_end|>", "<|endoftext|>"]),
        Case("llava", "sp-bpe llama multimodal", llava_tokenizer, family="llava", vocab_pad=62, files="both",
             chat_template=LLAMA2_TEMPLATE, **llama_sp),
        Case("llama-image-token-dict", "sp-bpe llama", image_token_dict, **llama_sp),
    ]
    return out


# --- building a folder -----------------------------------------------------------------------------
def build_folder(case: Case, src: Sources, out: Path) -> Path:
    tok = case.build(src)
    if case.chat_template is not None:
        tok.chat_template = case.chat_template
    folder = out / case.name
    if folder.exists():
        shutil.rmtree(folder)
    size = len(tok) + case.vocab_pad
    if case.pad_multiple:
        size = -(-size // case.pad_multiple) * case.pad_multiple
    ids = dict(ids_from_tokenizer(tok, case.family), **case.ids_override)
    model_class, config = model_config(case.family, size, ids)
    torch.manual_seed(0)
    model = model_class(config)
    if case.generation_eos:
        model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(t) for t in case.generation_eos]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    if case.files in ("both", "model"):
        if not (folder / case.sp_name).exists():
            shutil.copy(src.sp(case.sp_source), folder / case.sp_name)
        if case.files == "model" and (folder / "tokenizer.json").exists():
            (folder / "tokenizer.json").unlink()
    if case.post is not None:
        case.post(folder)
    return folder


# --- mutations --------------------------------------------------------------------------------------
def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def _vocab_size(folder: Path) -> int:
    cfg = _json(folder / "config.json")
    return cfg.get("vocab_size") or cfg["text_config"]["vocab_size"]


def m_special_past_embedding(folder: Path) -> None:
    """A new pad token added to the tokenizer after the model was saved (no resize)."""
    rows = _vocab_size(folder)
    if (folder / "tokenizer.json").exists():
        tj = _json(folder / "tokenizer.json")
        tj["added_tokens"].append({"id": rows, "content": "<newpad>", "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": True})
        _write(folder / "tokenizer.json", tj)
    cfg = _json(folder / "tokenizer_config.json")
    cfg.setdefault("added_tokens_decoder", {})[str(rows)] = {
        "content": "<newpad>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
        "special": True}
    cfg["pad_token"] = "<newpad>"
    _write(folder / "tokenizer_config.json", cfg)
    if (folder / "special_tokens_map.json").exists():
        stm = _json(folder / "special_tokens_map.json")
        stm["pad_token"] = "<newpad>"
        _write(folder / "special_tokens_map.json", stm)


def m_eos_disagrees(folder: Path) -> None:
    for name in ("config.json", "generation_config.json"):
        path = folder / name
        if path.exists():
            data = _json(path)
            eos = data.get("eos_token_id")
            first = eos[0] if isinstance(eos, list) else eos
            data["eos_token_id"] = 5 if first != 5 else 6
            _write(path, data)


def m_bos_disagrees(folder: Path) -> None:
    for name in ("config.json", "generation_config.json"):
        path = folder / name
        if path.exists():
            data = _json(path)
            data["bos_token_id"] = 7 if data.get("bos_token_id") != 7 else 8
            _write(path, data)


def m_config_eos_only(folder: Path) -> None:
    """config.json eos_token_id edited alone (generation_config.json left as saved)."""
    data = _json(folder / "config.json")
    eos = data.get("eos_token_id")
    first = eos[0] if isinstance(eos, list) else eos
    data["eos_token_id"] = 5 if first != 5 else 6
    _write(folder / "config.json", data)


def m_generation_eos_only(folder: Path) -> None:
    data = _json(folder / "generation_config.json")
    data["eos_token_id"] = 5 if data.get("eos_token_id") != 5 else 6
    _write(folder / "generation_config.json", data)


def m_config_bos_only(folder: Path) -> None:
    data = _json(folder / "config.json")
    data["bos_token_id"] = 7 if data.get("bos_token_id") != 7 else 8
    _write(folder / "config.json", data)


def m_tokenizer_config_special_only(folder: Path) -> None:
    """Only tokenizer_config.json names a token outside the vocabulary (special_tokens_map.json kept)."""
    data = _json(folder / "tokenizer_config.json")
    data["eos_token"] = "<|no_such_token|>"
    _write(folder / "tokenizer_config.json", data)


def m_special_tokens_map_only(folder: Path) -> None:
    data = _json(folder / "special_tokens_map.json")
    data["eos_token"] = {"content": "<|no_such_token|>", "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False}
    _write(folder / "special_tokens_map.json", data)


def m_special_not_in_vocab(folder: Path) -> None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.exists():
            data = _json(path)
            data["eos_token"] = "<|no_such_token|>"
            _write(path, data)


def m_truncated_json(folder: Path) -> None:
    path = folder / "tokenizer.json"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def m_not_json(folder: Path) -> None:
    (folder / "tokenizer.json").write_text("version: 1.0\nmodel: BPE\n")


def m_sp_garbage(folder: Path, name: str = "tokenizer.model") -> None:
    (folder / name).write_bytes(b"\x00\x01garbage that is not a protobuf\xff\xfe" * 8)


def m_sp_tiktoken(folder: Path, name: str = "tokenizer.model") -> None:
    (folder / name).write_text("IQ== 0\nIg== 1\nIw== 2\n")


def m_sp_json(folder: Path, name: str = "tokenizer.model") -> None:
    (folder / name).write_text('{"version": "1.0", "model": {"type": "BPE"}}')


def m_sp_truncated(folder: Path, name: str = "tokenizer.model") -> None:
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 3])


def m_sp_other_model(folder: Path, name: str = "tokenizer.model") -> None:
    """A valid SentencePiece model of another vocabulary (stale upload next to tokenizer.json)."""
    shutil.copy(OTHER_SP, folder / name)


def m_extra_special_not_in_vocab(folder: Path) -> None:
    cfg = _json(folder / "tokenizer_config.json")
    key = "extra_special_tokens" if "extra_special_tokens" in cfg or "additional_special_tokens" not in cfg \
        else "additional_special_tokens"
    value = cfg.get(key)
    if isinstance(value, dict):
        value["tool_token"] = "<|no_such_tool|>"
    else:
        cfg[key] = [*(value or []), "<|no_such_tool|>"]
    _write(folder / "tokenizer_config.json", cfg)


def _put_template(folder: Path, text: str) -> None:
    """Replace the chat template where the folder keeps it (its own file, else tokenizer_config.json)."""
    if (folder / "chat_template.jinja").exists():
        (folder / "chat_template.jinja").write_text(text)
    else:
        cfg = _json(folder / "tokenizer_config.json")
        cfg["chat_template"] = text
        _write(folder / "tokenizer_config.json", cfg)


def m_template_unknown_filter(folder: Path) -> None:
    _put_template(folder, "{% for message in messages %}{{ message['content'] | no_such_filter }}{% endfor %}")


def m_auto_map_class_missing(folder: Path) -> None:
    (folder / "tokenization_my.py").write_text("from transformers import PreTrainedTokenizerFast\n\n"
                                               "class OtherTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    cfg = _json(folder / "tokenizer_config.json")
    cfg["tokenizer_class"] = "MyTokenizerFast"
    cfg["auto_map"] = {"AutoTokenizer": [None, "tokenization_my.MyTokenizerFast"]}
    _write(folder / "tokenizer_config.json", cfg)


def m_auto_map_missing(folder: Path) -> None:
    cfg = _json(folder / "tokenizer_config.json")
    cfg["tokenizer_class"] = "MyTokenizer"
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_my.MyTokenizer", None]}
    _write(folder / "tokenizer_config.json", cfg)


def m_auto_map_missing_fast(folder: Path) -> None:
    cfg = _json(folder / "tokenizer_config.json")
    cfg["tokenizer_class"] = "MyTokenizerFast"
    cfg["auto_map"] = {"AutoTokenizer": [None, "tokenization_my_fast.MyTokenizerFast"]}
    _write(folder / "tokenizer_config.json", cfg)


def m_bad_template(folder: Path) -> None:
    cfg = _json(folder / "tokenizer_config.json")
    if isinstance(cfg.get("chat_template"), str) or not (folder / "chat_template.jinja").exists():
        cfg["chat_template"] = "{% for message in messages %}{{ message['content'] }}{% endfor"
        _write(folder / "tokenizer_config.json", cfg)
    if (folder / "chat_template.jinja").exists():
        (folder / "chat_template.jinja").write_text("{% if messages %}{{ messages[0]['content'] }")


def m_bad_template_unclosed_block(folder: Path) -> None:
    _put_template(folder, "{% for message in messages %}{{ message['content'] }}")


def m_pad_id_past_rows(folder: Path) -> None:
    """config.json pad_token_id equal to vocab_size (one past the last row)."""
    cfg = _json(folder / "config.json")
    cfg["pad_token_id"] = _vocab_size(folder)
    _write(folder / "config.json", cfg)


def m_added_token_id_clash(folder: Path) -> None:
    """tokenizer_config.json added_tokens_decoder moves a special token to another id."""
    cfg = _json(folder / "tokenizer_config.json")
    dec = cfg.get("added_tokens_decoder") or {}
    if not dec:
        tj = _json(folder / "tokenizer.json")
        dec = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word",
                                                 "special")} for t in tj["added_tokens"]}
    key = sorted(dec, key=int)[0]
    entry = dec.pop(key)
    dec[str(int(key) + 3)] = entry
    cfg["added_tokens_decoder"] = dec
    _write(folder / "tokenizer_config.json", cfg)


def m_vocab_size_too_small(folder: Path) -> None:
    """config.json vocab_size below the tokenizer (the embedding was not resized; weights match config)."""
    cfg = _json(folder / "config.json")
    holder = cfg if "vocab_size" in cfg else cfg["text_config"]
    holder["vocab_size"] -= 1
    _write(folder / "config.json", cfg)


OTHER_SP: Path = Path()
"""A valid SentencePiece model of an unrelated vocabulary (set in main)."""


@dataclass
class Mutation:
    name: str
    apply: Callable[[Path], None]
    expect: tuple[str, ...]
    """Any of these codes at error/warning severity counts as detected."""
    needs: str | tuple[str, ...] = ""
    """Files the base folder must have (``eos`` / ``bos``: config.json must set that id)."""


MUTATIONS = [
    Mutation("special token id >= embedding rows", m_special_past_embedding, ("HFC502", "HFC510", "HFC504")),
    Mutation("pad_token_id >= vocab_size", m_pad_id_past_rows, ("HFC505",)),
    Mutation("eos id disagrees with tokenizer", m_eos_disagrees, ("HFC506",), needs="eos"),
    Mutation("bos id disagrees with tokenizer", m_bos_disagrees, ("HFC506",), needs="bos"),
    Mutation("config.json eos only", m_config_eos_only, ("HFC506",), needs="eos"),
    Mutation("config.json bos only", m_config_bos_only, ("HFC506",), needs="bos"),
    Mutation("generation_config.json eos only", m_generation_eos_only, ("HFC506",),
             needs=("eos", "generation_config.json")),
    Mutation("special token not in vocab", m_special_not_in_vocab, ("HFC504",)),
    # Where special_tokens_map.json overrides it in every transformers version (no added_tokens_decoder),
    # the bad tokenizer_config.json token only makes the files disagree (HFC515).
    Mutation("tokenizer_config.json special token not in vocab", m_tokenizer_config_special_only,
             ("HFC504", "HFC515")),
    Mutation("special_tokens_map.json special token not in vocab", m_special_tokens_map_only, ("HFC504",),
             needs="special_tokens_map.json"),
    Mutation("tokenizer.json truncated", m_truncated_json, ("HFC401",), needs="tokenizer.json"),
    Mutation("tokenizer.json not JSON", m_not_json, ("HFC401",), needs="tokenizer.json"),
    Mutation("tokenizer.model garbage", m_sp_garbage, ("HFC501",), needs="tokenizer.model"),
    Mutation("tokenizer.model is tiktoken", m_sp_tiktoken, ("HFC501",), needs="tokenizer.model"),
    Mutation("tokenizer.model is JSON", m_sp_json, ("HFC501",), needs="tokenizer.model"),
    Mutation("tokenizer.model truncated", m_sp_truncated, ("HFC501",), needs="tokenizer.model"),
    Mutation("tokenizer.model of another vocabulary", m_sp_other_model, ("HFC511",),
             needs=("tokenizer.model", "tokenizer.json")),
    Mutation("spiece.model truncated", lambda f: m_sp_truncated(f, "spiece.model"), ("HFC501",),
             needs="spiece.model"),
    Mutation("spiece.model garbage", lambda f: m_sp_garbage(f, "spiece.model"), ("HFC501",), needs="spiece.model"),
    Mutation("extra special token not in vocab", m_extra_special_not_in_vocab, ("HFC504",)),
    Mutation("chat_template unknown filter", m_template_unknown_filter, ("HFC512",)),
    Mutation("auto_map class missing in .py", m_auto_map_class_missing, ("HFC802",)),
    Mutation("auto_map to missing .py (slow)", m_auto_map_missing, ("HFC801",)),
    Mutation("auto_map to missing .py (fast)", m_auto_map_missing_fast, ("HFC801",)),
    Mutation("chat_template syntax error", m_bad_template, ("HFC512",)),
    Mutation("chat_template unclosed block", m_bad_template_unclosed_block, ("HFC512",)),
    Mutation("added_tokens_decoder id moved", m_added_token_id_clash, ("HFC508",), needs="tokenizer.json"),
    Mutation("vocab_size below tokenizer", m_vocab_size_too_small, ("HFC502", "HFC601")),
]
MUTATION_BASES = ["llama-both", "llama-v4-layout", "llama-v3-layout", "gpt2-v3-layout", "gemma", "t5-v4-layout",
                  "bert-v4-layout", "roberta-v4-layout", "qwen2", "llava", "mistral-inst", "llama-model-only", "gemma-chat-both", "t5-both-padded",
                  "t5-model-only", "gpt2", "qwen2-chat", "qwen2-chat-v4", "llama3-instruct", "bert", "xlm-roberta",
                  "whisper", "siglip", "phi3"]


def applicable(mutation: Mutation, folder: Path) -> bool:
    needs = (mutation.needs,) if isinstance(mutation.needs, str) else mutation.needs
    for name in needs:
        if name in ("eos", "bos"):
            if not isinstance(_json(folder / "config.json").get(f"{name}_token_id"), (int, list)):
                return False
        elif name and not (folder / name).exists():
            return False
    return True


# --- running -----------------------------------------------------------------------------------------
def noisy(report) -> list:
    return [f for f in report.findings if f.severity.value in ("error", "warning")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="build the folders in this directory and keep them")
    parser.add_argument("-k", dest="pattern", help="only cases whose name contains this")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every finding of every folder")
    parser.add_argument("--no-mutations", action="store_true")
    args = parser.parse_args(argv)

    tmp = None
    if args.keep:
        out = Path(args.keep)
        out.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="hfconv-sweep-")
        out = Path(tmp.name)
    src = Sources(out / "_src")
    global OTHER_SP
    OTHER_SP = src.sp("sp_fairseq")
    selected = [c for c in cases() if not args.pattern or args.pattern in c.name]

    kinds: dict[str, list[bool]] = defaultdict(list)
    alarms: dict[str, list[str]] = defaultdict(list)
    failed_builds: list[str] = []
    built: dict[str, Path] = {}
    print(f"== good folders ({len(selected)}) ==")
    for case in selected:
        try:
            folder = build_folder(case, src, out / "good")
        except Exception as exc:  # noqa: BLE001 - a kind transformers cannot build here is reported, not fatal
            failed_builds.append(f"{case.name}: {type(exc).__name__}: {str(exc)[:160]}")
            if args.verbose:
                traceback.print_exc()
            continue
        built[case.name] = folder
        report = validate(folder)
        bad = [f for f in noisy(report) if f.code not in case.expected]
        kinds[case.kind].append(not bad)
        status = "clean" if not bad else f"{len(bad)} FALSE ALARM(S)"
        files = ",".join(sorted(p.name for p in folder.iterdir() if "token" in p.name or p.suffix == ".model"))
        print(f"  {case.name:24s} {status:18s} [{files}]")
        for f in (report.findings if args.verbose else bad):
            print(f"      {f.severity.value:7s} {f.code} {f.message}")
        for f in bad:
            alarms[f.code].append(f"{case.name}: {f.message}")

    missed: list[str] = []
    tried = 0
    if not args.no_mutations:
        print("\n== mutations ==")
        for base in MUTATION_BASES:
            if base not in built:
                continue
            for mutation in MUTATIONS:
                if not applicable(mutation, built[base]):
                    continue
                target = out / "mutated" / f"{base}--{mutation.name.replace(' ', '_').replace('/', '_')}"
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(built[base], target)
                mutation.apply(target)
                tried += 1
                report = validate(target)
                hits = [f for f in noisy(report) if f.code in mutation.expect]
                if hits:
                    if args.verbose:
                        print(f"  ok     {base:18s} {mutation.name}: {hits[0].code} {hits[0].message[:100]}")
                else:
                    codes = sorted({f"{f.code}/{f.severity.value}" for f in report.findings})
                    missed.append(f"{base}: {mutation.name} (want {'/'.join(mutation.expect)}; got {codes})")
                    print(f"  MISSED {base:18s} {mutation.name}: got {codes}")

    print("\n== summary ==")
    print(f"{'tokenizer kind':44s} {'folders':>7s} {'clean':>5s}")
    for kind, results in sorted(kinds.items()):
        print(f"{kind:44s} {len(results):7d} {sum(results):5d}")
    total = sum(len(r) for r in kinds.values())
    clean = sum(sum(r) for r in kinds.values())
    print(f"{'TOTAL (' + str(len(kinds)) + ' kinds)':44s} {total:7d} {clean:5d}")
    print("\nfalse alarms per code:" + ("" if alarms else " none"))
    for code, items in sorted(alarms.items()):
        print(f"  {code}: {len(items)}")
        for item in items:
            print(f"      {item[:220]}")
    print(f"\nmutations: {tried} tried, {len(missed)} missed")
    for item in missed:
        print(f"  {item}")
    if failed_builds:
        print("\nkinds that could not be built here (not counted):")
        for item in failed_builds:
            print(f"  {item}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if alarms or missed else 0


if __name__ == "__main__":
    sys.exit(main())
