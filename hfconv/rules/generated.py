"""Rule tables generated from transformers, for the most-downloaded families the hand-written
tables (:mod:`hfconv.rules.families`) do not cover: ViT, CamemBERT, PLBart, ...

``benchmarks/generate_rule_tables.py`` builds each model class on the meta device for its
default config and for one variant per config field, fits every tensor dimension to an
expression of the rule-table language (:mod:`hfconv.rules.expression`) and every numbered run
to its count field, checks the fit by expanding it again, and writes
``hfconv/schemas/generated_rules.json``. This module reads that file; it never imports
transformers, which is the point: ``validate --reference auto`` on these families takes a
fraction of a second instead of building a reference model.

A table answers only for configs like those it was fitted on. :func:`generated_expected`
returns None (the caller falls back to the transformers reference) when:

- the architecture is not in the table;
- a field that changes the tensors and was not fitted (a boolean such as
  ``tie_word_embeddings``, any string, list or nested value, a size whose variant could not be
  built) differs from the class default it was generated with;
- a size is absent from config.json while the class derives its default from other fields in
  a way no expression fitted (where one did, ``pooler_output_size = hidden_size``, it is used);
- a per-layer list (``layer_types``) names a kind of layer the generator did not probe;
- a field and its alias (``attribute_map``) disagree, or a value is unusable.

Fields the generator probed with the values published configs give them (activations, RoPE
parameters, a sliding window, each kind of layer) and found to change no tensor are no guards.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

from ..fsutil import read_package_text
from .expected import CountGroup, Dim, ExpectedModel, ExpectedTensor, architecture_of, expected_tensors
from .expression import ConfigValueError, ExpressionError
from .families import FAMILIES, Family, Head, Rule

TABLE_FILE = "generated_rules.json"
"""The generated tables, under ``hfconv/schemas/`` (package data)."""

_METADATA = frozenset({"model_type", "architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
                       "id2label", "label2id", "num_labels", "problem_type", "auto_map", "_commit_hash"})


@functools.cache
def _text() -> str:
    """The generated tables file (empty when it is absent or unreadable)."""
    try:
        return read_package_text("schemas", TABLE_FILE)
    except (OSError, ValueError):
        return ""


@functools.cache
def _document() -> Mapping[str, Any]:
    """The whole file, parsed (for listings; validate parses only its family's line)."""
    try:
        data = json.loads(_text())
    except ValueError:
        return {"families": {}}
    return data if isinstance(data, dict) and isinstance(data.get("families"), dict) else {"families": {}}


@functools.cache
def _entry(model_type: str) -> Mapping[str, Any] | None:
    """One family's table. The script writes one family per line (``"vit":{...},``), so only that
    line is parsed: the whole file is a megabyte or two."""
    text = _text()
    if '"families":{\n' not in text[:200]:  # not written one family per line: parse it all
        entry = _document()["families"].get(model_type)
        return entry if isinstance(entry, dict) else None
    start = text.find("\n" + json.dumps(model_type) + ":")
    if start < 0:
        return None
    end = text.find("\n", start + 1)
    line = text[start + 1:end if end >= 0 else len(text)].rstrip().rstrip(",")
    try:
        entry = json.loads("{" + line + "}").get(model_type)
    except ValueError:
        entry = _document()["families"].get(model_type)  # not one line per family: parse it all
    return entry if isinstance(entry, dict) else None


def generated_families() -> tuple[str, ...]:
    """The model types the generated tables cover."""
    return tuple(sorted(_document()["families"]))


def transformers_version() -> str:
    """The transformers version the tables were generated from (the file's first line says it)."""
    head = _text()[:200]
    found = head.find('"transformers":"')
    return head[found + 16:head.find('"', found + 16)] if found >= 0 else "?"


@functools.cache
def _family(model_type: str, architecture: str) -> Family | None:
    entry = _entry(model_type)
    if entry is None or architecture not in entry.get("classes", {}):
        return None
    table = entry["classes"][architecture]
    # [name, [dimension expressions], optional, condition (absent: always)]
    rules = tuple(Rule(r[0], tuple(r[1]), r[3] if len(r) > 3 else None, "1" if r[2] else None)
                  for r in table["rules"])
    ranges = {p: (expr, "layers") for p, expr in table.get("ranges", {}).items()}
    return Family(model_type=model_type, class_prefix="", prefix=table.get("prefix", ""), ranges=ranges,
                  defaults=dict(entry.get("defaults", {})), derived=dict(entry.get("derived", {})), rules=(),
                  heads={architecture: Head(rules)}, default_head=architecture)


def covers(config: Mapping[str, Any]) -> bool:
    """Whether a generated table exists for this config's model type and ``architectures[0]``."""
    model_type, architecture = config.get("model_type"), architecture_of(config)
    entry = _entry(model_type) if isinstance(model_type, str) else None
    return entry is not None and architecture in entry.get("classes", {})


def resolved_config(config: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """``config`` with aliases resolved to the fields the table uses, or None when the table does
    not answer for it (a guarded field differs from the generated default, a derived size is
    absent, an alias disagrees)."""
    resolved = dict(config)
    for alias, field_name in entry.get("aliases", {}).items():
        if resolved.get(alias) is None:
            continue
        if resolved.get(field_name) is not None and resolved[field_name] != resolved[alias]:
            return None
        resolved[field_name] = resolved[alias]
    for field_name, default in entry.get("guards", {}).items():
        value = resolved.get(field_name)
        if value is None and default is not None:
            continue  # absent or null: the class default
        if value != default and not (default is None and isinstance(value, float)):
            return None
    for field_name, kinds in entry.get("per_layer", {}).items():  # layer_types: each entry a kind probed
        value = resolved.get(field_name)
        if value is not None and not (isinstance(value, list) and all(
                isinstance(kind, (str, int)) and not isinstance(kind, bool) and kind in kinds for kind in value)):
            return None
    return resolved


def generated_expected(config: Mapping[str, Any], stored: Collection[str] = ()) -> ExpectedModel | None:
    """The expected model of ``config`` from the generated tables, or None where they do not
    answer (see the module docstring); never raises for a bad config (the transformers
    reference, or the generic check, then says what is wrong). ``stored``: the folder's tensor
    names, where a composed model's part may be named two ways (see :data:`COMPOSED`)."""
    model_type, architecture = config.get("model_type"), architecture_of(config)
    if not isinstance(model_type, str) or architecture is None:
        return None
    if (model_type, architecture) in COMPOSED:
        return _composed_expected(config, model_type, architecture, stored)
    entry = _entry(model_type)
    family = _family(model_type, architecture)
    if family is None or entry is None:
        return None
    resolved = resolved_config(config, entry)
    if resolved is None or any(resolved.get(f) is None for f in entry["classes"][architecture].get("needs", ())):
        return None
    try:
        model = expected_tensors(resolved, architecture, family=family)
    except (ConfigValueError, ExpressionError, TypeError, ValueError):
        return None
    if model is None:
        return None
    table = entry["classes"][architecture]
    return replace(model, source=f"rules generated from transformers {transformers_version()}",
                   allowed_extras=tuple(table.get("extras", ())), strip_prefixes=tuple(table.get("strip", ())))


def is_metadata(field_name: str) -> bool:
    """Fields that never change the tensors (names, versions, labels: num_labels is fitted)."""
    return field_name in _METADATA


# --- models made of generated ones -----------------------------------------------------------------

class Part(NamedTuple):
    """One part of a composed model: its config under ``config_key``, its tensors under ``prefix``,
    answered by the table of ``model_type``'s ``architecture``. With ``any_type``, the part's own
    config names its model type (``model_type`` where it does not) and ``architecture`` is the end
    of the class name (``ForCausalLM``: LLaVA's language model may be any of the families)."""

    config_key: str
    prefix: str
    model_type: str
    architecture: str
    any_type: bool = False


class Joint(NamedTuple):
    """A tensor joining the parts; each dimension a field of config.json (``projection_dim``), of a
    part's config (``text_config.hidden_size``), a number, the count of a list field's entries
    (``#vision_feature_layer``: 1 for a single value) or a product of those (``a * b``). With
    ``when``, it exists only where that boolean field of config.json is true."""

    name: str
    dims: tuple[str, ...]
    when: str = ""


class Composition(NamedTuple):
    parts: tuple[Part, ...]
    joints: tuple[Joint, ...]
    defaults: dict[str, int]
    """The whole model's config defaults the joints read (CLIPConfig's projection_dim)."""


COMPOSED: dict[tuple[str, str], Composition] = {
    ("clip", "CLIPModel"): Composition(
        (Part("text_config", "text_model.", "clip_text_model", "CLIPTextModel"),
         Part("vision_config", "vision_model.", "clip_vision_model", "CLIPVisionModel")),
        (Joint("text_projection.weight", ("projection_dim", "text_config.hidden_size")),
         Joint("visual_projection.weight", ("projection_dim", "vision_config.hidden_size")),
         Joint("logit_scale", ())),
        {"projection_dim": 512},
    ),
    ("siglip", "SiglipModel"): Composition(
        (Part("text_config", "text_model.", "siglip_text_model", "SiglipTextModel"),
         Part("vision_config", "vision_model.", "siglip_vision_model", "SiglipVisionModel")),
        (Joint("logit_scale", ("1",)), Joint("logit_bias", ("1",))),
        {},
    ),
    ("gemma3", "Gemma3ForConditionalGeneration"): Composition(
        (Part("text_config", "language_model.", "gemma3_text", "Gemma3ForCausalLM"),
         Part("vision_config", "vision_tower.", "siglip_vision_model", "SiglipVisionModel")),
        (Joint("multi_modal_projector.mm_input_projection_weight",
               ("vision_config.hidden_size", "text_config.hidden_size")),
         Joint("multi_modal_projector.mm_soft_emb_norm.weight", ("vision_config.hidden_size",))),
        {},
    ),
    ("paligemma", "PaliGemmaForConditionalGeneration"): Composition(
        (Part("text_config", "language_model.", "gemma", "ForCausalLM", any_type=True),
         Part("vision_config", "vision_tower.", "siglip_vision_model", "VisionModel", any_type=True)),
        (Joint("multi_modal_projector.linear.weight", ("projection_dim", "vision_config.hidden_size")),
         Joint("multi_modal_projector.linear.bias", ("projection_dim",))),
        {"projection_dim": 2048},
    ),
    **{(model_type, architecture): Composition(
        (Part("text_config", "language_model.", "llama", "ForCausalLM", any_type=True),
         Part("vision_config", "vision_tower.", "clip_vision_model", "VisionModel", any_type=True)),
        (Joint("multi_modal_projector.linear_1.weight",
               ("text_config.hidden_size", "vision_config.hidden_size * #vision_feature_layer")),
         Joint("multi_modal_projector.linear_1.bias", ("text_config.hidden_size",), "multimodal_projector_bias"),
         Joint("multi_modal_projector.linear_2.weight", ("text_config.hidden_size", "text_config.hidden_size")),
         Joint("multi_modal_projector.linear_2.bias", ("text_config.hidden_size",), "multimodal_projector_bias"),
         *extra),
        {"vision_feature_layer": -2, "multimodal_projector_bias": True},
    ) for model_type, architecture, extra in (
        ("llava", "LlavaForConditionalGeneration", ()),
        ("llava_next", "LlavaNextForConditionalGeneration", (Joint("image_newline", ("text_config.hidden_size",)),)),
    )},
}
"""Models whose config.json nests one config per part (CLIP, SigLIP: a text and a vision encoder;
Gemma 3, PaliGemma, LLaVA: a language model and a vision tower), each part a table under its attribute,
plus the few tensors that join them. A part whose class drops a prefix at load (SigLIP's vision
model, ``vision_model.``) is named with it by transformers 4 (``vision_tower.vision_model.embeddings``)
and without it by transformers 5 (``vision_tower.embeddings``): the folder's names say which."""

_NAME = re.compile(r"(?<![\w.])([A-Za-z_]\w*)(?![\w(])")


def _composed_expected(config: Mapping[str, Any], model_type: str, architecture: str,
                       stored: Collection[str]) -> ExpectedModel | None:
    """The expected model of a :data:`COMPOSED` model: each part's generated table answering for
    its nested config, its names, fields and counts under the part's prefix and config key; None
    where one part's table does not answer or a value is unusable (the caller falls back)."""
    parts, joints, defaults = COMPOSED[(model_type, architecture)]
    if any(key.endswith("_config_dict") and value is not None for key, value in config.items()):
        return None  # transformers 4's older spelling of the parts' configs: left to the reference
    tensors: dict[str, ExpectedTensor] = {}
    counts: list[CountGroup] = []
    extras: list[str] = []
    part_defaults: dict[str, Mapping[str, Any]] = {}  # config key -> the defaults its part's table fills sizes from
    for part in parts:
        key, prefix = part.config_key, part.prefix
        # (A part's config left out takes the whole model's defaults, which may not be the part
        # class's: Gemma 3's vision tower. Left to the reference.)
        nested = config.get(key)
        found = _part_model(nested, part) if isinstance(nested, dict) else None
        if found is None:
            return None
        model, part_defaults[key] = found
        for inner in model.strip_prefixes:  # the part named as transformers 4 wrote it, or as 5 does
            old = sum(1 for name in stored if name.startswith(prefix + inner))
            if old and old != sum(1 for name in stored if name.startswith(prefix)):
                return None  # both namings at once: left to the reference (or the generic check)
            prefix += inner if old else ""
        for name, tensor in model.tensors.items():
            dims = tuple(Dim(d.value, tuple(f"{key}.{f}" for f in d.drivers), _nested_formula(d.formula, key), d.notes)
                         for d in tensor.dims)
            tensors[prefix + name] = ExpectedTensor(prefix + name, dims, tensor.optional)
        counts += [CountGroup("^" + re.escape(prefix) + group.pattern.removeprefix("^"), prefix + group.display,
                              group.expected, f"{key}.{group.field}", group.noun) for group in model.counts]
        extras += [rx if not rx.startswith("^") else "^" + re.escape(prefix) + rx[1:] for rx in model.allowed_extras]

    def size(field: str) -> Any:
        """A joining tensor's field: a part's (``text_config.hidden_size``: its nested config, else its
        table's default) or the whole config's (else the composition's default)."""
        key, dot, short = field.partition(".")
        if dot:
            if key not in part_defaults:
                return None
            value, default = config[key].get(short), part_defaults[key].get(short)
        else:
            value, default = config.get(field), defaults.get(field)
        return value if value is not None else default

    for joint in joints:
        if joint.when and size(joint.when) is not True:
            if size(joint.when) is not False:
                return None  # not a boolean: left to the reference
            continue
        joint_dims = [d for d in (_joint_dim(spec, size) for spec in joint.dims) if d is not None]
        if len(joint_dims) != len(joint.dims):
            return None
        tensors[joint.name] = ExpectedTensor(joint.name, tuple(joint_dims))
    return ExpectedModel(tensors=tensors, family=model_type, architecture=architecture,
                         source=f"rules generated from transformers {transformers_version()}, part by part",
                         counts=tuple(counts), allowed_extras=tuple(extras))


def _nested_formula(formula: str, key: str) -> str:
    """``hidden_size = 32`` of a part's table as the whole config names it: ``text_config.hidden_size = 32``."""
    expression, equals, values = formula.partition(" = ")
    return _NAME.sub(lambda m: f"{key}.{m.group(1)}" if m.group(1) not in ("if", "else", "and", "or", "not") else
                     m.group(1), expression) + equals + values


def _part_model(nested: Mapping[str, Any], part: Part) -> tuple[ExpectedModel, Mapping[str, Any]] | None:
    """A part's expected model from its nested config, and the defaults its table fills sizes
    from: a hand-written table (LLaVA's Llama) or a generated one; None where none answers."""
    part_type = nested.get("model_type", part.model_type) if part.any_type else part.model_type
    if not isinstance(part_type, str) or nested.get("model_type", part_type) != part_type:
        return None
    family = FAMILIES.get(part_type)
    if family is not None:
        architecture = family.class_prefix + part.architecture if part.any_type else part.architecture
        if family.head_for(architecture) is None:
            return None
        try:
            model = expected_tensors({**nested, "model_type": part_type}, architecture, family=family)
        except (ConfigValueError, ExpressionError, TypeError, ValueError):
            return None
        return (model, family.defaults) if model is not None and model.complete else None
    entry = _entry(part_type)
    if entry is None:
        return None
    classes = [name for name in entry.get("classes", {}) if name.endswith(part.architecture)] if part.any_type else \
        [part.architecture]
    model = generated_expected({**nested, "model_type": part_type, "architectures": classes[:1]}) if classes else None
    return (model, entry.get("defaults", {})) if model is not None and model.complete else None


def _joint_dim(spec: str, size: Callable[[str], Any]) -> Dim | None:
    """One dimension of a joining tensor (see :class:`Joint`), or None where a value is unusable."""
    if spec.isdigit():
        return Dim(int(spec))
    value, drivers, terms = 1, [], []
    for factor in spec.split(" * "):
        entries = size(factor.lstrip("#"))
        number = (len(entries) if isinstance(entries, list) else 1 if type(entries) is int else None) \
            if factor.startswith("#") else entries
        if type(number) is not int or number <= 0:
            return None
        value *= number
        drivers.append(factor.lstrip("#"))
        terms.append(str(number))
    return Dim(value, tuple(drivers), f"{spec} = {' * '.join(terms)}" if len(terms) > 1 else f"{spec} = {value}")
