"""Dtype names across the formats hfconv reads, with their sizes.

hfconv's canonical dtype name is safetensors' (``F32``, ``BF16``, ...). Sizes are in bits
because sub-byte dtypes (``F4``, ``F6_*``) exist in safetensors.
"""

from __future__ import annotations

import operator
from typing import Any

from .errors import OptionError

# safetensors dtype name -> bits per element
SAFETENSORS_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

# legacy typed-storage class name (torch.FloatStorage, ...) -> safetensors dtype
STORAGE_CLASS_DTYPE: dict[str, str] = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
}

# torch dtype attribute name (torch.float32 -> "float32") -> safetensors dtype
TORCH_DTYPE: dict[str, str] = {
    "float64": "F64",
    "double": "F64",
    "float32": "F32",
    "float": "F32",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "long": "I64",
    "int32": "I32",
    "int": "I32",
    "int16": "I16",
    "short": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "complex64": "C64",
}

FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"})

# config.json torch_dtype value -> safetensors dtype
CONFIG_DTYPE: dict[str, str] = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


ITEMSIZES: dict[str, int] = {dtype: bits // 8 for dtype, bits in SAFETENSORS_BITS.items() if bits % 8 == 0}
"""Bytes per element of the whole-byte dtypes: with them, bytes are elements times this, in bulk."""


def total_nbytes(dtypes: list[str], numels: list[int]) -> int:
    """Bytes of tensors of these dtypes and element counts: in C for whole-byte dtypes (nearly
    always; 100,000s of tensors in the largest folders), else tensor by tensor."""
    if set(dtypes) <= ITEMSIZES.keys():
        return sum(map(operator.mul, numels, map(ITEMSIZES.__getitem__, dtypes)))
    return sum(map(nbytes, dtypes, numels))


def nbytes(dtype: str, numel: int) -> int:
    """Bytes used by ``numel`` elements of ``dtype`` (sub-byte dtypes round up)."""
    return (SAFETENSORS_BITS[dtype] * numel + 7) // 8


def itemsize(dtype: str) -> int:
    """Bytes per element for byte-aligned dtypes."""
    return SAFETENSORS_BITS[dtype] // 8


def swap_unit(dtype: str) -> int:
    """Bytes reversed together when changing byte order: the element, or each half of a
    complex number (torch's ``storage.byteswap`` does the same)."""
    size = itemsize(dtype)
    return size // 2 if dtype.startswith("C") else size


def torch_dtype(dtype: str) -> Any:
    """The torch.dtype for a safetensors dtype name (imports torch)."""
    import torch

    for attr, name in TORCH_DTYPE.items():
        if name == dtype and hasattr(torch, attr):
            return getattr(torch, attr)
    raise KeyError(dtype)


# --- the dtypes convert and load-test cast to (--dtype) -------------------------------------------

DTYPE_CHOICES = ("keep", "float32", "float16", "bfloat16")


DTYPE_ALIASES = {
    "keep": "keep", "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}
"""Every name ``--dtype`` takes (convert and load-test share it): the canonical names and the
usual short ones (``bf16``, ``fp16``, ``half``, ``float``), case-insensitive, ``torch.`` allowed."""


def canonical_dtype(name: str | None) -> str:
    """``keep`` or a :data:`DTYPE_CHOICES` name for any :data:`DTYPE_ALIASES` spelling.

    Raises:
        OptionError: (a UsageError, option ``dtype``) not a dtype name convert or load-test casts to.
    """
    if name is None:
        return "keep"
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPE_ALIASES:
        raise OptionError("dtype", f" must be one of {', '.join(DTYPE_CHOICES)} (or bf16, fp16, fp32, half, "
                                   f"float), not {name!r}")
    return DTYPE_ALIASES[key]


CAST_TARGET = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
"""The safetensors dtype each cast target is."""
CASTABLE = frozenset({"F64", "F32", "F16", "BF16"})
"""Floating dtypes a --dtype cast applies to. float8 weights come with scales (quantized
models) and are left alone, as are complex, integer and bool tensors."""
