"""The shape-expression evaluator of the rule tables: parse, check and evaluate one expression.

A shape expression is a dimension written over config fields, e.g.
``num_key_value_heads * head_dim``. It is parsed with :mod:`ast` and evaluated by a tiny
whitelist evaluator (names, integers, ``+ - * // %``, comparisons, ``and/or/not``,
``x if c else y`` and the calls in :data:`FUNCTIONS`); nothing is ever passed to ``eval``.
Because the expression is data, the config fields that drive each dimension are known, which is
what lets a finding say *which field* is the likely culprit.

Config values resolve the way transformers' config classes resolve them: the value in
config.json when it is there and not null, else the family's class default
(``Family.defaults``), else a derived expression (``Family.derived``, e.g.
``head_dim = hidden_size // num_attention_heads``).

Pure functions: nothing here imports torch or transformers.
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

FUNCTIONS = frozenset({"default", "given", "startswith", "member"})
"""Calls a shape expression may make:

- ``default(name, expr)``: the config value of ``name`` when given (or defaulted), else ``expr``;
- ``given(name)``: whether config.json sets ``name`` to a non-null value;
- ``startswith(text, prefix)``: string prefix test (T5's ``feed_forward_proj``);
- ``member(x, list)``: ``x in list`` (Qwen2-MoE's ``mlp_only_layers``).
"""

_BINOPS: dict[type, tuple[str, int, Any]] = {
    ast.Add: ("+", 1, operator.add),
    ast.Sub: ("-", 1, operator.sub),
    ast.Mult: ("*", 2, operator.mul),
    ast.FloorDiv: ("//", 2, operator.floordiv),
    ast.Mod: ("%", 2, operator.mod),
}
_COMPARE: dict[type, Any] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


class ExpressionError(ValueError):
    """A shape expression uses syntax outside the whitelist (a bug in a rule table)."""


class ConfigValueError(ValueError):
    """A config value needed for a shape is unusable (not an integer, negative, division by 0)."""

    def __init__(self, fields: tuple[str, ...], message: str):
        super().__init__(message)
        self.fields = fields
        self.message = message


@functools.cache
def parse_expression(text: str) -> ast.expr:
    """Parse ``text`` and check every node against the whitelist.

    Raises:
        ExpressionError: the expression uses anything but the allowed syntax.
    """
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"{text!r} is not an expression: {exc.msg}") from None
    for node in ast.walk(tree.body):
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, str)) and node.value is not None:
                raise ExpressionError(f"{text!r}: constant {node.value!r} is not allowed")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise ExpressionError(f"{text!r}: operator {type(node.op).__name__} is not allowed")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.Not)):
                raise ExpressionError(f"{text!r}: operator {type(node.op).__name__} is not allowed")
        elif isinstance(node, ast.Compare):
            if not all(type(op) in _COMPARE for op in node.ops):
                raise ExpressionError(f"{text!r}: comparison is not allowed")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise ExpressionError(f"{text!r}: only calls to {sorted(FUNCTIONS)} are allowed")
            if node.func.id in ("default", "given") and not isinstance(node.args[0] if node.args else None, ast.Name):
                raise ExpressionError(f"{text!r}: {node.func.id}() takes a config field name first")
        elif not isinstance(node, (ast.Name, ast.BoolOp, ast.IfExp, ast.Load, ast.And, ast.Or,
                                   ast.Not, ast.USub, *_BINOPS, *_COMPARE)):
            raise ExpressionError(f"{text!r}: {type(node).__name__} is not allowed")
    return tree.body


def _identifier(node: ast.expr) -> str:
    """The name a call or its field argument uses (:func:`parse_expression` allows nothing else there)."""
    if not isinstance(node, ast.Name):
        raise ExpressionError(f"{ast.unparse(node)!r} is not a name")
    return node.id


@functools.cache
def expression_names(text: str) -> frozenset[str]:
    """Every name an expression mentions (fields, placeholders, head variables)."""
    return frozenset(n.id for n in ast.walk(parse_expression(text)) if isinstance(n, ast.Name)
                     and n.id not in FUNCTIONS)


class Term(NamedTuple):
    """An evaluated (sub)expression and how it came about."""

    value: Any
    drivers: tuple[str, ...] = ()
    """Config fields whose values decide this value (in order of appearance)."""
    text: str = ""
    """The expression over field names, e.g. ``num_key_value_heads * head_dim``."""
    numbers: str = ""
    """The same with the values filled in, e.g. ``2 * 8``."""
    notes: tuple[str, ...] = ()
    """How fields missing from config.json were filled (defaults, derivations)."""
    prec: int = 3
    """Operator precedence of ``text`` (3 = atom), for parenthesising."""


def merge_unique(*tuples: Iterable[str]) -> tuple[str, ...]:
    """The strings of ``tuples`` in order of first appearance, each once."""
    return tuple(dict.fromkeys(x for t in tuples for x in t))


_MISSING = object()


class FieldSource(Protocol):
    """What a :class:`Scope` reads of a family (:class:`hfconv.rules.families.Family` is one)."""

    @property
    def model_type(self) -> str: ...
    @property
    def defaults(self) -> Mapping[str, Any]: ...
    @property
    def derived(self) -> Mapping[str, str]: ...
    @property
    def env_defaults(self) -> Mapping[str, Any]: ...


class Scope:
    """Resolves names for one family and one config; caches config-level values."""

    def __init__(self, family: FieldSource, config: Mapping[str, Any], env: Mapping[str, Any] | None = None):
        self.family = family
        self.config = config
        self.env = dict(family.env_defaults)
        self.env.update(env or {})
        self._fields: dict[str, Term] = {}
        self._resolving: set[str] = set()

    def given(self, name: str) -> bool:
        return self.config.get(name) is not None

    def field(self, name: str) -> Term:
        """The value of a config field as transformers' config class would hold it."""
        if name in self._fields:
            return self._fields[name]
        if name in self._resolving:
            raise ExpressionError(f"{self.family.model_type}: {name} is defined in terms of itself")
        self._resolving.add(name)
        try:
            term = self._resolve(name)
        finally:
            self._resolving.discard(name)
        self._fields[name] = term
        return term

    def _resolve(self, name: str) -> Term:
        raw = self.config.get(name, _MISSING)
        if raw is not _MISSING and raw is not None:
            return Term(raw, (name,), name, _fmt(raw))
        default = self.family.defaults.get(name)
        if raw is _MISSING and default is not None:
            note = f"{name} is not in config.json (default {_fmt(default)})"
            return Term(default, (name,), name, _fmt(default), (note,))
        if name in self.family.derived:
            sub = self.evaluate(self.family.derived[name])
            note = f"{name} is not set, so {name} = {sub.text}"
            if sub.numbers != sub.text:
                note += f" = {sub.numbers}"
            # A derivation from constants only (n_embd = default(hidden_size, 768)) is driven by the field itself.
            return Term(sub.value, sub.drivers or (name,), name, _fmt(sub.value), sub.notes + (note,))
        if name == "num_labels":
            return self._num_labels()
        if raw is None and name in self.family.defaults:
            return Term(None, (name,), name, "null")
        raise ConfigValueError((name,), f"config.json has no {name}")

    def _num_labels(self) -> Term:
        # PreTrainedConfig: len(id2label) when given, else the num_labels kwarg, else 2.
        id2label = self.config.get("id2label")
        if isinstance(id2label, dict) and id2label:
            return Term(len(id2label), ("id2label",), "len(id2label)", str(len(id2label)))
        if isinstance(self.config.get("num_labels"), int):
            return Term(self.config["num_labels"], ("num_labels",), "num_labels", str(self.config["num_labels"]))
        return Term(2, ("id2label",), "num_labels", "2", ("config.json has no id2label (2 labels by default)",))

    def evaluate(self, text: str, local: Mapping[str, int] | None = None) -> Term:
        """Evaluate a whitelisted expression; ``local`` binds placeholders such as ``i``."""
        return self._eval(parse_expression(text), local or {})

    # One method per node kind; each returns a Term.
    def _eval(self, node: ast.expr, local: Mapping[str, int]) -> Term:
        if isinstance(node, ast.Constant):
            return Term(node.value, (), repr(node.value) if isinstance(node.value, str) else str(node.value),
                        repr(node.value) if isinstance(node.value, str) else str(node.value))
        if isinstance(node, ast.Name):
            if node.id in local:
                return Term(local[node.id], (), node.id, str(local[node.id]))
            if node.id in self.env:
                value = self.env[node.id]
                return Term(value, (), node.id, _fmt(value))
            return self.field(node.id)
        if isinstance(node, ast.BinOp):
            return self._binop(node, local)
        if isinstance(node, ast.UnaryOp):
            operand = self._eval(node.operand, local)
            if isinstance(node.op, ast.Not):
                return Term(not operand.value, operand.drivers, f"not {operand.text}", f"not {operand.numbers}",
                            operand.notes, 0)
            value = as_int(operand, "-")
            return Term(-value, operand.drivers, f"-{operand.text}", f"-{operand.numbers}", operand.notes, 3)
        if isinstance(node, ast.BoolOp):
            terms = []
            for value_node in node.values:
                term = self._eval(value_node, local)
                terms.append(term)
                if isinstance(node.op, ast.And) and not term.value:
                    break
                if isinstance(node.op, ast.Or) and term.value:
                    break
            last = terms[-1]
            word = " and " if isinstance(node.op, ast.And) else " or "
            return Term(last.value, merge_unique(*(t.drivers for t in terms)), word.join(t.text for t in terms),
                        word.join(t.numbers for t in terms), merge_unique(*(t.notes for t in terms)), 0)
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, local)
            terms = [left]
            result = True
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = self._eval(right_node, local)
                terms.append(right)
                try:
                    result = result and _COMPARE[type(op)](left.value, right.value)
                except TypeError:
                    raise ConfigValueError(merge_unique(left.drivers, right.drivers),
                                           f"cannot compare {left.text}={left.value!r} with {right.value!r}") from None
                left = right
            return Term(result, merge_unique(*(t.drivers for t in terms)), ast.unparse(node), str(result),
                        merge_unique(*(t.notes for t in terms)), 0)
        if isinstance(node, ast.IfExp):
            test = self._eval(node.test, local)
            branch = self._eval(node.body if test.value else node.orelse, local)
            # The branch decides the value; the condition's fields can be the culprit too.
            return Term(branch.value, merge_unique(branch.drivers, test.drivers), branch.text, branch.numbers,
                        merge_unique(branch.notes, test.notes), branch.prec)
        if isinstance(node, ast.Call):
            return self._call(node, local)
        raise ExpressionError(f"cannot evaluate {ast.unparse(node)}")  # parse_expression forbids it

    def _binop(self, node: ast.BinOp, local: Mapping[str, int]) -> Term:
        symbol, prec, func = _BINOPS[type(node.op)]
        left = self._eval(node.left, local)
        right = self._eval(node.right, local)
        lv, rv = as_int(left, symbol), as_int(right, symbol)
        if symbol in ("//", "%") and rv == 0:
            raise ConfigValueError(merge_unique(right.drivers, left.drivers),
                                   f"{right.text} is 0 in {left.text} {symbol} {right.text}")
        ltext, lnum = _paren(left, prec, False)
        rtext, rnum = _paren(right, prec, symbol in ("-", "//", "%"))
        return Term(func(lv, rv), merge_unique(left.drivers, right.drivers), f"{ltext} {symbol} {rtext}",
                    f"{lnum} {symbol} {rnum}", merge_unique(left.notes, right.notes), prec)

    def _call(self, node: ast.Call, local: Mapping[str, int]) -> Term:
        name = _identifier(node.func)
        if name == "given":
            field_name = _identifier(node.args[0])
            return Term(self.given(field_name), (field_name,), f"given({field_name})", str(self.given(field_name)))
        if name == "default":
            field_name = _identifier(node.args[0])
            defaulted = field_name not in self.config and self.family.defaults.get(field_name) is not None
            if self.given(field_name) or defaulted:
                return self.field(field_name)
            return self._eval(node.args[1], local)
        args = [self._eval(a, local) for a in node.args]
        drivers = merge_unique(*(a.drivers for a in args))
        notes = merge_unique(*(a.notes for a in args))
        text = f"{name}({', '.join(a.text for a in args)})"
        if name == "startswith":
            value = isinstance(args[0].value, str) and args[0].value.startswith(args[1].value)
        else:  # member
            value = isinstance(args[1].value, (list, tuple)) and args[0].value in args[1].value
        return Term(value, drivers, text, str(value), notes)


def _paren(term: Term, prec: int, strict: bool) -> tuple[str, str]:
    if term.prec < prec or (strict and term.prec == prec):
        return f"({term.text})", f"({term.numbers})"
    return term.text, term.numbers


def as_int(term: Term, symbol: str) -> int:
    """``term``'s value, which must be an integer (not a bool).

    Raises:
        ConfigValueError: naming the fields behind ``term``.
    """
    value = term.value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigValueError(term.drivers or (term.text,),
                               f"{term.text} is {value!r}, not an integer (needed for a tensor shape)")
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return str(value)
