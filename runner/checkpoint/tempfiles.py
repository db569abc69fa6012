"""Temp files of the save transaction: their names, their safe creation, and removing those left behind.

Every temp file of runner is named ``.<checkpoint name>.runner-tmp-<pid>-<random hex>`` in the checkpoint's folder.
Old checkpoints that retention removes are first renamed to ``.<checkpoint name>.runner-old-<random hex>`` and
unlinked by a worker thread (see ``discard``). Clean-up removes only names of exactly these forms, so nothing else
in the folder is ever touched.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from typing import Iterable, Iterator

logger = logging.getLogger(__name__)

TEMP_MARKER = ".runner-tmp-"
TRASH_MARKER = ".runner-old-"
_OWNER_ONLY = 0o600
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_ATTEMPTS = 8
_EXITED_STATES = ("Z", "X")
"""States in ``/proc/PID/stat`` of a process that has exited: zombie (not reaped yet) and dead."""


def temp_path_for(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def trash_path_for(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TRASH_MARKER}{secrets.token_hex(8)}")


def create_temp(path: str) -> tuple[int, str]:
    """Create a new, empty temp file for ``path``, mode 0600; return its descriptor and path.

    ``O_EXCL`` with ``O_NOFOLLOW`` never opens an existing file or follows a symlink planted at the name. When a
    name is taken, another random name is tried.
    """
    for _ in range(_CREATE_ATTEMPTS - 1):
        temp_path = temp_path_for(path)
        try:
            return os.open(temp_path, _CREATE_FLAGS, _OWNER_ONLY), temp_path
        except FileExistsError:
            logger.warning("temp file name %s is taken, trying another", temp_path)
    temp_path = temp_path_for(path)
    return os.open(temp_path, _CREATE_FLAGS, _OWNER_ONLY), temp_path


def writer_pid(checkpoint_name: str, entry_name: str) -> int | None:
    """Return the pid in ``entry_name`` if it is a temp file name of the checkpoint ``checkpoint_name``, else None."""
    pattern = re.escape(f".{checkpoint_name}{TEMP_MARKER}") + r"(\d+)-[0-9a-f]+"
    match = re.fullmatch(pattern, entry_name)
    return int(match.group(1)) if match else None


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temp files of ``path`` left by writers that no longer write, and all its trash; return their paths.

    Call it only under the checkpoint's lock: a writer creates its temp file only while holding the lock, so a
    temp file seen under the lock is left over from a writer that was killed or crashed. That holds for this very
    process too, whose pid a killed job's pid may equal in a new pid namespace. Temp files of other live pids
    stay: on a filesystem where the lock does not exclude other hosts, their writers may still be at work. Trash
    is an old checkpoint that its owner was about to unlink anyway, so it goes whoever renamed it.
    """
    removed = []
    for entry, pid in _runner_files(os.scandir(os.path.dirname(path) or "."), os.path.basename(path)):
        if pid is not None and pid != os.getpid() and _is_running(pid):
            continue
        try:
            os.unlink(entry.path)  # unlink removes a symlink itself, never its target
        except FileNotFoundError:
            continue
        except OSError as error:
            logger.warning("could not remove leftover file %s: %s", entry.path, error)
            continue
        logger.info("removed leftover file %s of an earlier save", entry.path)
        removed.append(entry.path)
    return removed


def leftovers(path: str) -> list[tuple[str, int, str]]:
    """Return ``(file path, size, description)`` for each temp or trash file of ``path`` that exists now."""
    found = []
    try:
        entries = sorted(os.scandir(os.path.dirname(path) or "."), key=lambda entry: entry.name)
    except OSError:
        return []
    for entry, pid in _runner_files(entries, os.path.basename(path)):
        try:
            size = entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        if pid is None:
            description = "an old checkpoint renamed for unlinking"
        else:
            writer_state = "running" if _is_running(pid) else "not running"
            description = f"a temp file of pid {pid}, {writer_state} on this host"
        found.append((entry.path, size, description))
    return found


def _runner_files(entries: Iterable[os.DirEntry], checkpoint_name: str) -> Iterator[tuple[os.DirEntry, int | None]]:
    """Yield each temp file of ``checkpoint_name`` among ``entries`` with its writer's pid, and each trash file
    with None."""
    for entry in entries:
        pid = writer_pid(checkpoint_name, entry.name)
        if pid is not None or is_trash(checkpoint_name, entry.name):
            yield entry, pid


def is_trash(checkpoint_name: str, entry_name: str) -> bool:
    """Tell whether ``entry_name`` is an old checkpoint of ``checkpoint_name`` renamed for unlinking."""
    return re.fullmatch(re.escape(f".{checkpoint_name}{TRASH_MARKER}") + r"[0-9a-f]+", entry_name) is not None


def remove_temp(temp_path: str) -> bool:
    """Remove ``temp_path`` after a failed save; return whether it is gone. Log an OSError instead of raising it."""
    try:
        os.unlink(temp_path)
    except FileNotFoundError:
        return True
    except OSError as error:
        logger.warning("could not remove temp file %s: %s", temp_path, error)
        return False
    return True


def _is_running(pid: int) -> bool:
    if pid <= 0:  # os.kill would signal a whole process group, and no writer has such a pid
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process, which may still be a zombie
        pass
    return _process_state(pid) not in _EXITED_STATES


def _process_state(pid: int) -> str | None:
    """Read the one-letter state of ``pid`` from ``/proc/PID/stat``, or return None where /proc cannot tell.

    ``kill(pid, 0)`` still succeeds for a zombie, so only its state shows that it will never write again.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            fields = stat_file.read()
    except OSError:  # no /proc (not Linux, or not mounted), or the process just exited, so kill's result is kept
        return None
    # The command name in brackets may contain spaces and ')', so the state is the first field after the last ')'.
    after_name = fields[fields.rfind(b")") + 1:].split()
    return after_name[0].decode("ascii", "replace") if after_name else None
