"""Reading a folder's tokenizer files: the vocabularies, the special tokens and the facts the checks share.

The readers never execute anything from the folder: sentencepiece parses a protobuf from bytes,
JSON is read strictly, every file is read under a size limit. :func:`.tokenizer.check_tokenizer`
gathers a :class:`TokenizerFacts` once per folder and runs its checks on it. Unreadable files are
findings of their own (HFC501, HFC516); special-token files that disagree are HFC515.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple, TypeGuard

from ..contents import FolderContents
from ..discovery import ModelFolder
from ..findings import Finding, finding, register
from ..fsutil import link_problem, open_regular
from ..jsonutil import JsonError, loads_strict
from ..tensors import FormatError

# --- codes (HFC5xx) ------------------------------------------------------------------------------
register("HFC501", "error", "tokenizer.model unreadable",
         "The SentencePiece model cannot be parsed (truncated, not SentencePiece, absurd size); the slow "
         "tokenizer fails to load, and so does the fast one when no tokenizer.json is present to use instead.",
         "Re-download the file, or replace it with the model's real tokenizer.model.",
         "tokenizer.model is not a valid SentencePiece model (it looks like a tiktoken BPE file); replace it "
         "with the real SentencePiece model")
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
class SentencePieceModel(NamedTuple):
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


def read_limited(folder: ModelFolder, name: str, max_bytes: int) -> bytes:
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
    data = read_limited(folder, name, MAX_SENTENCEPIECE_BYTES if max_bytes is None else max_bytes)
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


def is_token_id(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def vocabulary_of_json(data: dict, *, last_repeat: bool = False) -> Vocabulary | None:
    """Base vocabulary and added tokens of a parsed tokenizer.json, or None if it has no usable vocab.

    A Unigram piece listed twice keeps its first id here (the checks name both ids: HFC508), or
    with ``last_repeat`` its last: the id tokenizers' ``token_to_id`` gives it (its Unigram model
    maps each piece as it reads the list, the later entry over the earlier), which ``diff`` compares.
    """
    model = data.get("model")
    if not isinstance(model, dict):
        return None
    vocab = model.get("vocab")
    base: dict[str, int] = {}
    if isinstance(vocab, dict):
        base = {t: i for t, i in vocab.items() if is_token_id(i) and i >= 0}
        base_size = max(base.values(), default=-1) + 1
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
        for i, item in enumerate(vocab):
            if isinstance(item, list) and item and isinstance(item[0], str):
                if last_repeat:
                    base[item[0]] = i
                else:
                    base.setdefault(item[0], i)
        base_size = len(vocab)
    else:
        return None
    added: dict[str, int] = {}
    special: set[str] = set()
    for token in data.get("added_tokens") or ():
        if isinstance(token, dict) and isinstance(token.get("content"), str) and is_token_id(token.get("id")):
            added.setdefault(token["content"], token["id"])
            if token.get("special") is True:
                special.add(token["content"])
    return Vocabulary(source="tokenizer.json", base=base, base_size=base_size, added=added,
                      special=frozenset(special))


def _read_vocab_json(folder: ModelFolder, name: str) -> dict[str, int]:
    try:
        data = loads_strict(read_limited(folder, name, MAX_VOCAB_BYTES))
    except JsonError as exc:
        raise TokenizerFileError(f"is not valid JSON: {exc.message}") from None
    bad = next((k for k, v in data.items() if not is_token_id(v) or v < 0), None)
    if bad is not None:
        raise TokenizerFileError(f"maps {bad!r} to {data[bad]!r}, which is not a token id")
    return data


def _read_vocab_txt(folder: ModelFolder, name: str) -> dict[str, int]:
    try:
        text = read_limited(folder, name, MAX_VOCAB_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerFileError(f"is not UTF-8 text (byte {exc.start})") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    # As BertTokenizer's load_vocab: one token per line, id = line number, the last duplicate wins.
    return {token: index for index, token in enumerate(lines)}


@dataclass
class TokenizerFacts:
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
    embedding_rows: dict[str, int] | None = None
    """Name -> rows of the loaded weights' vocabulary matrices, once a check has looked for them (a pass
    over every tensor name: three checks read them; see tokenizer_embeddings.embedding_rows)."""

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
        return value if is_token_id(value) and value > 0 else None


def _pegasus_offset(contents: FolderContents) -> int:
    """The id shift of PegasusTokenizer's (slow) SentencePiece pieces, 0 for every other tokenizer."""
    config = contents.json.get("tokenizer_config.json")
    if not isinstance(config, dict) or config.get("tokenizer_class") != "PegasusTokenizer":
        return 0
    offset = config.get("offset", 103)
    return offset if is_token_id(offset) and 0 < offset <= 10_000 else 0


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


class ShiftedLayout(NamedTuple):
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


def slow_vocabulary(contents: FolderContents, sp_models: dict[str, SentencePieceModel],
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
            own = {t.content for t in declared_added_tokens(contents) if t.id < offset} if offset else set()
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


class DeclaredToken(NamedTuple):
    """An added token as tokenizer_config.json (added_tokens_decoder) or added_tokens.json declares it."""

    file: str
    content: str
    id: int
    special: bool


def declared_added_tokens(contents: FolderContents) -> list[DeclaredToken]:
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
            if is_token_id(token_id) and token_id >= 0:
                out.append(DeclaredToken("added_tokens.json", text, token_id, False))
    return out


def with_declared_added_tokens(contents: FolderContents, vocab: Vocabulary) -> Vocabulary:
    """Add tokens the tokenizer config declares (and T5's virtual <extra_id_N>) that vocab lacks."""
    added = dict(vocab.added)
    special = set(vocab.special)
    for token in declared_added_tokens(contents):
        if token.content not in added and token.content not in vocab.base:
            added[token.content] = token.id
        if token.special:
            special.add(token.content)
    config = contents.json.get("tokenizer_config.json")
    extra_ids = config.get("extra_ids") if isinstance(config, dict) else None
    if vocab.source == "spiece.model" and is_token_id(extra_ids) and 0 < extra_ids <= 10_000:
        # T5Tokenizer (slow): <extra_id_N> has id vocab_size - 1 - N, past the SentencePiece pieces.
        for n in range(extra_ids):
            added.setdefault(f"<extra_id_{n}>", vocab.base_size + extra_ids - 1 - n)
    return Vocabulary(source=vocab.source, base=vocab.base, base_size=vocab.base_size, added=added,
                      special=frozenset(special))


def read_special_tokens(contents: FolderContents) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str, str]],
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
