"""Checkpoints of a data-parallel job: rank 0 writes, every rank reads, and the world size is checked on load.

The checkpoint contains rank 0's strategy, which is the whole training state when the model and optimizer are
replicated, as in plain data parallelism. It also contains the random state of every rank, which differs between
ranks seeded apart (dropout, augmentation). Other state that differs between ranks, such as a sharded optimizer's,
is not saved by these functions.

The world size is stored in the saved strategy as the attribute named by WORLD_SIZE_ATTRIBUTE, because the
checkpoint header has no field for job metadata. It is committed atomically with the rest of the strategy.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable

import torch
import torch.distributed as dist

from runner.distributed.stop import count_across_ranks, gather_random_states, random_states_for_stop, saving_for_stop
from runner.errors import CheckpointError, CheckpointSaveError

logger = logging.getLogger(__name__)

WORLD_SIZE_ATTRIBUTE = "_runner_world_size"
RANDOM_STATES_ATTRIBUTE = "_runner_rank_random_states"
"""The saved strategy's attribute with every rank's random state, a list indexed by rank."""


class WorldSizeChangedError(CheckpointError):
    """The checkpoint was saved by a job with another number of tasks than the job loading it."""

    def __init__(self, message: str, path: str | os.PathLike | None, saved_world_size: int, world_size: int):
        super().__init__(message, path)
        self.saved_world_size = saved_world_size
        self.world_size = world_size

    def __reduce__(self):
        return type(self), (self.args[0], self.path, self.saved_world_size, self.world_size)


def _rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save_checkpoint(strategy: Any, fname: str | os.PathLike, exclude: Iterable[str] | None = None,
                    **options: Any) -> None:
    """Save ``strategy`` on rank 0 with ``runner.save_checkpoint``; the other ranks return once it is committed.

    Every rank must call it at the same point, except inside the `save` given to ``Job.stop_if_preempted``, which
    runs on rank 0 alone: there it saves without waiting for the other ranks, which wait in the stop itself.
    `options` go to ``runner.save_checkpoint``; with ``background=True`` the ranks return once rank 0 has copied
    the state, and a preempted job's stop waits for the commit. When the save fails, rank 0 raises its error and
    the other ranks raise CheckpointSaveError, so that no rank waits forever.
    """
    from runner.checkpoint import save_checkpoint as save_on_this_rank

    rank, world_size = _rank_and_world_size()
    setattr(strategy, WORLD_SIZE_ATTRIBUTE, world_size)
    if saving_for_stop():
        setattr(strategy, RANDOM_STATES_ATTRIBUTE, random_states_for_stop())
        save_on_this_rank(strategy, fname, exclude, **options)
        return
    setattr(strategy, RANDOM_STATES_ATTRIBUTE, gather_random_states() if world_size > 1 else None)
    error: BaseException | None = None
    if rank == 0:
        try:
            save_on_this_rank(strategy, fname, exclude, **options)
        except BaseException as raised:  # re-raised below, once the other ranks know
            error = raised
    failed_ranks = count_across_ranks(error is not None) if world_size > 1 else 0
    if error is not None:
        raise error
    if failed_ranks:
        raise CheckpointSaveError(
            f"rank 0 failed to save checkpoint {os.fspath(fname)}; rank {rank} stops too, and rank 0's output "
            "shows the error", fname)


def maybe_load_checkpoint(
    strategy: Any,
    fname: str | os.PathLike,
    map_location: Any = None,
    unique_objects: Any = None,
    *,
    allow_world_size_change: bool = False,
    **options: Any,
) -> tuple[Any, int]:
    """Load the checkpoint on every rank with ``runner.maybe_load_checkpoint``; return ``(strategy, next index)``.

    Raise CheckpointError when the ranks found different checkpoints (the folder is not shared by all nodes), and
    WorldSizeChangedError when the checkpoint was saved by a job with another number of tasks, unless
    `allow_world_size_change`: then training goes on with the current tasks, each taking its share of every batch
    anew, and its result differs from an uninterrupted run with the saved number of tasks.
    """
    from runner.checkpoint import maybe_load_checkpoint as load_on_this_rank

    loaded, next_index = load_on_this_rank(strategy, fname, map_location, unique_objects, **options)
    _, world_size = _rank_and_world_size()
    found = loaded is not strategy
    if world_size > 1:
        _check_ranks_agree(fname, found, next_index)
    if found:
        same_world_size = _check_world_size(loaded, fname, world_size, allow_world_size_change)
        _restore_random_state_of_rank(loaded, same_world_size)
    return loaded, next_index


def _restore_random_state_of_rank(loaded: Any, same_world_size: bool) -> None:
    """Give this rank the random state it had at the save; the load restored rank 0's on every rank."""
    from runner.checkpoint import rng

    states = getattr(loaded, RANDOM_STATES_ATTRIBUTE, None)
    if states is None:
        return
    delattr(loaded, RANDOM_STATES_ATTRIBUTE)  # the next save records fresh ones
    rank, _ = _rank_and_world_size()
    if same_world_size:
        rng.restore(states[rank])


def _check_ranks_agree(fname: str | os.PathLike, found: bool, next_index: int) -> None:
    # One all-reduce MAX over the values and their negations gives every rank both the maximum and the minimum.
    tensor = torch.tensor([int(found), -int(found), next_index, -next_index], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    any_found, all_found = bool(tensor[0]), bool(-tensor[1])
    if any_found != all_found or int(tensor[2]) != -int(tensor[3]):
        raise CheckpointError(
            f"the ranks found different checkpoints at {os.fspath(fname)} (next experience from {-int(tensor[3])} "
            f"to {int(tensor[2])}, found on some ranks only: {any_found and not all_found}); put the checkpoint "
            "in a folder that every node of the job sees, on a shared filesystem", fname)


def _check_world_size(loaded: Any, fname: str | os.PathLike, world_size: int, allow_change: bool) -> bool:
    """Raise WorldSizeChangedError unless the saved world size matches or a change is allowed; return whether it
    matches."""
    saved_world_size = getattr(loaded, WORLD_SIZE_ATTRIBUTE, None)
    path = os.fspath(fname)
    if saved_world_size is None:
        logger.warning("checkpoint %s records no world size (it was not saved by runner.distributed), so a change "
                       "of the number of tasks cannot be detected", path)
        return False
    if saved_world_size == world_size:
        return True
    if not allow_change:
        raise WorldSizeChangedError(
            f"checkpoint {path} was saved by a job of {saved_world_size} task(s), but this job has {world_size}; "
            f"run it with {saved_world_size} task(s) (srun --ntasks={saved_world_size}, runner local --ntasks "
            f"{saved_world_size}) to resume exactly, or pass allow_world_size_change=True to go on with "
            f"{world_size}, which splits every batch anew and changes the result",
            path, saved_world_size, world_size)
    logger.warning("checkpoint %s was saved by %d task(s); going on with %d, as allow_world_size_change permits, "
                   "with rank 0's random state on every rank", path, saved_world_size, world_size)
    setattr(loaded, WORLD_SIZE_ATTRIBUTE, world_size)
    return False
