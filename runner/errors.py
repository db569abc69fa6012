"""Exceptions raised by runner. Each carries the path or job id it concerns as an attribute."""

from __future__ import annotations

import os


class RunnerError(Exception):
    """Base class of every error that runner raises on purpose."""


class CheckpointError(RunnerError):
    """A checkpoint could not be written or read."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)

    def __reduce__(self):
        return type(self), (self.args[0], self.path)


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is truncated, damaged or was never committed."""


class NoValidCheckpointError(CorruptCheckpointError):
    """Checkpoints exist, but none can be loaded; ``reasons`` lists ``(path, why)`` for each."""

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 reasons: list[tuple[str, str]] | None = None):
        super().__init__(message, path)
        self.reasons = list(reasons or [])

    def __reduce__(self):
        return type(self), (self.args[0], self.path, self.reasons)


class UnsupportedCheckpointError(CheckpointError):
    """A checkpoint was written in a format this version of runner does not read."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint could have been written by another user, so loading it could run their code."""


class CheckpointSaveError(CheckpointError):
    """Saving a checkpoint failed; the previous checkpoint is left as it was."""


class LockTimeoutError(CheckpointError, TimeoutError):
    """The lock beside a checkpoint could not be acquired in time."""


class RequeueError(RunnerError):
    """The scheduler could not be asked to requeue the job."""

    def __init__(self, message: str, job_id: str | None = None):
        super().__init__(message)
        self.job_id = job_id

    def __reduce__(self):
        return type(self), (self.args[0], self.job_id)
