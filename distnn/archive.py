"""Zip archives of JSON and ``.npy`` members: streamed when written, checked before anything is read.

Model files (``distnn.saving``) and training backups (``distnn.distributed.backup_format``) are
zips whose members are stored uncompressed; arrays sit in a nested ``.npz`` (itself a stored zip of
``.npy`` files, as ``numpy.savez`` writes it). Writing goes member by member and array by array
straight into the file, hashing on the way, so it needs no memory beyond the arrays themselves.
Reading refuses, before reading or allocating anything, members that are compressed, encrypted,
unexpected, duplicated or larger than the file, and ``.npy`` headers whose dtype, shape or size
differ from what the caller expects. See docs/architecture.md, "Reliability: files and backups".
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import stat
import struct
import tempfile
import zipfile
import zlib
from typing import Any, Iterable, Iterator

import numpy as np

from distnn import backend

# The largest slice written or read in one call. Writes pass views of the arrays themselves, so
# this bounds only the temporary buffers of reads that cannot go straight into their target.
CHUNK_BYTES = 16 << 20
_HASH_CHUNK = 1 << 20  # reads that only hash or check: large enough to run at disk speed
MAX_JSON_BYTES = 64 << 20  # a configuration or History this large is no model: refuse, not parse
MAX_JSON_DEPTH = 64  # a Sequential config nests 6 levels deep; nested models a few more
_NPY_MAX_HEADER = 10_000  # numpy's own default ceiling for an .npy header
# zipfile refuses to grow a member past this size unless told up front that it may.
_ZIP64_LIMIT = (1 << 31) - 1
_ALLOWED_FLAGS = 0x08 | 0x800  # a data descriptor and UTF-8 names; encryption and the rest are refused
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # the 30-byte local file header (PKWARE APPNOTE 4.3.7)
_ARRAY_KINDS = "biuf"  # bool, signed, unsigned, float: what weights and optimizer state are made of


def fsync_directory(directory: str) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[io.BufferedWriter]:
    """A temporary file beside ``path`` that is fsynced and renamed onto ``path`` when the block ends
    normally, and removed when it raises: a crash never leaves a partial file under ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


class _HashingStream:
    """A write-only stream that hashes and counts what passes through it into ``raw``. It has no
    ``seek``, so a ``zipfile.ZipFile`` written into it streams (data descriptors, no back-patching)."""

    def __init__(self, raw: Any):
        self._raw = raw
        self._hash = hashlib.sha256()
        self._written = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._raw.write(view)
        self._written += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        self._raw.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _byte_view(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy."""
    return memoryview(array.reshape(-1).view(np.uint8))


def _write_npy(stream: Any, array: np.ndarray) -> None:
    header = np.lib.format.header_data_from_array_1_0(array)
    try:
        np.lib.format.write_array_header_1_0(stream, header)
    except ValueError:  # a header over 64 KiB (an absurd rank): version 2.0 has room
        np.lib.format.write_array_header_2_0(stream, header)
    view = _byte_view(array)
    for start in range(0, view.nbytes, CHUNK_BYTES):
        stream.write(view[start:start + CHUNK_BYTES])


class ZipStreamWriter:
    """Writes a zip of stored members into ``fileobj`` one member at a time; ``digests`` holds the
    SHA-256 of every member written, computed on the way. Use as a context manager."""

    def __init__(self, fileobj: Any):
        self._zip = zipfile.ZipFile(fileobj, "w", zipfile.ZIP_STORED)
        self.digests: dict[str, str] = {}

    def __enter__(self) -> "ZipStreamWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is None:
            self._zip.close()
        else:  # the caller discards the file; a second error while finishing it must not hide the first
            with contextlib.suppress(Exception):
                self._zip.close()

    @contextlib.contextmanager
    def _member(self, name: str, size: int) -> Iterator[_HashingStream]:
        with self._zip.open(name, "w", force_zip64=size > _ZIP64_LIMIT) as raw:
            stream = _HashingStream(raw)
            yield stream
        self.digests[name] = stream.hexdigest()

    def write_bytes(self, name: str, payload: bytes) -> None:
        with self._member(name, len(payload)) as stream:
            stream.write(payload)

    def write_json(self, name: str, value: Any) -> None:
        self.write_bytes(name, json.dumps(value, indent=1).encode())

    def write_file(self, name: str, source: Any) -> None:
        """Copy the binary file object ``source`` from its start into the member ``name``, chunk by
        chunk (no file-sized buffer)."""
        size = source.seek(0, os.SEEK_END)
        source.seek(0)
        with self._member(name, size) as stream:
            while chunk := source.read(_HASH_CHUNK):
                stream.write(chunk)

    def write_npz(self, name: str, arrays: Iterable[tuple[str, Any]]) -> None:
        """A nested ``.npz`` member holding ``arrays`` (host or device), written one array at a time:
        only one host copy of one device array exists at any moment."""
        arrays = list(arrays)
        # Each .npy adds a header (< 64 KiB) and the zip adds < 200 bytes per entry.
        size = sum(int(a.nbytes) + (1 << 16) for _, a in arrays)
        with self._member(name, size) as stream, zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED) as inner:
            for key, value in arrays:
                array = np.asarray(backend.to_numpy(value), order="C")  # keeps 0-d arrays 0-d
                with inner.open(f"{key}.npy", "w", force_zip64=array.nbytes + (1 << 16) > _ZIP64_LIMIT) as out:
                    _write_npy(out, array)


# ------------------------------------------------------------------------------------- reading
def parse_json(payload: bytes, where: str) -> Any:
    """JSON from ``payload``, or a ``ValueError`` naming ``where``; nesting deeper than
    ``MAX_JSON_DEPTH`` is refused (later code walks configs recursively)."""
    try:
        value = json.loads(payload.decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{where}: the JSON is nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError, and integers too long to convert
        raise ValueError(f"{where}: not valid UTF-8 JSON ({exc})") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"{where}: the JSON is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return value


@dataclasses.dataclass
class ArrayEntry:
    """Where one ``.npy`` array of an ``.npz`` member lies in the file, and what its header says."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # absolute file offset of the array data
    nbytes: int
    crc: int  # CRC-32 of the whole .npy (header and data)
    header: bytes


@dataclasses.dataclass
class _Member:
    name: str
    offset: int  # absolute file offset of the data
    size: int
    crc: int


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes of ``f`` from ``start``: a nested zip's container."""

    def __init__(self, f: Any, start: int, size: int):
        super().__init__()
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the member")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self._size - self._pos))
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buffer)[:count])
        self._pos += got
        return got


def match_entries(found: dict[str, ArrayEntry], expected: list[tuple[str, tuple[int, ...]]],
                  where: str) -> list[ArrayEntry]:
    """``found`` in the order of ``expected``, which must name exactly its keys, with those shapes."""
    keys = [key for key, _ in expected]
    if set(found) != set(keys):
        raise ValueError(f"{where} does not hold the arrays the file describes: missing "
                         f"{sorted(set(keys) - set(found))}, unexpected {sorted(set(found) - set(keys))}")
    for key, shape in expected:
        if found[key].shape != tuple(shape):
            raise ValueError(f"{where}: {key}.npy has shape {found[key].shape}, expected {tuple(shape)}")
    return [found[key] for key in keys]


class ArchiveReader:
    """A zip file opened for checked reading.

    Opening checks the central directory: every member is stored (not compressed), unencrypted,
    named once, inside the file, and in ``required`` (all present) or ``optional``. Every error is a
    ``ValueError`` that names the file and what is wrong. Use as a context manager.
    """

    def __init__(self, path: str, required: set[str], optional: set[str] = frozenset()):
        self.path = os.fspath(path)
        if not stat.S_ISREG(os.stat(self.path).st_mode):  # before open(): a FIFO would block it
            raise self.error("is not a regular file")
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            entries = self._entries(self._file, 0, self.size, "")
            names = {entry.filename for entry in entries}
            if names - required - optional:
                raise self.error(f"holds unexpected members {sorted(names - required - optional)}; "
                                 f"a distnn file holds {sorted(required | optional)}")
            if required - names:
                raise self.error(f"is missing {sorted(required - names)}")
            self._members = self._check_entries(entries, 0, self.size, "")
        except BaseException:
            self._file.close()
            raise

    def error(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: {what}")

    def __enter__(self) -> "ArchiveReader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def names(self) -> set[str]:
        return set(self._members)

    def _entries(self, container: Any, start: int, size: int, inside: str) -> list[zipfile.ZipInfo]:
        """The central directory of the zip occupying ``size`` bytes at ``start`` (``inside`` a member)."""
        try:
            with zipfile.ZipFile(_Window(container, start, size) if inside else container) as z:
                return z.infolist()
        except Exception as exc:  # zipfile raises many types on damaged input
            kind = f"{inside} is not a valid zip" if inside else "is not a zip archive or is damaged"
            raise self.error(f"{kind} ({type(exc).__name__}: {exc})") from None

    def _check_entries(self, entries: list[zipfile.ZipInfo], start: int, size: int, inside: str) -> dict[str, _Member]:
        """Members as the class docstring says: stored, unencrypted, named once, inside the container."""
        where = f"{inside} " if inside else ""
        members: dict[str, _Member] = {}
        for entry in entries:
            name = entry.filename
            if name in members:
                raise self.error(f"{where}holds {name!r} twice")
            if entry.compress_type != zipfile.ZIP_STORED:
                raise self.error(f"{where}member {name!r} is compressed (method {entry.compress_type}); distnn "
                                 "files store every member uncompressed")
            if entry.flag_bits & ~_ALLOWED_FLAGS:
                raise self.error(f"{where}member {name!r} has unsupported flags 0x{entry.flag_bits:04x} "
                                 "(encrypted or damaged)")
            if entry.file_size != entry.compress_size:
                raise self.error(f"{where}member {name!r} declares {entry.file_size} bytes but stores "
                                 f"{entry.compress_size}")
            members[name] = _Member(name, self._data_offset(entry, start, size, where), entry.file_size, entry.CRC)
        return members

    def _data_offset(self, entry: zipfile.ZipInfo, start: int, size: int, where: str) -> int:
        """Absolute offset of a stored member's data, from its local header, which must agree."""
        name = entry.filename
        if entry.header_offset < 0 or entry.header_offset + _LOCAL_HEADER.size > size:
            raise self.error(f"{where}member {name!r} starts outside the archive")
        self._file.seek(start + entry.header_offset)
        fields = _LOCAL_HEADER.unpack(self._file.read(_LOCAL_HEADER.size))
        signature, flags, method, name_length, extra_length = fields[0], fields[3], fields[4], fields[10], fields[11]
        encoded = name.encode("utf-8" if entry.flag_bits & 0x800 else "cp437")
        if signature != b"PK\x03\x04" or method != zipfile.ZIP_STORED or flags & ~_ALLOWED_FLAGS:
            raise self.error(f"{where}member {name!r} has a damaged local header")
        if self._file.read(name_length) != encoded:
            raise self.error(f"{where}member {name!r} is named differently in its local header")
        data = entry.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        if data + entry.file_size > size:
            raise self.error(f"{where}member {name!r} ({entry.file_size} bytes) extends past the end of the archive")
        return start + data

    def _read_range(self, offset: int, target: memoryview, crc: int = 0) -> int:
        """Fill ``target`` from ``offset``; returns the running CRC-32 continued from ``crc``."""
        self._file.seek(offset)
        for begin in range(0, target.nbytes, CHUNK_BYTES):
            piece = target[begin:begin + CHUNK_BYTES]
            if self._file.readinto(piece) != piece.nbytes:
                raise self.error(f"ends early (at byte {offset + begin})")
            crc = zlib.crc32(piece, crc)
        return crc

    def read_bytes(self, name: str, limit: int = MAX_JSON_BYTES) -> bytes:
        """A member's bytes, checked against its CRC-32; at most ``limit`` bytes."""
        member = self._members[name]
        if member.size > limit:
            raise self.error(f"{name} is {member.size} bytes, more than the {limit} allowed")
        payload = bytearray(member.size)
        if self._read_range(member.offset, memoryview(payload)) != member.crc:
            raise self.error(f"{name} is damaged (CRC mismatch)")
        return bytes(payload)

    def read_json(self, name: str, limit: int = MAX_JSON_BYTES) -> Any:
        return parse_json(self.read_bytes(name, limit), f"{self.path}: {name}")

    def member_size(self, name: str) -> int:
        return self._members[name].size

    def verify_member(self, name: str) -> None:
        """Check a member's CRC-32, reading it in chunks (no member-sized buffer)."""
        member = self._members[name]
        buffer = memoryview(bytearray(min(_HASH_CHUNK, member.size)))
        crc = 0
        for begin in range(0, member.size, _HASH_CHUNK):
            crc = self._read_range(member.offset + begin, buffer[:min(_HASH_CHUNK, member.size - begin)], crc)
        if crc != member.crc:
            raise self.error(f"{name} is damaged (CRC mismatch)")

    def member_stream(self, name: str) -> io.BufferedReader:
        """A read-only, seekable stream of a stored member's bytes, confined to that member."""
        member = self._members[name]
        return io.BufferedReader(_Window(self._file, member.offset, member.size))

    def digest(self, name: str) -> str:
        """SHA-256 of a member, read in chunks."""
        member = self._members[name]
        digest = hashlib.sha256()
        buffer = memoryview(bytearray(min(_HASH_CHUNK, member.size)))
        self._file.seek(member.offset)
        left = member.size
        while left:
            got = self._file.readinto(buffer[:min(left, buffer.nbytes)])
            if not got:
                raise self.error(f"{name} ends early")
            digest.update(buffer[:got])
            left -= got
        return digest.hexdigest()

    def npz_arrays(self, name: str) -> dict[str, ArrayEntry]:
        """The arrays of the ``.npz`` member ``name`` by key: every ``.npy`` header's magic and dtype
        checked, and its data filling its member exactly — reading no array data."""
        where = f"{self.path}: {name}"
        outer = self._members[name]
        directory = self._entries(self._file, outer.offset, outer.size, name)
        entries = {}
        for member_name, member in self._check_entries(directory, outer.offset, outer.size, name).items():
            if not member_name.endswith(".npy"):
                raise ValueError(f"{where}: unexpected member {member_name!r} (an .npz holds .npy files only)")
            entries[member_name[:-4]] = self._npy_entry(member, member_name[:-4], where)
        return entries

    def _npy_entry(self, member: _Member, key: str, where: str) -> ArrayEntry:
        head = bytearray(min(member.size, _NPY_MAX_HEADER + 16))
        self._file.seek(member.offset)
        self._file.readinto(head)
        stream = io.BytesIO(bytes(head))
        try:
            version = np.lib.format.read_magic(stream)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            found_shape, fortran_order, dtype = read_header(stream, max_header_size=_NPY_MAX_HEADER)
        except Exception as exc:  # numpy raises ValueError, and others on absurd headers
            raise ValueError(f"{where}: {key}.npy has no valid .npy header ({exc})") from None
        if dtype.hasobject:
            raise ValueError(f"{where}: {key}.npy holds Python objects (dtype={dtype}); loading them would "
                             "need unpickling, and distnn reads arrays with allow_pickle=False only")
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"{where}: {key}.npy has dtype {dtype}; expected numbers or booleans")
        if fortran_order:
            raise ValueError(f"{where}: {key}.npy is in Fortran order; distnn writes C order only")
        header_size = stream.tell()
        nbytes = math.prod(found_shape) * dtype.itemsize
        if header_size + nbytes != member.size:
            raise ValueError(f"{where}: {key}.npy holds {member.size - header_size} bytes of data, but its header "
                             f"says {nbytes} ({dtype}, shape {tuple(found_shape)})")
        return ArrayEntry(key, tuple(found_shape), dtype, member.offset + header_size, nbytes, member.crc,
                          bytes(head[:header_size]))

    def read_array(self, entry: ArrayEntry, target: Any = None) -> Any:
        """The array of ``entry``, read (and checked against its CRC-32) into ``target`` when it is a
        C-contiguous host array of the same dtype and shape, else into a new host array."""
        direct = (isinstance(target, np.ndarray) and target.dtype == entry.dtype and target.shape == entry.shape
                  and target.flags.c_contiguous and target.flags.writeable)
        array = target if direct else np.empty(entry.shape, dtype=entry.dtype)
        crc = self._read_range(entry.offset, _byte_view(array), zlib.crc32(entry.header))
        if crc != entry.crc:
            raise self.error(f"array {entry.key} is damaged (CRC mismatch)")
        return array

    def verify_array(self, entry: ArrayEntry) -> None:
        """Check an array's CRC-32 without keeping it (chunked: no array-sized buffer)."""
        crc = zlib.crc32(entry.header)
        buffer = memoryview(bytearray(min(_HASH_CHUNK, entry.nbytes)))
        for begin in range(0, entry.nbytes, _HASH_CHUNK):
            piece = buffer[:min(_HASH_CHUNK, entry.nbytes - begin)]
            crc = self._read_range(entry.offset + begin, piece, crc)
        if crc != entry.crc:
            raise self.error(f"array {entry.key} is damaged (CRC mismatch)")
