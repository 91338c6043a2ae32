"""Tensor bytes -> numbers, with numpy only (no torch): every floating dtype safetensors names,
bfloat16 and float8 included, decoded by bit patterns as ``validate --deep`` classifies them.

Also the casts ``convert --dtype`` makes (float32/float16/bfloat16 targets), computed the way
torch computes them (round to nearest, ties to even), so that a cast between two folders can
be recognised: A cast to B's dtype equals B bit for bit.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ..dtypes import CASTABLE

__all__ = ["DECODABLE", "as_float", "as_number", "cast_bytes", "can_cast"]

_NUMPY_NATIVE = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
                 "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1"}

DECODABLE = frozenset({*_NUMPY_NATIVE, "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"})
"""Dtypes whose values :func:`as_float` can decode (complex and sub-byte dtypes are compared by bytes)."""


def _fp8_value(bits: int, exponent_bits: int, bias: int, finite_only: bool, fnuz: bool) -> float:
    """The value of one float8 bit pattern (OCP e4m3fn / e5m2, and the fnuz variants)."""
    mantissa_bits = 7 - exponent_bits
    sign = -1.0 if bits & 0x80 else 1.0
    exponent = (bits >> mantissa_bits) & ((1 << exponent_bits) - 1)
    mantissa = bits & ((1 << mantissa_bits) - 1)
    if fnuz:
        if bits == 0x80:
            return float("nan")
    elif finite_only:
        if exponent == (1 << exponent_bits) - 1 and mantissa == (1 << mantissa_bits) - 1:
            return float("nan")
    elif exponent == (1 << exponent_bits) - 1:
        return sign * float("inf") if mantissa == 0 else float("nan")
    if exponent == 0:
        return sign * mantissa / (1 << mantissa_bits) * 2.0 ** (1 - bias)
    return sign * (1 + mantissa / (1 << mantissa_bits)) * 2.0 ** (exponent - bias)


@cache
def _table(dtype: str) -> Any:
    """The 256 float32 values of a float8 dtype, indexed by bit pattern."""
    import numpy as np

    if dtype == "F8_E8M0":  # a power-of-two scale: 2^(e - 127), 0xFF is NaN
        values = [float("nan") if b == 0xFF else 2.0 ** (b - 127) for b in range(256)]
    else:
        exponent_bits, bias, finite_only, fnuz = {
            "F8_E4M3": (4, 7, True, False), "F8_E5M2": (5, 15, False, False),
            "F8_E4M3FNUZ": (4, 8, True, True), "F8_E5M2FNUZ": (5, 16, True, True)}[dtype]
        values = [_fp8_value(b, exponent_bits, bias, finite_only, fnuz) for b in range(256)]
    return np.array(values, dtype=np.float64)


def as_float(data: Any, dtype: str) -> Any:
    """The values of little-endian ``data`` (bytes-like, whole elements) of ``dtype`` as float64."""
    import numpy as np

    if dtype == "BF16":
        raw = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return raw.view(np.float32).astype(np.float64)
    if dtype.startswith("F8_"):
        return _table(dtype)[np.frombuffer(data, dtype=np.uint8)]
    return np.frombuffer(data, dtype=_NUMPY_NATIVE[dtype]).astype(np.float64)


def as_number(data: Any, dtype: str) -> Any:
    """Values for statistics: float32 for the floating dtypes of 32 bits or fewer (exact; float32
    arithmetic is 2-4x faster than float64 and its rounding is far below any difference worth
    reporting), float64 for float64 and every integer and bool dtype."""
    import numpy as np

    if dtype == "F32":
        return np.frombuffer(data, dtype="<f4")
    if dtype == "F16":
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    if dtype == "BF16":
        return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype.startswith("F8_"):
        return _table(dtype).astype(np.float32)[np.frombuffer(data, dtype=np.uint8)]
    return np.frombuffer(data, dtype=_NUMPY_NATIVE[dtype]).astype(np.float64)


def can_cast(source: str, target: str) -> bool:
    """``source`` -> ``target`` is a cast ``convert --dtype`` makes (both float64/32/16 or bfloat16)."""
    return source != target and source in CASTABLE and target in CASTABLE and target != "F64"


def cast_bytes(data: Any, source: str, target: str) -> bytes:
    """``data`` of ``source`` cast to ``target`` as torch's ``Tensor.to`` casts it (round to
    nearest, ties to even; NaN stays NaN), little-endian."""
    import numpy as np

    if source == "BF16":
        values: Any = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        values = np.frombuffer(data, dtype=_NUMPY_NATIVE[source])
    if target == "F32":
        return values.astype("<f4").tobytes()
    if target == "F16":
        with np.errstate(over="ignore"):
            return values.astype("<f2").tobytes()
    # bfloat16: from float32 bits, round to nearest even on the 16 dropped bits (uint32 arithmetic
    # wraps only for NaN patterns, which are set apart below)
    with np.errstate(over="ignore"):
        bits = values.astype("<f4", copy=False).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded.astype("<u2", copy=False).tobytes()
