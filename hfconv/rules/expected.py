"""Expected models: the tensors (names, shapes, the fields behind each dimension) a loader expects.

From a family's rule table (:func:`expected_tensors`), from the stored names alone for a family
nobody describes (:func:`generic_expected`), and the numbered runs (layers, experts) whose
count the config fixes (:func:`infer_counts`, used by the transformers reference). Counts from
config.json are untrusted and capped (:data:`MAX_COUNT`, :data:`MAX_TENSORS`).
"""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..gcpause import gc_paused
from .expression import ConfigValueError, Scope, as_int, expression_names, merge_unique
from .families import FAMILIES, PLACEHOLDER, Family, Head, Rule


class Dim(NamedTuple):
    """One expected dimension and where it comes from."""

    value: int
    drivers: tuple[str, ...] = ()
    formula: str = ""
    """e.g. ``num_key_value_heads * head_dim = 2 * 8``; empty when unknown."""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExpectedTensor:
    """A tensor the config implies: its shape, the fields behind each dimension, optional or not.

    Slotted, with its shape stored (the rule tables of the largest MoE models expand to
    100,000s of them: a dict each would cost about 50 MB more at 200,000)."""

    name: str
    dims: tuple[Dim, ...]
    optional: bool = False
    """May be absent (tied to another tensor, or a tolerated leftover)."""
    shape: tuple[int, ...] = field(default=(), compare=False, repr=False)
    """The dims' values (computed from them; never passed)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(d.value for d in self.dims))

    @property
    def drivers(self) -> tuple[str, ...]:
        return merge_unique(*(d.drivers for d in self.dims))


class CountGroup(NamedTuple):
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

    tensors: Mapping[str, ExpectedTensor]
    """By name; from a rule table an :class:`ExpandedTensors` (its ``index`` is cheap to read)."""
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
    strip_prefixes: tuple[str, ...] = ()
    """Prefixes the loader removes from every name that has one (transformers 5's ``PrefixChange``:
    CLIPTextModel checkpoints written by transformers 4 hold ``text_model.embeddings...``, where the
    model's own names are ``embeddings...``): a folder may hold every name under one of them."""
    trailing_layers: tuple[str, ...] = ()
    """The trailing layers ``allowed_extras`` stands for, as the rule table names them
    (``model.layers.61``): where a folder's trailing-marker tensors are looked for first."""


class _Absent:
    """What a name no expected tensor has is expected as: its shape equals no stored shape."""

    __slots__ = ()
    shape: Any = object()
    optional = False


NO_TENSOR: Any = _Absent()
"""The stand-in :class:`StoredShapes` lookups (and :func:`~hfconv.rules.compare.compare`) give a
name that is no expected tensor's."""


class StoredShapes(Mapping[str, tuple[int, ...]]):
    """Stored names and shapes as two parallel lists, made in C-level passes over 100,000s of
    tensors (DeepSeek-V3's FP8 weights, scales left out), read as a Mapping whose dict is built
    only if a name is looked up. ``looked_up``, where given: what each name is expected as in
    ``index`` (an expected model's name index; :data:`NO_TENSOR` where none), looked up once for
    both the quantized view and the comparison. The names are distinct."""

    __slots__ = ("names", "shapes", "index", "looked_up", "_by_name")

    def __init__(self, names: list[str], shapes: list[Any], index: Mapping[str, Any] | None = None,
                 looked_up: list[Any] | None = None):
        self.names = names
        self.shapes = shapes
        self.index = index
        self.looked_up = looked_up
        self._by_name: dict[str, tuple[int, ...]] | None = None

    def _map(self) -> dict[str, tuple[int, ...]]:
        if self._by_name is None:
            self._by_name = dict(zip(self.names, self.shapes))
        return self._by_name

    def __getitem__(self, name: str) -> tuple[int, ...]:
        return self._map()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._map()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


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


def expected_tensors(config: Mapping[str, Any], architecture: str | None = None,
                     family: Family | None = None, *, stored: int = 0) -> ExpectedModel | None:
    """Expected tensor names and shapes for ``config`` from the rule table.

    Args:
        config: parsed config.json.
        architecture: class name to build; defaults to ``architectures[0]``.
        family: the table to use; defaults to the hand-written one of ``config['model_type']``
            (:data:`FAMILIES`). The generated tables (:mod:`hfconv.rules.generated`) pass theirs.

    Returns:
        The ExpectedModel, or None when the family is not in the table. For a head the table
        does not know, the base model's tensors with ``complete=False``.

        stored: how many tensors the folder stores. The expansion may then reach twice that
            (at most MAX_EXPANSION), and a count or an expansion past the caps that the stored
            tensors could still fit raises CapReached rather than an error: a cap is no verdict.

    Raises:
        ConfigValueError: a value the shapes need is not usable (with the field names), or the
            config asks for more required tensors than the folder stores.
        CapReached: the config is within what ``stored`` tensors can hold, but past hfconv's
            caps: shapes were not checked.
    """
    family = family_of(config) if family is None else family
    if family is None:
        return None
    with gc_paused():  # 100,000s of acyclic objects for the largest MoE models
        return _expand(family, config, architecture, stored)


def _expand(family: Family, config: Mapping[str, Any], architecture: str | None, stored: int) -> ExpectedModel:
    """expected_tensors() for a family in the table."""
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

    counts = {p: _count(scope, expr, stored) for p, (expr, _) in family.ranges.items()}
    planned = sum(math.prod(counts[p] for p in rule.placeholders) for rule in rules)
    limit = min(max(MAX_TENSORS, 2 * stored), MAX_EXPANSION)
    over = [(expr, counts[p]) for p, (expr, _) in family.ranges.items() if counts[p] > MAX_COUNT]
    if over or planned > limit:  # over only with stored: _count refuses such counts otherwise
        fields = tuple(expr for expr, _ in family.ranges.values())
        if not stored:
            raise ConfigValueError(fields, f"{' x '.join(fields)} would need {planned} tensors, more than hfconv "
                                   f"checks ({MAX_TENSORS})")
        # Rules without a condition, never optional: every one of their tensors must be stored.
        required = sum(math.prod(counts[p] for p in rule.placeholders) for rule in rules
                       if rule.when is None and rule.optional is None)
        if over:
            fields = (over[0][0], *(f for f in fields if f != over[0][0]))
        what = (f"{over[0][0]} is {over[0][1]:,}, more than hfconv checks ({MAX_COUNT:,}, MAX_COUNT)" if over else
                f"{' x '.join(fields)} would need {planned:,} expected tensors (for the {stored:,} stored), more "
                f"than hfconv checks ({limit:,}, MAX_EXPANSION)")
        if required > stored:
            raise ConfigValueError(fields, f"{what}; at least {required:,} tensors are required, but the weights "
                                   f"hold only {stored:,}")
        raise CapReached(fields, what)
    runs: list[TensorRun] = []
    groups: dict[str, CountGroup] = {}
    conditions: dict[tuple[Any, ...], tuple[bool, bool]] = {}
    for rule in rules:
        name = rule.name[len(strip):] if strip and rule.name.startswith(strip) else rule.name
        placeholders = rule.placeholders
        ranges = [range(counts[p]) for p in placeholders]
        if not all(ranges):
            continue
        # Placeholders a condition or a shape names are "keyed": the rule is evaluated once per
        # combination of their values (usually the layer, or nothing), and every tensor of one
        # combination is alike: one run, its names formatted in C.
        conditional = _names(rule.when) | _names(rule.optional)
        shaped = frozenset().union(*map(expression_names, rule.shape)) & set(placeholders)
        keyed = tuple(k for k, p in enumerate(placeholders) if p in conditional or p in shaped)
        condition_at = tuple(k for k in keyed if placeholders[k] in conditional)
        shape_at = tuple(k for k in keyed if placeholders[k] in shaped)
        shapes: dict[tuple[int, ...], tuple[Dim, ...]] = {}
        template = _Template(name, placeholders)
        produced = False
        for key in itertools.product(*(ranges[k] for k in keyed)):
            values = dict.fromkeys(range(len(placeholders)), 0)
            values.update(zip(keyed, key))
            local = {p: values[k] for k, p in enumerate(placeholders)}
            # Many rules share a condition (DeepSeek-V3: ``i >= first_k_dense_replace``): once per layer.
            condition_key = (rule.when, rule.optional, *((placeholders[k], values[k]) for k in condition_at))
            if condition_key not in conditions:
                exists = rule.when is None or bool(scope.evaluate(rule.when, local).value)
                optional = exists and rule.optional is not None and bool(scope.evaluate(rule.optional, local).value)
                conditions[condition_key] = (exists, optional)
            exists, optional = conditions[condition_key]
            if not exists:
                continue
            shape_key = tuple(values[k] for k in shape_at)
            dims = shapes.get(shape_key)
            if dims is None:
                dims = shapes[shape_key] = tuple(_dim(scope, s, local) for s in rule.shape)
            run_ranges = tuple((values[k],) if k in keyed else ranges[k] for k in range(len(placeholders)))
            runs.append(TensorRun(template, run_ranges, dims, tuple(d.value for d in dims), optional))
            produced = True
        if produced:  # the rule produced tensors: its numbered runs are counted
            _add_count_groups(groups, family, name, placeholders, counts)
    trailing = _trailing(scope, family)
    return ExpectedModel(
        tensors=ExpandedTensors(runs), family=family.model_type, architecture=architecture, source="rules",
        prefix=head.prefix or family.prefix, counts=tuple(groups.values()), complete=complete, notes=notes,
        allowed_extras=tuple(pattern for pattern, _ in trailing),
        trailing_layers=tuple(layer for _, layers in trailing for layer in layers),
    )


_MAX_TRAILING = 256
"""Most trailing layers a config may declare before hfconv stops tolerating them (untrusted input)."""


def _trailing(scope: Scope, family: Family) -> list[tuple[str, tuple[str, ...]]]:
    """Regexes of the trailing layer runs (:attr:`Family.trailing`) this config declares, each
    with its layers' names (``model.layers.61``)."""
    out = []
    for stem, first_expr, count_expr in family.trailing:
        first, count = _count(scope, first_expr), _count(scope, count_expr)
        if 0 < count <= _MAX_TRAILING:
            rest = re.escape(stem.removeprefix(family.prefix))
            indices = "|".join(str(first + k) for k in range(count))
            out.append((f"^(?:{re.escape(family.prefix)})?{rest}(?:{indices})\\.",
                        tuple(f"{stem}{first + k}" for k in range(count))))
    return out


def _names(expr: str | None) -> frozenset[str]:
    return expression_names(expr) if expr else frozenset()


class _Template:
    """A rule's tensor name with its placeholders as positional fields: names, and string sort
    keys in :func:`natural_key` order, for given placeholder values without parsing each name."""

    def __init__(self, name: str, placeholders: tuple[str, ...]):
        self.format = PLACEHOLDER.sub(lambda m: "{" + str(placeholders.index(m.group(1))) + "}", name)
        parts = []
        for part in name.split("."):
            whole = PLACEHOLDER.fullmatch(part)
            if whole is not None:
                parts.append("\x01{" + str(placeholders.index(whole.group(1))) + ":020d}")
            elif PLACEHOLDER.search(part) or not part.isascii():
                parts = []  # a placeholder inside a part: each name's own key
                break
            else:
                parts.append(_natural_part(part))
        self.key_format = "\x00".join(parts) if parts else None

    def name(self, values: tuple[int, ...]) -> str:
        return self.format.format(*values) if values else self.format

    def key(self, values: tuple[int, ...], name: str) -> str:
        """The sort key of ``name``, made from ``values``."""
        return self.key_format.format(*values) if self.key_format is not None else natural_string(name)

    def keys(self, names: list[str], values: Iterable[tuple[int, ...]]) -> list[str]:
        """The sort keys of ``names``, made from ``values``."""
        if self.key_format is None:
            return list(map(natural_string, names))
        return list(itertools.starmap(self.key_format.format, values))


@dataclass(frozen=True, slots=True)
class TensorRun:
    """Tensors of one rule that are alike: the same dims, optional or not. The names are the
    rule's template over the product of ``ranges`` (one per placeholder), made when asked."""

    template: _Template
    ranges: tuple[Sequence[int], ...]
    dims: tuple[Dim, ...]
    shape: tuple[int, ...]
    optional: bool

    def names(self, endings: dict[tuple[int, str], list[str]] | None = None) -> list[str]:
        """The names, in the order of the ranges' product. ``endings``: a cache the caller keeps while
        these runs (and their ranges) live, of the varying value's name endings (``"7" + tail``, see
        :func:`_endings`): the experts of every layer share them, and each name is then one
        concatenation made in C."""
        form = self.template.format
        if not self.ranges:
            return [form]
        if len(self.ranges) == 1:
            return list(map(form.format, self.ranges[0]))
        varying = [k for k, values in enumerate(self.ranges) if len(values) != 1]
        if len(varying) == 1 and "{{" not in form and "}}" not in form:
            # One placeholder varies (the experts of one layer): the others are filled in once, and
            # each name is a concatenation, not a format (100,000s of names in the largest MoE models).
            k = varying[0]
            parts = form.format(*(str(v[0]) if i != k else "{0}" for i, v in enumerate(self.ranges))).split("{0}")
            if len(parts) == 2:
                head, tail = parts
                if endings is None:
                    return [head + index + tail for index in map(str, self.ranges[k])]
                return list(map(head.__add__, _endings(endings, self.ranges[k], tail)))
        return list(itertools.starmap(form.format, itertools.product(*self.ranges)))

    def keys(self, names: list[str]) -> list[str]:
        """The natural-order sort keys of :meth:`names`."""
        return self.template.keys(names, itertools.product(*self.ranges))


def _endings(cache: dict[tuple[int, str], list[str]], values: Sequence[int], tail: str) -> list[str]:
    """``[str(v) + tail for v in values]``, kept in ``cache`` by (id of ``values``, ``tail``): the
    caller keeps every ``values`` alive while ``cache`` lives, so an id names one sequence."""
    ends = cache.get((id(values), tail))
    if ends is None:
        ends = cache[id(values), tail] = list(map(str.__add__, map(str, values), itertools.repeat(tail)))
    return ends


class ExpandedTensors(Mapping[str, ExpectedTensor]):
    """A rule table's expected tensors, by name in natural order (``layers.2`` before ``layers.10``).

    The largest MoE models expand to 100,000s of tensors, nearly all alike within a rule: they are
    kept as runs (:class:`TensorRun`) and :attr:`index` (name -> its run, built in C), and an
    ExpectedTensor is made only for a name looked up. Iterating sorts the names once.
    """

    def __init__(self, runs: Iterable[TensorRun]):
        self.runs = tuple(runs)
        self.index: dict[str, TensorRun] = {}
        """Name -> its run (a later rule naming the same tensor wins): what hot loops read, with
        the run's ``shape`` and ``optional``."""
        endings: dict[tuple[int, str], list[str]] = {}  # the runs hold their ranges while it lives
        for run in self.runs:
            self.index.update(zip(run.names(endings), itertools.repeat(run)))
        self._made: dict[str, ExpectedTensor] = {}
        self._order: list[str] | None = None

    def indices(self, pattern: str) -> set[int] | None:
        """``{int(m.group(1)) for name in self if (m := re.match(pattern, name))}``, worked out once per
        rule template instead of once per name (100,000s of names in the largest MoE models); None
        where the pattern or a template is not of the form that makes the two the same.

        That form: the pattern is ``^`` then literal letters, ``_`` and escaped punctuation, and
        ``\\d+`` runs (one of them the group), each followed by a literal; a template's placeholders
        each lie between non-digits. Then each ``\\d+`` of a match takes one whole run of digits
        of the name, whatever its digits, and a placeholder's value is one whole run: whether a
        name matches, and which run the group takes, is the same for every name of the template.
        So the template with every placeholder 0 says it: no match, the same literal digits for
        every name, or the values of one placeholder (its run's range)."""
        if _digit_run_pattern(pattern) is None:
            return None
        regex = re.compile(pattern)
        found: set[int] = set()
        taken: dict[int, tuple[str, int] | None] = {}
        added: set[int] = set()
        for run in self.runs:
            key = id(run.template)
            if key not in taken:
                taken[key] = _captured(run.template.format, regex)
            what = taken[key]
            if what is None:
                continue
            kind, value = what
            if kind == "undecided":
                return None
            if kind == "literal":
                found.add(value)
            elif id(values := run.ranges[value]) not in added:
                added.add(id(values))
                found.update(values)
        return found

    def __getitem__(self, name: str) -> ExpectedTensor:
        tensor = self._made.get(name)
        if tensor is None:
            run = self.index[name]
            tensor = self._made[name] = _expected_tensor(name, run.dims, run.optional, run.shape)
        return tensor

    def __contains__(self, name: object) -> bool:
        return name in self.index

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[str]:
        if self._order is None:
            keys: dict[str, str] = {}
            for run in self.runs:
                names = run.names()
                keys.update(zip(names, run.keys(names)))
            self._order = sorted(self.index, key=keys.__getitem__)
        return iter(self._order)


_PATTERN_TOKEN = re.compile(r"\\d\+|\(\\d\+\)|\\[" + re.escape(string.punctuation + " ") + "]|[A-Za-z_]")
_DIGITS = ("\\d+", "(\\d+)")


def _digit_run_pattern(pattern: str) -> list[str] | None:
    """The tokens of ``pattern`` where it has the form :meth:`ExpandedTensors.indices` reads from
    templates alone, else None."""
    if not pattern.startswith("^"):
        return None
    tokens: list[str] = []
    at = 1
    while at < len(pattern):
        m = _PATTERN_TOKEN.match(pattern, at)
        if m is None:
            return None
        tokens.append(m.group())
        at = m.end()
    if tokens.count("(\\d+)") != 1 or not tokens or tokens[-1] in _DIGITS or \
            any(a in _DIGITS and b in _DIGITS for a, b in itertools.pairwise(tokens)):
        return None
    return tokens


def _captured(form: str, regex: re.Pattern[str]) -> tuple[str, int] | None:
    """What ``regex`` (of :func:`_digit_run_pattern`'s form) captures in every name of a template
    (its format string, placeholders ``{k}``): None where no name matches, ("literal", n) where
    each captures the same digits n, ("placeholder", k) where each captures its value of
    placeholder k; ("undecided", 0) where the template is not of the form that makes this exact."""
    undecided = ("undecided", 0)
    try:
        parts = list(string.Formatter().parse(form))
    except ValueError:
        return undecided
    text = ""
    fields: list[tuple[int, int]] = []  # (position in the text, placeholder)
    for literal, name, spec, conversion in parts:
        text += literal
        if name is None:
            continue
        if spec or conversion or not name.isdigit():
            return undecided
        fields.append((len(text), int(name)))
        text += "0"
    if "{" in text or "}" in text or any(at > 0 and text[at - 1].isdigit() or text[at + 1:at + 2].isdigit()
                                         for at, _ in fields):
        return undecided
    m = regex.match(text)
    if m is None:
        return None
    start, end = m.span(1)
    for at, k in fields:
        if (start, end) == (at, at + 1):
            return ("placeholder", k)
        if start <= at < end:
            return undecided
    return ("literal", int(m.group(1)))


def _natural_part(part: str) -> str:
    return "\x01" + part.zfill(20) if part.isdigit() and part.isascii() else "\x02" + part


def natural_string(name: str) -> str:
    """A string that sorts as :func:`natural_key` does for ASCII names of letters, digits and
    ``_``: each part tagged (digits before words), numbers zero-padded, parts joined by NUL.
    Strings compare in C, so 100,000s of names sort in a fraction of the tuples' time."""
    return "\x00".join(map(_natural_part, name.split(".")))


_new_object = object.__new__
_set_attribute = object.__setattr__


def _expected_tensor(name: str, dims: tuple[Dim, ...], optional: bool, shape: tuple[int, ...]) -> ExpectedTensor:
    """ExpectedTensor(name, dims, optional) with its shape cached, at a fraction of the cost of the
    frozen dataclass's __init__ (a rule table expands to 100,000s of them for the largest MoE models)."""
    tensor = _new_object(ExpectedTensor)
    _set_attribute(tensor, "name", name)
    _set_attribute(tensor, "dims", dims)
    _set_attribute(tensor, "optional", optional)
    _set_attribute(tensor, "shape", shape)
    return tensor


MAX_COUNT = 65_536
"""Most layers (or experts) a config may ask for; config.json is untrusted input."""
MAX_TENSORS = 500_000
"""Most tensors a rule table expands to without knowing the folder (the largest MoE checkpoints
hold about 100k); for a folder of N stored tensors, up to 2N (at most MAX_EXPANSION)."""
MAX_EXPANSION = 2_000_000
"""Most tensors a rule table expands to for any folder (a few seconds and about 1 GB)."""


class CapReached(ConfigValueError):
    """The config asks for more layers, experts or tensors than hfconv expands, on a folder that
    stores enough tensors to fit it: the shapes were not checked, which is no verdict on the
    folder (a warning, HFC612), unlike a config the weights cannot fit (HFC611)."""


def _count(scope: Scope, expr: str, stored: int = 0) -> int:
    term = scope.evaluate(expr)
    return _bounded_count(as_int(term, "count"), term.drivers, term.text, stored)


def _bounded_count(value: int, drivers: tuple[str, ...], text: str, stored: int = 0) -> int:
    """``value``, a count from config.json (untrusted: never range() over it unchecked). Past
    MAX_COUNT it is refused, unless the folder's ``stored`` tensor count is known: the caller
    then weighs it against them (CapReached or ConfigValueError) before expanding anything."""
    if value < 0:
        raise ConfigValueError(drivers, f"{text} is {value}, a negative count")
    if value > MAX_COUNT and not stored:
        raise ConfigValueError(drivers, f"{text} is {value}, more than hfconv checks ({MAX_COUNT})")
    return value


def _dim(scope: Scope, expr: str, local: Mapping[str, int]) -> Dim:
    term = scope.evaluate(expr, local)
    value = as_int(term, "shape")
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
        parts = PLACEHOLDER.split(head)  # literal, placeholder, literal, ...
        pattern = "^" + "".join(re.escape(x) if k % 2 == 0 else r"\d+" for k, x in enumerate(parts)) + r"(\d+)\."
        if pattern not in groups:
            expr, noun = family.ranges[p]
            display = PLACEHOLDER.sub("*", head) + "{n}"
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
