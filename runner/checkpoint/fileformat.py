"""The checkpoint file format: a header, the ``torch.save`` payload, and a commit record written last.

Layout, all integers little-endian::

    magic b"RUNRCKPT" | header length (u32) | header (UTF-8 JSON) | payload (torch.save zip)
    | commit record: b"RUNRDONE" | payload offset (u64) | payload length (u64) | SHA-256 of all bytes before it (32)

The commit record lets a reader tell a complete file from a truncated, damaged or unfinished one before
anything is unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

from runner.errors import CorruptCheckpointError, UnsupportedCheckpointError

FORMAT_VERSION = 1
MAGIC = b"RUNRCKPT"
COMMIT_MAGIC = b"RUNRDONE"
_HEADER_LENGTH = struct.Struct("<I")
_COMMIT = struct.Struct("<8sQQ32s")
COMMIT_SIZE = _COMMIT.size
_MAX_HEADER_BYTES = 1 << 20
_CHUNK_BYTES = 1 << 20
_MIN_SIZE = len(MAGIC) + _HEADER_LENGTH.size + COMMIT_SIZE


class HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it to ``target``."""

    def __init__(self, target: IO[bytes]):
        super().__init__()
        self._target = target
        self.digest = hashlib.sha256()
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self._target.write(view)
        self.bytes_written += len(view)
        return len(view)

    def flush(self) -> None:
        self._target.flush()


def write_header(writer: HashingWriter, header: dict) -> None:
    encoded = json.dumps(header, sort_keys=True).encode()
    writer.write(MAGIC + _HEADER_LENGTH.pack(len(encoded)) + encoded)


def write_commit(writer: HashingWriter, payload_offset: int) -> None:
    """Append the commit record; the caller has written the header and then the payload through ``writer``."""
    payload_length = writer.bytes_written - payload_offset
    record = _COMMIT.pack(COMMIT_MAGIC, payload_offset, payload_length, writer.digest.digest())
    writer._target.write(record)


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint file whose size, checksum and commit record were checked."""

    path: str
    header: dict
    payload_offset: int
    payload_length: int
    size: int


def verify(file: BinaryIO, path: str) -> VerifiedCheckpoint:
    """Check the size, commit record, checksum and header of ``file`` without unpickling anything.

    Raise CorruptCheckpointError naming ``path`` when the file is empty, truncated, damaged or uncommitted, and
    UnsupportedCheckpointError when a newer runner wrote it.
    """
    file.seek(0, os.SEEK_END)
    size = file.tell()
    if size == 0:
        raise CorruptCheckpointError(f"checkpoint {path} is empty (0 bytes)", path)
    if size < _MIN_SIZE:
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated: {size} bytes, fewer than the {_MIN_SIZE} of the smallest checkpoint", path)
    file.seek(size - COMMIT_SIZE)
    magic, payload_offset, payload_length, expected = _COMMIT.unpack(file.read(COMMIT_SIZE))
    if magic != COMMIT_MAGIC:
        raise CorruptCheckpointError(
            f"checkpoint {path} has no commit record: the write did not finish, or the file was truncated or is "
            "not a runner checkpoint", path)
    if payload_offset + payload_length + COMMIT_SIZE != size:
        raise CorruptCheckpointError(
            f"checkpoint {path} is {size} bytes, but its commit record promises "
            f"{payload_offset + payload_length + COMMIT_SIZE}", path)
    file.seek(0)
    if hash_prefix(file, size - COMMIT_SIZE) != expected:
        raise CorruptCheckpointError(f"checkpoint {path} fails its SHA-256 check: the file is damaged", path)
    header = read_header(file, path)
    if file.tell() != payload_offset:
        raise CorruptCheckpointError(
            f"checkpoint {path} has its header ending at byte {file.tell()}, but its payload starting at byte "
            f"{payload_offset}", path)
    return VerifiedCheckpoint(path, header, payload_offset, payload_length, size)


def hash_prefix(file: BinaryIO, length: int) -> bytes:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK_BYTES)
    view = memoryview(buffer)
    remaining = length
    while remaining:
        count = file.readinto(view[: min(remaining, _CHUNK_BYTES)])
        if not count:
            break
        digest.update(view[:count])
        remaining -= count
    return digest.digest()


def read_header(file: BinaryIO, path: str) -> dict:
    """Read and check the header at the start of ``file``; refuse a format newer than this runner reads."""
    file.seek(0)
    start = file.read(len(MAGIC) + _HEADER_LENGTH.size)
    if start[: len(MAGIC)] != MAGIC or len(start) < len(MAGIC) + _HEADER_LENGTH.size:
        raise CorruptCheckpointError(f"{path} is not a runner checkpoint: it does not start with {MAGIC!r}", path)
    (length,) = _HEADER_LENGTH.unpack(start[len(MAGIC):])
    if length > _MAX_HEADER_BYTES:
        raise CorruptCheckpointError(f"checkpoint {path} has an invalid header length of {length} bytes", path)
    try:
        header = json.loads(file.read(length))
    except ValueError as error:
        raise CorruptCheckpointError(f"checkpoint {path} has an unreadable header: {error}", path) from error
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"checkpoint {path} has a header that is not a JSON object", path)
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UnsupportedCheckpointError(
            f"checkpoint {path} has format version {version!r}, written by runner {header.get('runner_version')}; "
            f"this runner reads format {FORMAT_VERSION} and older: upgrade runner to load it", path)
    return header


class FileWindow(io.RawIOBase):
    """A read-only, seekable view of the bytes [start, start + length) of an open file."""

    def __init__(self, file: BinaryIO, start: int, length: int):
        super().__init__()
        self._file = file
        self._start = start
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._length - self._position))
        if count == 0:
            return 0
        self._file.seek(self._start + self._position)
        count = self._file.readinto(view[:count])
        self._position += count
        return count
