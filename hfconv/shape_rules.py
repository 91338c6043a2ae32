"""Tensor names and shapes implied by config.json, one declarative table per architecture family.

Pure data and pure functions: nothing here imports torch or transformers, so the rule table
can be tested with plain dicts and tuples.

A family's table is a list of :class:`Rule`: a tensor-name template (``{i}`` = layer index,
``{e}`` = expert index, ...) and one *shape expression* per dimension over config fields, e.g.
``("num_key_value_heads * head_dim", "hidden_size")``. The expressions are parsed with
:mod:`ast` and evaluated by a tiny whitelist evaluator (names, integers, ``+ - * // %``,
comparisons, ``and/or/not``, ``x if c else y`` and the calls in :data:`FUNCTIONS`); nothing is
ever passed to ``eval``. Because the expression is data, the config fields that drive each
dimension are known, which is what lets a finding say *which field* is the likely culprit.

Config values resolve the way transformers' config classes resolve them: the value in
config.json when it is there and not null, else the family's class default
(:attr:`Family.defaults`), else a derived expression (:attr:`Family.derived`, e.g.
``head_dim = hidden_size // num_attention_heads``). Defaults and derivations were taken from
transformers' ``configuration_<family>.py`` and ``modeling_<family>.py``.

Checkpoint names are those ``save_pretrained`` writes (the on-disk layout, which transformers
keeps stable across versions even where v5 fuses tensors in memory, e.g. Mixtral experts).
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# --- the expression evaluator ---------------------------------------------------------------

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


@dataclass(frozen=True)
class Term:
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


def _merge(*tuples: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x for t in tuples for x in t))


_MISSING = object()


class Scope:
    """Resolves names for one family and one config; caches config-level values."""

    def __init__(self, family: Family, config: Mapping[str, Any], env: Mapping[str, Any] | None = None):
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
            value = _int(operand, "-")
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
            return Term(last.value, _merge(*(t.drivers for t in terms)), word.join(t.text for t in terms),
                        word.join(t.numbers for t in terms), _merge(*(t.notes for t in terms)), 0)
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
                    raise ConfigValueError(_merge(left.drivers, right.drivers),
                                           f"cannot compare {left.text}={left.value!r} with {right.value!r}") from None
                left = right
            return Term(result, _merge(*(t.drivers for t in terms)), ast.unparse(node), str(result),
                        _merge(*(t.notes for t in terms)), 0)
        if isinstance(node, ast.IfExp):
            test = self._eval(node.test, local)
            branch = self._eval(node.body if test.value else node.orelse, local)
            # The branch decides the value; the condition's fields can be the culprit too.
            return Term(branch.value, _merge(branch.drivers, test.drivers), branch.text, branch.numbers,
                        _merge(branch.notes, test.notes), branch.prec)
        if isinstance(node, ast.Call):
            return self._call(node, local)
        raise ExpressionError(f"cannot evaluate {ast.unparse(node)}")  # parse_expression forbids it

    def _binop(self, node: ast.BinOp, local: Mapping[str, int]) -> Term:
        symbol, prec, func = _BINOPS[type(node.op)]
        left = self._eval(node.left, local)
        right = self._eval(node.right, local)
        lv, rv = _int(left, symbol), _int(right, symbol)
        if symbol in ("//", "%") and rv == 0:
            raise ConfigValueError(_merge(right.drivers, left.drivers),
                                   f"{right.text} is 0 in {left.text} {symbol} {right.text}")
        ltext, lnum = _paren(left, prec, False)
        rtext, rnum = _paren(right, prec, symbol in ("-", "//", "%"))
        return Term(func(lv, rv), _merge(left.drivers, right.drivers), f"{ltext} {symbol} {rtext}",
                    f"{lnum} {symbol} {rnum}", _merge(left.notes, right.notes), prec)

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
        drivers = _merge(*(a.drivers for a in args))
        notes = _merge(*(a.notes for a in args))
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


def _int(term: Term, symbol: str) -> int:
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


# --- the rule tables ------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([a-z])\}")


@dataclass(frozen=True)
class Rule:
    """One tensor (or one tensor per layer/expert) of a family."""

    name: str
    """Name template, e.g. ``model.layers.{i}.self_attn.k_proj.weight``."""
    shape: tuple[str, ...]
    """One expression per dimension."""
    when: str | None = None
    """Condition for the tensor to exist at all (e.g. ``attention_bias``)."""
    optional: str | None = None
    """Condition under which the tensor may be absent (e.g. ``tie_word_embeddings``)."""

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_PLACEHOLDER.findall(self.name)))


def R(name: str, *shape: str, when: str | None = None, optional: str | None = None) -> Rule:  # noqa: N802
    """Shorthand used by the tables."""
    return Rule(name, tuple(shape), when, optional)


@dataclass(frozen=True)
class Head:
    """A model class of a family: extra tensors beside the base model, and how it names them."""

    rules: tuple[Rule, ...] = ()
    env: Mapping[str, Any] = field(default_factory=dict)
    """Head variables the base rules read (``add_pooling_layer``, ``has_decoder``)."""
    base_prefixed: bool = True
    """False for the bare base-model class, whose state dict drops the base-model prefix."""
    prefix: str = ""
    """Prepended to the base model's names by heads that nest it under an attribute of their own
    where the family's other classes do not (T5ForSequenceClassification: ``transformer.``)."""


@dataclass(frozen=True)
class Family:
    """The rule table of one ``model_type``."""

    model_type: str
    class_prefix: str
    """Class-name stem, e.g. ``Llama`` for ``LlamaForCausalLM``."""
    prefix: str
    """Base-model prefix in checkpoint names (``model.``, ``transformer.``, ``bert.``, or ``""``)."""
    ranges: Mapping[str, tuple[str, str]]
    """Placeholder -> (count expression, noun), e.g. ``{"i": ("num_hidden_layers", "layers")}``."""
    defaults: Mapping[str, Any]
    """Class defaults used when config.json lacks the key."""
    derived: Mapping[str, str]
    """Expressions used when the key is absent (and has no default) or null."""
    rules: tuple[Rule, ...]
    heads: Mapping[str, Head]
    """Class-name suffix (``ForCausalLM``, ``Model``) -> head."""
    default_head: str
    env_defaults: Mapping[str, Any] = field(default_factory=dict)

    def head_for(self, architecture: str | None) -> tuple[str, Head] | None:
        """The head of ``architecture`` (exact class name first, then the longest suffix)."""
        if architecture is None:
            return self.default_head, self.heads[self.default_head]
        for suffix, head in self.heads.items():
            if architecture == self.class_prefix + suffix:
                return suffix, head
        matches = [s for s in self.heads if architecture.endswith(s) and s != "Model"]
        if matches:
            suffix = max(matches, key=len)
            return suffix, self.heads[suffix]
        return None


# Shared fragments. Names are written as save_pretrained writes them for the ...ForCausalLM
# class; the base-model class drops the prefix (Head.base_prefixed=False).

_L = "model.layers.{i}."


def _llama_attention(q_bias: str | None, o_bias: str | None) -> tuple[Rule, ...]:
    a = _L + "self_attn."
    rules = [
        R(a + "q_proj.weight", "num_attention_heads * head_dim", "hidden_size"),
        R(a + "k_proj.weight", "num_key_value_heads * head_dim", "hidden_size"),
        R(a + "v_proj.weight", "num_key_value_heads * head_dim", "hidden_size"),
        R(a + "o_proj.weight", "hidden_size", "num_attention_heads * head_dim"),
    ]
    if q_bias:
        rules += [
            R(a + "q_proj.bias", "num_attention_heads * head_dim", when=q_bias),
            R(a + "k_proj.bias", "num_key_value_heads * head_dim", when=q_bias),
            R(a + "v_proj.bias", "num_key_value_heads * head_dim", when=q_bias),
        ]
    if o_bias:
        rules.append(R(a + "o_proj.bias", "hidden_size", when=o_bias))
    return tuple(rules)


def _gated_mlp(stem: str, size: str, bias: str | None = None, when: str | None = None) -> tuple[Rule, ...]:
    rules = [
        R(stem + "gate_proj.weight", size, "hidden_size", when=when),
        R(stem + "up_proj.weight", size, "hidden_size", when=when),
        R(stem + "down_proj.weight", "hidden_size", size, when=when),
    ]
    if bias:
        cond = bias if when is None else f"({when}) and ({bias})"
        rules += [
            R(stem + "gate_proj.bias", size, when=cond),
            R(stem + "up_proj.bias", size, when=cond),
            R(stem + "down_proj.bias", "hidden_size", when=cond),
        ]
    return tuple(rules)


_DECODER_ENDS = (
    R("model.embed_tokens.weight", "vocab_size", "hidden_size"),
    R(_L + "input_layernorm.weight", "hidden_size"),
    R(_L + "post_attention_layernorm.weight", "hidden_size"),
    R("model.norm.weight", "hidden_size"),
)

_DECODER_HEADS: dict[str, Head] = {
    "ForCausalLM": Head((R("lm_head.weight", "vocab_size", "hidden_size", optional="tie_word_embeddings"),)),
    "Model": Head(base_prefixed=False),
    # transformers' GenericForSequenceClassification / GenericForTokenClassification.
    "ForSequenceClassification": Head((R("score.weight", "num_labels", "hidden_size"),)),
    "ForTokenClassification": Head((
        R("score.weight", "num_labels", "hidden_size"),
        R("score.bias", "num_labels", when="default(token_classification_bias, 1)"),
    )),
}

_LAYERS = {"i": ("num_hidden_layers", "layers")}


def _decoder(model_type: str, class_prefix: str, defaults: dict, derived: dict, rules: tuple[Rule, ...],
             ranges: Mapping[str, tuple[str, str]] = _LAYERS) -> Family:
    return Family(model_type, class_prefix, "model.", ranges, defaults, derived,
                  _DECODER_ENDS + rules, _DECODER_HEADS, "ForCausalLM")


_GQA = {"num_key_value_heads": "num_attention_heads", "head_dim": "hidden_size // num_attention_heads"}

LLAMA = _decoder(
    "llama", "Llama",
    dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
         num_attention_heads=32, attention_bias=False, mlp_bias=False, tie_word_embeddings=False),
    _GQA,
    _llama_attention("attention_bias", "attention_bias") + _gated_mlp(_L + "mlp.", "intermediate_size", "mlp_bias"),
)

MISTRAL = _decoder(
    "mistral", "Mistral",
    dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    _GQA,
    _llama_attention(None, None) + _gated_mlp(_L + "mlp.", "intermediate_size"),
)

QWEN2 = _decoder(
    "qwen2", "Qwen2",
    dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
         num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
    _GQA,
    # q/k/v always carry a bias in Qwen2, o_proj never.
    _llama_attention("1", None) + _gated_mlp(_L + "mlp.", "intermediate_size"),
)

QWEN3 = _decoder(
    "qwen3", "Qwen3",
    dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
         num_attention_heads=32, num_key_value_heads=32, head_dim=128, attention_bias=False,
         tie_word_embeddings=False),
    _GQA,
    _llama_attention("attention_bias", "attention_bias") + (
        R(_L + "self_attn.q_norm.weight", "head_dim"),
        R(_L + "self_attn.k_norm.weight", "head_dim"),
    ) + _gated_mlp(_L + "mlp.", "intermediate_size"),
)

_MOE = _L + "block_sparse_moe."
MIXTRAL = _decoder(
    "mixtral", "Mixtral",
    dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    {**_GQA, "num_local_experts": "default(num_experts, 8)"},
    _llama_attention(None, None) + (
        R(_MOE + "gate.weight", "num_local_experts", "hidden_size"),
        R(_MOE + "experts.{e}.w1.weight", "intermediate_size", "hidden_size"),
        R(_MOE + "experts.{e}.w2.weight", "hidden_size", "intermediate_size"),
        R(_MOE + "experts.{e}.w3.weight", "intermediate_size", "hidden_size"),
    ),
    ranges={**_LAYERS, "e": ("num_local_experts", "experts")},
)

# Qwen2MoeDecoderLayer: a sparse block unless the layer is in mlp_only_layers or off the step.
_SPARSE = "not member(i, mlp_only_layers) and num_experts > 0 and (i + 1) % decoder_sparse_step == 0"
QWEN2_MOE = _decoder(
    "qwen2_moe", "Qwen2Moe",
    dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
         num_attention_heads=16, num_key_value_heads=16, decoder_sparse_step=1, moe_intermediate_size=1408,
         shared_expert_intermediate_size=5632, num_experts=60, mlp_only_layers=[], qkv_bias=True,
         tie_word_embeddings=False),
    _GQA,
    _llama_attention("qkv_bias", None) + (
        R(_L + "mlp.gate.weight", "num_experts", "hidden_size", when=_SPARSE),
        R(_L + "mlp.shared_expert_gate.weight", "1", "hidden_size", when=_SPARSE),
    ) + _gated_mlp(_L + "mlp.experts.{e}.", "moe_intermediate_size", when=_SPARSE)
      + _gated_mlp(_L + "mlp.shared_expert.", "shared_expert_intermediate_size", when=_SPARSE)
      + _gated_mlp(_L + "mlp.", "intermediate_size", when=f"not ({_SPARSE})"),
    ranges={**_LAYERS, "e": ("num_experts", "experts")},
)

GEMMA = _decoder(
    "gemma", "Gemma",
    dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
         num_attention_heads=16, num_key_value_heads=16, head_dim=256, attention_bias=False,
         tie_word_embeddings=True),
    _GQA,
    _llama_attention("attention_bias", "attention_bias") + _gated_mlp(_L + "mlp.", "intermediate_size"),
)

GEMMA2 = _decoder(
    "gemma2", "Gemma2",
    dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
         num_attention_heads=8, num_key_value_heads=4, head_dim=256, attention_bias=False,
         tie_word_embeddings=True),
    _GQA,
    _llama_attention("attention_bias", "attention_bias") + _gated_mlp(_L + "mlp.", "intermediate_size") + (
        R(_L + "pre_feedforward_layernorm.weight", "hidden_size"),
        R(_L + "post_feedforward_layernorm.weight", "hidden_size"),
    ),
)

PHI3 = _decoder(
    "phi3", "Phi3",
    dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
         num_attention_heads=32, tie_word_embeddings=False),
    _GQA,
    (
        # Fused projections: qkv_proj = [q; k; v] rows, gate_up_proj = [gate; up] rows.
        R(_L + "self_attn.qkv_proj.weight", "num_attention_heads * head_dim + 2 * num_key_value_heads * head_dim",
          "hidden_size"),
        R(_L + "self_attn.o_proj.weight", "hidden_size", "num_attention_heads * head_dim"),
        R(_L + "mlp.gate_up_proj.weight", "2 * intermediate_size", "hidden_size"),
        R(_L + "mlp.down_proj.weight", "hidden_size", "intermediate_size"),
    ),
)

# GPT-2 uses Conv1D, whose weight is stored [in_features, out_features] (transposed vs nn.Linear).
_H = "transformer.h.{i}."
GPT2 = Family(
    "gpt2", "GPT2", "transformer.", {"i": ("n_layer", "layers")},
    dict(vocab_size=50257, add_cross_attention=False, tie_word_embeddings=True),
    # attribute_map: hidden_size -> n_embd, max_position_embeddings -> n_positions, ...
    dict(n_embd="default(hidden_size, 768)", n_layer="default(num_hidden_layers, 12)",
         n_positions="default(max_position_embeddings, 1024)", n_inner="4 * n_embd"),
    (
        R("transformer.wte.weight", "vocab_size", "n_embd"),
        R("transformer.wpe.weight", "n_positions", "n_embd"),
        R(_H + "ln_1.weight", "n_embd"), R(_H + "ln_1.bias", "n_embd"),
        R(_H + "attn.c_attn.weight", "n_embd", "3 * n_embd"), R(_H + "attn.c_attn.bias", "3 * n_embd"),
        R(_H + "attn.c_proj.weight", "n_embd", "n_embd"), R(_H + "attn.c_proj.bias", "n_embd"),
        R(_H + "ln_2.weight", "n_embd"), R(_H + "ln_2.bias", "n_embd"),
        R(_H + "mlp.c_fc.weight", "n_embd", "n_inner"), R(_H + "mlp.c_fc.bias", "n_inner"),
        R(_H + "mlp.c_proj.weight", "n_inner", "n_embd"), R(_H + "mlp.c_proj.bias", "n_embd"),
        R(_H + "crossattention.c_attn.weight", "n_embd", "2 * n_embd", when="add_cross_attention"),
        R(_H + "crossattention.c_attn.bias", "2 * n_embd", when="add_cross_attention"),
        R(_H + "crossattention.q_attn.weight", "n_embd", "n_embd", when="add_cross_attention"),
        R(_H + "crossattention.q_attn.bias", "n_embd", when="add_cross_attention"),
        R(_H + "crossattention.c_proj.weight", "n_embd", "n_embd", when="add_cross_attention"),
        R(_H + "crossattention.c_proj.bias", "n_embd", when="add_cross_attention"),
        R(_H + "ln_cross_attn.weight", "n_embd", when="add_cross_attention"),
        R(_H + "ln_cross_attn.bias", "n_embd", when="add_cross_attention"),
        R("transformer.ln_f.weight", "n_embd"), R("transformer.ln_f.bias", "n_embd"),
    ),
    {
        "LMHeadModel": Head((R("lm_head.weight", "vocab_size", "n_embd", optional="tie_word_embeddings"),)),
        "Model": Head(base_prefixed=False),
        "ForSequenceClassification": Head((R("score.weight", "num_labels", "n_embd"),)),
        "ForTokenClassification": Head((R("classifier.weight", "num_labels", "n_embd"),
                                        R("classifier.bias", "num_labels"))),
    },
    "LMHeadModel",
)

_N = "gpt_neox.layers.{i}."
GPT_NEOX = Family(
    "gpt_neox", "GPTNeoX", "gpt_neox.", _LAYERS,
    dict(vocab_size=50432, hidden_size=6144, num_hidden_layers=44, intermediate_size=24576,
         attention_bias=True, tie_word_embeddings=False),
    {},
    (
        R("gpt_neox.embed_in.weight", "vocab_size", "hidden_size"),
        R(_N + "input_layernorm.weight", "hidden_size"), R(_N + "input_layernorm.bias", "hidden_size"),
        R(_N + "post_attention_layernorm.weight", "hidden_size"),
        R(_N + "post_attention_layernorm.bias", "hidden_size"),
        R(_N + "attention.query_key_value.weight", "3 * hidden_size", "hidden_size"),
        R(_N + "attention.query_key_value.bias", "3 * hidden_size", when="attention_bias"),
        R(_N + "attention.dense.weight", "hidden_size", "hidden_size"),
        R(_N + "attention.dense.bias", "hidden_size", when="attention_bias"),
        R(_N + "mlp.dense_h_to_4h.weight", "intermediate_size", "hidden_size"),
        R(_N + "mlp.dense_h_to_4h.bias", "intermediate_size"),
        R(_N + "mlp.dense_4h_to_h.weight", "hidden_size", "intermediate_size"),
        R(_N + "mlp.dense_4h_to_h.bias", "hidden_size"),
        R("gpt_neox.final_layer_norm.weight", "hidden_size"), R("gpt_neox.final_layer_norm.bias", "hidden_size"),
    ),
    {
        # The checkpoint name is embed_out (transformers v5 renames it to lm_head in memory).
        "ForCausalLM": Head((R("embed_out.weight", "vocab_size", "hidden_size", optional="tie_word_embeddings"),)),
        "Model": Head(base_prefixed=False),
        "ForSequenceClassification": Head((R("score.weight", "num_labels", "hidden_size"),)),
        "ForTokenClassification": Head((R("classifier.weight", "num_labels", "hidden_size"),
                                        R("classifier.bias", "num_labels"))),
    },
    "ForCausalLM",
)

_F = "transformer.h.{i}."
# FalconDecoderLayer: two parallel layer norms for the new decoder architecture by default.
_FALCON_LN2 = "parallel_attn and num_ln_in_parallel_attn == 2"
FALCON = Family(
    "falcon", "Falcon", "transformer.", _LAYERS,
    dict(vocab_size=65024, num_hidden_layers=32, num_attention_heads=71, new_decoder_architecture=False,
         multi_query=True, parallel_attn=True, bias=False, tie_word_embeddings=True),
    dict(hidden_size="default(n_embed, 4544)", num_kv_heads="num_attention_heads",
         ffn_hidden_size="4 * hidden_size", num_ln_in_parallel_attn="2 if new_decoder_architecture else 0",
         head_dim="hidden_size // num_attention_heads"),
    (
        R("transformer.word_embeddings.weight", "vocab_size", "hidden_size"),
        R(_F + "self_attention.query_key_value.weight",
          "(num_kv_heads * 2 + num_attention_heads) * head_dim if new_decoder_architecture else "
          "(hidden_size + 2 * head_dim if multi_query else 3 * hidden_size)", "hidden_size"),
        R(_F + "self_attention.query_key_value.bias",
          "(num_kv_heads * 2 + num_attention_heads) * head_dim if new_decoder_architecture else "
          "(hidden_size + 2 * head_dim if multi_query else 3 * hidden_size)", when="bias"),
        R(_F + "self_attention.dense.weight", "hidden_size", "hidden_size"),
        R(_F + "self_attention.dense.bias", "hidden_size", when="bias"),
        R(_F + "mlp.dense_h_to_4h.weight", "ffn_hidden_size", "hidden_size"),
        R(_F + "mlp.dense_h_to_4h.bias", "ffn_hidden_size", when="bias"),
        R(_F + "mlp.dense_4h_to_h.weight", "hidden_size", "ffn_hidden_size"),
        R(_F + "mlp.dense_4h_to_h.bias", "hidden_size", when="bias"),
        R(_F + "input_layernorm.weight", "hidden_size", when=f"not ({_FALCON_LN2})"),
        R(_F + "input_layernorm.bias", "hidden_size", when=f"not ({_FALCON_LN2})"),
        R(_F + "post_attention_layernorm.weight", "hidden_size", when="not parallel_attn"),
        R(_F + "post_attention_layernorm.bias", "hidden_size", when="not parallel_attn"),
        R(_F + "ln_attn.weight", "hidden_size", when=_FALCON_LN2),
        R(_F + "ln_attn.bias", "hidden_size", when=_FALCON_LN2),
        R(_F + "ln_mlp.weight", "hidden_size", when=_FALCON_LN2),
        R(_F + "ln_mlp.bias", "hidden_size", when=_FALCON_LN2),
        R("transformer.ln_f.weight", "hidden_size"), R("transformer.ln_f.bias", "hidden_size"),
    ),
    {
        "ForCausalLM": Head((R("lm_head.weight", "vocab_size", "hidden_size", optional="tie_word_embeddings"),)),
        "Model": Head(base_prefixed=False),
        "ForSequenceClassification": Head((R("score.weight", "num_labels", "hidden_size"),)),
        "ForTokenClassification": Head((R("classifier.weight", "num_labels", "hidden_size"),
                                        R("classifier.bias", "num_labels"))),
    },
    "ForCausalLM",
)


def _bert_encoder(p: str) -> tuple[Rule, ...]:
    """BERT and RoBERTa share the encoder; ``p`` is the base prefix (``bert.``/``roberta.``)."""
    x = p + "encoder.layer.{i}."
    rules = [
        R(p + "embeddings.word_embeddings.weight", "vocab_size", "hidden_size"),
        R(p + "embeddings.position_embeddings.weight", "max_position_embeddings", "hidden_size"),
        R(p + "embeddings.token_type_embeddings.weight", "type_vocab_size", "hidden_size"),
        R(p + "embeddings.LayerNorm.weight", "hidden_size"), R(p + "embeddings.LayerNorm.bias", "hidden_size"),
    ]
    for block, when in (("attention.", None), ("crossattention.", "add_cross_attention")):
        for proj in ("query", "key", "value"):
            rules += [R(x + block + f"self.{proj}.weight", "hidden_size", "hidden_size", when=when),
                      R(x + block + f"self.{proj}.bias", "hidden_size", when=when)]
        rules += [
            R(x + block + "output.dense.weight", "hidden_size", "hidden_size", when=when),
            R(x + block + "output.dense.bias", "hidden_size", when=when),
            R(x + block + "output.LayerNorm.weight", "hidden_size", when=when),
            R(x + block + "output.LayerNorm.bias", "hidden_size", when=when),
        ]
    rules += [
        R(x + "intermediate.dense.weight", "intermediate_size", "hidden_size"),
        R(x + "intermediate.dense.bias", "intermediate_size"),
        R(x + "output.dense.weight", "hidden_size", "intermediate_size"),
        R(x + "output.dense.bias", "hidden_size"),
        R(x + "output.LayerNorm.weight", "hidden_size"), R(x + "output.LayerNorm.bias", "hidden_size"),
        # The pooler exists with add_pooling_layer; checkpoints saved from a pooled class keep it
        # (bert-base-uncased does), and the unpooled heads tolerate it.
        R(p + "pooler.dense.weight", "hidden_size", "hidden_size", optional="not add_pooling_layer"),
        R(p + "pooler.dense.bias", "hidden_size", optional="not add_pooling_layer"),
    ]
    return tuple(rules)


_BERT_MLM = (
    R("cls.predictions.bias", "vocab_size"),
    R("cls.predictions.transform.dense.weight", "hidden_size", "hidden_size"),
    R("cls.predictions.transform.dense.bias", "hidden_size"),
    R("cls.predictions.transform.LayerNorm.weight", "hidden_size"),
    R("cls.predictions.transform.LayerNorm.bias", "hidden_size"),
    R("cls.predictions.decoder.weight", "vocab_size", "hidden_size", optional="tie_word_embeddings"),
    R("cls.predictions.decoder.bias", "vocab_size", optional="1"),  # alias of cls.predictions.bias
)
_BERT_NSP = (R("cls.seq_relationship.weight", "2", "hidden_size"), R("cls.seq_relationship.bias", "2"))
_BERT_NSP_LEFTOVER = tuple(Rule(r.name, r.shape, optional="1") for r in _BERT_NSP)
_NO_POOL = {"add_pooling_layer": False}
_ENCODER_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         max_position_embeddings=512, type_vocab_size=2, add_cross_attention=False,
                         tie_word_embeddings=True)


def _classifier(name: str) -> tuple[Rule, ...]:
    return (R(f"{name}.weight", "num_labels", "hidden_size"), R(f"{name}.bias", "num_labels"))


BERT = Family(
    "bert", "Bert", "bert.", _LAYERS, dict(vocab_size=30522, **_ENCODER_DEFAULTS), {}, _bert_encoder("bert."),
    {
        "Model": Head(base_prefixed=False),
        # Pre-training checkpoints (bert-base-uncased) keep the NSP head: tolerated, not required.
        "ForMaskedLM": Head(_BERT_MLM + _BERT_NSP_LEFTOVER, _NO_POOL),
        "LMHeadModel": Head(_BERT_MLM + _BERT_NSP_LEFTOVER, _NO_POOL),
        "ForPreTraining": Head(_BERT_MLM + _BERT_NSP),
        "ForNextSentencePrediction": Head(_BERT_NSP),
        "ForSequenceClassification": Head(_classifier("classifier")),
        "ForTokenClassification": Head(_classifier("classifier"), _NO_POOL),
        "ForQuestionAnswering": Head(_classifier("qa_outputs"), _NO_POOL),
    },
    "Model",
    env_defaults={"add_pooling_layer": True},
)

_ROBERTA_LM = (
    R("lm_head.dense.weight", "hidden_size", "hidden_size"), R("lm_head.dense.bias", "hidden_size"),
    R("lm_head.layer_norm.weight", "hidden_size"), R("lm_head.layer_norm.bias", "hidden_size"),
    R("lm_head.decoder.weight", "vocab_size", "hidden_size", optional="tie_word_embeddings"),
    R("lm_head.decoder.bias", "vocab_size", optional="1"),  # alias of lm_head.bias
    R("lm_head.bias", "vocab_size"),
)
ROBERTA = Family(
    "roberta", "Roberta", "roberta.", _LAYERS, dict(vocab_size=50265, **_ENCODER_DEFAULTS), {},
    _bert_encoder("roberta."),
    {
        "Model": Head(base_prefixed=False),
        "ForMaskedLM": Head(_ROBERTA_LM, _NO_POOL),
        "ForCausalLM": Head(_ROBERTA_LM, _NO_POOL),
        "ForSequenceClassification": Head((
            R("classifier.dense.weight", "hidden_size", "hidden_size"), R("classifier.dense.bias", "hidden_size"),
        ) + _classifier("classifier.out_proj"), _NO_POOL),
        "ForTokenClassification": Head(_classifier("classifier"), _NO_POOL),
        "ForQuestionAnswering": Head(_classifier("qa_outputs"), _NO_POOL),
    },
    "ForMaskedLM",
    env_defaults={"add_pooling_layer": True},
)


def _t5_stack(stack: str, i: str) -> tuple[Rule, ...]:
    b = f"{stack}.block.{{{i}}}.layer."
    decoder = stack == "decoder"
    when = "has_decoder" if decoder else None
    ff = "2" if decoder else "1"
    rules = [
        R(f"{stack}.embed_tokens.weight", "vocab_size", "d_model", when=when, optional="1"),  # alias of shared
        R(f"{stack}.final_layer_norm.weight", "d_model", when=when),
    ]
    attentions = [("0.SelfAttention.", True)] + ([("1.EncDecAttention.", False)] if decoder else [])
    for attn, relative in attentions:
        rules += [
            R(b + attn + "q.weight", "num_heads * d_kv", "d_model", when=when),
            R(b + attn + "k.weight", "num_heads * d_kv", "d_model", when=when),
            R(b + attn + "v.weight", "num_heads * d_kv", "d_model", when=when),
            R(b + attn + "o.weight", "d_model", "num_heads * d_kv", when=when),
            R(b + attn.split(".")[0] + ".layer_norm.weight", "d_model", when=when),
        ]
        if relative:  # only the first block has the relative position bias
            rules.append(R(b + attn + "relative_attention_bias.weight", "relative_attention_num_buckets",
                           "num_heads", when=f"{i} == 0" + (f" and {when}" if when else "")))
    gated = "is_gated_act" + (f" and {when}" if when else "")
    plain = "not is_gated_act" + (f" and {when}" if when else "")
    rules += [
        R(b + ff + ".DenseReluDense.wi.weight", "d_ff", "d_model", when=plain),
        R(b + ff + ".DenseReluDense.wi_0.weight", "d_ff", "d_model", when=gated),
        R(b + ff + ".DenseReluDense.wi_1.weight", "d_ff", "d_model", when=gated),
        R(b + ff + ".DenseReluDense.wo.weight", "d_model", "d_ff", when=when),
        R(b + ff + ".layer_norm.weight", "d_model", when=when),
    ]
    return tuple(rules)


T5 = Family(
    "t5", "T5", "", {"i": ("num_layers", "encoder layers"), "j": ("num_decoder_layers", "decoder layers")},
    dict(vocab_size=32128, d_ff=2048, relative_attention_num_buckets=32, feed_forward_proj="relu",
         tie_word_embeddings=True),
    # attribute_map: hidden_size -> d_model, num_attention_heads -> num_heads, ...
    dict(d_model="default(hidden_size, 512)", d_kv="default(head_dim, 64)",
         num_layers="default(num_hidden_layers, 6)", num_heads="default(num_attention_heads, 8)",
         num_decoder_layers="num_layers",
         is_gated_act='startswith(feed_forward_proj, "gated-") or feed_forward_proj == "gated"'),
    (R("shared.weight", "vocab_size", "d_model"),) + _t5_stack("encoder", "i") + _t5_stack("decoder", "j"),
    {
        "ForConditionalGeneration": Head((R("lm_head.weight", "vocab_size", "d_model",
                                            optional="tie_word_embeddings"),)),
        "Model": Head(),
        "EncoderModel": Head(env={"has_decoder": False}),
        "ForQuestionAnswering": Head((R("qa_outputs.weight", "num_labels", "d_model"),
                                      R("qa_outputs.bias", "num_labels"))),
        # These two nest the model under transformer. (the other T5 classes store it bare).
        "ForSequenceClassification": Head((
            R("classification_head.dense.weight", "d_model", "d_model"), R("classification_head.dense.bias", "d_model"),
            R("classification_head.out_proj.weight", "num_labels", "d_model"),
            R("classification_head.out_proj.bias", "num_labels"),
        ), prefix="transformer."),
        "ForTokenClassification": Head((R("classifier.weight", "num_labels", "d_model"),
                                        R("classifier.bias", "num_labels")),
                                       env={"has_decoder": False}, prefix="transformer."),
    },
    "ForConditionalGeneration",
    env_defaults={"has_decoder": True},
)

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (LLAMA, MISTRAL, QWEN2, QWEN3, MIXTRAL, QWEN2_MOE, GEMMA, GEMMA2, PHI3, GPT2, GPT_NEOX, FALCON,
              BERT, ROBERTA, T5)
}
"""model_type -> rule table."""

KNOWN_EXTRAS: tuple[tuple[str, str], ...] = (
    (r"(^|\.)rotary_emb\.inv_freq$", "rotary_emb.inv_freq (a rotary-embedding buffer recomputed at load)"),
    (r"(^|\.)(attn|crossattention)\.(bias|masked_bias)$", "attn.bias/masked_bias (GPT-2's causal-mask buffers)"),
    (r"(^|\.)attention\.(bias|masked_bias)$", "attention.bias/masked_bias (GPT-NeoX's causal-mask buffers)"),
    (r"(^|\.)embeddings\.(position_ids|token_type_ids)$", "embeddings.position_ids (a BERT-style index buffer)"),
    (r"(^|\.)decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",
     "EncDecAttention.relative_attention_bias (unused by T5's cross-attention)"),
)
"""Tensors older checkpoints carry that loaders ignore: (regex, label). Not warned about."""

LEGACY_RENAMES: tuple[tuple[str, str], ...] = (
    ("LayerNorm.gamma", "LayerNorm.weight"),
    ("LayerNorm.beta", "LayerNorm.bias"),
)
"""Old TF-era names transformers renames at load."""


# --- expected models -----------------------------------------------------------------------

@dataclass(frozen=True)
class Dim:
    """One expected dimension and where it comes from."""

    value: int
    drivers: tuple[str, ...] = ()
    formula: str = ""
    """e.g. ``num_key_value_heads * head_dim = 2 * 8``; empty when unknown."""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExpectedTensor:
    """A tensor the config implies: its shape, the fields behind each dimension, optional or not."""

    name: str
    dims: tuple[Dim, ...]
    optional: bool = False
    """May be absent (tied to another tensor, or a tolerated leftover)."""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(d.value for d in self.dims)

    @property
    def drivers(self) -> tuple[str, ...]:
        return _merge(*(d.drivers for d in self.dims))


@dataclass(frozen=True)
class CountGroup:
    """A numbered run of modules (layers, experts) whose count the config fixes."""

    pattern: str
    """Regex matched at the start of a tensor name; group 1 is the index."""
    display: str
    """e.g. ``model.layers.{n}``."""
    expected: int
    field: str
    noun: str

    @property
    def wanted(self) -> set[int]:
        """The indices the config asks for (capped: a reference never asks for more than MAX_COUNT)."""
        return set(range(min(self.expected, MAX_COUNT + 1)))


@dataclass(frozen=True)
class ExpectedModel:
    """What a loader expects to find in the weights of one folder."""

    tensors: dict[str, ExpectedTensor]
    family: str | None
    architecture: str | None
    source: str
    """``rules`` or ``transformers X.Y.Z``."""
    prefix: str = ""
    """Base-model prefix (``model.``); checkpoints with or without it both load."""
    counts: tuple[CountGroup, ...] = ()
    complete: bool = True
    """False when only the base model is known (unknown head): other tensors are not reported."""
    allowed_extras: tuple[str, ...] = ()
    """Extra regexes of tensors the loader ignores silently."""
    notes: tuple[str, ...] = ()


def family_of(config: Mapping[str, Any]) -> Family | None:
    """The rule table for ``config['model_type']``, or None."""
    model_type = config.get("model_type")
    return FAMILIES.get(model_type) if isinstance(model_type, str) else None


def architecture_of(config: Mapping[str, Any]) -> str | None:
    """``architectures[0]`` when it is a string, else None."""
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return None


def expected_tensors(config: Mapping[str, Any], architecture: str | None = None) -> ExpectedModel | None:
    """Expected tensor names and shapes for ``config`` from the rule table.

    Args:
        config: parsed config.json.
        architecture: class name to build; defaults to ``architectures[0]``.

    Returns:
        The ExpectedModel, or None when the family is not in the table. For a head the table
        does not know, the base model's tensors with ``complete=False``.

    Raises:
        ConfigValueError: a value the shapes need is not usable (with the field names).
    """
    family = family_of(config)
    if family is None:
        return None
    architecture = architecture or architecture_of(config)
    found = family.head_for(architecture)
    notes: tuple[str, ...] = ()
    if found is None:
        head, complete = Head(), False
        notes = (f"{architecture} is not in hfconv's {family.model_type} rule table "
                 f"(it knows {', '.join(family.class_prefix + s for s in family.heads)}); "
                 "only the base model's tensors were checked",)
    else:
        head, complete = found[1], True
    optional_head = architecture is None  # no architectures: the head is a guess, so tolerate it
    scope = Scope(family, config, head.env)
    strip = "" if head.base_prefixed else family.prefix
    base_rules = family.rules if not head.prefix else tuple(
        Rule(head.prefix + r.name, r.shape, r.when, r.optional) for r in family.rules)
    rules = base_rules + tuple(Rule(r.name, r.shape, r.when, "1" if optional_head else r.optional)
                               for r in head.rules)

    counts = {p: _count(scope, expr) for p, (expr, _) in family.ranges.items()}
    planned = sum(math.prod(counts[p] for p in rule.placeholders) for rule in rules)
    if planned > MAX_TENSORS:
        fields = tuple(expr for expr, _ in family.ranges.values())
        raise ConfigValueError(fields, f"{' x '.join(fields)} would need {planned} tensors, more than hfconv checks "
                               f"({MAX_TENSORS})")
    tensors: dict[str, ExpectedTensor] = {}
    groups: dict[str, CountGroup] = {}
    for rule in rules:
        name = rule.name[len(strip):] if strip and rule.name.startswith(strip) else rule.name
        placeholders = rule.placeholders
        static_shape = not any(expression_names(s) & set(placeholders) for s in rule.shape)
        dims: tuple[Dim, ...] | None = None
        conditions: dict[tuple, tuple[bool, bool]] = {}
        for values in itertools.product(*(range(counts[p]) for p in placeholders)):
            local = dict(zip(placeholders, values, strict=True))
            # Conditions usually depend on one placeholder at most (the layer): cache by it.
            key = tuple(v for p, v in local.items()
                        if p in _names(rule.when) or p in _names(rule.optional))
            if key not in conditions:
                exists = rule.when is None or bool(scope.evaluate(rule.when, local).value)
                optional = rule.optional is not None and bool(scope.evaluate(rule.optional, local).value)
                conditions[key] = (exists, optional)
            exists, optional = conditions[key]
            if not exists:
                continue
            if dims is None or not static_shape:
                dims = tuple(_dim(scope, s, local) for s in rule.shape)
            full = name.format(**local) if placeholders else name
            tensors[full] = ExpectedTensor(full, dims, optional)
        if dims is not None:  # the rule produced tensors: its numbered runs are counted
            _add_count_groups(groups, family, name, placeholders, counts)
    tensors = {k: tensors[k] for k in sorted(tensors, key=natural_key)}
    return ExpectedModel(
        tensors=tensors, family=family.model_type, architecture=architecture, source="rules",
        prefix=head.prefix or family.prefix, counts=tuple(groups.values()), complete=complete, notes=notes,
    )


def _names(expr: str | None) -> frozenset[str]:
    return expression_names(expr) if expr else frozenset()


MAX_COUNT = 65_536
"""Most layers (or experts) a config may ask for; config.json is untrusted input."""
MAX_TENSORS = 500_000
"""Most tensors a rule table expands to (the largest MoE checkpoints hold about 100k)."""


def _count(scope: Scope, expr: str) -> int:
    term = scope.evaluate(expr)
    return _bounded_count(_int(term, "count"), term.drivers, term.text)


def _bounded_count(value: int, drivers: tuple[str, ...], text: str) -> int:
    """``value``, a count from config.json (untrusted: never range() over it unchecked)."""
    if value < 0:
        raise ConfigValueError(drivers, f"{text} is {value}, a negative count")
    if value > MAX_COUNT:
        raise ConfigValueError(drivers, f"{text} is {value}, more than hfconv checks ({MAX_COUNT})")
    return value


def _dim(scope: Scope, expr: str, local: Mapping[str, int]) -> Dim:
    term = scope.evaluate(expr, local)
    value = _int(term, "shape")
    if value < 0:
        raise ConfigValueError(term.drivers, f"{term.text} = {term.numbers} = {value} is a negative dimension")
    formula = term.text
    if term.numbers != term.text:
        formula += f" = {term.numbers}"
    if term.numbers != str(value):
        formula += f" = {value}"
    return Dim(value, term.drivers, formula, term.notes)


def _add_count_groups(groups: dict[str, CountGroup], family: Family, name: str, placeholders: tuple[str, ...],
                      counts: Mapping[str, int]) -> None:
    for p in placeholders:
        head = name.partition("{" + p + "}")[0]
        parts = _PLACEHOLDER.split(head)  # literal, placeholder, literal, ...
        pattern = "^" + "".join(re.escape(x) if k % 2 == 0 else r"\d+" for k, x in enumerate(parts)) + r"(\d+)\."
        if pattern not in groups:
            expr, noun = family.ranges[p]
            display = _PLACEHOLDER.sub("*", head) + "{n}"
            groups[pattern] = CountGroup(pattern, display, counts[p], expr, noun)


LAYER_FIELDS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "num_decoder_layers",
                "num_encoder_layers", "encoder_layers", "decoder_layers")


def infer_counts(names: Iterable[str], config: Mapping[str, Any]) -> tuple[CountGroup, ...]:
    """Numbered runs in expected names (``model.layers.0.``...) tied to the config field that
    holds their count, for a model known only by its names (the transformers reference).

    Only first-level runs numbered 0..n-1 whose count equals a layer-count field of the
    config are returned: runs of two or more, or a single module under a layer-stack name
    (``layers.0``, ``h.0``), so that a config cut to one layer still has its count checked.
    """
    stems: dict[str, set[int]] = {}
    for name in names:
        parts = name.split(".")
        for k, part in enumerate(parts[1:], start=1):
            if part.isdigit():
                stems.setdefault(".".join(parts[:k]) + ".", set()).add(int(part))
                break
    # Layer-count fields: top level, then one level down in sub-configs (text_config.num_hidden_layers
    # of a vision-language model), as dotted paths.
    fields: list[tuple[str, int]] = [(f, config[f]) for f in LAYER_FIELDS if _is_int(config.get(f))]
    for key, sub in config.items():
        if isinstance(sub, Mapping) and isinstance(key, str):
            fields += [(f"{key}.{f}", sub[f]) for f in LAYER_FIELDS + ("depth",) if _is_int(sub.get(f))]
    groups = []
    for stem, indices in stems.items():
        n = len(indices)
        if n < 1 or indices != set(range(n)) or (n == 1 and stem.split(".")[-2] not in _LAYER_STEMS):
            continue
        matching = [f for f, value in fields if value == n]
        if not matching:
            continue
        field_name = min(matching, key=lambda f: _affinity(stem, f))
        groups.append(CountGroup("^" + re.escape(stem) + r"(\d+)\.", stem + "{n}", n, field_name, "layers"))
    return tuple(groups)


_TOWERS = ("vision", "visual", "image", "audio", "speech")


def _affinity(stem: str, field_path: str) -> tuple[int, int]:
    """Sort key pairing a run with the config field most likely to count it: a vision tower with
    vision_config, the language model with text_config or the top level."""
    sub = field_path.rpartition(".")[0]
    tower = next((t for t in _TOWERS if t in stem), None)
    if tower is not None:
        return (0 if sub and (tower in sub or (tower == "visual" and "vision" in sub)) else 2, len(field_path))
    if not sub:
        return (0, len(field_path))
    return (1 if "text" in sub or "language" in sub or "decoder" in sub or "llm" in sub else 3, len(field_path))


def natural_key(name: str) -> tuple:
    """Sort key putting ``layers.2`` before ``layers.10`` (and each layer's tensors together)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


_EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings", "shared")
_OUTPUTS = ("lm_head", "embed_out")
_BASES = {"model", "transformer", "gpt_neox", "bert", "roberta", "language_model", "embeddings", "backbone"}
_LAYER_STEMS = ("layers", "h", "layer", "blocks", "block")
_DEPTH_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_DEPTH_BY_TYPE = {"longcat_flash": ("num_layers",)}
"""Model types whose stored layer run is counted by another field: LongCat-Flash stores
``num_layers`` decoder layers of two sublayers each, and its num_hidden_layers is 2 * num_layers."""
_HIDDEN_FIELDS = ("input_embedding_size", "word_embed_proj_dim", "embedding_size", "hidden_size", "n_embd", "d_model",
                  "dim")
"""Fields giving the token embedding's width, most specific first (RemBERT: input_embedding_size,
OPT: word_embed_proj_dim, ALBERT/ELECTRA: embedding_size)."""


def generic_expected(config: Mapping[str, Any], actual: Mapping[str, tuple[int, ...]]) -> ExpectedModel:
    """What can be checked of an architecture nobody describes: the token embeddings and the
    output projection have at least ``vocab_size`` rows and the embedding width (``embedding_size``
    or ``hidden_size``) columns, and the one run of numbered layers matches the layer count
    (``num_hidden_layers`` or its alias ``n_layer``/``num_layers``/``n_layers``; an encoder and a
    decoder run match ``encoder_layers`` and ``decoder_layers``).

    More rows than ``vocab_size`` pass: several architectures append rows for image or padding
    tokens (Mllama: ``vocab_size + 8``, Moshi: ``vocab_size + 1``), and without a model class
    nothing says how many. Fewer rows always fail: token ids past the last row cannot be embedded.

    Only stored tensors are listed (nothing is "missing"), and ``complete=False`` (nothing is
    "unexpected").
    """
    vocab_field, vocab = _field(config, ("vocab_size",))
    width_field, width = _field(config, _HIDDEN_FIELDS)
    model_type = config.get("model_type")
    # The base-model attribute is usually named after the model type (electra., deberta.).
    bases = _BASES | ({model_type.replace("-", "_")} if isinstance(model_type, str) else set())
    tensors: dict[str, ExpectedTensor] = {}
    for name, shape in actual.items():
        parts = name.split(".")
        if len(shape) != 2 or len(parts) > 4 or parts[-1] != "weight" or len(parts) < 2:
            continue
        if parts[-2] not in _EMBEDDINGS + _OUTPUTS or not set(parts[:-2]) <= bases | {"encoder", "decoder"}:
            continue
        # A decoder may have a vocabulary of its own (Marian with share_encoder_decoder_embeddings
        # false embeds decoder_vocab_size rows, with it true vocab_size): it needs the smaller.
        rows_field, rows = vocab_field, vocab
        dec = config.get("decoder_vocab_size")
        if "decoder" in parts[:-2] and _is_int(dec) and (not _is_int(vocab) or dec < vocab):
            rows_field, rows = "decoder_vocab_size", dec
        dims = []
        if rows_field is not None and _is_int(rows) and shape[0] < rows:
            dims.append(Dim(rows, (rows_field,), f"{rows_field} = {rows}",
                            (f"an embedding needs at least {rows_field} = {rows} rows",)))
        else:
            dims.append(Dim(shape[0]))
        if width_field is not None:
            dims.append(Dim(width, (width_field,), f"{width_field} = {width}"))
        else:
            dims.append(Dim(shape[1]))
        tensors[name] = ExpectedTensor(name, tuple(dims))
    stems: dict[str, set[int]] = {}
    for name in actual:
        parts = name.split(".")
        for k, part in enumerate(parts[1:], start=1):
            if part.isdigit():
                if parts[k - 1] in _LAYER_STEMS and set(parts[:k - 1]) <= bases | {"encoder", "decoder"}:
                    stems.setdefault(".".join(parts[:k]) + ".", set()).add(int(part))
                break
    runs: list[tuple[str, str | None, Any]] = []  # (stem, config field, its value)
    if len(stems) == 1:
        depth = _DEPTH_BY_TYPE.get(model_type, ()) if isinstance(model_type, str) else ()
        runs = [(next(iter(stems)), *_field(config, depth + _DEPTH_FIELDS))]
    elif len(stems) == 2:  # an encoder-decoder: one run under encoder., one under decoder.
        by_side = {side: [s for s in stems if f".{side}." in f".{s}"] for side in ("encoder", "decoder")}
        if all(len(v) == 1 for v in by_side.values()):
            # BART: encoder_layers/decoder_layers; T5: num_layers and num_decoder_layers (null: num_layers).
            runs = [(by_side["encoder"][0], *_field(config, ("encoder_layers", "num_layers"))),
                    (by_side["decoder"][0], *_field(config, ("decoder_layers", "num_decoder_layers", "num_layers")))]
            # num_hidden_layers beside encoder_layers is its alias (BART, Whisper, Marian, ...), which
            # save_pretrained writes equal; where they differ transformers 5 builds num_hidden_layers
            # encoder layers (4.x built encoder_layers), so the run must match both.
            hidden, encoder = config.get("num_hidden_layers"), config.get("encoder_layers")
            if _is_int(hidden) and _is_int(encoder) and hidden != encoder:
                runs.append((by_side["encoder"][0], "num_hidden_layers", hidden))
    counts = tuple(CountGroup("^" + re.escape(stem) + r"(\d+)\.", stem + "{n}", _bounded_count(value, (f,), f), f,
                              "layers")
                   for stem, f, value in runs if f is not None)
    return ExpectedModel(tensors=tensors, family=model_type if isinstance(model_type, str) else None,
                         architecture=architecture_of(config), source="generic", counts=counts, complete=False)


def _field(config: Mapping[str, Any], names: Iterable[str]) -> tuple[str | None, Any]:
    """(path, value) of the first of ``names`` set to an integer in config.json, or else in its
    text_config (vision-language models keep the language model's sizes there); (None, None)."""
    names = tuple(names)
    for name in names:
        if _is_int(config.get(name)):
            return name, config[name]
    text = config.get("text_config")
    if isinstance(text, Mapping):
        for name in names:
            if _is_int(text.get(name)):
                return f"text_config.{name}", text[name]
    return None, None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- comparing expected with actual ------------------------------------------------------

@dataclass(frozen=True)
class ShapeMismatch:
    name: str
    """The tensor name as stored in the weights."""
    expected: ExpectedTensor
    actual: tuple[int, ...]

    @property
    def wrong_dims(self) -> tuple[int, ...]:
        if len(self.actual) != len(self.expected.dims):
            return ()
        return tuple(k for k, (a, d) in enumerate(zip(self.actual, self.expected.dims, strict=True)) if a != d.value)


@dataclass(frozen=True)
class CountMismatch:
    group: CountGroup
    found: tuple[int, ...]
    """Sorted indices present in the weights."""


@dataclass(frozen=True)
class Comparison:
    """The differences between an ExpectedModel and the tensors of a folder."""

    mismatched: tuple[ShapeMismatch, ...] = ()
    missing: tuple[str, ...] = ()
    """Required tensors absent from the weights (named in the folder's prefix convention)."""
    unexpected: tuple[str, ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()
    """(tensor, label) for known buffers and leftovers loaders ignore."""
    counts: tuple[CountMismatch, ...] = ()
    matched: int = 0

    @property
    def clean(self) -> bool:
        return not (self.mismatched or self.missing or self.unexpected or self.counts)


def compare(expected: ExpectedModel, actual: Mapping[str, tuple[int, ...]]) -> Comparison:
    """Compare expected tensors with ``actual`` (name -> shape), tolerating prefixes and buffers.

    A stored name matches an expected one as is, with the base-model prefix added or removed
    (``model.``, ``transformer.``: both load), or after the legacy ``LayerNorm.gamma/beta``
    renames. Layers (or experts) beyond the configured count, or entirely absent, are
    reported once as a CountMismatch rather than tensor by tensor.

    Args:
        expected: from :func:`expected_tensors` or the transformers reference.
        actual: the stored tensors' shapes by name.

    Returns:
        The Comparison.
    """
    prefix = expected.prefix
    # A head the table does not know may nest the base model under its own attribute
    # (T5ForSequenceClassification: transformer.encoder...): find that prefix from the names.
    outer = "" if expected.complete else _outer_prefix(actual, expected.tensors, prefix)
    canonical: dict[str, str] = {}  # stored name -> expected name
    taken: set[str] = set()
    direct = bare = prefixed = 0  # how stored names relate to expected ones, to show missing names alike
    for name in actual:
        key = _canonical(name.removeprefix(outer) if outer else name, expected.tensors, prefix)
        if key is None or key in taken:
            continue
        canonical[name] = key
        taken.add(key)
        legacy = legacy_name(name)
        if key == legacy:
            direct += 1
        elif key == prefix + legacy:
            bare += 1
        else:
            prefixed += 1

    # 1. Numbered runs (layers, experts): the indices present vs the configured count. Tensors the
    # model class declares ignorable (DeepSeek-V3's multi-token-prediction layer model.layers.61)
    # are not layers of the run.
    allowed = [re.compile(p) for p in expected.allowed_extras]
    counted = [name for name in actual if name in canonical or not any(rx.search(name) for rx in allowed)]
    count_mismatches = []
    skipped: list[tuple[re.Pattern, frozenset[int]]] = []
    for group in expected.counts:
        regex = re.compile(group.pattern)
        found = {i for name in counted if (i := _group_index(regex, canonical.get(name, name), prefix)) is not None}
        want = group.wanted
        if found != want and (found or any(regex.match(k) for k in expected.tensors)):
            count_mismatches.append(CountMismatch(group, tuple(sorted(found))))
            skipped.append((regex, frozenset(found ^ want)))

    def left_to_count(name: str) -> bool:
        return any((i := _group_index(rx, name, prefix)) is not None and i in indices for rx, indices in skipped)

    # 2. Every stored tensor: matched (then its shape is checked), ignored, or unexpected.
    extras = [(re.compile(p), label) for p, label in KNOWN_EXTRAS]
    extras += [(re.compile(p), "ignored by the loader") for p in expected.allowed_extras]
    mismatched, unexpected, ignored = [], [], []
    matched = 0
    for name, shape in actual.items():
        key = canonical.get(name)
        if key is not None:
            want_tensor = expected.tensors[key]
            if tuple(shape) != want_tensor.shape:
                mismatched.append(ShapeMismatch(name, want_tensor, tuple(shape)))
            else:
                matched += 1
        elif not left_to_count(name):
            label = next((lbl for rx, lbl in extras if rx.search(name)), None)
            if label is not None:
                ignored.append((name, label))
            elif expected.complete or (prefix and name.startswith(prefix)):
                unexpected.append(name)

    # 3. Required tensors nobody stored, named the way this folder names its tensors.
    missing = []
    for key, tensor in expected.tensors.items():
        if key in taken or tensor.optional or left_to_count(key):
            continue
        if prefix and bare > direct and key.startswith(prefix):
            key = key[len(prefix):]
        elif prefix and prefixed > direct and not key.startswith(prefix) and not expected.complete:
            key = prefix + key
        missing.append(outer + key)
    return Comparison(tuple(mismatched), tuple(missing), tuple(unexpected), tuple(ignored),
                      tuple(count_mismatches), matched)


def _outer_prefix(actual: Mapping[str, tuple[int, ...]], tensors: Mapping[str, ExpectedTensor], prefix: str) -> str:
    """The attribute path (``transformer.``) under which most stored names match expected ones,
    when more match with it stripped than as they are; else ``""``."""
    def matches(strip: str) -> int:
        return sum(1 for n in actual if n.startswith(strip) and
                   _canonical(n[len(strip):], tensors, prefix) is not None)

    candidates: dict[str, int] = {}
    for name in actual:
        parts = name.split(".")
        for k in (1, 2):
            if len(parts) > k + 1:
                stem = ".".join(parts[:k]) + "."
                candidates[stem] = candidates.get(stem, 0) + 1
    best, best_count = "", matches("")
    for stem, n in sorted(candidates.items(), key=lambda kv: -kv[1])[:8]:
        if n > best_count and (count := matches(stem)) > best_count:
            best, best_count = stem, count
    return best


def legacy_name(name: str) -> str:
    """``name`` with the TF-era parts transformers renames at load (LEGACY_RENAMES) renamed."""
    for old, new in LEGACY_RENAMES:
        if old in name:
            name = name.replace(old, new)
    return name


def _canonical(name: str, tensors: Mapping[str, ExpectedTensor], prefix: str) -> str | None:
    name = legacy_name(name)
    if name in tensors:
        return name
    if prefix:
        if prefix + name in tensors:
            return prefix + name
        if name.startswith(prefix) and name[len(prefix):] in tensors:
            return name[len(prefix):]
    return None


def _group_index(regex: re.Pattern, name: str, prefix: str) -> int | None:
    m = regex.match(name)
    if m is None and prefix:
        m = regex.match(prefix + name) or (regex.match(name[len(prefix):]) if name.startswith(prefix) else None)
    return int(m.group(1)) if m else None


# --- the likely culprit ---------------------------------------------------------------------

def suggest_fix(config: Mapping[str, Any], expected: ExpectedModel, comparison: Comparison,
                actual: Mapping[str, tuple[int, ...]], max_fields: int = 6) -> dict[str, int]:
    """Single config-field changes under which every mismatched tensor fits.

    For each field behind a wrong dimension, solve for the value that would produce the stored
    dimension (the expressions are ratios or linear in each field), rebuild the expected model
    with it, and keep it when every shape mismatch vanishes and nothing else gets worse.

    Args:
        config: the parsed config.json.
        expected: the rule-table model the comparison used.
        comparison: its result.
        actual: the stored shapes.
        max_fields: how many driver fields to try.

    Returns:
        field -> value that explains the weights, in driver order (usually zero or one entry).
    """
    if expected.source != "rules" or not comparison.mismatched:
        return {}
    family = family_of(config)
    if family is None:
        return {}
    scope = Scope(family, config)
    fields = list(_merge(*(mm.expected.dims[k].drivers for mm in comparison.mismatched for k in mm.wrong_dims)))
    baseline = len(comparison.missing) + len(comparison.unexpected) + len(comparison.counts)
    fixes: dict[str, int] = {}
    for f in fields[:max_fields]:
        try:
            current = scope.field(f).value
        except (ConfigValueError, ExpressionError):
            continue
        if isinstance(current, bool) or not isinstance(current, int):
            continue
        for candidate in _candidates(config, expected, f, current, comparison.mismatched):
            trial = {**config, f: candidate}
            if not _plausible(trial):
                continue
            try:
                model = expected_tensors(trial, expected.architecture)
            except (ConfigValueError, ExpressionError):
                continue
            result = compare(model, actual) if model is not None else None
            if result is not None and not result.mismatched and \
                    len(result.missing) + len(result.unexpected) + len(result.counts) <= baseline:
                fixes[f] = candidate
                break
    return fixes


def _candidates(config: Mapping[str, Any], expected: ExpectedModel, f: str, current: int,
                mismatched: Iterable[ShapeMismatch]) -> list[int]:
    """Values of ``f`` that would turn a wrong dimension into the stored one."""
    try:
        plus_one = expected_tensors({**config, f: current + 1}, expected.architecture)
    except (ConfigValueError, ExpressionError):
        plus_one = None
    out: list[int] = []
    seen: set[tuple[str, int]] = set()
    for mm in mismatched:
        for k in mm.wrong_dims:
            dim, stored = mm.expected.dims[k], mm.actual[k]
            if f not in dim.drivers or (dim.formula, stored) in seen:
                continue
            seen.add((dim.formula, stored))
            if dim.value and (current * stored) % dim.value == 0:  # f is a factor
                out.append(current * stored // dim.value)
            if stored and (current * dim.value) % stored == 0:  # f divides
                out.append(current * dim.value // stored)
            other = plus_one.tensors.get(mm.expected.name) if plus_one is not None else None
            if other is not None and len(other.dims) > k:  # f is a term of a sum
                slope = other.dims[k].value - dim.value
                if slope and (stored - dim.value) % slope == 0:
                    out.append(current + (stored - dim.value) // slope)
    return [c for c in dict.fromkeys(out) if c > 0 and c != current][:4]


def _plausible(config: Mapping[str, Any]) -> bool:
    """Reject fixes no loader accepts: attention heads must split evenly into KV groups."""
    heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and kv > 0:
        return heads % kv == 0
    return True
