"""The zip container of a torch checkpoint, read exactly as torch's zip reader (miniz) reads it.

Metadata only: the end record (found where miniz finds it), the zip64 end record, the central
directory and each entry's local header, and a check that entries and directory cover the file
byte for byte. A file another zip reader could read as a different archive is refused (HFC213);
anything torch cannot read is HFC204. Only small members (data.pkl, version, byteorder) are
ever read whole, by :func:`zip_member_bytes`, size- and ratio-checked before a byte is inflated.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from ..tensors import FormatError

__all__ = ["ZipEntry", "zip_entries", "find_end_record", "zip_member_bytes", "read_at", "read_exact", "fold",
           "method_name", "MAX_ZIP_ENTRIES", "MAX_CENTRAL_DIRECTORY_BYTES", "MAX_INFLATE_RATIO",
           "INFLATE_RATIO_FLOOR", "MINIZ_EOCD_SEARCH"]

MAX_ZIP_ENTRIES = 2_000_000
MAX_CENTRAL_DIRECTORY_BYTES = 512 << 20
MAX_INFLATE_RATIO = 100
"""A DEFLATE member (only small records and data.pkl are ever inflated) may not declare more
than this many times its compressed size beyond ``INFLATE_RATIO_FLOOR``: a zip bomb is refused
from its directory entry, before a byte is inflated. torch.save never compresses anything."""
INFLATE_RATIO_FLOOR = 1 << 20

_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_CD_ENTRY = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46-byte central directory entry


def read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    """Read up to ``n`` bytes at ``offset`` (the caller checked ``n`` against its limits)."""
    f.seek(offset)
    return f.read(n)


def read_exact(f: BinaryIO, offset: int, n: int, code: str, what: str) -> bytes:
    data = read_at(f, offset, n)
    if len(data) != n:
        raise FormatError(code, f"file ends inside {what} (truncated download?)")
    return data


@dataclass(frozen=True)
class ZipEntry:
    """One central-directory entry, checked against its local header."""

    name: str
    method: int
    flags: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int
    data_offset: int


_ZIP_SIGNATURES = (b"PK\x01\x02", b"PK\x03\x04", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07", b"PK\x07\x08")
MINIZ_EOCD_SEARCH = 22 + 0xFFFF + 4096
"""How far from the end torch's zip reader (miniz) may find an end record: it scans back in 4 KiB
chunks and gives up once it is 64 KiB + 22 bytes from the end."""


def _ambiguous(message: str) -> FormatError:
    return FormatError("HFC213", f"{message}; torch and other zip readers can read different archives "
                                 "from this file (parser differential): do not load it, re-save it with torch.save")


def find_end_record(f: BinaryIO, file_size: int) -> tuple[int, bytes]:
    """The end-of-central-directory record torch would use, and the bytes after it.

    torch's reader (miniz) takes the *last* ``PK\\5\\6`` that has 22 bytes after it, whatever the
    comment length says; Python's zipfile and other readers may take another one. So this reader
    takes miniz's, then refuses a file where another reading exists: bytes after the end record
    other than its declared comment, or a comment holding zip structures (a second archive).
    """
    tail_len = min(file_size, MINIZ_EOCD_SEARCH)
    tail = read_at(f, file_size - tail_len, tail_len)
    eocd_rel = _miniz_locate_end(tail, file_size)
    if eocd_rel < 0:
        raise FormatError("HFC204", "truncated or damaged zip: torch's zip reader finds no end-of-central-directory "
                                    "record (failed finding central directory; incomplete download?)")
    comment_len = _U16.unpack_from(tail, eocd_rel + 20)[0]
    after = len(tail) - eocd_rel - 22
    if comment_len != after:
        where = file_size - tail_len + eocd_rel
        if comment_len > after:
            raise _ambiguous(f"the zip end record at byte {where} declares a {comment_len}-byte comment but only "
                             f"{after} bytes follow it (an end record hidden in another's comment?)")
        raise _ambiguous(f"{after - comment_len} bytes of trailing data after the zip end record at byte {where}")
    comment = tail[eocd_rel + 22:]
    for sig in _ZIP_SIGNATURES:
        at = comment.find(sig)
        if at >= 0:
            raise _ambiguous(f"the zip comment holds a zip record signature {sig!r} at byte "
                             f"{file_size - len(comment) + at} (a second archive in the comment?)")
    return file_size - tail_len + eocd_rel, tail[eocd_rel:eocd_rel + 22]


def _miniz_locate_end(tail: bytes, file_size: int) -> int:
    """Where in ``tail`` (the last bytes of the file) torch's miniz finds the end record, or -1.

    miniz reads 4 KiB chunks from the end, stepping back 4093 bytes, and takes the last
    signature with 22 bytes after it. It gives up 64 KiB + 22 bytes from the end, at offset 0,
    and (an unsigned wrap in the step) whenever the next step would go below offset 0: so an
    end record that only a chunk clamped to offset 0 would reach is never found.
    """
    base = file_size - len(tail)
    cur = max(file_size - 4096, 0)
    while True:
        n = min(4096, file_size - cur)
        rel = cur - base
        if rel < 0:
            return -1  # past what the caller read: further back than miniz ever looks
        at = tail.rfind(b"PK\x05\x06", rel, rel + n)
        while at >= 0 and file_size - (base + at) < 22:
            at = tail.rfind(b"PK\x05\x06", rel, at + 3)
        if at >= 0:
            return at
        if cur == 0 or file_size - cur >= 0xFFFF + 22 or cur < 4093:
            return -1
        cur -= 4093


def zip_entries(f: BinaryIO, file_size: int) -> list[ZipEntry]:
    """Parse the end record and the central directory; check each local header, and that the
    entries, the central directory and the end records cover the file exactly."""
    # 1. the end record, and the zip64 one where there is one: where the central directory is
    directory = _end_records(f, file_size)
    # 2. the central directory, read whole once its declared size fits the file and the limits
    cd = _read_central_directory(f, directory)
    # 3. each central-directory entry, then its local header, one entry at a time
    entries: list[ZipEntry] = []
    seen: set[str] = set()
    pos = 0
    for _ in range(directory.n_total):
        central, pos = _central_entry(cd, pos, len(entries), seen)
        entries.append(_local_entry(f, central, directory.cd_offset))
    if pos != directory.cd_size:
        raise FormatError("HFC204", f"zip central directory has {directory.cd_size - pos} unexplained bytes")
    # 4. coverage: every byte before the end records belongs to one entry or the central directory
    _check_coverage(f, entries, directory.cd_offset, directory.cd_size, directory.cd_end)
    return entries


class _Directory(NamedTuple):
    """Where the central directory is, as the end records say."""

    n_total: int
    cd_size: int
    cd_offset: int
    cd_end: int
    """where the central directory must end: no gap before the end records"""


def _end_records(f: BinaryIO, file_size: int) -> _Directory:
    """Step 1: the classic end record, overridden by the zip64 one where a locator precedes it."""
    eocd_pos, eocd = find_end_record(f, file_size)
    disk, cd_disk, n_disk, n_total, cd_size, cd_offset = struct.unpack_from("<HHHHII", eocd, 4)
    if disk != 0 or cd_disk != 0 or n_disk != n_total:
        raise FormatError("HFC204", "multi-disk (split) zip archives are not supported")
    classic = _Directory(n_total, cd_size, cd_offset, eocd_pos)
    if eocd_pos >= 20:
        loc = read_at(f, eocd_pos - 20, 20)
        if loc[:4] == b"PK\x06\x07":
            return _zip64_end_record(f, loc, eocd_pos, classic)
    return classic


def _zip64_end_record(f: BinaryIO, loc: bytes, eocd_pos: int, classic: _Directory) -> _Directory:
    """The zip64 end record the locator ``loc`` (just before the end record) points at."""
    z64_disk, z64_offset, z64_disks = struct.unpack_from("<IQI", loc, 4)
    if z64_disks != 1:
        # miniz: "unsupported multidisk archive" unless the locator says exactly 1 disk
        raise FormatError("HFC204", f"zip64 end locator says the archive spans {z64_disks} disks (torch "
                                    "reads only archives that say 1: unsupported multidisk archive)")
    if z64_disk != 0 or z64_offset + 56 > eocd_pos - 20:
        raise FormatError("HFC204", "damaged zip64 end-of-central-directory locator")
    rec = read_exact(f, z64_offset, 56, "HFC204", "the zip64 end record")
    if rec[:4] != b"PK\x06\x06":
        raise FormatError("HFC204", "zip64 locator does not point at a zip64 end record")
    rec_size = _U64.unpack_from(rec, 4)[0]
    if rec_size < 44:
        raise FormatError("HFC204", "zip64 end record is shorter than its fixed fields; torch refuses it")
    if z64_offset + 12 + rec_size != eocd_pos - 20:
        raise _ambiguous(f"the zip64 end record at byte {z64_offset} ({12 + rec_size} bytes) does not end "
                         f"where its locator starts (byte {eocd_pos - 20})")
    z_disk, z_cd_disk, z_n_disk, z_n_total, z_cd_size, z_cd_offset = struct.unpack_from("<IIQQQQ", rec, 16)
    if z_disk != 0 or z_cd_disk != 0 or z_n_disk != z_n_total:
        raise FormatError("HFC204", "multi-disk (split) zip archives are not supported")
    # The classic fields must be the zip64 values or the "see zip64" sentinels;
    # disagreeing values would make readers see different archives.
    for value, wide, sentinel in ((classic.n_total, z_n_total, 0xFFFF), (classic.cd_size, z_cd_size, 0xFFFFFFFF),
                                  (classic.cd_offset, z_cd_offset, 0xFFFFFFFF)):
        if value != sentinel and value != wide:
            raise FormatError("HFC204", "zip end record and zip64 end record disagree")
    return _Directory(z_n_total, z_cd_size, z_cd_offset, z64_offset)


def _read_central_directory(f: BinaryIO, d: _Directory) -> bytes:
    """Step 2: the central directory's bytes, after its entry count and size are checked."""
    if d.n_total > MAX_ZIP_ENTRIES:
        raise FormatError("HFC204", f"zip declares {d.n_total} entries (limit {MAX_ZIP_ENTRIES})")
    if d.cd_size > MAX_CENTRAL_DIRECTORY_BYTES or d.cd_offset + d.cd_size > d.cd_end or d.n_total * 46 > d.cd_size:
        raise FormatError("HFC204", f"zip central directory ({d.cd_size} bytes at {d.cd_offset}, {d.n_total} "
                                    "entries) does not fit the file (truncated or damaged zip)")
    return read_exact(f, d.cd_offset, d.cd_size, "HFC204", "the zip central directory")


class _CentralEntry(NamedTuple):
    """One central-directory entry, not yet checked against its local header."""

    name: str
    raw_name: bytes
    method: int
    flags: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int


def _central_entry(cd: bytes, pos: int, index: int, seen: set[str]) -> tuple[_CentralEntry, int]:
    """Step 3a: the entry at ``pos`` of the central directory ``cd`` (number ``index``), checked
    for what torch cannot read, and where the next entry starts. ``seen`` collects folded names."""
    cd_size = len(cd)
    if pos + 46 > cd_size or cd[pos:pos + 4] != b"PK\x01\x02":
        raise FormatError("HFC204", f"damaged zip central directory at entry {index}")
    (_sig, _made_by, _needed, flags, method, _time, _date, crc, csize, usize, name_len, extra_len,
     comment_len, disk_start, _int_attr, ext_attr, header_offset) = _CD_ENTRY.unpack_from(cd, pos)
    end = pos + 46 + name_len + extra_len + comment_len
    if end > cd_size:
        raise FormatError("HFC204", "damaged zip central directory (entry runs past its end)")
    raw_name = cd[pos + 46:pos + 46 + name_len]
    extra = cd[pos + 46 + name_len:pos + 46 + name_len + extra_len]
    if flags & 0x2061:
        # encrypted, patch data, strong encryption, masked local headers: miniz refuses them
        raise FormatError("HFC204", "zip entry is encrypted or uses a zip feature torch cannot read")
    if disk_start != 0:
        raise FormatError("HFC204", "zip entry claims to start on another disk (split archive); "
                                    "torch cannot read it")
    if 0xFFFFFFFF in (usize, csize, header_offset):
        usize, csize, header_offset = _zip64_extra(extra, usize, csize, header_offset)
    name = _decode_zip_name(raw_name, flags)
    if method not in (0, 8):
        raise FormatError("HFC204", f"zip entry '{name}' uses compression {method_name(method)}; torch reads "
                                    "only stored and DEFLATE entries")
    if ext_attr & 0x10 or name.endswith("/"):
        # miniz treats an entry with the DOS directory bit as a directory and extracts
        # nothing from it: torch would load garbage where this reader sees the bytes.
        raise FormatError("HFC204", f"zip entry '{name}' is marked as a directory; torch would not read its data")
    if (method == 0 and csize != usize) or (usize and not csize):
        # miniz refuses the whole archive over such an entry, read or not
        raise FormatError("HFC204", f"zip entry '{name}' has inconsistent sizes ({csize} stored, {usize} "
                                    "uncompressed)")
    if len(raw_name) >= 512:
        # miniz cuts names at 511 bytes when torch lists records
        raise FormatError("HFC204", f"zip entry name of {len(raw_name)} bytes is too long for torch")
    key = fold(name)
    if key in seen:
        raise FormatError("HFC204", f"zip entry '{name}' appears twice (names compare case-insensitively "
                                    "in torch); readers disagree on which one counts")
    seen.add(key)
    return _CentralEntry(name, raw_name, method, flags, crc, csize, usize, header_offset), end


def _local_entry(f: BinaryIO, c: _CentralEntry, cd_offset: int) -> ZipEntry:
    """Step 3b: the entry, once its local header names it the same and its data fits before
    the central directory at ``cd_offset``."""
    name, name_len = c.name, len(c.raw_name)
    if c.header_offset + 30 + name_len > cd_offset:
        raise FormatError("HFC204", f"zip entry '{name}' has its local header outside the file data")
    local = read_exact(f, c.header_offset, 30 + name_len, "HFC204", f"the local header of '{name}'")
    if local[:4] != b"PK\x03\x04":
        raise FormatError("HFC204", f"zip entry '{name}' does not point at a local file header")
    local_name_len, local_extra_len = struct.unpack_from("<HH", local, 26)
    if local_name_len != name_len or local[30:30 + name_len] != c.raw_name:
        raise FormatError("HFC204", f"zip entry '{name}': local header names "
                                    f"'{_decode_zip_name(local[30:30 + local_name_len], c.flags)}' "
                                    "instead (readers would disagree)")
    data_offset = c.header_offset + 30 + name_len + local_extra_len
    if data_offset + c.compressed_size > cd_offset:
        raise FormatError("HFC204", f"zip entry '{name}' ({c.compressed_size} bytes at {data_offset}) runs past "
                                    "the file data (truncated or damaged zip)")
    return ZipEntry(name, c.method, c.flags, c.crc, c.compressed_size, c.size, c.header_offset, data_offset)


def _check_coverage(f: BinaryIO, entries: list[ZipEntry], cd_offset: int, cd_size: int, cd_end: int) -> None:
    """Every byte before the end records belongs to exactly one entry (local header, data, data
    descriptor) or to the central directory, in that order and without gaps.

    Bytes no entry covers are where a second archive or an orphan local header hides: a
    streaming unzip, or a reader that searches for records, would find them; torch does not.
    Overlapping entries (one byte range read as two records) are refused the same way.
    """
    pos = 0
    ordered = sorted(entries, key=lambda e: e.header_offset)
    for index, entry in enumerate(ordered):
        if entry.header_offset < pos:
            raise _ambiguous(f"zip entries '{_short(ordered[index - 1].name)}' and '{_short(entry.name)}' overlap")
        if entry.header_offset > pos:
            raise _ambiguous(f"bytes {pos}..{entry.header_offset - 1} of the zip belong to no central-directory "
                             f"entry (before '{_short(entry.name)}'; an orphan local header or hidden data?)")
        pos = entry.data_offset + entry.compressed_size
        limit = ordered[index + 1].header_offset if index + 1 < len(ordered) else cd_offset
        if entry.flags & 0x8 and limit > pos:
            pos += _data_descriptor_length(f, entry, pos, limit - pos)
    if pos != cd_offset:
        if pos > cd_offset:
            raise _ambiguous(f"zip entry data runs into the central directory at byte {cd_offset}")
        raise _ambiguous(f"bytes {pos}..{cd_offset - 1} of the zip belong to no central-directory entry "
                         "(before the central directory; an orphan local header or hidden data?)")
    if cd_offset + cd_size != cd_end:
        raise _ambiguous(f"{cd_end - cd_offset - cd_size} bytes between the zip central directory and its end "
                         "record belong to nothing")


def _data_descriptor_length(f: BinaryIO, entry: ZipEntry, pos: int, room: int) -> int:
    """The length of the data descriptor at ``pos`` (flag bit 3), which must fill ``room`` and
    repeat the entry's CRC and sizes (torch writes the signed, 16- or 24-byte form)."""
    raw = read_at(f, pos, min(room, 24))
    forms = {16: (True, "<III"), 24: (True, "<IQQ"), 12: (False, "<III"), 20: (False, "<IQQ")}
    form = forms.get(room)
    if form is not None:
        signed, layout = form
        body = raw[4:] if signed else raw
        if (not signed or raw[:4] == b"PK\x07\x08") and len(body) == struct.calcsize(layout):
            crc, csize, usize = struct.unpack(layout, body)
            if (crc, csize, usize) == (entry.crc, entry.compressed_size, entry.size):
                return room
    raise _ambiguous(f"{room} bytes after the data of zip entry '{_short(entry.name)}' are not its data descriptor: "
                     "they belong to no central-directory entry (an orphan local header or hidden data?)")


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Take the 64-bit sizes/offset from the zip64 extra field (only the saturated ones)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + size]
        pos += 4 + size
        if tag != 0x0001:
            continue
        values = []
        for i in range(0, len(body) - len(body) % 8, 8):
            values.append(_U64.unpack_from(body, i)[0])
        it = iter(values)
        try:
            if usize == 0xFFFFFFFF:
                usize = next(it)
            if csize == 0xFFFFFFFF:
                csize = next(it)
            if offset == 0xFFFFFFFF:
                offset = next(it)
        except StopIteration:
            break
        return usize, csize, offset
    raise FormatError("HFC204", "zip entry needs a zip64 extra field but has none (or a short one)")


def fold(name: str) -> str:
    """ASCII-only lower-casing, as miniz's case-insensitive name comparison does."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _decode_zip_name(raw: bytes, flags: int) -> str:
    try:
        return raw.decode("utf-8" if flags & 0x800 else "cp437")
    except UnicodeDecodeError:
        raise FormatError("HFC204", "zip entry name is not valid UTF-8") from None


def method_name(method: int) -> str:
    return {8: "DEFLATE", 9: "DEFLATE64", 12: "BZIP2", 14: "LZMA", 93: "ZSTD"}.get(method, f"method-{method}")


def zip_member_bytes(f: BinaryIO, entry: ZipEntry, limit: int) -> bytes:
    """The content of a small member (data.pkl, byteorder), size-checked before reading."""
    if entry.method != 0 and entry.size > max(INFLATE_RATIO_FLOOR, MAX_INFLATE_RATIO * entry.compressed_size):
        raise FormatError("HFC204", f"zip entry '{entry.name}' would inflate {entry.compressed_size} compressed "
                                    f"bytes to {entry.size} (ratio over {MAX_INFLATE_RATIO}:1); refused unread as a "
                                    "zip bomb (torch.save never compresses)")
    if entry.size > limit:
        raise FormatError("HFC204", f"zip entry '{entry.name}' declares {entry.size} bytes (hfconv's limit {limit})")
    raw = read_exact(f, entry.data_offset, entry.compressed_size, "HFC204", f"zip entry '{entry.name}'")
    if entry.method == 0:
        if entry.compressed_size != entry.size:
            raise FormatError("HFC204", f"zip entry '{entry.name}' is stored but its sizes disagree")
        data = raw
    elif entry.method == 8:
        # Bounded inflate: never produce more than the declared (already capped) size.
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(raw, entry.size + 1)
        except zlib.error as exc:
            raise FormatError("HFC204", f"zip entry '{entry.name}' does not inflate: {exc}") from None
        if len(data) != entry.size:
            raise FormatError("HFC204", f"zip entry '{entry.name}' inflates to a size other than the declared "
                                        f"{entry.size} bytes")
    else:
        raise FormatError("HFC204", f"zip entry '{entry.name}' uses compression {method_name(entry.method)}, "
                                    "which torch cannot read")
    if zlib.crc32(data) != entry.crc:
        raise FormatError("HFC204", f"zip entry '{entry.name}' fails its CRC check (damaged download?)")
    return data


def _short(name: str) -> str:
    """An entry name for a message, cut short and made printable."""
    text = name if len(name) <= 80 else name[:77] + "..."
    return text if text.isprintable() else ascii(text)
