"""The metadata half of ``diff``: key-level differences of the JSON files loaders read, and
tokenizer.json's vocabulary and merges compared by content (not by bytes: a re-save that
reorders keys or changes indentation is no difference)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ..checks.tokenizer_files import vocabulary_of_json
from ..contents import FolderContents
from ..findings import Finding, about, finding
from .results import KeyChange, TokenizerDiff

__all__ = ["KEYED_FILES", "compare_metadata", "compare_tokenizer"]

KEYED_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json")
"""Files compared key by key (tokenizer.json is compared by content, see :func:`compare_tokenizer`)."""

MAX_CHANGES_PER_FILE = 200
"""Keys listed per file; more are summarised by a count (a key ``...``)."""
EXAMPLES = 20
"""Tokens listed per kind of vocabulary difference."""


def _unreadable(label: str, contents: FolderContents, name: str) -> Finding | None:
    error = contents.json_errors.get(name)
    if error is None:
        return None
    message = getattr(error, "message", None) or str(error)
    return finding("HFC962", about(f"{label}: {name}", f"{message}; not compared"), file=name)


def compare_metadata(a: FolderContents, b: FolderContents) -> tuple[list[KeyChange], list[Finding]]:
    """Key-level differences of :data:`KEYED_FILES`, and tokenizer.json's top-level sections
    other than its model (normalizer, pre_tokenizer, post_processor, decoder, ...)."""
    changes: list[KeyChange] = []
    findings: list[Finding] = []
    for name in (*KEYED_FILES, "tokenizer.json"):
        problems = [f for f in (_unreadable("A", a, name), _unreadable("B", b, name)) if f is not None]
        if problems:
            findings.extend(problems)
            continue
        in_a, in_b = a.folder.has(name), b.folder.has(name)
        if not in_a and not in_b:
            continue
        if in_a != in_b:
            changes.append(KeyChange(name, "", "only_a" if in_a else "only_b"))
            continue
        value_a, value_b = a.json.get(name), b.json.get(name)
        if name == "tokenizer.json" and isinstance(value_a, dict) and isinstance(value_b, dict):
            value_a = {k: v for k, v in value_a.items() if k not in ("model", "added_tokens")}
            value_b = {k: v for k, v in value_b.items() if k not in ("model", "added_tokens")}
        found = list(_key_changes(name, "", value_a, value_b))
        if len(found) > MAX_CHANGES_PER_FILE:
            extra = len(found) - MAX_CHANGES_PER_FILE
            found = found[:MAX_CHANGES_PER_FILE] + [KeyChange(name, "...", "changed", f"{extra} more keys differ",
                                                              f"{extra} more keys differ")]
        changes.extend(found)
    return changes, findings


def _key_changes(name: str, path: str, a: Any, b: Any) -> Iterator[KeyChange]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            inner = f"{path}.{key}" if path else str(key)
            if key not in b:
                yield KeyChange(name, inner, "only_a", a=a[key])
            elif key not in a:
                yield KeyChange(name, inner, "only_b", b=b[key])
            else:
                yield from _key_changes(name, inner, a[key], b[key])
        return
    if a != b or type(a) is not type(b):  # 1 and 1.0, True and 1 are different values to a loader
        yield KeyChange(name, path, "changed", a=a, b=b)


def _vocab(data: dict[str, Any]) -> Mapping[str, int]:
    """Token -> id of a tokenizer.json's model as tokenizers loads it (the checks' reader; a Unigram
    piece listed twice is its last id, as ``token_to_id`` gives)."""
    vocabulary = vocabulary_of_json(data, last_repeat=True)
    return vocabulary.base if vocabulary is not None else {}


def _merges(model: Any) -> list[str]:
    """BPE merges as ``"a b"`` strings (tokenizers writes ``"a b"`` or, since 0.20, ``["a", "b"]``)."""
    merges = model.get("merges") if isinstance(model, dict) else None
    if not isinstance(merges, list):
        return []
    return [m if isinstance(m, str) else " ".join(str(p) for p in m) if isinstance(m, list) else str(m)
            for m in merges]


def _added(data: Any) -> dict[str, tuple[Any, Any]]:
    tokens = data.get("added_tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, list):
        return {}
    return {str(t.get("content")): (t.get("id"), t.get("special")) for t in tokens if isinstance(t, dict)}


def compare_tokenizer(a: FolderContents, b: FolderContents) -> TokenizerDiff | None:
    """tokenizer.json of both folders by content; None unless both hold a readable one."""
    data_a, data_b = a.json.get("tokenizer.json"), b.json.get("tokenizer.json")
    if not isinstance(data_a, dict) or not isinstance(data_b, dict):
        return None
    vocab_a, vocab_b = _vocab(data_a), _vocab(data_b)
    only_a = [t for t in vocab_a if t not in vocab_b]
    only_b = [t for t in vocab_b if t not in vocab_a]
    renumbered = [(t, vocab_a[t], vocab_b[t]) for t in vocab_a if t in vocab_b and vocab_a[t] != vocab_b[t]]
    merges_a, merges_b = _merges(data_a.get("model")), _merges(data_b.get("model"))
    set_a, set_b = set(merges_a), set(merges_b)
    added_a, added_b = _added(data_a), _added(data_b)
    added_changed = [t for t in [*added_a, *(t for t in added_b if t not in added_a)]
                     if added_a.get(t) != added_b.get(t)]
    return TokenizerDiff(
        vocab_a=len(vocab_a), vocab_b=len(vocab_b),
        only_a=tuple(only_a[:EXAMPLES]), only_a_count=len(only_a),
        only_b=tuple(only_b[:EXAMPLES]), only_b_count=len(only_b),
        renumbered=tuple(renumbered[:EXAMPLES]), renumbered_count=len(renumbered),
        merges_a=len(merges_a), merges_b=len(merges_b),
        merges_only_a=len(set_a - set_b), merges_only_b=len(set_b - set_a),
        merges_reordered=set_a == set_b and merges_a != merges_b,
        added_tokens_changed=tuple(added_changed[:EXAMPLES]),
    )
