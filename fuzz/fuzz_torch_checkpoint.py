"""Fuzz hfconv's torch checkpoint reader (restricted unpickler, zip and legacy containers).

Run (see fuzz/README.md)::

    python fuzz/make_seed_corpus.py
    python fuzz/fuzz_torch_checkpoint.py fuzz/corpus-torch -max_total_time=1800 -print_final_stats=1

Input format: the first byte picks a mode, the rest is the payload.

* even first byte: the payload is the file, as is (zip archive, legacy stream, anything);
* odd first byte: the payload is a pickle; the harness wraps it as ``archive/data.pkl`` in a
  well-formed torch zip (version, byteorder, four small stored storages ``data/0..3``) with a
  correct CRC, so mutations reach the interpreter instead of stopping at the CRC check.

Only :class:`hfconv.tensors.FormatError` may escape ``read_torch_checkpoint``.
"""

from __future__ import annotations

import io
import zipfile

import atheris

from _common import fuzz, reader_target

with atheris.instrument_imports(include=["hfconv"]):
    from hfconv.readers.torch_checkpoint import read_torch_checkpoint
    from hfconv.tensors import FormatError

STORAGE_BYTES = 64


def wrap_pickle(pkl: bytes) -> bytes:
    """A torch-style zip holding ``pkl`` as data.pkl (what torch.save writes around it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", b"little")
        for key in range(4):
            zf.writestr(f"archive/data/{key}", bytes(STORAGE_BYTES))
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


TestOneInput = reader_target(read_torch_checkpoint, wrap_pickle, ".bin", FormatError)


if __name__ == "__main__":
    fuzz(TestOneInput)
