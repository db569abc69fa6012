"""Background saves: training goes on while a checkpoint is written.

``save_checkpoint(..., background=True)`` first takes a snapshot in the caller's thread: it pickles the payload
and copies every tensor storage into host memory (``runner.checkpoint.snapshot``), so training after the call
cannot change what is written. A worker thread then runs the same save transaction as a synchronous save (lock,
temp file, ``torch.save``, fsync, rename, retention) from the snapshot. At most one save is in flight: a new one
first waits for the previous one.

The error of a failed background save is raised by the next ``save_checkpoint`` call, by ``wait_for_saves()``,
or by a preempted job's stop, which waits for the save to commit before it requeues. An error that none of these
collects before the process exits is logged at ERROR.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Callable

from runner import pending_saves
from runner.checkpoint import discard
from runner.checkpoint.snapshot import Snapshot
from runner.errors import CheckpointSaveError

logger = logging.getLogger(__name__)


class BackgroundSaver:
    """Runs one checkpoint save at a time in a worker thread, and keeps its snapshot memory between saves."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self._name: str | None = None
        self._guard = threading.Lock()

    def start(self, name: str, commit: Callable[[Snapshot], None], take_snapshot: Callable[[Snapshot], None]) -> None:
        """Wait for the previous save, snapshot with ``take_snapshot`` here, then run ``commit`` in a worker thread.

        Raise the previous save's error, if it failed, without starting this one.
        """
        with self._guard:
            self._wait_before_locked(name)
            take_snapshot(self.snapshot)
            self._name = name
            # Not a daemon even when the caller's thread is one: a multiprocessing child joins only the others.
            self._worker = threading.Thread(target=self._run, args=(commit,), name="runner-background-save",
                                            daemon=False)
            self._worker.start()

    def wait(self) -> None:
        """Return once the save in flight, if any, has committed; raise its error if it failed."""
        with self._guard:
            self._wait_locked()

    def wait_before_save(self, name: str) -> None:
        """Wait as ``wait`` does before a save of ``name``; the error of a failed save then states that ``name`` was
        not saved."""
        with self._guard:
            self._wait_before_locked(name)

    def finish(self) -> None:
        """Return once the save in flight, if any, has ended; keep its error for the next save or wait."""
        with self._guard:
            if self._worker is not None:
                self._worker.join()
                self._worker = None

    def _wait_before_locked(self, name: str) -> None:
        try:
            self._wait_locked()
        except Exception as error:
            raise CheckpointSaveError(
                f"checkpoint {name} was not saved, because the background save before it failed: {error}",
                name) from error

    def _wait_locked(self) -> None:
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        discard.wait()  # old checkpoints that retention renamed, after synchronous saves too, are unlinked
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self, commit: Callable[[Snapshot], None]) -> None:
        try:
            commit(self.snapshot)
        except BaseException as error:  # raised in the caller's thread by the next save or wait
            self._error = error
            # Logged now as well: a process that ends with os._exit (a multiprocessing child) skips the exit hook.
            logger.error("background save of checkpoint %s failed; the next save or wait_for_saves() raises it: %s",
                         self._name, error)

    def report_uncollected(self) -> None:
        """Log at ERROR an error that no save or wait raised, as the process exits."""
        if self._worker is not None:
            self._worker.join()
        if self._error is not None:
            logger.error("the background save of checkpoint %s failed, and nothing waited for it: %s",
                         self._name, self._error)


_saver = BackgroundSaver()
pending_saves.register(_saver.wait)
atexit.register(_saver.report_uncollected)
# A forked child has no worker thread, and a lock held by another thread of the parent would stay held in it.
os.register_at_fork(after_in_child=_saver.__init__)


def saver() -> BackgroundSaver:
    """Return this process's saver, which every ``save_checkpoint(..., background=True)`` uses."""
    return _saver


def wait_for_saves() -> None:
    """Wait until the background save in flight, if any, has committed and old checkpoints are removed; raise the
    save's error if it failed.

    Call it before the end of a job that saves in the background, so that a failed last save is not missed.
    """
    _saver.wait()
