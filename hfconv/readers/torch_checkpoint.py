"""Read torch ``.bin`` / ``.pt`` / ``.pth`` checkpoints without unpickling them.

``torch.load`` runs a pickle, and a pickle can call any importable function: a model folder
from the hub is untrusted, so this module never imports torch and never uses
``pickle.Unpickler``. Instead it

* sniffs the content (zip, legacy pickle stream, tar, git-lfs pointer, HTML, ...),
* parses the zip container's central directory and local headers itself (:mod:`.torch_zip`; metadata only;
  storages are never read or decompressed), finding the end record exactly as torch's reader
  (miniz) does and refusing a file any other reader could read as another archive (HFC213:
  trailing data, zip records in the comment, bytes no entry covers),
* interprets the pickle with a small opcode-level stack machine that knows exactly the
  opcodes and globals ``torch.save`` emits for a state dict at protocol 2. The "globals"
  are never imported: they are names checked against an allow-list, and each may only be
  used in the one position where torch puts it.

The result is a :class:`~hfconv.tensors.WeightFile` whose tensors are views (offset,
shape, stride) of storages located by absolute file offset, so a converter can read the raw
bytes directly.

Supported pickle opcodes (protocol 2, what ``torch.save`` writes)::

    PROTO GLOBAL BINPUT LONG_BINPUT BINGET LONG_BINGET MARK EMPTY_DICT EMPTY_LIST
    EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 SETITEM SETITEMS APPEND APPENDS BININT BININT1
    BININT2 LONG1 BINUNICODE NONE NEWTRUE NEWFALSE BINFLOAT REDUCE BINPERSID BUILD STOP

Everything else (STACK_GLOBAL, FRAME, INST, OBJ, NEWOBJ, EXT*, BINBYTES, ...) is refused. A
refused pickle, a training leftover and a text-looking file are then walked to their end by
:mod:`.pickle_vm` (every protocol, never executed) to name the globals they would import.
"""

from __future__ import annotations

import math
import os
import pickletools
import re
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

from ..dtypes import STORAGE_CLASS_DTYPE, TORCH_DTYPE, itemsize
from ..fsutil import open_regular
from ..tensors import FormatError, ReaderNote, StorageMeta, TensorMeta, WeightFile
from .pickle_vm import COMPUTED_GLOBAL, MAX_WALK_BYTES, MAX_WALK_OPCODES, ScanResult, scan_pickle
from .torch_zip import (
    ZipEntry,
    fold,
    method_name,
    read_at,
    zip_entries,
    zip_member_bytes,
)

__all__ = ["read_torch_checkpoint", "sniff_checkpoint", "pickle_globals", "pickle_scan", "ALLOWED_GLOBALS",
           "SUPPORTED_OPCODES"]

# --- limits ----------------------------------------------------------------------------------
# Every limit is checked before the corresponding allocation, so a hostile file cannot make
# the reader use much more memory than the (capped) pickle it holds.
MAX_PICKLE_BYTES = 64 << 20
"""data.pkl (or one legacy pickle) larger than this is refused before it is read. torch.save
writes about 100 bytes of pickle per tensor, so MAX_OPCODES is reached long before this."""
MAX_OPCODES = 2_000_000
"""Opcodes (and units of work: a BUILD costs one per key of its state) one pickle may take: about
65,000 tensors in one file (torch.save writes about 30 opcodes per tensor) and a few seconds of
Python. The cap keeps every hostile pickle under the time budget."""
MAX_MEMO = 1_000_000
MAX_CONTAINERS = 400_000
"""Dicts and lists one pickle may build (about 150 bytes each): torch.save writes one dict per
tensor (its empty backward-hooks OrderedDict), so this is over the tensors MAX_OPCODES allows."""
MAX_STACK = 1_000_000
"""torch.save's pickler batches SETITEMS by 1000, so a real state dict never has more than a
few thousand items on the stack; a million (8 MB of pointers) is ample and bounds a push bomb."""
MAX_MARK_DEPTH = 64
"""torch nests MARKs about 3 deep; 64 leaves room and bounds the mark stack."""
MAX_STRING_BYTES = 1 << 20
MAX_GLOBAL_LINE = 256
MAX_TENSORS = 1_000_000
MAX_NDIM = 64
MAX_DIM_VALUE = (1 << 62)
MAX_SMALL_RECORD = 4096
"""byteorder and friends are a few bytes; anything bigger is not what torch wrote."""
MAX_VIEW_EXPANSION_BYTES = 256 << 20
"""A view may read more logical bytes than its storage holds (stride 0, overlapping strides),
but not more than this many, or a 24-byte storage could claim terabytes."""
MAX_SCAN_BYTES = MAX_WALK_BYTES
"""How much of a pickle the forbidden-global walk (:mod:`.pickle_vm`) looks at."""
MAX_SCAN_OPCODES = MAX_WALK_OPCODES

TORCH_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001

# --- the allow-list --------------------------------------------------------------------------
_CALLABLES = frozenset({
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
})
_UNTYPED_STORAGE = "torch.storage.UntypedStorage"
_STORAGE_CLASSES: dict[str, str | None] = {f"torch.{cls}": dt for cls, dt in STORAGE_CLASS_DTYPE.items()}
_STORAGE_CLASSES[_UNTYPED_STORAGE] = None  # bytes; the tensor's dtype comes from _rebuild_tensor_v3
_DTYPE_GLOBALS: dict[str, str] = {f"torch.{name}": dt for name, dt in TORCH_DTYPE.items()}

ALLOWED_GLOBALS: frozenset[str] = frozenset(_CALLABLES) | frozenset(_STORAGE_CLASSES) | frozenset(_DTYPE_GLOBALS)
"""Every ``module.name`` a checkpoint pickle may reference."""

# Real torch storage classes and dtypes hfconv cannot represent. They are harmless names, so
# they get their own code (HFC211) rather than the "forbidden global" alarm.
_UNSUPPORTED_TORCH_TYPES = frozenset(
    [f"torch.{c}" for c in ("ComplexDoubleStorage", "QInt8Storage", "QUInt8Storage", "QInt32Storage",
                            "QUInt4x2Storage", "QUInt2x4Storage")]
    + [f"torch.{d}" for d in ("complex128", "cdouble", "complex32", "chalf", "float8_e4m3fnuz",
                              "float8_e5m2fnuz", "float4_e2m1fn_x2", "qint8", "quint8", "qint32", "quint4x2",
                              "quint2x4", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16")]
    + [f"torch.int{i}" for i in range(1, 8)] + [f"torch.uint{i}" for i in range(1, 8)]
)

SUPPORTED_OPCODES: tuple[str, ...] = (
    "PROTO", "GLOBAL", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET", "MARK", "EMPTY_DICT",
    "EMPTY_LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "SETITEM", "SETITEMS",
    "APPEND", "APPENDS", "BININT", "BININT1", "BININT2", "LONG1", "BINUNICODE", "NONE",
    "NEWTRUE", "NEWFALSE", "BINFLOAT", "REDUCE", "BINPERSID", "BUILD", "STOP",
)

_STORAGE_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")
# Device tags torch.save writes as a storage's location ("cpu", "cuda:0", ...).
_LOCATION_RE = re.compile(r"(cpu|cuda|mps|meta|xpu|hpu|xla|mtia|ipu|npu|maia|lazy|vulkan|ve|privateuseone)"
                          r"(:[0-9]{1,4})?\Z")
_LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_F64_BE = struct.Struct(">d")


# =============================================================================================
# public API
# =============================================================================================

def read_torch_checkpoint(path: str | os.PathLike) -> WeightFile:
    """Describe the tensors of a torch checkpoint without executing or importing anything.

    Args:
        path: a ``.bin`` / ``.pt`` / ``.pth`` file. Its content decides the format, not its
            name: torch zip (torch >= 1.6) or legacy pickle stream (``format="legacy"``).

    Returns:
        A WeightFile with ``format`` ``"zip"`` or ``"legacy"``; ``tensors`` in pickle order,
        each a view of one of ``storages`` (whose ``data_offset`` is the absolute file offset
        of the raw little-endian bytes); ``notes`` with HFC206 (shared storage) and HFC207
        (legacy format); ``header_nbytes`` the pickle bytes parsed.

    Raises:
        FormatError: HFC008 unreadable/special file; HFC010 git-lfs pointer; HFC201 forbidden
            pickle global (named in ``.tensor``); HFC202 not a checkpoint; HFC203 malformed or
            unsupported pickle; HFC204 malformed zip; HFC205 missing/short storage; HFC208 not
            a flat state dict; HFC209 view outside its storage; HFC210 TorchScript archive;
            HFC211 dtype hfconv does not support.
    """
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = read_at(f, 0, min(size, 1024))
        try:
            kind = sniff_checkpoint(head, size)
        except FormatError as err:
            # Protocol-0/1 pickles are plain text to a sniffer, and torch.load would still run
            # them: a file that parses as a complete pickle with a forbidden global is an attack.
            if err.code == "HFC202" and size:
                if _is_tar(head):
                    _scan_tar_pickles(f)
                _refuse_text_pickle(f, size, err)
            raise
        if kind == "zip":
            return _read_zip(f, str(path), size)
        if kind == "legacy":
            return _read_legacy(f, str(path), size)
        # sniff_checkpoint only returns "zip" / "legacy" or raises; "pickle" means an
        # unknown-protocol pickle that still deserves a forbidden-global scan.
        _refuse_plain_pickle(read_at(f, 0, min(size, MAX_SCAN_BYTES)))
        raise AssertionError("unreachable")  # pragma: no cover


def pickle_globals(path: str | os.PathLike) -> list[str] | None:
    """Every global a pickled file would import (``module.name``), found by walking opcodes.

    For files that are not state dicts (``training_args.bin``, ``optimizer.pt``): a torch zip's
    ``data.pkl``, or the pickle stream(s) of any other file, walked to the end as an unpickler
    would (an empty list for a file that is no pickle at all). Nothing is executed or imported.

    A walk that cannot finish (an opcode no unpickler knows, a truncated pickle, a cap of
    :mod:`.pickle_vm` hit) adds one last entry ``"<pickle walk stopped: why>"``, never a real
    global name: what follows could import anything, so callers must treat it as one more
    global outside every allow-list. Returns None for a zip this module's strict parser refuses
    (torch might read it differently) or a file that cannot be read.
    """
    scan = pickle_scan(path)
    if scan is None:
        return None
    if scan.complete:
        return list(scan.globals)
    return [*scan.globals, f"<pickle walk stopped: {scan.problem}>"]


def pickle_scan(path: str | os.PathLike) -> ScanResult | None:
    """The :class:`~hfconv.readers.pickle_vm.ScanResult` of the pickle torch.load would run on
    ``path`` (a zip's ``data.pkl``, or the file's pickle stream: torch's legacy format is up to
    five pickles in a row). ``ScanResult.complete`` is False when the walk could not reach the
    end (its ``problem`` and ``cap`` say why): treat that as an error. None for a zip hfconv's
    strict parser refuses (HFC204/HFC213: torch might read another archive) or an unreadable file.
    A file that is not a pickle at all gives a complete scan with no globals only when it cannot
    be unpickled from its first byte."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = read_at(f, 0, min(size, 4))
            if head.startswith(b"PK"):
                pickles = [e for e in zip_entries(f, size) if fold(e.name).endswith("/data.pkl")]
                if len(pickles) > 1:
                    return None
                if not pickles:
                    return ScanResult()  # torch.load fails before unpickling anything
                entry = pickles[0]
                if entry.size > MAX_SCAN_BYTES:
                    return ScanResult(problem=f"data.pkl is {entry.size} bytes, over hfconv's limit of "
                                              f"{MAX_SCAN_BYTES}", cap=f"{MAX_SCAN_BYTES} bytes")
                return scan_pickle(zip_member_bytes(f, entry, MAX_SCAN_BYTES))
            if size == 0:
                return ScanResult()
            scan = scan_pickle(read_at(f, 0, min(size, MAX_SCAN_BYTES + 1)), multi=True)
            if scan.pickles == 0 and not scan.globals and scan.cap is None and not _starts_like_pickle(head):
                return ScanResult()  # not a pickle: torch.load fails on its first byte
            return scan
    except (FormatError, OSError):
        return None


def _starts_like_pickle(head: bytes) -> bool:
    """A first byte an unpickler accepts and that starts every real pickle (PROTO, or a
    protocol-0/1 value opcode)."""
    return head[:1] in (b"\x80", b"(", b"c", b"}", b"]", b")", b"N", b"I", b"L", b"S", b"V", b"X", b"U", b"T", b"d",
                        b"l", b"K", b"J", b"M", b"F", b"G")


def sniff_checkpoint(head: bytes, size: int) -> str:
    """Classify a file by its first bytes.

    Args:
        head: the first bytes of the file (1 KiB is plenty; fewer is fine).
        size: the file's full size in bytes.

    Returns:
        ``"zip"`` for a zip archive (torch >= 1.6), ``"legacy"`` for a protocol-2 pickle
        stream (pre-1.6 torch.save), ``"pickle"`` for something that looks like a pickle of
        another protocol (never a torch checkpoint, but worth scanning for globals).

    Raises:
        FormatError: HFC010 for a git-lfs pointer; HFC202 for anything else, saying what the
            file looks like.
    """
    if size == 0 or not head:
        raise FormatError("HFC202", "is an empty file, not a torch checkpoint")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x80\x02"):
        return "legacy"
    if head.startswith(_LFS_PREFIX):
        raise FormatError("HFC010", "is a git-lfs pointer (LFS object not pulled); run `git lfs pull`")
    if _is_tar(head):
        raise FormatError("HFC202", "is a tar archive (legacy tar checkpoint, not supported); "
                                    "re-save it with a current torch.save")
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in (0, 1, 3, 4, 5):
        return "pickle"
    raise FormatError("HFC202", f"is {describe_content(head, size)}, not a torch checkpoint")


# =============================================================================================
# content sniffing
# =============================================================================================

def describe_content(head: bytes, size: int) -> str:
    """A few words on what a non-checkpoint file looks like, for the HFC202 message."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file"
    if head.startswith(b"BZh"):
        return "a bzip2 file"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "an xz file"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy file"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file"
    if len(head) >= 10 and head[8:10] in (b'{"', b"{'", b"{ ") and _U64.unpack_from(head)[0] < size:
        return "a safetensors file (rename it to .safetensors)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text[:512]:
        return "an HTML page (a download error page?)"
    if text.startswith(b"<?xml") or text.startswith(b"<"):
        return "an XML/HTML document"
    if text.startswith((b"{", b"[")):
        return "JSON text"
    if _looks_like_text(head):
        return "a text file"
    return f"unrecognised binary data (starts with {head[:8].hex(' ')})"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A 1 KiB cut can split a multi-byte character; retry without the last 3 bytes.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


_TAR_PICKLES = ("sys_info", "storages", "tensors", "pickle")
MAX_TAR_MEMBERS = 64


def _scan_tar_pickles(f: BinaryIO) -> None:
    """A legacy tar checkpoint is refused (HFC202), but torch.load still unpickles its
    ``sys_info``, ``storages``, ``tensors`` and ``pickle`` members: name a forbidden global in
    them (HFC201). Only tar headers and those members (each capped) are read; nothing is
    extracted, and a damaged archive simply ends the scan."""
    import tarfile

    f.seek(0)
    budget = MAX_SCAN_BYTES  # in all: a file of many large 'pickle' members stays one scan's cost
    try:
        with tarfile.open(fileobj=_CappedReader(f, MAX_SCAN_BYTES), mode="r:") as tar:
            for count, member in enumerate(tar):
                if count >= MAX_TAR_MEMBERS or budget <= 0:
                    break
                if member.isfile() and member.name in _TAR_PICKLES and member.size <= budget:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        budget -= member.size
                        _raise_if_forbidden_global(handle.read(member.size), f"tar member '{member.name}'",
                                                   multi=True)
    # RecursionError: tarfile follows chained GNU long-name headers recursively
    except (tarfile.TarError, OSError, EOFError, ValueError, RecursionError):
        pass


class _CappedReader:
    """A file object for tarfile whose reads are capped: tarfile reads a pax or GNU long-name
    header's whole declared size into memory, which a hostile archive can make gigabytes."""

    def __init__(self, f: BinaryIO, cap: int):
        self._f = f
        self._cap = cap

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._cap:
            raise OSError(f"tar read of {n} bytes refused (limit {self._cap})")
        return self._f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def write(self, data: bytes) -> int:  # tarfile's file protocol; never called in read mode
        raise OSError("the checkpoint is opened for reading only")

    def close(self) -> None:  # tarfile leaves a fileobj it was given open; the caller closes f
        pass


def _refuse_plain_pickle(buf: bytes) -> None:
    """A pickle of a protocol torch.save never writes: never a checkpoint, maybe an attack."""
    _raise_if_forbidden_global(buf, "pickle", multi=True)
    proto = buf[1] if len(buf) > 1 else -1
    raise FormatError("HFC202", f"is a pickle of protocol {proto}, not a checkpoint hfconv can read "
                                "(torch.save writes a zip archive, or a protocol-2 pickle stream in the "
                                "legacy format)")


def _refuse_text_pickle(f: BinaryIO, size: int, err: FormatError) -> None:
    """A file the sniffer calls text (or unknown) may be a protocol-0 pickle, all printable,
    that torch.load would still run. Walk it as the unpickler would, to its end (padding does
    not hide what follows): a forbidden global that the walk reaches and then calls, or that a
    walk to STOP passes, is HFC201. A plain text file fails the walk within a few bytes, before
    any call: it stays HFC202. The first MiB is walked first; more is read only when the walk
    runs through all of it."""
    scan = scan_pickle(read_at(f, 0, min(size, 1 << 20)), multi=True)
    if scan.truncated and size > 1 << 20:
        scan = scan_pickle(read_at(f, 0, min(size, MAX_SCAN_BYTES + 1)), multi=True)
    bad = _forbidden(scan.globals)
    if bad and (scan.calls or scan.pickles or scan.cap):
        raise _forbidden_error(bad, "pickle")
    if scan.cap is not None and scan.pickles == 0:
        raise FormatError("HFC203", f"{err.message}; yet it walks as a pickle up to hfconv's limit of {scan.cap} "
                                    "without ending: do not torch.load it")

# =============================================================================================
# zip container
# =============================================================================================


def _read_zip(f: BinaryIO, path: str, file_size: int) -> WeightFile:
    entries = zip_entries(f, file_size)
    if not entries:
        raise FormatError("HFC202", "is an empty zip archive, not a torch checkpoint")
    first = entries[0].name
    if "/" not in first:
        # torch takes the archive's folder from the first entry and refuses top-level files.
        raise FormatError("HFC204", f"first zip entry '{first}' is not inside a folder; torch cannot read it")
    prefix = first.split("/", 1)[0]
    for e in entries:
        if not e.name.startswith(prefix + "/"):
            raise FormatError("HFC204", f"zip entry '{e.name}' is outside the archive folder '{prefix}/'; "
                                        "torch.load refuses the file")
    # torch (miniz) looks records up case-insensitively (ASCII), so this reader does too;
    # zip_entries already refused names that collide under that folding.
    folded = {fold(e.name): e for e in entries}

    def record(name: str) -> ZipEntry | None:
        return folded.get(fold(f"{prefix}/{name}"))

    # torch.load hands any archive with constants.pkl to torch.jit.load: it is TorchScript.
    if record("constants.pkl") is not None:
        raise FormatError("HFC210", "is a TorchScript archive (torch.jit.save), not a state dict; "
                                    "save model.state_dict() with torch.save instead")
    has_code = any(fold(e.name).startswith(fold(f"{prefix}/code/")) for e in entries)
    pkl = record("data.pkl")
    if pkl is None:
        if has_code:
            raise FormatError("HFC210", "is a TorchScript archive (it has code/ and no data.pkl), not a state dict")
        raise FormatError("HFC202", f"is a zip archive without {prefix}/data.pkl, not a torch checkpoint")
    _check_version(f, record(".data/version") or record("version"))
    byte_order = _byte_order(f, record("byteorder"))
    alignment = record(".storage_alignment")
    if alignment is not None:
        # torch.load parses it with int() before loading anything
        try:
            int(zip_member_bytes(f, alignment, MAX_SMALL_RECORD))
        except ValueError:
            raise FormatError("HFC204", ".storage_alignment record is not a number; torch.load fails on it") from None
    serialization_id = record(".data/serialization_id")
    if serialization_id is not None:
        # torch.load reports this id after loading and fails if it is not UTF-8 text.
        try:
            zip_member_bytes(f, serialization_id, MAX_SMALL_RECORD).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("HFC204", ".data/serialization_id is not UTF-8 text; torch.load fails on it") from None

    data = zip_member_bytes(f, pkl, MAX_PICKLE_BYTES)
    interp = _Interpreter(data, label="data.pkl", base=0, legacy=False)
    try:
        root, end = interp.run()
    except _CapHit:
        raise
    except FormatError as err:
        if err.code in ("HFC203", "HFC211") or (has_code and err.code == "HFC201"):
            # The interpreter stops at the first thing it refuses; a forbidden global may follow
            # (behind a decoy dtype or opcode). torch.load without constants.pkl unpickles
            # data.pkl even beside code/, so only TorchScript's own names make it HFC210.
            scan = _raise_if_forbidden_global(data, "data.pkl", allow=_TORCHSCRIPT_NAME if has_code else None)
            if has_code:
                raise FormatError("HFC210", "is a TorchScript archive (code/ plus a pickle of script objects), "
                                            "not a state dict") from None
            raise _with_scan_note(err, scan) from None
        raise
    if end != len(data):
        # torch.load stops at STOP; another reader may go on (unpickling in a loop), so the
        # trailing bytes are scanned too and a global in them is named.
        _raise_if_forbidden_global(data[end:], f"data.pkl: {len(data) - end} bytes after STOP", multi=True)
        raise FormatError("HFC203", f"data.pkl at byte {end}: {len(data) - end} bytes after STOP")

    tensors = _state_dict_tensors(root)
    records: dict[str, tuple[int, int, int | None] | None] = {}
    for key in interp.storages:
        record_name = f"{prefix}/data/{key}"
        entry = record(f"data/{key}")
        if entry is None:
            records[key] = None
            continue
        if entry.method != 0:
            # torch.save never compresses storages, and mmap loading and in-place reading need
            # them stored; a re-zipped checkpoint is refused rather than inflated.
            raise FormatError("HFC204", f"zip entry '{record_name}' is {method_name(entry.method)}-compressed; "
                                        "torch.save stores storages uncompressed (was the file re-zipped?)")
        if entry.compressed_size != entry.size:
            raise FormatError("HFC204", f"zip entry '{record_name}' is stored but its compressed size "
                                        f"{entry.compressed_size} differs from its size {entry.size}")
        records[key] = (entry.data_offset, entry.size, entry.crc)
    notes: tuple[ReaderNote, ...] = ()
    if byte_order == "big":
        notes = (ReaderNote("HFC212", "is a big-endian checkpoint; loaders swap its bytes on little-endian "
                                      "machines, and hfconv convert writes them little-endian"),)
    weight_file = _build_weight_file(path, "zip", interp, tensors, records, prefix, header_nbytes=len(data),
                                     notes=notes, byte_order=byte_order)
    _refuse_unreferenced_entries(entries, prefix, interp.storages)
    return weight_file


# Records torch.save writes besides data.pkl and the storages (torch 1.6 to 2.x); torch.load
# reads only these and the storages data.pkl names.
_TORCH_RECORDS = ("data.pkl", "version", ".data/version", "byteorder", ".format_version", ".storage_alignment",
                  ".data/serialization_id")


def _refuse_unreferenced_entries(entries: list[ZipEntry], prefix: str, storages: dict) -> None:
    """Every member must be a record torch.save writes or a storage data.pkl uses.

    torch.load never looks at anything else, so an extra member (a script, a second pickle, an
    unused storage) is invisible to it but not to other tools that unpack the archive: a place
    to hide a payload, and a parser differential.
    """
    expected = {fold(f"{prefix}/{name}") for name in _TORCH_RECORDS}
    expected.update(fold(f"{prefix}/data/{key}") for key in storages)
    for entry in entries:
        if fold(entry.name) not in expected:
            what = ("a storage data.pkl never uses" if fold(entry.name).startswith(fold(f"{prefix}/data/"))
                    else "no record torch.save writes")
            raise FormatError("HFC204", f"zip entry '{_short(entry.name)}' is {what}; torch.load ignores it, so it "
                                        "can hide anything from a reader that trusts torch (unreferenced entry)")


def _check_version(f: BinaryIO, entry: ZipEntry | None) -> None:
    # torch's zip reader refuses an archive without a (.data/)version record holding a number.
    if entry is None:
        raise FormatError("HFC204", "zip has no version record; torch.load refuses it")
    value = zip_member_bytes(f, entry, MAX_SMALL_RECORD)
    if not re.match(rb"\s*[0-9]{1,6}(\s|\Z)", value):
        raise FormatError("HFC204", f"zip version record holds {value[:32]!r}, not a format version number")


def _byte_order(f: BinaryIO, entry: ZipEntry | None) -> str:
    """``little`` or ``big``, as torch.load reads the byteorder record."""
    if entry is None:
        return "little"  # torch < 1.12 wrote no byteorder record; those files are little-endian
    value = zip_member_bytes(f, entry, MAX_SMALL_RECORD)
    if value in (b"little", b"big"):
        return value.decode()
    raise FormatError("HFC204", f"byteorder record holds {value[:32]!r}, not 'little' or 'big'")


# =============================================================================================
# legacy (pre-1.6) stream: magic, protocol, sys_info, main pickle, key list, raw storages
# =============================================================================================

def _read_legacy(f: BinaryIO, path: str, file_size: int) -> WeightFile:
    pos = 0
    magic, pos = _interpret_in_file(f, pos, file_size, "legacy magic-number pickle")
    if type(magic) is not int or magic != TORCH_MAGIC_NUMBER:
        raise FormatError("HFC202", "is a pickle without torch's magic number, not a torch checkpoint")
    proto, pos = _interpret_in_file(f, pos, file_size, "legacy protocol pickle")
    if type(proto) is not int or proto != TORCH_LEGACY_PROTOCOL:
        raise FormatError("HFC203", f"legacy checkpoint protocol is {_short(proto)}, expected "
                                    f"{TORCH_LEGACY_PROTOCOL}")
    sys_info, pos = _interpret_in_file(f, pos, file_size, "legacy sys_info pickle")
    if not isinstance(sys_info, _Dict):
        raise FormatError("HFC203", f"legacy sys_info is {_describe(sys_info)}, not a dict")
    little = sys_info.items.get("little_endian")
    if little is not True:
        raise FormatError("HFC203", "legacy checkpoint was written on a big-endian machine "
                                    "(sys_info little_endian is not True); hfconv reads little-endian data only")
    interp = _Interpreter(b"", label="legacy main pickle", base=pos, legacy=True)
    root, pos = _interpret_in_file(f, pos, file_size, "legacy main pickle", interp)
    tensors = _state_dict_tensors(root)
    keys, pos = _interpret_in_file(f, pos, file_size, "legacy storage-key pickle")
    header_nbytes = pos
    if not isinstance(keys, _List) or not all(type(k) is str for k in keys.items):
        raise FormatError("HFC203", f"legacy storage-key pickle holds {_describe(keys)}, not a list of strings")
    listed = keys.items
    if len(set(listed)) != len(listed):
        raise FormatError("HFC205", "legacy storage-key list names a storage twice")
    listed_set = set(listed)
    missing = [k for k in interp.storages if k not in listed_set]
    extra = [k for k in listed if k not in interp.storages]
    if missing or extra:
        detail = f"storage '{missing[0]}' has no data" if missing else f"data for unknown storage '{extra[0]}'"
        raise FormatError("HFC205", f"legacy storage-key list does not match the storages the pickle uses ({detail})")

    records: dict[str, tuple[int, int, int | None] | None] = {}
    for key in listed:
        ref = interp.storages[key]
        head = read_at(f, pos, 8)
        if len(head) != 8:
            raise FormatError("HFC205", f"file ends before storage '{key}' (truncated download?)")
        count = _U64.unpack(head)[0]
        if count != ref.raw_numel:
            raise FormatError("HFC205", f"storage '{key}' holds {count} elements in the file but the pickle "
                                        f"declares {ref.raw_numel}")
        nbytes = count * ref.raw_itemsize
        data_offset = pos + 8
        if data_offset + nbytes > file_size:
            raise FormatError("HFC205", f"storage '{key}' needs {nbytes} bytes at {data_offset} but the file ends "
                                        f"at {file_size} (truncated download?)")
        records[key] = (data_offset, nbytes, None)
        pos = data_offset + nbytes
    if pos != file_size:
        raise FormatError("HFC203", f"{file_size - pos} trailing bytes after the last storage")
    note = ReaderNote("HFC207", "is a legacy (pre-torch-1.6) checkpoint")
    return _build_weight_file(path, "legacy", interp, tensors, records, None, header_nbytes=header_nbytes,
                              notes=(note,))


def _interpret_in_file(f: BinaryIO, offset: int, file_size: int, label: str,
                       interp: _Interpreter | None = None) -> tuple[object, int]:
    """Run one pickle that starts at ``offset``; return its value and the offset after STOP.

    The pickle's length is unknown until STOP, so read a growing window: start small (the
    first four legacy pickles are tiny) and retry with a larger one only when the pickle runs
    past the window. Rerunning is cheap next to the storages that follow.
    """
    window = 1 << 16
    available = min(file_size - offset, MAX_PICKLE_BYTES)
    while True:
        n = min(window, available)
        data = read_at(f, offset, n)
        runner = interp if interp is not None else _Interpreter(b"", label=label, base=offset, legacy=False)
        runner.reset(data, base=offset)
        try:
            value, end = runner.run()
        except _Truncated:
            if n >= available:
                scan = _raise_if_forbidden_global(read_at(f, offset, min(file_size - offset, MAX_SCAN_BYTES + 1)),
                                                  label, multi=True)
                if file_size - offset > MAX_PICKLE_BYTES:
                    raise FormatError("HFC203", f"{label} is larger than hfconv's limit of {MAX_PICKLE_BYTES} "
                                                "bytes") from None
                raise _with_scan_note(FormatError("HFC203", f"{label}: pickle ends without STOP (truncated file?)"),
                                      scan) from None
            window *= 16
            continue
        except _CapHit:
            raise
        except FormatError as err:
            if err.code in ("HFC203", "HFC211"):
                # torch.load reads the legacy pickles one after another: scan from here on.
                scan = _raise_if_forbidden_global(read_at(f, offset, min(file_size - offset, MAX_SCAN_BYTES + 1)),
                                                  label, multi=True)
                raise _with_scan_note(err, scan) from None
            raise
        return value, offset + end


# =============================================================================================
# the pickle interpreter
# =============================================================================================

class _CapHit(FormatError):
    """The pickle reached one of hfconv's resource caps: the rest was not looked at (not even by
    the forbidden-global walk, which would pay the same cost again)."""


class _Truncated(FormatError):
    """The pickle ran past the bytes available (caller may retry with more)."""

    def __init__(self, label: str):
        super().__init__("HFC203", f"{label}: pickle ends without STOP (truncated file?)")


class _Global:
    """A name a GLOBAL opcode referenced; never imported."""

    __slots__ = ("name", "kind")

    def __init__(self, name: str, kind: str):
        self.name = name
        self.kind = kind  # "callable" | "storage" | "dtype"


class _Dict:
    """A dict or OrderedDict under construction."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: dict = {}


class _List:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list = []


class _Args:
    """A tuple that holds globals or storages: legal only as a persistent id or REDUCE args."""

    __slots__ = ("kind", "items")

    def __init__(self, kind: str, items: tuple):
        self.kind = kind  # "pid" | "rebuild"
        self.items = items


class _StorageRef:
    """A storage named by a persistent id."""

    __slots__ = ("key", "storage_class", "dtype", "raw_numel", "raw_itemsize", "first_tensor")

    def __init__(self, key: str, storage_class: str, dtype: str | None, raw_numel: int):
        self.key = key
        self.storage_class = storage_class
        self.dtype = dtype  # None for UntypedStorage until a _rebuild_tensor_v3 gives one
        self.raw_numel = raw_numel  # elements (typed) or bytes (untyped), as in the pickle
        self.raw_itemsize = itemsize(dtype) if dtype is not None else 1
        self.first_tensor: str | None = None


class _Tensor:
    """A view of a storage, as the rebuild functions would have built it."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple, dtype: str):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride
        self.dtype = dtype


_SPECIAL = (_Global, _Args, _StorageRef)
_KEY_TYPES = (str, int, bool, float, type(None))

# opcode bytes
_PROTO, _GLOBAL, _BINPUT, _LONG_BINPUT, _BINGET, _LONG_BINGET = 0x80, 0x63, 0x71, 0x72, 0x68, 0x6A
_MARK, _EMPTY_DICT, _EMPTY_LIST, _EMPTY_TUPLE = 0x28, 0x7D, 0x5D, 0x29
_TUPLE, _TUPLE1, _TUPLE2, _TUPLE3 = 0x74, 0x85, 0x86, 0x87
_SETITEM, _SETITEMS, _APPEND, _APPENDS = 0x73, 0x75, 0x61, 0x65
_BININT, _BININT1, _BININT2, _LONG1 = 0x4A, 0x4B, 0x4D, 0x8A
_BINUNICODE, _NONE, _NEWTRUE, _NEWFALSE, _BINFLOAT = 0x58, 0x4E, 0x88, 0x89, 0x47
_REDUCE, _BINPERSID, _BUILD, _STOP = 0x52, 0x51, 0x62, 0x2E


_OPCODES = {info.code: info for info in pickletools.opcodes}  # pickletools.code2op, which typeshed omits


def _opcode_name(op: int) -> str:
    info = _OPCODES.get(chr(op))
    return info.name if info is not None else f"unknown opcode 0x{op:02x}"


class _Interpreter:
    """Opcode-level stack machine for the state-dict subset of pickle protocol 2.

    Pickle's semantics are mirrored where torch relies on them (memo, MARK sections that
    pops cannot cross, dict insertion order); anything torch.save never writes is refused.
    Values are inert: ``_Global`` only carries a name, REDUCE only builds ``_Dict`` /
    ``_Tensor`` records after checking the callable and its arguments.
    """

    def __init__(self, buf: bytes, *, label: str, base: int, legacy: bool):
        self.label = label
        self.legacy = legacy
        self.buf = buf
        self.base = base
        self.storages: dict[str, _StorageRef] = {}
        self.tensor_count = 0

    def reset(self, buf: bytes, *, base: int) -> None:
        self.buf = buf
        self.base = base
        self.storages = {}
        self.tensor_count = 0

    # -- errors -------------------------------------------------------------------------------
    def _fail(self, message: str, at: int, code: str = "HFC203", tensor: str | None = None) -> FormatError:
        return FormatError(code, f"{self.label} at byte {self.base + at}: {message}", tensor)

    def _cap(self, message: str, at: int) -> _CapHit:
        return _CapHit("HFC203", f"{self.label} at byte {self.base + at}: {message}; hfconv stopped there and did "
                                 "not check the rest of the pickle: do not torch.load this file")

    # -- main loop ----------------------------------------------------------------------------
    def run(self) -> tuple[object, int]:
        """Interpret from byte 0 to STOP; return (value, offset just after STOP).

        One long function on purpose: this is the per-opcode dispatch loop of every .bin
        hfconv reads, and its state (stack, marks, memo, counters, caps) lives in locals
        because a method call or attribute lookup per opcode costs about as much as the
        opcode itself. Split into helpers it would be markedly slower on large checkpoints.
        """
        buf = self.buf
        n = len(buf)
        stack: list = []
        marks: list[int] = []
        memo: dict[int, object] = {}
        fail = self._fail
        pos = 0
        ops = 0
        containers = 0
        max_ops, max_stack = MAX_OPCODES, MAX_STACK  # locals: read on every opcode
        if n < 2:
            raise _Truncated(self.label)
        if buf[0] != _PROTO:
            raise fail("pickle does not start with PROTO (torch.save writes protocol 2)", 0)

        def floor() -> int:
            return marks[-1] if marks else 0

        def pop(start: int) -> Any:
            if len(stack) <= (marks[-1] if marks else 0):
                raise fail("stack underflow (pop across a MARK)", start)
            return stack.pop()

        def pop_mark(start: int) -> list:
            if not marks:
                raise fail("opcode needs a MARK but none is open", start)
            k = marks.pop()
            items = stack[k:]
            del stack[k:]
            return items

        while True:
            if pos >= n:
                raise _Truncated(self.label)
            start = pos
            op = buf[pos]
            pos += 1
            ops += 1
            if ops > max_ops:
                raise self._cap(f"more than {MAX_OPCODES} opcodes (hfconv's limit: about 65,000 tensors per file; "
                                "save the state dict in shards)", start)
            if len(stack) > max_stack:
                raise self._cap(f"stack deeper than {MAX_STACK} (hfconv's limit)", start)

            if op == _BINPUT or op == _LONG_BINPUT:
                width = 1 if op == _BINPUT else 4
                if pos + width > n:
                    raise _Truncated(self.label)
                idx = buf[pos] if width == 1 else _U32.unpack_from(buf, pos)[0]
                pos += width
                if len(stack) <= floor():
                    raise fail("memo put with an empty stack", start)
                if idx not in memo and len(memo) >= MAX_MEMO:
                    raise self._cap(f"more than {MAX_MEMO} memo entries (hfconv's limit)", start)
                memo[idx] = stack[-1]
            elif op == _BINGET or op == _LONG_BINGET:
                width = 1 if op == _BINGET else 4
                if pos + width > n:
                    raise _Truncated(self.label)
                idx = buf[pos] if width == 1 else _U32.unpack_from(buf, pos)[0]
                pos += width
                try:
                    stack.append(memo[idx])
                except KeyError:
                    raise fail(f"memo get of unset index {idx}", start) from None
            elif op == _BINUNICODE:
                if pos + 4 > n:
                    raise _Truncated(self.label)
                length = _U32.unpack_from(buf, pos)[0]
                pos += 4
                if length > MAX_STRING_BYTES:
                    raise fail(f"string of {length} bytes (limit {MAX_STRING_BYTES})", start)
                if pos + length > n:
                    raise _Truncated(self.label)
                try:
                    stack.append(buf[pos:pos + length].decode("utf-8"))
                except UnicodeDecodeError:
                    raise fail("string is not valid UTF-8", start) from None
                pos += length
            elif op == _BININT1:
                if pos >= n:
                    raise _Truncated(self.label)
                stack.append(buf[pos])
                pos += 1
            elif op == _BININT2:
                if pos + 2 > n:
                    raise _Truncated(self.label)
                stack.append(_U16.unpack_from(buf, pos)[0])
                pos += 2
            elif op == _BININT:
                if pos + 4 > n:
                    raise _Truncated(self.label)
                stack.append(_I32.unpack_from(buf, pos)[0])
                pos += 4
            elif op == _LONG1:
                if pos >= n:
                    raise _Truncated(self.label)
                length = buf[pos]
                pos += 1
                if pos + length > n:
                    raise _Truncated(self.label)
                stack.append(int.from_bytes(buf[pos:pos + length], "little", signed=True))
                pos += length
            elif op == _MARK:
                if len(marks) >= MAX_MARK_DEPTH:
                    raise fail(f"MARKs nested deeper than {MAX_MARK_DEPTH}", start)
                marks.append(len(stack))
            elif op == _TUPLE:
                stack.append(self._tuple(pop_mark(start), start))
            elif op == _TUPLE1 or op == _TUPLE2 or op == _TUPLE3:
                count = op - _TUPLE1 + 1
                if len(stack) - floor() < count:
                    raise fail(f"{_opcode_name(op)} needs {count} items", start)
                items = stack[-count:]
                del stack[-count:]
                stack.append(self._tuple(items, start))
            elif op == _EMPTY_TUPLE:
                stack.append(())
            elif op == _EMPTY_DICT:
                containers += 1
                if containers > MAX_CONTAINERS:
                    raise self._cap(f"more than {MAX_CONTAINERS} dicts and lists (hfconv's limit)", start)
                stack.append(_Dict())
            elif op == _EMPTY_LIST:
                containers += 1
                if containers > MAX_CONTAINERS:
                    raise self._cap(f"more than {MAX_CONTAINERS} dicts and lists (hfconv's limit)", start)
                stack.append(_List())
            elif op == _NONE:
                stack.append(None)
            elif op == _NEWTRUE:
                stack.append(True)
            elif op == _NEWFALSE:
                stack.append(False)
            elif op == _BINFLOAT:
                if pos + 8 > n:
                    raise _Truncated(self.label)
                stack.append(_F64_BE.unpack_from(buf, pos)[0])
                pos += 8
            elif op == _SETITEM:
                value = pop(start)
                key = pop(start)
                self._setitems(stack, floor(), [key, value], start)
            elif op == _SETITEMS:
                items = pop_mark(start)
                self._setitems(stack, floor(), items, start)
            elif op == _APPEND:
                value = pop(start)
                self._appends(stack, floor(), [value], start)
            elif op == _APPENDS:
                items = pop_mark(start)
                self._appends(stack, floor(), items, start)
            elif op == _GLOBAL:
                module, pos = self._line(pos, start)
                name, pos = self._line(pos, start)
                stack.append(self._global(module, name, start))
            elif op == _REDUCE:
                args = pop(start)
                func = pop(start)
                value = self._reduce(func, args, start)
                if type(value) is _Dict:
                    containers += 1
                    if containers > MAX_CONTAINERS:
                        raise self._cap(f"more than {MAX_CONTAINERS} dicts and lists (hfconv's limit)", start)
                stack.append(value)
            elif op == _BINPERSID:
                stack.append(self._persistent(pop(start), start))
            elif op == _BUILD:
                state = pop(start)
                if len(stack) <= floor():
                    raise fail("BUILD with nothing to build", start)
                target = stack[-1]
                # torch.save of an OrderedDict state dict ends with BUILD {'_metadata': ...}:
                # attributes of the dict, irrelevant to the tensors. Nothing else is built.
                if not isinstance(target, _Dict) or not isinstance(state, _Dict):
                    raise fail(f"BUILD of {_describe(target)} with {_describe(state)} "
                               "(torch only BUILDs an OrderedDict's attribute dict)", start)
                ops += len(state.items)  # work: each BUILD walks its state's keys
                if not all(type(k) is str for k in state.items):
                    raise fail("BUILD state has non-string attribute names", start)
            elif op == _STOP:
                if marks:
                    raise fail("STOP with an open MARK", start)
                if len(stack) != 1:
                    raise fail(f"STOP with {len(stack)} items on the stack (expected 1)", start)
                value = stack[0]
                if isinstance(value, _SPECIAL):
                    raise fail(f"pickle result is {_describe(value)}", start)
                return value, pos
            elif op == _PROTO:
                if start != 0:
                    raise fail("PROTO after the start of the pickle", start)
                if pos >= n:
                    raise _Truncated(self.label)
                if buf[pos] != 2:
                    raise fail(f"pickle protocol {buf[pos]} (saved with pickle_protocol={buf[pos]}?); hfconv reads "
                           "the protocol 2 torch.save writes by default", start)
                pos += 1
            else:
                raise fail(f"unsupported opcode {_opcode_name(op)}", start)

    # -- helpers ------------------------------------------------------------------------------
    def _line(self, pos: int, start: int) -> tuple[str, int]:
        buf = self.buf
        end = buf.find(b"\n", pos, pos + MAX_GLOBAL_LINE + 1)
        if end < 0:
            if pos + MAX_GLOBAL_LINE + 1 > len(buf):
                raise _Truncated(self.label)
            raise self._fail(f"GLOBAL name longer than {MAX_GLOBAL_LINE} bytes", start)
        try:
            text = buf[pos:end].decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("GLOBAL name is not valid UTF-8", start) from None
        return text, end + 1

    def _global(self, module: str, name: str, start: int) -> _Global:
        full = f"{module}.{name}"
        if full in _CALLABLES:
            return _Global(full, "callable")
        if full in _STORAGE_CLASSES:
            return _Global(full, "storage")
        if full in _DTYPE_GLOBALS:
            return _Global(full, "dtype")
        if full in _UNSUPPORTED_TORCH_TYPES:
            raise FormatError("HFC211", f"{self.label}: uses {full}, a dtype hfconv does not support", full)
        shown = full if full.isprintable() else ascii(full)
        raise FormatError("HFC201", f"{self.label} at byte {self.base + start}: pickle references forbidden "
                                    f"global '{shown}'; torch.load would import and call it (do not load "
                                    "this file)", shown)

    def _tuple(self, items: list[Any], start: int) -> object:
        """Build a tuple; tuples carrying globals or storages get a restricted wrapper."""
        special = [i for i, x in enumerate(items) if isinstance(x, _SPECIAL)]
        if not special:
            return tuple(items)
        first = items[0]
        # persistent id: ('storage', <storage class>, key, location, numel[, view_metadata])
        if (special == [1] and len(items) == (6 if self.legacy else 5) and type(first) is str
                and first == "storage" and isinstance(items[1], _Global) and items[1].kind == "storage"):
            return _Args("pid", tuple(items))
        # rebuild arguments: (storage, offset, size, stride, ...[, dtype at 6 for v3])
        if isinstance(first, _StorageRef) and (special == [0] or (
                special == [0, 6] and isinstance(items[6], _Global) and items[6].kind == "dtype")):
            return _Args("rebuild", tuple(items))
        bad = next((i for i in special if not (i == 0 and isinstance(first, _StorageRef))), special[0])
        raise self._fail(f"{_describe(items[bad])} inside a tuple where torch never puts it", start)

    def _setitems(self, stack: list[Any], floor: int, items: list[Any], start: int) -> None:
        if len(stack) <= floor:
            raise self._fail("SETITEM(S) with no dict below the MARK", start)
        target = stack[-1]
        if not isinstance(target, _Dict):
            raise self._fail(f"SETITEM(S) on {_describe(target)}", start)
        if len(items) % 2:
            raise self._fail("SETITEMS with an odd number of items", start)
        d = target.items
        for i in range(0, len(items), 2):
            key, value = items[i], items[i + 1]
            if type(key) not in _KEY_TYPES:
                raise self._fail(f"dict key is {_describe(key)}", start)
            if isinstance(value, _SPECIAL):
                raise self._fail(f"dict value is {_describe(value)}", start)
            if key in d:
                # A pickle torch wrote never sets a key twice; "last one wins" would hide a tensor.
                raise self._fail(f"dict key {_short(key)} set twice", start)
            d[key] = value

    def _appends(self, stack: list[Any], floor: int, items: list[Any], start: int) -> None:
        if len(stack) <= floor:
            raise self._fail("APPEND(S) with no list below the MARK", start)
        target = stack[-1]
        if not isinstance(target, _List):
            raise self._fail(f"APPEND(S) on {_describe(target)}", start)
        for value in items:
            if isinstance(value, _SPECIAL):
                raise self._fail(f"list item is {_describe(value)}", start)
        target.items.extend(items)

    def _persistent(self, pid: object, start: int) -> _StorageRef:
        if not isinstance(pid, _Args) or pid.kind != "pid":
            raise self._fail(f"persistent id is {_describe(pid)}, not a ('storage', ...) tuple", start)
        _, cls, key, location, numel = pid.items[:5]
        if type(key) is not str or not _STORAGE_KEY_RE.match(key):
            raise self._fail(f"storage key {_short(key)} is not a plain name", start)
        if type(location) is not str or not _LOCATION_RE.match(location):
            raise self._fail(f"storage location {_short(location)} is not a device torch knows", start)
        if type(numel) is not int or numel < 0 or numel > MAX_DIM_VALUE:
            raise self._fail(f"storage size {_short(numel)} is not a non-negative int", start)
        if self.legacy and pid.items[5] is not None:
            raise self._fail("legacy storage views (view_metadata) are not supported", start)
        if self.legacy and cls.name == _UNTYPED_STORAGE:
            # torch.save writes these (float8, uint16/32/64 in the legacy format) but
            # torch.load's legacy path fails on them: UntypedStorage has no .dtype.
            raise self._fail("UntypedStorage in a legacy checkpoint, which torch.load cannot read "
                             "(re-save float8/uint16/uint32/uint64 tensors in the zip format)", start)
        dtype = _STORAGE_CLASSES[cls.name]
        known = self.storages.get(key)
        if known is not None:
            if known.storage_class != cls.name or known.raw_numel != numel:
                raise self._fail(f"one storage used with two dtypes or sizes (storage '{key}' is "
                                 f"{known.storage_class} x {known.raw_numel} and {cls.name} x {numel})", start)
            return known
        ref = _StorageRef(key, cls.name, dtype, numel)
        self.storages[key] = ref
        return ref

    def _reduce(self, func: object, args: object, start: int) -> _Dict | _Tensor:
        if not isinstance(func, _Global) or func.kind != "callable":
            raise self._fail(f"REDUCE calls {_describe(func)}", start)
        name = func.name
        if name == "collections.OrderedDict":
            if type(args) is not tuple or args:
                raise self._fail("OrderedDict called with arguments (torch passes none)", start)
            return _Dict()
        if name == "torch._utils._rebuild_parameter":
            if type(args) is not tuple or len(args) != 3:
                raise self._fail("_rebuild_parameter needs (tensor, requires_grad, hooks)", start)
            tensor, requires_grad, hooks = args
            if not isinstance(tensor, _Tensor):
                raise self._fail(f"_rebuild_parameter of {_describe(tensor)}", start)
            self._check_flags(requires_grad, hooks, start)
            return tensor
        # the _rebuild_tensor family
        arity = {"torch._utils._rebuild_tensor": (4,), "torch._utils._rebuild_tensor_v2": (6, 7),
                 "torch._utils._rebuild_tensor_v3": (7, 8)}[name]
        if not isinstance(args, _Args) or args.kind != "rebuild" or len(args.items) not in arity:
            raise self._fail(f"{name.rsplit('.', 1)[1]} called with the wrong arguments "
                             f"(expected {' or '.join(map(str, arity))} starting with a storage)", start)
        items = args.items
        storage: _StorageRef = items[0]
        offset, size, stride = items[1], items[2], items[3]
        if type(offset) is not int:
            raise self._fail("storage offset is not an int", start)
        for label, seq in (("size", size), ("stride", stride)):
            if type(seq) is not tuple or len(seq) > MAX_NDIM or not all(type(v) is int for v in seq):
                raise self._fail(f"tensor {label} is not a tuple of at most {MAX_NDIM} ints", start)
        if len(items) >= 6:
            self._check_flags(items[4], items[5], start)
        is_v3 = name.endswith("_v3")
        dtype_arg = items[6] if len(items) > 6 else None
        dtype_global = dtype_arg if isinstance(dtype_arg, _Global) and dtype_arg.kind == "dtype" else None
        if is_v3 != (dtype_global is not None):
            raise self._fail(f"{name.rsplit('.', 1)[1]} with {_describe(dtype_arg)} where "
                             f"{'a dtype' if is_v3 else 'tensor metadata'} belongs", start)
        if dtype_global is not None:  # is_v3
            dtype = _DTYPE_GLOBALS[dtype_global.name]
            if storage.storage_class != _UNTYPED_STORAGE:
                raise self._fail("_rebuild_tensor_v3 of a typed storage (torch passes an UntypedStorage)", start)
            if storage.dtype is None:
                storage.dtype = dtype
            elif storage.dtype != dtype:
                raise self._fail(f"one storage used with two dtypes (storage '{storage.key}' as "
                                 f"{storage.dtype} and {dtype})", start)
        else:
            if storage.dtype is None:
                raise self._fail(f"{name.rsplit('.', 1)[1]} of an UntypedStorage (needs a dtype)", start)
            dtype = storage.dtype
        metadata_at = 7 if is_v3 else 6
        if len(items) > metadata_at:
            self._check_metadata(items[metadata_at], start)
        self.tensor_count += 1
        if self.tensor_count > MAX_TENSORS:
            raise self._fail(f"more than {MAX_TENSORS} tensors", start)
        return _Tensor(storage, offset, size, stride, dtype)

    def _check_flags(self, requires_grad: object, hooks: object, start: int) -> None:
        if type(requires_grad) is not bool:
            raise self._fail("requires_grad is not a bool", start)
        # torch never serialises hooks: backward_hooks is always an empty OrderedDict().
        if not isinstance(hooks, _Dict) or hooks.items:
            raise self._fail("backward_hooks is not an empty OrderedDict", start)

    def _check_metadata(self, metadata: object, start: int) -> None:
        # torch appends {'conj': True} / {'neg': True} for lazily conjugated/negated tensors:
        # their stored bytes are not the tensor's values, which a converter would get wrong.
        if not isinstance(metadata, _Dict):
            raise self._fail("tensor metadata is not a dict", start)
        if len(metadata.items) > 16:
            # torch writes at most {'conj': True, 'neg': True}; a big dict (reused via the memo
            # by every tensor) would make each rebuild cost its size
            raise self._fail(f"tensor metadata dict has {len(metadata.items)} entries", start)
        for key, value in metadata.items.items():
            if type(key) is not str or type(value) is not bool:
                raise self._fail("tensor metadata is not a dict of str to bool", start)
            if value:
                raise self._fail(f"tensor has the '{_short(key)}' bit set (conjugate/negative view); "
                                 "call .resolve_conj()/.resolve_neg() before saving", start)


# =============================================================================================
# best-effort scan for forbidden globals in a pickle the interpreter refused
# =============================================================================================

_TORCHSCRIPT_PREFIXES = ("__torch__.", "torch.")


def _TORCHSCRIPT_NAME(name: str) -> bool:  # noqa: N802 - used like a constant predicate
    """Names a TorchScript archive's data.pkl references (its classes, torch internals)."""
    return name.startswith(_TORCHSCRIPT_PREFIXES)


def _forbidden(found: list[str], allow: Callable[[str], bool] | None = None) -> list[str]:
    """The globals of ``found`` outside the state-dict allow-list (and ``allow``)."""
    return [g for g in found if g not in ALLOWED_GLOBALS and g not in _UNSUPPORTED_TORCH_TYPES
            and not (allow is not None and allow(g))]


def _forbidden_globals(buf: bytes, require_stop: bool = False, multi: bool = False) -> list[str]:
    """Globals outside the state-dict allow-list that a pickle would import."""
    found = _pickle_globals(buf, require_stop, multi) or []
    return _forbidden(found)


def _pickle_globals(buf: bytes, require_stop: bool = False, multi: bool = False) -> list[str] | None:
    """Globals a pickle would import, found by walking it (:func:`.pickle_vm.scan_pickle`).

    With ``require_stop`` only a walk that reaches STOP counts (for files that may be text):
    None otherwise.
    """
    scan = scan_pickle(buf, multi=multi)
    if require_stop and not scan.pickles:
        return None
    return scan.globals


def _forbidden_error(bad: list[str], label: str) -> FormatError:
    shown = [g if g.isprintable() else ascii(g) for g in bad]
    more = f" (and {', '.join(shown[1:4])}{', ...' if len(shown) > 4 else ''})" if len(shown) > 1 else ""
    what = ("a global whose name is computed at load time" if shown[0] == COMPUTED_GLOBAL
            else f"forbidden global '{shown[0]}'")
    return FormatError("HFC201", f"{label}: pickle references {what}{more}; torch.load would import and call it "
                                 "(do not load this file)", shown[0])


def _raise_if_forbidden_global(buf: bytes, label: str, require_stop: bool = False, multi: bool = False,
                               allow: Callable[[str], bool] | None = None) -> ScanResult:
    """Report the strongest finding: a pickle refused as malformed may also be an attack.

    The whole pickle is walked (up to the caps of :mod:`.pickle_vm`), not only up to the
    opcode the caller refused, and every forbidden global found is named. Returns the scan."""
    scan = scan_pickle(buf, multi=multi)
    if not (require_stop and not scan.pickles):
        bad = _forbidden(scan.globals, allow)
        if bad:
            raise _forbidden_error(bad, label)
    return scan


def _with_scan_note(err: FormatError, scan: ScanResult) -> FormatError:
    """``err``, saying when the search for forbidden globals behind it stopped at a cap."""
    if scan.cap is None:
        return err
    return FormatError(err.code, f"{err.message}; hfconv's search for globals behind it stopped at its limit of "
                                 f"{scan.cap}, so the rest is unchecked: do not torch.load this file", err.tensor)


# =============================================================================================
# result checks and assembly
# =============================================================================================

def _state_dict_tensors(root: object) -> dict[str, _Tensor]:
    """The flat name -> tensor mapping, or HFC208 saying what the file holds instead."""
    if not isinstance(root, _Dict):
        raise FormatError("HFC208", f"top-level object is {_describe(root)}, not a state dict")
    tensors: dict[str, _Tensor] = {}
    for key, value in root.items.items():
        if type(key) is not str:
            raise FormatError("HFC208", f"state dict key {_short(key)} is {_describe(key)}, not a string")
        if isinstance(value, _Tensor):
            tensors[key] = value
            continue
        if isinstance(value, _Dict) and any(isinstance(v, _Tensor) for v in value.items.values()):
            raise FormatError("HFC208", f"the tensors are nested under '{_short(key)}' (a training checkpoint?); "
                                        "loaders expect a flat state dict: save checkpoint"
                                        f"[{_short(key)}] instead", key)
        raise FormatError("HFC208", f"state dict entry '{_short(key)}' is {_describe(value)}, not a tensor", key)
    return tensors


def _build_weight_file(path: str, fmt: str, interp: _Interpreter, tensors: dict[str, _Tensor],
                       records: dict[str, tuple[int, int, int | None] | None], prefix: str | None, *,
                       header_nbytes: int, notes: tuple[ReaderNote, ...], byte_order: str = "little") -> WeightFile:
    """Check storages against their records and views against their storages."""
    storages: dict[str, StorageMeta] = {}
    users: dict[str, list[str]] = {}
    for name, t in tensors.items():
        users.setdefault(t.storage.key, []).append(name)
    for key, ref in interp.storages.items():
        first_user = users.get(key, ["?"])[0]
        where = f"'{prefix}/data/{key}'" if prefix is not None else f"'{key}'"
        record = records.get(key)
        if record is None:
            raise FormatError("HFC205", f"tensor '{first_user}' needs storage {where}, which the "
                                        f"{'zip' if prefix is not None else 'file'} does not contain", first_user)
        if ref.dtype is None:  # an UntypedStorage no tensor gave a dtype; cannot happen via REDUCE
            raise FormatError("HFC203", f"storage {where} has no dtype")
        data_offset, record_nbytes, crc32 = record
        size = itemsize(ref.dtype)
        storage_nbytes = ref.raw_numel * ref.raw_itemsize
        if storage_nbytes > record_nbytes:
            raise FormatError("HFC205", f"storage too small: tensor '{first_user}' uses storage {where} of "
                                        f"{storage_nbytes} bytes but the record holds {record_nbytes}", first_user)
        if storage_nbytes != record_nbytes:
            # torch.load insists on an exact match ("record size does not match expected size")
            raise FormatError("HFC205", f"storage {where} holds {record_nbytes} bytes but the pickle declares "
                                        f"{storage_nbytes}; torch.load refuses the mismatch", first_user)
        storages[key] = StorageMeta(key, ref.dtype, storage_nbytes // size, data_offset, record_nbytes, crc32)

    metas: dict[str, TensorMeta] = {}
    for name, t in tensors.items():
        storage = storages[t.storage.key]
        _check_view(name, t, storage.numel, itemsize(t.dtype))
        metas[name] = TensorMeta(name, t.dtype, t.size, storage_key=t.storage.key, storage_offset=t.offset,
                                 stride=t.stride)

    shared = []
    for names in users.values():
        if len(names) > 1:
            aliases = names[1:]
            verb = "shares its" if len(aliases) == 1 else "share their"
            shared.append(ReaderNote("HFC206", f"{', '.join(aliases)} {verb} storage with {names[0]}", aliases[0]))
    return WeightFile(path=path, format=fmt, tensors=metas, storages=storages, notes=tuple(shared) + notes,
                      header_nbytes=header_nbytes, byte_order=byte_order)


def _check_view(name: str, t: _Tensor, storage_numel: int, size: int) -> None:
    if len(t.size) != len(t.stride):
        raise FormatError("HFC209", f"tensor '{name}' has {len(t.size)} sizes but {len(t.stride)} strides", name)
    if t.offset < 0 or any(s < 0 for s in t.size) or any(s < 0 for s in t.stride):
        raise FormatError("HFC209", f"tensor '{name}' has a negative size, stride or storage offset", name)
    if t.offset > MAX_DIM_VALUE or any(s > MAX_DIM_VALUE for s in t.size + t.stride):
        raise FormatError("HFC209", f"tensor '{name}' has an absurd size, stride or offset", name)
    numel = math.prod(t.size)
    if numel == 0:
        if t.offset > storage_numel:
            raise FormatError("HFC209", f"tensor '{name}' starts at element {t.offset} of a storage holding "
                                        f"{storage_numel}", name)
        return
    last = t.offset + sum((s - 1) * st for s, st in zip(t.size, t.stride))
    if last >= storage_numel:
        raise FormatError("HFC209", f"tensor '{name}' reads {(last + 1) * size} bytes from a "
                                    f"{storage_numel * size}-byte storage (its view reaches element {last})", name)
    view_nbytes = numel * size
    if view_nbytes > max(storage_numel * size, MAX_VIEW_EXPANSION_BYTES):
        raise FormatError("HFC209", f"tensor '{name}' claims {view_nbytes} bytes from a {storage_numel * size}-byte "
                                    "storage (stride-0 or overlapping view too large)", name)


# =============================================================================================
# message helpers (never repr() untrusted nested values: they can be deep or cyclic)
# =============================================================================================

def _describe(value: object) -> str:
    if isinstance(value, _Global):
        return f"global {value.name}"
    if isinstance(value, _Args):
        return "a persistent-id tuple" if value.kind == "pid" else "tensor-rebuild arguments"
    if isinstance(value, _StorageRef):
        return "a storage"
    if isinstance(value, _Tensor):
        return "a tensor"
    if isinstance(value, _Dict):
        return "a dict"
    if isinstance(value, _List):
        return "a list"
    if value is None:
        return "None"
    return {bool: "a bool", int: "an int", float: "a float", str: "a string", tuple: "a tuple"}.get(
        type(value), type(value).__name__)


def _short(value: object) -> str:
    """A scalar for a message, cut short and made printable."""
    if type(value) is str:
        text = value if len(value) <= 80 else value[:77] + "..."
        return text if text.isprintable() else ascii(text)
    if type(value) in (int, bool, float) or value is None:
        text = str(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return _describe(value)
