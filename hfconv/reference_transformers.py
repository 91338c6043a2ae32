"""``--reference transformers``: expected tensor names and shapes from transformers itself.

The model class is built from the config on the ``meta`` device (no memory for weights, no
download, nothing read but config.json) and its state dict gives the names and shapes. This
covers every architecture the installed transformers knows. transformers and torch are
imported lazily, only here; hfconv works without them (the optional extra
``hfconv[transformers]``).

The folder's own Python code (``auto_map``) is only imported with ``trust_remote_code``.
Every failure becomes :class:`ReferenceUnavailable` with a one-line reason, never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .shape_rules import (
    LAYER_FIELDS,
    ConfigValueError,
    Dim,
    ExpectedModel,
    ExpectedTensor,
    expected_tensors,
    infer_counts,
    legacy_name,
)

MAX_REFERENCE_COUNT = 1024
"""Most layers or experts a reference model is built with (real models have under 200 layers)."""
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")


class ReferenceUnavailable(Exception):
    """The transformers reference could not be built; ``str(exc)`` says why."""


class ConfigRejected(ReferenceUnavailable):
    """transformers knows the model type but its config class refuses config.json, the way
    ``from_pretrained`` reads it: loading the folder fails. ``str(exc)`` says why."""


def transformers_available() -> bool:
    """True when transformers (and torch) can be imported, without importing them."""
    return importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("torch") is not None


def expected_from_transformers(folder: str | os.PathLike, config: Mapping[str, Any],
                               trust_remote_code: bool = False,
                               tensor_names: Iterable[str] | None = None) -> ExpectedModel:
    """Build ``config``'s model on the meta device and read its expected tensors.

    Args:
        folder: the model folder (read only with ``trust_remote_code``, for its code and config).
        config: the parsed config.json.
        trust_remote_code: allow the folder's ``auto_map`` code to be imported and run.
        tensor_names: the names the folder's weights store, when known: expected names then
            follow the folder's own naming wherever transformers renames it on load (LLaVA-style
            folders of transformers 4.x store ``language_model.model.*`` and
            ``vision_tower.vision_model.*`` for the v5 model's ``model.language_model.*`` and
            ``model.vision_tower.*``).

    Returns:
        ExpectedModel with ``source="transformers X.Y.Z"``; tied weights (and weights the class
        declares as missing-ok) are optional; names are checkpoint names (transformers v5's
        load-time conversions, such as fused MoE experts and legacy prefixes, are reverted the
        way ``save_pretrained`` reverts them after ``from_pretrained`` read ``tensor_names``).

    Raises:
        ReferenceUnavailable: transformers is missing, does not know the model, or failed.
    """
    for key, value in config.items():  # building a model with a billion layers on meta still takes forever
        if key in LAYER_FIELDS + ("num_local_experts", "num_experts") and isinstance(value, int) and \
                value > MAX_REFERENCE_COUNT:
            raise ReferenceUnavailable(f"config.json {key} is {value}; hfconv builds reference models with at most "
                                       f"{MAX_REFERENCE_COUNT}")
    if not transformers_available():
        raise ReferenceUnavailable("transformers is not installed (pip install 'hfconv[transformers]')")
    # Offline before the first import: nothing may be downloaded on behalf of a model folder.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import torch
        import transformers
    except Exception as exc:  # a broken install is a reason, not a crash
        raise ReferenceUnavailable(f"transformers could not be imported: {_one_line(exc)}") from None
    version = transformers.__version__
    with _quiet(transformers):
        try:
            hf_config = _build_config(transformers, folder, config, trust_remote_code, version)
            model = _build_model(transformers, torch, hf_config, config, trust_remote_code, version)
            state, optional = _state_shapes(model, tensor_names)
            extras = tuple(_patterns(getattr(model, "_keys_to_ignore_on_load_unexpected", None)))
            prefix = getattr(model, "base_model_prefix", "") or ""
        except ReferenceUnavailable:
            raise
        except (ValueError, AssertionError) as exc:
            # A built-in model class that refuses its own config (DiffLlama with an odd
            # num_key_value_heads, SqueezeBERT with embedding_size != hidden_size) fails the same
            # way in from_pretrained. A folder with its own code (auto_map) loads through that code,
            # so there the built-in class's refusal is only a reason.
            if isinstance(config.get("auto_map"), dict):
                raise ReferenceUnavailable(f"transformers {version} could not build the model: "
                                           f"{_one_line(exc)}") from None
            raise ConfigRejected(f"the model class of transformers {version} ({_class_name(config)}), so "
                                 f"from_pretrained fails: {_two_lines(exc)}") from None
        except Exception as exc:  # transformers raises anything from ImportError to AttributeError
            raise ReferenceUnavailable(f"transformers {version} could not build the model: {_one_line(exc)}") from None
    architecture = type(model).__name__
    if prefix and tensor_names is not None and not any(n.startswith(prefix + ".") for n in model.state_dict()):
        # A bare model (the Auto fallback where this transformers lacks the folder's head class:
        # Wav2Vec2ForMaskedLM, LEDForSequenceClassification in 5.x) reading a head's checkpoint:
        # from_pretrained drops the stored names' base-model prefix, so they load. Expected
        # names take the prefix the folder uses (some may have it already, from the simulated load).
        stored = list(tensor_names)
        if sum(n.startswith(prefix + ".") for n in stored) * 2 > len(stored):
            def add(n: str) -> str:
                return n if n.startswith(prefix + ".") else f"{prefix}.{n}"
            state = {add(n): shape for n, shape in state.items()}
            optional = {add(n) for n in optional}
    prefix = prefix + "." if prefix and any(n.startswith(prefix + ".") for n in state) else ""
    try:  # where the rule table knows the tensor, it also knows which config fields drive it
        rules = expected_tensors(config, architecture)
    except ConfigValueError:
        rules = None
    tensors = {
        name: ExpectedTensor(name, _dims(shape, rules.tensors.get(name) if rules else None, config), name in optional)
        for name, shape in state.items()
    }
    if rules is not None:  # leftovers the table tolerates (bert-base-uncased's pooler beside its MLM head)
        tensors.update({name: t for name, t in rules.tensors.items() if t.optional and name not in tensors})
    return ExpectedModel(
        tensors=tensors, family=config.get("model_type") if isinstance(config.get("model_type"), str) else None,
        architecture=architecture, source=f"transformers {version}", prefix=prefix,
        counts=infer_counts(state, config), complete=True, allowed_extras=extras,
    )


def _build_config(transformers, folder, config: Mapping[str, Any], trust_remote_code: bool, version: str):
    model_type = config.get("model_type")
    has_code = isinstance(config.get("auto_map"), dict)
    if has_code and trust_remote_code:
        return transformers.AutoConfig.from_pretrained(os.fspath(folder), trust_remote_code=True,
                                                       local_files_only=True)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        reason = f"transformers {version} does not know model_type {model_type!r}"
        if has_code:
            reason += " and the folder's own code (auto_map) is only used with --trust-remote-code"
        raise ReferenceUnavailable(reason)
    # transformers 5 writes floats JSON cannot hold as {"__float__": "Infinity"} (FalconH1's
    # time_step_limit) and decodes them when it reads config.json; the config class refuses them raw.
    decode = getattr(getattr(transformers, "PretrainedConfig", None), "_decode_special_floats", None)
    if callable(decode):
        config = decode(dict(config))
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    try:
        return transformers.AutoConfig.for_model(model_type, **kwargs)
    except Exception as exc:  # the config class validates fields (layer_types length, ...)
        first = exc
    # Read the file the way from_pretrained does before blaming the config.
    try:
        return CONFIG_MAPPING[model_type].from_pretrained(os.fspath(folder), local_files_only=True)
    except Exception:  # noqa: BLE001 - from_pretrained refuses it too: the folder does not load
        pass
    if has_code or not os.path.isfile(os.path.join(os.fspath(folder), "config.json")):
        # With its own code (auto_map) the folder is loaded through its own config class, which
        # may well accept what the built-in class of the same model_type refuses.
        reason = f"transformers {version} refused the config: {_one_line(first)}"
        if has_code:
            reason += " (the folder's own code, auto_map, is only used with --trust-remote-code)"
        raise ReferenceUnavailable(reason) from None
    raise ConfigRejected(f"{CONFIG_MAPPING[model_type].__name__} of transformers {version}, so from_pretrained "
                         f"fails: {_two_lines(first)}") from None


def _build_model(transformers, torch, hf_config, config: Mapping[str, Any], trust_remote_code: bool, version: str):
    architecture = _first_architecture(config)
    nested = architecture is None
    if nested:
        # transformers 4.5x's Qwen2-VL / Qwen2.5-VL configs forward attribute writes to text_config:
        # save_pretrained leaves architectures there, and none at the top.
        architecture = next((a for key in ("text_config",) if isinstance(config.get(key), Mapping)
                             and (a := _first_architecture(config[key])) is not None), None)
    has_code = isinstance(config.get("auto_map"), dict)
    with torch.device("meta"):
        if has_code and trust_remote_code:
            return _from_auto(transformers, hf_config, trust_remote_code=True)
        cls = None
        if architecture is not None:
            try:
                cls = getattr(transformers, architecture, None)
            except Exception:  # the lazy module may fail to import an optional backend
                cls = None
        if nested and getattr(cls, "config_class", None) is not type(hf_config):
            cls = None  # the text model's own class: not the one the folder's config builds
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            try:
                return cls._from_config(hf_config) if hasattr(cls, "_from_config") else cls(hf_config)
            except (ValueError, AssertionError) as exc:
                if getattr(cls, "config_class", None) is not type(hf_config):
                    # architectures names a class of another model type: its refusal says nothing
                    # about the config (the Auto classes pick by model_type).
                    raise ReferenceUnavailable(f"transformers {version} could not build {architecture}: "
                                               f"{_one_line(exc)}") from None
                raise
        return _from_auto(transformers, hf_config, trust_remote_code=False)


def _first_architecture(config: Mapping[str, Any]) -> str | None:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str) and _IDENTIFIER.match(archs[0]):
        return archs[0]
    return None


def _from_auto(transformers, hf_config, trust_remote_code: bool):
    errors = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        try:
            return auto.from_config(hf_config, trust_remote_code=trust_remote_code)
        except ValueError as exc:  # "Unrecognized configuration class ... for this kind of AutoModel"
            errors.append(exc)
    raise ReferenceUnavailable(f"no transformers model class for this config: {_one_line(errors[-1])}")


def _state_shapes(model, tensor_names: Iterable[str] | None = None) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Checkpoint names and shapes, and the names a checkpoint may omit.

    The state dict is taken with transformers v5's load-time conversions (fused experts,
    renames such as GPT-NeoX ``embed_out`` -> ``lm_head``, LLaVA's ``language_model.model`` ->
    ``model.language_model``) reverted, so names are those ``save_pretrained`` writes. Given the
    folder's ``tensor_names``, their loading is simulated first, the way ``from_pretrained``
    renames them (:func:`_simulate_load`), so that names follow the folder's own naming (4.x
    or 5.x) and every stored name that loads into a tensor is that tensor's name. transformers
    4.x renames only VLMs, by their class's ``_checkpoint_conversion_mapping``
    (:func:`_class_key_mapping`). Optional: tied weights and those the class declares missing-ok.
    """
    state = model.state_dict()
    stored = set(tensor_names) if tensor_names is not None else set()
    optional = _optional_names(model, state, stored)
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers < 5
        revert_weight_conversion = None
    if revert_weight_conversion is None:
        reverted, optional, loads = _class_key_mapping(model, state, optional, stored)
        shapes = {name: tuple(int(d) for d in tensor.shape) for name, tensor in reverted.items()}
        if loads:
            _use_stored_names(shapes, optional, _reverted_names(state, reverted), loads, stored)
        return shapes, {n for n in optional if n in shapes}
    loads = _simulate_load(model, state, stored) if stored else None
    reverted = _revert(revert_weight_conversion, model, state) if loads is not None else None
    if reverted is None:  # without names, or the simulated load's conversions failed: the default ones
        with contextlib.suppress(AttributeError):
            del model._weight_conversions
        reverted = revert_weight_conversion(model, state)  # a failure makes the reference unavailable
    # Renames are one-to-one, so reverting each optional tensor alone gives its checkpoint name.
    optional = {new for name in optional for new in _revert(revert_weight_conversion, model, {name: state[name]})
                or (name,)}
    shapes = {name: tuple(int(d) for d in tensor.shape) for name, tensor in reverted.items()}
    if loads:
        _use_stored_names(shapes, optional, _reverted_names(state, reverted), loads, stored)
    return shapes, {n for n in optional if n in shapes}


def _revert(revert_weight_conversion, model, state: Mapping[str, Any]) -> dict[str, Any] | None:
    """``revert_weight_conversion(model, state)``, or None when it fails."""
    if getattr(model, "_weight_conversions", None) == []:  # the simulated load renamed nothing
        return dict(state)
    try:
        return revert_weight_conversion(model, dict(state))
    except Exception:  # noqa: BLE001 - internal to transformers; its failure is no reason to give up
        return None


def _simulate_load(model, state: Mapping[str, Any], stored: Iterable[str]) -> dict[str, str] | None:
    """{stored name: model name} for the stored names ``from_pretrained`` loads one to one into a
    tensor of ``state`` (renamed or not), per transformers' own load-time conversion mapping,
    legacy renames included.

    The conversions to revert are left in ``model._weight_conversions``, where
    ``from_pretrained`` leaves the ones that fired for ``save_pretrained``: the model's own that
    fired, and when any fired (the folder has the saved layout, not the in-memory one) its other
    plain renames too, so that a tensor missing from such a folder (LLaVA's
    ``language_model.lm_head.weight``) is named the way that folder names it. The legacy renames
    for all models (``LayerNorm.gamma``) are not reverted, as without names: stored names they
    apply to are matched by :func:`_use_stored_names` or by hfconv's comparison.

    None when this transformers lacks that machinery or it fails (internals change between
    versions): then nothing is simulated and the default conversions are reverted.
    """
    try:
        from transformers import core_model_loading as cml
        from transformers.conversion_mapping import get_model_conversion_mapping

        renaming_cls, converter_cls = cml.WeightRenaming, cml.WeightConverter
        prefix_cls = getattr(cml, "PrefixChange", ())
        order = getattr(cml, "dot_natural_key", None)
        mapping = list(get_model_conversion_mapping(model) or ())
        own = len(get_model_conversion_mapping(model, add_legacy=False) or ())
        renamings = [t for t in mapping if isinstance(t, renaming_cls)]
        converters = [t for t in mapping if isinstance(t, converter_cls)]
        loads: dict[str, str] = {}
        base = (getattr(model, "base_model_prefix", "") or "") + "."
        # Some renames depend on the order names are seen in: from_pretrained's order.
        for name in sorted(stored, key=order) if callable(order) else sorted(stored):
            # Without the base-model prefix step: hfconv's comparison tolerates prefixes itself.
            renamed, pattern = cml.rename_source_key(name, renamings, converters)
            if renamed not in state and name in state:
                renamed, pattern = name, None  # from_pretrained keeps a name the model has
            elif base != "." and isinstance(renamed, str) and renamed.startswith(base) and renamed not in state \
                    and renamed[len(base):] in state:
                # A bare model loading a head's rename (Qwen2-VL: model.* -> model.language_model.*,
                # then the base model drops its own prefix): the stored name loads into that tensor.
                renamed = renamed[len(base):]
            if pattern is None and isinstance(renamed, str) and renamed in state:
                loads[name] = renamed
        saved_layout = any(t.was_used() for t in mapping[:own])
        model._weight_conversions = [
            t for t in mapping[:own]
            if t.was_used() or (saved_layout and isinstance(t, renaming_cls) and not isinstance(t, prefix_cls))]
    except Exception:  # noqa: BLE001 - another transformers version: no simulated load
        with contextlib.suppress(Exception):
            del model._weight_conversions
        return None
    return loads


def _class_key_mapping(model, state: Mapping[str, Any], optional: set[str], stored: Iterable[str]
                       ) -> tuple[dict[str, Any], set[str], dict[str, str] | None]:
    """transformers 4.x: a VLM class's ``_checkpoint_conversion_mapping`` (4.52 and later), which
    ``from_pretrained`` applies to stored names and ``save_pretrained`` reverts, as transformers 5
    does with its conversion mapping: the state dict by checkpoint name, the optional checkpoint
    names, and {stored name: model name} for the stored names that load one to one (None without
    such a mapping, or when it cannot be applied: then the names are the model's own)."""
    mapping = getattr(model, "_checkpoint_conversion_mapping", None)
    if not isinstance(mapping, Mapping) or not mapping:
        return dict(state), optional, None
    try:
        from transformers import modeling_utils

        vlms = getattr(modeling_utils, "VLMS", None)  # the classes from_pretrained applies it to
        if isinstance(vlms, (list, tuple)) and not any(
                isinstance(v, str) and v in cls.__name__.lower() for cls in type(model).__mro__[:-1] for v in vlms):
            return dict(state), optional, None
        forward = [(p, r) for p, r in mapping.items() if isinstance(p, str) and isinstance(r, str)]
        # save_pretrained's reverse: replacement -> pattern, without its anchor and groups
        reverse = [(r, re.sub(r"\(.*\)", "", p.lstrip("^"))) for p, r in forward]

        def first(name: str, pairs: list[tuple[str, str]]) -> str:
            for pattern, replacement in pairs:
                name, count = re.subn(pattern, replacement, name)
                if count:
                    break
            return name

        reverted = {first(name, reverse): tensor for name, tensor in state.items()}
        if len(reverted) != len(state):
            return dict(state), optional, None
        loads = {name: new for name in stored if (new := first(name, forward)) in state}
        return reverted, {first(name, reverse) for name in optional}, loads
    except Exception:  # noqa: BLE001 - an unusable pattern: the model's own names
        return dict(state), optional, None


def _reverted_names(state: Mapping[str, Any], reverted: Mapping[str, Any]) -> dict[str, str]:
    """{model name: checkpoint name} for the tensors the revert only renamed (it hands the same
    tensor object on; the state dict holds a distinct one per name)."""
    by_id: dict[int, list[str]] = {}
    for name, tensor in reverted.items():
        by_id.setdefault(id(tensor), []).append(name)
    names = {}
    for name, tensor in state.items():
        found = by_id.get(id(tensor))
        if found is not None and len(found) == 1:
            names[name] = found[0]
    return names


def _use_stored_names(shapes: dict[str, tuple[int, ...]], optional: set[str], reverted: Mapping[str, str],
                      loads: Mapping[str, str], stored: set[str]) -> None:
    """Rename expected tensors to the stored names that load into them where the reverted name
    differs (a folder mixing namings, legacy renames). Shapes are still compared, under the
    stored name; a stored name that is itself expected keeps its own tensor, and one the
    comparison matches by itself (``LayerNorm.gamma``) is left to it."""
    for name, model_name in loads.items():
        expected = reverted.get(model_name)
        if expected is None or expected == name or expected in stored or expected not in shapes or name in shapes:
            continue
        if legacy_name(name) == expected:
            continue
        shapes[name] = shapes.pop(expected)
        if expected in optional:
            optional.discard(expected)
            optional.add(name)


def _optional_names(model, state: Mapping[str, Any], stored: set[str] | None = None) -> set[str]:
    """Names a checkpoint may omit: tied weights and those the class declares missing-ok.

    transformers 4.x ties by sharing one Parameter under several names, and ``save_pretrained``
    writes one of them, not necessarily the first registered (FSMT's decoder stores
    ``output_projection.weight``, not ``embed_tokens.weight``): where ``stored`` holds a name of
    such a group, the group's other names are optional; otherwise all but the first."""
    optional: set[str] = set()
    tied = getattr(model, "all_tied_weights_keys", None)  # transformers >= 5: the effective ties
    if isinstance(tied, Mapping):
        optional.update(tied)
    else:  # transformers 4: once tied, one Parameter appears under several names
        groups: dict[int, list[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(param), []).append(name)
        prefix = (getattr(model, "base_model_prefix", "") or "") + "."
        for names in groups.values():
            if len(names) < 2:
                continue
            kept = next((n for n in names if _stored_as(n, stored, prefix)), names[0]) if stored else names[0]
            optional.update(n for n in names if n != kept)
        if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "get_output_embeddings"):
            output = model.get_output_embeddings()
            optional.update(f"{name}.weight" for name, module in model.named_modules()
                            if output is not None and module is output)
    for pattern in _patterns(getattr(model, "_keys_to_ignore_on_load_missing", None)):
        optional.update(n for n in state if re.search(pattern, n))
    return {n for n in optional if n in state}


def _stored_as(name: str, stored: set[str], prefix: str) -> bool:
    """``name`` is stored, with or without the base-model prefix (a bare model saved with it)."""
    if name in stored:
        return True
    if prefix != "." and name.startswith(prefix):
        return name[len(prefix):] in stored
    return prefix != "." and prefix + name in stored


def _patterns(value) -> list[str]:
    if not value:
        return []
    return [p for p in value if isinstance(p, str)]


def _dims(shape: tuple[int, ...], rule: ExpectedTensor | None, config: Mapping[str, Any]) -> tuple[Dim, ...]:
    """Dimensions with their config drivers: the rule table's when it has the same tensor with
    the same shape, else the top-level config fields whose value equals the dimension."""
    if rule is not None and rule.shape == shape:
        return rule.dims
    return tuple(Dim(d, _fields_equal_to(config, d)) for d in shape)


def _fields_equal_to(config: Mapping[str, Any], value: int) -> tuple[str, ...]:
    return tuple(k for k, v in config.items() if isinstance(v, int) and not isinstance(v, bool) and v == value)[:3]


@contextlib.contextmanager
def _quiet(transformers) -> Iterator[None]:
    """Silence transformers' logging and warnings while the reference is built, then restore."""
    hf_logging = getattr(transformers, "logging", None) or getattr(transformers.utils, "logging", None)
    previous = hf_logging.get_verbosity() if hf_logging is not None else None
    if hf_logging is not None:
        hf_logging.set_verbosity_error()
    root = logging.getLogger("transformers")
    root_level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(root_level)
        if hf_logging is not None and previous is not None:
            hf_logging.set_verbosity(previous)


def _class_name(config: Mapping[str, Any]) -> str:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str) and _IDENTIFIER.match(archs[0]):
        return archs[0]
    return f"model_type {config.get('model_type')!r}"


def _two_lines(exc: BaseException) -> str:
    """The first two lines of ``str(exc)`` in one (validation errors put the reason on line 2)."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(text[:2])[:400] if text else type(exc).__name__


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:300]
