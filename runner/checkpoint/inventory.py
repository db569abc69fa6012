"""A run's checkpoints, newest first, each checked without unpickling: the load path's choice and ``runner inspect``.

A checkpoint is valid when its size, commit record and SHA-256 check out, its header is readable, and it belongs to
the run being loaded. Ownership is checked apart from validity: loading raises for a checkpoint another user could
have written, instead of falling back past it to an older one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from runner.checkpoint import fileformat, known_good, retention
from runner.checkpoint.store import check_trusted, untrusted_reason
from runner.errors import CorruptCheckpointError, NoValidCheckpointError, UnsupportedCheckpointError

logger = logging.getLogger(__name__)

ANY_RUN = object()
"""Pass as ``run_id`` to accept checkpoints of every run."""


@dataclass(frozen=True)
class CheckpointStatus:
    """One checkpoint file and the outcome of checking it."""

    path: str
    number: int | None
    """n of a numbered checkpoint ``<path>.<n>``; None for the newest, at the checkpoint path itself."""
    size: int | None
    header: dict | None
    problem: str | None
    """The reason the checkpoint is invalid; None when it is valid."""
    untrusted: str | None = None
    """The reason loading it needs ``trust=True``; None when the current user may load it."""
    modified_at: float | None = None
    """The file's modification time, in seconds since the epoch."""

    @property
    def valid(self) -> bool:
        return self.problem is None


@dataclass
class OpenCheckpoint:
    """The newest valid checkpoint, verified and still open, so what is unpickled is what was verified."""

    file: BinaryIO
    verified: fileformat.VerifiedCheckpoint
    skipped: list[CheckpointStatus]


def checkpoint_files(path: str) -> list[tuple[int | None, str]]:
    """Return ``(number, path)`` of every checkpoint of ``path``, newest first, each file once.

    The checkpoint path comes first, then the numbered ones. A numbered name that is a hard link to a file listed
    before it is left out. Such a link remains when a save was killed between linking and renaming.
    """
    candidates: list[tuple[int | None, str]] = [(None, path)] if os.path.lexists(path) else []
    candidates += retention.numbered_checkpoints(path)
    files, seen = [], []
    for number, candidate in candidates:
        try:
            file_stat = os.stat(candidate)
        except OSError:
            files.append((number, candidate))
            continue
        if any(os.path.samestat(file_stat, other) for other in seen):
            continue
        seen.append(file_stat)
        files.append((number, candidate))
    return files


def open_regular(path: str) -> BinaryIO:
    """Open ``path`` for reading; raise OSError unless it is a regular file, since a FIFO or device would block."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def examine_all(path: str, run_id: object = ANY_RUN) -> list[CheckpointStatus]:
    """Check every checkpoint of ``path``, newest first, without unpickling any."""
    statuses = []
    for number, candidate in checkpoint_files(path):
        try:
            with open_regular(candidate) as file:
                status, _ = _check(file, candidate, number, run_id)
        except OSError as error:
            status = CheckpointStatus(candidate, number, None, None, f"cannot be read: {error}")
        except UnsupportedCheckpointError as error:
            status = CheckpointStatus(candidate, number, None, None, _reason(error, candidate))
        statuses.append(status)
    return statuses


@contextlib.contextmanager
def open_newest_valid(path: str, run_id: str | None, trust: bool, preload: fileformat.PreloadPlanner | None = None
                      ) -> Iterator[OpenCheckpoint | None]:
    """Yield the newest valid checkpoint of ``path``, open; or None when ``path`` has no checkpoints at all.

    ``preload`` goes to ``fileformat.verify``, to read parts of the checkpoint in the pass that checks it.

    Log a WARNING for each newer checkpoint skipped and why. When none is valid, raise NoValidCheckpointError
    listing every checkpoint with its problem. Unless ``trust``, raise UntrustedCheckpointError for a checkpoint
    that another user could have written. Raise UnsupportedCheckpointError for one written in a newer format.
    """
    skipped: list[CheckpointStatus] = []
    files = checkpoint_files(path)
    if files and files[0][0] is not None:
        logger.warning("checkpoint %s is missing; trying the older ones kept beside it", path)
    for number, candidate in files:
        try:
            file = open_regular(candidate)
        except OSError as error:
            skipped.append(_skip(CheckpointStatus(candidate, number, None, None, f"cannot be read: {error}")))
            continue
        with file:
            if not trust:
                check_trusted(candidate, os.fstat(file.fileno()))
            status, verified = _check(file, candidate, number, run_id, preload)
            if verified is None or not status.valid:
                skipped.append(_skip(status))
                continue
            known_good.remember(os.fstat(file.fileno()))
            yield OpenCheckpoint(file, verified, skipped)
            return
    if skipped:
        reasons = [(status.path, status.problem or "") for status in skipped]
        raise NoValidCheckpointError(_none_valid_message(path, skipped), path, reasons)
    yield None


def _check(file: BinaryIO, path: str, number: int | None, run_id: object,
           preload: fileformat.PreloadPlanner | None = None
           ) -> tuple[CheckpointStatus, fileformat.VerifiedCheckpoint | None]:
    file_stat = os.fstat(file.fileno())
    untrusted = untrusted_reason(file_stat)
    try:
        verified = fileformat.verify(file, path, preload)
    except (CorruptCheckpointError, OSError) as error:
        problem = _reason(error, path) if isinstance(error, CorruptCheckpointError) else f"cannot be read: {error}"
        return CheckpointStatus(path, number, file_stat.st_size, None, problem, untrusted, file_stat.st_mtime), None
    header = verified.header
    problem = None
    if run_id is not ANY_RUN and header.get("run_id") != run_id:
        problem = f"it belongs to run {header.get('run_id')!r}, not to this job's run {run_id!r}"
    return CheckpointStatus(path, number, verified.size, header, problem, untrusted, file_stat.st_mtime), verified


def _reason(error: Exception, path: str) -> str:
    """Return the error's message without the leading "checkpoint <path>", which the listing shows already."""
    message = str(error)
    for prefix in (f"checkpoint {path} ", f"{path} "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _skip(status: CheckpointStatus) -> CheckpointStatus:
    logger.warning("skipping checkpoint %s: %s", status.path, status.problem)
    return status


def _none_valid_message(path: str, skipped: list[CheckpointStatus]) -> str:
    lines = [f"no valid checkpoint of {path} to load, and none was unpickled:"]
    lines += [f"  {status.path}: {status.problem}" for status in skipped]
    lines.append("Run `runner inspect` on the path for details. To start from scratch, which discards them, "
                 "pass on_invalid='start_fresh' or move them away.")
    return "\n".join(lines)
