"""Schema checks: each metadata JSON file against its JSON Schema in ``hfconv/schemas``.

The schemas (JSON Schema draft 2020-12) describe what ``from_pretrained`` and
``AutoTokenizer.from_pretrained`` need from each file and nothing more: extra keys are always
allowed, ``null`` is allowed wherever transformers writes it. Every violation becomes one finding
naming the file and the JSON path (``$.rope_scaling.factor``) in words.

Parse errors are not repeated here: the read check already reports them as HFC401, and a file
that did not parse is simply absent from ``contents.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple, TypeGuard

from ..contents import FolderContents
from ..findings import Finding, finding, register
from ..fsutil import read_package_text
from .schema_subset import schema_errors

if TYPE_CHECKING:  # pragma: no cover
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator

# --- codes (HFC402..HFC449) --------------------------------------------------------------------
register("HFC402", "error", "config.json schema",
         "config.json lacks a field the model class needs, or holds a value of the wrong type or "
         "range (a float layer count, a negative size, a rope_scaling without its factor); "
         "from_pretrained fails or builds the wrong model.",
         "Correct the value at the JSON path given, or re-save the config with save_pretrained.",
         "config.json: $.rope_scaling.factor must be a scaling factor greater than 0, not -2; fix that "
         "value in config.json (or re-save it with save_pretrained)")
register("HFC403", "error", "tokenizer_config.json schema",
         "A value in tokenizer_config.json has the wrong shape (a special token that is neither a "
         "string nor an AddedToken object, a non-numeric key in added_tokens_decoder, ...); "
         "AutoTokenizer.from_pretrained fails on it.",
         "Correct the value at the JSON path given, or re-save the tokenizer with save_pretrained.",
         "tokenizer_config.json: $.added_tokens_decoder has the key 'abc', which must be a token id "
         "written as a decimal number; fix that value in tokenizer_config.json")
register("HFC404", "error", "special_tokens_map.json schema",
         "special_tokens_map.json holds a token that is neither a string nor a valid AddedToken object; "
         "the tokenizer fails to load (AddedToken refuses unknown keys).",
         "Correct the value at the JSON path given, or re-save the tokenizer with save_pretrained.",
         "special_tokens_map.json: $.eos_token.id is not a key an AddedToken object may have; remove it")
register("HFC405", "error", "generation_config.json schema",
         "generation_config.json holds a value generate() refuses or misuses (eos_token_id that is not "
         "an id, top_p above 1, ...).",
         "Correct the value at the JSON path given, or re-save it with GenerationConfig.save_pretrained.",
         "generation_config.json: $.top_p must be a number between 0 and 1, not 1.5; fix that value")
register("HFC406", "error", "index file schema",
         "A weight index's metadata or weight_map has values of the wrong type; loaders and download "
         "planners misread it.",
         "Regenerate the index (hfconv convert writes one).",
         "model.safetensors.index.json: $.metadata.total_size must be the total tensor bytes (a number "
         ">= 0), not 'big'; regenerate the index")
register("HFC407", "error", "tokenizer.json structure",
         "tokenizer.json lacks the model object, its vocabulary, or well-formed added tokens; the fast "
         "tokenizer cannot be built from it.",
         "Re-save the tokenizer with save_pretrained (or tokenizers' Tokenizer.save).",
         "tokenizer.json: $.added_tokens[3].id is missing; re-save the tokenizer")
register("HFC408", "info", "unknown model type",
         "hfconv has no family-specific schema for this model_type, so only the generic config "
         "fields were checked.",
         "Nothing to fix; family-specific checks are simply not available for this model type.",
         "config.json: model_type 'olmoe' has no family-specific schema in hfconv; only the generic "
         "fields were checked")
register("HFC409", "warning", "config without model_type",
         "AutoConfig and the Auto model classes pick the model class from model_type; without it they "
         "guess from the folder name and usually fail.",
         "Add \"model_type\" (e.g. \"llama\") to config.json.",
         "config.json has no model_type (only architectures); AutoConfig.from_pretrained cannot tell "
         "which model to build")
register("HFC410", "error", "added_tokens.json schema",
         "added_tokens.json must map token strings to integer ids; the slow tokenizer fails on "
         "anything else.",
         "Correct the value, or re-save the tokenizer with save_pretrained.",
         "added_tokens.json: $['<pad>'] must be a token id (an integer >= 0), not '32000'; fix that value")

register("HFC411", "error", "layer_types disagrees with the layer count",
         "transformers builds num_hidden_layers layers and gives each the attention kind its layer_types "
         "entry names; the config classes of transformers 4.57 and 5 refuse a config whose layer_types "
         "has more or fewer entries than num_hidden_layers, or an entry that is not a layer type they "
         "know: from_pretrained fails.",
         "Make layer_types list exactly num_hidden_layers entries (full_attention, sliding_attention, ...), "
         "or correct num_hidden_layers.",
         "config.json: $.layer_types has 3 entries but $.num_hidden_layers is 2; transformers refuses the "
         "config (`num_hidden_layers` must equal the number of layer types)")
register("HFC412", "error", "RoPE scaling without a type",
         "rope_scaling (rope_parameters) holds scaling values but no rope_type (or the older type): "
         "transformers 4.x fails to build the rotary embedding (no RoPE function for type None), and "
         "transformers 5 takes it for the default RoPE and silently applies no scaling.",
         "Add the RoPE type the values are for, e.g. \"rope_type\": \"linear\", \"dynamic\", \"yarn\", "
         "\"llama3\" or \"longrope\".",
         "config.json: $.rope_scaling has factor but no rope_type; transformers 4.x fails to build the "
         "rotary embedding and transformers 5 applies no scaling")
register("HFC413", "error", "hidden size not divisible by heads",
         "For this model type the config class (validate_architecture) refuses a hidden_size that is not a "
         "multiple of num_attention_heads: from_pretrained fails. (Model types that take head_dim from the "
         "config, such as mistral and qwen3, do not need it and are not checked.)",
         "Correct hidden_size or num_attention_heads in config.json (the weights' shapes tell which).",
         "config.json: $.hidden_size 100 is not a multiple of $.num_attention_heads 3; transformers' "
         "LlamaConfig refuses it")
register("HFC414", "error", "heads not divisible by key/value heads",
         "Grouped-query attention shares each key/value head among num_attention_heads / "
         "num_key_value_heads query heads; when that does not divide evenly the attention cannot run "
         "(repeat_kv produces the wrong number of heads, and the config class of some models refuses it).",
         "Correct num_key_value_heads (or num_attention_heads) in config.json; the k_proj/v_proj shapes "
         "give the real key/value head count.",
         "config.json: $.num_attention_heads 4 is not a multiple of $.num_key_value_heads 3; grouped-query "
         "attention cannot split the query heads evenly")

SCHEMA_FILES: dict[str, tuple[str, str]] = {
    # folder file -> (schema file, code)
    "config.json": ("config.schema.json", "HFC402"),
    "tokenizer_config.json": ("tokenizer_config.schema.json", "HFC403"),
    "special_tokens_map.json": ("special_tokens_map.schema.json", "HFC404"),
    "generation_config.json": ("generation_config.schema.json", "HFC405"),
    "model.safetensors.index.json": ("index.schema.json", "HFC406"),
    "pytorch_model.bin.index.json": ("index.schema.json", "HFC406"),
    "tokenizer.json": ("tokenizer.schema.json", "HFC407"),
    "added_tokens.json": ("added_tokens.schema.json", "HFC410"),
}
"""Which schema checks which file, and the finding code of its violations."""

MAX_FINDINGS_PER_FILE = 20
"""A file that is wrong everywhere gets this many findings plus one that counts the rest."""

_FIX = {
    "config.json": "fix that value in config.json (or re-save it with save_pretrained)",
    "tokenizer_config.json": "fix that value in tokenizer_config.json (or re-save the tokenizer with save_pretrained)",
    "special_tokens_map.json": "fix that value in special_tokens_map.json (or re-save the tokenizer)",
    "generation_config.json": "fix that value in generation_config.json",
    "tokenizer.json": "re-save the tokenizer with save_pretrained",
    "added_tokens.json": "fix that value in added_tokens.json (or re-save the tokenizer)",
}
_INDEX_FIX = "regenerate the index (hfconv convert writes one)"
_INDEX_METADATA_FIX = 'add "metadata": {"total_size": <the sum of tensor bytes>} (an empty {} loads too)'


def _loaded_index(contents: FolderContents) -> str | None:
    """The index from_pretrained reads: that of the weights it loads, unless a single file wins."""
    loaded = contents.folder.loaded_set
    return loaded.index if loaded is not None and loaded.single is None else None


class SchemaProblem(NamedTuple):
    """One schema violation, already in words."""

    path: str
    """JSON path of the offending value, ``$.a.b[0]``."""
    message: str
    """What is wrong there (without the file name or the fix)."""


# --- schema loading -----------------------------------------------------------------------------
@cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema ``hfconv/schemas/<name>`` (shipped in the wheel).

    Raises:
        FileNotFoundError: no such schema.
    """
    text = read_package_text("schemas", name)
    return json.loads(text)


@cache
def _validator(name: str) -> Validator:
    # jsonschema is imported here, not at module import, to keep `hfconv validate` startup fast.
    from jsonschema import Draft202012Validator, validators

    # JSON Schema counts 32.0 as an integer; Python (and torch: nn.Linear(32.0, ...)) does not.
    strict_types = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    cls = validators.extend(Draft202012Validator, type_checker=strict_types)
    return cls(load_schema(name))


def known_model_types() -> frozenset[str]:
    """model_type values with a family-specific sub-schema in config.schema.json."""
    return frozenset(load_schema("config.schema.json").get("x-known-model-types", ()))


# --- validation in words -----------------------------------------------------------------------
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(parts: Iterable[str | int]) -> str:
    """``$.a.b[0]`` for the path parts ``("a", "b", 0)``; odd keys as ``$['a b']``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}"
        else:
            out += "[" + repr(part) + "]"
    return out


def schema_problems(schema_name: str, data: Any) -> list[SchemaProblem]:
    """Every violation of ``schema_name`` by ``data``, in words, sorted by path.

    Args:
        schema_name: a file name in ``hfconv/schemas``.
        data: the parsed JSON value.

    Returns:
        The problems (empty when the value is valid).
    """
    problems: dict[str, SchemaProblem] = {}
    weight_map = None
    if schema_name == "index.schema.json" and isinstance(data, dict) and isinstance(data.get("weight_map"), dict):
        # The entries are checked by a plain loop below (an index may list hundreds of thousands of
        # tensors, which jsonschema would take seconds over); the schema sees an empty map.
        weight_map = data["weight_map"]
        data = {**data, "weight_map": {}}
    # jsonschema (and its imports, ~50 ms) only for a value the fast subset cannot vouch for.
    for error in schema_errors(load_schema(schema_name), data, lambda: _validator(schema_name)):
        for problem in _describe(error):
            # One sentence per path: the generic and the family schema may both object to a value.
            problems.setdefault(problem.path, problem)
    if schema_name == "tokenizer.schema.json":
        for problem in _tokenizer_entry_problems(data):
            problems.setdefault(problem.path, problem)
    if weight_map is not None:
        for problem in _weight_map_problems(weight_map):
            problems.setdefault(problem.path, problem)
    return sorted(problems.values(), key=lambda p: p.path)


def _weight_map_problems(weight_map: dict) -> Iterator[SchemaProblem]:
    """Every weight_map entry that is not a shard file name, in the words index.schema.json's
    ``additionalProperties`` gives (a non-empty string)."""
    shards = set(weight_map.values()) if set(map(type, weight_map.values())) <= {str} else None
    if shards is not None and "" not in shards:  # the common case, decided in C
        return
    for tensor, shard in weight_map.items():
        if type(shard) is str and shard:
            continue
        # json.loads always gives str keys; json_path copes with any key that is not an identifier.
        path = json_path([tensor])
        shown = "an empty string" if isinstance(shard, str) else _show(shard)
        yield SchemaProblem("$.weight_map" + path[1:], f"must be {_shard_name()}, not {shown}")


@cache
def _shard_name() -> str:
    entry = load_schema("index.schema.json")["properties"]["weight_map"]["additionalProperties"]
    return entry.get("description") or "a non-empty string"


def _tokenizer_entry_problems(data: Any) -> Iterator[SchemaProblem]:
    """The first malformed vocab entry and merge of tokenizer.json (a plain loop: real files hold
    hundreds of thousands of entries, which jsonschema would take seconds over)."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        return
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        for token, token_id in vocab.items():
            if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
                yield SchemaProblem(json_path(["model", "vocab", token]),
                                    f"must be a token id (an integer >= 0), not {_show(token_id)}")
                break
    elif isinstance(vocab, list):
        for index, item in enumerate(vocab):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)):
                yield SchemaProblem(json_path(["model", "vocab", index]),
                                    f"must be a [token, score] pair, not {_show(item)}")
                break
    merges = model.get("merges")
    if isinstance(merges, list):
        for index, item in enumerate(merges):
            if not (isinstance(item, str) or (isinstance(item, list) and len(item) == 2
                                              and all(isinstance(x, str) for x in item))):
                yield SchemaProblem(json_path(["model", "merges", index]),
                                    f"must be a merge (\"a b\" or [\"a\", \"b\"]), not {_show(item)}")
                break


def _describe(error: ValidationError) -> list[SchemaProblem]:
    """Turn one jsonschema ValidationError into sentences a user understands."""
    parts = list(error.absolute_path)
    path = json_path(parts)
    kind = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    desc = schema.get("description")

    if kind == "required":
        missing = [k for k in error.validator_value if not (isinstance(instance, dict) and k in instance)]
        needs = f" ({desc} needs it)" if desc else ""
        return [SchemaProblem(json_path([*parts, k]), f"is missing{needs}") for k in missing]
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = set(schema.get("properties", {}))
        extras = [k for k in instance if k not in allowed]
        where = f"in {desc}" if desc else "here"
        return [SchemaProblem(json_path([*parts, k]), f"is not a key allowed {where}; remove it")
                for k in extras]
    if kind in ("anyOf", "oneOf"):
        inner = _best_alternative(error)
        if inner is not None:
            return _describe(inner)
        if desc and desc.startswith("must "):
            return [SchemaProblem(path, desc)]
        return [SchemaProblem(path, f"must be {desc or _alternatives(schema)}, not {_show(instance)}")]
    if "propertyNames" in error.relative_schema_path:
        return [SchemaProblem(path, f"has the key {_show(instance)}, which must be {desc or 'a valid key'}")]
    if kind in ("minItems", "maxItems") and isinstance(instance, list):
        return [SchemaProblem(path, f"must be {desc or 'a list of the right length'}, not a list of {len(instance)}")]
    if kind == "minLength":
        return [SchemaProblem(path, f"must be {desc or 'a non-empty string'}, not an empty string")]
    if kind == "const":
        return [SchemaProblem(path, f"must be {_show(error.validator_value)}, not {_show(instance)}")]
    if kind == "enum":
        if desc:
            return [SchemaProblem(path, f"must be {desc}, not {_show(instance)}")]
        options = ", ".join(_show(v) for v in error.validator_value)
        return [SchemaProblem(path, f"must be one of {options}, not {_show(instance)}")]
    if kind in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern"):
        wanted = desc or _type_words(schema.get("type")) or error.message
        return [SchemaProblem(path, f"must be {wanted}, not {_show(instance)}")]
    return [SchemaProblem(path, error.message)]


def _best_alternative(error: ValidationError) -> ValidationError | None:
    """For anyOf/oneOf: the errors of the one alternative whose type matches the value, if unique."""
    from jsonschema.exceptions import best_match

    by_branch: dict[int, list[ValidationError]] = {}
    for sub in error.context or ():
        by_branch.setdefault(sub.schema_path[0] if sub.schema_path else -1, []).append(sub)
    # A branch "matches the type" when none of its errors is a type error on the value itself.
    fitting = [
        subs for subs in by_branch.values()
        if not any(s.validator == "type" and not s.relative_path for s in subs)
    ]
    if len(fitting) == 1:
        return best_match(fitting[0])
    return None


_TYPE_WORDS = {
    "integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
    "object": "an object", "array": "a list", "null": "null",
}


def _type_words(types: str | Sequence[str] | None) -> str:
    if types is None:
        return ""
    if isinstance(types, str):
        types = [types]
    words = [_TYPE_WORDS.get(t, t) for t in types]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _alternatives(schema: dict) -> str:
    branches = schema.get("anyOf") or schema.get("oneOf") or []
    words = [b.get("description") or _type_words(b.get("type")) or "another form" for b in branches]
    return " or ".join(dict.fromkeys(words)) or "a different value"


def _show(value: Any) -> str:
    """A short rendering of a JSON value for a message."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- the check ----------------------------------------------------------------------------------
def check_schemas(contents: FolderContents) -> Iterator[Finding]:
    """Validate every parsed metadata JSON file against its schema."""
    for name, (schema_name, code) in SCHEMA_FILES.items():
        data = contents.json.get(name)
        if data is None or name in contents.json_errors:
            continue
        if code == "HFC406" and name in contents.index_errors:
            continue  # the index check already says the weight_map is unusable (HFC307)
        fix = _INDEX_FIX if code == "HFC406" else _FIX[name]
        problems = schema_problems(schema_name, data)
        if code == "HFC406" and name != _loaded_index(contents):
            # Only from_pretrained reads metadata, and it never opens an index of weights it does
            # not load (a safetensors set beside .bin leftovers, a single file beside shards).
            problems = [p for p in problems if p.path != "$.metadata"]
        for problem in problems[:MAX_FINDINGS_PER_FILE]:
            where = "the top level" if problem.path == "$" else problem.path
            hint = _INDEX_METADATA_FIX if code == "HFC406" and problem.path == "$.metadata" else fix
            yield finding(code, f"{name}: {where} {problem.message}; {hint}", file=name, tensor=problem.path)
        if len(problems) > MAX_FINDINGS_PER_FILE:
            rest = len(problems) - MAX_FINDINGS_PER_FILE
            yield finding(code, f"{name}: {rest} more schema problem(s) not listed; {fix}", file=name)
    yield from _model_type_findings(contents)
    yield from _config_rule_findings(contents)


def _model_type_findings(contents: FolderContents) -> Iterator[Finding]:
    config = contents.config
    if config is None:
        return
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        if model_type not in known_model_types():
            yield finding("HFC408", f"config.json: model_type {model_type!r} has no family-specific schema in "
                          "hfconv; only the generic fields were checked", file="config.json",
                          tensor="$.model_type")
        return
    auto_map = config.get("auto_map")
    if "model_type" not in config and config.get("architectures") and not (
        isinstance(auto_map, dict) and "AutoConfig" in auto_map
    ):
        yield finding("HFC409", "config.json has no model_type (only architectures); AutoConfig.from_pretrained "
                      "cannot tell which model to build, so add \"model_type\"", file="config.json",
                      tensor="$.model_type")


# --- config rules the JSON Schema cannot express (HFC411..HFC414) ---------------------------------
# What transformers' own config classes refuse (or what then cannot run), checked without
# transformers: the model types each rule applies to come from hfconv/schemas/config_rules.json,
# generated by probing every config class of the transformers version it names.
_NOT_MODEL_CONFIGS = frozenset({
    "quantization_config", "generation_config", "compression_config", "peft_config", "lora_config",
    "pruning_config", "router_config",
})
_NESTING = 4
_SCALING_KEYS = frozenset({"factor", "short_factor", "long_factor", "low_freq_factor", "high_freq_factor"})


@cache
def _config_rules() -> dict[str, frozenset[str]]:
    table = load_schema("config_rules.json")
    return {key: frozenset(value) for key, value in table.items() if isinstance(value, list)}


@cache
def _rope_schema() -> dict[str, Any]:
    """config.schema.json's RoPE rules for a {"rope_scaling" or "rope_parameters": value} object."""
    config_schema = load_schema("config.schema.json")
    rope = {"$ref": "#/$defs/rope_parameters"}
    return {"$defs": config_schema["$defs"], "type": "object",
            "properties": {"rope_scaling": {"$ref": "#/$defs/rope_one_or_null"}, "rope_parameters": rope}}


@cache
def _rope_validator() -> Validator:
    from jsonschema import validators

    base = _validator("config.schema.json")
    return validators.extend(type(base))(_rope_schema())


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _model_configs(config: dict[str, Any], parts: tuple[str, ...] = (), depth: int = 0,
                   ) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """The config and every model config nested in it (text_config, vision_config, a composite's
    encoder/decoder ...), each with its JSON path parts."""
    yield parts, config
    if depth >= _NESTING:
        return
    for key, value in config.items():
        if not isinstance(value, dict) or key in _NOT_MODEL_CONFIGS:
            continue
        if key.endswith("_config") or isinstance(value.get("model_type"), str):
            yield from _model_configs(value, (*parts, key), depth + 1)


def _rope_dicts(value: Any) -> Iterator[tuple[tuple, dict]]:
    """Each single RoPE parameter object of a rope_scaling/rope_parameters value, with the path
    parts below it: the value itself, or one per layer type ({"full_attention": {...}, ...})."""
    if not isinstance(value, dict) or not value:
        return
    if "rope_type" not in value and "type" not in value and all(
            isinstance(item, dict) or item is None for item in value.values()):
        for layer_type, item in value.items():
            if isinstance(item, dict):
                yield (layer_type,), item
        return
    yield (), value


def config_rule_problems(config: Any) -> list[tuple[str, str, str]]:
    """What the config classes refuse that a schema cannot say, for config.json and every model
    config nested in it.

    Returns:
        (code, JSON path, message without the file name or the fix), sorted by path.
    """
    if not isinstance(config, dict):
        return []
    rules = _config_rules()
    problems: list[tuple[str, str, str]] = []
    for parts, sub in _model_configs(config):
        model_type = sub.get("model_type")
        model_type = model_type if isinstance(model_type, str) else None

        def at(*keys: str | int, parts: tuple[str, ...] = parts) -> str:
            return json_path([*parts, *keys])

        layer_types, layers = sub.get("layer_types"), sub.get("num_hidden_layers")
        if model_type in rules["layer_types_length"] and isinstance(layer_types, list) and _positive_int(layers):
            if len(layer_types) != layers:
                problems.append(("HFC411", at("layer_types"),
                                 f"has {len(layer_types)} entries but {at('num_hidden_layers')} is {layers}; "
                                 "transformers refuses the config (`num_hidden_layers` must equal the number "
                                 "of layer types)"))
            unknown = next((index for index, item in enumerate(layer_types)
                            if not isinstance(item, str) or item not in rules["allowed_layer_types"]), None)
            if unknown is not None:
                problems.append(("HFC411", at("layer_types", unknown),
                                 f"is {_show(layer_types[unknown])}, not a layer type transformers knows "
                                 "(full_attention, sliding_attention, chunked_attention, linear_attention, "
                                 "...); transformers refuses the config"))

        hidden, heads, kv_heads = sub.get("hidden_size"), sub.get("num_attention_heads"), sub.get("num_key_value_heads")
        if (model_type in rules["hidden_size_divisible_by_heads"] and _positive_int(hidden)
                and _positive_int(heads) and hidden % heads):
            problems.append(("HFC413", at("hidden_size"),
                             f"{hidden} is not a multiple of {at('num_attention_heads')} {heads}; transformers' "
                             f"config class for model_type {model_type!r} refuses it"))
        if (model_type in rules["key_value_heads"] and _positive_int(heads) and _positive_int(kv_heads)
                and heads % kv_heads):
            problems.append(("HFC414", at("num_key_value_heads"),
                             f"{kv_heads} does not divide {at('num_attention_heads')} {heads}; grouped-query "
                             "attention cannot split the query heads evenly over the key/value heads"))

        for key in ("rope_scaling", "rope_parameters"):
            rope_value = {key: sub.get(key)}
            if parts and parts != ("text_config",) and rope_value[key] is not None:
                # config.schema.json checks the top level and text_config; the same RoPE rules here.
                for error in schema_errors(_rope_schema(), rope_value, _rope_validator):
                    for problem in _describe(error):
                        problems.append(("HFC402", json_path(parts) + problem.path[1:], problem.message))
            for below, rope in _rope_dicts(sub.get(key)):
                scaling = sorted(_SCALING_KEYS & rope.keys())
                if scaling and "rope_type" not in rope and "type" not in rope:
                    effect = ("transformers 4.x fails to build the rotary embedding and transformers 5 applies no "
                              "scaling" if key == "rope_scaling" else
                              "transformers takes it for the default RoPE and applies no scaling")
                    problems.append(("HFC412", at(key, *below),
                                     f"has {', '.join(scaling)} but no rope_type; {effect}"))
    return sorted(problems, key=lambda problem: problem[1])


_RULE_FIX = {
    "HFC402": _FIX["config.json"],
    "HFC411": "make layer_types list one known layer type per layer (or correct num_hidden_layers)",
    "HFC412": "add the rope_type these values are for (linear, dynamic, yarn, llama3, longrope, ...)",
    "HFC413": "correct hidden_size or num_attention_heads (the weights' shapes tell which)",
    "HFC414": "correct num_key_value_heads (k_proj/v_proj's shapes give the real count)",
}


def _config_rule_findings(contents: FolderContents) -> Iterator[Finding]:
    if _CONFIG_NAME in contents.json_errors:
        return
    for code, path, message in config_rule_problems(contents.json.get(_CONFIG_NAME)):
        yield finding(code, f"{_CONFIG_NAME}: {path} {message}; {_RULE_FIX[code]}", file=_CONFIG_NAME, tensor=path)


_CONFIG_NAME = "config.json"
