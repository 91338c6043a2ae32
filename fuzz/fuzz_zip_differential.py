"""Differential fuzzing: hfconv's torch checkpoint reader against torch's own reader.

For every mutated file, whatever hfconv accepts, torch must read the same way:

* ``read_torch_checkpoint`` returns a WeightFile => ``torch._C.PyTorchFileReader`` opens the file
  and ``torch.load(weights_only=True)`` gives the same tensor names, in order, with the same
  dtypes, shapes and strides, and the bytes hfconv located at its offsets are the tensor's bytes;
* ``pickle_scan`` walks a zip's data.pkl => it is the data.pkl torch's reader returns.

Anything else (hfconv accepts a file torch refuses, or reads other tensors or another pickle)
is a parser differential: the harness raises and atheris records the input. torch.load only ever
runs with ``weights_only=True``; nothing is unpickled otherwise.

With atheris installed (``pip install atheris``), run it like the other harnesses::

    python fuzz/make_seed_corpus.py
    python fuzz/fuzz_zip_differential.py fuzz/corpus-torch -max_total_time=300 -print_final_stats=1 -timeout=20

Without atheris, the same check runs as a plain random-mutation loop (zip-aware mutations:
offsets, sizes, comments, spliced archives, inserted local headers)::

    python fuzz/fuzz_zip_differential.py --plain fuzz/corpus-torch --seconds 300 [--seed N] [--out DIR]

Input format (both modes): the first byte picks a mode: even, the rest is the file as is; odd,
the rest is a data.pkl wrapped in a well-formed torch zip (see fuzz_torch_checkpoint.py).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import struct
import sys
import time
import warnings
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

try:
    import atheris
except ImportError:  # the plain loop needs no atheris
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["hfconv"]):
        from hfconv.readers import torch_checkpoint as tc
        from hfconv.readers import torch_zip as tz
        from hfconv.tensors import FormatError
else:
    from hfconv.readers import torch_checkpoint as tc
    from hfconv.readers import torch_zip as tz
    from hfconv.tensors import FormatError

import torch  # noqa: E402 - after the instrumented imports
from _common import MAX_INPUT, Scratch, limit_memory  # noqa: E402

from hfconv.dtypes import TORCH_DTYPE  # noqa: E402

warnings.simplefilter("ignore")
STORAGE_BYTES = 64


class Differential(AssertionError):
    """hfconv and torch read the same bytes differently."""


def wrap_pickle(pkl: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", b"little")
        for key in range(4):
            zf.writestr(f"archive/data/{key}", bytes(STORAGE_BYTES))
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


def _torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_file(path: str, data: bytes) -> str:
    """Compare both readers on one file; return a verdict word, raise Differential on a mismatch."""
    try:
        weight_file = tc.read_torch_checkpoint(path)
    except FormatError as err:
        if not (isinstance(err.code, str) and err.code.startswith("HFC") and err.message):
            raise AssertionError(f"FormatError without code/message: {err.code!r}") from None
        weight_file = None
    _check_scan(path, data)
    if weight_file is None:
        return "refused"
    if weight_file.format != "zip":
        return "accepted-legacy"  # the legacy stream has no zip to differ on
    try:
        torch._C.PyTorchFileReader(path)
        loaded = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch refusing is the finding
        raise Differential(f"hfconv accepts a file torch refuses: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(loaded, dict):
        raise Differential(f"torch loads a {type(loaded).__name__}, hfconv a state dict")
    if list(loaded) != list(weight_file.tensors):
        raise Differential(f"tensor names differ: torch {list(loaded)[:5]}, hfconv {list(weight_file.tensors)[:5]}")
    for name, tensor in loaded.items():
        meta = weight_file.tensors[name]
        if not isinstance(tensor, torch.Tensor):
            raise Differential(f"'{name}' is a {type(tensor).__name__} to torch")
        if TORCH_DTYPE.get(_torch_dtype_name(tensor.dtype)) != meta.dtype or tuple(tensor.shape) != meta.shape:
            raise Differential(f"'{name}': torch {tensor.dtype} {tuple(tensor.shape)}, "
                               f"hfconv {meta.dtype} {meta.shape}")
        if meta.stride != tensor.stride() or meta.storage_offset != tensor.storage_offset():
            raise Differential(f"'{name}': strides or offset differ")
        storage = weight_file.storages[meta.storage_key]
        if meta.is_contiguous and tensor.numel():
            start = storage.data_offset + meta.storage_offset * tensor.element_size()
            raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            if data[start:start + len(raw)] != raw:
                raise Differential(f"'{name}': the bytes at hfconv's offset {start} are not torch's tensor")
    return "accepted"


def _check_scan(path: str, data: bytes) -> None:
    """The data.pkl hfconv's leftover scan walks is the one torch unpickles."""
    if not data.startswith(b"PK"):
        return
    try:
        with open(path, "rb") as f:
            entries = tz.zip_entries(f, len(data))
            pickles = [e for e in entries if tz.fold(e.name).endswith("/data.pkl")]
            if len(pickles) != 1:
                return
            ours = tz.zip_member_bytes(f, pickles[0], tc.MAX_SCAN_BYTES)
    except (FormatError, OSError):
        return  # refused: nothing scanned, nothing to differ
    try:
        theirs = torch._C.PyTorchFileReader(path).get_record("data.pkl")
    except Exception:  # noqa: BLE001 - torch cannot read it: torch.load fails before unpickling
        return
    if bytes(theirs) != ours:
        raise Differential("hfconv scans one data.pkl, torch's reader returns another")


# --------------------------------------------------------------------------------------------
# atheris entry point
# --------------------------------------------------------------------------------------------

_scratch: Scratch | None = None


def TestOneInput(data: bytes) -> None:  # noqa: N802 - libFuzzer's name
    global _scratch
    if not data or len(data) > MAX_INPUT:
        return
    if _scratch is None:
        _scratch = Scratch(".bin")
    mode, payload = data[0], data[1:]
    content = wrap_pickle(payload) if mode & 1 else payload
    _scratch.write(content)
    check_file(_scratch.path, content)


# --------------------------------------------------------------------------------------------
# the plain loop: zip-aware random mutations
# --------------------------------------------------------------------------------------------

def _eocd(data: bytes) -> int:
    return data.rfind(b"PK\x05\x06", 0, max(len(data) - 18, 0))


def _mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(12)
    if not data:
        return bytes(rng.randbytes(rng.randrange(1, 64)))
    if kind == 0:  # flip bits
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # overwrite a little-endian field with an interesting value
        pos = rng.randrange(len(data))
        value = rng.choice([0, 1, 2, 0xFF, 0xFFFF, 0xFFFFFFFF, len(data), rng.randrange(len(data) + 64)])
        width = rng.choice([2, 4, 8])
        data[pos:pos + width] = value.to_bytes(8, "little")[:width]
    elif kind == 2:  # insert bytes (junk, or a local header copied from elsewhere)
        pos = rng.randrange(len(data) + 1)
        at = data.find(b"PK\x03\x04", rng.randrange(len(data)))
        blob = bytes(data[at:at + rng.randrange(30, 200)]) if at >= 0 and rng.random() < 0.5 else rng.randbytes(
            rng.randrange(1, 40))
        data[pos:pos] = blob
    elif kind == 3:  # delete a range
        pos = rng.randrange(len(data))
        del data[pos:pos + rng.randrange(1, 64)]
    elif kind == 4:  # a comment on the end record, maybe holding another archive
        end = _eocd(bytes(data))
        if end >= 0:
            other = rng.choice(seeds)[1:]
            comment = other[: 0xFFFF] if rng.random() < 0.5 else rng.randbytes(rng.randrange(1, 40))
            data[end + 20:end + 22] = struct.pack("<H", len(comment) if rng.random() < 0.8 else rng.randrange(0x10000))
            data[end + 22:] = comment
    elif kind == 5:  # trailing data
        data += rng.choice([rng.randbytes(rng.randrange(1, 64)), bytes(data[_eocd(bytes(data)):])])
    elif kind == 6:  # shift a central-directory offset
        pos = data.find(b"PK\x01\x02", rng.randrange(len(data)))
        if pos >= 0 and pos + 46 <= len(data):
            old = struct.unpack_from("<I", data, pos + 42)[0]
            struct.pack_into("<I", data, pos + 42, max(0, old + rng.randrange(-64, 65)) & 0xFFFFFFFF)
    elif kind == 7:  # the zip64 locator's disk count or offset
        pos = data.rfind(b"PK\x06\x07")
        if pos >= 0 and pos + 20 <= len(data):
            field = rng.choice([(16, 4), (8, 8), (4, 4)])
            data[pos + field[0]:pos + field[0] + field[1]] = rng.choice([0, 1, 2, 0xFFFFFFFF]).to_bytes(8, "little")[
                :field[1]]
    elif kind == 8:  # splice two seeds
        other = rng.choice(seeds)[1:]
        cut = rng.randrange(len(data))
        data = data[:cut] + other[rng.randrange(max(len(other), 1)):]
    elif kind == 9:  # duplicate an end record
        end = _eocd(bytes(data))
        if end >= 0:
            data += data[end:end + 22]
    elif kind == 10:  # sizes in a local header or directory entry
        sig = rng.choice([b"PK\x03\x04", b"PK\x01\x02"])
        pos = data.find(sig, rng.randrange(len(data)))
        if pos >= 0:
            off = 18 if sig == b"PK\x03\x04" else 20
            if pos + off + 8 <= len(data):
                struct.pack_into("<I", data, pos + off + rng.choice([0, 4]), rng.randrange(0, 1 << 16))
    else:  # rewrite data.pkl with a mutated pickle, CRC fixed (reaches the interpreter)
        try:
            zin = zipfile.ZipFile(io.BytesIO(bytes(data)))
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w") as zout:
                for info in zin.infolist():
                    body = zin.read(info.filename)
                    if info.filename.endswith("/data.pkl") and body:
                        body = bytearray(body)
                        body[rng.randrange(len(body))] = rng.randrange(256)
                    zout.writestr(info.filename, bytes(body))
            data = bytearray(out.getvalue())
        except Exception:  # noqa: BLE001 - not a zip Python reads: flip a byte instead
            data[rng.randrange(len(data))] ^= 0xFF
    return bytes(data[:MAX_INPUT])


def plain_loop(corpus: Path, seconds: float, seed: int, out: Path) -> int:
    seeds = [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()]
    seeds = [s for s in seeds if s and not s[0] & 1] or [b"\x00" + wrap_pickle(b"\x80\x02}q\x00.")]
    rng = random.Random(seed)
    scratch = Scratch(".bin")
    counts: dict[str, int] = {}
    failures = 0
    started = time.monotonic()
    runs = 0
    while time.monotonic() - started < seconds:
        data = rng.choice(seeds)[1:]
        for _ in range(rng.randrange(1, 4)):
            data = _mutate(rng, data, seeds)
        scratch.write(data)
        runs += 1
        try:
            verdict = check_file(scratch.path, data)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded
            failures += 1
            out.mkdir(parents=True, exist_ok=True)
            name = out / f"diff-{hashlib.sha1(data).hexdigest()[:16]}"
            name.write_bytes(b"\x00" + data)
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            verdict = "failed"
        counts[verdict] = counts.get(verdict, 0) + 1
    elapsed = time.monotonic() - started
    print(f"plain loop: {runs} inputs in {elapsed:.0f} s, seed {seed}: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)
    return 1 if failures else 0


def main() -> int:
    if "--plain" in sys.argv or atheris is None:
        parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        parser.add_argument("--plain", action="store_true")
        parser.add_argument("corpus", type=Path)
        parser.add_argument("--seconds", type=float, default=300)
        parser.add_argument("--seed", type=int, default=int(time.time()))
        parser.add_argument("--out", type=Path, default=Path("fuzz-differential-failures"))
        args, _ = parser.parse_known_args()
        limit_memory()
        return plain_loop(args.corpus, args.seconds, args.seed, args.out)
    limit_memory()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
