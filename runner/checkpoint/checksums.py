"""The checksums that commit records carry, and checksumming that overlaps a checkpoint's reads and writes.

Checkpoints of format 2 carry a CRC-32 (zlib's polynomial) and those of format 1 a SHA-256; the commit record's
magic tells which. SHA-256 runs slower than a local disk writes on many machines, which made every save and load
pay for it (the figures are in benchmarks/RESULTS.md); a CRC-32 runs several times faster, and zlib-ng's
another four times faster than zlib's.

NOTE: a CRC-32 detects every error burst of up to 32 bits and misses other random damage with probability 2**-32
per damaged file. Neither checksum stops deliberate tampering; the owner and mode check before loading does.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, Sequence

DIGEST_SIZE = 32
"""Bytes of the checksum field in the commit record; a shorter checksum is padded with zero bytes."""
CHUNK_BYTES = 2 << 20
OVERLAP_MIN_BYTES = 1 << 20
"""Below this size a helper thread costs more than it saves, so the caller's thread checksums the bytes itself."""


try:  # zlib-ng's CRC-32 gives the same values as zlib's, several times faster on CPUs with carry-less multiply
    from zlib_ng.zlib_ng import crc32 as _crc32
except ImportError:  # zlib-ng has no wheel for this platform: zlib is slower but gives the same checksums
    _crc32 = zlib.crc32


class _Crc32:
    """A running CRC-32 with the ``update`` and ``digest`` methods of a hashlib object."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Any) -> None:
        self._value = _crc32(data, self._value)

    def digest(self) -> bytes:
        return struct.pack("<I", self._value).ljust(DIGEST_SIZE, b"\0")


@dataclass(frozen=True)
class ChecksumKind:
    """One checksum algorithm of the commit record."""

    name: str
    """The name that error messages use, such as ``CRC-32``."""
    commit_magic: bytes
    """The 8 bytes that start a commit record carrying this checksum."""
    new: Callable[[], Any]
    """Return an object with ``update(buffer)`` and ``digest()``, which returns ``DIGEST_SIZE`` bytes."""


CRC32 = ChecksumKind("CRC-32", b"RUNRCR32", _Crc32)
SHA256 = ChecksumKind("SHA-256", b"RUNRDONE", hashlib.sha256)
WRITTEN = CRC32
"""The checksum that saves write."""
BY_COMMIT_MAGIC = {kind.commit_magic: kind for kind in (CRC32, SHA256)}


def update_while(digest: Any, view: memoryview, work: Callable[[], Any]) -> None:
    """Run ``digest.update(view)`` in the helper thread while the caller's thread runs ``work()``.

    zlib and hashlib release the GIL on large buffers, so the two overlap on two or more cores.
    """
    checksummed = _in_helper(digest.update, view)
    try:
        work()
    finally:
        checksummed.result()  # the caller may reuse the memory behind ``view`` once this returns


def _in_helper(function: Callable[..., Any], *args: Any) -> Future:
    """Run ``function(*args)`` in the helper thread; run it here once the interpreter shuts down.

    concurrent.futures refuses new work at shutdown, before the interpreter waits for non-daemon threads, and a
    background save still writing then would fail and lose its checkpoint.
    """
    try:
        return _shared_helper().submit(function, *args)
    except RuntimeError:
        done: Future = Future()
        done.set_result(function(*args))
        return done


def _shared_helper() -> ThreadPoolExecutor:
    """Return this process's one checksum thread, started on first use.

    A save makes one large write per tensor storage, so one long-lived thread serves them all instead of a new
    thread for each.
    """
    global _helper
    with _helper_guard:
        if _helper is None:
            _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runner-checksum")
        return _helper


def _forget_helper_in_child() -> None:
    """Start a forked child without the parent's helper, whose thread does not exist in the child."""
    global _helper, _helper_guard
    _helper = None
    _helper_guard = threading.Lock()


_helper: ThreadPoolExecutor | None = None
_helper_guard = threading.Lock()
os.register_at_fork(after_in_child=_forget_helper_in_child)


def checksum_file(file: BinaryIO, length: int, kind: ChecksumKind,
                  regions: Sequence[tuple[int, memoryview]] = ()) -> bytes:
    """Return the checksum of the next ``length`` bytes of ``file``, which starts at file offset 0.

    Bytes inside ``regions`` (``(file offset, writable buffer)`` pairs, sorted, apart) are read into the
    region's buffer, the rest into two scratch buffers. A helper thread checksums each chunk while the caller's
    thread reads the next one.
    """
    digest = kind.new()
    if length < 2 * CHUNK_BYTES and not regions:
        _checksum_inline(file, length, digest)
        return digest.digest()
    scratch_bytes = min(CHUNK_BYTES, _largest_gap(length, regions))
    scratch = [memoryview(bytearray(scratch_bytes)), memoryview(bytearray(scratch_bytes))]
    scratch_done: list[Future | None] = [None, None]
    pending: list[Future] = []
    try:
        for target, turn in _read_targets(length, regions, scratch):
            if turn is not None and scratch_done[turn] is not None:
                scratch_done[turn].result()  # the helper thread is done with this scratch buffer
            count = _read_fully(file, target)
            pending.append(_in_helper(digest.update, target[:count]))
            if turn is not None:
                scratch_done[turn] = pending[-1]
            if count < len(target):
                break
    finally:
        for future in pending:
            future.result()
    return digest.digest()


def _checksum_inline(file: BinaryIO, length: int, digest: Any) -> None:
    view = memoryview(bytearray(max(1, min(length, CHUNK_BYTES))))
    remaining = length
    while remaining:
        count = file.readinto(view[: min(remaining, len(view))])
        if not count:
            break
        digest.update(view[:count])
        remaining -= count


def _largest_gap(length: int, regions: Sequence[tuple[int, memoryview]]) -> int:
    """Return the most bytes between two regions, or before the first or after the last, at least 1."""
    gaps, position = [], 0
    for start, buffer in regions:
        gaps.append(start - position)
        position = start + len(buffer)
    gaps.append(length - position)
    return max(1, *gaps)


def _read_targets(length: int, regions: Sequence[tuple[int, memoryview]], scratch: list[memoryview]
                  ) -> Iterator[tuple[memoryview, int | None]]:
    """Yield, in file order, each chunk's buffer and the index of the scratch buffer it is, or None in a region."""
    position, turn = 0, 0
    for start, buffer in [*regions, (length, memoryview(b""))]:
        if start < position or start + len(buffer) > length:
            raise ValueError(f"a preload region at byte {start} overlaps another or ends past byte {length}")
        while position < start:
            count = min(start - position, len(scratch[turn]))
            yield scratch[turn][:count], turn
            turn = 1 - turn
            position += count
        for offset in range(0, len(buffer), CHUNK_BYTES):
            yield buffer[offset:offset + CHUNK_BYTES], None
        position += len(buffer)


def _read_fully(file: BinaryIO, target: memoryview) -> int:
    """Read into all of ``target`` unless the file ends first; return how many bytes were read."""
    count = 0
    while count < len(target):
        read = file.readinto(target[count:])
        if not read:
            break
        count += read
    return count
