"""Generate hfconv/schemas/generated_rules.json from the installed transformers.

For each model type below (the most-downloaded families the hand-written tables lack) and each
of its common model classes, build the model on the meta device (through hfconv's own
transformers reference, so names are the checkpoint names ``save_pretrained`` writes) for

- the class's default config with layer counts cut to 2 (the base),
- one variant per integer field (the field doubled), and one per boolean (flipped),

then fit every numbered run (``encoder.layer.{i}``) to the field that counts it and every
dimension to an expression of the rule-table language over the fields that move it
(``hidden_size``, ``num_attention_heads * head_dim``, ``hidden_size // num_attention_heads``,
...). A class is written only when expanding the fitted table with hfconv's own evaluator gives
back exactly the names, shapes and optional tensors of every variant; a field that changes the
tensors but was not fitted (a boolean, a string, a list, a size whose variant did not build) is
a guard: the table answers only when config.json leaves it at its default.

Run it after upgrading transformers, then run the tests and ``benchmarks/sweep_architectures.py``:

    python benchmarks/generate_rule_tables.py                 # every family below
    python benchmarks/generate_rule_tables.py vit camembert   # only these (merged into the file)
    python benchmarks/generate_rule_tables.py --output /tmp/rules.json   # elsewhere, then copy it over
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hfconv.rules.expected import natural_key  # noqa: E402
from hfconv.rules.families import Family, Head, Rule  # noqa: E402
from hfconv.rules.generated import TABLE_FILE, is_metadata  # noqa: E402

OUT = ROOT / "hfconv" / "schemas" / TABLE_FILE

MODEL_TYPES = (
    # text encoders
    "bert", "roberta", "xlm-roberta", "camembert", "distilbert", "albert", "electra", "deberta", "deberta-v2",
    "mpnet", "xlm-roberta-xl", "data2vec-text", "ernie", "mobilebert", "convbert", "longformer", "rembert",
    "squeezebert", "funnel", "layoutlm", "roformer", "nystromformer", "big_bird", "canine", "xmod",
    "modernbert", "luke", "megatron-bert",
    # encoder-decoders
    "bart", "mbart", "plbart", "marian", "pegasus", "m2m_100", "mt5", "umt5", "longt5", "prophetnet", "led",
    "nllb-moe", "fsmt", "blenderbot", "blenderbot-small", "whisper", "bigbird_pegasus",
    # decoders
    "gpt_neo", "gptj", "opt", "bloom", "phi", "mpt", "gpt_bigcode", "stablelm", "starcoder2", "olmo", "olmo2",
    "cohere", "granite", "gemma3_text", "qwen3_moe", "deepseek_v3", "deepseek_v2", "xglm", "codegen", "biogpt",
    "ctrl", "persimmon", "nemotron", "helium", "glm", "exaone4", "smollm3", "ministral", "seed_oss", "olmoe",
    "granitemoe", "jetmoe", "dbrx", "arcee", "hunyuan_v1_dense", "qwen3_next", "openai-privacy-filter",
    "gpt_oss", "cohere2", "glm4", "glm4_moe", "olmo3", "phimoe", "falcon_h1", "falcon_mamba", "mamba", "mamba2",
    "ernie4_5", "ernie4_5_moe", "apertus", "lfm2", "minimax", "jamba", "granitemoehybrid", "llama4_text",
    "gemma3n_text", "bitnet", "gpt_neox_japanese", "zamba2",
    # vision and audio
    "vit", "deit", "beit", "dinov2", "swin", "convnext", "resnet", "regnet", "mobilenet_v2", "efficientnet",
    "levit", "vit_mae", "yolos", "dinov2_with_registers", "wav2vec2", "hubert", "wavlm", "data2vec-audio",
    "unispeech", "unispeech-sat", "sew", "wav2vec2-conformer", "audio-spectrogram-transformer", "ast",
    "dinov3_vit", "segformer", "layoutlmv3", "clip_text_model", "clip_vision_model", "siglip_text_model",
    "siglip_vision_model",
)

HEADS = ("Model", "ForMaskedLM", "ForCausalLM", "ForConditionalGeneration", "ForSequenceClassification",
         "ForTokenClassification", "ForQuestionAnswering", "ForImageClassification", "ForPreTraining",
         "ForMultipleChoice", "ForCTC", "ForAudioClassification", "LMHeadModel", "WithLMHeadModel",
         "ForMaskedImageModeling", "ForNextSentencePrediction", "ForSpeechSeq2Seq")
"""Class-name endings generated (the heads published checkpoints name in ``architectures``)."""

LAYER_FIELDS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "num_decoder_layers", "encoder_layers",
                "decoder_layers", "num_encoder_layers")
BASE_LAYERS = 2
SKIP_INT = re.compile(r"(_token_id|_token_index|_id|_idx|_ids|seed)$")
MAX_FIELDS_PER_DIM = 3
MAX_DROPPED = 2
"""Most variants a class's fit leaves out (their fields become guards) before it gives up."""
CENTRAL = frozenset(LAYER_FIELDS) | {"hidden_size", "d_model", "vocab_size", "intermediate_size", "num_attention_heads",
                                     "num_key_value_heads", "head_dim", "num_local_experts", "num_experts"}
"""Fields whose variant is left out last (a guard on one of them would make the table answer almost never)."""
OPTIONAL_SIZES = {"head_dim": "hidden_size // num_attention_heads"}
"""Sizes a config class may lack while its model reads them when config.json gives them
(``getattr(config, "head_dim", hidden_size // num_attention_heads)``): fitted with the default
the model computes, which the table derives where config.json leaves them out."""
FAMILY_SECONDS = 180
"""A family whose variants take longer than this to build is left out (a run stays bounded)."""


NOT_STRUCTURAL = frozenset({
    "suppress_tokens", "begin_suppress_tokens", "forced_decoder_ids", "task_specific_params", "bad_words_ids",
    "tokenizer_class", "prefix", "finetuning_task",   # generation and tokenizer settings
    "ctc_loss_reduction", "problem_type",             # losses
    "stage_names", "out_features", "out_indices",      # what a ...Backbone class returns (not generated)
})
"""Fields that name no tensor: never guards, whatever their value (token ids are matched by SKIP_INT)."""


_ACTIVATIONS = ("gelu", "silu", "relu", "gelu_pytorch_tanh")
_ROPE_THETAS = (10000.0, 1000000.0)


def probe_values(field_name: str, default: Any) -> list[Any]:
    """Values other than the default that published configs give a field the generator does not
    fit (an activation, the RoPE parameters, a sliding window): where every one that builds gives
    the base tensors, the field is no guard (the table answers whatever its value)."""
    if field_name in ("hidden_act", "hidden_activation", "activation_function") or field_name.endswith("_act"):
        return [a for a in _ACTIVATIONS if a != default] if isinstance(default, str) else []
    if field_name == "sliding_window":
        return [v for v in (None, 4096, 32768) if v != default]
    if field_name == "rope_parameters" and isinstance(default, dict):
        if default and all(isinstance(v, dict) or v is None for v in default.values()):  # one per layer type
            return [{k: {**v, "rope_theta": theta} if isinstance(v, dict) else v for k, v in default.items()}
                    for theta in _ROPE_THETAS]
        plain = {k: v for k, v in default.items() if k in ("rope_theta", "partial_rotary_factor")}
        return [{**default, "rope_theta": theta} for theta in _ROPE_THETAS] + [
            {**plain, "rope_type": "default", "rope_theta": 500000.0},
            {**plain, "rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0},
            {**plain, "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
             "rope_theta": 150000.0}]
    return []


def per_layer_lists(defaults: Mapping[str, Any]) -> dict[str, str]:
    """List fields with one entry per layer (``layer_types``) -> the layer-count field they follow:
    config classes refuse a layer count their length does not match, so the generator resizes them
    with the count, and the table checks their entries rather than the whole list."""
    found: dict[str, str] = {}
    for f, v in defaults.items():
        if not isinstance(v, list) or not v or not all(isinstance(x, (str, int)) for x in v):
            continue
        for layers in LAYER_FIELDS:
            count = defaults.get(layers)
            if isinstance(count, int) and not isinstance(count, bool) and count == len(v):
                found[f] = layers
                break
    return found


def resized(config: Mapping[str, Any], lists: Mapping[str, str]) -> dict[str, Any]:
    """``config`` with every per-layer list cut (or repeated) to its layer count."""
    out = dict(config)
    for f, layers in lists.items():
        if isinstance(out.get(f), list) and out[f] and isinstance(out.get(layers), int):
            out[f] = list(itertools.islice(itertools.cycle(out[f]), out[layers]))
    return out


BACKBONE = ("stage_names", "out_features", "out_indices")
"""What a ...Backbone class returns: left out of the configs built (the class recomputes
stage_names from the layer count and refuses the default out_features with it)."""


def structural(field_name: str) -> bool:
    """Whether a field not fitted may change the tensors (and so must keep its default)."""
    return field_name not in NOT_STRUCTURAL and not SKIP_INT.search(field_name) and field_name != "num_labels"


# --- building -------------------------------------------------------------------------------------

def build(folder: str, model_type: str, cls: str, config: Mapping[str, Any]) -> tuple[dict, str, tuple] | None:
    """(name -> (shape, optional), base-model prefix, ignored-name patterns) of ``cls`` for ``config``,
    as hfconv's transformers reference sees it (checkpoint names); None when transformers refuses
    the config or the build fails."""
    import transformers

    from hfconv.rules.transformers_reference import ReferenceUnavailable, expected_from_transformers

    try:  # a config its class refuses would be read back from the (empty) folder: class defaults, not the variant
        transformers.AutoConfig.for_model(model_type, **config)
    except Exception:  # noqa: BLE001
        return None
    try:
        model = expected_from_transformers(folder, {**config, "model_type": model_type, "architectures": [cls]},
                                           False, isolated=False)
    except (ReferenceUnavailable, Exception):  # noqa: BLE001 - any refusal: the variant is not usable
        return None
    if model.architecture != cls:
        return None
    return {name: (t.shape, t.optional) for name, t in model.tensors.items()}, model.prefix, model.allowed_extras


PART_CLASSES = {"siglip_text_model": ("SiglipTextModel",)}
"""Classes of model types no auto mapping names, generated as parts of composed models
(``hfconv.rules.generated.COMPOSED``: SigLIP's text encoder)."""


def classes_of(transformers: Any, model_type: str) -> list[str]:
    from transformers.models.auto import modeling_auto

    found: set[str] = {name for name in PART_CLASSES.get(model_type, ()) if hasattr(transformers, name)}
    for attr in dir(modeling_auto):
        table = getattr(modeling_auto, attr)
        if attr.endswith("_MAPPING_NAMES") and isinstance(table, Mapping):
            names = table.get(model_type)
            for name in (names if isinstance(names, (list, tuple)) else [names]):
                if isinstance(name, str) and name.endswith(HEADS) and hasattr(transformers, name):
                    found.add(name)
    return sorted(found)


def config_fields(transformers: Any, model_type: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(the class defaults as config.json writes them, attribute_map aliases)."""
    config = transformers.AutoConfig.for_model(model_type)
    data = config.to_dict()
    for key in ("transformers_version", "architectures", "model_type", "_name_or_path"):
        data.pop(key, None)
    return data, dict(getattr(type(config), "attribute_map", {}) or {})


def derived_fields(transformers: Any, model_type: str, defaults: Mapping[str, Any],
                   ints: list[str]) -> dict[str, str | None]:
    """Integer fields whose default the config class computes from other fields: the expression
    it uses where one fits (``pooler_output_size = hidden_size``), else None."""
    observed: list[tuple[str | None, dict[str, Any]]] = [(None, dict(defaults))]
    moved_by: dict[str, list[str]] = {}
    for f in ints:
        try:
            probe = transformers.AutoConfig.for_model(model_type, **{f: defaults[f] * 2}).to_dict()
        except Exception:  # noqa: BLE001
            continue
        observed.append((f, probe))
        for g in ints:
            if g != f and probe.get(g) != defaults.get(g):
                moved_by.setdefault(g, []).append(f)
    derived: dict[str, str | None] = {}
    for g, fields in moved_by.items():
        points = [({f: c.get(f) for f in ints}, c.get(g)) for set_field, c in observed if set_field != g]
        usable = all(isinstance(v, int) and all(isinstance(c[f], int) for f in fields) for c, v in points)
        derived[g] = fit(points, fields[:MAX_FIELDS_PER_DIM]) if usable and len(fields) <= MAX_FIELDS_PER_DIM \
            else None
    return derived


# --- fitting --------------------------------------------------------------------------------------

def runs(names: Iterable[str]) -> dict[str, set[int]]:
    """Templated stem (every index as ``{#}``) -> the indices found under it."""
    found: dict[str, set[int]] = {}
    for name in names:
        parts = name.split(".")
        for k, part in enumerate(parts):
            if part.isdigit() and k > 0:
                stem = ".".join("{#}" if p.isdigit() else p for p in parts[:k])
                found.setdefault(stem, set()).add(int(part))
    return found


def template(name: str, letters: Mapping[str, str]) -> tuple[str, tuple[int, ...]]:
    """``name`` with the indices of counted runs as placeholders, and those indices."""
    parts = name.split(".")
    out, values = [], []
    for k, part in enumerate(parts):
        if part.isdigit() and k > 0:
            stem = ".".join("{#}" if p.isdigit() else p for p in parts[:k])
            if stem in letters:
                out.append("{" + letters[stem] + "}")
                values.append(int(part))
                continue
        out.append(part)
    return ".".join(out), tuple(values)


def first_only(found: Mapping[str, tuple], letters: Mapping[str, str]) -> Iterable[tuple[str, tuple, bool]]:
    """(template, shape, optional) of every tensor, the index kept literal where a tensor exists in
    the first entry of a run only (T5's and WavLM's relative_attention_bias: block 0 alone)."""
    placed = [(name, *template(name, letters), shape, optional) for name, (shape, optional) in found.items()]
    last: dict[tuple[str, int], int] = {}
    indices: dict[str, set[tuple[int, ...]]] = {}
    for _, key, values, _, _ in placed:
        indices.setdefault(key, set()).add(values)
        for p, letter in enumerate(re.findall(r"\{(\w)\}", key)):
            last[letter, p] = max(last.get((letter, p), 0), values[p])
    for _, key, _, shape, optional in placed:
        letters_in = re.findall(r"\{(\w)\}", key)
        pinned = key
        for p in reversed(range(len(letters_in))):
            if all(v[p] == 0 for v in indices[key]) and last[letters_in[p], p] > 0:
                at = [m.start() for m in re.finditer(r"\{\w\}", pinned)][p]
                pinned = pinned[:at] + "0" + pinned[at + 3:]
        yield pinned, shape, optional


def candidates(fields: list[str], base: Mapping[str, int], v0: int) -> Iterable[str]:
    """Expressions over ``fields`` (those that move the value) worth trying, simplest first."""
    if not fields:
        yield str(v0)
        return
    for f in fields:
        b = base[f]
        yield f
        if b and v0 % b == 0:
            yield f"{f} * {v0 // b}"
        if v0 and b % v0 == 0:
            yield f"{f} // {b // v0}"
        if v0 > b:
            yield f"{f} + {v0 - b}"
        elif v0 < b:
            yield f"{f} - {b - v0}"
        yield f"{f} * {f}"
    for f, g in itertools.permutations(fields, 2):
        bf, bg = base[f], base[g]
        yield f"{f} * {g}"
        yield f"{f} // {g}"
        yield f"{f} + {g}"
        yield f"{f} - {g}"
        if bf * bg and v0 % (bf * bg) == 0:
            yield f"{f} * {g} * {v0 // (bf * bg)}"
        if v0 and (bf * bg) % v0 == 0:
            yield f"{f} * {g} // {bf * bg // v0}"
        if bg and bf // bg and v0 % (bf // bg) == 0:
            yield f"{f} // {g} * {v0 // (bf // bg)}"
        rest = v0 - bf - bg
        if rest:
            yield f"{f} + {g} + {rest}" if rest > 0 else f"{f} + {g} - {-rest}"
        yield f"{f} * {f} * {g}"
        if bg and bf // bg:
            yield f"{f} + {f} // {g} * {(v0 - bf) // (bf // bg)}"  # GPTBigCode's fused multi-query c_attn
        if bg and bf // bg:
            square = (bf // bg) ** 2
            yield f"({f} // {g}) * ({f} // {g})" if v0 == square else f"({f} // {g}) * ({f} // {g}) + {v0 - square}"
        if bg:
            yield f"({f} + {g}) * {v0 // (bf + bg)}" if bf + bg and v0 % (bf + bg) == 0 else f"{f} * 2 + {g}"
    for f, g, h in itertools.permutations(fields, 3):
        yield f"{f} * {g} // {h}"
        yield f"{f} * {g} * {h}"
        yield f"{f} + {g} + {h}"
        yield f"{f} + {g} * {h}"
        yield f"({f} + {g}) * {h}"


def evaluate(expr: str, values: Mapping[str, int]) -> int | None:
    from hfconv.rules.expression import ConfigValueError, Scope

    class Source:
        model_type = "generated"
        defaults: Mapping[str, Any] = {}
        derived: Mapping[str, str] = {}
        env_defaults: Mapping[str, Any] = {}

    try:
        value = Scope(Source(), values).evaluate(expr).value
    except (ConfigValueError, ZeroDivisionError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def fit(observed: list[tuple[Mapping[str, int], int]], fields: list[str]) -> str | None:
    """The first candidate expression that gives every observed value."""
    base, v0 = observed[0]
    for expr in candidates(fields, base, v0):
        if all(evaluate(expr, values) == value for values, value in observed):
            return expr
    return None


def fit_condition(observed: list[tuple[Mapping[str, int], bool]], fields: list[str]) -> str | None:
    """A condition ``f != g`` (or ``f == g``) over two fields that says in which variants a tensor exists."""
    for f, g in itertools.combinations([f for f in fields if f != "num_labels"], 2):
        for op in ("!=", "=="):
            if all((values.get(f) != values.get(g)) == (op == "!=") for values, exists in observed if exists) and \
                    all((values.get(f) != values.get(g)) != (op == "!=") for values, exists in observed if not exists):
                return f"{f} {op} {g}"
    return None


# --- one class ------------------------------------------------------------------------------------

def stripped_prefixes(model_type: str, cls: str) -> list[str]:
    """The prefixes transformers removes from checkpoint names when it loads ``cls`` (its
    ``PrefixChange`` conversions, by class name then model type): CLIPTextModel checkpoints
    written by transformers 4 hold ``text_model.embeddings...``, the class's own names are
    ``embeddings...``. The table accepts a folder holding every name under one of them."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import PrefixChange

    found: list[str] = []
    for key in (cls, model_type):
        for transform in get_checkpoint_conversion_mapping(key) or ():
            if isinstance(transform, PrefixChange) and transform.prefix_to_remove and not transform.model_prefix:
                found.append(transform.prefix_to_remove + ".")
    return sorted(set(found))


def generate_class(folder: str, model_type: str, cls: str, base: dict[str, Any], ints: list[str],
                   bools: list[str], lists: Mapping[str, str] | None = None,
                   probed: set[str] | None = None) -> tuple[dict[str, Any] | None, set[str], str]:
    """(the class's table, fields to guard, why not) for ``cls``. ``probed`` collects the fields
    that :func:`probe_values` (and the per-layer ``lists``) showed change no tensor."""
    lists = lists or {}
    built = build(folder, model_type, cls, base)
    if built is None:
        return None, set(), "the base config does not build"
    state, prefix, extras = built
    guards: set[str] = set()
    variants: list[tuple[dict[str, Any], dict[str, tuple]]] = [(base, state)]
    variant_fields = [""]  # the field each variant doubled
    fitted_fields: list[str] = []
    labels = base.get("id2label")
    for f in ints:
        value = base[f] if f != "num_labels" else (len(labels) if isinstance(labels, dict) and labels else 2)
        changed = {**base, f: value * 2 if value else 1}
        if f == "num_labels":
            changed = {**base, "id2label": {str(i): f"LABEL_{i}" for i in range(changed[f])}}
            changed.pop("label2id", None)
        changed = resized(changed, lists)
        other = build(folder, model_type, cls, changed)
        if other is None:
            guards.add(f)  # cannot be probed: the table answers only for the default
            continue
        if other[0] != state:
            variants.append((changed, other[0]))
            variant_fields.append(f)
            fitted_fields.append(f)
    # A boolean whose flip only drops whole tensors (SigLIP's vision_use_head: the head.* module)
    # becomes their condition; any other change of the tensors makes it a guard.
    dropped_by: dict[str, tuple[frozenset[str], dict]] = {}
    for f in bools:
        other = build(folder, model_type, cls, {**base, f: not base[f]})
        if other is not None and other[0] != state and other[0].keys() < state.keys() and \
                all(state[name] == spec for name, spec in other[0].items()):
            dropped_by[f] = (frozenset(state.keys() - other[0].keys()), other[0])
        elif other is None or other[0] != state:
            guards.add(f)
    for f, default in base.items():  # unfitted fields published configs vary: no guard where no value moves a tensor
        tried = [build(folder, model_type, cls, {**base, f: v}) for v in probe_values(f, default)]
        if not tried:
            continue
        if any(t is not None for t in tried) and all(t is None or t[0] == state for t in tried):
            if probed is not None:
                probed.add(f)
        else:
            guards.add(f)
    for f in lists:  # every layer the same kind, for each kind the default uses
        kinds = list(dict.fromkeys(base[f]))
        tried = [build(folder, model_type, cls, {**base, f: [k] * len(base[f])}) for k in kinds]
        if all(t is not None and t[0] == state for t in tried):
            if probed is not None:
                probed.add(f)
        else:
            guards.add(f)

    def numbers(config: Mapping[str, Any]) -> dict[str, int]:
        values = {f: config[f] for f in ints if f in config and f != "num_labels"}
        id2label = config.get("id2label")
        values["num_labels"] = len(id2label) if isinstance(id2label, dict) and id2label else 2
        return values

    def fit_variants(kept: list[tuple[dict[str, Any], dict[str, tuple]]]) -> tuple[dict[str, Any] | None, str]:
        """The table fitted to ``kept`` (the base first), checked by re-expansion, or why not."""
        observations = [(numbers(config), found) for config, found in kept]
        # 1. Numbered runs: those whose length follows a field get a placeholder.
        base_runs = runs(state)
        letters: dict[str, str] = {}
        ranges: dict[str, str] = {}
        pool = iter("ijklmnopqrstuvwxyzabcdefgh")
        for stem in sorted(base_runs, key=len):
            counts = []
            for values, found in observations:
                indices = runs(found).get(stem, set())
                if indices != set(range(len(indices))):
                    return None, f"{stem} is not numbered 0..n-1"
                counts.append((values, len(indices)))
            moved = [f for f in fitted_fields if any(c != counts[0][1] for v, c in counts if v[f] != counts[0][0][f])]
            if not moved:
                continue  # a fixed run (T5's layer.0 / layer.1): literal names
            expr = fit(counts, moved[:MAX_FIELDS_PER_DIM])
            if expr is None:
                return None, f"the length of {stem} fits no expression of {moved}"
            letters[stem] = next(pool)
            ranges[letters[stem]] = expr
        # 2. Every tensor: its template, then each dimension's expression.
        templates: dict[str, list[tuple[dict[str, int], tuple[int, ...], bool]]] = {}
        for values, found in observations:
            seen: dict[str, tuple] = {}
            for key, shape, optional in first_only(found, letters):
                if key in seen and seen[key] != (shape, optional):
                    return None, f"{key} differs between layers"
                seen[key] = (shape, optional)
            for key, (shape, optional) in seen.items():
                templates.setdefault(key, []).append((values, shape, optional))
        rules = []
        for key, seen_shapes in templates.items():
            when = None
            if len(seen_shapes) != len(observations):  # ELECTRA's embeddings_project: when sizes differ
                present = {id(values) for values, _, _ in seen_shapes}
                when = fit_condition([(values, id(values) in present) for values, _ in observations], ints)
                if when is None:
                    return None, f"{key} exists in some variants only"
            ref_values, shape0, optional0 = seen_shapes[0]
            if any(len(s) != len(shape0) or o != optional0 for _, s, o in seen_shapes):
                return None, f"{key} changes rank or optionality"
            dims = []
            for d in range(len(shape0)):
                observed = [(values, s[d]) for values, s, _ in seen_shapes]
                moved = [f for f in fitted_fields if any(v != shape0[d] for values, v in observed
                                                          if values[f] != ref_values[f])]
                if len(moved) > MAX_FIELDS_PER_DIM:
                    return None, f"{key} dim {d} moves with {moved}"
                expr = fit(observed, moved)
                if expr is None:
                    return None, f"{key} dim {d} fits no expression of {moved}"
                dims.append(expr)
            rules.append([key, dims, optional0] + ([when] if when else []))
        # The rules a boolean's flip drops (every tensor of the rule, in the base variant) exist when
        # it keeps its default.
        keys_of = dict(zip(state, (key for key, _, _ in first_only(state, letters))))
        for f, (names, _) in dropped_by.items():
            keys = {keys_of[name] for name in names}
            if any(keys_of[name] in keys for name in state.keys() - names):
                return None, f"flipping {f} drops some tensors of a rule only"
            toggle = f if base[f] else f"not {f}"
            for rule in rules:
                if rule[0] in keys:
                    rule[3:] = [f"({rule[3]}) and {toggle}" if len(rule) > 3 else toggle]
        rules.sort(key=lambda r: natural_key(r[0]))
        table = {"ranges": ranges, "rules": rules, "extras": sorted(extras), "prefix": prefix}
        if strip := stripped_prefixes(model_type, cls):
            table["strip"] = strip
        # 3. Check: the table, expanded by hfconv's evaluator, gives back every variant exactly
        # (each boolean at its default, and each flipped one with its tensors dropped).
        flags = {f: base[f] for f in dropped_by}
        checks = [({**values, **flags}, found) for values, found in observations]
        checks += [({**observations[0][0], **flags, f: not base[f]}, dropped) for f, (_, dropped) in dropped_by.items()]
        for values, found in checks:
            expanded = expand(model_type, cls, table, values)
            want = {n: (tuple(s), o) for n, (s, o) in found.items()}
            if expanded != want:
                diff = sorted(set(expanded.items()) ^ set(want.items()))[:3]
                return None, f"the fitted table does not give the variant back: {diff}"
        return table, ""

    table, why = fit_variants(variants)
    dropped = 0
    while table is None and dropped < MAX_DROPPED and len(variants) > 1:
        # A field the table language cannot follow (Qwen3-MoE's decoder_sparse_step: which layers
        # hold experts): without its variant the rest may fit, and the field becomes a guard.
        for k in sorted(range(1, len(variants)), key=lambda k: variant_fields[k] in CENTRAL):
            retry, _ = fit_variants(variants[:k] + variants[k + 1:])
            if retry is not None:
                guards.add(variant_fields[k])
                variants = variants[:k] + variants[k + 1:]
                table = retry
                break
        else:
            break
        dropped += 1
    return table, guards, why if table is None else ""


def expand(model_type: str, cls: str, table: Mapping[str, Any], values: Mapping[str, int]) -> dict[str, tuple]:
    from hfconv.rules.expected import expected_tensors

    rules = tuple(Rule(r[0], tuple(r[1]), r[3] if len(r) > 3 else None, "1" if r[2] else None) for r in table["rules"])
    family = Family(model_type, "", table["prefix"], {p: (e, "layers") for p, e in table["ranges"].items()},
                    {}, {}, (), {cls: Head(rules)}, cls)
    config = dict(values)
    config["id2label"] = {str(i): str(i) for i in range(values["num_labels"])}
    model = expected_tensors(config, cls, family=family)
    assert model is not None
    return {n: (t.shape, t.optional) for n, t in model.tensors.items()}


# --- one family -----------------------------------------------------------------------------------

def generate_family(transformers: Any, folder: str, model_type: str) -> tuple[dict[str, Any] | None, list[str]]:
    log: list[str] = []
    try:
        defaults, aliases = config_fields(transformers, model_type)
    except Exception as exc:  # noqa: BLE001
        return None, [f"{model_type}: no config ({exc})"]
    if any(isinstance(v, dict) and k not in ("id2label", "label2id", "rope_parameters")  # RoPE per layer kind: probed
           and any(isinstance(x, dict) for x in v.values()) for k, v in defaults.items()):
        return None, [f"{model_type}: nested sub-configs are not generated"]
    base = {f: v for f, v in defaults.items() if f not in BACKBONE}
    lists = per_layer_lists(defaults)
    for f in LAYER_FIELDS:
        if isinstance(base.get(f), int) and not isinstance(base[f], bool) and base[f] > BASE_LAYERS:
            base[f] = BASE_LAYERS
    base = resized(base, lists)
    ints = [f for f, v in base.items() if isinstance(v, int) and not isinstance(v, bool) and not SKIP_INT.search(f)
            and not is_metadata(f) and 0 < v <= 1_000_000]
    derived = derived_fields(transformers, model_type, defaults, list(ints))
    for f, expr in OPTIONAL_SIZES.items():  # Qwen3-MoE's head_dim: absent from the class, read when given
        value = evaluate(expr, {k: v for k, v in defaults.items() if isinstance(v, int) and not isinstance(v, bool)})
        if f not in defaults and value:
            base[f] = value
            ints.append(f)
            derived[f] = expr
    ints.append("num_labels")
    bools = [f for f, v in base.items() if isinstance(v, bool) and not is_metadata(f)]
    classes: dict[str, Any] = {}
    guards: set[str] = set()
    probed: set[str] = set()
    for cls in classes_of(transformers, model_type):
        start = time.monotonic()
        table, cls_guards, why = generate_class(folder, model_type, cls, base, ints, bools, lists, probed)
        if table is None:
            log.append(f"{model_type}: {cls}: not generated ({why})")
            continue
        guards |= cls_guards
        classes[cls] = table
        log.append(f"{model_type}: {cls}: {len(table['rules'])} rules ({time.monotonic() - start:.1f} s)")
    if not classes:
        return None, log
    used = {name for t in classes.values() for r in t["rules"] for d in [*r[1], *r[3:]]
            for name in re.findall(r"[a-z_]\w*", d)}
    used |= {name for t in classes.values() for e in t["ranges"].values() for name in re.findall(r"[a-z_]\w*", e)}
    probed -= guards  # a field one class's tensors follow is a guard for the family
    guard_values = {f: defaults.get(f) for f in sorted(guards) if structural(f)}
    # Strings, lists and nested values not probed: the table answers only for their defaults.
    for f, v in defaults.items():
        if is_metadata(f) or f in used or f in probed or f in lists or isinstance(v, (bool, float)) or \
                not structural(f):
            continue
        if isinstance(v, int) and f not in guards:
            continue  # an integer that moved nothing (token ids, positions the model does not store)
        guard_values.setdefault(f, v)
    formulas = {f: e for f, e in derived.items() if f in used and e is not None}
    for table in classes.values():  # a size the class computes and no formula fits: config.json must give it
        names = {n for r in table["rules"] for d in [*r[1], *r[3:]] for n in re.findall(r"[a-z_]\w*", d)}
        table["needs"] = sorted(names & {f for f, e in derived.items() if e is None})
    entry = {
        "defaults": {f: defaults[f] for f in sorted(used | {n for e in formulas.values()
                                                              for n in re.findall(r"[a-z_]\w*", e)})
                     if f in defaults and f not in derived},
        "derived": formulas,
        "aliases": {a: r for a, r in aliases.items() if r in used},
        "guards": guard_values,
        # a per-layer list the table answers for when every entry is a kind the default has and
        # that kind changes no tensor (a list whose kinds do change them is not answered at all)
        "per_layer": {f: sorted(set(defaults[f]), key=str) for f in sorted(lists) if f in probed},
        "classes": classes,
    }
    return entry, log


def main(argv: list[str]) -> int:
    import transformers

    global OUT
    transformers.logging.set_verbosity_error()
    if "--output" in argv:  # write elsewhere (a full run leaves the package's file whole meanwhile)
        at = argv.index("--output")
        OUT = Path(argv[at + 1]).resolve()
        argv = argv[:at] + argv[at + 2:]
    wanted = argv or list(MODEL_TYPES)
    document = json.loads(OUT.read_text()) if argv and OUT.exists() else {"families": {}}
    document["transformers"] = transformers.__version__
    if argv == ["--guards-only"]:  # re-apply structural() to the guards of the file as it is
        for entry in document["families"].values():
            entry["guards"] = {f: v for f, v in entry["guards"].items() if structural(f)}
        write(document)
        return 0
    from hfconv.rules.families import FAMILIES

    signal.signal(signal.SIGALRM, _timeout)
    with tempfile.TemporaryDirectory() as folder:
        for model_type in wanted:
            if model_type in FAMILIES:
                print(f"{model_type}: in the hand-written tables, skipped")
                continue
            start = time.monotonic()
            signal.alarm(FAMILY_SECONDS)
            try:
                entry, log = generate_family(transformers, folder, model_type)
            except FamilyTimeout:
                entry, log = None, [f"{model_type}: over {FAMILY_SECONDS} s, not generated"]
            finally:
                signal.alarm(0)
            print("\n".join(log), flush=True)
            if entry is not None:
                document["families"][model_type] = entry
            else:
                document["families"].pop(model_type, None)
            print(f"{model_type}: {'ok' if entry else 'NOT GENERATED'} ({time.monotonic() - start:.1f} s)", flush=True)
            write(document)  # after every family: an interrupted run keeps what it did
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(document['families'])} families)")
    return 0


def write(document: dict[str, Any]) -> None:
    """One JSON document, one family per line (validate parses only its family's line)."""
    lines = [json.dumps(name) + ":" + json.dumps(entry, separators=(",", ":"))
             for name, entry in sorted(document["families"].items())]
    head = '{"transformers":' + json.dumps(document["transformers"]) + ',"families":{\n'
    OUT.write_text(head + ",\n".join(lines) + "\n}}\n")


class FamilyTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that no ``except Exception`` of a build swallows it."""


def _timeout(signum: int, frame: Any) -> None:
    raise FamilyTimeout


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
