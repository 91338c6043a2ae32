"""Read torch ``.bin`` / ``.pt`` / ``.pth`` checkpoints without unpickling them.

``torch.load`` runs a pickle, and a pickle can call any importable function: a model folder
from the hub is untrusted, so this module never imports torch and never uses
``pickle.Unpickler``. Instead it

* sniffs the content (zip, legacy pickle stream, tar, git-lfs pointer, HTML, ...),
* parses the zip container's central directory and local headers itself (:mod:`.torch_zip`; metadata only;
  storages are never read or decompressed), finding the end record exactly as torch's reader
  (miniz) does and refusing a file any other reader could read as another archive (HFC213:
  trailing data, zip records in the comment, bytes no entry covers),
* interprets the pickle with a small opcode-level stack machine (:mod:`.unpickler`) that knows
  exactly the opcodes and globals ``torch.save`` emits for a state dict at protocol 2. The
  "globals" are never imported: they are names checked against an allow-list, and each may only
  be used in the one position where torch puts it.

The result is a :class:`~hfconv.tensors.WeightFile` whose tensors are views (offset,
shape, stride) of storages located by absolute file offset, so a converter can read the raw
bytes directly.

:mod:`.unpickler` lists the opcodes it supports and refuses every other one (STACK_GLOBAL, FRAME,
INST, OBJ, NEWOBJ, EXT*, BINBYTES, ...). A refused pickle, a training leftover and a text-looking
file are then walked to their end by :mod:`.pickle_vm` (every protocol, never executed) to name
the globals they would import.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Callable
from typing import BinaryIO

from ..dtypes import itemsize
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
from .unpickler import (
    ALLOWED_GLOBALS,
    MAX_DIM_VALUE,
    SUPPORTED_OPCODES,
    UNSUPPORTED_TORCH_TYPES,
    CapHit,
    Interpreter,
    PickledDict,
    PickledList,
    TensorView,
    Truncated,
    describe_value,
    short_value,
    state_dict_tensors,
)

__all__ = ["read_torch_checkpoint", "sniff_checkpoint", "pickle_globals", "pickle_scan", "ALLOWED_GLOBALS",
           "SUPPORTED_OPCODES"]

# --- limits ----------------------------------------------------------------------------------
# Every limit is checked before the corresponding allocation, so a hostile file cannot make
# the reader use much more memory than the (capped) pickle it holds.
MAX_PICKLE_BYTES = 64 << 20
"""data.pkl (or one legacy pickle) larger than this is refused before it is read. torch.save
writes about 100 bytes of pickle per tensor, so MAX_OPCODES is reached long before this."""
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

_LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"

_U64 = struct.Struct("<Q")


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
    interp = Interpreter(data, label="data.pkl", base=0, legacy=False)
    try:
        root, end = interp.run()
    except CapHit:
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

    tensors = state_dict_tensors(root)
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
            raise FormatError("HFC204", f"zip entry '{short_value(entry.name)}' is {what}; "
                                        "torch.load ignores it, so it "
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
        raise FormatError("HFC203", f"legacy checkpoint protocol is {short_value(proto)}, expected "
                                    f"{TORCH_LEGACY_PROTOCOL}")
    sys_info, pos = _interpret_in_file(f, pos, file_size, "legacy sys_info pickle")
    if not isinstance(sys_info, PickledDict):
        raise FormatError("HFC203", f"legacy sys_info is {describe_value(sys_info)}, not a dict")
    little = sys_info.items.get("little_endian")
    if little is not True:
        raise FormatError("HFC203", "legacy checkpoint was written on a big-endian machine "
                                    "(sys_info little_endian is not True); hfconv reads little-endian data only")
    interp = Interpreter(b"", label="legacy main pickle", base=pos, legacy=True)
    root, pos = _interpret_in_file(f, pos, file_size, "legacy main pickle", interp)
    tensors = state_dict_tensors(root)
    keys, pos = _interpret_in_file(f, pos, file_size, "legacy storage-key pickle")
    header_nbytes = pos
    if not isinstance(keys, PickledList) or not all(type(k) is str for k in keys.items):
        raise FormatError("HFC203", f"legacy storage-key pickle holds {describe_value(keys)}, not a list of strings")
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
                       interp: Interpreter | None = None) -> tuple[object, int]:
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
        runner = interp if interp is not None else Interpreter(b"", label=label, base=offset, legacy=False)
        runner.reset(data, base=offset)
        try:
            value, end = runner.run()
        except Truncated:
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
        except CapHit:
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
# best-effort scan for forbidden globals in a pickle the interpreter refused
# =============================================================================================

_TORCHSCRIPT_PREFIXES = ("__torch__.", "torch.")


def _TORCHSCRIPT_NAME(name: str) -> bool:  # noqa: N802 - used like a constant predicate
    """Names a TorchScript archive's data.pkl references (its classes, torch internals)."""
    return name.startswith(_TORCHSCRIPT_PREFIXES)


def _forbidden(found: list[str], allow: Callable[[str], bool] | None = None) -> list[str]:
    """The globals of ``found`` outside the state-dict allow-list (and ``allow``)."""
    return [g for g in found if g not in ALLOWED_GLOBALS and g not in UNSUPPORTED_TORCH_TYPES
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

def _build_weight_file(path: str, fmt: str, interp: Interpreter, tensors: dict[str, TensorView],
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


def _check_view(name: str, t: TensorView, storage_numel: int, size: int) -> None:
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


