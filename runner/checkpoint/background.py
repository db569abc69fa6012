"""Background saves: training goes on while a checkpoint is written.

``save_checkpoint(..., background=True)`` first takes a snapshot in the caller's thread: ``torch.save`` pickles
the whole payload into host memory, which copies every tensor, so training after the call cannot change what is
written. A worker thread then runs the same save transaction as a synchronous save (lock, temp file, fsync,
rename, retention) with those bytes. At most one save is in flight: a new one first waits for the previous one.

The error of a failed background save is raised by the next ``save_checkpoint`` call, by ``wait_for_saves()``,
or by a preempted job's stop, which waits for the save to commit before it requeues. An error that none of these
collects before the process exits is logged at ERROR.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import threading
import warnings
from typing import Any, Callable

import torch

from runner import pending_saves
from runner.checkpoint import discard

logger = logging.getLogger(__name__)

BLOCK_BYTES = 4 << 20
PENDING_BYTES = 64 << 10
"""Writes smaller than this wait in one buffer and are copied into the blocks together, at less cost per call."""
TORCH_COPY_BYTES = 256 << 10
"""Writes at least this large, such as a tensor's bytes, are copied by torch, which uses every intra-op thread."""


class Snapshot(io.RawIOBase):
    """A write-only stream that keeps what is written in host memory, in blocks reused from one save to the next.

    Reusing the blocks spares later snapshots the page faults of fresh memory, which cost more than the copy.
    """

    def __init__(self) -> None:
        super().__init__()
        self._blocks: list[memoryview] = []
        self._block_tensors: list[torch.Tensor] = []
        self._pending = bytearray()
        """Small writes not yet copied into the blocks: a save makes hundreds of them for zip headers."""
        self.size = 0
        """Bytes in the blocks, without the pending ones."""

    def reset(self) -> None:
        self.size = 0
        self._pending.clear()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.nbytes < PENDING_BYTES:
            self._pending += view
            if len(self._pending) >= PENDING_BYTES:
                self.flush()
            return view.nbytes
        self.flush()
        return self._copy(view.cast("B"))

    def _copy(self, view: memoryview) -> int:
        source = _as_tensor(view) if len(view) >= TORCH_COPY_BYTES else None
        written = 0
        while written < len(view):
            block, offset = divmod(self.size, BLOCK_BYTES)
            if block == len(self._blocks):
                self._add_block()
            count = min(BLOCK_BYTES - offset, len(view) - written)
            if source is not None:
                self._block_tensors[block][offset:offset + count].copy_(source[written:written + count])
            else:
                # Assigning to a memoryview copies once; assigning to a bytearray slice copies the source first.
                self._blocks[block][offset:offset + count] = view[written:written + count]
            written += count
            self.size += count
        return written

    def _add_block(self) -> None:
        memory = bytearray(BLOCK_BYTES)
        self._blocks.append(memoryview(memory))
        self._block_tensors.append(torch.frombuffer(memory, dtype=torch.uint8))

    def flush(self) -> None:
        """Copy the pending small writes into the blocks; ``torch.save`` calls it when it is done."""
        if self._pending:
            self._copy(memoryview(self._pending))
            self._pending.clear()

    def chunks(self) -> list[memoryview]:
        """Return views of everything written since the last ``reset``, in order."""
        self.flush()
        views = []
        remaining = self.size
        for block in self._blocks:
            if remaining <= 0:
                break
            views.append(block[:min(remaining, BLOCK_BYTES)])
            remaining -= BLOCK_BYTES
        return views


def _as_tensor(view: memoryview) -> torch.Tensor:
    """Return a uint8 tensor over ``view``'s memory, which the snapshot only reads."""
    if view.readonly:
        # torch warns once per process that it cannot mark the tensor read-only; nothing here writes to it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.frombuffer(view, dtype=torch.uint8)
    return torch.frombuffer(view, dtype=torch.uint8)


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
            self._wait_locked()
            self.snapshot.reset()
            take_snapshot(self.snapshot)
            self._name = name
            self._worker = threading.Thread(target=self._run, args=(commit,), name="runner-background-save")
            self._worker.start()

    def wait(self) -> None:
        """Return once the save in flight, if any, has committed; raise its error if it failed."""
        with self._guard:
            self._wait_locked()

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
            logger.debug("background save of %s failed: %s", self._name, error)

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
