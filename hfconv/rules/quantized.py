"""Quantized checkpoints: the stored tensors a quantization scheme implies, from config.json alone.

A quantized folder stores each converted linear layer as the scheme's tensors instead of one
``weight``: FP8 block quantization keeps the weight's shape in ``F8_E4M3`` beside a
``weight_scale_inv`` per block; GPTQ and AWQ pack 4-bit values into ``int32`` ``qweight`` with
``qzeros`` and ``scales`` per group; bitsandbytes packs two 4-bit values per byte beside a quant
state, or stores ``int8`` with one ``SCB`` scale per row; compressed-tensors writes
``weight_packed``/``weight`` with ``weight_scale`` (and ``weight_zero_point``, ``weight_shape``).

:func:`scheme_of` reads ``quantization_config``; :func:`quantized_view` maps the stored tensors
back to the names and shapes the unquantized model stores (the *logical* view, compared with the
config-implied shapes as usual: a transposed or resized weight is caught through its packing),
and checks every companion tensor (scales, zeros, quant state) against the shape of the weight it
belongs to, as the config implies it where known. Only names, dtypes and shapes are used.

Layouts, from each library's source:

- FP8 (transformers ``FP8Linear``, DeepSeek-V3): ``weight`` [out, in] F8_E4M3,
  ``weight_scale_inv`` [ceil(out/b0), ceil(in/b1)] F32 (or one value without blocks);
- GPTQ (auto-gptq / gptqmodel ``QuantLinear``): ``qweight`` [in*bits/32, out] I32, ``qzeros``
  [ceil(in/group), out*bits/32] I32, ``scales`` [ceil(in/group), out], ``g_idx`` [in] I32;
- GPTQ ``checkpoint_format: marlin`` (AutoGPTQ's marlin ``QuantLinear``, 4-bit, symmetric):
  ``B`` [in/16, out*16*bits/32] I32 in 16x16 tiles, ``s`` [in/group, out]; ``bitblas`` is not
  checked (its qweight shape comes from the kernel tuner, not the config);
- AWQ (AutoAWQ ``WQLinear_GEMM``; the exllama and IPEX versions load this layout too): ``qweight``
  [in, out*bits/32] I32, ``qzeros`` [ceil(in/group), out*bits/32] I32, ``scales``
  [ceil(in/group), out]; GEMV: ``qweight`` [out, in*bits/32]; GEMVFast: ``qweight`` I16
  [out/4, in*bits*4/16], float ``scales`` and ``qzeros`` [calculate_zeros_width(in, group) *
  32/bits, out]; Marlin: ``qweight`` [in/16, out*16*bits/32] I32, ``scales`` [in/group, out];
- bitsandbytes 4-bit (``Params4bit``): ``weight`` [ceil(out*in/2), 1] U8, ``weight.absmax``
  [ceil(out*in/blocksize)], ``weight.quant_map`` [16], ``weight.quant_state.bitsandbytes__nf4``
  (or ``__fp4``), and with double quantization ``weight.nested_absmax``/``nested_quant_map``;
- bitsandbytes 8-bit (``Int8Params``): ``weight`` [out, in] I8, ``SCB`` [out] F32;
- compressed-tensors: ``pack-quantized``: ``weight_packed`` [out, ceil(in*bits/32)] I32,
  ``weight_shape`` [2], ``weight_scale`` per strategy; ``float-quantized``/``int-quantized``/
  ``naive-quantized``: ``weight`` [out, in] (F8_E4M3 / I8) and ``weight_scale``. Scales per
  strategy: tensor [1], channel [out, 1], group [out, ceil(in/group)], block
  [ceil(out/b0), ceil(in/b1)]. With several config groups, each module's scheme is its group's,
  matched as compressed-tensors' ``match_targets`` does (:func:`ct_group_of`);
- MXFP4 (gpt-oss, transformers ``integrations/mxfp4.py``): an expert parameter [E, in, out] is
  stored as ``P_blocks`` U8 [E, out, in/32, 16] and ``P_scales`` U8 [E, out, in/32].
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import compress, filterfalse, repeat
from operator import attrgetter, eq, not_, or_
from typing import Any, NamedTuple, Protocol

from .expected import NO_TENSOR, ExpectedModel, StoredShapes


class Stored(Protocol):
    """A stored tensor's header: all this module reads."""

    @property
    def dtype(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...


class SchemeError(ValueError):
    """A quantization_config value the stored shapes depend on is unusable."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Scheme:
    """What hfconv checks of one quantization_config."""

    method: str
    """``fp8``, ``gptq``, ``awq``, ``bnb-4bit``, ``bnb-8bit`` or ``compressed-tensors``."""
    label: str
    """How messages name it, e.g. ``fp8 in 128x128 blocks``."""
    bits: int = 8
    group: int = 0
    """Inputs per group (GPTQ, AWQ, compressed-tensors group strategy); 0: one group per row."""
    block: tuple[int, int] | None = None
    """FP8 / compressed-tensors block strategy: (rows, columns) per scale."""
    strategy: str = ""
    """compressed-tensors weight strategy: tensor, channel, group or block."""
    layout: str = ""
    """AWQ: gemm or gemv; compressed-tensors: its format (pack-quantized, float-quantized, ...)."""
    symmetric: bool = True
    skip: tuple[str, ...] = ()
    """Modules kept unquantized (modules_to_not_convert, llm_int8_skip_modules, ignore)."""
    scale_fmt: str = "float"
    groups: tuple[tuple[tuple[str, ...], Scheme], ...] = ()
    """compressed-tensors with several weight schemes: (targets, scheme) per config group (see :func:`ct_group_of`)."""
    lone: frozenset[str] = frozenset()
    """compressed-tensors groups: dtypes of a quantized weight that needs a weight_scale."""


class Unchecked(NamedTuple):
    """A quantization_config whose layout hfconv does not check."""

    method: str
    reason: str


class QuantIssue(NamedTuple):
    """One problem of a quantized tensor: the code, the stored tensor it names, the message."""

    code: str
    tensor: str
    message: str


class _BulkView(NamedTuple):
    """How the bulk FP8 path (:func:`_fp8_all_fine`) leaves a view: the logical names and shapes as
    lists, with what each name is expected as; the stored names and headers, and which are quantized."""

    table: StoredShapes
    names: list[str]
    metas: list[Stored]
    quantized: list[bool]


class QuantView:
    """The stored tensors seen as the unquantized model would store them."""

    def __init__(self, scheme: Scheme, states: Mapping[str, Mapping[str, Any]] | None = None):
        self.scheme = scheme
        self.stored_as: dict[str, str] = {}
        """Logical name -> the stored tensor it was derived from, where the names differ."""
        self.issues: list[QuantIssue] = []
        self.modules = 0
        """Quantized modules found."""
        self.states: dict[str, Mapping[str, Any]] = dict(states or {})
        """bitsandbytes 4-bit quant states by module, where read (see :func:`quantized_view`)."""
        self._logical: dict[str, tuple[int, ...]] = {}
        self._quantized: set[str] = set()
        self._bulk: _BulkView | None = None

    def take_bulk(self, bulk: _BulkView) -> None:
        """The view as the bulk path made it: :attr:`logical` and :attr:`quantized` (a dict and a set
        of 100,000s of names) are made from its lists only if asked for."""
        self._bulk = bulk

    @property
    def logical(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape as the unquantized model stores it (for :func:`compare`)."""
        if self._bulk is not None and not self._logical:
            self._logical = dict(zip(self._bulk.table.names, self._bulk.table.shapes))
        return self._logical

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        """:attr:`logical` as :func:`compare` reads it best (the bulk path's lists, with what each name is
        expected as looked up already)."""
        return self._bulk.table if self._bulk is not None else self.logical

    @property
    def quantized(self) -> set[str]:
        """Stored names belonging to quantized modules (weights and companions)."""
        if self._bulk is not None and not self._quantized:
            self._quantized = set(compress(self._bulk.names, self._bulk.quantized))
        return self._quantized

    def unquantized(self, tensors: Mapping[str, Stored]) -> list[Stored]:
        """The headers of ``tensors`` (those the view was made of) that belong to no quantized module."""
        if self._bulk is not None:
            return list(compress(self._bulk.metas, map(not_, self._bulk.quantized)))
        return list(compress(tensors.values(), map(not_, map(self.quantized.__contains__, tensors))))


# --- reading quantization_config --------------------------------------------------------------

_AWQ_LAYOUTS = {"gemm": "gemm", "exllama": "gemm", "ipex": "gemm", "gemv": "gemv", "gemv_fast": "gemv_fast",
                "marlin": "marlin"}
"""AWQ version -> the stored layout (AutoAWQ's WQLinear_*): exllama and IPEX load GEMM checkpoints."""
_FP8 = frozenset({"F8_E4M3", "F8_E4M3FNUZ"})
_FLOATS = frozenset({"F32", "F16", "BF16"})
_INTS = frozenset({"I32"})
_UE8M0 = frozenset({"F8_E8M0", "U8"})
_CT_FORMATS = frozenset({"pack-quantized", "float-quantized", "int-quantized", "naive-quantized"})


def scheme_of(quant: Any) -> Scheme | Unchecked:
    """The scheme of a ``quantization_config`` (a parsed JSON value).

    Raises:
        SchemeError: a value the stored shapes depend on is unusable (bits, group size, blocks).
    """
    if not isinstance(quant, Mapping):
        return Unchecked("?", "quantization_config is not an object")
    method = quant.get("quant_method")
    method = method.lower() if isinstance(method, str) else ""
    if method == "fp8":
        block = _pair(quant, "weight_block_size")
        fmt = quant.get("scale_fmt", "float")
        if quant.get("expert_dtype", "fp8") != "fp8":
            return Unchecked(method, f"expert_dtype {quant.get('expert_dtype')!r}")
        label = f"fp8 in {block[0]}x{block[1]} blocks" if block else "fp8 per tensor"
        return Scheme("fp8", label, 8, block=block, skip=_names(quant, "modules_to_not_convert", "ignored_layers"),
                      scale_fmt=fmt if isinstance(fmt, str) else "float")
    if method == "gptq":
        fmt = quant.get("checkpoint_format") or quant.get("format") or "gptq"
        fmt = fmt.lower() if isinstance(fmt, str) else fmt
        if fmt == "bitblas":
            return Unchecked(method, "checkpoint_format 'bitblas': BitBLAS stores qweight in the shape of its tuned "
                             "kernel's weight transform (retrieve_weight_shape, propagate_b, chosen per GPU), which "
                             "config.json does not record")
        if fmt not in ("gptq", "gptq_v2", "marlin"):
            return Unchecked(method, f"checkpoint_format {fmt!r}: hfconv does not know its stored layout")
        bits, group = _int(quant, "bits", (4,) if fmt == "marlin" else (2, 3, 4, 8)), _group(quant)
        layout = "marlin" if fmt == "marlin" else ""
        label = f"gptq {bits}-bit" + (" marlin" if layout else "") + (f", group {group}" if group else "")
        return Scheme("gptq", label, bits, group, layout=layout, skip=_names(quant, "modules_to_not_convert"))
    if method == "awq":
        given = quant.get("version") or quant.get("format") or "gemm"
        version = given.lower() if isinstance(given, str) else ""
        layout = _AWQ_LAYOUTS.get(version, "")
        if not layout:
            return Unchecked(method, f"version {given!r}: hfconv does not know its stored layout")
        bits = _int(quant, "bits", (4,) if layout == "marlin" else (2, 3, 4, 8), key2="w_bit")
        group = _group(quant, "q_group_size")
        if layout == "gemv_fast" and group not in (0, 32, 64) and group < 128:
            raise SchemeError("group_size", f"quantization_config group_size is {group}, but AWQ gemv_fast packs "
                              "groups of 32, 64 or 128 and more (AutoAWQ's calculate_zeros_width)")
        name = version if version == layout else f"{version} ({layout} layout)"
        return Scheme("awq", f"awq {bits}-bit {name}" + (f", group {group}" if group else ""), bits, group,
                      layout=layout, skip=_names(quant, "modules_to_not_convert"))
    if method == "bitsandbytes":
        skip = _names(quant, "llm_int8_skip_modules")
        if quant.get("load_in_4bit") or quant.get("_load_in_4bit"):
            kind = quant.get("bnb_4bit_quant_type", "fp4")
            return Scheme("bnb-4bit", f"bitsandbytes 4-bit {kind}", 4, skip=skip)
        if quant.get("load_in_8bit") or quant.get("_load_in_8bit"):
            return Scheme("bnb-8bit", "bitsandbytes 8-bit", 8, skip=skip)
        return Unchecked(method, "neither load_in_4bit nor load_in_8bit")
    if method == "compressed-tensors":
        return _compressed_tensors(quant)
    if method == "mxfp4":
        return Scheme("mxfp4", "mxfp4: E2M1 values in blocks of 32 with E8M0 scales", 4, block=(1, 32),
                      skip=_names(quant, "modules_to_not_convert"))
    return Unchecked(method or "?", "hfconv does not know its layout")


def _compressed_tensors(quant: Mapping[str, Any]) -> Scheme | Unchecked:
    groups = quant.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        return Unchecked("compressed-tensors", "no config_groups")
    schemes: list[tuple[tuple[str, ...], Scheme]] = []
    for key, group in groups.items():
        if not isinstance(group, Mapping) or not isinstance(group.get("weights", {}), (Mapping, type(None))):
            return Unchecked("compressed-tensors", f"config group {key!r} is not an object with weights")
        if group.get("weights") is None:
            continue  # activations or KV cache only: its modules keep their weights as they are
        fmt = group.get("format") or quant.get("format")
        found = _ct_group(group["weights"], fmt)
        if isinstance(found, Unchecked):
            return found
        targets = group.get("targets")
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            return Unchecked("compressed-tensors", f"config group {key!r} has no list of targets")
        schemes.append((tuple(targets), found))
    if not schemes:
        return Unchecked("compressed-tensors", "a config group without weights")
    ignore = _names(quant, "ignore")
    if len({(s.label, s.layout, s.symmetric, s.block) for _, s in schemes}) == 1:
        # One weight scheme: ``ignore`` only says which modules stay unquantized (HFC623), matched
        # as compressed-tensors matches it (:func:`_ct_matches`); an entry hfconv cannot match safely
        # (a pattern too complex or invalid, a class name) is left out of that check.
        return dataclasses.replace(schemes[0][1], skip=tuple(t for t in ignore if not _ct_target_problem(t)))
    # Several weight schemes: each module's is its group's, matched as compressed-tensors does.
    for targets, _ in schemes:
        for target in (*targets, *ignore):
            why = _ct_target_problem(target)
            if why:
                return Unchecked("compressed-tensors", f"config groups with different weight schemes, and {why}")
    formats = {s.layout for _, s in schemes}
    label = f"compressed-tensors, {len(schemes)} config groups"
    return Scheme("compressed-tensors", label, layout="mixed" if len(formats) > 1 else formats.pop(), skip=ignore,
                  groups=tuple(schemes), lone=frozenset().union(*(_LONE_BY_FORMAT.get(f, ()) for f in formats)))


def _ct_group(args: Mapping[str, Any], fmt: Any) -> Scheme | Unchecked:
    """One config group's weight scheme."""
    if fmt not in _CT_FORMATS:
        return Unchecked("compressed-tensors", f"format {fmt!r}")
    strategy = args.get("strategy") or "tensor"
    if strategy not in ("tensor", "channel", "group", "block"):
        return Unchecked("compressed-tensors", f"weight strategy {strategy!r}")
    bits = _int(args, "num_bits", (2, 3, 4, 8), where="config_groups weights")
    group = _group(args, where="config_groups weights") if strategy == "group" else 0
    if strategy == "group" and not group:
        raise SchemeError("group_size", "config_groups weights group_size must be a positive integer for the "
                          "group strategy")
    block = _pair(args, "block_structure", where="config_groups weights") if strategy == "block" else None
    if strategy == "block" and block is None:
        raise SchemeError("block_structure", "config_groups weights block_structure is missing for the block strategy")
    kind = args.get("type", "int")
    label = f"compressed-tensors {fmt}, {kind}{bits} per {strategy}" + (f" of {group}" if group else "")
    symmetric = args.get("symmetric", True) is not False
    return Scheme("compressed-tensors", label, bits, group, block, strategy, fmt, symmetric)


_NESTED_QUANTIFIER = re.compile(r"\([^()]*[*+}][^()]*\)\s*[*+{]")
"""A quantified group holding a quantifier, ``(a+)+``: the pattern shape that backtracks exponentially."""


def _ct_target_problem(target: str) -> str:
    """Why hfconv cannot match a compressed-tensors target or ignore entry from tensor names alone
    ('' where it can: a module name, a ``re:`` pattern, or the class name Linear)."""
    if target.startswith("re:"):
        pattern = target[3:]
        if len(pattern) > 1000 or _NESTED_QUANTIFIER.search(pattern) or \
                pattern.count("*") + pattern.count("+") + pattern.count("{") > 8:
            return f"the pattern {target[:80]!r} is too complex to match safely"
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError):
            return f"the pattern {target[:80]!r} is not a valid regular expression"
        return ""
    if target in _CT_CLASSES or not target[:1].isupper() or "." in target:
        return ""
    return (f"the target {target[:80]!r} is a class name other than Linear: which modules it covers needs the "
            "model's classes, not its tensor names")


_CT_CLASSES = frozenset({"Linear"})
"""Class-name targets a stored module may match: every quantized module hfconv sees is a Linear."""


def ct_group_of(scheme: Scheme, stem: str) -> Scheme | None:
    """The weight scheme compressed-tensors gives module ``stem`` (apply_quantization_config):
    None where an ``ignore`` entry matches it or no group targets it; otherwise the group of its
    first matching target, exact names before ``re:`` patterns before class names, each kind in
    sorted order (``match_targets``), a target named by two groups belonging to the later one."""
    if any(_ct_matches(stem, t) for t in scheme.skip):
        return None
    by_target: dict[str, Scheme] = {}
    for targets, group in scheme.groups:
        for target in targets:
            by_target[target] = group
    ordered = sorted(by_target, key=lambda t: (t.startswith("re:"), t))
    for target in ordered:
        if target not in _CT_CLASSES and _ct_matches(stem, target):
            return by_target[target]
    return next((by_target[t] for t in ordered if t in _CT_CLASSES), None)


def _ct_matches(stem: str, target: str) -> bool:
    """compressed-tensors' match_name (plus the Linear class every quantized module is)."""
    if target.startswith("re:"):
        return _regex(target[3:]).match(stem) is not None
    return target == stem or target in _CT_CLASSES


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _int(quant: Mapping[str, Any], key: str, allowed: tuple[int, ...], key2: str = "",
         where: str = "quantization_config") -> int:
    value = quant.get(key, quant.get(key2) if key2 else None)
    if isinstance(value, bool) or value not in allowed:
        raise SchemeError(key, f"{where} {key} is {value!r}, not one of {', '.join(map(str, allowed))}")
    return int(value)


def _group(quant: Mapping[str, Any], key2: str = "", where: str = "quantization_config") -> int:
    value = quant.get("group_size", quant.get(key2) if key2 else None)
    if value is None or value == -1:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SchemeError("group_size", f"{where} group_size is {value!r}, not a positive integer or -1")
    return value


def _pair(quant: Mapping[str, Any], key: str, where: str = "quantization_config") -> tuple[int, int] | None:
    value = quant.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise SchemeError(key, f"{where} {key} is {value!r}, not two positive integers")
    return value[0], value[1]


def _names(quant: Mapping[str, Any], *keys: str) -> tuple[str, ...]:
    for key in keys:
        value = quant.get(key)
        if isinstance(value, list):
            return tuple(v for v in value if isinstance(v, str) and v)
    return ()


def skipped(stem: str, patterns: Iterable[str]) -> bool:
    """Whether module ``stem`` is one a skip list names (as transformers' should_convert_module
    matches: the name itself, a dotted suffix, or a dotted component run)."""
    padded = f".{stem}."
    return any(p == stem or f".{p}." in padded for p in patterns if not p.startswith("re:"))


# --- the stored tensors, module by module -----------------------------------------------------

_COMPANIONS: dict[str, tuple[str, ...]] = {
    "fp8": ("weight_scale_inv", "activation_scale", "input_scale"),
    "gptq": ("qweight", "qzeros", "scales", "g_idx"),
    "awq": ("qweight", "qzeros", "scales"),
    "bnb-4bit": ("weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
                 "weight.quant_state.bitsandbytes__nf4", "weight.quant_state.bitsandbytes__fp4"),
    "bnb-8bit": ("SCB", "weight_format"),
    "mxfp4": ("_blocks", "_scales"),  # not dotted: experts.gate_up_proj_blocks (see _mxfp4_view)
    "compressed-tensors": ("weight_packed", "weight_shape", "weight_scale", "weight_zero_point", "weight_g_idx",
                           "input_scale", "input_zero_point", "output_scale", "output_zero_point",
                           "weight_global_scale", "input_global_scale", "k_scale", "v_scale"),
}
"""Per scheme: the suffixes of a module's stored tensors besides (or instead of) ``weight``."""
_LAYOUT_COMPANIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("gptq", "marlin"): ("B", "s"),  # AutoGPTQ's marlin QuantLinear (its workspace is not persistent)
    ("awq", "marlin"): ("qweight", "scales"),  # AutoAWQ's WQLinear_Marlin: symmetric, no zeros
}
"""Layouts whose tensors differ from their method's."""


def _companions(scheme: Scheme) -> tuple[str, ...]:
    return _LAYOUT_COMPANIONS.get((scheme.method, scheme.layout)) or _COMPANIONS[scheme.method]


class ExpectedShapes:
    """The shape an ExpectedModel gives a stored name (with or without the base prefix); None
    where it has none. ``direct`` is its tensors by exact name, for hot loops; ``config`` the
    config.json values, for schemes whose layers the model lacks (gpt-oss experts)."""

    def __init__(self, expected: ExpectedModel | None, config: Mapping[str, Any] | None = None):
        tensors: Mapping[str, Any] = expected.tensors if expected is not None else {}
        index = getattr(tensors, "index", None)  # a rule table's name -> run (with .shape): a plain dict
        self.direct: Mapping[str, Any] = index if isinstance(index, dict) else tensors
        self.prefix = expected.prefix if expected is not None else ""
        self.config: Mapping[str, Any] = config if isinstance(config, Mapping) else {}

    def __call__(self, name: str) -> tuple[int, ...] | None:
        tensor = self.direct.get(name)
        if tensor is None and self.prefix:
            tensor = self.direct.get(self.prefix + name) or self.direct.get(name.removeprefix(self.prefix))
        return tensor.shape if tensor is not None else None


def expected_shapes(expected: ExpectedModel | None, config: Mapping[str, Any] | None = None) -> ExpectedShapes:
    """The lookup :func:`quantized_view` takes, from the expected model (None: nothing known)
    and config.json (for the sizes of layers the expected model lacks)."""
    return ExpectedShapes(expected, config)


def quantized_view(scheme: Scheme, tensors: Mapping[str, Stored],
                   expected: Callable[[str], tuple[int, ...] | None],
                   states: Mapping[str, Mapping[str, Any]] | None = None) -> QuantView:
    """Map stored tensors to the unquantized model's names and shapes and check the companions.

    Args:
        scheme: from :func:`scheme_of`.
        tensors: stored name -> header (dtype, shape).
        expected: the config-implied shape of an unquantized name, or None where unknown
            (see :func:`expected_shapes`).
        states: bitsandbytes 4-bit quant states by module (the JSON its quant_state tensor
            holds, read only when tensor bytes may be read): they give the weight's shape and
            blocksize, so a transposed or resized packed weight is caught too.

    Returns:
        The QuantView: ``logical`` for the usual comparison, ``issues`` for the companions.
    """
    view = QuantView(scheme, states)
    if scheme.method == "mxfp4":
        _mxfp4_view(view, tensors, expected)
        return view
    logical, quantized = view.logical, view.quantized
    companions = _companions(scheme)
    endings = tuple("." + x for x in companions)
    lone = (scheme.lone, "weight_scale") if scheme.groups else _LONE_DTYPES.get((scheme.method, scheme.layout))
    lone_dtypes = lone[0] if lone is not None else frozenset()
    # 100,000s of names (DeepSeek-V3: 92,000): C-level passes over them, no Python code per tensor.
    names, metas = list(tensors), list(tensors.values())
    mask = list(map(str.endswith, names, repeat(endings)))
    if scheme.method == "fp8" and _fp8_all_fine(view, names, metas, mask, tensors, expected):
        return view
    hits = list(compress(names, mask))
    logical.update(compress(zip(names, map(_SHAPE, metas)), map(not_, mask)))
    # weights stored in a quantized dtype: their module must have companions
    typed = compress(names, map(lone_dtypes.__contains__, map(_DTYPE, metas))) if lone_dtypes else iter(())
    candidates = [name for name in typed if name.endswith(".weight")]
    if scheme.method == "fp8":
        hits = _fp8_modules_fine(view, hits, tensors, expected)
    modules: dict[str, dict[str, Stored]] = {}
    for name in hits:
        for suffix in companions:
            if name.endswith(suffix) and name[-len(suffix) - 1] == ".":
                modules.setdefault(name[: -len(suffix) - 1], {})[suffix] = tensors[name]
                quantized.add(name)
                break
    check = _CHECKS[scheme.method]
    for stem, parts in modules.items():
        weight_name = stem + ".weight"
        weight = tensors.get(weight_name)
        if weight is not None:
            parts["weight"] = weight
            quantized.add(weight_name)
            del logical[weight_name]
        check(view, stem, parts, expected)
    view.modules += len(modules)
    # Stored quantized (by dtype) with none of the scheme's other tensors: the scale went missing.
    if lone is not None:
        for name in [n for n in filterfalse(quantized.__contains__, candidates)]:
            stem = name[: -len(".weight")]
            quantized.add(name)
            view.issues.append(QuantIssue("HFC618", name, f"{name} is stored {tensors[name].dtype} "
                                          f"({scheme.label}) but {stem}.{lone[1]} is missing{_loader(scheme)}"))
    return view


def _fp8_all_fine(view: QuantView, names: list[str], metas: list[Stored], mask: list[bool],
                  tensors: Mapping[str, Stored], expected: Callable[[str], tuple[int, ...] | None]) -> bool:
    """The common FP8 folder, every module well formed (DeepSeek-V3: 45,000 of them), checked in
    a dozen C-level passes and filled into ``view``; False (``view`` untouched) at the first doubt,
    for the module-by-module path to find and word the problem.

    Fine means: every stored tensor in an FP8 dtype is some ``X.weight`` beside its
    ``X.weight_scale_inv``, every scale has such a weight and a float dtype, and each distinct
    (config-implied weight shape, scale shape) pair fits the blocks: a model has a few dozen
    such pairs, checked once each."""
    scheme = view.scheme
    if scheme.block is None or scheme.skip:
        return False
    hits = list(compress(names, mask))
    is_fp8 = list(map(_FP8.__contains__, map(_DTYPE, metas)))
    fp8_names = list(compress(names, is_fp8))
    # A hit other than X.weight_scale_inv (X.input_scale) keeps its name here: then it is no FP8
    # tensor's name, or it is an FP8 tensor itself and fails the float check of the scales below.
    weight_names = list(map(str.removesuffix, hits, repeat("_scale_inv")))
    if not hits or len(fp8_names) != len(hits):
        return False  # an FP8 tensor without a scale, or a scale beside no FP8 weight
    in_order = fp8_names == weight_names
    if not in_order:  # headers list both sorted by name: then the lists match as they are
        fp8 = set(fp8_names)
        if len(fp8) != len(hits) or not all(map(fp8.__contains__, weight_names)):
            return False
    scales = list(compress(metas, mask))
    if not set(map(_DTYPE, scales)) <= _FLOATS:
        return False
    direct = expected.direct if isinstance(expected, ExpectedShapes) else {}
    # The logical view: every stored tensor but the scales (the FP8 weights among them, each in its
    # scale's order when the headers list both alike), each looked up once in the expected model,
    # for the comparison too.
    kept = list(map(not_, mask))
    logical_names = list(compress(names, kept))
    looked_up = list(map(direct.get, logical_names, repeat(NO_TENSOR)))
    if in_order:
        shapes = list(map(_SHAPE, compress(looked_up, compress(is_fp8, kept))))
    else:
        shapes = list(map(_SHAPE, map(direct.get, weight_names, repeat(NO_TENSOR))))
    at = -1
    for _ in range(shapes.count(_NO_SHAPE)):  # names the reference lacks (a trailing MTP layer): as the modules' path
        at = shapes.index(_NO_SHAPE, at + 1)
        shapes[at] = expected(weight_names[at]) or tuple(tensors[weight_names[at]].shape)
    b0, b1 = scheme.block
    # Each scale against its weight's blocks, worked out once per distinct shape: per shape object
    # where the rule table's runs share one tuple among their tensors, else per (shape, scale) pair.
    ids = list(map(id, shapes))
    distinct = dict(zip(ids, shapes))
    if len(distinct) * 8 < len(shapes):
        need = {key: (-(-shape[0] // b0), -(-shape[1] // b1)) if len(shape) == 2 else None
                for key, shape in distinct.items()}
        if not all(map(eq, map(need.__getitem__, ids), map(_SHAPE, scales))):
            return False
    else:
        for shape, scale in set(zip(shapes, map(_SHAPE, scales))):
            if len(shape) != 2 or scale != (-(-shape[0] // b0), -(-shape[1] // b1)):
                return False
    view.take_bulk(_BulkView(StoredShapes(logical_names, list(map(_SHAPE, compress(metas, kept))), direct, looked_up),
                             names, metas, list(map(or_, mask, is_fp8))))
    view.modules = len(hits)
    return True


_NO_SHAPE = NO_TENSOR.shape


def _fp8_modules_fine(view: QuantView, hits: list[str], tensors: Mapping[str, Stored],
                      expected: Callable[[str], tuple[int, ...] | None]) -> list[str]:
    """Take the well-formed FP8 modules (the common case, 45,000 of them in DeepSeek-V3) out of
    ``hits``; the rest, with any problem, go through :func:`_check_fp8`, which words it. The
    weights of the fine ones keep their logical entry as stored.

    Checked per distinct (dtypes) and (config shape, scale shape) pair, not per module: a model
    has a few dozen of each, so the per-module work is C-level maps and one set of pairs."""
    scheme = view.scheme
    if scheme.block is None or scheme.skip or not all(map(str.endswith, hits, repeat(".weight_scale_inv"))):
        return hits
    b0, b1 = scheme.block
    cut = len("_scale_inv")
    weight_names = [name[:-cut] for name in hits]
    weights = list(map(tensors.get, weight_names))
    if None in weights:  # a scale without its weight: worded one by one
        return hits
    scales = list(map(tensors.__getitem__, hits))
    dtypes = set(zip(map(_DTYPE, weights), map(_DTYPE, scales)))
    if not all(w in _FP8 and sc in _FLOATS for w, sc in dtypes):
        return hits
    direct = expected.direct if isinstance(expected, ExpectedShapes) else {}
    known = list(map(direct.get, weight_names))
    want: list[tuple[int, ...]] = [k.shape if k is not None else () for k in known]
    for i in [i for i, k in enumerate(known) if k is None]:
        want[i] = expected(weight_names[i]) or tuple(tensors[weight_names[i]].shape)
    scale_shapes = list(map(_SHAPE, scales))
    bad = {(shape, scale) for shape, scale in set(zip(want, scale_shapes))
           if len(shape) != 2 or scale != (-(-shape[0] // b0), -(-shape[1] // b1))}
    if not bad:
        view.quantized.update(hits, weight_names)
        view.modules += len(hits)
        return []
    rest = []
    for name, weight_name, shape, scale in zip(hits, weight_names, want, scale_shapes):
        if (shape, scale) in bad:
            rest.append(name)
        else:
            view.quantized.add(name)
            view.quantized.add(weight_name)
            view.modules += 1
    return rest


_SHAPE = attrgetter("shape")
_DTYPE = attrgetter("dtype")


_LONE_BY_FORMAT: dict[str, frozenset[str]] = {
    "float-quantized": _FP8, "int-quantized": frozenset({"I8"}), "naive-quantized": frozenset({"I8"}) | _FP8,
}
"""compressed-tensors formats that keep ``weight``: the dtypes it has when quantized."""
_LONE_DTYPES: dict[tuple[str, str], tuple[frozenset[str], str]] = {
    ("fp8", ""): (_FP8, "weight_scale_inv"),
    ("bnb-8bit", ""): (frozenset({"I8"}), "SCB"),
    ("bnb-4bit", ""): (frozenset({"U8"}), "weight.absmax"),
    ("compressed-tensors", "float-quantized"): (_FP8, "weight_scale"),
    ("compressed-tensors", "int-quantized"): (frozenset({"I8"}), "weight_scale"),
    ("compressed-tensors", "naive-quantized"): (frozenset({"I8"}) | _FP8, "weight_scale"),
}


def _loader(scheme: Scheme) -> str:
    return ": loaders dequantize it with scales left uninitialised (garbage outputs) or fail"


def _fmt(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _issue(view: QuantView, code: str, tensor: str, message: str) -> None:
    view.issues.append(QuantIssue(code, tensor, message))


def _need(view: QuantView, stem: str, parts: Mapping[str, Stored], suffix: str, why: str = "") -> Stored | None:
    meta = parts.get(suffix)
    if meta is None:
        have = next((s for s in ("weight", "qweight", "weight_packed") if s in parts), next(iter(parts)))
        _issue(view, "HFC618", f"{stem}.{have}", f"{stem}.{suffix} is missing beside {stem}.{have} "
               f"({view.scheme.label}){why or _loader(view.scheme)}")
    return meta


def _shape_is(view: QuantView, name: str, meta: Stored, want: tuple[int, ...], derivation: str) -> bool:
    if tuple(meta.shape) == want:
        return True
    _issue(view, "HFC619", name, f"{name} has shape {_fmt(meta.shape)} but {derivation} needs {_fmt(want)} "
           f"({view.scheme.label})")
    return False


def _dtype_in(view: QuantView, name: str, meta: Stored, allowed: frozenset[str], what: str) -> bool:
    if meta.dtype in allowed:
        return True
    _issue(view, "HFC620", name, f"{name} is {meta.dtype} but {what} is stored as {' or '.join(sorted(allowed))} "
           f"({view.scheme.label})")
    return False


def _orphan(view: QuantView, stem: str, parts: Mapping[str, Stored], main: str) -> bool:
    if main in parts:
        return False
    for suffix in parts:
        _issue(view, "HFC621", f"{stem}.{suffix}", f"{stem}.{suffix} belongs to a quantized {stem} but "
               f"{stem}.{main} is not stored ({view.scheme.label}); loaders ignore it")
    return True


def _matrix(meta: Stored | None) -> tuple[int, int] | None:
    if meta is None or len(meta.shape) != 2:
        return None
    return meta.shape[0], meta.shape[1]


def _weight_shape(view: QuantView, stem: str, derived: tuple[int, int] | None,
                  expected: Callable[[str], tuple[int, ...] | None]) -> tuple[int, int] | None:
    """[out, in] of the module: as the config implies it where known, else as stored."""
    want = expected(stem + ".weight")
    if want is not None and len(want) == 2:
        return want[0], want[1]
    return derived


def _check_fp8(view: QuantView, stem: str, parts: Mapping[str, Stored],
               expected: Callable[[str], tuple[int, ...] | None]) -> None:
    # The one hot path (DeepSeek-V3 has 45,000 FP8 modules): no message is built unless needed.
    scheme = view.scheme
    weight = parts.get("weight")
    if weight is None:
        _orphan(view, stem, parts, "weight")
        return
    name = stem + ".weight"
    view.logical[name] = weight.shape
    scale = parts.get("weight_scale_inv")
    quantized = weight.dtype in _FP8
    if quantized and scheme.skip and skipped(stem, scheme.skip):
        _issue(view, "HFC623", name, f"{name} is {weight.dtype} but quantization_config lists {stem} as not "
               "converted: loaders build it unquantized and read the FP8 bytes without their scale")
    if scale is None:
        if quantized:
            _need(view, stem, parts, "weight_scale_inv")
        return
    if not quantized:
        _dtype_in(view, name, weight, _FP8, "a block-quantized weight")
    if scale.dtype not in _FLOATS and not (scheme.scale_fmt == "ue8m0" and scale.dtype in _UE8M0):
        allowed = _FLOATS | _UE8M0 if scheme.scale_fmt == "ue8m0" else _FLOATS
        _dtype_in(view, stem + ".weight_scale_inv", scale, allowed, "an FP8 weight scale")
    shape = weight.shape
    block = scheme.block
    if len(shape) == 3 and block:  # fused experts [E, out, in]
        experts, rows, cols = shape
        b0, b1 = block
        fused = (experts, -(-rows // b0), -(-cols // b1))
        if scale.shape != fused:
            _shape_is(view, stem + ".weight_scale_inv", scale, fused, f"{name} {_fmt(shape)} in {b0}x{b1} blocks")
        return
    config_shape = expected(name)
    if config_shape is not None and len(config_shape) == 2:
        out, inp = config_shape
    elif len(shape) == 2:
        out, inp = shape
    else:
        return
    if block:
        b0, b1 = block
        want = (-(-out // b0), -(-inp // b1))
        if scale.shape != want:
            _shape_is(view, stem + ".weight_scale_inv", scale, want,
                      f"{name} [{out}, {inp}] in {b0}x{b1} blocks = [ceil({out}/{b0}), ceil({inp}/{b1})]")
    elif math.prod(scale.shape) != 1:
        _issue(view, "HFC619", stem + ".weight_scale_inv", f"{stem}.weight_scale_inv has shape {_fmt(scale.shape)} "
               f"but a per-tensor FP8 scale is one value ({scheme.label})")


def _check_packed(view: QuantView, stem: str, parts: Mapping[str, Stored],
                  expected: Callable[[str], tuple[int, ...] | None]) -> None:
    """GPTQ and AWQ."""
    scheme = view.scheme
    main, scales_name = _companions(scheme)[:2] if scheme.layout == "marlin" else ("qweight", "scales")
    if _orphan(view, stem, parts, main):
        return
    qweight = parts[main]
    name = f"{stem}.{main}"
    ints = _I16 if scheme.layout == "gemv_fast" else _INTS
    if not _dtype_in(view, name, qweight, ints, "a packed weight") or len(qweight.shape) != 2:
        if len(qweight.shape) != 2:
            _issue(view, "HFC619", name, f"{name} has shape {_fmt(qweight.shape)}, not 2 dimensions "
                   f"({scheme.label})")
        return
    rows, cols = qweight.shape
    per = 32 / scheme.bits
    if scheme.layout == "marlin":    # 16x16 tiles: [in/16, out*16*bits/32]
        derived = (round(cols * per / 16), rows * 16)
    elif scheme.layout == "gemv_fast":  # int16, 4 output rows interleaved: [out/4, in*bits*4/16]
        derived = (rows * 4, round(cols * 4 / scheme.bits))
    elif scheme.method == "gptq":    # [in*bits/32, out]
        derived = (cols, round(rows * per))
    elif scheme.layout == "gemm":    # [in, out*bits/32]
        derived = (round(cols * per), rows)
    else:                            # gemv: [out, in*bits/32]
        derived = (rows, round(cols * per))
    view.logical[stem + ".weight"] = derived
    view.stored_as[stem + ".weight"] = name
    if skipped(stem, scheme.skip):
        _issue(view, "HFC623", name, f"{name} is packed ({scheme.label}) but quantization_config lists {stem} as "
               "not converted: loaders build it unquantized and find no weight")
    out, inp = _weight_shape(view, stem, derived, expected) or derived
    groups = -(-inp // scheme.group) if scheme.group else 1
    packed_out = -(-out * scheme.bits // 32)
    within = f"{stem} [out {out}, in {inp}]" + (f" in groups of {scheme.group}" if scheme.group else "")
    if scheme.layout == "marlin":  # symmetric: scales only, [in/group, out]
        scales = _need(view, stem, parts, scales_name)
        if scales is not None and _dtype_in(view, f"{stem}.{scales_name}", scales, _FLOATS, "a scale"):
            _shape_is(view, f"{stem}.{scales_name}", scales, (inp // scheme.group if scheme.group else 1, out),
                      f"{within} = [in/group {inp // scheme.group if scheme.group else 1}, out {out}]")
        return
    if scheme.layout == "gemv_fast":  # float zeros and scales: [rows of AutoAWQ's calculate_zeros_width, out]
        width = _gemv_fast_rows(inp, scheme.group or inp, scheme.bits)
        for suffix in ("qzeros", "scales"):
            meta = _need(view, stem, parts, suffix)
            if meta is not None and _dtype_in(view, f"{stem}.{suffix}", meta, _FLOATS, "a gemv_fast scale or zero"):
                _shape_is(view, f"{stem}.{suffix}", meta, (width, out),
                          f"{within} = [calculate_zeros_width(in {inp}) * {32 // scheme.bits} = {width}, out {out}]")
        return
    if scheme.method == "awq" and scheme.layout == "gemv":
        for suffix in ("qzeros", "scales"):
            _need(view, stem, parts, suffix)
        return
    zeros = _need(view, stem, parts, "qzeros")
    if zeros is not None and _dtype_in(view, stem + ".qzeros", zeros, _INTS, "packed zero points"):
        _shape_is(view, stem + ".qzeros", zeros, (groups, packed_out),
                  f"{within} = [groups {groups}, out*{scheme.bits}/32 = {packed_out}]")
    scales = _need(view, stem, parts, "scales")
    if scales is not None and _dtype_in(view, stem + ".scales", scales, _FLOATS, "a scale"):
        _shape_is(view, stem + ".scales", scales, (groups, out), f"{within} = [groups {groups}, out {out}]")
    g_idx = parts.get("g_idx")
    if g_idx is not None and _dtype_in(view, stem + ".g_idx", g_idx, _INTS, "a group index"):
        _shape_is(view, stem + ".g_idx", g_idx, (inp,), f"{stem} [out {out}, in {inp}] = [in {inp}]")


_I16 = frozenset({"I16"})


def _gemv_fast_rows(inp: int, group: int, bits: int) -> int:
    """Rows of AWQ gemv_fast's scales and zeros: AutoAWQ gemv_fast.py calculate_zeros_width(in, group) * (32 / bits),
    the width counting groups in eights, rounded up to 4 (group 32) or 2 (group 64) of them."""
    multiplier = 1 if group >= 128 else 2 if group == 64 else 4
    width = -(-(inp // group) // 8)
    return -(-width // multiplier) * multiplier * (32 // bits)


def _check_bnb4(view: QuantView, stem: str, parts: Mapping[str, Stored],
                expected: Callable[[str], tuple[int, ...] | None]) -> None:
    if _orphan(view, stem, parts, "weight"):
        return
    weight = parts["weight"]
    name = stem + ".weight"
    want = expected(name)
    state = view.states.get(stem, {})
    recorded = state.get("shape")
    if isinstance(recorded, list) and recorded and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                       for d in recorded):
        # The quant state records the weight's shape: compared with the config as any weight is.
        view.logical[name] = tuple(recorded)
        view.stored_as[name] = stem + "." + next(s for s in parts if s.startswith("weight.quant_state."))
        want = tuple(recorded)
    else:
        view.logical[name] = want if want is not None else tuple(weight.shape)
    blocksize = state.get("blocksize")
    blocks = (blocksize,) if isinstance(blocksize, int) and not isinstance(blocksize, bool) and blocksize > 0 \
        else _BNB_BLOCKS
    if weight.dtype in _FLOATS | {"F64"} and math.prod(weight.shape) > 1 and len(weight.shape) == 2 and \
            weight.shape[1] != 1:
        _issue(view, "HFC620", name, f"{name} is {weight.dtype} {_fmt(weight.shape)}, not packed 4-bit values, but "
               f"has a 4-bit quant state ({view.scheme.label})")
        return
    packed_bytes = math.prod(weight.shape) * _BYTES.get(weight.dtype, 1)
    if want is not None:
        values = math.prod(want)
        if packed_bytes != -(-values // 2):
            source = "its quant state records" if name in view.stored_as else "config.json implies"
            _issue(view, "HFC624", name, f"{name} holds {packed_bytes} bytes = {2 * packed_bytes} packed 4-bit values "
                   f"but {source} {_fmt(want)} = {values} values, {-(-values // 2)} bytes ({view.scheme.label})")
            return
    values = 2 * packed_bytes
    absmax = _need(view, stem, parts, "weight.absmax")
    _need(view, stem, parts, "weight.quant_map")
    if not any(s.startswith("weight.quant_state.") for s in parts):
        _need(view, stem, parts, "weight.quant_state.bitsandbytes__" + ("nf4" if "nf4" in view.scheme.label else "fp4"))
    if absmax is not None and (len(absmax.shape) != 1 or not any(
            absmax.shape[0] == -(-values // b) or absmax.shape[0] == -(-(values - 1) // b) for b in blocks)):
        size = f"the blocksize {blocks[0]} its quant state records" if len(blocks) == 1 else \
            "a blocksize of 32 to 4096"
        _issue(view, "HFC619", stem + ".weight.absmax", f"{stem}.weight.absmax has shape {_fmt(absmax.shape)} but "
               f"{name} ({values} values) needs one scale per block: [ceil({values}/blocksize)] for {size} "
               f"({view.scheme.label})")
    if absmax is not None and absmax.dtype == "U8":  # double quantization: the absmax is quantized again
        nested = _need(view, stem, parts, "weight.nested_absmax")
        _need(view, stem, parts, "weight.nested_quant_map")
        if nested is not None and len(absmax.shape) == 1 and (len(nested.shape) != 1 or not any(
                nested.shape[0] == -(-absmax.shape[0] // b) for b in (256, *_BNB_BLOCKS))):
            _issue(view, "HFC619", stem + ".weight.nested_absmax", f"{stem}.weight.nested_absmax has shape "
                   f"{_fmt(nested.shape)} but {stem}.weight.absmax {_fmt(absmax.shape)} needs "
                   f"[ceil({absmax.shape[0]}/256)] = [{-(-absmax.shape[0] // 256)}] ({view.scheme.label})")


_BYTES = {"U8": 1, "I8": 1, "BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I32": 4, "I64": 8, "U16": 2, "U32": 4,
          "U64": 8, "I16": 2}
_BNB_BLOCKS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def _check_bnb8(view: QuantView, stem: str, parts: Mapping[str, Stored],
                expected: Callable[[str], tuple[int, ...] | None]) -> None:
    if _orphan(view, stem, parts, "weight"):
        return
    weight = parts["weight"]
    name = stem + ".weight"
    view.logical[name] = tuple(weight.shape)
    scb = _need(view, stem, parts, "SCB")
    if scb is None:
        return
    _dtype_in(view, name, weight, frozenset({"I8"}), "an 8-bit weight with SCB")
    out_in = _weight_shape(view, stem, _matrix(weight), expected)
    if out_in is not None and _dtype_in(view, stem + ".SCB", scb, _FLOATS, "a row scale"):
        _shape_is(view, stem + ".SCB", scb, (out_in[0],), f"{name} [{out_in[0]}, {out_in[1]}] (one scale per row)")


def _check_compressed(view: QuantView, stem: str, parts: Mapping[str, Stored],
                      expected: Callable[[str], tuple[int, ...] | None]) -> None:
    scheme = view.scheme
    if not scheme.groups:
        _check_compressed_one(view, stem, parts, expected)
        return
    group = ct_group_of(scheme, stem)
    if group is None:
        if not any(s in parts for s in ("weight_packed", "weight_scale")):
            return  # activation or KV-cache scales only
        have = "weight_packed" if "weight_packed" in parts else "weight"
        why = "ignores" if any(_ct_matches(stem, t) for t in scheme.skip) else "has no config group that targets"
        _issue(view, "HFC623", f"{stem}.{have}", f"{stem}.{have} is quantized but quantization_config {why} "
               f"{stem} ({scheme.label}): loaders build it unquantized")
        want = expected(stem + ".weight")
        if "weight" in parts or want is not None:
            view.logical[stem + ".weight"] = parts["weight"].shape if "weight" in parts else want or ()
        return
    view.scheme = group
    try:
        _check_compressed_one(view, stem, parts, expected)
    finally:
        view.scheme = scheme


def _check_compressed_one(view: QuantView, stem: str, parts: Mapping[str, Stored],
                          expected: Callable[[str], tuple[int, ...] | None]) -> None:
    scheme = view.scheme
    derived: tuple[int, int] | None
    if not any(s in parts for s in ("weight_packed", "weight_scale", "weight")):
        return  # activation or KV-cache scales of a module with no weight (self_attn.k_scale)
    if scheme.layout == "pack-quantized":
        if _orphan(view, stem, parts, "weight_packed"):
            return
        packed = parts["weight_packed"]
        name = stem + ".weight_packed"
        if not _dtype_in(view, name, packed, _INTS, "a packed weight") or len(packed.shape) != 2:
            return
        rows, cols = packed.shape
        derived = (rows, cols * 32 // scheme.bits)
        want = expected(stem + ".weight")
        if want is not None and len(want) == 2 and want[0] == rows and -(-want[1] * scheme.bits // 32) == cols:
            derived = (want[0], want[1])  # the packing rounds up: the config's width fits
        view.logical[stem + ".weight"] = derived
        view.stored_as[stem + ".weight"] = name
        _need(view, stem, parts, "weight_shape", ": loaders cannot unpack the weight without it")
    else:
        if _orphan(view, stem, parts, "weight"):
            return
        weight = parts["weight"]
        name = stem + ".weight"
        view.logical[name] = tuple(weight.shape)
        if "weight_scale" not in parts:
            if weight.dtype in _FP8 | {"I8"}:
                _need(view, stem, parts, "weight_scale")
            return
        allowed = frozenset({"I8"}) if scheme.layout == "int-quantized" else _FP8 if \
            scheme.layout == "float-quantized" else frozenset({"I8"}) | _FP8
        _dtype_in(view, name, weight, allowed, f"a {scheme.layout} weight")
        derived = _matrix(weight)
    if any(_ct_matches(stem, t) for t in scheme.skip):
        _issue(view, "HFC623", name, f"{name} is quantized ({scheme.label}) but quantization_config ignores {stem}: "
               "loaders build it unquantized")
    scale = _need(view, stem, parts, "weight_scale")
    if not scheme.symmetric and scheme.strategy in ("group", "channel"):
        _need(view, stem, parts, "weight_zero_point")
    out_in = _weight_shape(view, stem, derived, expected)
    if scale is None or out_in is None or not _dtype_in(view, stem + ".weight_scale", scale, _FLOATS | _FP8,
                                                        "a weight scale"):
        return
    out, inp = out_in
    if scheme.strategy == "tensor":
        if math.prod(scale.shape) != 1:
            _issue(view, "HFC619", stem + ".weight_scale", f"{stem}.weight_scale has shape {_fmt(scale.shape)} but a "
                   f"per-tensor scale is one value ({scheme.label})")
        return
    if scheme.strategy == "channel":
        want, how = (out, 1), "(one scale per output row)"
    elif scheme.strategy == "group":
        want, how = (out, -(-inp // scheme.group)), f"in groups of {scheme.group}"
    else:
        assert scheme.block is not None
        b0, b1 = scheme.block
        want, how = (-(-out // b0), -(-inp // b1)), f"in {b0}x{b1} blocks"
    if scale.shape != want:
        _shape_is(view, stem + ".weight_scale", scale, want, f"{stem} [out {out}, in {inp}] {how}")


_CHECKS: dict[str, Callable[[QuantView, str, Mapping[str, Stored], Callable[[str], tuple[int, ...] | None]], None]] = {
    "fp8": _check_fp8,
    "gptq": _check_packed,
    "awq": _check_packed,
    "bnb-4bit": _check_bnb4,
    "bnb-8bit": _check_bnb8,
    "compressed-tensors": _check_compressed,
}


# --- MXFP4 (gpt-oss) ----------------------------------------------------------------------------

_U8 = frozenset({"U8"})
_E8M0 = frozenset({"U8", "F8_E8M0"})


def _mxfp4_view(view: QuantView, tensors: Mapping[str, Stored],
                expected: Callable[[str], tuple[int, ...] | None]) -> None:
    """gpt-oss's MXFP4 experts (transformers ``integrations/mxfp4.py``): a parameter ``P`` of
    ``[E, in, out]`` is stored as ``P_blocks`` U8 ``[E, out, in/32, 16]`` (32 E2M1 values, two
    per byte, per block) and ``P_scales`` U8 ``[E, out, in/32]`` (one E8M0 exponent per block);
    loaders dequantize to ``[E, out, in]`` and transpose the last two dimensions."""
    logical, quantized = view.logical, view.quantized
    pairs: dict[str, dict[str, Stored]] = {}
    for name, meta in tensors.items():
        if name.endswith(("_blocks", "_scales")):
            pairs.setdefault(name[:-7], {})[name[-6:]] = meta
            quantized.add(name)
        else:
            logical[name] = meta.shape
    config = expected.config if isinstance(expected, ExpectedShapes) else {}
    label = view.scheme.label
    for stem, parts in pairs.items():
        view.modules += 1
        bname, sname = stem + "_blocks", stem + "_scales"
        blocks, scales = parts.get("blocks"), parts.get("scales")
        if blocks is None:
            _issue(view, "HFC621", sname, f"{sname} belongs to an MXFP4 {stem} but {bname} is not stored ({label}); "
                   "loaders ignore it")
            continue
        if not _dtype_in(view, bname, blocks, _U8, "MXFP4 blocks (two E2M1 values per byte)"):
            continue
        if len(blocks.shape) != 4 or blocks.shape[-1] != 16:
            _issue(view, "HFC619", bname, f"{bname} has shape {_fmt(blocks.shape)} but MXFP4 expert blocks are "
                   f"[experts, out, in/32, 16]: 16 bytes hold a block of 32 values ({label})")
            continue
        experts, out, groups, _ = blocks.shape
        derived = (experts, groups * 32, out)
        logical[stem] = derived
        view.stored_as[stem] = bname
        if scales is None:
            _issue(view, "HFC618", bname, f"{sname} is missing beside {bname} ({label}){_loader(view.scheme)}")
        elif _dtype_in(view, sname, scales, _E8M0, "an MXFP4 block scale (E8M0)") and \
                tuple(scales.shape) != blocks.shape[:3]:
            _shape_is(view, sname, scales, blocks.shape[:3], f"{bname} {_fmt(blocks.shape)} (one scale per block of "
                      "32 values)")
        if expected(stem) is None:  # the reference lacks the experts: config.json's sizes
            want = _gpt_oss_expert(stem, config)
            if want is not None and want != derived:
                transposed = derived == (want[0], want[2], want[1])
                how = "; the stored shape is the expected one transposed" if transposed else ""
                _issue(view, "HFC601", bname, f"{bname} {_fmt(blocks.shape)} ({label}) unpacks to {stem} of shape "
                       f"{_fmt(derived)} but config.json implies {_fmt(want)} ([num_local_experts, in, out] of "
                       f"hidden_size and intermediate_size){how}")


def _gpt_oss_expert(stem: str, config: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """[E, in, out] of gpt-oss's fused expert projections from config.json, where its values are usable."""
    values = [config.get(k) for k in ("num_local_experts", "hidden_size", "intermediate_size")]
    sizes = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    if len(sizes) != 3:
        return None
    experts, hidden, inter = sizes
    if stem.endswith(".experts.gate_up_proj"):
        return experts, hidden, 2 * inter
    if stem.endswith(".experts.down_proj"):
        return experts, inter, hidden
    return None
