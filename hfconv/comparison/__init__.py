"""``diff``: compare two model folders tensor by tensor, and their metadata key by key.

One module per half: ``weights`` (pair the tensor names, stream both byte ranges once),
``metadata`` (JSON keys, tokenizer.json by content), ``decode`` (bytes -> values with numpy,
the casts ``convert --dtype`` makes), ``results`` and ``codes`` (HFC960-HFC969).

1. read: discover each folder and parse its headers and pickles with the restricted readers
   (nothing in either folder is executed or written);
2. pair the tensor names of the weights loaders pick, in A's file order;
3. unless ``headers_only``, stream each pair's bytes once, chunk by chunk: equal chunks cost
   a memcmp; a differing chunk is decoded for its maximum and relative L2 difference;
4. compare the metadata files and tokenizer.json.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable

from ..contents import read_contents
from ..discovery import discover
from . import codes  # noqa: F401 - registers HFC960-HFC969
from .metadata import compare_metadata, compare_tokenizer
from .results import DIFF_FORMAT, SAME_STATUSES, DiffResult, KeyChange, TensorDiff, TokenizerDiff, block_of
from .weights import compare_weights, read_side

__all__ = ["diff", "DiffResult", "TensorDiff", "KeyChange", "TokenizerDiff", "DIFF_FORMAT", "SAME_STATUSES",
           "block_of"]


def diff(a: str | os.PathLike[str], b: str | os.PathLike[str], *, headers_only: bool = False,
         progress: Callable[[int, int], None] | None = None) -> DiffResult:
    """Compare model folder ``a`` with model folder ``b``.

    Args:
        a: a model folder (``.bin`` or safetensors, single or sharded).
        b: another one, in either format.
        headers_only: compare names, dtypes and shapes only; no tensor byte is read.
        progress: called with ``(bytes_read, bytes_to_read)`` as tensor bytes are compared.

    Returns:
        The DiffResult: one TensorDiff per tensor name of either folder (only in A, only in B,
        other shape, other dtype, identical, equal after a cast between the folders, tied,
        different with max absolute and relative L2 difference), the metadata key changes,
        tokenizer.json's vocabulary and merges, and what could not be read (HFC96x).
        ``weights_identical`` and ``exit_code`` (0 identical, 1 not) summarise it.

    Raises:
        UsageError: ``a`` or ``b`` does not exist or is not a folder.
    """
    started = time.perf_counter()
    for path in (a, b):
        if not os.path.isdir(path):  # the folder check only to word the refusal
            from ..folder_check import check_folder

            check_folder(path)
    # 1. Read both folders' headers and metadata.
    contents_a, contents_b = read_contents(discover(a)), read_contents(discover(b))
    side_a, side_b = read_side("A", contents_a), read_side("B", contents_b)
    # 2-3. Tensors.
    rows, read_findings, bytes_read = compare_weights(side_a, side_b, headers_only, progress)
    # 4. Metadata.
    changes, metadata_findings = compare_metadata(contents_a, contents_b)
    casts = Counter(f"{t.dtype_a} -> {t.dtype_b}" for t in rows if t.status == "cast")
    return DiffResult(
        a=os.fspath(a), b=os.fspath(b), format_a=side_a.format, format_b=side_b.format,
        headers_only=headers_only, tensors=tuple(rows), metadata=tuple(changes),
        tokenizer=compare_tokenizer(contents_a, contents_b),
        findings=(*side_a.findings, *side_b.findings, *read_findings, *metadata_findings),
        bytes_read=bytes_read, seconds=time.perf_counter() - started,
        cast=casts.most_common(1)[0][0] if casts else None,
    )
