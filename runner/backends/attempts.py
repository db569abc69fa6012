"""Records of a local run: each attempt, the signals sent to it and how it ended."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

from runner.backends.job_step import status_signal


@dataclass
class SentSignal:
    """A signal the scheduler sent to the job, `after_s` seconds after its attempt started."""

    signal: signal.Signals
    after_s: float
    reason: str
    """``preemption``, ``grace expired``, ``kill-wait expired``, ``scheduler stopped`` or ``task failed``."""
    ranks: list[int] = field(default_factory=list)
    """Ranks of the tasks the signal reached: those chosen that had not exited yet."""


@dataclass
class Attempt:
    """One start of the job's command and how it ended."""

    number: int
    """1 for the first start; always ``restart_count + 1``."""
    restart_count: int
    pid: int
    """The pid of task 0."""
    started_at: float
    """Wall-clock start time, as time.time() returns it."""
    requeue_file: Path
    signals: list[SentSignal] = field(default_factory=list)
    task_pids: list[int] = field(default_factory=list)
    """The pid of each task, in rank order."""
    exit_status: int | None = None
    """The step's exit status; None while it runs. See ``LocalScheduler`` for how the tasks' statuses combine."""
    task_exit_statuses: list[int | None] = field(default_factory=list)
    """Shell-style exit status of each task, in rank order: its exit code, or 128+N when signal N killed it."""
    failed_rank: int | None = None
    """Rank of the first task that exited with a status other than 0 or 75 while other tasks still ran."""
    duration_s: float | None = None
    requeue_requested: bool = False
    """The job created its requeue file."""
    killed_after_preemption: bool = False
    """The scheduler sent SIGTERM because the grace period after a preemption signal expired."""
    requeued: bool = False
    """The scheduler started the job again after this attempt."""

    @property
    def preemption_count(self) -> int:
        return sum(1 for sent in self.signals if sent.reason == "preemption")

    @property
    def preempted(self) -> bool:
        """A preemption signal reached at least one task."""
        return any(sent.reason == "preemption" and sent.ranks for sent in self.signals)

    @property
    def killing_signal(self) -> signal.Signals | None:
        """The signal that the attempt's exit status reports (128+N), or None for an exit with a code."""
        return None if self.exit_status is None else status_signal(self.exit_status)


@dataclass
class RunResult:
    """Record of one LocalScheduler.run(), filled in as the run goes."""

    job_id: int
    attempts: list[Attempt] = field(default_factory=list)
    exit_status: int | None = None
    """The scheduler's exit status; None until the run ends."""
    stopped_by: signal.Signals | None = None
    """The signal (SIGINT or SIGTERM) that stopped the scheduler itself, if any."""
