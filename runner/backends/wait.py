"""Waiting for a submitted job to end, through its requeues: what ``runner submit --wait`` does.

A requeued job keeps its id and goes back to PENDING, so the wait ends only at a state that SLURM leaves no
more. A state counts as final once two polls in a row see it, because a job can pass through states such as
PREEMPTED on its way to a requeue.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from runner.backends.commands import CommandError
from runner.backends.slurm_control import job_exit_codes, job_states, show_job

logger = logging.getLogger(__name__)

ACTIVE_STATES = {"PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_FED",
                 "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
"""States of a job that is not over (squeue(1), JOB STATE CODES); any other state ends the wait."""
POLL_S = 2.0
EXIT_NOT_COMPLETED = 1
"""Exit status of the wait for a job that ended without an exit code of its own, such as a cancelled job."""


@dataclass(frozen=True)
class JobEnd:
    """The end of a job: its last state, its exit status and signal, and how often SLURM restarted it."""

    state: str
    exit_status: int
    signal: int
    restarts: int

    def exit_code(self) -> int:
        """Return the status for ``runner submit --wait`` to exit with, as a shell reports a command's."""
        if self.signal:
            return 128 + self.signal
        if self.exit_status:
            return self.exit_status
        return 0 if self.state == "COMPLETED" else EXIT_NOT_COMPLETED


def wait_for_job(job_id: str, poll_s: float = POLL_S, sleep: Callable[[float], None] = time.sleep) -> JobEnd:
    """Poll SLURM until job ``job_id`` reaches a final state; log each state change; return how it ended.

    Raise CommandError when neither scontrol nor sacct can tell the job's state.
    """
    seen = None
    candidate = None
    while True:
        current = _poll(job_id)
        if (current.state, current.restarts) != seen:
            seen = (current.state, current.restarts)
            logger.info("job %s is %s (restarts: %d)", job_id, current.state, current.restarts)
        if current.state not in ACTIVE_STATES:
            if candidate == current:
                return current
            candidate = current
        else:
            candidate = None
        sleep(poll_s)


def _poll(job_id: str) -> JobEnd:
    try:
        fields = show_job(job_id)
    except CommandError as error:
        if "Invalid job id" not in f"{error.stdout}{error.stderr}{error}":
            raise
        return _from_accounting(job_id)  # slurmctld drops a job record MinJobAge seconds after the job ended
    state = fields.get("JobState", "UNKNOWN")
    status, signal = _exit_code(fields.get("ExitCode", "0:0"))
    return JobEnd(state, status, signal, int(fields.get("Restarts", "0") or 0))


def _from_accounting(job_id: str) -> JobEnd:
    states = job_states(job_id)
    codes = job_exit_codes(job_id)
    if not states:
        raise CommandError(f"SLURM knows no job {job_id}: neither scontrol nor sacct lists it; check the job id",
                           ["sacct", f"--jobs={job_id}"])
    status, signal = _exit_code(codes[-1] if codes else "0:0")
    return JobEnd(states[-1], status, signal, len(states) - 1)


def _exit_code(text: str) -> tuple[int, int]:
    """Parse SLURM's ``STATUS:SIGNAL`` exit code; an unreadable one counts as 0:0."""
    status, _, signal = text.partition(":")
    try:
        return int(status), int(signal or 0)
    except ValueError:
        return 0, 0
