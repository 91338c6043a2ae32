"""config.json's torch_dtype / dtype against the dtype the weights are stored in (HFC514)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from ..contents import FolderContents
from ..dtypes import FLOAT_DTYPES, TORCH_DTYPE
from ..findings import Finding, finding, register

register("HFC514", "info", "config dtype differs from weights",
         "config.json's torch_dtype / dtype is not the dtype the weights are stored in; loaders trust the "
         "config (torch_dtype='auto' casts to it), so the loaded model differs in memory and precision "
         "from what the files hold.",
         "Set torch_dtype (dtype in transformers 5) to the stored dtype, or convert the weights.",
         "config.json says torch_dtype float32 but the weights are stored as BF16 (19 of 19 floating-point "
         "tensors)")


def check_dtype(contents: FolderContents) -> Iterator[Finding]:
    """config.json's torch_dtype / dtype against the dtype most floating-point weights are stored in."""
    config = contents.config
    if config is None or config.get("quantization_config") is not None:
        return
    key = "dtype" if isinstance(config.get("dtype"), str) else "torch_dtype"
    value = config.get(key)
    if not isinstance(value, str) or value not in TORCH_DTYPE:
        return
    declared = TORCH_DTYPE[value]
    stored = Counter({dtype: n for dtype, n in contents.loaded_dtype_counts.items() if dtype in FLOAT_DTYPES})
    if not stored or declared not in FLOAT_DTYPES:
        return
    dominant, count = stored.most_common(1)[0]
    if dominant == declared:
        return
    total = sum(stored.values())
    yield finding("HFC514", f"config.json says {key} {value} but the weights are stored as {dominant} ({count} of "
                  f"{total} floating-point tensors); loaders trust the config, so set {key} to the stored dtype "
                  "unless the cast is intended", file="config.json", tensor=f"$.{key}")
