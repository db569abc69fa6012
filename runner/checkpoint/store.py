"""Atomic, locked checkpoint files: the write transaction, the lock beside each checkpoint, and the trust check.

A save writes a uniquely named temp file in the checkpoint's folder, flushes and fsyncs it, renames it over the
checkpoint with ``os.replace`` and fsyncs the folder, all under a file lock. A failed save removes its temp file
and leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import threading
from typing import IO, Callable, Iterator

import filelock

from runner.errors import CheckpointSaveError, LockTimeoutError, UntrustedCheckpointError

logger = logging.getLogger(__name__)

TEMP_MARKER = ".runner-tmp-"
"""Every temp file of runner is named ``.<checkpoint name>.runner-tmp-<pid>-<random hex>``."""

TRUST_ENV_VAR = "RUNNER_TRUST_CHECKPOINTS"
_OWNER_ONLY = 0o600
_locks: dict[str, filelock.FileLock] = {}
_locks_guard = threading.Lock()


def lock_path(path: str) -> str:
    return path + ".lock"


def checkpoint_lock(path: str) -> filelock.FileLock:
    """Return this process's one lock object for the checkpoint at ``path``.

    Two ``FileLock`` objects on one file, held in one thread, deadlock in recent filelock versions, so every
    caller shares one object per path.
    """
    key = lock_path(os.path.abspath(path))
    with _locks_guard:
        if key not in _locks:
            _locks[key] = filelock.FileLock(key, mode=_OWNER_ONLY)
        return _locks[key]


@contextlib.contextmanager
def locked(path: str, timeout_s: float) -> Iterator[None]:
    lock = checkpoint_lock(path)
    try:
        lock.acquire(timeout=timeout_s)
    except filelock.Timeout as error:
        raise LockTimeoutError(
            f"timed out after {timeout_s:g} s waiting for the lock {lock.lock_file}: another process is saving or "
            "loading this checkpoint; if none is, the lock is held by a hung process", path) from error
    try:
        yield
    finally:
        lock.release()


def temp_path_for(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_folder(folder: str) -> None:
    fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write a new version of ``path`` with ``write(file)``: all of it, or nothing and the old file untouched."""
    temp_path = temp_path_for(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp_path, flags, _OWNER_ONLY)
    except OSError as error:
        raise _save_error(path, temp_path, error) from error
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException as error:
        _remove_quietly(temp_path)
        if isinstance(error, OSError):
            raise _save_error(path, temp_path, error) from error
        raise
    fsync_folder(os.path.dirname(path))


def _save_error(path: str, temp_path: str, error: OSError) -> CheckpointSaveError:
    name = os.strerror(error.errno) if error.errno else type(error).__name__
    return CheckpointSaveError(
        f"saving checkpoint {path} failed (writing {temp_path}): [errno {error.errno}] {name}; "
        "the previous checkpoint is unchanged", path)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:  # never hide the error that made us roll back
        logger.warning("could not remove temp file %s: %s", path, error)


def check_trusted(path: str, file_stat: os.stat_result) -> None:
    """Refuse a checkpoint that another user owns or that group or others can write: loading it runs code."""
    if os.environ.get(TRUST_ENV_VAR) == "1":
        return
    if file_stat.st_uid != os.getuid():
        reason = f"it is owned by uid {file_stat.st_uid}, not by you (uid {os.getuid()})"
    elif file_stat.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        reason = f"group or others can write it (mode {stat.filemode(file_stat.st_mode)})"
    else:
        return
    raise UntrustedCheckpointError(
        f"refusing to load checkpoint {path}: {reason}, and loading a checkpoint runs the code inside it. "
        f"If you trust it, pass trust=True or set {TRUST_ENV_VAR}=1; or copy it and chmod go-w the copy", path)
