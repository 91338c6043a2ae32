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
from collections.abc import Iterator, Mapping
from typing import Any

from .shape_rules import (
    LAYER_FIELDS,
    ConfigValueError,
    Dim,
    ExpectedModel,
    ExpectedTensor,
    expected_tensors,
    infer_counts,
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
                               trust_remote_code: bool = False) -> ExpectedModel:
    """Build ``config``'s model on the meta device and read its expected tensors.

    Args:
        folder: the model folder (read only with ``trust_remote_code``, for its code and config).
        config: the parsed config.json.
        trust_remote_code: allow the folder's ``auto_map`` code to be imported and run.

    Returns:
        ExpectedModel with ``source="transformers X.Y.Z"``; tied weights (and weights the class
        declares as missing-ok) are optional; names are checkpoint names (transformers v5's
        load-time conversions, such as fused MoE experts, are reverted).

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
            state, optional = _state_shapes(model)
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
    architecture = None
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str) and _IDENTIFIER.match(archs[0]):
        architecture = archs[0]
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


def _from_auto(transformers, hf_config, trust_remote_code: bool):
    errors = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        try:
            return auto.from_config(hf_config, trust_remote_code=trust_remote_code)
        except ValueError as exc:  # "Unrecognized configuration class ... for this kind of AutoModel"
            errors.append(exc)
    raise ReferenceUnavailable(f"no transformers model class for this config: {_one_line(errors[-1])}")


def _state_shapes(model) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Checkpoint names and shapes, and the names a checkpoint may omit.

    The state dict is taken with transformers v5's load-time conversions (fused experts,
    renames such as GPT-NeoX ``embed_out`` -> ``lm_head``) reverted, so names are those
    ``save_pretrained`` writes. Optional: tied weights and those the class declares missing-ok.
    """
    state = model.state_dict()
    optional = _optional_names(model, state)
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers < 5 keeps checkpoint names in memory
        revert_weight_conversion = None
    if revert_weight_conversion is not None:
        # Renames are one-to-one, so reverting each optional tensor alone gives its checkpoint name.
        optional = {new for name in optional for new in revert_weight_conversion(model, {name: state[name]})}
        state = revert_weight_conversion(model, state)
    shapes = {name: tuple(int(d) for d in tensor.shape) for name, tensor in state.items()}
    return shapes, {n for n in optional if n in shapes}


def _optional_names(model, state: Mapping[str, Any]) -> set[str]:
    optional: set[str] = set()
    tied = getattr(model, "all_tied_weights_keys", None)  # transformers >= 5: the effective ties
    if isinstance(tied, Mapping):
        optional.update(tied)
    else:  # transformers 4: once tied, one Parameter appears under several names
        seen: set[int] = set()
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) in seen:
                optional.add(name)
            seen.add(id(param))
        if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "get_output_embeddings"):
            output = model.get_output_embeddings()
            optional.update(f"{name}.weight" for name, module in model.named_modules()
                            if output is not None and module is output)
    for pattern in _patterns(getattr(model, "_keys_to_ignore_on_load_missing", None)):
        optional.update(n for n in state if re.search(pattern, n))
    return {n for n in optional if n in state}


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
