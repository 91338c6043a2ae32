"""Tokenizer checks: vocabulary, special tokens, token ids, embeddings, chat template.

The files are read by :mod:`.tokenizer_files`; ids against vocab_size and the embedding rows are
:mod:`.tokenizer_embeddings`; config.json's dtype against the weights is :mod:`.dtype`.

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
* the chat template parses (jinja2 sandbox) and ends an assistant turn with an eos id.

Nothing from the folder is executed: sentencepiece parses a protobuf, the chat template is only
compiled and rendered in a child process, inside jinja2's ImmutableSandboxedEnvironment, under
memory, CPU and time caps (checks/chat_template.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

from .. import environment
from ..contents import FolderContents
from ..discovery import ModelFolder
from ..findings import Finding, finding, register
from ..fsutil import is_safe_relative_name, open_regular
from ..tensors import FormatError
from .chat_template import MAX_TEMPLATE_BYTES, check_chat_template
from .tokenizer_embeddings import check_embedding_rows, check_vocab_size, input_rows
from .tokenizer_files import (
    ID_KEYS,
    IGNORED_FILE_KEYS,
    ROLE_OF_ID,
    SLOW_VOCAB_FILES,
    SP_FILES,
    SPECIAL_ROLES,
    SentencePieceModel,
    TokenizerFacts,
    TokenizerFileError,
    Vocabulary,
    declared_added_tokens,
    is_token_id,
    read_limited,
    read_sentencepiece,
    read_special_tokens,
    slow_vocabulary,
    vocabulary_of_json,
    with_declared_added_tokens,
)

# --- codes (HFC5xx) ------------------------------------------------------------------------------
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

# --- the check -----------------------------------------------------------------------------------
def check_tokenizer(contents: FolderContents) -> Iterator[Finding]:
    """Vocabulary, special tokens, ids, embedding rows, slow/fast agreement and the chat template."""
    facts = _gather(contents)
    yield from facts.findings
    yield from _check_file_references(facts)
    yield from check_vocab_size(facts)
    yield from _check_special_tokens(facts)
    yield from _check_added_tokens(facts)
    yield from _check_token_ids(facts)
    yield from check_embedding_rows(facts)
    yield from _check_slow_fast(facts)
    yield from _check_fast_against_slow(facts)
    yield from _check_missing_slow_file(facts)
    yield from _check_model_unk(facts)
    yield from _check_chat_template(facts)
    yield from _check_loads_in_transformers(facts)


def _gather(contents: FolderContents) -> TokenizerFacts:
    folder = contents.folder
    findings: list[Finding] = []
    tokenizer_json = contents.json.get("tokenizer.json")
    json_vocab = vocabulary_of_json(tokenizer_json) if isinstance(tokenizer_json, dict) else None

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
        vocab = slow_vocabulary(contents, sp_models, findings)
    if vocab is not None:
        vocab = with_declared_added_tokens(contents, vocab)
    elif (folder.has("tokenizer_config.json") or folder.has("special_tokens_map.json")) and not findings and \
            "tokenizer.json" not in contents.json_errors and not folder.has("tokenizer.json"):
        # (Read errors of the vocabulary files are findings of their own; no need to add this one.)
        findings.append(finding("HFC517", "no readable tokenizer vocabulary (tokenizer.json, tokenizer.model, "
                                "spiece.model, vocab.json or vocab.txt); vocabulary checks were skipped"))
    # 3. Beside tokenizer.json, the slow files too: use_fast=False (and SentencePiece tools) read them.
    slow_vocab = None
    if json_vocab is not None:
        slow_findings: list[Finding] = []
        slow_vocab = slow_vocabulary(contents, sp_models, slow_findings)
        for item in slow_findings:  # the fast tokenizer does not need them: use_fast=False fails
            if item.code != "HFC501" or item.file not in sp_models:
                findings.append(finding(item.code, item.message.replace(
                    "; re-download or re-save the tokenizer", "; the fast tokenizer uses tokenizer.json, but "
                    "use_fast=False fails, so re-download it or delete it").replace(
                    "; the slow tokenizer fails to load, replace", "; the fast tokenizer uses tokenizer.json, but "
                    "use_fast=False fails, so replace"), file=item.file, tensor=item.tensor, severity="warning"))
        if slow_vocab is not None:
            slow_vocab = with_declared_added_tokens(contents, slow_vocab)
    named, shadowed, extra, legacy_extra, disagreements = read_special_tokens(contents)
    findings.extend(disagreements)
    return TokenizerFacts(contents, findings, sp_models, vocab, json_vocab, named, extra, shadowed, legacy_extra,
                  slow_vocab)


# --- individual checks ---------------------------------------------------------------------------
def _check_file_references(facts: TokenizerFacts) -> Iterator[Finding]:
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


def _check_special_tokens(facts: TokenizerFacts) -> Iterator[Finding]:
    """Every special token must be in the vocabulary; transformers otherwise appends it silently."""
    vocab = facts.vocab
    if vocab is None:
        return
    rows = input_rows(facts)
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


def _check_added_tokens(facts: TokenizerFacts) -> Iterator[Finding]:
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
    for declared in declared_added_tokens(contents):
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
        ids = [v for v in values if is_token_id(v)]
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


def _check_token_ids(facts: TokenizerFacts) -> Iterator[Finding]:
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
            if is_token_id(own_size) and own_size > 0:
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


def _check_slow_fast(facts: TokenizerFacts) -> Iterator[Finding]:
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


def _check_fast_against_slow(facts: TokenizerFacts) -> Iterator[Finding]:
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


def _check_missing_slow_file(facts: TokenizerFacts) -> Iterator[Finding]:
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


def _check_model_unk(facts: TokenizerFacts) -> Iterator[Finding]:
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
        elif isinstance(vocab, list) and is_token_id(model.get("unk_id")) and not 0 <= model["unk_id"] < len(vocab):
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
        if not isinstance(token, str) or not is_token_id(token_id):
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


def _check_loads_in_transformers(facts: TokenizerFacts) -> Iterator[Finding]:
    """With --reference transformers: AutoTokenizer.from_pretrained in a subprocess (HFC522).

    Only for folders without custom code (no auto_map, no .py): the tokenizer files alone are copied
    into an empty temporary folder, which the child loads (offline, time-limited); nothing of the
    model folder is on the child's import path. Costs seconds (the child imports transformers), so it
    runs only when the user asked for transformers-backed checks.
    """
    contents = facts.contents
    folder = contents.folder
    if contents.options.reference != "transformers":
        return
    import shutil  # only for this check: --reference transformers
    import tempfile

    from .custom_code import auto_map_entries, load_tokenizer_in_subprocess

    if folder.python_files or auto_map_entries(contents):
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
        return read_limited(folder, name, MAX_TEMPLATE_BYTES).decode("utf-8")
    except TokenizerFileError as exc:
        raise ValueError(exc.message) from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def _eos_ids(facts: TokenizerFacts) -> tuple[str, list[int]] | None:
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


def _check_chat_template(facts: TokenizerFacts) -> Iterator[Finding]:
    """The chat template checks of checks/chat_template.py (run in a capped child process)."""
    vocab = facts.vocab
    specials = {role: token for role, (token, _file) in facts.named.items()} if vocab is not None else None
    # Only special tokens can end a turn for HFC513; ordinary added words ("###") are left alone.
    candidates = (set(vocab.special) | {t for t, _f in facts.named.values()} | {t for t, _f in facts.extra}
                  if vocab is not None else set())
    yield from check_chat_template(facts.contents, lambda name: _read_template_text(facts.contents.folder, name),
                                   specials, candidates, vocab.id_of if vocab is not None else (lambda _t: None),
                                   _eos_ids(facts))
