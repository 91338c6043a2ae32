"""Comparing an expected model with the stored tensors, and the likely culprit in config.json.

:func:`compare` matches stored names with expected ones (prefixes, legacy renames, known
buffers) and reports shape mismatches, missing and unexpected tensors and wrong layer counts;
:func:`suggest_fix` finds the single config-field change under which every mismatch fits.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ..gcpause import gc_paused
from .expected import (
    NO_TENSOR,
    CountGroup,
    ExpandedTensors,
    ExpectedModel,
    ExpectedTensor,
    StoredShapes,
    expected_tensors,
    family_of,
    natural_key,
)
from .expression import ConfigValueError, ExpressionError, Scope, merge_unique
from .families import KNOWN_EXTRAS, LEGACY_RENAMES


class ShapeMismatch(NamedTuple):
    name: str
    """The tensor name as stored in the weights."""
    expected: ExpectedTensor
    actual: tuple[int, ...]

    @property
    def wrong_dims(self) -> tuple[int, ...]:
        if len(self.actual) != len(self.expected.dims):
            return ()
        return tuple(k for k, (a, d) in enumerate(zip(self.actual, self.expected.dims, strict=True)) if a != d.value)


class CountMismatch(NamedTuple):
    group: CountGroup
    found: tuple[int, ...]
    """Sorted indices present in the weights."""


class Comparison(NamedTuple):
    """The differences between an ExpectedModel and the tensors of a folder."""

    mismatched: tuple[ShapeMismatch, ...] = ()
    missing: tuple[str, ...] = ()
    """Required tensors absent from the weights (named in the folder's prefix convention)."""
    unexpected: tuple[str, ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()
    """(tensor, label) for known buffers and leftovers loaders ignore."""
    counts: tuple[CountMismatch, ...] = ()
    matched: int = 0
    missing_expected: tuple[str, ...] = ()
    """The expected model's own names of ``missing``, in the same order."""

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
    with gc_paused():  # a tuple or two per stored tensor, 100,000s for the largest models
        return _compare(expected, actual)


def _compare(expected: ExpectedModel, actual: Mapping[str, tuple[int, ...]], *,
             any_mismatch: bool = False, looked_up: list[Any] | None = None, legacy_free: bool = False) -> Comparison:
    """compare(); with ``any_mismatch``, a Comparison of the first shape mismatch alone as soon as
    one is found (all suggest_fix needs of a trial config under which most shapes may differ).
    ``looked_up``: what each name of ``actual`` is expected as, where the caller looked it up;
    ``legacy_free``: the caller found no legacy part (LayerNorm.gamma) in any name."""
    prefix = expected.prefix
    tensors = expected.tensors
    # What hot loops read: name -> an object with the expected ``shape`` and ``optional`` (a rule
    # table's runs, in C; else the ExpectedTensors themselves).
    index: Mapping[str, Any] = tensors.index if isinstance(tensors, ExpandedTensors) else tensors
    # A head the table does not know may nest the base model under its own attribute
    # (T5ForSequenceClassification: transformer.encoder...): find that prefix from the names.
    # A prefix the loader strips (a transformers 4 CLIPTextModel's text_model.) is found the same
    # way, for naming what is missing as most stored names are; it is stripped from each stored
    # name that has it, as the loader does, whatever the others.
    strip = expected.strip_prefixes
    # The names and shapes as lists (a StoredShapes holds them so already, and may have looked the
    # names up in this index too).
    if isinstance(actual, StoredShapes):
        names, shapes = actual.names, actual.shapes
        if looked_up is None and actual.looked_up is not None and actual.index is index:
            looked_up = actual.looked_up
    else:
        names, shapes = list(actual), list(actual.values())
    if not expected.complete:
        outer = _outer_prefix(names, index, prefix)
    else:
        outer = _outer_prefix(names, index, prefix, strip) if strip else ""
    # What each stored name is expected as, looked up as it is: when every one is found, that is
    # the answer (the common case) and no name is matched one by one.
    wants: list[Any] = looked_up if looked_up is not None else \
        list(map(index.get, names, itertools.repeat(NO_TENSOR)))
    unknown = list(map(operator.is_, wants, itertools.repeat(NO_TENSOR)))
    if not outer and any(unknown) and expected.allowed_extras:
        trailing = _trailing_only(expected, actual, unknown, names, wants, index, any_mismatch)
        if trailing is not None:
            return trailing
    # All names joined by newlines, made once: the legacy parts are looked for in it, and the
    # numbered runs counted (below) where every stored name is an expected one.
    joined = "\n" + "\n".join(names) if not outer and not any(unknown) and not legacy_free else ""
    if not outer and not any(unknown) and (legacy_free or _LEGACY_PARTS.search(joined) is None):
        canonical, taken, (direct, bare, prefixed) = None, None, (len(names), 0, 0)
    else:
        canonical, taken, (direct, bare, prefixed) = _match_names(names, index, prefix, outer, strip)
    same = canonical is None  # every stored name is an expected one, as it is
    expected_name_of: dict[str, str] = canonical if canonical is not None else {}
    taken_set: set[str] = taken if taken is not None else set()

    # 1. Numbered runs (layers, experts): the indices present vs the configured count. Tensors the
    # model class declares ignorable (DeepSeek-V3's multi-token-prediction layer model.layers.61)
    # are not layers of the run.
    allowed = [re.compile(p) for p in expected.allowed_extras]
    counted = names if same or not allowed else \
        [name for name in names if name in expected_name_of or not any(rx.search(name) for rx in allowed)]
    # The expected name of a matched tensor (named as the count patterns name it), else the stored
    # one, which may need the base prefix added or removed to match.
    keys = names if same else list(map(expected_name_of.get, counted, counted))
    unmatched_keys = [] if same or not prefix else list(itertools.filterfalse(expected_name_of.__contains__, counted))
    count_mismatches = []
    skipped: list[tuple[re.Pattern, frozenset[int]]] = []
    # One regex pass per group over the keys, each after a newline: the pattern's ``^`` becomes
    # that newline, a literal the engine searches for (100,000s of names in C), unless a name
    # holds a newline itself.
    # Where the stored names are the expected ones, every one (as is: no prefix, no legacy part),
    # a rule table's indices are read from its templates instead (ExpandedTensors.indices), where
    # there are enough names for that to cost less.
    whole = same and len(names) == len(index) >= _TEMPLATES_FROM
    if not same:
        joined = ""
    by_line: bool | None = None
    for group in expected.counts:
        regex = re.compile(group.pattern)
        found = tensors.indices(group.pattern) if whole and isinstance(tensors, ExpandedTensors) else None
        if found is None:
            joined = joined or "\n" + "\n".join(keys)
            by_line = joined.count("\n") == len(keys) if by_line is None else by_line
            found = set(map(int, set(re.compile("\n(?:" + group.pattern[1:] + ")").findall(joined)))) \
                if by_line and regex.groups == 1 and group.pattern.startswith("^") else \
                set(map(int, map(_GROUP_1, filter(None, map(regex.match, keys)))))
        for key in unmatched_keys:
            if regex.match(key) is None and (i := _group_index(regex, key, prefix)) is not None:
                found.add(i)
        want = group.wanted
        if found != want and (found or any(regex.match(k) for k in index)):
            count_mismatches.append(CountMismatch(group, tuple(sorted(found))))
            skipped.append((regex, frozenset(found ^ want)))

    def left_to_count(name: str) -> bool:
        return _left_to_count(name, skipped, prefix)

    # 2. Every stored tensor: matched (then its shape is checked), ignored, or unexpected.
    extras = _ignored_labels(expected)
    mismatched, unexpected, ignored = [], [], []
    unmatched: list[str] = []
    # In C: each stored shape against its expected tensor's (a stand-in with no shape when none).
    if not same:  # a stored name -> what its matched expected name is expected as, else NO_TENSOR
        lookup: Any = index.get  # typed loosely: a stored name without a match looks up None
        wants = list(map(lookup, map(expected_name_of.get, names), itertools.repeat(NO_TENSOR)))
    equal = list(map(operator.eq, shapes, map(_SHAPE, wants)))
    matched = equal.count(True)
    for k in itertools.compress(range(len(names)), map(operator.not_, equal)):
        if wants[k] is NO_TENSOR:
            unmatched.append(names[k])
        elif tuple(shapes[k]) != wants[k].shape:
            want_name = names[k] if same else expected_name_of[names[k]]
            mismatched.append(ShapeMismatch(names[k], tensors[want_name], tuple(shapes[k])))
            if any_mismatch:
                return Comparison(tuple(mismatched))
        else:  # a list shape equal to the tuple
            matched += 1
    for name in unmatched:
        if not left_to_count(name):
            label = next((lbl for rx, lbl in extras if rx.search(name)), None)
            if label is not None:
                ignored.append((name, label))
            elif expected.complete or (prefix and name.startswith(prefix)):
                unexpected.append(name)

    # 3. Required tensors nobody stored, named the way this folder names its tensors.
    missing = []
    present = len(names) if same else len(taken_set)
    absent = index.keys() - (set(names) if same else taken_set) if present < len(index) else set()
    for original in [k for k in tensors if k in absent] if absent else ():
        if index[original].optional or left_to_count(original):
            continue
        key = original
        if prefix and bare > direct and key.startswith(prefix):
            key = key[len(prefix):]
        elif prefix and prefixed > direct and not key.startswith(prefix) and not expected.complete:
            key = prefix + key
        missing.append((original, outer + key))
    if expected.source == "rules":  # rule tables expand rule by rule: report in natural order
        missing.sort(key=lambda pair: natural_key(pair[0]))
    return Comparison(tuple(mismatched), tuple(name for _, name in missing), tuple(unexpected), tuple(ignored),
                      tuple(count_mismatches), matched, tuple(original for original, _ in missing))


def _trailing_only(expected: ExpectedModel, actual: Mapping[str, tuple[int, ...]], is_unknown: list[bool],
                   names: list[str], wants: list[Any], index: Mapping[str, Any],
                   any_mismatch: bool) -> Comparison | None:
    """compare() when the only stored names that are no expected name as they are lie in the
    trailing layers the model class ignores (DeepSeek-V3's multi-token-prediction layer): the rest
    compared in the common case's bulk passes, these reported as ignored, as the name-by-name path
    reports them. None when another name is unknown, or one of them might match an expected name
    another way (prefix, legacy names)."""
    labels = _ignored_labels(expected)
    buffers = len(KNOWN_EXTRAS)  # the known buffers' labels first, then the trailing layers'
    allowed = [rx for rx, _ in labels[buffers:]]
    unknown = list(itertools.compress(names, is_unknown))
    if len(unknown) == len(actual) or _LEGACY_PARTS.search("\n".join(actual)) is not None:
        return None
    # Each in a trailing layer, and none an expected name with the base prefix added or removed
    # (_canonical, in C: no name has a legacy part, and none is an expected name as it is).
    prefix = expected.prefix
    if len(allowed) == 1:
        if not all(map(allowed[0].search, unknown)):
            return None
    elif not all(any(rx.search(name) for rx in allowed) for name in unknown):
        return None
    if prefix and (any(map(index.__contains__, map(prefix.__add__, unknown))) or
                   any(map(index.__contains__, map(str.removeprefix, unknown, itertools.repeat(prefix))))):
        return None
    known = list(map(operator.not_, is_unknown))
    shapes = actual.shapes if isinstance(actual, StoredShapes) else list(actual.values())
    rest = _compare(expected, StoredShapes(list(itertools.compress(names, known)),
                                           list(itertools.compress(shapes, known))),
                    any_mismatch=any_mismatch, looked_up=list(itertools.compress(wants, known)), legacy_free=True)
    if any_mismatch and rest.mismatched:
        return rest
    # Name by name, these would be uncounted, matched by nothing, and then ignored (KNOWN_EXTRAS'
    # label first), unless a layer-count mismatch leaves their index to the count finding.
    skipped = [(re.compile(c.group.pattern), frozenset(set(c.found) ^ c.group.wanted)) for c in rest.counts]
    # The known buffers' labels some of these names may take, found over all of them at once: those
    # patterns (anchored by ^ and $ only, no newline) match, multiline, the names joined by newlines
    # wherever they match one of them. The trailing layers' own patterns (a remote model's, with
    # --trust-remote-code) are kept whatever they are.
    # (A pattern whose text must hold a literal the names do not is not searched.)
    joined = "\n".join(unknown)
    labels = [(rx, label) for rx, label in labels[:buffers]
              if _required_text(rx.pattern) in joined and re.search(rx.pattern, joined, re.M)] + labels[buffers:]
    ignored = list(rest.ignored)
    if not skipped and len({label for _, label in labels}) == 1:
        # One label left, and every name matches one of its patterns (above): each takes it.
        ignored.extend(zip(unknown, itertools.repeat(labels[0][1])))
    else:
        for name in unknown:
            if not _left_to_count(name, skipped, expected.prefix):
                ignored.append((name, next(label for rx, label in labels if rx.search(name))))
    return rest._replace(ignored=tuple(ignored))


@functools.lru_cache(maxsize=64)
def _required_text(pattern: str) -> str:
    """The longest literal text every match of ``pattern`` holds ("" where this cannot tell):
    the escaped punctuation and the letters, digits and ``_`` outside any group, not made optional
    by a quantifier, of a pattern without alternatives, character classes, counted repeats or
    ``(?`` constructs (flags among them)."""
    if "(?" in pattern or "[" in pattern or "{" in pattern:
        return ""
    runs, run, depth, at = [""], "", 0, 0
    while at < len(pattern):
        c = pattern[at]
        literal = None
        if c == "\\":
            escaped = pattern[at + 1:at + 2]
            if escaped and escaped in "xuU0123456789":  # a character code or a group reference: what
                return ""                               # follows is no literal of its own
            literal = escaped if escaped and not escaped.isalnum() and escaped.isascii() else None
            at += 2
        else:
            if c.isascii() and (c.isalnum() or c == "_"):
                literal = c
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            elif c == "|" and depth == 0:
                return ""
            at += 1
        if literal is not None and depth == 0 and pattern[at:at + 1] not in ("?", "*", "+"):
            run += literal
        else:
            runs.append(run)
            run = ""
    return max([*runs, run], key=len)


def _ignored_labels(expected: ExpectedModel) -> list[tuple[re.Pattern, str]]:
    """(regex, label) of the stored tensors loaders ignore: known buffers first, then the trailing
    layers this model class ignores."""
    labels = [(re.compile(p), label) for p, label in KNOWN_EXTRAS]
    return labels + [(re.compile(p), "multi-token-prediction layers past num_hidden_layers")
                     for p in expected.allowed_extras]


def _left_to_count(name: str, skipped: list[tuple[re.Pattern, frozenset[int]]], prefix: str) -> bool:
    """Whether ``name`` lies in a layer (or expert) a count mismatch reports, rather than itself."""
    return any((i := _group_index(rx, name, prefix)) is not None and i in indices for rx, indices in skipped)


_TEMPLATES_FROM = 1024
"""Fewest names whose numbered runs are read from the rule templates rather than the names (about
0.1 ms a table against 0.25 us a name)."""
_GROUP_1 = operator.methodcaller("group", 1)
_SHAPE = operator.attrgetter("shape")
"""compare()'s stand-in for the expected tensor of a stored name that matches none: its shape
equals no stored shape."""


def _match_names(names: list[str], tensors: Mapping[str, Any], prefix: str, outer: str,
                 strip: tuple[str, ...] = ()) -> tuple[dict[str, str] | None, set[str] | None, tuple[int, int, int]]:
    """Stored name -> expected name, the expected names taken, and how many stored names match
    as is, without the prefix and with it (direct, bare, prefixed); the first stored name of an
    expected one takes it. (None, None, counts) when every stored name is an expected one as it
    is: no map of 100,000s of names to themselves. ``outer``, else the first of ``strip`` a
    stored name starts with, is removed from it first.

    The common case in bulk: no outer prefix and no legacy name part anywhere, so a stored name
    that is an expected one maps to itself; the other names one by one, and all of them one by
    one (the original order decides) when one of those takes an expected name also stored as is.
    """
    if not outer and _LEGACY_PARTS.search("\n".join(names)) is None:
        exact = list(filter(tensors.__contains__, names))
        if len(exact) == len(names):  # every stored name is an expected one (names are distinct)
            return None, None, (len(exact), 0, 0)
        exact_set = set(exact)
        rest = _match_each(list(itertools.filterfalse(exact_set.__contains__, names)), tensors, prefix, "", strip)
        if not exact_set & rest[1]:
            canonical = dict(zip(exact, exact))
            canonical.update(rest[0])
            direct, bare, prefixed = rest[2]
            return canonical, exact_set | rest[1], (direct + len(exact), bare, prefixed)
    return _match_each(names, tensors, prefix, outer, strip)


def _match_each(names: list[str], tensors: Mapping[str, Any], prefix: str, outer: str,
                strip: tuple[str, ...] = ()) -> tuple[dict[str, str], set[str], tuple[int, int, int]]:
    """_match_names one stored name at a time."""
    canonical: dict[str, str] = {}
    taken: set[str] = set()
    direct = bare = prefixed = 0
    stems = (outer, *strip) if outer else strip
    for name in names:
        stem = next((s for s in stems if name.startswith(s)), "") if stems else ""
        key = _canonical(name[len(stem):] if stem else name, tensors, prefix)
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
    return canonical, taken, (direct, bare, prefixed)


def _outer_prefix(names: list[str], tensors: Mapping[str, Any], prefix: str,
                  only: tuple[str, ...] = ()) -> str:
    """The attribute path (``transformer.``) under which most stored names match expected ones,
    when more match with it stripped than as they are; else ``""``. ``only``: the paths to try
    (else the first one or two parts of the stored names)."""
    def matches(strip: str) -> int:
        return sum(1 for n in names if n.startswith(strip) and
                   _canonical(n[len(strip):], tensors, prefix) is not None)

    candidates: dict[str, int] = {}
    for stem in only:
        candidates[stem] = sum(1 for name in names if name.startswith(stem))
    for name in names if not only else ():
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


_LEGACY_PARTS = re.compile("|".join(re.escape(old) for old, _ in LEGACY_RENAMES))


def legacy_name(name: str) -> str:
    """``name`` with the TF-era parts transformers renames at load (LEGACY_RENAMES) renamed."""
    if _LEGACY_PARTS.search(name) is None:
        return name
    for old, new in LEGACY_RENAMES:
        if old in name:
            name = name.replace(old, new)
    return name


def _canonical(name: str, tensors: Mapping[str, Any], prefix: str) -> str | None:
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
    fields = list(merge_unique(*(mm.expected.dims[k].drivers for mm in comparison.mismatched for k in mm.wrong_dims)))
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
            with gc_paused():
                result = _compare(model, actual, any_mismatch=True) if model is not None else None
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
