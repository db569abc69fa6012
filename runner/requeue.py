"""Asking the job's scheduler to run it again: ``scontrol requeue`` on SLURM, a request file under ``runner local``.

``requeue_after_stop`` applies the policy (requeue cap, time limit, a requeue SLURM already made) and returns the
job's exit status. ``request_requeue`` only sends the request to the scheduler.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Mapping

from runner import exitcodes
from runner.backends.commands import CommandError, run_command
from runner.environment import JobEnvironment
from runner.errors import RequeueError
from runner.preemption import SignalRecord
from runner.stop_reason import StopCause, StopReason, find_stop_reason

logger = logging.getLogger(__name__)

MAX_REQUEUES_VAR = "RUNNER_MAX_REQUEUES"
"""The maximum number of requeues of a job, compared with SLURM_RESTART_COUNT; unset means no cap."""

REQUEUE_ON_TIME_LIMIT_VAR = "RUNNER_REQUEUE_ON_TIME_LIMIT"
"""``0`` makes a job stopped by its time limit exit 77 instead of requeueing; the default ``1`` requeues it."""


@dataclass(frozen=True)
class RequeuePolicy:
    """Rules that decide whether a stopped job is requeued."""

    max_requeues: int | None = None
    """No requeue once ``SLURM_RESTART_COUNT`` has reached it; None means no cap."""
    requeue_on_time_limit: bool = True

    def __post_init__(self) -> None:
        if self.max_requeues is not None and (not isinstance(self.max_requeues, int) or self.max_requeues < 0):
            raise ValueError(f"invalid max_requeues {self.max_requeues!r}: give a whole number, 0 or more, or None")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, max_requeues: int | None = None,
                     requeue_on_time_limit: bool | None = None) -> "RequeuePolicy":
        """Build the policy from the arguments, and from RUNNER_MAX_REQUEUES and RUNNER_REQUEUE_ON_TIME_LIMIT
        for those left None."""
        env = os.environ if environ is None else environ
        if max_requeues is None and env.get(MAX_REQUEUES_VAR, "").strip():
            max_requeues = _count_variable(env, MAX_REQUEUES_VAR)
        if requeue_on_time_limit is None:
            requeue_on_time_limit = _boolean_variable(env, REQUEUE_ON_TIME_LIMIT_VAR, True)
        return cls(max_requeues, requeue_on_time_limit)


def requeue_after_stop(env: JobEnvironment, record: SignalRecord | None, policy: RequeuePolicy) -> int:
    """Requeue a job that has saved and stops, unless the policy forbids it; log why, and return its exit status.

    75 (REQUEUED): the scheduler will run it again. 76 (REQUEUE_FAILED): the requeue could not be requested.
    77 (REQUEUE_LIMIT): the policy kept it from running again. Call it once the job's checkpoint is saved.
    """
    reason = find_stop_reason(env, record)
    job = env.requeue_target or f"(process {os.getpid()})"
    if record is not None:
        logger.warning("job %s stopping after %s received %.1f s ago: %s (%s)", job, record.signal.name,
                       time.monotonic() - record.received_monotonic, reason.cause.value, reason.detail)
    else:
        logger.warning("job %s stopping: %s (%s)", job, reason.cause.value, reason.detail)
    refusal = _policy_refusal(env, reason, policy)
    if refusal is not None:
        logger.error("job %s will not run again: %s. The checkpoint is saved; resubmit the job to resume",
                     job, refusal)
        if reason.requeued_by_slurm:
            _cancel_slurm_requeue(env)
        return exitcodes.REQUEUE_LIMIT
    if reason.requeued_by_slurm:
        logger.warning("job %s: SLURM requeued it already, so runner does not call scontrol requeue", job)
        return exitcodes.REQUEUED
    try:
        request_requeue(env)
    except RequeueError as error:
        logger.error("%s", error)
        return exitcodes.REQUEUE_FAILED
    return exitcodes.REQUEUED


def _policy_refusal(env: JobEnvironment, reason: StopReason, policy: RequeuePolicy) -> str | None:
    if policy.max_requeues is not None and env.restart_count >= policy.max_requeues:
        return (f"it reached its maximum of {policy.max_requeues} requeues (SLURM_RESTART_COUNT="
                f"{env.restart_count}; the maximum comes from {MAX_REQUEUES_VAR} or Job(max_requeues=...))")
    if reason.cause is StopCause.TIME_LIMIT and not policy.requeue_on_time_limit:
        return (f"it reached its time limit, and requeueing at the time limit is off ({REQUEUE_ON_TIME_LIMIT_VAR}=0 "
                "or Job(requeue_on_time_limit=False))")
    return None


def _cancel_slurm_requeue(env: JobEnvironment) -> None:
    """Cancel the run that SLURM queued by itself after a preemption, so that the requeue cap holds."""
    try:
        run_command(["scancel", str(env.requeue_target)])
    except CommandError as error:
        logger.error("job %s: SLURM requeued it after a preemption and scancel failed, so it will run again: %s",
                     env.requeue_target, error)
        return
    logger.warning("job %s: cancelled the run that SLURM had queued after the preemption", env.requeue_target)


def _count_variable(env: Mapping[str, str], name: str) -> int:
    value = env[name].strip()
    if not value.isdigit():
        raise ValueError(f"{name}={value!r} is not a whole number, 0 or more; fix it or unset it")
    return int(value)


def _boolean_variable(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean; set it to 1 or 0, or unset it")


def request_requeue(env: JobEnvironment) -> None:
    """Ask the scheduler to requeue this job; raise RequeueError when it cannot be asked or refuses."""
    if env.backend == "local":
        _request_local(env)
    elif env.backend == "slurm":
        _request_slurm(env)
    else:
        raise RequeueError(
            "no scheduler to requeue this job: it runs neither under SLURM nor under `runner local`; "
            "run the same command again to resume from the checkpoint")


def _request_local(env: JobEnvironment) -> None:
    if not env.requeue_file:
        raise RequeueError("RUNNER_BACKEND=local but RUNNER_REQUEUE_FILE is not set; start the job with `runner local`",
                           env.job_id)
    fd = os.open(env.requeue_file, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(f"{env.job_id}\n")
    logger.warning("asked the local scheduler to requeue job %s", env.job_id)


def _request_slurm(env: JobEnvironment) -> None:
    target = env.requeue_target
    try:
        run_command(["scontrol", "requeue", str(target)])
    except CommandError as error:
        raise RequeueError(
            f"could not requeue SLURM job {target}: {error}. The checkpoint is saved; resubmit the job to resume",
            target) from error
    logger.warning("asked SLURM to requeue job %s", target)
