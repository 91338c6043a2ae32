"""Fuzz hfconv's safetensors header reader.

Run (see fuzz/README.md)::

    python fuzz/make_seed_corpus.py
    python fuzz/fuzz_safetensors.py fuzz/corpus-safetensors -max_total_time=1800 -print_final_stats=1

Input format: the first byte picks a mode, the rest is the payload.

* even first byte: the payload is the file, as is (8-byte length, header, data);
* odd first byte: the payload is the JSON header text; the harness prepends the correct
  length and appends as many data bytes as the largest ``data_offsets`` end it can find
  (capped), so mutations exercise the header checks rather than the length prefix.

Only :class:`hfconv.tensors.FormatError` may escape ``read_safetensors``.
"""

from __future__ import annotations

import re
import struct

import atheris

from _common import fuzz, reader_target

with atheris.instrument_imports(include=["hfconv"]):
    from hfconv.readers.safetensors_header import read_safetensors
    from hfconv.tensors import FormatError

_OFFSETS_RE = re.compile(rb'"data_offsets"\s*:\s*\[\s*(\d{1,9})\s*,\s*(\d{1,9})\s*\]')
MAX_DATA = 1 << 20


def wrap_header(header: bytes) -> bytes:
    ends = [int(m.group(2)) for m in _OFFSETS_RE.finditer(header)]
    data_len = min(max(ends, default=0), MAX_DATA)
    return struct.pack("<Q", len(header)) + header + bytes(data_len)


TestOneInput = reader_target(read_safetensors, wrap_header, ".safetensors", FormatError)


if __name__ == "__main__":
    fuzz(TestOneInput)
