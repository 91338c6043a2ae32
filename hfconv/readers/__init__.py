"""Readers: they know file formats and nothing else. Each returns data or raises FormatError."""

from __future__ import annotations

import os
import struct

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
        FormatError: the file is broken, hostile or not a weight file; ``code`` says which
            (HFC202 for a file that is neither format, e.g. an image or a web page, whatever
            its name).
    """
    with open_regular(path) as handle:  # opened once: the sniffing and the safetensors reader share it
        size = os.fstat(handle.fileno()).st_size
        # One read that holds the whole header of a small shard (one layer per file), which the
        # safetensors reader then takes from it: per file cost counts in a folder of 2,000.
        head = handle.read(_HEAD_BYTES)
        if head.startswith(LFS_POINTER_PREFIX):
            raise FormatError("HFC010", "is a git-lfs pointer, not the weights (LFS object not pulled)")
        if not os.fspath(path).endswith(".safetensors"):
            # The torch reader sniffs the content itself (and names a misnamed safetensors file).
            from .torch_checkpoint import read_torch_checkpoint

            return read_torch_checkpoint(path)
        from .safetensors_header import read_safetensors

        # Content, not the extension, picks the reader. A safetensors file starts with a
        # little-endian header length that fits the file, then '{'. That test comes first: a
        # header length such as 640 (80 02 00 ...) or 19280 (50 4B 00 ...) begins with the bytes
        # of a pickle or zip magic.
        if len(head) >= 9 and head[8:9] == b"{" and struct.unpack_from("<Q", head)[0] <= size - 8:
            return read_safetensors(path, handle, head=head, size=size)
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or (head[:1] == b"\x80" and head[1:2] in _PICKLE_PROTOCOLS):
            # A torch checkpoint (or a bare pickle) named .safetensors: the torch reader names a
            # forbidden global first (the stronger finding); a harmless one still does not load,
            # since loaders parse the name's format.
            from .torch_checkpoint import read_torch_checkpoint

            read_torch_checkpoint(path)
            raise FormatError("HFC202", "is a torch checkpoint, not a safetensors file; loaders parse it as "
                                        "safetensors and fail (rename it pytorch_model.bin; hfconv convert then "
                                        "writes real safetensors)")
        try:
            return read_safetensors(path, handle, head=head, size=size)
        except FormatError as err:
            if err.code in ("HFC101", "HFC102", "HFC104") and size:
                from .torch_checkpoint import describe_content  # the pickle/zip readers: only when needed

                what = describe_content(head[:1024], size)
                if not what.startswith(("unrecognised", "a safetensors")):
                    raise FormatError("HFC202", f"is {what}, not a safetensors file ({err.message})") from None
            raise


_HEAD_BYTES = 8192
"""The first read of a weight file: what sniffing needs (1 KB) and a buffered read costs anyway."""
_PICKLE_PROTOCOLS = frozenset(bytes([p]) for p in range(6))
