"""The running job: its environment, its preemption watcher, and the stop that follows a preemption."""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Callable, Iterable, NoReturn

from runner.environment import JobEnvironment
from runner.pending_saves import wait_for_pending_saves
from runner.preemption import PreemptionWatcher
from runner.requeue import RequeuePolicy, requeue_after_stop
from runner.stop_reason import signal_lead_s

logger = logging.getLogger(__name__)


class Job:
    """A preemptible job seen from inside.

    Create it early, before the slow start-up, so that a signal sent during start-up is recorded. At each safe
    point call ``stop_if_preempted(save)``: after a preemption signal it saves, requests a requeue and exits with
    ``exitcodes.REQUEUED`` (75); without one it returns at once. In a torch.distributed process group of several
    ranks, every rank must call it at the same safe points, because the ranks agree there whether to stop
    (``runner.distributed.stop_together``).
    """

    def __init__(self, signals: Iterable[str | int] | None = None, env: JobEnvironment | None = None,
                 max_requeues: int | None = None, requeue_on_time_limit: bool | None = None):
        """``max_requeues`` and ``requeue_on_time_limit`` default to RUNNER_MAX_REQUEUES (no cap when unset) and
        RUNNER_REQUEUE_ON_TIME_LIMIT (requeue when unset). Raise ValueError when one of these variables, or
        RUNNER_SIGNAL_LEAD_S, RUNNER_PREEMPT_SIGNAL or RUNNER_WATCH_SIGTERM, has an invalid value."""
        self.env = env or JobEnvironment.from_environ()
        self.policy = RequeuePolicy.from_environ(max_requeues=max_requeues,
                                                 requeue_on_time_limit=requeue_on_time_limit)
        signal_lead_s()  # Checked here so that a bad value fails at start-up, not in the stop after a preemption.
        self.watcher = PreemptionWatcher(signals).install()
        # Python gives signals their default action back late in shutdown, so a preemption signal arriving then
        # would kill a job whose work is done; ignoring them from the first exit handler on keeps its status.
        atexit.register(self.watcher.ignore_further)

    @property
    def preempted(self) -> bool:
        return self.watcher.requested

    def stop_if_preempted(self, save: Callable[[], None] | None = None) -> None:
        if _process_group_size() > 1:
            from runner.distributed.stop import stop_together

            stop_together(self, save)
            return
        if self.preempted:
            if save is not None:
                save()
            self.requeue_and_exit()

    def requeue_and_exit(self) -> NoReturn:
        """Ask the scheduler to requeue this job and exit with ``requeue()``'s status."""
        status = self.requeue()
        sys.stdout.flush()
        sys.exit(status)

    def requeue(self) -> int:
        """Ask the scheduler to requeue this saved job unless the policy forbids it, and return the exit status:
        75 when the scheduler accepted, 76 when it could not be asked, 77 when the policy refused."""
        self.watcher.ignore_further()
        wait_for_pending_saves()  # a background save must commit before the scheduler restarts the job
        return requeue_after_stop(self.env, self.watcher.first, self.policy)


def _process_group_size() -> int:
    """Return the size of the torch.distributed process group, or 1 when none is initialized."""
    # Read from sys.modules so that a job that never imported torch.distributed does not pay for the import here.
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return 1
    return distributed.get_world_size()
