"""Throughput of the checksums a checkpoint could carry, over one buffer in memory, in GB/s (10**9 bytes/s).

SHA-256 and BLAKE2b from hashlib and CRC-32 from zlib, the candidates in Python's standard library, and the
CRC-32 of zlib-ng that runner uses. The copy of the buffer into fresh memory is the yardstick, as a load must do
that much.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import zlib

from zlib_ng import zlib_ng

from timing import timed


def measure_checksums(size_mib: int, repeats: int) -> dict:
    data = memoryview(bytearray(os.urandom(1 << 20)) * size_mib)
    actions = {
        "sha256": lambda: hashlib.sha256(data).digest(),
        "blake2b": lambda: hashlib.blake2b(data).digest(),
        "crc32": lambda: zlib.crc32(data),
        "crc32_zlib_ng": lambda: zlib_ng.crc32(data),
        "copy_to_fresh_memory": lambda: bytearray(data),
    }
    return {name: round(len(data) / statistics.median(timed(action) for _ in range(repeats)) / 1e9, 2)
            for name, action in actions.items()}
