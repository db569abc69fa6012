"""The lock beside each checkpoint: one lock object per path in a process, a timeout, and a record of the holder.

The lock file is ``<checkpoint>.lock``, created with mode 0600 and never followed through a symlink. Two kinds:

- ``flock`` (the default) takes a kernel ``flock`` on the lock file. A lock held by a process that dies is released
  by the kernel. On NFS, ``flock`` excludes writers on other hosts only when the filesystem is mounted with
  locking. With ``nolock`` or ``local_lock=flock`` the lock is local to each client (nfs(5)), so two hosts can
  write one checkpoint at once, and runner cannot detect it. Lustre mounted with ``localflock`` is local in the
  same way; with ``noflock``, ``flock`` fails with ENOSYS (mount.lustre(8)) and the error points to the soft lock.
- ``soft`` creates the lock file exclusively and removes it on release. Choose it with ``lock="soft"`` or
  ``RUNNER_LOCK=soft`` where ``flock`` is missing or local-only. It relies on ``O_EXCL`` being atomic across
  hosts, which open(2) promises on NFSv3 or later. A marker left by a process that died on this host is taken
  over. One left on another host must be removed by hand, and the timeout error names its holder.

In both kinds the lock file contains the pid and host of its last holder, and its modification time is when that
holder acquired it, which the timeout error reports.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import socket
import threading
from typing import Iterator

import filelock

from runner.checkpoint import faults, settings
from runner.errors import CheckpointError, LockTimeoutError

logger = logging.getLogger(__name__)

_OWNER_ONLY = 0o600
_MAX_HOLDER_BYTES = 4096
_NOT_WRITABLE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
_locks: dict[tuple[str, str], filelock.BaseFileLock] = {}
_locks_guard = threading.Lock()


def _forget_locks_in_child() -> None:
    """Start a forked child with no lock objects, since filelock 4.3 raises RuntimeError on an inherited one."""
    global _locks_guard
    _locks.clear()
    _locks_guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_locks_in_child)


def lock_path(path: str) -> str:
    return path + ".lock"


def checkpoint_lock(path: str, kind: str = "flock") -> filelock.BaseFileLock:
    """Return this process's one lock object of ``kind`` for the checkpoint at ``path``.

    Two lock objects on one file open two descriptors, and a thread holding one waits forever for the other
    (filelock 4.3), so every caller shares one object per path and kind.
    """
    key = (lock_path(os.path.abspath(path)), kind)
    with _locks_guard:
        if key not in _locks:
            _locks[key] = _new_lock(key[0], kind)
        return _locks[key]


def _new_lock(path: str, kind: str) -> filelock.BaseFileLock:
    if kind == "soft":
        return filelock.SoftFileLock(path, mode=_OWNER_ONLY)
    # A callback on acquire turns off filelock's silent fallback to a soft lock, so a filesystem without flock
    # raises ENOSYS here and the user chooses soft locking knowingly.
    return filelock.FileLock(path, mode=_OWNER_ONLY, on_acquired=_record_holder)


def _record_holder(fd: int) -> None:
    """Write this process's pid and host into the lock file it just locked; the write also stamps its mtime."""
    record = f"{os.getpid()}\n{socket.gethostname()}\n".encode()
    os.pwrite(fd, record, 0)
    if os.fstat(fd).st_size > len(record):  # truncating costs a metadata update, so only when a longer record was there
        os.ftruncate(fd, len(record))


@contextlib.contextmanager
def locked(path: str, timeout_s: float, kind: str | None = None, unlocked_if_read_only: bool = False
           ) -> Iterator[None]:
    """Hold the lock of the checkpoint at ``path``; raise LockTimeoutError naming the holder after ``timeout_s``.

    With ``unlocked_if_read_only``, a lock file that cannot be opened for writing, as in a read-only folder, is
    logged and the body runs without the lock. That is safe for reading only: saves rename complete files into
    place, and an open file stays readable after it is replaced or removed.
    """
    kind = settings.resolve_lock_kind(kind)
    lock = checkpoint_lock(path, kind)
    acquired = False
    try:
        lock.acquire(timeout=timeout_s)
        acquired = True
    except filelock.Timeout as error:
        raise LockTimeoutError(_timeout_message(lock.lock_file, timeout_s, kind), path) from error
    except OSError as error:
        if not (unlocked_if_read_only and error.errno in _NOT_WRITABLE_ERRNOS):
            raise CheckpointError(_open_error_message(lock.lock_file, error), path) from error
        logger.warning("cannot lock %s (%s), so reading the checkpoint without the lock", lock.lock_file, error)
    if not acquired:
        yield
        return
    try:
        faults.reached("lock-acquired")
        yield
    finally:
        faults.reached("lock-releasing")
        lock.release()


def describe_holder(lock_file: str) -> str | None:
    """Return "pid P on host H since T" from the lock file, or None when it records no holder."""
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        content = os.read(fd, _MAX_HOLDER_BYTES).decode(errors="replace").splitlines()
        since = datetime.datetime.fromtimestamp(os.fstat(fd).st_mtime).astimezone()
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(content) < 2 or not content[0].strip().isdigit():
        return None
    return f"pid {content[0].strip()} on host {content[1].strip()} since {since.isoformat(timespec='seconds')}"


def _timeout_message(lock_file: str, timeout_s: float, kind: str) -> str:
    if os.path.islink(lock_file):
        return (f"timed out after {timeout_s:g} s waiting for the lock {lock_file}: it is a symlink, and runner "
                "never follows symlinks at lock paths; remove it")
    holder = describe_holder(lock_file)
    held_by = f"it is held by {holder}" if holder else "its holder is not recorded"
    advice = "wait for that process to finish, or stop it if it hangs"
    if kind == "soft":
        advice += "; if it died on another host, remove the lock file by hand"
    return f"timed out after {timeout_s:g} s waiting for the lock {lock_file}: {held_by}; {advice}"


def _open_error_message(lock_file: str, error: OSError) -> str:
    code = errno.errorcode.get(error.errno or 0, "")
    if error.errno == errno.ELOOP:
        reason = "it is a symlink, and runner never follows symlinks at lock paths; remove it"
    elif error.errno == errno.ENOSYS:
        reason = f"this filesystem does not support flock; set {settings.LOCK_ENV_VAR}=soft or pass lock='soft'"
    else:
        reason = "check that the folder exists and that you can write to it"
    return f"cannot lock {lock_file}: [Errno {error.errno} {code}] {error.strerror or error}; {reason}"
