"""Tokenizer checks: vocabulary, special tokens, token ids, embeddings, chat template, dtype.

What ``AutoTokenizer.from_pretrained`` and ``generate()`` rely on, checked across files:

* the vocabulary (``tokenizer.json``, else ``tokenizer.model`` / ``spiece.model`` read with
  sentencepiece from bytes, or the SentencePiece file of a known slow class under its own name with
  that class's id layout (``sentencepiece.bpe.model`` of XLM-R / CamembERT / mBART / NLLB, ``spm.model``
  of DeBERTa-v2, see ``SHIFTED_LAYOUTS``), else ``vocab.json`` / ``vocab.txt``) plus the added tokens;
* ``vocab_size`` and the embedding rows against the tokenizer's ids, special tokens present in the
  vocabulary, the token ids of config.json / generation_config.json in range and agreeing with
  the tokenizer's ids (rows against vocab_size is the shape check's HFC601);
* ``tokenizer.model`` against ``tokenizer.json``, ``added_tokens_decoder`` against both; every slow
  vocabulary (vocab.txt, vocab.json, SentencePiece files read with their class's id layout) against
  tokenizer.json token by token (HFC519); a slow SentencePiece class named beside tokenizer.json alone
  (HFC520); the unknown token inside its model's own vocabulary (HFC521); with ``--reference
  transformers`` the tokenizer files alone loaded by transformers in a subprocess (HFC522);
* the token ids of nested configs (text_config, vision_config, decoder, ...) against their own vocab_size;
* the chat template parses (jinja2 sandbox) and ends an assistant turn with an eos id;
* ``torch_dtype`` / ``dtype`` against the dtype the weights are stored in.

Nothing from the folder is executed: sentencepiece parses a protobuf, the chat template is only
compiled and rendered in a child process, inside jinja2's ImmutableSandboxedEnvironment, under
memory, CPU and time caps (checks/chat_template.py).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeGuard

from .. import environment
from ..contents import FolderContents
from ..discovery import ModelFolder
from ..dtypes import FLOAT_DTYPES, TORCH_DTYPE
from ..findings import Finding, finding, register
from ..fsutil import is_safe_relative_name, link_problem, open_regular
from ..jsonutil import JsonError, loads_strict
from ..tensors import FormatError
from .chat_template import MAX_TEMPLATE_BYTES, check_chat_template
from .schemas import known_model_types

# --- codes (HFC5xx) ------------------------------------------------------------------------------
register("HFC501", "error", "tokenizer.model unreadable",
         "The SentencePiece model cannot be parsed (truncated, not SentencePiece, absurd size); the slow "
         "tokenizer fails to load, and so does the fast one when no tokenizer.json is present to use instead.",
         "Re-download the file, or replace it with the model's real tokenizer.model.",
         "tokenizer.model is not a valid SentencePiece model (it looks like a tiktoken BPE file); replace it "
         "with the real SentencePiece model")
register("HFC502", "error", "vocab_size below tokenizer",
         "The tokenizer can produce ids at or past config.json's vocab_size; the embedding lookup of those "
         "ids fails (index error, CUDA device-side assert) or reads another token's row.",
         "Resize the embeddings (model.resize_token_embeddings(len(tokenizer))) and save again, or fix "
         "vocab_size if it is simply wrong.",
         "config.json vocab_size is 200 but the tokenizer (tokenizer.json) has ids up to 202; resize the "
         "embeddings to at least 203 rows and update vocab_size")
register("HFC503", "info", "vocab_size padded",
         "config.json's vocab_size is larger than the tokenizer's vocabulary; common (padding to a multiple "
         "of 64 for speed) and harmless, the extra rows are never produced by the tokenizer.",
         "Nothing to do.",
         "config.json vocab_size 32128 is larger than the tokenizer's 32100 ids (padded embedding)")
register("HFC504", "error", "special token not in vocabulary",
         "A special token named in special_tokens_map.json or tokenizer_config.json is not in the "
         "vocabulary; transformers silently adds it as a new token with an id past the vocabulary, "
         "whose embedding row is untrained or does not exist.",
         "Use a token that exists in the vocabulary (e.g. the unk or eos token for padding), or add it "
         "and resize the embeddings.",
         "special_tokens_map.json: pad_token '<pad>' is not in the vocabulary (tokenizer.model); transformers "
         "would add it as id 200, past the 200 embedding rows")
register("HFC505", "error", "token id out of range",
         "A bos/eos/pad/decoder_start token id in config.json or generation_config.json is negative or not "
         "below vocab_size; generation can never emit or stop at it, or indexes past the embedding.",
         "Set the id to the tokenizer's id of that token.",
         "generation_config.json: eos_token_id 50000 is not below vocab_size 200; set it to the "
         "tokenizer's id of '</s>' (2)")
register("HFC506", "warning", "token id disagrees with tokenizer",
         "config.json or generation_config.json names a different id for bos/eos/pad than the tokenizer "
         "gives that token; generation stops at the wrong token (or never) and batches are padded "
         "with a token the model does not expect.",
         "Make the ids agree with the tokenizer (tokenizer.convert_tokens_to_ids(token)).",
         "generation_config.json: eos_token_id is 7 but the tokenizer's eos_token '</s>' has id 2; generation "
         "would not stop at '</s>'")
register("HFC507", "error", "tokenizer file reference",
         "tokenizer_config.json names a file (vocab_file, merges_file, sp_model_file, ...) that is not in "
         "the folder, or a path outside it; transformers 4.x opens such paths as given (transformers 5 "
         "ignores them). Also \"tokenizer_file\": null, which makes transformers 4.x ignore tokenizer.json "
         "(a warning, an error where the installed transformers is 4.x; info when slow vocabulary files are there to "
         "convert from). Only noted (info) when a readable tokenizer.json makes the fast tokenizer independent "
         "of the file (transformers 5's GemmaTokenizer.save_pretrained writes its source path there).",
         "Remove the key (the tokenizer finds its files in the folder by their standard names) or ship the "
         "named file.",
         "tokenizer_config.json sets vocab_file to 'spm.model', which is not in the folder; ship the file or "
         "remove the key")
register("HFC508", "error", "added tokens disagree",
         "tokenizer_config.json's added_tokens_decoder, added_tokens.json or tokenizer.json's added_tokens "
         "give a token a different id than the vocabulary does; depending on the loader the token is "
         "encoded to one id and decoded from another.",
         "Re-save the tokenizer with save_pretrained so that all files come from one tokenizer. Where tokenizer.json's "
         "model vocabulary itself lists the token twice (CamembertTokenizer's own save over a SentencePiece model "
         "whose <unk> is not piece 0; a warning, AutoTokenizer loads it), re-saving writes the same file: rename the "
         "second entry in model.vocab and give the added token the first entry's id.",
         "tokenizer_config.json: added_tokens_decoder gives '<|im_end|>' id 5 but tokenizer.json gives it "
         "id 151645")
# HFC509 is not used: embedding rows against vocab_size is HFC601 of the shape check (checks/shapes.py).
register("HFC510", "error", "special token past embedding",
         "A special token's id is not below the embedding's row count; using it (padding, bos) indexes "
         "past the embedding matrix.",
         "Resize the embeddings to cover the token, or use a token inside the vocabulary.",
         "pad_token '<pad>' has id 32000 but model.embed_tokens.weight has only 32000 rows")
register("HFC511", "warning", "tokenizer.model and tokenizer.json disagree",
         "The slow (tokenizer.model) and fast (tokenizer.json) tokenizers of the folder encode differently: "
         "another piece count or other ids for unk/bos/eos; use_fast=False gives other ids than the default.",
         "Regenerate tokenizer.json from tokenizer.model (or delete the stale file).",
         "tokenizer.model has 32000 pieces but tokenizer.json's vocabulary has 32001 entries")
register("HFC512", "error", "chat template does not parse",
         "apply_chat_template compiles the template with jinja2; a syntax error makes every chat call fail.",
         "Fix the template at the line given (jinja2 syntax).",
         "tokenizer_config.json: chat_template does not parse: unexpected '}' at line 1")
register("HFC518", "error", "chat template reaches for internals",
         "The chat template reads Python internals (attributes or keys starting with '_', such as "
         "__class__, __globals__, __subclasses__): the shape of a template-injection (SSTI) attack that "
         "tries to escape jinja2 and run code. transformers renders templates in jinja2's sandbox, which "
         "refuses such access, so the template also fails for every chat call. hfconv only renders "
         "templates in that sandbox, and does not render this one at all.",
         "Remove the access to underscore attributes from the template; no chat template needs them.",
         "tokenizer_config.json: chat_template reads '__class__' (line 1), a Python internal; refused as a "
         "sandbox-escape attempt")
register("HFC513", "warning", "chat turn end not an eos id",
         "The chat template ends an assistant turn with a token that is not among generation_config.json's "
         "eos ids, so generation does not stop after the answer (the classic 'model never stops' bug).",
         "Add the token's id to eos_token_id in generation_config.json (it may be a list).",
         "tokenizer_config.json: the chat template ends assistant turns with '<|im_end|>' (id 151645), which "
         "is not among generation_config.json's eos_token_id [151643]")
register("HFC514", "info", "config dtype differs from weights",
         "config.json's torch_dtype / dtype is not the dtype the weights are stored in; loaders trust the "
         "config (torch_dtype='auto' casts to it), so the loaded model differs in memory and precision "
         "from what the files hold.",
         "Set torch_dtype (dtype in transformers 5) to the stored dtype, or convert the weights.",
         "config.json says torch_dtype float32 but the weights are stored as BF16 (19 of 19 floating-point "
         "tensors)")
register("HFC515", "warning", "special token files disagree",
         "special_tokens_map.json and tokenizer_config.json name different strings for the same special "
         "token. transformers 4.34 and later (5 too) use tokenizer_config.json's when it has "
         "added_tokens_decoder; older versions, and files without it, use special_tokens_map.json's.",
         "Make both files name the same token (re-save the tokenizer with save_pretrained).",
         "eos_token is '</s>' in special_tokens_map.json but '<|im_end|>' in tokenizer_config.json; "
         "transformers 4.34 and later (5 too) use '<|im_end|>' (special_tokens_map.json is not read when "
         "tokenizer_config.json has added_tokens_decoder) but older versions use '</s>', so make both files "
         "name the same token")
register("HFC516", "error", "vocabulary file unreadable",
         "The vocabulary file the tokenizer is built from (vocab.json, vocab.txt) cannot be read.",
         "Re-download or re-save the tokenizer.",
         "vocab.json is not valid JSON: Expecting ',' delimiter at line 1 column 9")
register("HFC517", "info", "tokenizer checks skipped",
         "The folder has tokenizer metadata but no vocabulary hfconv can read (tokenizer.json, tokenizer.model, "
         "spiece.model, vocab.json, vocab.txt, or the SentencePiece file of a known slow class such as "
         "XLM-R's sentencepiece.bpe.model or DeBERTa-v2's spm.model), so vocabulary checks were skipped.",
         "Nothing to fix if the tokenizer loads; ship tokenizer.json to have it checked.",
         "no readable tokenizer vocabulary (tokenizer.json, tokenizer.model, vocab.json, vocab.txt); "
         "vocabulary checks were skipped")

register("HFC519", "error", "tokenizer.json disagrees with the slow vocabulary",
         "The folder ships both a fast tokenizer (tokenizer.json) and the slow vocabulary (vocab.txt, vocab.json, "
         "tokenizer.model, ...), and they give tokens different ids: one of them is stale. transformers 5 encodes "
         "with tokenizer.json without a word, while use_fast=False, transformers 4.x conversions and "
         "SentencePiece-based tools (llama.cpp's converter) use the slow file, so the same text becomes other ids.",
         "Regenerate tokenizer.json from the slow file it should match (AutoTokenizer.from_pretrained(..., "
         "use_fast=False) then save it as a fast tokenizer), or delete the stale file.",
         "tokenizer.json and vocab.txt disagree on 2 tokens: 'hello' is id 5 in vocab.txt but id 7 in tokenizer.json, "
         "'world' is id 7 in vocab.txt but id 5 in tokenizer.json; regenerate the stale file from the other one")
register("HFC520", "warning", "slow tokenizer class without its vocabulary file",
         "tokenizer_config.json names a slow SentencePiece tokenizer class (LlamaTokenizer, T5Tokenizer, ...) but the "
         "folder only has tokenizer.json: AutoTokenizer loads the fast tokenizer, but use_fast=False (transformers "
         "4.x) fails and SentencePiece-based tools cannot read the folder. Folders transformers 5 writes "
         "(\"backend\": \"tokenizers\") are left alone: it reads tokenizer.json for every class.",
         "Ship the model's original SentencePiece file (tokenizer.model, spiece.model, ...) beside tokenizer.json.",
         "tokenizer_config.json names LlamaTokenizer but the folder has tokenizer.json and no tokenizer.model; "
         "use_fast=False fails and SentencePiece-based tools cannot read the folder, so ship tokenizer.model")
register("HFC521", "error", "unknown token outside the model's vocabulary",
         "The tokenizer's unknown token (tokenizer.json's model.unk_token / unk_id, or the unk_token of a "
         "vocab.json / vocab.txt tokenizer) is not in its model's own vocabulary; an added token of that name "
         "does not count. Loading works, but the first text with an unknown character fails: the fast tokenizer "
         "raises 'Unk token `<unk>` not found in the vocabulary', the slow one maps the word to None "
         "(ValueError 'type of None unknown' when padding).",
         "Put the unknown token into the model vocabulary (re-train or re-convert the tokenizer), or set "
         "model.unk_token to a token the vocabulary has.",
         "tokenizer.json: model.unk_token '<unk>' is not in the BPE model's vocabulary (it is only an added token, id "
         "28); encoding a text with an unknown character fails with \"Unk token `<unk>` not found in the "
         "vocabulary\"")
register("HFC522", "error", "tokenizer fails to load in transformers",
         "With --reference transformers, hfconv builds the folder's tokenizer with the installed transformers in a "
         "separate, time-limited process (only the tokenizer files copied into an empty folder, never with custom "
         "code) and AutoTokenizer.from_pretrained raised an error: every user of the folder gets the same error.",
         "Fix the error shown, or re-save the tokenizer with a transformers version that loads it.",
         "the tokenizer fails to load in transformers 5.25.0: Exception: data did not match any variant of untagged "
         "enum PreTokenizerUntagged at line 1 column 312")

SPECIAL_ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
ROLE_OF_ID = {"bos_token_id": "bos_token", "eos_token_id": "eos_token", "pad_token_id": "pad_token"}
SP_FILES = ("tokenizer.model", "spiece.model")
"""SentencePiece files whose piece ids are the tokenizer's ids (sentencepiece.bpe.model is shifted: only
read for the tokenizer classes of ``SHIFTED_LAYOUTS``)."""
EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight",
                  "shared.weight", "lm_head.weight", "embed_out.weight")
"""Tensors whose first dimension is the vocabulary (input embeddings and output heads)."""
SLOW_VOCAB_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "sentencepiece.model", "spm.model",
                    "spm_char.model", "source.spm", "vocab.json", "vocab.txt", "merges.txt", "bpe.codes",
                    "qwen.tiktoken", "tokenizer.tiktoken")
"""Files a transformers 4.x slow tokenizer is built from; any of them may let it convert a fast one."""
IGNORED_FILE_KEYS = frozenset({"special_tokens_map_file", "tokenizer_config_file", "name_or_path"})
"""``*_file`` keys transformers pops or ignores; old save_pretrained wrote absolute paths there."""

MAX_SENTENCEPIECE_BYTES = 50_000_000
MAX_VOCAB_BYTES = 100_000_000


class TokenizerFileError(Exception):
    """A tokenizer file could not be read; ``message`` continues the sentence after its name."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# --- readers -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SentencePieceModel:
    """What hfconv needs from a SentencePiece model: its pieces and the ids of its special pieces."""

    file: str
    pieces: tuple[str, ...]
    """Piece text by id."""
    unk_id: int
    bos_id: int
    eos_id: int
    pad_id: int
    """-1 where the model has no such piece."""

    @property
    def piece_count(self) -> int:
        return len(self.pieces)

    def special_ids(self) -> dict[str, int]:
        """role -> id for the special pieces the model defines."""
        ids = {"unk": self.unk_id, "bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id}
        return {role: i for role, i in ids.items() if 0 <= i < len(self.pieces)}


def _read_limited(folder: ModelFolder, name: str, max_bytes: int) -> bytes:
    """Read a folder file after proving it is a regular file inside the folder and not absurdly large."""
    if not folder.contains(name):
        raise TokenizerFileError(f"{link_problem(folder.path(name))}; it was not read")
    try:
        with open_regular(folder.path(name)) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise TokenizerFileError(f"is {size} bytes, over the {max_bytes}-byte limit; it was not read")
            data = handle.read(max_bytes + 1)
    except FormatError as exc:
        raise TokenizerFileError(exc.message) from None
    if len(data) > max_bytes:
        raise TokenizerFileError(f"grew past the {max_bytes}-byte limit while being read")
    return data


_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/=]+ \d+\r?$")


def read_sentencepiece(folder: ModelFolder, name: str, max_bytes: int | None = None) -> SentencePieceModel:
    """Parse a SentencePiece model from its bytes (sentencepiece never sees a path, runs no code).

    Args:
        folder: the model folder.
        name: file name inside it.
        max_bytes: files larger than this are refused unread (default ``MAX_SENTENCEPIECE_BYTES``).

    Returns:
        The pieces and special ids.

    Raises:
        TokenizerFileError: unreadable, too large, empty, or not a SentencePiece model.
    """
    data = _read_limited(folder, name, MAX_SENTENCEPIECE_BYTES if max_bytes is None else max_bytes)
    if not data:
        raise TokenizerFileError("is empty, not a SentencePiece model")
    first_line = data.split(b"\n", 1)[0]
    if _TIKTOKEN_LINE.match(first_line):
        raise TokenizerFileError("is a tiktoken BPE file (base64 token and rank per line), not a SentencePiece model")
    import sentencepiece

    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=data)
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenizerFileError(f"is not a valid SentencePiece model ({reason[:120]})") from None
    count = processor.get_piece_size()
    if count <= 0:
        raise TokenizerFileError("is not a valid SentencePiece model (it holds no pieces)")
    pieces = tuple(processor.id_to_piece(list(range(count))))
    return SentencePieceModel(
        file=name,
        pieces=pieces,
        unk_id=processor.unk_id(),
        bos_id=processor.bos_id(),
        eos_id=processor.eos_id(),
        pad_id=processor.pad_id(),
    )


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer's token -> id map as the loader would build it: base vocabulary plus added tokens."""

    source: str
    """File the base vocabulary comes from."""
    base: Mapping[str, int]
    base_size: int
    """Ids the base model covers (0 .. base_size-1)."""
    added: Mapping[str, int]
    """Added tokens: content -> id."""
    special: frozenset[str] = frozenset()
    """Added tokens marked special (they end turns, they are never split)."""

    def id_of(self, token: str) -> int | None:
        found = self.added.get(token)
        return found if found is not None else self.base.get(token)

    @property
    def size(self) -> int:
        """One more than the largest id the tokenizer can produce (len(tokenizer))."""
        return max([self.base_size, *(i + 1 for i in self.added.values())])

    @cached_property
    def token_at(self) -> dict[int, str]:
        """id -> token (added tokens win, as in the fast tokenizer)."""
        out = {i: t for t, i in self.base.items()}
        out.update({i: t for t, i in self.added.items()})
        return out


def _token_text(value: Any) -> str | None:
    """The text of a token given as a string or an AddedToken object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _is_id(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_vocabulary(data: dict) -> Vocabulary | None:
    """Base vocabulary and added tokens of a parsed tokenizer.json, or None if it has no usable vocab."""
    model = data.get("model")
    if not isinstance(model, dict):
        return None
    vocab = model.get("vocab")
    base: dict[str, int] = {}
    if isinstance(vocab, dict):
        base = {t: i for t, i in vocab.items() if _is_id(i) and i >= 0}
        base_size = max(base.values(), default=-1) + 1
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
        for i, item in enumerate(vocab):
            if isinstance(item, list) and item and isinstance(item[0], str):
                base.setdefault(item[0], i)
        base_size = len(vocab)
    else:
        return None
    added: dict[str, int] = {}
    special: set[str] = set()
    for token in data.get("added_tokens") or ():
        if isinstance(token, dict) and isinstance(token.get("content"), str) and _is_id(token.get("id")):
            added.setdefault(token["content"], token["id"])
            if token.get("special") is True:
                special.add(token["content"])
    return Vocabulary(source="tokenizer.json", base=base, base_size=base_size, added=added,
                      special=frozenset(special))


def _read_vocab_json(folder: ModelFolder, name: str) -> dict[str, int]:
    try:
        data = loads_strict(_read_limited(folder, name, MAX_VOCAB_BYTES))
    except JsonError as exc:
        raise TokenizerFileError(f"is not valid JSON: {exc.message}") from None
    bad = next((k for k, v in data.items() if not _is_id(v) or v < 0), None)
    if bad is not None:
        raise TokenizerFileError(f"maps {bad!r} to {data[bad]!r}, which is not a token id")
    return data


def _read_vocab_txt(folder: ModelFolder, name: str) -> dict[str, int]:
    try:
        text = _read_limited(folder, name, MAX_VOCAB_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerFileError(f"is not UTF-8 text (byte {exc.start})") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    # As BertTokenizer's load_vocab: one token per line, id = line number, the last duplicate wins.
    return {token: index for index, token in enumerate(lines)}


@dataclass
class _Facts:
    """Everything the tokenizer checks share, read once per folder."""

    contents: FolderContents
    findings: list[Finding]
    sp_models: dict[str, SentencePieceModel]
    vocab: Vocabulary | None
    json_vocab: Vocabulary | None
    named: dict[str, tuple[str, str]]
    """role -> (token, file that sets it), after special_tokens_map.json overrides tokenizer_config.json."""
    extra: list[tuple[str, str]]
    """additional/extra special tokens: (token, file)."""
    shadowed: list[tuple[str, str, str]] = field(default_factory=list)
    """(role, token, file): special_tokens_map.json tokens that only transformers < 4.34 uses (current
    versions ignore the file when tokenizer_config.json has added_tokens_decoder)."""
    legacy_extra: set[str] = field(default_factory=set)
    slow_vocab: Vocabulary | None = None
    """The slow files' vocabulary (tokenizer.model, vocab.txt, vocab.json, ...) beside a tokenizer.json, with
    the declared added tokens; None without tokenizer.json or slow files."""
    """Extra special tokens only special_tokens_map.json names, where only transformers < 4.34 reads it."""

    @property
    def config(self) -> dict | None:
        return self.contents.config

    @property
    def text_config(self) -> dict | None:
        """The config holding vocab_size: config.json itself, or its text_config for multimodal models."""
        config = self.config
        if config is None:
            return None
        if "vocab_size" not in config and isinstance(config.get("text_config"), dict):
            return config["text_config"]
        return config

    @property
    def vocab_size(self) -> int | None:
        cfg = self.text_config
        value = cfg.get("vocab_size") if cfg else None
        return value if _is_id(value) and value > 0 else None


# --- the check -----------------------------------------------------------------------------------
def check_tokenizer(contents: FolderContents) -> Iterator[Finding]:
    """Vocabulary, special tokens, ids, embedding rows, slow/fast agreement and the chat template."""
    facts = _gather(contents)
    yield from facts.findings
    yield from _check_file_references(facts)
    yield from _check_vocab_size(facts)
    yield from _check_special_tokens(facts)
    yield from _check_added_tokens(facts)
    yield from _check_token_ids(facts)
    yield from _check_embeddings(facts)
    yield from _check_slow_fast(facts)
    yield from _check_fast_against_slow(facts)
    yield from _check_missing_slow_file(facts)
    yield from _check_model_unk(facts)
    yield from _check_chat_template(facts)
    yield from _check_loads_in_transformers(facts)


def _gather(contents: FolderContents) -> _Facts:
    folder = contents.folder
    findings: list[Finding] = []
    tokenizer_json = contents.json.get("tokenizer.json")
    json_vocab = _json_vocabulary(tokenizer_json) if isinstance(tokenizer_json, dict) else None

    # 1. SentencePiece models, read from bytes.
    sp_models: dict[str, SentencePieceModel] = {}
    for name in SP_FILES:
        if not folder.has(name) or name in folder.special_files:
            continue
        try:
            sp_models[name] = read_sentencepiece(folder, name)
        except TokenizerFileError as exc:
            severity = "warning" if json_vocab is not None else None
            consequence = ("; the fast tokenizer uses tokenizer.json, but use_fast=False fails" if json_vocab
                           else "; replace it with the model's real SentencePiece file")
            findings.append(finding("HFC501", f"{name} {exc.message}{consequence}", file=name, severity=severity))

    # 2. The vocabulary the loader uses: tokenizer.json, else the slow files.
    vocab = json_vocab
    if vocab is None and "tokenizer.json" not in contents.json_errors:
        vocab = _slow_vocabulary(contents, sp_models, findings)
    if vocab is not None:
        vocab = _with_declared_added_tokens(contents, vocab)
    elif (folder.has("tokenizer_config.json") or folder.has("special_tokens_map.json")) and not findings and \
            "tokenizer.json" not in contents.json_errors and not folder.has("tokenizer.json"):
        # (Read errors of the vocabulary files are findings of their own; no need to add this one.)
        findings.append(finding("HFC517", "no readable tokenizer vocabulary (tokenizer.json, tokenizer.model, "
                                "spiece.model, vocab.json or vocab.txt); vocabulary checks were skipped"))
    # 3. Beside tokenizer.json, the slow files too: use_fast=False (and SentencePiece tools) read them.
    slow_vocab = None
    if json_vocab is not None:
        slow_findings: list[Finding] = []
        slow_vocab = _slow_vocabulary(contents, sp_models, slow_findings)
        for item in slow_findings:  # the fast tokenizer does not need them: use_fast=False fails
            if item.code != "HFC501" or item.file not in sp_models:
                findings.append(finding(item.code, item.message.replace(
                    "; re-download or re-save the tokenizer", "; the fast tokenizer uses tokenizer.json, but "
                    "use_fast=False fails, so re-download it or delete it").replace(
                    "; the slow tokenizer fails to load, replace", "; the fast tokenizer uses tokenizer.json, but "
                    "use_fast=False fails, so replace"), file=item.file, tensor=item.tensor, severity="warning"))
        if slow_vocab is not None:
            slow_vocab = _with_declared_added_tokens(contents, slow_vocab)
    named, shadowed, extra, legacy_extra, disagreements = _special_tokens(contents)
    findings.extend(disagreements)
    return _Facts(contents, findings, sp_models, vocab, json_vocab, named, extra, shadowed, legacy_extra,
                  slow_vocab)


def _pegasus_offset(contents: FolderContents) -> int:
    """The id shift of PegasusTokenizer's (slow) SentencePiece pieces, 0 for every other tokenizer."""
    config = contents.json.get("tokenizer_config.json")
    if not isinstance(config, dict) or config.get("tokenizer_class") != "PegasusTokenizer":
        return 0
    offset = config.get("offset", 103)
    return offset if _is_id(offset) and 0 < offset <= 10_000 else 0


def _pegasus_fixed(contents: FolderContents, offset: int) -> dict[str, int]:
    """The ids PegasusTokenizer pins by its code: pad 0, eos 1, mask_token_sent 2, mask 3, <unk_2>.. from 4."""
    config = contents.json.get("tokenizer_config.json")
    config = config if isinstance(config, dict) else {}
    fixed = {_token_text(config.get("pad_token")) or "<pad>": 0, _token_text(config.get("eos_token")) or "</s>": 1}
    sent = _token_text(config.get("mask_token_sent", "<mask_1>"))
    if sent is not None:
        fixed.setdefault(sent, 2)
        fixed.setdefault(_token_text(config.get("mask_token")) or "<mask_2>", 3)
        for i in range(2, offset):
            fixed.setdefault(f"<unk_{i}>", i + 2)
    return fixed


@dataclass(frozen=True)
class ShiftedLayout:
    """How a slow tokenizer class maps a SentencePiece file under its own name to token ids.

    fairseq-converted models (XLM-R, mBART, NLLB, ...) pin their own specials to fixed ids and shift
    every other piece by an offset; the ids are in the tokenizer class's code, not in the files.
    """

    file: str
    fixed: tuple[tuple[str, int], ...] = ()
    """Tokens the class pins to ids (fairseq_tokens_to_ids), whatever the SentencePiece model says."""
    offset: int = 0
    """Piece i (from ``first`` on) has id i + offset."""
    first: int = 0
    """Pieces below this id are hidden behind ``fixed``."""
    mask_after: bool = False
    """``<mask>`` follows the last piece (id piece_count + offset) by the class's code."""
    needs_decoder: bool = False
    """Read only when tokenizer_config.json has added_tokens_decoder: the class appends tokens (language
    codes, made-up words) whose ids only that map records."""
    language_codes: tuple[tuple[str, tuple[str, ...], bool], ...] = ()
    """(tokenizer_config.json ``language_codes`` value, the codes the class appends after the pieces, whether
    ``<mask>`` follows them); the first entry is the class's default."""

    def vocabulary(self, model: SentencePieceModel, config: Mapping | None = None) -> Vocabulary:
        base = dict(self.fixed)
        for i in range(self.first, model.piece_count):
            base.setdefault(model.pieces[i], i + self.offset)
        size = model.piece_count + self.offset
        mask_after = self.mask_after
        if self.language_codes:
            wanted = (config or {}).get("language_codes", self.language_codes[0][0])
            codes, mask_after = next(((c, m) for name, c, m in self.language_codes if name == wanted), ((), False))
            for code in codes:
                base.setdefault(code, size)
                size += 1
        if mask_after:
            base.setdefault("<mask>", size)
            size += 1
        return Vocabulary(source=self.file, base=base, base_size=size, added={})


_FAIRSEQ = (("<s>", 0), ("<pad>", 1), ("</s>", 2), ("<unk>", 3))
SHIFTED_LAYOUTS = {
    # transformers 4.x tokenization_xlm_roberta.py & co: fairseq_offset 1, <s> <pad> </s> <unk> at 0..3.
    "XLMRobertaTokenizer": ShiftedLayout("sentencepiece.bpe.model", _FAIRSEQ, 1, 3, mask_after=True),
    "MBartTokenizer": ShiftedLayout("sentencepiece.bpe.model", _FAIRSEQ, 1, 3, needs_decoder=True),
    "MBart50Tokenizer": ShiftedLayout("sentencepiece.bpe.model", _FAIRSEQ, 1, 3, needs_decoder=True),
    "NllbTokenizer": ShiftedLayout("sentencepiece.bpe.model", _FAIRSEQ, 1, 3, needs_decoder=True),
    "XGLMTokenizer": ShiftedLayout("sentencepiece.bpe.model", _FAIRSEQ, 1, 3, needs_decoder=True),
    # tokenization_plbart.py: the language codes of its language_codes set follow the pieces, then <mask> ("base").
    "PLBartTokenizer": ShiftedLayout("sentencepiece.bpe.model", _FAIRSEQ, 1, 3, language_codes=(
        ("base", ("__java__", "__python__", "__en_XX__"), True),
        ("multi", ("__java__", "__python__", "__en_XX__", "__javascript__", "__php__", "__ruby__", "__go__"), False))),
    # tokenization_camembert.py: fairseq_offset 4 after <s>NOTUSED <pad> </s>NOTUSED <unk> <unk>NOTUSED.
    "CamembertTokenizer": ShiftedLayout(
        "sentencepiece.bpe.model",
        (("<s>NOTUSED", 0), ("<pad>", 1), ("</s>NOTUSED", 2), ("<unk>", 3), ("<unk>NOTUSED", 4)), 4, 1,
        mask_after=True),
    # Piece ids are the token ids, only the file name differs.
    "DebertaV2Tokenizer": ShiftedLayout("spm.model"),
    "SpeechT5Tokenizer": ShiftedLayout("spm_char.model"),
}
"""Slow tokenizer classes whose SentencePiece file hfconv reads under its own name (tokenizer_class)."""


def _shifted_layout(contents: FolderContents) -> ShiftedLayout | None:
    config = contents.json.get("tokenizer_config.json")
    if not isinstance(config, dict) or not isinstance(config.get("tokenizer_class"), str):
        return None
    name = config["tokenizer_class"]
    layout = SHIFTED_LAYOUTS.get(name[:-4] if name.endswith("Fast") else name)
    if layout is None or (layout.needs_decoder and not isinstance(config.get("added_tokens_decoder"), dict)):
        return None
    return layout


def _slow_vocabulary(contents: FolderContents, sp_models: dict[str, SentencePieceModel],
                     findings: list[Finding]) -> Vocabulary | None:
    folder = contents.folder
    layout = _shifted_layout(contents)
    if layout is not None and folder.has(layout.file) and layout.file not in folder.special_files:
        try:
            return layout.vocabulary(read_sentencepiece(folder, layout.file),
                                     contents.json.get("tokenizer_config.json"))
        except TokenizerFileError as exc:
            findings.append(finding("HFC501", f"{layout.file} {exc.message}; the slow tokenizer fails to load, "
                                    "replace it with the model's real SentencePiece file", file=layout.file))
            return None
    for name in SP_FILES:
        if name in sp_models:
            model = sp_models[name]
            offset = _pegasus_offset(contents) if name == "spiece.model" else 0
            # PegasusTokenizer (slow) puts its own specials at ids 0..offset+1 and piece i at i + offset.
            own = {t.content for t in _declared_added_tokens(contents) if t.id < offset} if offset else set()
            fixed = _pegasus_fixed(contents, offset) if offset else {}
            base: dict[str, int] = dict(zip(model.pieces, range(offset, model.piece_count + offset)))
            if own or fixed or len(base) != model.piece_count:  # (pieces are unique in real models: one C pass)
                base = dict(fixed)
                for i, piece in enumerate(model.pieces):
                    if piece not in own:
                        base.setdefault(piece, i + offset)
            return Vocabulary(source=name, base=base, base_size=model.piece_count + offset, added={})
        if folder.has(name):
            return None  # present but unreadable (HFC501): nothing to compare against
    for name, reader in (("vocab.json", _read_vocab_json), ("vocab.txt", _read_vocab_txt)):
        if folder.has(name) and name not in folder.special_files:
            try:
                base = reader(folder, name)
            except TokenizerFileError as exc:
                findings.append(finding("HFC516", f"{name} {exc.message}; re-download or re-save the tokenizer",
                                        file=name))
                return None
            return Vocabulary(source=name, base=base, base_size=max(base.values(), default=-1) + 1, added={})
    return None


@dataclass(frozen=True)
class DeclaredToken:
    """An added token as tokenizer_config.json (added_tokens_decoder) or added_tokens.json declares it."""

    file: str
    content: str
    id: int
    special: bool


def _declared_added_tokens(contents: FolderContents) -> list[DeclaredToken]:
    """Added tokens from tokenizer_config.json's added_tokens_decoder and the legacy added_tokens.json."""
    out: list[DeclaredToken] = []
    config = contents.json.get("tokenizer_config.json")
    decoder = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    if isinstance(decoder, dict):
        for key, token in decoder.items():
            text = _token_text(token)
            if text is not None and isinstance(key, str) and key.isascii() and key.isdigit():
                special = isinstance(token, dict) and token.get("special") is True
                out.append(DeclaredToken("tokenizer_config.json", text, int(key), special))
    legacy = contents.json.get("added_tokens.json")
    if isinstance(legacy, dict):
        for text, token_id in legacy.items():
            if _is_id(token_id) and token_id >= 0:
                out.append(DeclaredToken("added_tokens.json", text, token_id, False))
    return out


def _with_declared_added_tokens(contents: FolderContents, vocab: Vocabulary) -> Vocabulary:
    """Add tokens the tokenizer config declares (and T5's virtual <extra_id_N>) that vocab lacks."""
    added = dict(vocab.added)
    special = set(vocab.special)
    for token in _declared_added_tokens(contents):
        if token.content not in added and token.content not in vocab.base:
            added[token.content] = token.id
        if token.special:
            special.add(token.content)
    config = contents.json.get("tokenizer_config.json")
    extra_ids = config.get("extra_ids") if isinstance(config, dict) else None
    if vocab.source == "spiece.model" and _is_id(extra_ids) and 0 < extra_ids <= 10_000:
        # T5Tokenizer (slow): <extra_id_N> has id vocab_size - 1 - N, past the SentencePiece pieces.
        for n in range(extra_ids):
            added.setdefault(f"<extra_id_{n}>", vocab.base_size + extra_ids - 1 - n)
    return Vocabulary(source=vocab.source, base=vocab.base, base_size=vocab.base_size, added=added,
                      special=frozenset(special))


def _special_tokens(contents: FolderContents) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str, str]],
                                                       list[tuple[str, str]], set[str], list[Finding]]:
    """Named special tokens, the tokens only old transformers uses instead, extras, disagreements.

    Since transformers 4.34 (and in 5), special_tokens_map.json is read only when
    tokenizer_config.json has no ``added_tokens_decoder`` (what every save_pretrained since 4.34
    writes); without it, special_tokens_map.json overrides tokenizer_config.json. ``named`` is what
    current transformers uses; ``shadowed`` holds the special_tokens_map.json tokens it ignores that
    transformers < 4.34 uses all the same.
    """
    config = contents.json.get("tokenizer_config.json")
    stm = contents.json.get("special_tokens_map.json")
    current_reads_config_only = isinstance(config, dict) and "added_tokens_decoder" in config
    by_file: dict[str, dict[str, str]] = {}
    extra: dict[str, str] = {}
    for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", stm)):
        if not isinstance(data, dict):
            continue
        roles = by_file[name] = {}
        for role in SPECIAL_ROLES:
            text = _token_text(data.get(role))
            if text is not None:
                roles[role] = text
        for key in ("additional_special_tokens", "extra_special_tokens"):
            value = data.get(key)
            items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
            for item in items:
                text = _token_text(item)
                if text is not None:
                    extra.setdefault(text, name)
    from_config = by_file.get("tokenizer_config.json", {})
    from_map = by_file.get("special_tokens_map.json", {})
    named: dict[str, tuple[str, str]] = {}
    shadowed: list[tuple[str, str, str]] = []
    disagreements: list[Finding] = []
    for role in SPECIAL_ROLES:
        in_config, in_map = from_config.get(role), from_map.get(role)
        if current_reads_config_only:
            if in_config is not None:
                named[role] = (in_config, "tokenizer_config.json")
            if in_map is not None and in_map != in_config:
                shadowed.append((role, in_map, "special_tokens_map.json"))
        else:
            if in_map is not None:
                named[role] = (in_map, "special_tokens_map.json")
            elif in_config is not None:
                named[role] = (in_config, "tokenizer_config.json")
        if in_config is not None and in_map is not None and in_config != in_map:
            if current_reads_config_only:
                uses = (f"transformers 4.34 and later (5 too) use {in_config!r} (special_tokens_map.json is not read "
                        f"when tokenizer_config.json has added_tokens_decoder) but older versions use {in_map!r}")
            else:
                uses = f"transformers uses {in_map!r}"
            disagreements.append(finding(
                "HFC515", f"{role} is {in_map!r} in special_tokens_map.json but {in_config!r} in "
                f"tokenizer_config.json; {uses}, so make both files name the same token",
                file="special_tokens_map.json", tensor=f"$.{role}"))
    if current_reads_config_only:
        # Extras only special_tokens_map.json names are read by transformers < 4.34 alone.
        legacy_extra = {t for t, f in extra.items() if f == "special_tokens_map.json"}
    else:
        legacy_extra = set()
    return named, shadowed, list(extra.items()), legacy_extra, disagreements


# --- individual checks ---------------------------------------------------------------------------
def _check_file_references(facts: _Facts) -> Iterator[Finding]:
    """Files tokenizer_config.json names (vocab_file, merges_file, sp_model_file, ...) must be there.

    transformers 4.x passes such a value to the tokenizer instead of the folder's own file;
    transformers 5 ignores it (the folder's file wins), yet its save_pretrained records where the
    vocabulary was loaded from (an absolute path of the saving machine, GemmaTokenizer). With a
    readable tokenizer.json the fast tokenizer never opens these files, so a reference is only
    noted (info), except ``tokenizer_file``, which transformers 4.x loads the fast tokenizer from.
    """
    config = facts.contents.json.get("tokenizer_config.json")
    if not isinstance(config, dict):
        return
    folder = facts.contents.folder
    has_fast = facts.json_vocab is not None
    if has_fast and "tokenizer_file" in config and config["tokenizer_file"] is None:
        # transformers 4.x keeps the null (a key present in tokenizer_config.json wins over the file it
        # finds), so the fast tokenizer ignores tokenizer.json and is converted from the slow files.
        slow = next((name for name in SLOW_VOCAB_FILES if folder.has(name)), None)
        # Without slow files that transformers fails to load the tokenizer: an error where it is
        # the installed one, as for HFC012.
        installed = environment.installed_transformers_4() if slow is None else None
        who = f"the installed transformers {installed}" if installed else "transformers 4.x"
        then = (f"converts the fast tokenizer from {slow}" if slow else
                "fails to load the tokenizer, with no slow vocabulary file in the folder to convert from")
        yield finding("HFC507", f"tokenizer_config.json sets tokenizer_file to null; {who} then ignores tokenizer.json "
                      f"and {then} (transformers 5 reads tokenizer.json), so remove the key",
                      file="tokenizer_config.json", tensor="$.tokenizer_file",
                      severity="info" if slow else "error" if installed else "warning")
    for key, value in config.items():
        if not key.endswith("_file") or key in IGNORED_FILE_KEYS or not isinstance(value, str) or not value:
            continue
        inert = has_fast and key != "tokenizer_file"
        why_inert = ("; the fast tokenizer loads from tokenizer.json and transformers 5 ignores the key, but "
                     "transformers 4.x opens it to build the slow tokenizer (use_fast=False), so remove the key")
        if not is_safe_relative_name(value) or not folder.contains(value):
            tail = why_inert if inert else ("; transformers 4.x opens it as given (failing on other machines or "
                                            "reading a file the folder does not ship), so remove the key")
            yield finding("HFC507", f"tokenizer_config.json sets {key} to {value!r}, a path outside the model "
                          f"folder{tail}", file="tokenizer_config.json", tensor=f"$.{key}",
                          severity="info" if inert else "warning")
        elif not folder.has(value):
            tail = why_inert if inert else "; ship the file or remove the key"
            yield finding("HFC507", f"tokenizer_config.json sets {key} to {value!r}, which is not in the folder{tail}",
                          file="tokenizer_config.json", tensor=f"$.{key}",
                          severity="info" if inert else "warning" if has_fast else None)


def _check_vocab_size(facts: _Facts) -> Iterator[Finding]:
    """Every id the tokenizer produces must index the input embedding (vocab_size when rows are unknown)."""
    vocab, vocab_size = facts.vocab, facts.vocab_size
    if vocab is None:
        return
    extra = len([i for i in vocab.added.values() if i >= vocab.base_size])
    what = f"the tokenizer ({vocab.source}{f' + {extra} added tokens' if extra else ''})"
    rows = _input_rows(facts)
    known = (facts.config or {}).get("model_type") in known_model_types()
    # Outside hfconv's family table an embedding may legitimately hold more rows than vocab_size
    # (mllama: vocab_size + 8); there the rows decide.
    rows_cover = rows is not None and rows[1] >= vocab.size and not known
    if rows is not None and vocab.size > rows[1]:
        name, count = rows
        yield finding("HFC502", f"{name} has {count} rows but {what} has ids up to {vocab.size - 1}; resize the "
                      f"embeddings to at least {vocab.size} rows and update vocab_size",
                      file=facts.contents.tensor_files.get(name), tensor=name)
    elif vocab_size is not None and vocab.size > vocab_size and not rows_cover:
        yield finding("HFC502", f"config.json vocab_size is {vocab_size} but {what} has ids up to {vocab.size - 1}; "
                      f"resize the embeddings to at least {vocab.size} rows and update vocab_size",
                      file="config.json", tensor="$.vocab_size")
    if vocab_size is not None and vocab.size < vocab_size:
        yield finding("HFC503", f"config.json vocab_size {vocab_size} is larger than {what}'s {vocab.size} ids "
                      "(padded embedding; harmless)", file="config.json", tensor="$.vocab_size")


OUTPUT_SUFFIXES = ("lm_head.weight", "embed_out.weight")


def _embedding_rows(facts: _Facts) -> dict[str, int]:
    """Name -> first dimension of the floating-point vocabulary matrices of the loaded weights."""
    rows: dict[str, int] = {}
    for name, meta in facts.contents.loaded_tensors.items():
        # endswith(tuple) in C first: this runs over every tensor (100,000s in the largest folders).
        if (name.endswith(_DOTTED_EMBED_SUFFIXES) or name in EMBED_SUFFIXES) and len(meta.shape) == 2 \
                and meta.dtype in FLOAT_DTYPES:
            rows[name] = meta.shape[0]
    return rows


_DOTTED_EMBED_SUFFIXES = tuple("." + suffix for suffix in EMBED_SUFFIXES)


def _input_rows(facts: _Facts) -> tuple[str, int] | None:
    """(name, rows) of the smallest input embedding: the ids a tokenizer may produce must be below it.

    Output heads are left out: some models (mllama) embed more input ids than the head predicts.
    """
    rows = {n: r for n, r in _embedding_rows(facts).items()
            if not any(n == s or n.endswith("." + s) for s in OUTPUT_SUFFIXES)}
    return min(rows.items(), key=lambda item: item[1]) if rows else None


def _check_special_tokens(facts: _Facts) -> Iterator[Finding]:
    """Every special token must be in the vocabulary; transformers otherwise appends it silently."""
    vocab = facts.vocab
    if vocab is None:
        return
    rows = _input_rows(facts)
    limit = rows[1] if rows is not None else facts.vocab_size
    next_id = vocab.size
    # Tokens current transformers uses first; then those only transformers < 4.34 reads.
    tokens = [(role, token, file, False) for role, (token, file) in facts.named.items()]
    tokens += [("additional special token", token, file, False) for token, file in facts.extra
               if token not in facts.legacy_extra]
    tokens += [(role, token, file, True) for role, token, file in facts.shadowed]
    tokens += [("additional special token", token, file, True) for token, file in facts.extra
               if token in facts.legacy_extra]
    seen: set[str] = set()
    for role, token, file, legacy in tokens:
        if token in seen or vocab.id_of(token) is not None:
            continue
        seen.add(token)
        new_id = next_id
        next_id += 1
        if limit is not None and new_id >= limit:
            consequence = f"transformers would add it as id {new_id}, past the {limit} embedding rows"
            severity = None
        else:
            consequence = f"transformers would add it as id {new_id}, an untrained embedding row"
            severity = "warning"
        if legacy:
            severity = "warning"
            consequence = (consequence.replace("transformers would", "transformers < 4.34 would", 1)
                           + " (4.34 and later ignore special_tokens_map.json, tokenizer_config.json has "
                           "added_tokens_decoder)")
        yield finding("HFC504", f"{file}: {role} {token!r} is not in the vocabulary ({vocab.source}); {consequence}",
                      file=file, tensor=f"$.{role}" if role in SPECIAL_ROLES else None, severity=severity)


def _check_added_tokens(facts: _Facts) -> Iterator[Finding]:
    """added_tokens_decoder / added_tokens.json / tokenizer.json added_tokens agree with the vocabulary."""
    contents = facts.contents
    json_vocab = facts.json_vocab
    if json_vocab is not None:
        data = contents.json.get("tokenizer.json")
        model = data.get("model") if isinstance(data, dict) else None
        pieces = model.get("vocab") if isinstance(model, dict) else None
        for text, token_id in json_vocab.added.items():
            base_id = json_vocab.base.get(text)
            if base_id is None or base_id == token_id:
                continue
            if isinstance(pieces, list) and 0 <= token_id < len(pieces) and isinstance(pieces[token_id], list) \
                    and pieces[token_id][:1] == [text]:
                # The model's own vocabulary lists the token twice and the added token takes the second entry: what
                # CamembertTokenizer's save writes over a SentencePiece model whose <unk> is not piece 0.
                # AutoTokenizer loads it; re-saving reproduces it.
                yield finding("HFC508", f"tokenizer.json: the Unigram model lists {text!r} twice (ids {base_id} and "
                              f"{token_id}) and the added token {text!r} takes id {token_id}; AutoTokenizer loads "
                              f"it, but {text!r} has two ids (re-saving writes the same file), so rename the entry at "
                              f"id {token_id} in model.vocab (e.g. to {text + 'NOTUSED2'!r}) and give the added token "
                              f"id {base_id} (in tokenizer_config.json's added_tokens_decoder too)",
                              file="tokenizer.json", tensor="$.added_tokens", severity="warning")
            else:
                yield finding("HFC508", f"tokenizer.json: added token {text!r} has id {token_id} but the model "
                              f"vocabulary has it at id {base_id}; re-save the tokenizer",
                              file="tokenizer.json", tensor="$.added_tokens")
    reference = json_vocab if json_vocab is not None else facts.vocab
    if reference is None:
        return
    # What the vocabulary says without the declarations being checked.
    base_ref = reference if json_vocab is not None else Vocabulary(
        reference.source, reference.base, reference.base_size, {})
    for declared in _declared_added_tokens(contents):
        file, text, token_id = declared.file, declared.content, declared.id
        key = "added_tokens_decoder" if file == "tokenizer_config.json" else "added_tokens"
        known_id = base_ref.id_of(text)
        at_id = base_ref.token_at.get(token_id)
        if known_id is not None and known_id != token_id:
            yield finding("HFC508", f"{file}: {key} gives {text!r} id {token_id} but {base_ref.source} gives it "
                          f"id {known_id}; re-save the tokenizer so that the files agree",
                          file=file, tensor=f"$.{key}")
        elif known_id is None and at_id is not None and at_id != text:
            yield finding("HFC508", f"{file}: {key} puts {text!r} at id {token_id}, where {base_ref.source} has "
                          f"{at_id!r}; re-save the tokenizer so that the files agree", file=file, tensor=f"$.{key}")


def _config_ids(data: dict, fallback: dict | None) -> dict[str, list[int]]:
    """Token ids by key (eos may be a list); keys absent at the top come from ``fallback``."""
    out: dict[str, list[int]] = {}
    for key in ID_KEYS:
        value = data.get(key) if key in data else (fallback or {}).get(key)
        values = value if isinstance(value, list) else [value]
        ids = [v for v in values if _is_id(v)]
        if ids:
            out[key] = ids
    return out


SUB_CONFIG_KEYS = ("encoder", "decoder", "generator", "question_encoder")
"""Nested configs that are not named ``*_config`` (EncoderDecoder, RAG)."""
PAD_PAST_VOCAB_TYPES = frozenset({"musicgen", "musicgen_melody"})
"""Composite models whose decoder reserves id vocab_size itself for bos/pad (MusicGen: its embeddings
have vocab_size + 1 rows, facebook/musicgen-small ships decoder pad_token_id 2048 beside vocab_size 2048)."""
_GENERATIVE = re.compile(r"For(CausalLM|ConditionalGeneration|SpeechSeq2Seq|Seq2SeqLM)|LMHead|EncoderDecoderModel")


def _sub_configs(config: dict) -> list[tuple[str, dict]]:
    """(key, nested config) of config.json: text_config, vision_config, audio_config, decoder, ..."""
    return [(key, value) for key, value in config.items()
            if isinstance(value, dict) and (key.endswith("_config") or key in SUB_CONFIG_KEYS)
            and key not in ("quantization_config", "rope_scaling", "rope_parameters", "generation_config")]


def _check_token_ids(facts: _Facts) -> Iterator[Finding]:
    """bos/eos/pad/decoder_start ids in range and equal to the tokenizer's ids for those tokens.

    Nested configs (text_config, vision_config, audio_config, decoder, ...) are checked as the top level
    is, against their own vocab_size; a nested id out of range is an error where the nested config is
    the language model of a generative architecture, else a warning (transformers warns and the id is
    not used for generation: SigLIP's text_config bos_token_id 49406 beside vocab_size 32000).
    """
    contents = facts.contents
    vocab = facts.vocab
    generation = contents.json.get("generation_config.json")
    has_generation = isinstance(generation, dict)
    generation_eos = _config_ids(generation, None).get("eos_token_id", []) if isinstance(generation, dict) else []
    architectures = (facts.config or {}).get("architectures")
    generative = isinstance(architectures, list) and any(
        isinstance(a, str) and _GENERATIVE.search(a) for a in architectures)
    for file in ("config.json", "generation_config.json"):
        data = contents.json.get(file)
        if not isinstance(data, dict):
            continue
        scopes: list[tuple[str, dict]] = [("", data)]
        if file == "config.json":
            scopes += [(f"{key}.", sub) for key, sub in _sub_configs(data)]
        for prefix, scope in scopes:
            limit: int | None
            own_size = scope.get("vocab_size") if prefix else None
            is_text = not prefix or scope is facts.text_config
            if _is_id(own_size) and own_size > 0:
                limit, limit_name = own_size, f"{prefix}vocab_size"
            elif is_text:
                limit = facts.vocab_size or (vocab.size if vocab else None)
                limit_name = "vocab_size" if facts.vocab_size else "the tokenizer's size"
            else:
                limit, limit_name = None, ""
            language_model = is_text or prefix in ("text_config.", "decoder.")
            out_of_range = None if not prefix else "error" if generative and language_model else "warning"
            for key, ids in _config_ids(scope, None).items():
                if prefix and key in data and is_text:
                    compare = False  # the top level's own id is the one compared with the tokenizer
                else:
                    compare = is_text
                role = ROLE_OF_ID.get(key)
                token = facts.named.get(role, (None, None))[0] if role and compare else None
                token_id = vocab.id_of(token) if vocab is not None and token is not None else None
                hint = f"; set it to the tokenizer's id of {token!r} ({token_id})" if token_id is not None else ""
                if prefix and out_of_range == "warning":
                    hint += " (transformers warns about it; the model does not generate with it)"
                in_range = True
                for value in ids:
                    if value < 0 and not (key == "pad_token_id" and value == -1):
                        in_range = False
                        yield finding("HFC505", f"{file}: {prefix}{key} {value} is negative, not a token id{hint}",
                                      file=file, tensor=f"$.{prefix}{key}", severity=out_of_range)
                    elif limit is not None and value >= limit and not (
                            prefix and value == limit and data.get("model_type") in PAD_PAST_VOCAB_TYPES):
                        in_range = False
                        yield finding("HFC505",
                                      f"{file}: {prefix}{key} {value} is not below {limit_name} {limit}{hint}",
                                      file=file, tensor=f"$.{prefix}{key}", severity=out_of_range)
                if token_id is None or token is None or role is None or not in_range or token_id in ids:
                    continue
                yield _id_disagreement(file, f"{prefix}{key}", role, token, token_id, ids, has_generation,
                                       generation_eos)


def _id_disagreement(file: str, key: str, role: str, token: str, token_id: int, ids: list[int],
                     has_generation: bool, generation_eos: list[int]) -> Finding:
    """HFC506: a config id that is not the tokenizer's id of its token."""
    shown = ids[0] if len(ids) == 1 else ids
    if role == "eos_token":
        effective = file == "generation_config.json" or not has_generation
        # config.json's eos shadowed by generation_config.json: fine when it is one of the ids
        # generation stops at (Llama-3-Instruct: 128001 beside [128001, 128009]); an id that is
        # neither the tokenizer's nor generation_config.json's is wrong for every tool reading it.
        shadowed = not effective and set(ids) <= set(generation_eos)
        severity = "info" if shadowed else None
        why = (f"generation would not stop at {token!r}" if effective else
               "generation uses generation_config.json's ids, so this only matters to tools reading "
               "config.json" if shadowed else
               f"it is not among generation_config.json's eos ids {generation_eos} either, so tools that "
               "read config.json (and generate() when generation_config.json was derived from it) stop "
               "at the wrong token")
    elif role == "bos_token":
        severity, why = None, "generate() would start from another token than the tokenizer adds"
    else:
        severity, why = "info", "batched generation pads with another token than the tokenizer"
    return finding("HFC506", f"{file}: {key} is {shown} but the tokenizer's {role} {token!r} has id "
                   f"{token_id}; {why}", file=file, tensor=f"$.{key}", severity=severity)


def _check_embeddings(facts: _Facts) -> Iterator[Finding]:
    """Every special token's id must be below the embedding's row count.

    (Rows against vocab_size is the shape check's HFC601; this one needs the tokenizer.)
    """
    rows = _embedding_rows(facts)
    vocab = facts.vocab
    if not rows or vocab is None:
        return
    where = facts.contents.tensor_files
    smallest_name, smallest = min(rows.items(), key=lambda item: item[1])
    current = [(role, token) for role, (token, _file) in facts.named.items()]
    legacy = [(role, token) for role, token, _file in facts.shadowed if (role, token) not in current]
    for role, token in dict.fromkeys(current + legacy):
        token_id = vocab.id_of(token)
        if token_id is not None and token_id >= smallest:
            only_old = (role, token) in legacy
            tail = (" (only transformers < 4.34 uses it: special_tokens_map.json names it, but tokenizer_config.json "
                    "has added_tokens_decoder)" if only_old else "")
            yield finding("HFC510", f"{role} {token!r} has id {token_id} but {smallest_name} has only {smallest} "
                          f"rows; resize the embeddings to cover it{tail}", file=where.get(smallest_name),
                          tensor=smallest_name, severity="warning" if only_old else None)


def _check_slow_fast(facts: _Facts) -> Iterator[Finding]:
    """tokenizer.model and tokenizer.json must describe the same vocabulary."""
    model = facts.sp_models.get("tokenizer.model")
    fast = facts.json_vocab
    if model is None or fast is None:
        return
    if model.piece_count != fast.base_size:
        yield finding("HFC511", f"tokenizer.model has {model.piece_count} pieces but tokenizer.json's vocabulary has "
                      f"{fast.base_size} entries; regenerate tokenizer.json from tokenizer.model (or delete the "
                      "stale file)", file="tokenizer.json")
        return
    for role, piece_id in model.special_ids().items():
        piece = model.pieces[piece_id]
        fast_id = fast.id_of(piece)
        if fast_id != piece_id:
            got = "does not contain it" if fast_id is None else f"gives it id {fast_id}"
            yield finding("HFC511", f"tokenizer.model's {role} piece {piece!r} has id {piece_id} but tokenizer.json "
                          f"{got}; regenerate tokenizer.json from tokenizer.model", file="tokenizer.json")


MAX_SHOWN = 5
"""Disagreements named in one HFC519 message."""


def _check_fast_against_slow(facts: _Facts) -> Iterator[Finding]:
    """tokenizer.json against the slow vocabulary beside it, token by token (HFC519).

    The slow side is read with the id layout of its class (fairseq offsets of XLM-R / CamemBERT,
    Pegasus's offset, T5's extra ids, declared added tokens), so a folder transformers wrote is clean;
    tokens that tokenizer.json only has as added tokens are not compared. Linear in the vocabulary.
    """
    fast, slow = facts.json_vocab, facts.slow_vocab
    if fast is None or slow is None:
        return
    fast_base, slow_base = fast.base, slow.base
    if fast_base == slow_base:
        return  # the common case, compared in C (an added token contradicting its own vocabulary is HFC508's)
    diffs: list[tuple[str, int | None, int | None]] = []
    # Only tokens whose (token, id) pair is not on both sides can disagree; the set operation runs in C.
    for token in sorted({token for token, _id in fast_base.items() ^ slow_base.items()}):
        slow_id = slow_base.get(token)
        if slow_id is not None:
            fast_id = fast.id_of(token)
            # (An added token that contradicts tokenizer.json's own model vocabulary is HFC508's.)
            if fast_id != slow_id and fast_base.get(token) != slow_id:
                diffs.append((token, slow_id, fast_id))
        elif token not in fast.added:
            fast_id, slow_id = fast_base[token], slow.id_of(token)
            if slow_id != fast_id:
                diffs.append((token, slow_id, fast_id))
    if not diffs:
        return
    diffs.sort(key=lambda d: min(i for i in (d[1], d[2]) if i is not None))
    source = slow.source
    shown = []
    for token, slow_id, fast_id in diffs[:MAX_SHOWN]:
        if fast_id is None:
            shown.append(f"{token!r} is id {slow_id} in {source} but not in tokenizer.json")
        elif slow_id is None:
            shown.append(f"{token!r} is id {fast_id} in tokenizer.json but not in {source}")
        else:
            shown.append(f"{token!r} is id {slow_id} in {source} but id {fast_id} in tokenizer.json")
    more = f" (and {len(diffs) - MAX_SHOWN} more)" if len(diffs) > MAX_SHOWN else ""
    yield finding("HFC519", f"tokenizer.json and {source} disagree on {len(diffs)} token(s): {', '.join(shown)}{more}; "
                  f"transformers 5 encodes with tokenizer.json, use_fast=False and SentencePiece-based tools with "
                  f"{source}, so regenerate the stale file from the other one (or delete it)", file="tokenizer.json",
                  tensor="$.model.vocab")


SENTENCEPIECE_CLASS_FILES = {
    **{name: ("tokenizer.model",) for name in ("LlamaTokenizer", "CodeLlamaTokenizer", "GemmaTokenizer",
                                               "BaichuanTokenizer", "InternLMTokenizer", "ChatGLMTokenizer")},
    **{name: ("spiece.model",) for name in ("T5Tokenizer", "MT5Tokenizer", "AlbertTokenizer", "XLNetTokenizer",
                                            "PegasusTokenizer", "BigBirdTokenizer", "ReformerTokenizer",
                                            "SiglipTokenizer", "UdopTokenizer")},
    **{name: ("sentencepiece.bpe.model",) for name in ("XLMRobertaTokenizer", "CamembertTokenizer", "MBartTokenizer",
                                                       "MBart50Tokenizer", "NllbTokenizer", "XGLMTokenizer",
                                                       "PLBartTokenizer", "M2M100Tokenizer")},
    "DebertaV2Tokenizer": ("spm.model",),
}
"""Slow tokenizer classes of transformers 4.x built from a SentencePiece file, and that file's names."""


def _check_missing_slow_file(facts: _Facts) -> Iterator[Finding]:
    """A slow SentencePiece class named beside tokenizer.json alone (HFC520)."""
    config = facts.contents.json.get("tokenizer_config.json")
    folder = facts.contents.folder
    if not isinstance(config, dict) or not folder.has("tokenizer.json") or config.get("backend") == "tokenizers":
        return  # transformers 5 wrote it ("backend": "tokenizers"): it reads tokenizer.json for every class
    name = config.get("tokenizer_class")
    files = SENTENCEPIECE_CLASS_FILES.get(name) if isinstance(name, str) else None
    if files is None or any(folder.has(f) for f in files):
        return
    yield finding("HFC520", f"tokenizer_config.json names {name} but the folder has tokenizer.json and no {files[0]}; "
                  f"AutoTokenizer loads the fast tokenizer, but use_fast=False (transformers 4.x) fails and "
                  f"SentencePiece-based tools cannot read the folder, so ship the model's {files[0]}",
                  file="tokenizer_config.json", tensor="$.tokenizer_class")


def _check_model_unk(facts: _Facts) -> Iterator[Finding]:
    """The unknown token is in the model's own vocabulary (HFC521); post-processor tokens have their ids."""
    data = facts.contents.json.get("tokenizer.json")
    if isinstance(data, dict):
        model = data.get("model")
        if not isinstance(model, dict):
            return
        kind, vocab = model.get("type"), model.get("vocab")
        fast = facts.json_vocab
        if isinstance(vocab, dict) and isinstance(model.get("unk_token"), str):
            unk = model["unk_token"]
            if unk not in vocab:
                added = fast.added.get(unk) if fast is not None else None
                where = f" (it is only an added token, id {added})" if added is not None else ""
                yield finding("HFC521", f"tokenizer.json: model.unk_token {unk!r} is not in the {kind or 'model'} "
                              f"model's vocabulary{where}; encoding a text with an unknown character fails with "
                              f"\"Unk token `{unk}` not found in the vocabulary\", so add it to model.vocab or set "
                              "model.unk_token to a token of the vocabulary", file="tokenizer.json",
                              tensor="$.model.unk_token")
        elif isinstance(vocab, list) and _is_id(model.get("unk_id")) and not 0 <= model["unk_id"] < len(vocab):
            yield finding("HFC521", f"tokenizer.json: model.unk_id {model['unk_id']} is outside the Unigram model's "
                          f"{len(vocab)} pieces; tokenizers refuses the file or fails on the first unknown character, "
                          "so set unk_id to the id of the unknown piece", file="tokenizer.json",
                          tensor="$.model.unk_id")
        if fast is not None:
            yield from _check_post_processor(data.get("post_processor"), fast)
        return
    vocab = facts.vocab
    unk = facts.named.get("unk_token", (None, None))[0]
    if vocab is None or unk is None or vocab.source not in ("vocab.json", "vocab.txt") or unk in vocab.base:
        return
    added = vocab.added.get(unk)
    if added is None:
        return  # not in the vocabulary at all: HFC504
    yield finding("HFC521", f"unk_token {unk!r} is not in {vocab.source} (it is only an added token, id {added}); the "
                  f"slow tokenizer maps every unknown word to None instead of an id (ValueError 'type of None "
                  f"unknown' when padding), so add {unk!r} to {vocab.source}", file=vocab.source,
                  tensor="$.unk_token")


def _check_post_processor(processor: Any, fast: Vocabulary, depth: int = 0) -> Iterator[Finding]:
    """Tokens the post-processor inserts (TemplateProcessing, BertProcessing, ...) with their ids."""
    if not isinstance(processor, dict) or depth > 8:
        return
    pairs: list[tuple[str, Any]] = []
    for key in ("sep", "cls"):
        value = processor.get(key)
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            pairs.append((value[0], value[1]))
    specials = processor.get("special_tokens")
    if isinstance(specials, dict):
        for entry in specials.values():
            if isinstance(entry, dict) and isinstance(entry.get("tokens"), list) and isinstance(entry.get("ids"), list):
                pairs.extend(zip(entry["tokens"], entry["ids"]))
    for token, token_id in pairs:
        if not isinstance(token, str) or not _is_id(token_id):
            continue
        known = fast.id_of(token)
        # A token missing from the vocabulary is left alone: classes that rebuild the post-processor on load
        # (NLLB's language codes) save a placeholder there.
        if known is not None and known != token_id:
            yield finding("HFC521", f"tokenizer.json: the post-processor inserts {token!r} as id {token_id}, but "
                          f"{token!r} has id {known} in the vocabulary; encoded texts get another special id than "
                          "the token's, so fix post_processor (re-save the tokenizer)", file="tokenizer.json",
                          tensor="$.post_processor", severity="warning")
    for child in processor.get("processors") or ():
        yield from _check_post_processor(child, fast, depth + 1)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "config.json", "chat_template.jinja", "normalizer.json", *SLOW_VOCAB_FILES, "target.spm",
                   "source.spm", "vocab.txt")
"""What AutoTokenizer reads: the only files copied for the transformers-backed load."""
TRANSFORMERS_TOKENIZER_TIMEOUT_S = 60.0


def _check_loads_in_transformers(facts: _Facts) -> Iterator[Finding]:
    """With --reference transformers: AutoTokenizer.from_pretrained in a subprocess (HFC522).

    Only for folders without custom code (no auto_map, no .py): the tokenizer files alone are copied
    into an empty temporary folder, which the child loads (offline, time-limited); nothing of the
    model folder is on the child's import path. Costs seconds (the child imports transformers), so it
    runs only when the user asked for transformers-backed checks.
    """
    import shutil
    import tempfile

    from .custom_code import auto_map_entries, load_tokenizer_in_subprocess

    contents = facts.contents
    folder = contents.folder
    if contents.options.reference != "transformers" or folder.python_files or auto_map_entries(contents):
        return
    names = [n for n in dict.fromkeys(TOKENIZER_FILES) if folder.has(n) and n not in folder.special_files
             and folder.contains(n)]
    if not any(n != "config.json" for n in names):
        return
    with tempfile.TemporaryDirectory(prefix="hfconv-tokenizer-") as work:
        for name in names:
            try:
                with open_regular(folder.path(name)) as source, open(os.path.join(work, name), "wb") as target:
                    shutil.copyfileobj(source, target)
            except (FormatError, OSError):
                return  # unreadable files have findings of their own
        result = load_tokenizer_in_subprocess(work, timeout=TRANSFORMERS_TOKENIZER_TIMEOUT_S)
    if result.status == "error":
        version = environment.installed_transformers_version()
        where = f"transformers {version}" if version else "the installed transformers"
        yield finding("HFC522", f"the tokenizer fails to load in {where}: {result.detail}; AutoTokenizer."
                      "from_pretrained fails the same way for every user of the folder", file="tokenizer_config.json"
                      if folder.has("tokenizer_config.json") else None)
    elif result.status == "timeout":
        yield finding("HFC522", f"the tokenizer did not load in transformers within {result.detail}; the subprocess "
                      "was stopped", file="tokenizer_config.json" if folder.has("tokenizer_config.json") else None,
                      severity="warning")


# --- chat template -------------------------------------------------------------------------------
def _read_template_text(folder: ModelFolder, name: str) -> str:
    """A template file of the folder as text; ValueError says why it cannot be read."""
    try:
        return _read_limited(folder, name, MAX_TEMPLATE_BYTES).decode("utf-8")
    except TokenizerFileError as exc:
        raise ValueError(exc.message) from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def _eos_ids(facts: _Facts) -> tuple[str, list[int]] | None:
    """(file, eos ids) that generate() stops at: generation_config.json's, else config.json's."""
    contents = facts.contents
    generation = contents.json.get("generation_config.json")
    if isinstance(generation, dict) and generation.get("eos_token_id") is not None:
        return "generation_config.json", _config_ids(generation, None).get("eos_token_id", [])
    config = facts.config
    if config is not None:
        ids = _config_ids(config, facts.text_config if facts.text_config is not config else None)
        if "eos_token_id" in ids:
            return "config.json", ids["eos_token_id"]
    return None


def _check_chat_template(facts: _Facts) -> Iterator[Finding]:
    """The chat template checks of checks/chat_template.py (run in a capped child process)."""
    vocab = facts.vocab
    specials = {role: token for role, (token, _file) in facts.named.items()} if vocab is not None else None
    # Only special tokens can end a turn for HFC513; ordinary added words ("###") are left alone.
    candidates = (set(vocab.special) | {t for t, _f in facts.named.values()} | {t for t, _f in facts.extra}
                  if vocab is not None else set())
    yield from check_chat_template(facts.contents, lambda name: _read_template_text(facts.contents.folder, name),
                                   specials, candidates, vocab.id_of if vocab is not None else (lambda _t: None),
                                   _eos_ids(facts))


# --- dtype ---------------------------------------------------------------------------------------
def check_dtype(contents: FolderContents) -> Iterator[Finding]:
    """config.json's torch_dtype / dtype against the dtype most floating-point weights are stored in."""
    config = contents.config
    if config is None or config.get("quantization_config") is not None:
        return
    key = "dtype" if isinstance(config.get("dtype"), str) else "torch_dtype"
    value = config.get(key)
    if not isinstance(value, str) or value not in TORCH_DTYPE:
        return
    declared = TORCH_DTYPE[value]
    stored = Counter(t.dtype for t in contents.loaded_tensors.values() if t.dtype in FLOAT_DTYPES)
    if not stored or declared not in FLOAT_DTYPES:
        return
    dominant, count = stored.most_common(1)[0]
    if dominant == declared:
        return
    total = sum(stored.values())
    yield finding("HFC514", f"config.json says {key} {value} but the weights are stored as {dominant} ({count} of "
                  f"{total} floating-point tensors); loaders trust the config, so set {key} to the stored dtype "
                  "unless the cast is intended", file="config.json", tensor=f"$.{key}")
