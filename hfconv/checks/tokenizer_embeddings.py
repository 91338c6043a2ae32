"""The tokenizer's ids against config.json's vocab_size and the embedding rows (HFC502, HFC503, HFC510).

(Rows against vocab_size is the shape check's HFC601; these need the tokenizer's vocabulary.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from ..dtypes import FLOAT_DTYPES
from ..findings import Finding, finding, register
from .schemas import known_model_types
from .tokenizer_files import EMBED_SUFFIXES, TokenizerFacts

if TYPE_CHECKING:
    from ..tensors import TensorMeta

# --- codes (HFC5xx) ------------------------------------------------------------------------------
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
register("HFC510", "error", "special token past embedding",
         "A special token's id is not below the embedding's row count; using it (padding, bos) indexes "
         "past the embedding matrix.",
         "Resize the embeddings to cover the token, or use a token inside the vocabulary.",
         "pad_token '<pad>' has id 32000 but model.embed_tokens.weight has only 32000 rows")


def check_vocab_size(facts: TokenizerFacts) -> Iterator[Finding]:
    """Every id the tokenizer produces must index the input embedding (vocab_size when rows are unknown)."""
    vocab, vocab_size = facts.vocab, facts.vocab_size
    if vocab is None:
        return
    extra = len([i for i in vocab.added.values() if i >= vocab.base_size])
    what = f"the tokenizer ({vocab.source}{f' + {extra} added tokens' if extra else ''})"
    rows = input_rows(facts)
    known = (facts.config or {}).get("model_type") in known_model_types()
    # Outside hfconv's family table an embedding may legitimately hold more rows than vocab_size
    # (mllama: vocab_size + 8); there the rows decide.
    rows_cover = rows is not None and rows[1] >= vocab.size and not known
    if rows is not None and vocab.size > rows[1]:
        name, count = rows
        yield finding("HFC502", f"{name} has {count} rows but {what} has ids up to {vocab.size - 1}; resize the "
                      f"embeddings to at least {vocab.size} rows and update vocab_size",
                      file=facts.contents.file_of(name), tensor=name)
    elif vocab_size is not None and vocab.size > vocab_size and not rows_cover:
        yield finding("HFC502", f"config.json vocab_size is {vocab_size} but {what} has ids up to {vocab.size - 1}; "
                      f"resize the embeddings to at least {vocab.size} rows and update vocab_size",
                      file="config.json", tensor="$.vocab_size")
    if vocab_size is not None and vocab.size < vocab_size:
        yield finding("HFC503", f"config.json vocab_size {vocab_size} is larger than {what}'s {vocab.size} ids "
                      "(padded embedding; harmless)", file="config.json", tensor="$.vocab_size")


OUTPUT_SUFFIXES = ("lm_head.weight", "embed_out.weight")


def embedding_rows(facts: TokenizerFacts) -> dict[str, int]:
    """Name -> first dimension of the floating-point vocabulary matrices of the loaded weights (looked
    for once per folder, kept in ``facts``)."""
    if facts.embedding_rows is None:
        facts.embedding_rows = _embedding_rows(facts.contents.loaded_tensors)
    return facts.embedding_rows


def _embedding_rows(tensors: Mapping[str, TensorMeta]) -> dict[str, int]:
    rows: dict[str, int] = {}
    # The names by suffix in C first: this runs over every tensor (100,000s in the largest folders).
    for name in itertools.compress(tensors, map(str.endswith, tensors, itertools.repeat(_EMBED_ENDINGS))):
        meta = tensors[name]
        if (name in EMBED_SUFFIXES or name.endswith(_DOTTED_EMBED_SUFFIXES)) and len(meta.shape) == 2 \
                and meta.dtype in FLOAT_DTYPES:
            rows[name] = meta.shape[0]
    return rows


_DOTTED_EMBED_SUFFIXES = tuple("." + suffix for suffix in EMBED_SUFFIXES)
_EMBED_ENDINGS = tuple(EMBED_SUFFIXES)
"""Every name :func:`embedding_rows` keeps ends with one (dotted, or the whole name)."""


def input_rows(facts: TokenizerFacts) -> tuple[str, int] | None:
    """(name, rows) of the smallest input embedding: the ids a tokenizer may produce must be below it.

    Output heads are left out: some models (mllama) embed more input ids than the head predicts.
    """
    rows = {n: r for n, r in embedding_rows(facts).items()
            if not any(n == s or n.endswith("." + s) for s in OUTPUT_SUFFIXES)}
    return min(rows.items(), key=lambda item: item[1]) if rows else None


def check_embedding_rows(facts: TokenizerFacts) -> Iterator[Finding]:
    """Every special token's id must be below the embedding's row count.

    (Rows against vocab_size is the shape check's HFC601; this one needs the tokenizer.)
    """
    vocab = facts.vocab
    if vocab is None:  # no ids to check: the rows are not looked for (a pass over every tensor name)
        return
    rows = embedding_rows(facts)
    if not rows:
        return
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
                          f"rows; resize the embeddings to cover it{tail}", file=facts.contents.file_of(smallest_name),
                          tensor=smallest_name, severity="warning" if only_old else None)
