"""Config-implied shapes: every stored tensor against what config.json says it must be.

A folder whose tensors disagree with its config fails in ``from_pretrained`` with ``size
mismatch`` errors, or loads with weights silently ignored or left random. This check names the
tensor, the shape the config implies, and the config field behind the wrong dimension (and,
when one field change explains every mismatch, its value).

Expected tensors come from hfconv's rule table (:mod:`hfconv.rules`) or, with
``--reference transformers`` (or ``auto`` for families the table lacks), from transformers'
own model built on the meta device (:mod:`hfconv.rules.transformers_reference`). Only headers are
used, and bitsandbytes 4-bit quant states (a few hundred bytes each, bounded): no weight bytes are read.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..contents import FolderContents
from ..discovery import ADAPTER
from ..dtypes import CONFIG_DTYPE, FLOAT_DTYPES
from ..findings import Finding, finding, register
from ..readers.quant_state import read_quant_states
from ..rules.compare import Comparison, CountMismatch, ShapeMismatch, compare, suggest_fix
from ..rules.expected import (
    CapReached,
    ExpectedModel,
    StoredShapes,
    architecture_of,
    expected_tensors,
    family_of,
    generic_expected,
)
from ..rules.expression import ConfigValueError
from ..rules.quantized import QuantView, Scheme, SchemeError, Unchecked, expected_shapes, quantized_view, scheme_of

# --- HFC6xx: tensor shapes implied by config.json ------------------------------------------
register("HFC601", "error", "shape differs from config",
         "from_pretrained refuses the tensor with a 'size mismatch' error (or, with "
         "ignore_mismatched_sizes, replaces it by random weights). Either the weights or a config.json "
         "field is wrong.",
         "Fix the config field named in the message (the message gives the value the weights fit when "
         "one field explains every mismatch), or re-export the weights for this config.",
         "model.layers.0.self_attn.k_proj.weight has shape [64, 32] but config.json implies [16, 32]: "
         "dim 0 = num_key_value_heads * head_dim = 2 * 8 = 16; the weights fit num_key_value_heads = 8")
register("HFC602", "error", "expected tensor missing",
         "The model built from config.json has this weight but the folder does not store it: "
         "from_pretrained leaves it randomly initialised (with only a log warning).",
         "Re-save the model with save_pretrained, or correct config.json (e.g. tie_word_embeddings when "
         "lm_head.weight is deliberately absent).",
         "lm_head.weight [32000, 4096] is missing from the weights (tie_word_embeddings is false, so it "
         "is not tied to the input embeddings)")
register("HFC603", "warning", "unexpected tensor",
         "The weights hold a tensor the model built from config.json has no place for; loaders skip it "
         "('Some weights of the model checkpoint were not used'). Often a sign of a wrong architecture "
         "or a stale export.",
         "Check config.json's architectures/model_type; delete the tensor if it is a leftover.",
         "model.layers.0.self_attn.rotary.weight [16] is not part of LlamaForCausalLM as config.json "
         "describes it; loaders ignore it")
register("HFC604", "error", "layer count differs from config",
         "The weights hold more (or fewer) numbered layers or experts than config.json declares: the "
         "extra ones are silently ignored, the missing ones stay random.",
         "Set the count field (num_hidden_layers, num_local_experts, ...) to what the weights hold, or "
         "export the weights again.",
         "weights hold 3 layers (model.layers.{0..2}) but config.json num_hidden_layers is 2: layer 2 "
         "would be ignored")
register("HFC605", "info", "some tensors in another dtype",
         "Most tensors are stored in config.json's torch_dtype (dtype) but some are not; loading with "
         "dtype='auto' casts them. (When the bulk disagrees, HFC514 reports it.)",
         "Nothing, if intended (e.g. float32 norms); else re-save in one dtype or fix torch_dtype.",
         "5 of 21 tensors are F32 but config.json torch_dtype is bfloat16 (e.g. model.norm.weight); loading "
         "with dtype='auto' casts them")
register("HFC606", "info", "architecture not in rule table",
         "hfconv's shape-rule table does not cover this model_type or model class, and no transformers "
         "reference was used: only the generic checks ran (embedding rows = vocab_size, embedding width "
         "= hidden_size, layer count).",
         "Install transformers (pip install torch transformers) and use --reference auto or "
         "transformers for a full check.",
         "model_type 'mamba' is not in hfconv's shape-rule table and transformers is not installed: only "
         "embedding sizes and the layer count were checked")
register("HFC607", "info", "quantization scheme not checked",
         "config.json has a quantization_config whose storage layout hfconv does not know (schemes it checks: "
         "fp8 with or without blocks, gptq (and its marlin format), awq gemm/gemv/gemv_fast/marlin/ipex, bitsandbytes "
         "4-bit and 8-bit, compressed-tensors pack-, float-, int- and naive-quantized in one config group or several, "
         "mxfp4), or a variant whose stored layout config.json does not determine (gptq bitblas), so shapes cannot be "
         "checked against the config.",
         "Nothing to do; validate the unquantized model for shape checks.",
         "config.json has a quantization_config (hqq: hfconv does not know its layout), so shape checks "
         "against the config are skipped")
register("HFC608", "info", "adapter folder",
         "adapter_config.json marks a PEFT adapter: its tensors are low-rank deltas for a base model, "
         "not that model's weights, so they are not checked against a config.json.",
         "Nothing to do; validate the base model (or the merged model) for shape checks.",
         "adapter_config.json: a PEFT adapter (LORA) for meta-llama/Llama-3.1-8B; shape checks against "
         "config.json are skipped")
register("HFC609", "info", "reference model unavailable",
         "The transformers reference model could not be built (transformers missing, model unknown to "
         "it, custom code not trusted, or the config is rejected).",
         "Install transformers (pip install torch transformers), pass --trust-remote-code for "
         "folders with their own code, or use --reference rules.",
         "--reference transformers: transformers is not installed (pip install torch transformers); "
         "checked against hfconv's rule table instead")
register("HFC610", "info", "ignored buffers stored",
         "Older exports saved non-persistent buffers (rotary inv_freq, causal-mask attn.bias, position "
         "ids); loaders recompute and ignore them. Harmless, but dead weight.",
         "Nothing to do; re-saving with a current transformers drops them.",
         "model.layers.0.self_attn.rotary_emb.inv_freq and 1 more like it: a rotary-embedding buffer "
         "recomputed at load; loaders ignore them")
register("HFC611", "error", "config value unusable",
         "A config.json value that fixes tensor shapes is missing, not an integer, negative, or zero where "
         "it divides: transformers cannot build the model from it.",
         "Correct the field in config.json.",
         "config.json num_attention_heads is '32', not an integer (needed for a tensor shape); tensor "
         "shapes were not checked")
register("HFC612", "warning", "shape check skipped at a cap",
         "config.json asks for more layers, experts or tensors than hfconv expands (MAX_COUNT, "
         "MAX_EXPANSION), and the folder stores enough tensors to fit it. Expanding the rule table that far "
         "would cost minutes and gigabytes, so the shapes were not checked: no verdict either way. (A config "
         "the stored tensors cannot fit is HFC611, an error.)",
         "Nothing is known to be wrong; check the shapes another way (--reference transformers builds the "
         "model on the meta device), or split the check over smaller configs.",
         "shape check skipped: config.json num_hidden_layers would need 1,200,003 expected tensors (for the "
         "1,200,003 stored), more than hfconv checks (2,000,000, MAX_EXPANSION); tensor shapes were not checked")
register("HFC613", "warning", "transformers' quantizer not used",
         "--reference transformers builds the model through transformers' quantizer for the folder's scheme, as "
         "from_pretrained does, but that quantizer cannot run here (its library is not installed, it needs a GPU, "
         "or it refused the config): the quantized tensors were checked with hfconv's own layout of the scheme "
         "instead (every shape and dtype still checked, not by transformers' own modules).",
         "Install the scheme's library (bitsandbytes, compressed-tensors, gptqmodel) where it runs to check "
         "with transformers' modules; nothing is known to be wrong.",
         "the transformers reference: transformers' bitsandbytes quantizer cannot run here: Using bitsandbytes "
         "4-bit quantization requires bitsandbytes: pip install -U bitsandbytes>=0.46.1; the quantized tensors "
         "were checked with hfconv's own bitsandbytes 4-bit nf4 layout instead")
register("HFC614", "error", "quantized weight in a module transformers keeps unquantized",
         "transformers' quantizer for the scheme leaves this module a plain layer (its skip list: lm_head and "
         "the output embeddings by default, modules_to_not_convert, modules kept in float32), yet its weight is "
         "stored quantized: from_pretrained casts the quantized values into the plain layer without their "
         "scales, so it computes garbage.",
         "Store the module's unquantized weight, or list the modules to convert in quantization_config "
         "(modules_to_not_convert) as the export did.",
         "lm_head.weight is stored F8_E4M3 but transformers' FineGrainedFP8HfQuantizer keeps lm_head "
         "unquantized (fp8 in 128x128 blocks: a module on its skip list)")

register("HFC618", "error", "quantized weight without its scale",
         "A quantized weight is stored without a tensor its scheme needs to dequantize it (FP8 "
         "weight_scale_inv, GPTQ/AWQ scales or qzeros, bitsandbytes absmax, quant_map, quant_state or SCB, "
         "compressed-tensors weight_scale or weight_shape): loaders leave that tensor uninitialised, so the "
         "layer computes garbage, or refuse the checkpoint.",
         "Re-export the quantized model (save_pretrained of the quantized model writes every part), or copy "
         "the missing tensor from the original export.",
         "model.layers.0.mlp.down_proj.weight is stored F8_E4M3 (fp8 in 128x128 blocks) but "
         "model.layers.0.mlp.down_proj.weight_scale_inv is missing")
register("HFC619", "error", "quantization tensor shape differs",
         "A scale, zero-point or quant-state tensor does not have the shape its weight implies (blocks, groups "
         "or rows of the config's shape, per quantization_config): loaders refuse it with a size mismatch or "
         "dequantize with the wrong scales.",
         "Re-export the quantized model for this config, or fix quantization_config (weight_block_size, "
         "group_size, bits) to what the export used.",
         "model.layers.0.mlp.down_proj.weight_scale_inv has shape [56, 16] but "
         "model.layers.0.mlp.down_proj.weight [7168, 2048] in 128x128 blocks = [ceil(7168/128), "
         "ceil(2048/128)] needs [56, 16] (fp8 in 128x128 blocks)")
register("HFC620", "error", "quantized tensor in the wrong dtype",
         "A quantized weight or its scale is stored in a dtype the scheme does not use (an FP8 block scale "
         "beside a bf16 weight, a GPTQ qweight that is not int32): loaders reinterpret or cast the bytes and "
         "the layer computes garbage.",
         "Re-export the quantized model; do not cast quantized checkpoints with a dtype conversion.",
         "model.layers.0.mlp.down_proj.weight is BF16 but a block-quantized weight is stored as F8_E4M3 "
         "(fp8 in 128x128 blocks)")
register("HFC621", "warning", "quantization tensor without its weight",
         "A scale or zero-point tensor is stored for a module whose quantized weight is not: loaders ignore "
         "it, and the weight itself is usually missing (see HFC602).",
         "Restore the weight from the original export, or delete the stray tensor.",
         "model.layers.0.mlp.down_proj.weight_scale_inv belongs to a quantized model.layers.0.mlp.down_proj "
         "but model.layers.0.mlp.down_proj.weight is not stored (fp8 in 128x128 blocks); loaders ignore it")
register("HFC622", "error", "quantization_config value unusable",
         "A quantization_config value the stored shapes depend on (bits, group_size, weight_block_size) is "
         "missing or not a valid number: transformers refuses the config or unpacks the weights wrongly.",
         "Correct the value in config.json's quantization_config to what the export used.",
         "config.json quantization_config bits is 5, not one of 2, 3, 4, 8; quantized shapes were not checked")
register("HFC623", "error", "module listed as not converted is quantized",
         "quantization_config lists this module as kept unquantized (modules_to_not_convert, "
         "llm_int8_skip_modules, ignore), yet its weight is stored quantized: loaders build a plain layer and "
         "read the quantized bytes as if they were the weight, or miss the weight.",
         "Remove the module from the list, or store its unquantized weight.",
         "lm_head.weight is F8_E4M3 but quantization_config lists lm_head as not converted")
register("HFC625", "error", "quantization_config but no quantized weight",
         "config.json declares a quantization scheme, but no stored weight is quantized the way it stores them "
         "(no scales, packed weights or quant states): loaders build quantized layers and find float weights "
         "where they expect the scheme's tensors, so loading fails or computes garbage.",
         "Remove quantization_config from config.json if the weights are not quantized, or store the "
         "quantized export.",
         "config.json has a quantization_config (gptq 4-bit, group 128) but none of the 154 stored tensors is "
         "quantized that way (no qweight); shape checks against the config were skipped")
register("HFC624", "error", "packed weight holds the wrong number of values",
         "A bitsandbytes 4-bit weight packs two values per byte: its byte count must be half the element "
         "count of the shape config.json implies. A different count means another layer size.",
         "Fix the config field behind the layer's size, or re-export the quantized weights for this config.",
         "model.layers.0.mlp.down_proj.weight holds 4096 bytes = 8192 packed 4-bit values but config.json "
         "implies [64, 64] = 4096 values, 2048 bytes (bitsandbytes 4-bit nf4)")

_CONFIG = "config.json"
_MARKS = {"fp8": "no weight_scale_inv", "gptq": "no qweight or marlin B", "awq": "no qweight",
          "bnb-4bit": "no weight.absmax or quant state", "bnb-8bit": "no SCB",
          "compressed-tensors": "no weight_scale or weight_packed", "mxfp4": "no *_blocks"}


def check_shapes(contents: FolderContents) -> Iterator[Finding]:
    """Compare every loaded tensor's shape with the shape config.json implies."""
    folder = contents.folder
    loaded = folder.loaded_set
    if folder.has("adapter_config.json") and (loaded is None or loaded.single in ADAPTER.values()):
        # Adapter weights are deltas for a base model; full weights beside an adapter_config.json
        # (a merged model that kept it) are checked as usual.
        yield _adapter(contents)
        return
    config = contents.config
    tensors = contents.loaded_tensors
    if config is None or not tensors:
        return  # layout and read checks report missing config or weights
    quant = config.get("quantization_config")
    scheme: Scheme | None = None
    if quant:
        try:
            found = scheme_of(quant)
        except SchemeError as exc:
            yield finding("HFC622", f"config.json quantization_config {exc.message}; quantized shapes were not "
                          "checked", file=_CONFIG, tensor=exc.key)
            return
        if isinstance(found, Unchecked):
            yield finding("HFC607", f"config.json has a quantization_config ({found.method}: {found.reason}), "
                          "so shape checks against the config are skipped", file=_CONFIG)
            return
        scheme = found
    else:
        yield from _check_dtypes(config, list(tensors.values()))

    # 1. Where the expected tensors come from.
    stored = _stored_shapes(tensors)
    try:
        expected, notes = _reference(contents, config, stored)
    except CapReached as exc:  # a cap, on a folder that could fit the config: no verdict
        yield finding("HFC612", f"shape check skipped: config.json {exc.message}; tensor shapes were not checked",
                      file=_CONFIG, tensor=exc.fields[0] if exc.fields else None)
        return
    except ConfigValueError as exc:
        field = exc.fields[0] if exc.fields else None
        yield finding("HFC611", f"config.json {exc.message}; tensor shapes were not checked", file=_CONFIG,
                      tensor=field)
        return
    yield from notes
    expected = _trailing_held(expected, config, tensors)
    for note in expected.notes:
        yield finding("HFC606", note, file=_CONFIG)

    # 2. A quantized folder: its tensors as the unquantized model stores them, and the scheme's own
    # tensors (scales, zeros, quant states) against the weights they belong to.
    view: QuantView | None = None
    if scheme is not None:
        view = quantized_view(scheme, tensors, expected_shapes(expected, config),
                              _quant_states(contents, scheme))
        if not view.modules:
            yield finding("HFC625", f"config.json has a quantization_config ({scheme.label}) but none of the "
                          f"{len(tensors)} stored tensors is quantized that way ({_MARKS[scheme.method]}); shape "
                          "checks against the config were skipped", file=_CONFIG)
            return
        yield from _check_dtypes(config, view.unquantized(tensors))
        for issue in view.issues:
            yield finding(issue.code, issue.message, file=contents.file_of(issue.tensor), tensor=issue.tensor)
        if expected.source.startswith("transformers"):  # transformers' quantizer: what hfconv's layout left
            from ..rules import transformers_reference as ref
            for issue in ref.quantizer_issues(expected, tensors, view, contents.options.reference == "transformers"):
                yield finding(issue.code, issue.message, file=contents.file_of(issue.tensor) or _CONFIG,
                              tensor=issue.tensor or None)
        actual = view.shapes
    else:
        actual = stored

    # 3. Compare, and look for one config field that explains every mismatch.
    result = compare(expected, actual)
    fixes = suggest_fix(config, expected, result, actual)
    read_all = _all_shards_read(contents)
    yield from _render(contents, config, expected, result, fixes, read_all, actual, view)


def _reference(contents: FolderContents, config: Mapping[str, Any],
               stored: StoredShapes) -> tuple[ExpectedModel, list[Finding]]:
    """The expected model per --reference, with the findings explaining any fallback. ``stored``:
    the loaded tensors' names and shapes."""
    option = contents.options.reference
    family = family_of(config)
    architecture = architecture_of(config)
    known_head = family is not None and family.head_for(architecture) is not None
    notes: list[Finding] = []
    if option == "auto" and family is None and (generated := _generated(contents, config, stored)) is not None:
        return generated, notes
    if option == "transformers" or (option == "auto" and not known_head):
        from ..rules import transformers_reference as ref

        if option == "transformers" or ref.transformers_available():
            try:
                return ref.expected_from_transformers(contents.folder.root, config,
                                                      contents.options.trust_remote_code,
                                                      tensor_names=contents.loaded_tensors), notes
            except ref.ConfigRejected as exc:
                raise ConfigValueError((), f"is refused by {exc}") from None
            except ref.ReferenceUnavailable as exc:
                fallback = ("checked against hfconv's rule table instead" if family is not None else
                            "only embedding sizes and the layer count were checked")
                notes.append(finding("HFC609", f"reference={option!r}: {exc}; {fallback}", file=_CONFIG))
    rules = expected_tensors(config, stored=len(contents.loaded_tensors))
    if rules is not None:
        return rules, notes
    model_type = config.get("model_type")
    if not notes:
        why = ("transformers is not installed" if option == "auto" else f"reference={option!r} was asked")
        what = f"model_type {model_type!r}" if isinstance(model_type, str) else "a config.json without model_type"
        notes.append(finding("HFC606", f"{what} is not in hfconv's shape-rule table and {why}: only embedding "
                             "sizes and the layer count were checked", file=_CONFIG))
    return generic_expected(config, stored), notes


def _stored_shapes(tensors: Mapping[str, Any]) -> StoredShapes:
    """The stored tensors' names and shapes as two lists (what the comparison reads), a dict of them
    made only where a name is looked up (a mismatch to word)."""
    return StoredShapes(list(tensors), list(map(_SHAPE, tensors.values())))


def _trailing_held(expected: ExpectedModel, config: Mapping[str, Any], tensors: Mapping[str, Any]) -> ExpectedModel:
    """A family's trailing layers (DeepSeek-V3's multi-token prediction) are tolerated only where
    the folder stores them with a tensor only they hold (enorm, hnorm, eh_proj): a plain decoder
    layer at that index is one layer more than num_hidden_layers says (HFC604)."""
    family = family_of(config)
    if expected.source != "rules" or family is None or not family.trailing_marker or not expected.allowed_extras:
        return expected
    # Each pattern's witness looked for first where save_pretrained writes it (model.layers.61.enorm.weight):
    # then no pass over every stored name (100,000s in the largest folders).
    witnesses = _usual_markers(expected.trailing_layers, family.prefix, family.trailing_marker, tensors)
    if all(any(re.search(p, name) for name in witnesses) for p in expected.allowed_extras):
        return expected
    marked = list(itertools.compress(tensors, map(str.endswith, tensors, itertools.repeat(family.trailing_marker))))
    kept = tuple(p for p in expected.allowed_extras if any(re.search(p, name) for name in marked))
    return expected if kept == expected.allowed_extras else dataclasses.replace(expected, allowed_extras=kept)


def _usual_markers(layers: Iterable[str], prefix: str, markers: tuple[str, ...],
                   tensors: Mapping[str, Any]) -> list[str]:
    """The stored names of ``markers`` in each trailing layer, with and without the base prefix."""
    stems = dict.fromkeys(stem for layer in layers for stem in (layer, layer.removeprefix(prefix)))
    return [stem + marker for stem in stems for marker in markers if stem + marker in tensors]


_QUANT_STATE = ".weight.quant_state.bitsandbytes__"
_MAX_STATES_BYTES = 16 * 1024 * 1024
"""Most bytes of quant states read for one folder."""


def _quant_states(contents: FolderContents, scheme: Scheme) -> dict[str, dict[str, Any]]:
    """bitsandbytes 4-bit quant states by module: the JSON (shape, blocksize, quant type) its
    ``weight.quant_state.bitsandbytes__nf4`` U8 tensor holds (a few hundred bytes each, read by
    :mod:`hfconv.readers.quant_state`, bounded); unreadable or malformed ones are skipped."""
    if scheme.method != "bnb-4bit":
        return {}
    files = contents.tensor_files
    by_file: dict[str, list[tuple[str, int, int]]] = {}
    for name, meta in contents.loaded_tensors.items():
        cut = name.find(_QUANT_STATE)
        if cut >= 0 and meta.dtype == "U8" and meta.data_offsets is not None and name in files:
            by_file.setdefault(files[name], []).append((name[:cut], *meta.data_offsets))
    states: dict[str, dict[str, Any]] = {}
    budget = _MAX_STATES_BYTES
    for file, ranges in by_file.items():
        states.update(read_quant_states(contents.folder.path(file), ranges, budget))
        budget -= sum(end - begin for _, begin, end in ranges)
    return states


def _generated(contents: FolderContents, config: Mapping[str, Any], stored: StoredShapes) -> ExpectedModel | None:
    """The generated table's model (:mod:`hfconv.rules.generated`, no transformers import) where
    one answers for this config. A folder it does not find clean is left to the transformers
    reference where that is installed (whose checkpoint-name handling is the loader's own), so the
    table's answer never differs from it; a folder whose own code is trusted is never the table's."""
    from ..rules import transformers_reference as ref
    from ..rules.generated import generated_expected

    if ref.runs_folder_code(config, contents.options.trust_remote_code):
        return None
    actual: Mapping[str, tuple[int, ...]] = stored
    expected = generated_expected(config, stored.keys())
    if expected is None:
        return None
    scheme = _scheme_or_none(config.get("quantization_config"))
    if scheme is not None:  # quantized (gpt-oss MXFP4): compared as the unquantized model stores it
        view = quantized_view(scheme, contents.loaded_tensors, expected_shapes(expected, config),
                              _quant_states(contents, scheme))
        actual = view.shapes if view.modules and not view.issues else {}
    if not compare(expected, actual).clean and \
            ref.transformers_available():
        return None
    return expected


def _scheme_or_none(quant: Any) -> Scheme | None:
    try:
        found = scheme_of(quant) if quant else None
    except SchemeError:
        return None
    return found if isinstance(found, Scheme) else None


def _all_shards_read(contents: FolderContents) -> bool:
    chosen = contents.folder.loaded_set
    return chosen is not None and all(s in contents.weights for s in contents.shards_of(chosen))


def _render(contents: FolderContents, config: Mapping[str, Any], expected: ExpectedModel, result: Comparison,
            fixes: Mapping[str, int], read_all: bool, actual: Mapping[str, tuple[int, ...]],
            view: QuantView | None) -> Iterator[Finding]:
    stored_as = view.stored_as if view is not None else {}

    def where(name: str) -> str | None:
        """The shard holding ``name``, or the packed tensor it is stored as."""
        return contents.file_of(name) or (contents.file_of(stored_as[name]) if name in stored_as else None)

    for mm in result.mismatched:
        text = _mismatch_message(mm, expected, fixes)
        stored = stored_as.get(mm.name)
        if stored is not None and view is not None:  # a packed weight: name what is stored
            meta = contents.loaded_tensors[stored]
            verb = "records" if ".quant_state." in stored else "unpacks to"
            text = text.replace(f"{mm.name} has shape", f"{stored} {_fmt_shape(meta.shape)} ({view.scheme.label}) "
                                f"{verb} {mm.name} of shape", 1)
        yield finding("HFC601", text, file=where(mm.name), tensor=stored or mm.name)
    for count in result.counts:
        if read_all or count.found and max(count.found) >= count.group.expected:
            yield finding("HFC604", _count_message(count, config), file=_CONFIG)
    if read_all:  # with a shard unreadable, its tensors are not "missing": the read findings say why
        what = expected.architecture or "the model"
        for name, key in zip(result.missing, result.missing_expected):
            shape = f" {_fmt_shape(expected.tensors[key].shape)}"
            yield finding("HFC602", f"{name}{shape} is missing from the weights; {what} as config.json describes "
                          f"it needs it{_tie_hint(name, config)}", tensor=name)
    for name in result.unexpected:
        what = expected.architecture or "the model"
        yield finding("HFC603", f"{name} {_fmt_shape(actual[name])} is not part of {what} as config.json "
                      "describes it; loaders ignore it", file=where(name), tensor=stored_as.get(name, name))
    by_label: dict[str, list[str]] = {}
    for name, label in result.ignored:
        by_label.setdefault(label, []).append(name)
    for label, names in by_label.items():
        short, _, what = label.partition(" (")  # the example names the tensor: say only what it is
        what = what.removesuffix(")") if what else short
        more = f" and {len(names) - 1} more like it" if len(names) > 1 else ""
        yield finding("HFC610", f"{names[0]}{more}: {what}; loaders ignore {'them' if more else 'it'}",
                      file=where(names[0]))


def _mismatch_message(mm: ShapeMismatch, expected: ExpectedModel, fixes: Mapping[str, int]) -> str:
    want = mm.expected
    text = f"{mm.name} has shape {_fmt_shape(mm.actual)} but config.json implies {_fmt_shape(want.shape)}"
    if expected.source.startswith("transformers"):
        text += f" (per {expected.source} {expected.architecture})"
    dims = mm.wrong_dims
    if dims:
        parts = []
        notes: list[str] = []
        for k in dims:
            dim = want.dims[k]
            if dim.formula:
                parts.append(f"dim {k} = {dim.formula}")
            elif len(dim.drivers) == 1:
                parts.append(f"dim {k} = {dim.value} (the value of {dim.drivers[0]})")
            elif dim.drivers:
                parts.append(f"dim {k} = {dim.value} (config.json fields with that value: {', '.join(dim.drivers)})")
            else:
                parts.append(f"dim {k} = {dim.value}")
            notes.extend(n for n in dim.notes if n not in notes)
        text += ": " + ", ".join(parts)
        if notes:
            text += " (" + "; ".join(notes) + ")"
        drivers = [f for k in dims for f in want.dims[k].drivers]
    else:
        text += f" ({len(mm.actual)} dimensions instead of {len(want.dims)})"
        drivers = list(want.drivers)
    if tuple(reversed(mm.actual)) == want.shape and len(mm.actual) == 2:
        text += "; the stored shape is the expected one transposed"
    fitting = [f"{f} = {v}" for f, v in fixes.items() if f in drivers]
    if fitting:
        text += "; the weights fit " + fitting[0] + (f" (or {', '.join(fitting[1:])})" if fitting[1:] else "")
    elif drivers and not dims:
        text += f"; check {', '.join(dict.fromkeys(drivers))}"
    return text


def _count_message(count: CountMismatch, config: Mapping[str, Any]) -> str:
    group = count.group
    want = group.wanted
    found = set(count.found)
    field = group.field
    stated = f"config.json {field} is {group.expected}" if _lookup(config, field) is not None else \
        f"config.json implies {field} = {group.expected}"
    noun = group.noun
    if not found:
        return f"weights hold no {group.display} tensors but {stated}"
    display = group.display.replace("{n}", "{" + _ranges(sorted(found)) + "}")
    text = f"weights hold {len(found)} {noun} ({display}) but {stated}"
    extra, absent = sorted(found - want), sorted(want - found)
    if extra:
        text += f": {_singular(noun, extra)} {_ranges(extra)} would be ignored"
    if absent:
        text += (", and " if extra else ": ") + f"{_singular(noun, absent)} {_ranges(absent)} would stay randomly " \
            "initialised"
    encoder = config.get("encoder_layers")
    if field == "num_hidden_layers" and isinstance(encoder, int) and encoder != group.expected:
        # The alias run of an encoder-decoder (see generic_expected): only transformers 5 reads it.
        text += (f" in transformers 5, which builds num_hidden_layers encoder layers (4.x builds encoder_layers = "
                 f"{encoder}); set both to {len(found)}")
    return text


def _lookup(config: Mapping[str, Any], path: str) -> Any:
    """``config["text_config"]["num_hidden_layers"]`` for ``text_config.num_hidden_layers``."""
    value: Any = config
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _singular(noun: str, items: list[int]) -> str:
    return noun[:-1] if len(items) == 1 and noun.endswith("s") else noun


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0..2, 5'."""
    if not values:
        return ""
    out: list[str] = []
    start = prev = values[0]
    for v in values[1:]:
        if v == prev + 1:
            prev = v
        else:
            out.append(f"{start}..{prev}" if prev != start else str(start))
            start = prev = v
    out.append(f"{start}..{prev}" if prev != start else str(start))
    return ", ".join(out)


def _tie_hint(name: str, config: Mapping[str, Any]) -> str:
    if name.rsplit(".", 2)[-2:] in (["lm_head", "weight"], ["embed_out", "weight"]) and \
            config.get("tie_word_embeddings") is False:
        return " (tie_word_embeddings is false, so it is not tied to the input embeddings)"
    return ""


_KEPT_IN_FP32 = (".e_score_correction_bias",)
"""Tensors transformers keeps in float32 whatever the dtype (_keep_in_fp32_modules_strict of
DeepSeek-V3 and the MoE models built like it): stored F32 as published, not cast at load."""
_NAME = operator.attrgetter("name")
_DTYPE = operator.attrgetter("dtype")
_SHAPE = operator.attrgetter("shape")


def _check_dtypes(config: Mapping[str, Any], metas: list[Any]) -> Iterator[Finding]:
    """Tensors stored in another float dtype than torch_dtype while most match it.

    When the bulk of the weights disagrees with torch_dtype, HFC514 (checks/tokenizer.py) says
    so; this reports the remainder: a few tensors left in another dtype.
    """
    key = "torch_dtype" if isinstance(config.get("torch_dtype"), str) else "dtype"
    declared = config.get(key)
    want = CONFIG_DTYPE.get(declared) if isinstance(declared, str) else None
    if want is None:
        return
    # Counted in C (100,000s of tensors in the largest folders): every dtype, less the tensors kept
    # in float32 whatever torch_dtype says; nothing to count where every tensor is in torch_dtype.
    dtypes = list(map(_DTYPE, metas))
    if dtypes.count(want) == len(dtypes):
        return
    kept = map(operator.not_, map(str.endswith, map(_NAME, metas), itertools.repeat(_KEPT_IN_FP32)))
    stored = Counter(itertools.compress(dtypes, kept))  # in order: ties go to the first seen
    stored = Counter({dtype: n for dtype, n in stored.items() if dtype in FLOAT_DTYPES})
    if not stored or stored.most_common(1)[0][0] != want:
        return
    floats = stored.total()
    for dtype, count in sorted(stored.items()):
        if dtype == want:
            continue
        example = next(meta.name for meta in metas if meta.dtype == dtype and not meta.name.endswith(_KEPT_IN_FP32))
        yield finding("HFC605", f"{count} of {floats} tensors are {dtype} but config.json {key} is {declared} "
                      f"(e.g. {example}); loading with dtype='auto' casts them", file=_CONFIG, tensor=example)


def _adapter(contents: FolderContents) -> Finding:
    data = contents.json.get("adapter_config.json")
    detail = ""
    if isinstance(data, dict):
        kind = data.get("peft_type")
        base = data.get("base_model_name_or_path")
        detail = f" ({kind})" if isinstance(kind, str) else ""
        if isinstance(base, str) and base:
            detail += f" for {base}"
    return finding("HFC608", f"adapter_config.json: a PEFT adapter{detail}; its tensors are checked against the base "
                   "model, not config.json, so shape checks are skipped", file="adapter_config.json")


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
