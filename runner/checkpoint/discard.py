"""Removal of old checkpoint files in a worker thread, so that a save returns without waiting for it.

Unlinking a large file takes time in proportion to its size, because the filesystem frees its blocks and the
kernel drops its cached pages: 40 ms of a 187 ms save of 256 MiB on ext4 in this project's benchmarks. So
retention renames each file it removes to a trash name, which takes microseconds and removes it from the
checkpoint's names at once, and a worker thread unlinks it while training goes on. The next save,
``wait_for_saves()``, a preempted job's stop and the interpreter's exit wait for the worker. A kill before the
unlink leaves the trash file, which the next save removes.
"""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger(__name__)

_workers: list[threading.Thread] = []
_guard = threading.Lock()


def unlink_later(paths: list[str]) -> None:
    """Unlink ``paths`` in a worker thread; log a failure instead of raising it."""
    if not paths:
        return
    worker = threading.Thread(target=_unlink_all, args=(list(paths),), name="runner-discard")
    with _guard:
        _workers[:] = [thread for thread in _workers if thread.is_alive()]
        _workers.append(worker)
    worker.start()  # not a daemon: the interpreter waits for it at exit


def wait() -> None:
    """Return once every file handed to ``unlink_later`` is unlinked or its failure logged."""
    with _guard:
        workers, _workers[:] = list(_workers), []
    for worker in workers:
        worker.join()


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as error:
            logger.warning("could not remove old checkpoint file %s: %s; a save after this process exits removes it",
                           path, error)


def _forget_workers_in_child() -> None:
    """Start a forked child with no workers, since the parent's threads do not exist in it."""
    global _guard
    _workers.clear()
    _guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_workers_in_child)
