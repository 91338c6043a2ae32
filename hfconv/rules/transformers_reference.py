"""``--reference transformers``: expected tensor names and shapes from transformers itself.

The model class is built from the config on the ``meta`` device (no memory for weights, no
download, nothing read but config.json) and its state dict gives the names and shapes. This
covers every architecture the installed transformers knows. transformers and torch are
imported lazily, only here; hfconv works without them (the optional extra
``hfconv[transformers]``).

A folder with a ``quantization_config`` is also built through transformers' quantizer for its
scheme, as ``from_pretrained`` does (``get_hf_quantizer``, then ``preprocess_model`` on the meta
model): the tensors of the modules it replaces (FP8Linear and its experts, bitsandbytes' and
compressed-tensors' layers where their libraries are installed) are listed with their shapes and
dtypes (:class:`QuantizedReference`, checked by :func:`quantizer_issues`). Where the quantizer
cannot run here, the reason is kept and hfconv's own layout of the scheme checks the tensors.

The folder's own Python code (``auto_map``) is only imported with ``trust_remote_code``.
Every failure becomes :class:`ReferenceUnavailable` with a one-line reason, never a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeGuard

from .compare import legacy_name
from .expected import LAYER_FIELDS, Dim, ExpectedModel, ExpectedTensor, expected_tensors, infer_counts
from .expression import ConfigValueError
from .quantized import QuantIssue, QuantView, Stored

MAX_REFERENCE_COUNT = 1024
"""Most layers or blocks a reference model is built with, per config field, nested configs included
(real models have under 200 layers)."""
MAX_REFERENCE_POSITIONS = 65536
"""Most image patches (times video frames) a vision reference model is built with: some classes
compute position tables for them at construction (VideoMAE's sinusoid table), in real memory."""
MAX_REFERENCE_EXPERTS = 65536
"""Most experts (Doge's default is 16,384 tiny ones, one embedding row each)."""
TRUST_TIMEOUT_S = 120.0
"""How long the subprocess importing the folder's own code (--trust-remote-code) may take,
imports included; ``HFCONV_REMOTE_CODE_TIMEOUT`` overrides it."""
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
_METHOD = re.compile(r"[A-Za-z0-9_.-]{1,40}")
_COUNT_KEY = re.compile(r"(?:^|_)(?:layers|depth|depths|experts|blocks)$")
_MAX_CONFIG_DEPTH = 4


@dataclass(frozen=True)
class QuantizedReference(ExpectedModel):
    """The reference of a folder with a ``quantization_config``: the unquantized model's tensors
    (``tensors``, compared with the folder's logical view as for any folder) and, where
    transformers' quantizer for the scheme ran, the tensors its modules load (``stored``: checkpoint
    name -> shape and safetensors dtype, for every module it replaced); else why not
    (``unavailable``), and hfconv's own layout of the scheme is all that checks them."""

    method: str = ""
    """``quant_method`` of the config."""
    quantizer: str = ""
    """The transformers quantizer class that prepared the model (empty when it could not)."""
    stored: Mapping[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    unavailable: str = ""


class ReferenceUnavailable(Exception):
    """The transformers reference could not be built; ``str(exc)`` says why."""


class ConfigRejected(ReferenceUnavailable):
    """transformers knows the model type but its config class refuses config.json, the way
    ``from_pretrained`` reads it: loading the folder fails. ``str(exc)`` says why."""


class ReferenceCapHit(ReferenceUnavailable):
    """Building the reference ran past its time limit or its memory limit (the subprocess was
    stopped); ``str(exc)`` names the cap. ``trusted`` is True when the folder's own code ran."""

    def __init__(self, message: str, trusted: bool = False, timed_out: bool = False) -> None:
        super().__init__(message)
        self.trusted = trusted
        self.timed_out = timed_out


def transformers_available() -> bool:
    """True when transformers (and torch) can be imported, without importing them."""
    return importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("torch") is not None


def runs_folder_code(config: Mapping[str, Any], trust_remote_code: bool) -> bool:
    """Whether building the reference imports the folder's own code (``auto_map``, trusted)."""
    return bool(trust_remote_code) and isinstance(config.get("auto_map"), dict)


def expected_from_transformers(folder: str | os.PathLike, config: Mapping[str, Any],
                               trust_remote_code: bool = False,
                               tensor_names: Iterable[str] | None = None,
                               isolated: bool | None = None) -> ExpectedModel:
    """Build ``config``'s model on the meta device and read its expected tensors.

    The model is built in a separate Python process (:func:`_build_isolated`): fresh working
    directory, offline, an address-space limit and a time limit, so that neither a config
    with absurd sizes nor the folder's own code (``--trust-remote-code``) can hang hfconv or
    take its memory, and so that ``validate`` itself never imports torch. Sizes no real model
    has are refused before anything is built.

    Args:
        folder: the model folder (read only with ``trust_remote_code``, for its code and config).
        config: the parsed config.json.
        trust_remote_code: allow the folder's ``auto_map`` code to be imported and run (always in
            the subprocess).
        tensor_names: the names the folder's weights store, when known: expected names then
            follow the folder's own naming wherever transformers renames it on load (LLaVA-style
            folders of transformers 4.x store ``language_model.model.*`` and
            ``vision_tower.vision_model.*`` for the v5 model's ``model.language_model.*`` and
            ``model.vision_tower.*``).
        isolated: build in the subprocess (True) or in this process (False). The default builds
            in this process only where torch and transformers are imported already (a caller
            that uses them pays no second import; ``validate`` on the command line never imports
            torch) and no folder code runs.

    Returns:
        ExpectedModel with ``source="transformers X.Y.Z"``; tied weights (and weights the class
        declares as missing-ok) are optional; names are checkpoint names (transformers v5's
        load-time conversions, such as fused MoE experts and legacy prefixes, are reverted the
        way ``save_pretrained`` reverts them after ``from_pretrained`` read ``tensor_names``).

    Raises:
        ConfigRejected: transformers' own config or model class refuses config.json.
        ReferenceCapHit: the build ran past its time or memory limit.
        ReferenceUnavailable: transformers is missing, does not know the model, the config asks
            for sizes over hfconv's caps, or the build failed.
    """
    too_big = _absurd_size(config)
    if too_big is not None:  # building a model with a billion layers on meta still takes forever
        raise ReferenceUnavailable(too_big)
    if not transformers_available():
        raise ReferenceUnavailable("transformers is not installed (pip install torch transformers)")
    unknown = None if runs_folder_code(config, trust_remote_code) else _unknown_model_type(config)
    if unknown is not None:  # said without starting a subprocess that imports transformers (~4 s)
        raise ReferenceUnavailable(unknown)
    names = None if tensor_names is None else [n for n in tensor_names if isinstance(n, str)]
    if runs_folder_code(config, trust_remote_code):
        isolated = True  # the folder's code never runs in this process
    elif isolated is None:  # the caller has imported torch and transformers already
        isolated = not ("torch" in sys.modules and "transformers" in sys.modules)
    if isolated:
        raw = _build_isolated(folder, config, trust_remote_code, names)
        try:  # what a child that ran the folder's code wrote is read with care
            return _expected(raw, config, names)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ReferenceUnavailable(f"the reference subprocess gave a malformed result ({_one_line(exc)})") from None
    else:
        # Offline before the first import: nothing may be downloaded on behalf of a model folder.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        raw = _build_raw(folder, config, trust_remote_code, names)
    return _expected(raw, config, names)


_AUTO_MAPPING_FILES = ("models/auto/auto_mappings.py", "models/auto/configuration_auto.py")
"""Where transformers lists the model types it knows (CONFIG_MAPPING_NAMES), by version."""


def _unknown_model_type(config: Mapping[str, Any]) -> str | None:
    """The reason the child would give for a model_type transformers does not know, found in the
    text of transformers' auto mappings (not imported); None when it may know it or the files
    are not where this reads them."""
    model_type = config.get("model_type")
    spec = importlib.util.find_spec("transformers")
    if not isinstance(model_type, str) or spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    texts = []
    for name in _AUTO_MAPPING_FILES:
        try:
            texts.append((root / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    if not texts or any(json.dumps(model_type) in text for text in texts):
        return None
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None
    return _unknown_reason(version, model_type, isinstance(config.get("auto_map"), dict))


def _unknown_reason(version: str, model_type: object, has_code: bool) -> str:
    """Why transformers ``version`` builds no reference for ``model_type``."""
    reason = f"transformers {version} does not know model_type {model_type!r}"
    if has_code:
        reason += " and the folder's own code (auto_map) is only used with trust_remote_code=True"
    return reason


def _absurd_size(config: Mapping[str, Any], path: str = "", depth: int = 0) -> str | None:
    """Why ``config`` (or a config nested in it) asks for a model hfconv does not build, or None:
    a layer or block count over MAX_REFERENCE_COUNT (``depths`` lists summed), an expert count over
    MAX_REFERENCE_EXPERTS, or more image positions than MAX_REFERENCE_POSITIONS."""
    for key, value in config.items():
        if not isinstance(key, str):
            continue
        where = path + key
        if isinstance(value, Mapping):
            if depth < _MAX_CONFIG_DEPTH:
                found = _absurd_size(value, where + ".", depth + 1)
                if found is not None:
                    return found
            continue
        counted = key in LAYER_FIELDS or key in ("num_local_experts", "num_experts") or _COUNT_KEY.search(key)
        if not counted:
            continue
        cap = MAX_REFERENCE_EXPERTS if key.endswith("experts") else MAX_REFERENCE_COUNT
        if _is_int(value) and value > cap:
            return f"config.json {where} is {value}; hfconv builds reference models with at most {cap}"
        if isinstance(value, list) and (key.endswith("depths") or key.startswith("num_")) and value and \
                all(_is_int(v) for v in value) and sum(max(v, 0) for v in value) > MAX_REFERENCE_COUNT:
            return (f"config.json {where} sums to {sum(max(v, 0) for v in value)} layers; hfconv builds "
                    f"reference models with at most {MAX_REFERENCE_COUNT}")
    positions = _image_positions(config)
    if positions is not None and positions > MAX_REFERENCE_POSITIONS:
        return (f"config.json {path}image_size is {config.get('image_size')} with patch_size "
                f"{config.get('patch_size')}: {positions} image positions; hfconv builds reference models with at "
                f"most {MAX_REFERENCE_POSITIONS}")
    return None


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_positions(config: Mapping[str, Any]) -> int | None:
    """(image_size / patch_size)^2, times num_frames / tubelet_size for video, or None."""
    def pair(value: Any) -> tuple[int, int] | None:
        if _is_int(value):
            return value, value
        if isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value):
            return value[0], value[1]
        return None

    size, patch = pair(config.get("image_size")), pair(config.get("patch_size"))
    if size is None or patch is None or min(patch) <= 0:
        return None
    positions = max(size[0] // patch[0], 0) * max(size[1] // patch[1], 0)
    frames, tubelet = config.get("num_frames"), config.get("tubelet_size")
    if _is_int(frames) and frames > 0:
        positions *= max(frames // tubelet, 1) if _is_int(tubelet) and tubelet > 0 else frames
    return positions


# --- the build, in this process or in the subprocess ---------------------------------------------
# transformers is imported lazily and may be any version from 4.40 on (or the folder's own code):
# its config and model objects are probed with getattr, not typed against one version's classes.
_HFConfig = Any
"""A transformers ``PretrainedConfig`` (or the folder's own config class)."""
_Model = Any
"""A transformers ``PreTrainedModel`` built on the meta device."""


def _build_raw(folder: str | os.PathLike[str], config: Mapping[str, Any], trust_remote_code: bool,
               tensor_names: list[str] | None) -> dict[str, Any]:
    """Build the model and read what :func:`_expected` needs, as JSON-able data: state shapes
    by checkpoint name, optional names, extras the class ignores, its base-model prefix and class.

    Raises:
        ConfigRejected, ReferenceUnavailable; MemoryError when the memory cap is hit.
    """
    try:
        import torch
        import transformers
    except MemoryError:
        raise
    except Exception as exc:  # a broken install is a reason, not a crash
        raise ReferenceUnavailable(f"transformers could not be imported: {_one_line(exc)}") from None
    version = transformers.__version__
    has_code = isinstance(config.get("auto_map"), dict)
    with _quiet(transformers):
        try:
            hf_config = _build_config(transformers, folder, config, trust_remote_code, version)
        except (ReferenceUnavailable, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the folder's own config class may raise anything
            raise ReferenceUnavailable(f"transformers {version} could not build the config: "
                                       f"{_one_line(exc)}") from None
        quant: dict[str, Any] | None = None
        quantizer = None
        if isinstance(config.get("quantization_config"), Mapping):
            # As from_pretrained does, before the model is built: the quantizer of the config's
            # scheme, or why it cannot run here (its library missing, a GPU needed, ...).
            quantizer, quant = _quantizer(hf_config, config["quantization_config"], version)
        try:
            model = _build_model(transformers, torch, hf_config, config, trust_remote_code, version)
        except (ReferenceUnavailable, MemoryError):
            raise
        except (ValueError, AssertionError, KeyError, ZeroDivisionError) as exc:
            # A built-in model class that refuses its own config (DiffLlama with an odd
            # num_key_value_heads, SqueezeBERT with embedding_size != hidden_size, an unknown
            # rope_type or hidden_act) fails the same way in from_pretrained. A folder with its own
            # code (auto_map) loads through that code, so there the built-in class's refusal is
            # only a reason.
            if has_code:
                raise ReferenceUnavailable(f"transformers {version} could not build the model: "
                                           f"{_two_lines(exc)}") from None
            raise ConfigRejected(f"the model class of transformers {version} ({_class_name(config)}), so "
                                 f"from_pretrained fails: {_error_text(exc)}") from None
        except Exception as exc:  # transformers raises anything from ImportError to AttributeError
            raise ReferenceUnavailable(f"transformers {version} could not build the model: "
                                       f"{_one_line(exc)}") from None
        try:
            state, optional = _state_shapes(model, tensor_names)
            extras = list(_patterns(getattr(model, "_keys_to_ignore_on_load_unexpected", None)))
            prefix = getattr(model, "base_model_prefix", "") or ""
            prefixed = bool(prefix) and any(n.startswith(prefix + ".") for n in model.state_dict())
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - internal to transformers
            raise ReferenceUnavailable(f"transformers {version} could not list the model's tensors: "
                                       f"{_one_line(exc)}") from None
        if quantizer is not None and quant is not None:
            # The unquantized names and shapes above are what hfconv compares the folder's logical
            # view with; the quantizer's modules give the stored tensors of each converted one.
            quant.update(_quantized_state(torch, model, quantizer, quant, config, tensor_names))
    raw = {"state": {name: list(shape) for name, shape in state.items()}, "optional": sorted(optional),
           "extras": extras, "prefix": prefix if isinstance(prefix, str) else "", "prefixed": prefixed,
           "architecture": type(model).__name__, "version": str(version)}
    if quant is not None:
        raw["quant"] = quant
    return raw


def _expected(raw: Mapping[str, Any], config: Mapping[str, Any], tensor_names: list[str] | None) -> ExpectedModel:
    """The ExpectedModel from :func:`_build_raw`'s data (in this process, wherever that ran)."""
    state = {name: tuple(int(d) for d in shape) for name, shape in raw["state"].items()}
    optional = set(raw["optional"])
    extras = tuple(raw["extras"])
    prefix = raw["prefix"]
    architecture = raw["architecture"]
    if prefix and tensor_names is not None and not raw["prefixed"]:
        # A bare model (the Auto fallback where this transformers lacks the folder's head class:
        # Wav2Vec2ForMaskedLM, LEDForSequenceClassification in 5.x) reading a head's checkpoint:
        # from_pretrained drops the stored names' base-model prefix, so they load. Expected
        # names take the prefix the folder uses (some may have it already, from the simulated load).
        stored = tensor_names
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
    if tensor_names is not None:
        extras += trailing_extras(extras, state, config, tensor_names)
    fields: dict[str, Any] = dict(
        tensors=tensors, family=config.get("model_type") if isinstance(config.get("model_type"), str) else None,
        architecture=architecture, source=f"transformers {raw['version']}", prefix=prefix,
        counts=infer_counts(state, config), complete=True, allowed_extras=extras,
    )
    quant = raw.get("quant")
    if not isinstance(quant, Mapping):
        return ExpectedModel(**fields)
    listed = quant.get("tensors")
    if isinstance(listed, Mapping) and listed:
        return QuantizedReference(**fields, method=str(quant.get("method", "?")), quantizer=str(quant["quantizer"]),
                                  stored={name: (tuple(int(d) for d in shape), str(dtype))
                                          for name, (shape, dtype) in listed.items()})
    return QuantizedReference(**fields, method=str(quant.get("method", "?")),
                              unavailable=str(quant.get("unavailable") or "its quantizer listed no tensor"))


_LAYER_PATTERN = re.compile(r"\^?((?:[A-Za-z_][A-Za-z0-9_]*\\\.)+)(\d+)(?:\.\*|\\\..*)?\$?")
"""A class's ignore-on-load pattern for one numbered layer (DeepSeek-V3's ``model\\.layers\\.61.*``)."""


def trailing_extras(extras: Iterable[str], state: Mapping[str, Any], config: Mapping[str, Any],
                     stored: Iterable[str]) -> tuple[str, ...]:
    """Patterns for the stored layers a class's literal ignore pattern stands for in this config.

    DeepSeek-V3 declares ``model\\.layers\\.61.*`` ignored on load: its multi-token-prediction
    layer, at index num_hidden_layers (61 in the published config). A folder with another layer
    count stores that layer at its own num_hidden_layers (a cut-down DeepSeek-V3: ``model.layers.3``
    for 3 layers), which from_pretrained does not load either. Such a layer is tolerated the
    same way, at the num_nextn_predict_layers (default 1) indices past the modelled ones, where it
    holds a tensor no modelled layer has (``enorm``, ``eh_proj``): a plain decoder layer there is a
    layer more than the config says (HFC604)."""
    added: list[str] = []
    stored = list(stored)
    for pattern in extras:
        found = _LAYER_PATTERN.fullmatch(pattern)
        if found is None:
            continue
        stem = found.group(1).replace("\\.", ".")
        if not pattern.startswith("^"):  # searched anywhere, as transformers does: GLM's layers\.45\.
            stem = next((name[: at + len(stem)] for name in state if (at := name.find(stem)) == 0
                         or at > 0 and name[at - 1] == "."), stem)
        modelled: set[int] = set()
        suffixes: set[str] = set()
        for name in state:
            index, _, rest = name[len(stem):].partition(".") if name.startswith(stem) else ("", "", "")
            if index.isdigit():
                modelled.add(int(index))
                suffixes.add(rest)
        count = len(modelled)
        if not modelled or modelled != set(range(count)) or int(found.group(2)) < count:
            continue
        nextn = config.get("num_nextn_predict_layers")
        trailing = range(count, count + (nextn if _is_int(nextn) and 0 < nextn <= MAX_REFERENCE_COUNT else 1))
        held: set[int] = set()
        for name in stored:
            index, _, rest = name[len(stem):].partition(".") if name.startswith(stem) else ("", "", "")
            if index.isdigit() and int(index) in trailing and int(index) != int(found.group(2)) \
                    and rest not in suffixes:
                held.add(int(index))
        added += [f"^{re.escape(stem)}{index}\\." for index in sorted(held)]
    return tuple(p for p in dict.fromkeys(added) if p not in extras)


# --- the quantizer's tensors against the stored ones ---------------------------------------------
_QUANTIZED_DTYPES = frozenset({"F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I8", "I32", "F4"})
"""Dtypes only a quantized weight is stored in (a float layer loading one casts it without its scales)."""


def _kind(dtype: str) -> str:
    """What a loader does with a dtype: floats are cast into a float parameter, the rest are not."""
    if dtype in ("F16", "BF16", "F32", "F64"):
        return "float"
    if dtype in ("U8", "F8_E8M0"):  # MXFP8's ue8m0 scales are saved as bytes and viewed back at load
        return "byte"
    if dtype in ("I16", "I32", "I64", "U16", "U32", "U64"):  # a weight_shape or g_idx is copied as a number
        return "int"
    return dtype.removesuffix("FNUZ")


_NEEDED = ("weight_scale_inv", "weight_scale", "SCB", "scales", "qzeros", "weight_shape")
"""A quantized module's tensors without which its weight cannot be dequantized (others, such as a
static activation scale or act-order's g_idx, may be absent from a loadable checkpoint)."""


def quantizer_issues(expected: ExpectedModel, tensors: Mapping[str, Stored], view: QuantView,
                     asked: bool = True) -> list[QuantIssue]:
    """What transformers' quantizer finds in a quantized folder beyond ``view`` (hfconv's own
    layout of the scheme, whose issues are not repeated):

    - HFC613 where the quantizer could not run here (hfconv's layout checked the tensors alone),
      when the transformers reference was ``asked`` for (not where it stands in for a missing
      rule table, where hfconv's layout checking them is what always happened);
    - HFC614 for a weight stored in a quantized dtype in a module the quantizer keeps unquantized
      (its default skip list: ``lm_head``, modules kept in float32);
    - HFC618, HFC619, HFC620 for a tensor of a module it replaced that is missing beside the
      module's quantized weight, or stored in another shape or kind of dtype than it loads.

    Shapes of the weights themselves are compared with the unquantized model as for any folder.
    Anything but a :class:`QuantizedReference` gives nothing."""
    if not isinstance(expected, QuantizedReference):
        return []
    label = view.scheme.label
    if not expected.stored:
        if not asked:
            return []
        return [QuantIssue("HFC613", "", f"the transformers reference: {expected.unavailable}; the quantized "
                           f"tensors were checked with hfconv's own {label} layout instead")]
    reported = {issue.tensor for issue in view.issues}
    unpacked = set(view.stored_as.values())  # compared as the weight they unpack to (weight_packed, qweight)
    reported_modules = {name.rpartition(".")[0] for name in reported}
    prefix = expected.prefix
    who = f"transformers' {expected.quantizer}"

    def stored_name(name: str) -> str | None:
        if name in tensors:
            return name
        if prefix:
            for other in (name.removeprefix(prefix), prefix + name):
                if other in tensors:
                    return other
        return None

    issues: list[QuantIssue] = []
    modules: dict[str, list[str]] = {}
    for name in expected.stored:
        modules.setdefault(name.rpartition(".")[0], []).append(name)
    for module, names in modules.items():
        # The module's weight: the one the unquantized model has too, else the largest (weight_packed).
        weight = next((n for n in names if n in expected.tensors), None) or \
            max(names, key=lambda n: _count(expected.stored[n][0]))
        weight_stored = stored_name(weight)
        if weight is None or weight_stored is None or weight_stored in reported or module in reported_modules:
            continue  # missing: the comparison says so; already worded by hfconv's layout
        want_dtype = expected.stored[weight][1]
        quantized = _kind(tensors[weight_stored].dtype) == _kind(want_dtype) != "float"
        for name in names:
            if name == weight and name in expected.tensors:
                continue  # its shape is compared with the unquantized model's
            shape, dtype = expected.stored[name]
            found = stored_name(name)
            if found is None:
                if quantized and name.rpartition(".")[2] in _NEEDED:
                    issues.append(QuantIssue("HFC618", weight_stored, f"{name} is missing beside {weight_stored} "
                                             f"({tensors[weight_stored].dtype}): {who} loads it into "
                                             f"{module} {_fmt_shape(shape)} {dtype} ({label}); loaders leave it "
                                             "uninitialised and the layer computes garbage"))
                continue
            meta = tensors[found]
            if tuple(meta.shape) != shape and found not in reported and found not in unpacked and \
                    not (_one(meta.shape) and _one(shape)):
                issues.append(QuantIssue("HFC619", found, f"{found} has shape {_fmt_shape(meta.shape)} but {who} "
                                         f"loads {_fmt_shape(shape)} into {module} ({label})"))
            elif _kind(meta.dtype) != _kind(dtype) and found not in reported:
                issues.append(QuantIssue("HFC620", found, f"{found} is {meta.dtype} but {who} loads {dtype} into "
                                         f"{module} ({label})"))
    converted = set(modules)
    for name, meta in tensors.items():
        if meta.dtype not in _QUANTIZED_DTYPES or not name.endswith(".weight") or name in reported:
            continue
        module = name[: -len(".weight")]
        if module in converted or module in reported_modules or prefix and (
                prefix + module in converted or module.removeprefix(prefix) in converted):
            continue
        plain = expected.tensors.get(name) or (expected.tensors.get(prefix + name) if prefix else None)
        if plain is None:
            continue  # not a tensor of the model: the comparison reports it
        issues.append(QuantIssue("HFC614", name, f"{name} is stored {meta.dtype} but {who} keeps {module} "
                                 f"unquantized ({label}: a module on its skip list): from_pretrained builds a plain "
                                 "layer and casts the quantized values into it without their scales"))
    return issues


# --- the quantizer (in the build process) --------------------------------------------------------
def _quantizer(hf_config: _HFConfig, quant_config: Mapping[str, Any], version: str) -> tuple[Any, dict[str, Any]]:
    """transformers' quantizer for the config's ``quantization_config``, built as ``from_pretrained``
    builds it (``get_hf_quantizer``: the scheme's quantizer class, then its ``validate_environment``),
    and what is known of it: ``{"method": ...}`` plus ``"unavailable"`` (why it cannot run here)
    when the quantizer is None.

    An FP8 quantizer on a machine without a GPU switches itself to dequantizing at load (so does
    ``dequantize: true``); the stored layout it reads is the same, so the reference is built as on
    a GPU without dequantizing (nothing runs on meta)."""
    method = quant_config.get("quant_method")
    label = method if isinstance(method, str) and _METHOD.fullmatch(method) else "?"
    info: dict[str, Any] = {"method": label}
    try:
        from transformers.quantizers.auto import get_hf_quantizer
    except Exception:  # noqa: BLE001 - transformers 4.x: another interface
        info["unavailable"] = f"transformers {version} has no get_hf_quantizer (transformers 5's quantizer interface)"
        return None, info
    try:
        # On a copy: the unquantized model is built from the config exactly as without a quantizer.
        with _no_prints():  # bitsandbytes prints while it is imported
            quantizer, _, _ = get_hf_quantizer(copy.deepcopy(hf_config), None, None, True, {})
    except MemoryError:
        raise
    except ImportError as exc:  # the scheme's library (bitsandbytes, gptqmodel, compressed-tensors) is missing
        info["unavailable"] = f"transformers' {label} quantizer cannot run here: {_one_line(exc).rstrip('.')}"
        return None, info
    except Exception as exc:  # noqa: BLE001 - validate_environment: no GPU, an unsupported setting, ...
        info["unavailable"] = f"transformers' {label} quantizer could not be set up here: {_one_line(exc).rstrip('.')}"
        return None, info
    if quantizer is None:
        info["unavailable"] = f"transformers {version} has no quantizer for quant_method {label!r}"
        return None, info
    config_object = getattr(quantizer, "quantization_config", None)
    if config_object is not None and getattr(config_object, "dequantize", False):
        # Set by validate_environment for want of a GPU (or asked for): the stored layout it reads is
        # the quantized one all the same.
        config_object.dequantize = False
    info["quantizer"] = type(quantizer).__name__
    return quantizer, info


def _quantized_state(torch: ModuleType, model: _Model, quantizer: Any, quant: Mapping[str, Any],
                     config: Mapping[str, Any], tensor_names: list[str] | None) -> dict[str, Any]:
    """Let ``quantizer`` replace the model's modules on the meta device (``preprocess_model``, as
    ``from_pretrained`` does before loading), then list the tensors of every module it replaced,
    by checkpoint name: ``{"tensors": {name: [shape, safetensors dtype]}, "modules": n}``, or
    ``{"unavailable": why}`` when the quantizer fails on this model."""
    from ..dtypes import TORCH_DTYPE

    name = quant.get("quantizer") or type(quantizer).__name__
    before = {n: _module_kind(m) for n, m in model.named_modules()}
    dtype = config.get("dtype", config.get("torch_dtype"))
    dtype = getattr(torch, dtype, None) if isinstance(dtype, str) and _IDENTIFIER.match(dtype) else None
    try:
        with contextlib.suppress(Exception):  # where from_pretrained's model has it
            model.config.quantization_config = quantizer.quantization_config
        with torch.device("meta"), _no_prints():  # compressed-tensors draws progress bars
            quantizer.preprocess_model(model=model, dtype=dtype if isinstance(dtype, torch.dtype) else None,
                                       device_map=None, checkpoint_files=None)
        # Replaced (FP8Linear, Linear4bit), or given the scheme's tensors in place (compressed-tensors
        # registers weight_packed, weight_scale, ... on the nn.Linear itself).
        converted = {n for n, m in model.named_modules() if n and before.get(n) != _module_kind(m)}
        if not converted:
            return {"unavailable": f"transformers' {name} replaced no module of {type(model).__name__}"}
        state = model.state_dict()
        # Which conversions fire depends on the names' pattern, not on their layer or expert
        # numbers: one stored name per numbering pattern (DeepSeek-V3: ~100 of 91,991) is enough.
        stored = set(_representatives(tensor_names or ()))
        loads = _simulate_load(model, state, stored, quantizer) if stored else None
        from transformers.core_model_loading import revert_weight_conversion

        reverted = _revert(revert_weight_conversion, model, state) if loads is not None else None
        if reverted is None:
            model._weight_conversions = _quantizer_conversions(model, quantizer)
            reverted = revert_weight_conversion(model, dict(state))
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - internal to transformers and the scheme's library
        return {"unavailable": f"transformers' {name} could not prepare {type(model).__name__}: {_one_line(exc)}"}
    checkpoint = _reverted_names(state, reverted)  # model name -> checkpoint name, for plain renames
    renamed = set(checkpoint.values())
    quantized = {checkpoint[n] for n in state if n in checkpoint and _under(n, converted)}
    tensors = {}
    for key, tensor in reverted.items():
        # A converter's output (one expert's scale split from the fused one) is a new tensor: its
        # checkpoint name is under the replaced module's (model.layers.1.mlp.experts.0....).
        if key in quantized or (key not in renamed and _under(key, converted)):
            dtype_name = TORCH_DTYPE.get(str(tensor.dtype).removeprefix("torch."), str(tensor.dtype))
            tensors[key] = [[int(d) for d in tensor.shape], dtype_name]
    return {"tensors": tensors, "modules": len(converted)}


@contextlib.contextmanager
def _no_prints() -> Iterator[None]:
    """Whatever a scheme's library prints to stdout or stderr is dropped (hfconv's output is its own)."""
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        yield


_DIGITS = re.compile(r"\.\d+\.")


def _representatives(names: Iterable[str]) -> list[str]:
    """The first of ``names`` for each pattern of numbered modules (``model.layers.#.mlp...``)."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(_DIGITS.sub(".#.", name), name)
    return list(seen.values())


def _module_kind(module: Any) -> tuple[type, tuple[str, ...]]:
    """A module's class and the names of its own parameters and buffers."""
    own = [*getattr(module, "_parameters", {}).items(), *getattr(module, "_buffers", {}).items()]
    return type(module), tuple(sorted(name for name, value in own if value is not None))


def _quantizer_conversions(model: _Model, quantizer: Any) -> list[Any]:
    """The conversions ``save_pretrained`` reverts for a model prepared by ``quantizer`` when no
    stored names are known: the model's own and the quantizer's copies of them, without legacy
    renames, the quantizer's alternative scale names or its load operations."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    plain = {_transform_key(t) for t in get_model_conversion_mapping(model, add_legacy=False) or ()}
    legacy = {_transform_key(t) for t in get_model_conversion_mapping(model) or ()} - plain
    return [t for t in get_model_conversion_mapping(model, hf_quantizer=quantizer) or ()
            if not _load_op(t) and _transform_key(t) not in legacy
            and (_transform_key(t) in plain or type(t).__name__ != "WeightRenaming")]


def _under(name: str, modules: set[str] | frozenset[str]) -> bool:
    """``name`` is a tensor of one of ``modules`` (or of a module nested in one)."""
    cut = name.rfind(".")
    while cut > 0:
        name = name[:cut]
        if name in modules:
            return True
        cut = name.rfind(".")
    return False


# --- the subprocess ------------------------------------------------------------------------------
_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from hfconv.rules.transformers_reference import _child_main
_child_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
"""
_CACHE: dict[tuple, Any] = {}
_CACHE_SIZE = 8


def _build_isolated(folder: str | os.PathLike[str], config: Mapping[str, Any], trust_remote_code: bool,
                    tensor_names: list[str] | None) -> dict[str, Any]:
    """:func:`_build_raw` in a separate Python: fresh temporary working directory (removed after),
    offline Hub settings with its caches inside that directory, an address-space limit
    (``HFCONV_REFERENCE_MEMORY_MB``) and a time limit (``HFCONV_REFERENCE_TIMEOUT``, or
    ``HFCONV_REMOTE_CODE_TIMEOUT`` where the folder's own code runs). Its process group is
    killed when it ends. One build per folder, config and names per process (validate's checks
    share it)."""
    import json
    import tempfile

    from ..environment import reference_memory, reference_timeout, remote_code_timeout, run_python

    trusted = runs_folder_code(config, trust_remote_code)
    folder = os.path.abspath(os.fspath(folder))
    key = (folder, trusted, json.dumps(config, sort_keys=True, default=str),
           None if tensor_names is None else tuple(sorted(tensor_names)), _code_stamp(folder) if trusted else None)
    if key in _CACHE:
        outcome = _CACHE[key]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    timeout = remote_code_timeout(TRUST_TIMEOUT_S) if trusted else reference_timeout()
    memory = reference_memory()
    what = "importing the folder's own code (trust_remote_code=True) and building" if trusted else "building"
    with tempfile.TemporaryDirectory(prefix="hfconv-reference-", ignore_cleanup_errors=True) as work:
        request, result = os.path.join(work, "request.json"), os.path.join(work, "result.json")
        with open(request, "w", encoding="utf-8") as handle:
            json.dump({"folder": folder, "config": config, "trust": bool(trust_remote_code),
                       "names": tensor_names}, handle)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            status = run_python(_CHILD, [package_parent, request, result, str(memory)], work, timeout)
        except OSError as exc:
            raise ReferenceUnavailable(f"could not start a Python subprocess to build the reference model: "
                                       f"{exc}") from None
        if status is None:
            outcome = ReferenceCapHit(f"{what} the reference model did not finish within {timeout:g} s "
                                      f"(the time cap; the subprocess was stopped)", trusted, timed_out=True)
        else:
            outcome = _read_result(result, os.path.join(work, "stderr"), status, what, memory, trusted)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[key] = outcome
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _read_result(result: str, stderr: str, status: int, what: str, memory: int, trusted: bool) -> Any:
    """The child's outcome: its raw data, or the exception to raise."""
    import json

    from ..environment import file_tail

    cap = (f"{what} the reference model needed more than {memory / 2**20:.0f} MiB of memory beyond its imports "
           "(the memory cap, HFCONV_REFERENCE_MEMORY_MB; the subprocess was stopped)")
    try:
        with open(result, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        tail = [line for line in file_tail(stderr).splitlines() if line.strip()]
        if tail and "MemoryError" in tail[-1]:
            return ReferenceCapHit(cap, trusted)
        reason = tail[-1].strip()[:300] if tail else f"exit status {status}"
        return ReferenceUnavailable(f"{what} the reference model failed in its subprocess ({reason})")
    if not isinstance(data, dict):
        return ReferenceUnavailable(f"{what} the reference model gave no result")
    kind, message = data.get("status"), str(data.get("message", ""))
    if kind == "ok" and isinstance(data.get("raw"), dict):
        return data["raw"]
    if kind == "rejected":
        return ConfigRejected(message)
    if kind == "memory":
        return ReferenceCapHit(cap, trusted)
    return ReferenceUnavailable(message or f"{what} the reference model gave no result")


def _code_stamp(folder: str) -> tuple:
    """(name, size, mtime) of the folder's .py files: a trusted build is reused only for the same code."""
    try:
        with os.scandir(folder) as entries:
            return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries
                                if e.name.endswith(".py") and e.is_file()))
    except OSError:
        return ()


def _child_main(request: str, result: str, memory: int) -> None:
    """The subprocess: build the reference for the request file, write the outcome as JSON. The
    address space is capped at what importing torch and transformers mapped plus ``memory``."""
    import json

    from ..environment import cap_address_space

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        with open(request, encoding="utf-8") as handle:
            job = json.load(handle)
        with contextlib.suppress(Exception):  # a failed import is reported by the build itself
            import torch  # noqa: F401
            import transformers.modeling_utils  # noqa: F401  (transformers' own code, before the cap)
        cap_address_space(memory)
        out: dict[str, Any] = {"status": "ok", "raw": _build_raw(job["folder"], job["config"], job["trust"],
                                                                 job["names"])}
    except ConfigRejected as exc:
        out = {"status": "rejected", "message": str(exc)}
    except ReferenceUnavailable as exc:
        out = {"status": "unavailable", "message": str(exc)}
    except MemoryError:
        out = {"status": "memory"}
    except BaseException as exc:  # noqa: BLE001 - the folder's own code may raise anything, SystemExit included
        out = {"status": "unavailable", "message": f"building the reference model failed: {_one_line(exc)}"}
    try:
        with open(result + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(out, handle)
        os.replace(result + ".tmp", result)
    except MemoryError:
        pass
    sys.stdout.flush()
    os._exit(0)  # skip torch's and the folder code's exit handlers


def _build_config(transformers: ModuleType, folder: str | os.PathLike[str], config: Mapping[str, Any],
                  trust_remote_code: bool, version: str) -> _HFConfig:
    model_type = config.get("model_type")
    has_code = isinstance(config.get("auto_map"), dict)
    if has_code and trust_remote_code:
        return transformers.AutoConfig.from_pretrained(os.fspath(folder), trust_remote_code=True,
                                                       local_files_only=True)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ReferenceUnavailable(_unknown_reason(version, model_type, has_code))
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
    if isinstance(first, (ImportError, MemoryError)):
        # A package this machine lacks (or the memory cap) is no defect of config.json.
        if isinstance(first, MemoryError):
            raise first
        raise ReferenceUnavailable(f"transformers {version} could not build the config: {_one_line(first)}") from None
    if has_code or not os.path.isfile(os.path.join(os.fspath(folder), "config.json")):
        # With its own code (auto_map) the folder is loaded through its own config class, which
        # may well accept what the built-in class of the same model_type refuses.
        reason = f"transformers {version} refused the config: {_two_lines(first)}"
        if has_code:
            reason += " (the folder's own code, auto_map, is only used with trust_remote_code=True)"
        raise ReferenceUnavailable(reason) from None
    raise ConfigRejected(f"{CONFIG_MAPPING[model_type].__name__} of transformers {version}, so from_pretrained "
                         f"fails: {_two_lines(first)}") from None


def _build_model(transformers: ModuleType, torch: ModuleType, hf_config: _HFConfig, config: Mapping[str, Any],
                 trust_remote_code: bool, version: str) -> _Model:
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


def _from_auto(transformers: ModuleType, hf_config: _HFConfig, trust_remote_code: bool) -> _Model:
    errors = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        try:
            return auto.from_config(hf_config, trust_remote_code=trust_remote_code)
        except ValueError as exc:  # "Unrecognized configuration class ... for this kind of AutoModel"
            errors.append(exc)
    raise ReferenceUnavailable(f"no transformers model class for this config: {_one_line(errors[-1])}")


def _state_shapes(model: _Model, tensor_names: Iterable[str] | None = None,
                  ) -> tuple[dict[str, tuple[int, ...]], set[str]]:
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
    revert_weight_conversion: Callable[..., Any] | None
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers < 5
        revert_weight_conversion = None
    if revert_weight_conversion is None:
        renamed, optional, loads = _class_key_mapping(model, state, optional, stored)
        shapes = {name: tuple(int(d) for d in tensor.shape) for name, tensor in renamed.items()}
        if loads:
            _use_stored_names(shapes, optional, _reverted_names(state, renamed), loads, stored)
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


def _transform_key(transform: Any) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """One transformers conversion, comparable across calls that each build new objects."""
    def patterns(value: Any) -> tuple[str, ...]:
        return (value,) if isinstance(value, str) else tuple(str(v) for v in value or ())

    return (type(transform).__name__, patterns(getattr(transform, "source_patterns", ())),
            patterns(getattr(transform, "target_patterns", ())))


def _load_op(transform: Any) -> bool:
    """A quantizer's deserializing or dequantizing converter (its operations hold the quantizer)."""
    return any(getattr(op, "hf_quantizer", None) is not None for op in getattr(transform, "operations", None) or ())


def _revert(revert_weight_conversion: Callable[..., Any], model: _Model, state: Mapping[str, Any]
            ) -> dict[str, Any] | None:
    """``revert_weight_conversion(model, state)``, or None when it fails."""
    if getattr(model, "_weight_conversions", None) == []:  # the simulated load renamed nothing
        return dict(state)
    try:
        return revert_weight_conversion(model, dict(state))
    except Exception:  # noqa: BLE001 - internal to transformers; its failure is no reason to give up
        return None


def _simulate_load(model: _Model, state: Mapping[str, Any], stored: Iterable[str], quantizer: Any = None
                   ) -> dict[str, str] | None:
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

    With a ``quantizer`` (the model prepared by it), its conversions are simulated too, as
    ``from_pretrained`` applies them (the per-expert FP8 scales merged like their weights); its
    alternative scale names (``.qscale_weight``) are reverted only where the folder uses them,
    and its deserializing converters (bitsandbytes' quant states into one weight) not at all.

    None when this transformers lacks that machinery or it fails (internals change between
    versions): then nothing is simulated and the default conversions are reverted.
    """
    try:
        from transformers import core_model_loading as cml
        from transformers.conversion_mapping import get_model_conversion_mapping

        renaming_cls, converter_cls = cml.WeightRenaming, cml.WeightConverter
        prefix_cls = getattr(cml, "PrefixChange", ())
        order = getattr(cml, "dot_natural_key", None)
        plain = list(get_model_conversion_mapping(model) or ())
        own_count = len(get_model_conversion_mapping(model, add_legacy=False) or ())
        legacy = {_transform_key(t) for t in plain[own_count:]} - {_transform_key(t) for t in plain[:own_count]}
        plain_keys = {_transform_key(t) for t in plain}
        mapping = plain if quantizer is None else \
            [t for t in get_model_conversion_mapping(model, hf_quantizer=quantizer) or () if not _load_op(t)]
        own = [t for t in mapping if _transform_key(t) not in legacy]
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
        saved_layout = any(t.was_used() for t in own)
        model._weight_conversions = [
            t for t in own
            if t.was_used() or (saved_layout and isinstance(t, renaming_cls) and not isinstance(t, prefix_cls)
                                and _transform_key(t) in plain_keys)]
    except Exception:  # noqa: BLE001 - another transformers version: no simulated load
        with contextlib.suppress(Exception):
            del model._weight_conversions
        return None
    return loads


def _class_key_mapping(model: _Model, state: Mapping[str, Any], optional: set[str], stored: Iterable[str]
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


def _optional_names(model: _Model, state: Mapping[str, Any], stored: set[str] | None = None) -> set[str]:
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


def _patterns(value: Any) -> list[str]:
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
def _quiet(transformers: ModuleType) -> Iterator[None]:
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


def _error_text(exc: BaseException) -> str:
    """The exception for a message: its first two lines, with the type where the text alone says
    little (``KeyError: 'nosuch'`` for an unknown rope_type or hidden_act)."""
    if isinstance(exc, (KeyError, IndexError, ZeroDivisionError, AssertionError)):
        return f"{type(exc).__name__}: {_two_lines(exc)}"
    return _two_lines(exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:300]


def _count(shape: Iterable[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _one(shape: Iterable[int]) -> bool:
    """One value ([], [1], [1, 1]: a per-tensor scale, stored either way)."""
    return _count(shape) == 1


def _fmt_shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
