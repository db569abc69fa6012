"""Why a job was asked to stop: a preemption, its time limit, or a signal that SLURM sent for neither.

The cause is read from ``scontrol show job`` when the job stops, and compared with the moment the first signal
arrived. The time limit is near when the signal came at most the ``--signal`` lead plus 60 s before the job's
EndTime, a rule that works for jobs of any length, unlike a fixed share of the time limit. SLURM may send the signal up
to 60 s earlier than the lead asks (sbatch(1) of SLURM 22.05, option --signal).
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass
from typing import Mapping

from runner.backends.commands import CommandError
from runner.backends.slurm_control import parse_time, show_job
from runner.environment import JobEnvironment
from runner.preemption import SignalRecord

logger = logging.getLogger(__name__)

SIGNAL_LEAD_VAR = "RUNNER_SIGNAL_LEAD_S"
"""Seconds before the time limit that the job's ``--signal`` requests; runner's templates and submit set it."""

DEFAULT_SIGNAL_LEAD_S = 90
"""The lead assumed when ``RUNNER_SIGNAL_LEAD_S`` is not set; 90 s is also submitit's default."""

SIGNAL_EARLINESS_S = 60
"""SLURM may send the ``--signal`` signal up to this many seconds earlier than asked."""


class StopCause(enum.Enum):
    PREEMPTION = "preemption"
    TIME_LIMIT = "time limit"
    SIGNAL = "signal"
    """A signal that SLURM records neither as a preemption nor near the time limit, such as ``scancel --signal``."""
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class StopReason:
    cause: StopCause
    detail: str
    """The facts behind the decision, for the log."""
    requeued_by_slurm: bool = False
    """SLURM has already requeued this run (its Restarts count is past the job's), so the job must not requeue it."""


def signal_lead_s(environ: Mapping[str, str] | None = None) -> int:
    """Return RUNNER_SIGNAL_LEAD_S in seconds, or the default when it is unset; raise ValueError when invalid."""
    env = os.environ if environ is None else environ
    value = env.get(SIGNAL_LEAD_VAR, "")
    if not value.strip():
        return DEFAULT_SIGNAL_LEAD_S
    try:
        lead_s = int(value)
    except ValueError:
        lead_s = -1
    if lead_s < 0:
        raise ValueError(f"{SIGNAL_LEAD_VAR}={value!r} is not a whole number of seconds, 0 or more; set it to the "
                         "lead of the job's --signal, such as 90 for --signal=USR1@90, or unset it")
    return lead_s


def find_stop_reason(env: JobEnvironment, record: SignalRecord | None) -> StopReason:
    """Query SLURM about this job and return why it stops. Only rank 0 queries, so that N tasks make one query."""
    if env.backend == "local":
        return StopReason(StopCause.PREEMPTION, "runner local preempted the job")
    if env.backend != "slurm":
        return StopReason(StopCause.SIGNAL, "the job runs outside any scheduler")
    if env.global_rank != 0:
        return StopReason(StopCause.UNKNOWN, f"rank {env.global_rank} leaves the question to rank 0")
    try:
        job = show_job(str(env.requeue_target))
    except CommandError as error:
        logger.warning("could not read job %s from scontrol to tell a preemption from the time limit: %s",
                       env.requeue_target, error)
        job = None
    return classify_stop(job, record, env.restart_count, signal_lead_s(), os.environ.get("SLURM_JOB_END_TIME"))


def classify_stop(job: Mapping[str, str] | None, record: SignalRecord | None, restart_count: int,
                  lead_s: int, end_time_variable: str | None = None) -> StopReason:
    """Tell apart preemption, time limit and other signals from the fields of ``scontrol show job``.

    The order matters: after a preemption SLURM moves EndTime to the end of the GraceTime, and after its own
    requeue it resets StartTime and EndTime for the next run, so EndTime is read only when neither happened.
    ``end_time_variable`` is SLURM_JOB_END_TIME (set by SLURM 23.02 and later), used when scontrol failed.
    """
    if record is None:
        return StopReason(StopCause.UNKNOWN, "no signal arrived; the job asked to stop by itself")
    if job is None:
        end_s = _epoch(end_time_variable)
        if end_s is None:
            return StopReason(StopCause.UNKNOWN, "scontrol failed and SLURM_JOB_END_TIME is not set")
        return _by_end_time(end_s, record, lead_s, "SLURM_JOB_END_TIME")

    state = job.get("JobState", "")
    restarts = _int_or_none(job.get("Restarts"))
    if state.startswith("TIMEOUT"):
        return StopReason(StopCause.TIME_LIMIT, f"JobState={state}")
    if restarts is not None and restarts > restart_count:
        return StopReason(StopCause.PREEMPTION, f"SLURM already requeued the job (Restarts={restarts}, this run is "
                          f"{restart_count}), as it does on preemption", requeued_by_slurm=True)
    if parse_time(job.get("PreemptTime")) is not None:
        return StopReason(StopCause.PREEMPTION, f"PreemptTime={job['PreemptTime']}")
    end_s = parse_time(job.get("EndTime"))
    if state != "RUNNING" or end_s is None:
        return StopReason(StopCause.UNKNOWN, f"JobState={state or '?'} EndTime={job.get('EndTime', '?')}")
    return _by_end_time(end_s, record, lead_s, "EndTime")


def _by_end_time(end_s: float, record: SignalRecord, lead_s: int, source: str) -> StopReason:
    before_end_s = end_s - record.received_at
    detail = f"{record.signal.name} came {before_end_s:.0f} s before the time limit ({source})"
    if before_end_s <= lead_s + SIGNAL_EARLINESS_S:
        return StopReason(StopCause.TIME_LIMIT, detail)
    return StopReason(StopCause.SIGNAL, f"{detail}, and SLURM records no preemption")


def _epoch(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
