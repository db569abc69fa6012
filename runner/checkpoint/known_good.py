"""Checkpoint files that this process committed or verified in full, so that a save need not read them again.

Before a save keeps the current checkpoint as a fallback, it must know that the file is intact: a damaged file
would take the slot of a valid older one. A file that this process committed, or loaded after a full check, is
recognized by its identity (device, inode, size, modification time). Any other file is checked in full, once.

NOTE: damage that leaves the modification time alone, such as a disk's own bit rot, goes unseen here in a file
this process committed. Loading still checks every file in full.
"""

from __future__ import annotations

import collections
import os
import threading

_MAX_REMEMBERED = 64
_identities: collections.OrderedDict[tuple[int, int, int, int], None] = collections.OrderedDict()
_guard = threading.Lock()


def remember(file_stat: os.stat_result) -> None:
    """Record the file with ``file_stat`` as intact."""
    identity = _identity(file_stat)
    with _guard:
        _identities[identity] = None
        _identities.move_to_end(identity)
        while len(_identities) > _MAX_REMEMBERED:
            _identities.popitem(last=False)


def is_known(file_stat: os.stat_result) -> bool:
    """Tell whether the file with ``file_stat`` was recorded as intact and has not changed since."""
    with _guard:
        return _identity(file_stat) in _identities


def _identity(file_stat: os.stat_result) -> tuple[int, int, int, int]:
    return file_stat.st_dev, file_stat.st_ino, file_stat.st_size, file_stat.st_mtime_ns
