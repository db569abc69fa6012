"""The checkpoint file format: a header, the ``torch.save`` payload, and a commit record written last.

Layout, all integers little-endian::

    magic b"RUNRCKPT" | header length (u32) | header (UTF-8 JSON) | payload (torch.save zip)
    | commit record: commit magic | payload offset (u64) | payload length (u64) | checksum of all bytes before it (32)

The commit magic names the checksum: b"RUNRCR32" a CRC-32, as u32 followed by 28 zero bytes (format 2), and
b"RUNRDONE" a SHA-256 (format 1, written by runner 0.1.0). The commit record lets a reader tell a complete file
from a truncated, damaged or unfinished one before anything is unpickled.
"""

from __future__ import annotations

import io
import json
import os
import struct
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Callable, Protocol, Sequence

from runner.checkpoint import checksums
from runner.errors import CorruptCheckpointError, UnsupportedCheckpointError

FORMAT_VERSION = 2
MAGIC = b"RUNRCKPT"
COMMIT_MAGIC = checksums.WRITTEN.commit_magic
_HEADER_LENGTH = struct.Struct("<I")
_COMMIT = struct.Struct(f"<8sQQ{checksums.DIGEST_SIZE}s")
COMMIT_SIZE = _COMMIT.size
_MAX_HEADER_BYTES = 1 << 20
_MIN_SIZE = len(MAGIC) + _HEADER_LENGTH.size + COMMIT_SIZE


class HashingWriter(io.RawIOBase):
    """A write-only stream that checksums and counts what passes through it to ``target``.

    A large write is checksummed by a helper thread while the caller's thread writes it. ``checksum`` is the
    ``checksums.ChecksumKind`` of the commit record; saves use the default.
    """

    def __init__(self, target: IO[bytes], checksum: checksums.ChecksumKind = checksums.WRITTEN):
        super().__init__()
        self._target = target
        self.checksum = checksum
        self._digest = checksum.new()
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) < checksums.OVERLAP_MIN_BYTES:
            self._digest.update(view)
            self._target.write(view)
        else:
            # torch.save may reuse the memory behind ``data`` once write returns, so the checksum finishes first.
            checksums.update_while(self._digest, view, lambda: self._target.write(view))
        self.bytes_written += len(view)
        return len(view)

    def flush(self) -> None:
        self._target.flush()

    def digest(self) -> bytes:
        """Return the checksum of every byte written so far, as the commit record stores it."""
        return self._digest.digest()


def write_header(writer: HashingWriter, header: dict) -> None:
    encoded = json.dumps(header, sort_keys=True).encode()
    writer.write(MAGIC + _HEADER_LENGTH.pack(len(encoded)) + encoded)


def write_commit(writer: HashingWriter, payload_offset: int) -> None:
    """Append the commit record; the caller has written the header and then the payload through ``writer``."""
    payload_length = writer.bytes_written - payload_offset
    record = _COMMIT.pack(writer.checksum.commit_magic, payload_offset, payload_length, writer.digest())
    writer._target.write(record)


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint file whose size, checksum and commit record were checked."""

    path: str
    header: dict
    payload_offset: int
    payload_length: int
    size: int
    preloaded: Any = None
    """The value that ``verify``'s ``preload`` returned, filled in the same pass as the checksum, or None without one."""


class Preload(Protocol):
    """Regions of a checkpoint file to read into buffers of their own while ``verify`` checksums the file.

    ``regions`` are ``(file offset, writable buffer)`` pairs, sorted by offset and not overlapping; each buffer
    receives the bytes of the file from its offset on. ``verify`` fills them before it checks the checksum, so
    their contents may be trusted only once ``verify`` has returned.
    """

    regions: Sequence[tuple[int, memoryview]]


PreloadPlanner = Callable[[BinaryIO, int, int], "Preload | None"]
"""``preload(file, payload offset, payload length)``: the argument of ``verify`` that plans a ``Preload``."""


def check_commit_record(file: BinaryIO, path: str) -> tuple[int, int, int, Any, bytes]:
    """Check the size and commit record of ``file`` without reading the rest, which finds a truncated or unfinished
    file at the cost of one small read; return ``(size, payload offset, payload length, checksum kind, expected)``.
    """
    file.seek(0, os.SEEK_END)
    size = file.tell()
    if size == 0:
        raise CorruptCheckpointError(f"checkpoint {path} is empty (0 bytes)", path)
    file.seek(0)
    start = file.read(len(MAGIC))
    if not MAGIC.startswith(start):
        raise CorruptCheckpointError(f"{path} is not a runner checkpoint: it does not start with {MAGIC!r}", path)
    if size < _MIN_SIZE:
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated: {size} bytes, fewer than the {_MIN_SIZE} of the smallest checkpoint", path)
    file.seek(size - COMMIT_SIZE)
    magic, payload_offset, payload_length, expected = _COMMIT.unpack(file.read(COMMIT_SIZE))
    checksum = checksums.BY_COMMIT_MAGIC.get(magic)
    if checksum is None:
        raise CorruptCheckpointError(
            f"checkpoint {path} has no commit record: the write did not finish, or the file was truncated or is "
            "not a runner checkpoint", path)
    if payload_offset + payload_length + COMMIT_SIZE != size:
        raise CorruptCheckpointError(
            f"checkpoint {path} is {size} bytes, but its commit record promises "
            f"{payload_offset + payload_length + COMMIT_SIZE}", path)
    return size, payload_offset, payload_length, checksum, expected


def verify(file: BinaryIO, path: str, preload: PreloadPlanner | None = None) -> VerifiedCheckpoint:
    """Check the size, commit record, checksum and header of ``file`` without unpickling anything.

    ``preload(file, payload offset, payload length)``, when given, returns a ``Preload`` whose regions are read
    in the same pass as the checksum, so a load reads each byte of the file once. It is returned as ``preloaded``.

    Raise CorruptCheckpointError naming ``path`` when the file is empty, truncated, damaged or uncommitted, and
    UnsupportedCheckpointError when a newer runner wrote it.
    """
    size, payload_offset, payload_length, checksum, expected = check_commit_record(file, path)
    preloaded = preload(file, payload_offset, payload_length) if preload is not None else None
    file.seek(0)
    regions = preloaded.regions if preloaded is not None else ()
    if checksums.checksum_file(file, size - COMMIT_SIZE, checksum, regions) != expected:
        raise CorruptCheckpointError(f"checkpoint {path} fails its {checksum.name} check: the file is damaged", path)
    header = read_header(file, path)
    if file.tell() != payload_offset:
        raise CorruptCheckpointError(
            f"checkpoint {path} has its header ending at byte {file.tell()}, but its payload starting at byte "
            f"{payload_offset}", path)
    return VerifiedCheckpoint(path, header, payload_offset, payload_length, size, preloaded)


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
