"""A fast, sound pre-check of a JSON value against one of hfconv's shipped JSON Schemas.

Importing jsonschema (and referencing, attrs, rpds, ...) costs more CPU than validating a whole
small folder, yet nearly every metadata file is valid. :func:`certainly_valid` evaluates exactly
the keywords the schemas in ``hfconv/schemas`` use, in plain Python, and answers True only when
jsonschema's Draft 2020-12 validator would report no error; on anything else (a keyword it does
not know, a ``$ref`` it cannot follow, an equality JSON Schema and Python see differently, a
regular expression whose dialects may disagree) it answers False, and the caller asks jsonschema,
which also words the errors.

Each keyword is evaluated three-valued: True (holds), False (certainly fails) or None (cannot
tell). The "certainly fails" answers matter under ``not`` and ``if``: ``not`` inverts only a
certain answer, and an ``if`` that cannot be decided requires both ``then`` and ``else``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["certainly_valid", "schema_errors"]

Verdict = bool | None
"""True: the value is valid; False: it certainly is not; None: cannot tell."""
Keyword = Callable[[Any, Mapping[str, Any], Any, int], Verdict]
"""A keyword's evaluator: (its value, the schema holding it, the instance, the depth)."""

_JSON_TYPES = (dict, list, str, int, float, bool, type(None))
_ANNOTATIONS = frozenset({"$schema", "$comment", "$defs", "title", "description", "default", "examples",
                          "deprecated", "readOnly", "writeOnly"})
_MAX_DEPTH = 200
"""Nested schema steps (``$ref`` included) before the evaluator gives up (a ``$ref`` loop that
consumes no part of the value, or a value nested deeper than any real file)."""


def schema_errors(schema: Mapping[str, Any], instance: Any, validator: Callable[[], Any], *,
                  strict_integers: bool = True) -> Iterable[Any]:
    """jsonschema's errors of ``instance`` against ``schema`` (``validator()`` is a jsonschema
    validator of that same schema, made only when needed): none, without importing jsonschema,
    where :func:`certainly_valid` vouches for it."""
    if certainly_valid(schema, instance, strict_integers=strict_integers):
        return ()
    return validator().iter_errors(instance)


def certainly_valid(schema: Mapping[str, Any], instance: Any, *, strict_integers: bool = True) -> bool:
    """Whether ``instance`` is valid against ``schema`` for certain (False: maybe not, ask jsonschema).

    Args:
        schema: a Draft 2020-12 schema whose ``$ref`` values point into its own ``$defs``.
        instance: a value as ``json.loads`` gives it.
        strict_integers: "integer" means a Python int that is not a bool (hfconv's rule: 32.0 is
            not an integer); False keeps JSON Schema's rule (an integral float is one).
    """
    return _Evaluator(schema, strict_integers).check(schema, instance, 0) is True


class _Evaluator:
    def __init__(self, root: Mapping[str, Any], strict_integers: bool) -> None:
        self.root = root
        self.strict_integers = strict_integers
        self.keywords: dict[str, Keyword] = {
            "$ref": self._ref, "allOf": self._all_of, "anyOf": self._any_of, "not": self._not,
            "if": self._if, "then": _ignored, "else": _ignored,
            "type": self._type, "const": _const, "enum": _enum,
            "minimum": _bound(operator.lt), "maximum": _bound(operator.gt),
            "exclusiveMinimum": _bound(operator.le), "exclusiveMaximum": _bound(operator.ge),
            "minLength": _length(operator.lt), "maxLength": _length(operator.gt), "pattern": _pattern,
            "properties": self._properties, "required": _required, "additionalProperties": self._additional,
            "propertyNames": self._property_names, "minProperties": _min_properties, "items": self._items,
        }

    def check(self, schema: Any, instance: Any, depth: int) -> Verdict:
        """1. Boolean schemas; 2. JSON values only, within the depth bound; 3. every keyword must
        hold: one that fails makes the schema fail, an unknown one (or a doubt) leaves it open."""
        if schema is True or schema is False:
            return schema
        if not isinstance(schema, dict) or depth > _MAX_DEPTH or type(instance) not in _JSON_TYPES:
            return None
        results = []
        for keyword, value in schema.items():
            if keyword in _ANNOTATIONS or keyword.startswith("x-") or (keyword == "$id" and schema is self.root):
                continue
            evaluate = self.keywords.get(keyword)
            if evaluate is None:
                return None  # unknown: it might even change how the others read (a nested $id)
            results.append(evaluate(value, schema, instance, depth + 1))
        return _every(results)

    # --- applicators ---------------------------------------------------------------------------
    def _ref(self, ref: Any, _schema: Mapping[str, Any], instance: Any, depth: int) -> Verdict:
        """Only ``#/$defs/<name>`` (no JSON Pointer escapes) in the root schema."""
        if not isinstance(ref, str) or not ref.startswith("#/$defs/") or "~" in ref or "%" in ref:
            return None
        name = ref[len("#/$defs/"):]
        defs = self.root.get("$defs")
        if "/" in name or not isinstance(defs, dict) or name not in defs:
            return None
        return self.check(defs[name], instance, depth)

    def _all_of(self, branches: Any, _schema: Mapping[str, Any], instance: Any, depth: int) -> Verdict:
        if not isinstance(branches, list):
            return None
        results = [self.check(branch, instance, depth) for branch in branches]
        return _every(results)

    def _any_of(self, branches: Any, _schema: Mapping[str, Any], instance: Any, depth: int) -> Verdict:
        if not isinstance(branches, list) or not branches:
            return None
        results = [self.check(branch, instance, depth) for branch in branches]
        return _some(results)

    def _not(self, inner: Any, _schema: Mapping[str, Any], instance: Any, depth: int) -> Verdict:
        result = self.check(inner, instance, depth)
        return None if result is None else not result

    def _if(self, condition: Any, schema: Mapping[str, Any], instance: Any, depth: int) -> Verdict:
        """The branch the condition picks; both branches when it cannot be decided."""
        holds = self.check(condition, instance, depth)
        then = self.check(schema.get("then", True), instance, depth) if holds is not False else None
        otherwise = self.check(schema.get("else", True), instance, depth) if holds is not True else None
        if holds is not None:
            return then if holds else otherwise
        return then if then is otherwise else None  # undecided: both branches must agree

    def _properties(self, properties: Any, _schema: Mapping[str, Any], instance: Any, depth: int) -> Verdict:
        if not isinstance(properties, dict):
            return None
        if not isinstance(instance, dict):
            return True
        results = [self.check(sub, instance[key], depth) for key, sub in properties.items() if key in instance]
        return _every(results)

    def _additional(self, extra: Any, schema: Mapping[str, Any], instance: Any, depth: int) -> Verdict:
        if "patternProperties" in schema or not isinstance(schema.get("properties", {}), dict):
            return None
        if not isinstance(instance, dict):
            return True
        known = schema.get("properties", {})
        results = [self.check(extra, value, depth) for key, value in instance.items() if key not in known]
        return _every(results)

    def _property_names(self, names: Any, _schema: Mapping[str, Any], instance: Any, depth: int) -> Verdict:
        if not isinstance(instance, dict):
            return True
        results = [self.check(names, key, depth) for key in instance]
        return _every(results)

    def _items(self, items: Any, schema: Mapping[str, Any], instance: Any, depth: int) -> Verdict:
        if "prefixItems" in schema:
            return None
        if not isinstance(instance, list):
            return True
        results = [self.check(items, item, depth) for item in instance]
        return _every(results)

    # --- assertions ----------------------------------------------------------------------------
    def _type(self, types: Any, _schema: Mapping[str, Any], instance: Any, _depth: int) -> Verdict:
        names = [types] if isinstance(types, str) else types
        if not isinstance(names, list) or not names:
            return None
        results = [self._is_type(instance, name) for name in names]
        return _some(results)

    def _is_type(self, value: Any, name: Any) -> Verdict:
        if name == "integer":
            if type(value) is float and not self.strict_integers:
                return value.is_integer()
            return type(value) is int
        if name == "number":
            return type(value) in (int, float)
        kind = {"null": type(None), "boolean": bool, "string": str, "array": list, "object": dict}.get(name)
        return None if kind is None else type(value) is kind


def _every(results: list[Verdict]) -> Verdict:
    """All hold (allOf, the keywords of one schema, every property or item)."""
    return False if False in results else None if None in results else True


def _some(results: list[Verdict]) -> Verdict:
    """At least one holds (anyOf, a list of types, enum)."""
    return True if True in results else None if None in results else False


def _ignored(_value: Any, _schema: Mapping[str, Any], _instance: Any, _depth: int) -> Verdict:
    """``then``/``else``: evaluated by ``if`` (alone they assert nothing)."""
    return True


_SCALARS = (str, bool, int, float, type(None))


def _same(one: Any, two: Any) -> Verdict:
    """JSON Schema equality where jsonschema's is plain Python equality for certain: two values of
    one type among str, bool, int and null; a str, bool or null against another scalar type is
    never equal (True is not 1). Anything else (1 == 1.0 in JSON Schema, floats, containers): None."""
    if type(one) is type(two) and type(one) in (str, bool, int, type(None)):
        return one == two
    if type(one) in _SCALARS and type(two) in _SCALARS and not {type(one), type(two)} <= {int, float}:
        return False
    return None


def _const(value: Any, _schema: Mapping[str, Any], instance: Any, _depth: int) -> Verdict:
    return _same(instance, value)


def _enum(values: Any, _schema: Mapping[str, Any], instance: Any, _depth: int) -> Verdict:
    if not isinstance(values, list):
        return None
    results = [_same(instance, value) for value in values]
    return _some(results)


def _bound(fails: Callable[[Any, Any], bool]) -> Keyword:
    """minimum and its kin, on numbers only, failing exactly where jsonschema's test fails."""
    def check(limit: Any, _schema: Mapping[str, Any], instance: Any, _depth: int) -> Verdict:
        if type(instance) not in (int, float):
            return True
        return None if type(limit) not in (int, float) else not fails(instance, limit)
    return check


def _length(fails: Callable[[int, int], bool]) -> Keyword:
    """minLength/maxLength on strings, in code points (``len``), as jsonschema counts."""
    def check(limit: Any, _schema: Mapping[str, Any], instance: Any, _depth: int) -> Verdict:
        if type(instance) is not str:
            return True
        return None if type(limit) is not int else not fails(len(instance), limit)
    return check


def _pattern(pattern: Any, _schema: Mapping[str, Any], instance: Any, _depth: int) -> Verdict:
    """Only where every regex dialect agrees: a pattern without escapes or ``(?`` extensions other
    than ``(?:``, and an ASCII string without line breaks (Python's ``$`` also matches before a
    final newline, ECMA's does not)."""
    if type(instance) is not str:
        return True
    if (not isinstance(pattern, str) or "\\" in pattern or pattern.count("(?") != pattern.count("(?:")
            or not instance.isascii() or "\n" in instance or "\r" in instance):
        return None
    return re.search(pattern, instance) is not None


def _required(names: Any, _schema: Mapping[str, Any], instance: Any, _depth: int) -> Verdict:
    if not isinstance(names, list):
        return None
    return not isinstance(instance, dict) or all(name in instance for name in names)


def _min_properties(count: Any, _schema: Mapping[str, Any], instance: Any, _depth: int) -> Verdict:
    if type(count) is not int:
        return None
    return not isinstance(instance, dict) or len(instance) >= count
