"""Build the seed corpora for the fuzz harnesses from the repository's fixtures.

    python fuzz/make_seed_corpus.py            # writes fuzz/corpus-torch/, fuzz/corpus-safetensors/

Every seed starts with the harness's mode byte (see the harness docstrings): ``\\x00`` for a
whole file, ``\\x01`` for a bare payload (data.pkl for the torch harness, header JSON for the
safetensors one). Seeds come from the real fixture weight files, plus small files saved with
torch / safetensors (more dtypes, shared storages, parameters, views, the legacy format)
when those libraries are installed. The corpora are generated, not committed
(``.gitignore`` lists ``fuzz/corpus-*/``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import struct
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def _save(folder: Path, blob: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(blob).hexdigest()[:16]).write_bytes(blob)


def torch_seeds() -> list[bytes]:
    seeds: list[bytes] = []
    for path in sorted(FIXTURES.glob("*/*.bin")):
        blob = path.read_bytes()
        seeds.append(b"\x00" + blob)
        if blob.startswith(b"PK"):
            with zipfile.ZipFile(io.BytesIO(blob)) as zf:
                pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
                seeds.append(b"\x01" + zf.read(pkl))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but stay usable without it
        print("torch not installed: only fixture seeds", file=sys.stderr)
        return seeds
    base = torch.arange(16, dtype=torch.float32)
    dicts = {
        "f32": {"w": base.clone()},
        "dtypes": {d: torch.zeros(2, dtype=getattr(torch, d)) for d in
                   ("float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")},
        "untyped": {"f8": torch.zeros(4, dtype=torch.float8_e4m3fn), "u16": torch.zeros(2, dtype=torch.uint16)},
        "shared": {"a": base, "b": base},
        "view": {"t": base.view(4, 4).t(), "s": base[2:6]},
        "param": {"p": torch.nn.Parameter(torch.ones(3))},
        "empty": {},
        "scalar": {"x": torch.tensor(1.5)},
    }
    for name, sd in dicts.items():
        for new_zip in (True, False):
            if name == "untyped" and not new_zip:
                continue
            buf = io.BytesIO()
            torch.save(sd, buf, _use_new_zipfile_serialization=new_zip)
            blob = buf.getvalue()
            seeds.append(b"\x00" + blob)
            if new_zip:
                with zipfile.ZipFile(io.BytesIO(blob)) as zf:
                    pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
                    seeds.append(b"\x01" + zf.read(pkl))
    return seeds


def safetensors_seeds() -> list[bytes]:
    seeds: list[bytes] = []
    for path in sorted(FIXTURES.glob("**/*.safetensors")):
        blob = path.read_bytes()
        if len(blob) <= 32 << 10:  # the small family fixtures; the llama ones are mostly data
            seeds.append(b"\x00" + blob)
        (n,) = struct.unpack_from("<Q", blob)
        seeds.append(b"\x01" + blob[8:8 + n])
    try:
        import numpy as np
        from safetensors.numpy import save
    except ImportError:  # pragma: no cover
        print("safetensors/numpy not installed: only fixture seeds", file=sys.stderr)
        return seeds
    seeds.append(b"\x00" + save({"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.int64)},
                                metadata={"format": "pt"}))
    seeds.append(b"\x00" + save({"e": np.zeros((0, 4), np.float16)}))
    seeds.append(b"\x00" + save({}))
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    for name, seeds in (("corpus-torch", torch_seeds()), ("corpus-safetensors", safetensors_seeds())):
        for blob in seeds:
            _save(args.out / name, blob)
        print(f"{name}: {len(seeds)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
