"""Readers: they know file formats and nothing else. Each returns data or raises FormatError."""

from __future__ import annotations

import os

from ..fsutil import open_regular
from ..tensors import FormatError, WeightFile

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"


def read_weight_file(path: str | os.PathLike) -> WeightFile:
    """Read the tensor metadata of one weight file, choosing the reader by content.

    Args:
        path: a ``.safetensors`` or torch (``.bin``/``.pt``) file.

    Returns:
        The WeightFile (tensor names, dtypes, shapes, byte locations); no tensor bytes read.

    Raises:
        FormatError: the file is broken, hostile or not a weight file; ``code`` says which.
    """
    with open_regular(path) as handle:
        head = handle.read(64)
    if head.startswith(LFS_POINTER_PREFIX):
        raise FormatError("HFC010", "is a git-lfs pointer, not the weights (LFS object not pulled)")
    # A safetensors file starts with a little-endian header length then '{'; torch files
    # start with a zip or pickle magic. Content, not the extension, picks the reader.
    if head[:2] in (b"PK", b"\x80\x02") or not str(path).endswith(".safetensors"):
        from .torch_checkpoint import read_torch_checkpoint

        return read_torch_checkpoint(path)
    from .safetensors_header import read_safetensors

    return read_safetensors(path)
