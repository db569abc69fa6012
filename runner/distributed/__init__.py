"""Jobs of several tasks with torch.distributed: every rank stops, checkpoints and resumes together.

Call ``init_process_group()`` after creating the ``runner.Job``; ``Job.stop_if_preempted`` then makes the ranks
agree before stopping. Save and load with this package's ``save_checkpoint`` and ``maybe_load_checkpoint``.
"""

from runner.distributed.checkpoint import (
    WORLD_SIZE_ATTRIBUTE,
    WorldSizeChangedError,
    maybe_load_checkpoint,
    save_checkpoint,
)
from runner.distributed.rendezvous import (
    Rendezvous,
    RendezvousError,
    derive_port,
    expand_nodelist,
    init_process_group,
    rendezvous_for,
)
from runner.distributed.stop import count_across_ranks, stop_together

__all__ = [
    "WORLD_SIZE_ATTRIBUTE",
    "Rendezvous",
    "RendezvousError",
    "WorldSizeChangedError",
    "count_across_ranks",
    "derive_port",
    "expand_nodelist",
    "init_process_group",
    "maybe_load_checkpoint",
    "rendezvous_for",
    "save_checkpoint",
    "stop_together",
]
