"""The stop after a preemption when a job runs as several ranks: agree, save once, requeue once, exit together.

A preemption signal may reach some ranks and not others, and a rank that stopped alone would leave the others
blocked in their next collective. So at each safe point the ranks count, with one all-reduce, how many of them
received the signal, and all stop at that same safe point when any did. Every rank must therefore reach the same
safe points in the same order, as it reaches the same collectives in data-parallel training.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from typing import TYPE_CHECKING, Callable, NoReturn

import torch
import torch.distributed as dist

from runner import exitcodes
from runner.errors import CheckpointSaveError
from runner.pending_saves import wait_for_pending_saves

if TYPE_CHECKING:
    from runner.job import Job

logger = logging.getLogger(__name__)

_saving_for_stop = False
"""True while rank 0 runs the `save` of ``stop_together``, when the other ranks cannot join a collective."""
_random_states_for_stop: list | None = None
"""Every rank's random state, gathered by ``stop_together`` before rank 0 runs its `save`."""


def saving_for_stop() -> bool:
    """Return whether this rank is running the save of a stop, which must not start a collective."""
    return _saving_for_stop


def random_states_for_stop() -> list | None:
    """Return every rank's random state, indexed by rank, while rank 0 runs the save of a stop; else None."""
    return _random_states_for_stop if _saving_for_stop else None


def gather_random_states() -> list:
    """Return the random state of every rank, indexed by rank; every rank must call it (an all-gather)."""
    from runner.checkpoint import rng

    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng.capture())
    return states


def count_across_ranks(flag: bool) -> int:
    """Return how many ranks passed a true `flag`; every rank gets the same number (an all-reduce SUM)."""
    tensor = torch.tensor([int(bool(flag))], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return int(tensor.item())


def stop_together(job: "Job", save: Callable[[], None] | None = None) -> None:
    """Return when no rank was preempted; otherwise stop every rank at this safe point and exit.

    Rank 0 alone runs `save`, and every rank waits until that save and its own background saves have committed.
    Rank 0 then applies the job's requeue policy with ``Job.requeue()``, which requests the one requeue, and every
    rank exits with its status: 75 when the scheduler accepted, 76 when it could not be asked, 77 when the policy
    refused. When a save fails, the rank
    where it failed raises its error and the other ranks raise CheckpointSaveError.
    """
    preempted_ranks = count_across_ranks(job.preempted)
    if preempted_ranks == 0:
        return
    rank, world_size = dist.get_rank(), dist.get_world_size()
    job.watcher.ignore_further()
    _log_stop(job, rank, preempted_ranks, world_size)

    global _random_states_for_stop
    _random_states_for_stop = gather_random_states()  # rank 0 saves alone, so it needs the others' states now
    try:
        save_error = _save_and_commit(rank, save)
    finally:
        _random_states_for_stop = None
    # From the commit on, a rank's only work is to exit. After rank 0's `scontrol requeue`, SLURM sends SIGTERM to
    # every task, and that must not turn their exit 75 into a kill. SIGKILL still follows after KillWait.
    previous_sigterm = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    failed_ranks = count_across_ranks(save_error is not None)
    if failed_ranks > 0:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if save_error is not None:
            raise save_error
        raise CheckpointSaveError(f"saving the checkpoint failed on {failed_ranks} rank(s) before stopping; rank "
                                  f"{rank} stops too, and the output of the failed rank shows the error")
    _exit_together(job, rank)


def _log_stop(job: "Job", rank: int, preempted_ranks: int, world_size: int) -> None:
    record = job.watcher.first
    if record is not None:
        received = f"it received {record.signal.name} {time.monotonic() - record.received_monotonic:.1f} s ago"
    else:
        received = "it received no preemption signal itself"
    logger.warning("job %s rank %d stopping: %d of %d ranks were preempted, and %s",
                   job.env.job_id, rank, preempted_ranks, world_size, received)


def _save_and_commit(rank: int, save: Callable[[], None] | None) -> BaseException | None:
    """Run `save` on rank 0, wait for this rank's background saves to commit, and return the error of either."""
    global _saving_for_stop
    try:
        if rank == 0 and save is not None:
            _saving_for_stop = True
            try:
                save()
            finally:
                _saving_for_stop = False
        wait_for_pending_saves()  # a background save counts as done only once it has committed
    except BaseException as error:  # re-raised by the caller once the other ranks know
        return error
    return None


def _exit_together(job: "Job", rank: int) -> NoReturn:
    status = torch.tensor([exitcodes.REQUEUED], dtype=torch.int64)
    if rank == 0:
        status[0] = job.requeue()
    dist.broadcast(status, src=0)
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.exit(int(status.item()))
