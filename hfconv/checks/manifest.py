"""``validate --manifest FILE``: re-check a folder against the digests ``convert --manifest`` wrote.

This is the one check that reads tensor bytes (it hashes them), so it only runs when asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ..contents import FolderContents
from ..dtypes import itemsize, swap_unit
from ..findings import Finding, finding, register
from ..fsutil import open_regular
from ..jsonutil import JsonError, load_json_file
from ..tensors import FormatError, TensorMeta, WeightFile

MANIFEST_FORMAT = "hfconv-manifest/1"
_CHUNK = 4 << 20
"""Bytes read (pread) and hashed per step: one reused buffer, in the CPU's cache."""

register("HFC720", "error", "manifest unreadable",
         "The manifest given with --manifest cannot be read or is not an hfconv manifest.",
         "Give the file written by `hfconv convert --manifest FILE`.",
         "manifest.json is not an hfconv manifest (format 'x', expected 'hfconv-manifest/1')")
register("HFC721", "error", "tensor differs from manifest",
         "A tensor's bytes (or dtype, or shape) differ from the digest recorded at conversion time: "
         "the file was modified or corrupted since.",
         "Re-download the shard, or re-run the conversion from the source.",
         "model-00001-of-00002.safetensors: 'lm_head.weight' sha256 differs from the manifest")
register("HFC722", "error", "manifest tensor missing",
         "The manifest lists a tensor the folder no longer holds.",
         "Restore the missing shard or re-run the conversion.",
         "'lm_head.weight' is in the manifest but not in the folder's weights")
register("HFC723", "error", "tensor not in manifest",
         "The folder holds a tensor the manifest does not list: it was added after conversion.",
         "Remove the extra tensor or re-run the conversion and write a new manifest.",
         "'extra.weight' in model.safetensors is not in the manifest")


def check_manifest(contents: FolderContents) -> Iterator[Finding]:
    """Compare every tensor's dtype, shape and sha256 with the manifest."""
    path = contents.options.manifest
    if not path:
        return
    try:
        document = load_json_file(path)  # an object: load_json_file refuses any other top-level value
    except (JsonError, FormatError) as exc:
        yield finding("HFC720", f"{path}: {exc.message}")
        return
    manifest: dict[str, Any] = document if isinstance(document, dict) else {}
    entries = manifest.get("tensors")
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(entries, dict):
        yield finding("HFC720", f"{path} is not an hfconv manifest (format {manifest.get('format')!r}, "
                      f"expected {MANIFEST_FORMAT!r})")
        return
    tensors, where = contents.loaded_tensors, contents.tensor_files
    for name, entry in entries.items():
        if name not in tensors:
            yield finding("HFC722", f"{name!r} is in the manifest but not in the folder's weights", tensor=name)
            continue
        if not isinstance(entry, dict):
            yield finding("HFC720", f"{path}: entry for {name!r} is not an object", tensor=name)
            continue
        yield from _compare(contents, name, entry, "the manifest")
    # A tied alias convert dropped (the source folder still has it) must equal its target.
    dropped = manifest.get("dropped_aliases")
    dropped = dropped if isinstance(dropped, dict) else {}
    for name in sorted(tensors.keys() - entries.keys()):
        target = dropped.get(name)
        if isinstance(target, str) and isinstance(entries.get(target), dict):
            yield from _compare(contents, name, entries[target], f"the manifest entry of {target!r}, its tie")
            continue
        yield finding("HFC723", f"{name!r} in {where[name]} is not in the manifest", file=where[name], tensor=name)


def _compare(contents: FolderContents, name: str, entry: dict[str, Any], against: str) -> Iterator[Finding]:
    """The tensor's dtype, shape and sha256 against one manifest entry."""
    from ..tensor_bytes import LocateError  # with a manifest only: a plain validate does not import it

    meta, file = contents.loaded_tensors[name], contents.tensor_files[name]
    if entry.get("dtype") != meta.dtype or list(entry.get("shape", [])) != list(meta.shape):
        yield finding("HFC721", f"{file}: {name!r} is {meta.dtype}{list(meta.shape)} but {against} says "
                      f"{entry.get('dtype')}{entry.get('shape')}", file=file, tensor=name)
        return
    try:
        digest = tensor_sha256(contents.folder.path(file), contents.weights[file], meta)
    except (OSError, FormatError, LocateError) as exc:
        why = getattr(exc, "message", None) or getattr(exc, "detail", None) or str(exc)
        yield finding("HFC721", f"{file}: reading {name!r} failed: {why}; its bytes cannot match {against} (was "
                      "the file truncated or changed since?)", file=file, tensor=name)
        return
    if digest != entry.get("sha256"):
        yield finding("HFC721", f"{file}: {name!r} sha256 differs from {against} (the bytes changed "
                      "since conversion)", file=file, tensor=name)


def tensor_sha256(path: str | os.PathLike[str], weight_file: WeightFile, meta: TensorMeta) -> str:
    """sha256 of a tensor's bytes in row-major order, read from its file.

    Read with ``pread``, never memory-mapped: a file truncated while it is read is an error,
    not a SIGBUS. Contiguous tensors are hashed as they are read, through one reused buffer; a
    strided ``.bin`` view is read as its span and gathered (:func:`hfconv.tensor_bytes.gather`,
    bounded by that one tensor), and so is a big-endian one, whose bytes are swapped to the
    little-endian order convert writes.

    Raises:
        FormatError: the file is not a regular file (any more).
        LocateError: the tensor's bytes do not fit the file as it is now.
        OSError: reading failed, or the file ended first (truncated while read).
    """
    import hashlib  # with a manifest only: a plain validate does not import it

    from ..tensor_bytes import gather, locate, pread_full

    digest = hashlib.sha256()
    with open_regular(path) as handle:
        fd = handle.fileno()
        span = locate(meta, weight_file, os.fstat(fd).st_size)
        if span.stride is None and not span.byteswap:
            buffer = memoryview(bytearray(min(_CHUNK, span.end - span.begin)))
            for start in range(span.begin, span.end, _CHUNK):
                view = buffer[:min(_CHUNK, span.end - start)]
                pread_full(fd, view, start)
                digest.update(view)
            return digest.hexdigest()
        import numpy as np

        size = itemsize(meta.dtype)
        raw = bytearray(span.end - span.begin)
        pread_full(fd, memoryview(raw), span.begin)
        if span.stride is None:
            data = bytes(raw)
        else:
            data = gather(raw, 0, meta.shape, span.stride, f"V{size}").tobytes()
        if span.byteswap:  # the manifest records little-endian bytes, as convert writes them
            data = np.frombuffer(data, dtype=np.uint8).reshape(-1, swap_unit(meta.dtype))[:, ::-1].tobytes()
        digest.update(data)
        return digest.hexdigest()
