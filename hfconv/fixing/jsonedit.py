"""JSON files edited by ``fix``: parsed keeping key order (duplicate keys folded when every copy
holds the same value), and written back in the style they were written in where that style is
one ``json.dumps`` reproduces, so that a diff shows only what the fix changed."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from ..fsutil import open_regular
from ..jsonutil import JsonError, loads_strict

__all__ = ["Document", "DifferingDuplicate", "dumps_like", "read_document"]

MAX_JSON_BYTES = 50_000_000
"""Largest JSON file fix reads (the validator's own limit)."""


class DifferingDuplicate(ValueError):
    """A key given twice in one object with different values: which one is meant is not provable."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} is given twice with different values")
        self.key = key


@dataclass
class Document:
    """One JSON file being fixed."""

    name: str
    text: str
    """The file's text as read."""
    value: Any
    """The parsed value (edited in place by the fixes)."""
    duplicates: tuple[str, ...]
    """Keys that were given twice (with the same value) and are written once."""
    style: dict[str, Any]
    """``json.dumps`` keyword arguments that write the text back (see :func:`dumps_like`)."""
    trailing_newline: bool


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=True)


def read_document(path: str | os.PathLike[str], name: str, allow_nonfinite: bool = True) -> Document:
    """Read ``path`` as a JSON object, folding duplicate keys whose copies are equal.

    Raises:
        DifferingDuplicate: a key is given twice with different values.
        JsonError: the file is not strict JSON for another reason (too large, syntax, ...).
        FormatError: the file cannot be opened or is not a regular file.
    """
    with open_regular(path) as handle:
        data = handle.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise JsonError("too_large", f"file is over the {MAX_JSON_BYTES}-byte limit")
    duplicates: list[str] = []
    try:
        value = loads_strict(data, require_object=True, allow_nonfinite=allow_nonfinite)
    except JsonError as exc:
        if exc.kind != "duplicate_key":
            raise
        value = _loads_folding(data.decode("utf-8"), duplicates)
        # Folded, the text must be strict JSON in every other way too (no NaN, no lone surrogate).
        loads_strict(json.dumps(value, ensure_ascii=False), require_object=True, allow_nonfinite=allow_nonfinite)
    text = data.decode("utf-8")
    return Document(name=name, text=text, value=value, duplicates=tuple(duplicates), style=_style_of(text, value),
                    trailing_newline=text.endswith("\n"))


def _loads_folding(text: str, duplicates: list[str]) -> Any:
    """The text parsed (already known to be strict JSON but for duplicate keys), folding equal copies."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                if _canonical(result[key]) != _canonical(value) or type(result[key]) is not type(value):
                    raise DifferingDuplicate(key)
                duplicates.append(key)
                continue
            result[key] = value
        return result

    value = json.loads(text, object_pairs_hook=pairs)
    if not isinstance(value, dict):
        raise JsonError("not_object", "top-level JSON value is not an object")
    return value


def _style_of(text: str, value: Any) -> dict[str, Any]:
    """The ``json.dumps`` arguments that reproduce ``text`` from ``value`` (the indent read from
    the text, then key order and escaping tried); else that indent with the key order kept."""
    body = text.rstrip("\n")
    match = re.search(r"\n([ \t]+)\S", body)
    indent: int | str | None
    if match:
        found = match.group(1)
        indent = "\t" if found.startswith("\t") else len(found)
    else:
        indent = None if "\n" not in body else 0
    for sort_keys in (True, False):
        for ensure_ascii in (False, True):
            style: dict[str, Any] = {"indent": indent, "sort_keys": sort_keys, "ensure_ascii": ensure_ascii}
            if indent is None:
                for separators in ((", ", ": "), (",", ":")):
                    if json.dumps(value, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii) == body:
                        return {**style, "separators": separators}
            elif json.dumps(value, **style) == body:
                return style
    return {"indent": indent, "sort_keys": False, "ensure_ascii": False}


def dumps_like(document: Document, value: Any | None = None) -> str:
    """``value`` (default: the document's value) as text in the document's style."""
    text = json.dumps(document.value if value is None else value, **document.style)
    return text + ("\n" if document.trailing_newline else "")
