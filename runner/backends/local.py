"""Run a command as a preemptible job on this machine, the way SLURM runs it with PreemptMode=REQUEUE.

Each attempt starts the command as N tasks (``srun --ntasks N`` on one node), each with a SLURM-like environment.
On the schedule's preemption times the scheduler sends the preemption signal to every task or to chosen ones, and
if a task still runs `grace_s` later it sends SIGTERM to all tasks, then SIGKILL after `kill_wait_s`. The job is
started again, with SLURM_RESTART_COUNT one higher, when a task created the RUNNER_REQUEUE_FILE (the local form of
``scontrol requeue``) or when a signal ended the job after a preemption signal reached it. That signal may be the
scheduler's SIGTERM or SIGKILL, or the preemption signal itself when the job had no handler for it yet.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

from runner import exitcodes
from runner.backends.attempts import Attempt, RunResult, SentSignal
from runner.backends.job_step import JobStep, SignalTarget, signal_short_name, status_signal, task_environment
from runner.backends.schedule import NoPreemption, PreemptionSchedule
from runner.backends.stop import StopRequest
from runner.errors import RunnerError

logger = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.05
"""Maximum wait in seconds between checks of the job, the deadlines and a stop request."""


class CommandNotFoundError(RunnerError):
    """The job's command is not an executable file, neither as a path nor on PATH."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.command = command

    def __reduce__(self):
        return type(self), (self.args[0], self.command)



class LocalScheduler:
    """Run `command` as a local preemptible job of `ntasks` tasks; `run()` returns the job's final exit status.

    `signal_ranks` chooses the tasks that receive the preemption signal (default all, as ``scancel --signal``
    sends it); SIGTERM and SIGKILL always go to all. A task that exits with a status other than 0 or 75 while
    others run gets them SIGTERM, then SIGKILL after `kill_wait_s`, as ``srun --kill-on-bad-exit`` does. The
    attempt's status is then that task's status; otherwise it is the highest status of its tasks, as srun reports.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        schedule: PreemptionSchedule | None = None,
        preempt_signal: signal.Signals = signal.SIGUSR1,
        signal_target: SignalTarget = SignalTarget.MAIN,
        grace_s: float = 30.0,
        kill_wait_s: float = 5.0,
        max_restarts: int = 10,
        max_preemptions: int | None = None,
        job_id: int | None = None,
        job_name: str | None = None,
        ntasks: int = 1,
        signal_ranks: Sequence[int] | None = None,
    ) -> None:
        if not command:
            raise ValueError("missing command: give the job's command and its arguments, such as ['python', 'train.py']")
        _check_seconds("grace_s", grace_s)
        _check_seconds("kill_wait_s", kill_wait_s)
        _check_count("max_restarts", max_restarts)
        if max_preemptions is not None:
            _check_count("max_preemptions", max_preemptions)
        _check_ntasks(ntasks)
        if signal_ranks is not None:
            _check_ranks(signal_ranks, ntasks)
        self.command = list(command)
        self.schedule = schedule if schedule is not None else NoPreemption()
        self.preempt_signal = signal.Signals(preempt_signal)
        self.signal_target = SignalTarget(signal_target)
        self.grace_s = grace_s
        self.kill_wait_s = kill_wait_s
        self.max_restarts = max_restarts
        self.max_preemptions = max_preemptions
        self.job_id = job_id if job_id is not None else os.getpid()
        self.job_name = job_name if job_name is not None else os.path.basename(self.command[0])
        self.ntasks = ntasks
        self.signal_ranks = None if signal_ranks is None else sorted(set(signal_ranks))
        self.result = RunResult(job_id=self.job_id)
        self._preemptions_sent = 0
        self._stop = StopRequest()

    def run(self) -> int:
        """Run the job until it finishes, is refused a restart or the scheduler is stopped; return its final status.

        Raise CommandNotFoundError when the command cannot be started. SIGINT, SIGTERM and SIGHUP to this process
        stop the job (SIGTERM, then SIGKILL after kill_wait_s) without a restart; this needs the main thread.
        """
        _check_executable(self.command[0])
        self.result = RunResult(job_id=self.job_id)
        self._preemptions_sent = 0
        with tempfile.TemporaryDirectory(prefix="runner-local-") as folder, self._stop:
            # mkdtemp creates the folder with mode 0700, so other users cannot create the requeue file.
            for restart_count in itertools.count():
                attempt = self._run_attempt(restart_count, Path(folder))
                if not self._decide_restart(attempt):
                    break
        self.result.stopped_by = self._stop.signal
        self.result.exit_status = self._final_status(attempt)
        logger.info(
            "[job %d] finished with status %d after %d attempt(s)",
            self.job_id, self.result.exit_status, len(self.result.attempts),
        )
        return self.result.exit_status

    def _run_attempt(self, restart_count: int, folder: Path) -> Attempt:
        requeue_file = folder / f"requeue-{restart_count}"
        environments = [
            task_environment(
                job_id=self.job_id,
                job_name=self.job_name,
                restart_count=restart_count,
                preempt_signal=self.preempt_signal,
                requeue_file=str(requeue_file),
                procid=rank,
                ntasks=self.ntasks,
            )
            for rank in range(self.ntasks)
        ]
        started_s = time.monotonic()
        try:
            step = JobStep(self.command, environments)
        except (FileNotFoundError, PermissionError) as error:
            raise CommandNotFoundError(f"cannot start {self.command[0]!r}: {error}", self.command[0]) from error
        attempt = Attempt(restart_count + 1, restart_count, step.pid, time.time(), requeue_file, task_pids=step.pids)
        self.result.attempts.append(attempt)
        pids = f"pid {step.pid}" if self.ntasks == 1 else f"{self.ntasks} tasks, pids {' '.join(map(str, step.pids))}"
        restart_count_variable = "SLURM_RESTART_COUNT unset"
        if restart_count > 0:  # runner local sets it only from the first requeue on, as SLURM does
            restart_count_variable = f"SLURM_RESTART_COUNT={restart_count}"
        logger.info("[job %d] attempt %d started, %s, %s", self.job_id, attempt.number, pids, restart_count_variable)

        try:
            attempt.exit_status = self._supervise(step, attempt, started_s)
        except BaseException:
            # Leave no job running behind a scheduler that failed.
            step.send(signal.SIGKILL, SignalTarget.GROUP)
            raise
        attempt.duration_s = time.monotonic() - started_s
        step.kill_leftovers()
        attempt.requeue_requested = requeue_file.exists()
        per_task = "" if self.ntasks == 1 else f" (tasks: {' '.join(map(str, attempt.task_exit_statuses))})"
        logger.info(
            "[job %d] attempt %d exited with status %d%s after %.1f s",
            self.job_id, attempt.number, attempt.exit_status, per_task, attempt.duration_s,
        )
        return attempt

    def _supervise(self, step: JobStep, attempt: Attempt, started_s: float) -> int:
        """Send the scheduled signals and escalations until every task exits; return the step's exit status.

        Times are offsets in seconds from the attempt's start. The first preemption signal starts the grace period;
        later ones are still sent until SIGTERM goes out, so a job must tolerate repeated signals.
        """
        delays_s = self.schedule.delays_s(attempt.restart_count)
        preempt_at_s = self._next_preemption(delays_s)
        term_at_s: float | None = None
        kill_at_s: float | None = None
        stop_signals_handled = 0

        while True:
            now_s = time.monotonic() - started_s
            if self._stop.count > stop_signals_handled:
                stop_signals_handled = self._stop.count
                preempt_at_s = term_at_s = None
                if kill_at_s is None:
                    self._send(step, attempt, now_s, signal.SIGTERM, SignalTarget.GROUP, "scheduler stopped")
                    kill_at_s = now_s + self.kill_wait_s
                else:
                    kill_at_s = now_s  # A second Ctrl-C skips the rest of the kill wait.
            if kill_at_s is None and attempt.failed_rank is None:
                attempt.failed_rank = _first_failed_rank(step.exit_statuses())
                if attempt.failed_rank is not None:
                    preempt_at_s = term_at_s = None
                    self._send(step, attempt, now_s, signal.SIGTERM, SignalTarget.GROUP, "task failed")
                    kill_at_s = now_s + self.kill_wait_s
            if kill_at_s is not None and now_s >= kill_at_s:
                self._send(step, attempt, now_s, signal.SIGKILL, SignalTarget.GROUP, "kill-wait expired")
                kill_at_s = math.inf
            if term_at_s is not None and now_s >= term_at_s:
                self._send(step, attempt, now_s, signal.SIGTERM, SignalTarget.GROUP, "grace expired")
                attempt.killed_after_preemption = True
                preempt_at_s = term_at_s = None
                kill_at_s = now_s + self.kill_wait_s
            if preempt_at_s is not None and now_s >= preempt_at_s:
                self._preemptions_sent += 1
                self._send(
                    step, attempt, now_s, self.preempt_signal, self.signal_target, "preemption", self.signal_ranks
                )
                if term_at_s is None:
                    term_at_s = now_s + self.grace_s
                preempt_at_s = self._next_preemption(delays_s)

            deadlines_s = [d for d in (preempt_at_s, term_at_s, kill_at_s) if d is not None]
            timeout_s = min([_POLL_INTERVAL_S, *(d - now_s for d in deadlines_s)])
            statuses = step.wait(max(timeout_s, 0.0))
            if statuses is not None:
                attempt.task_exit_statuses = list(statuses)
                if attempt.failed_rank is not None:
                    return statuses[attempt.failed_rank]
                return max(statuses)

    def _next_preemption(self, delays_s: Iterator[float]) -> float | None:
        if self.max_preemptions is not None and self._preemptions_sent >= self.max_preemptions:
            return None
        return next(delays_s, None)

    def _send(
        self,
        step: JobStep,
        attempt: Attempt,
        now_s: float,
        sig: signal.Signals,
        target: SignalTarget,
        reason: str,
        ranks: Sequence[int] | None = None,
    ) -> None:
        reached = step.send(sig, target, ranks)
        attempt.signals.append(SentSignal(sig, now_s, reason, reached))
        kind = "process group" if target is SignalTarget.GROUP else "pid"
        if step.ntasks == 1:
            receiver = f"to {kind} {step.pid}"
        elif reached:
            receiver = "to " + ", ".join(f"task {rank} ({kind} {step.pids[rank]})" for rank in reached)
        else:
            receiver = "to no task (the chosen tasks had exited)"
        logger.warning(
            "[job %d] attempt %d: sent %s %s after %.1f s (%s)",
            self.job_id, attempt.number, sig.name, receiver, now_s, self._describe_reason(reason, step, attempt),
        )

    def _describe_reason(self, reason: str, step: JobStep, attempt: Attempt) -> str:
        if reason == "preemption":
            cap = "" if self.max_preemptions is None else f" of at most {self.max_preemptions}"
            return f"preemption {self._preemptions_sent}{cap}"
        if reason == "grace expired":
            return f"the grace period of {self.grace_s:g} s expired"
        if reason == "kill-wait expired":
            return f"the kill wait of {self.kill_wait_s:g} s expired"
        if reason == "task failed":
            status = step.exit_statuses()[attempt.failed_rank]
            return f"task {attempt.failed_rank} exited with status {status} while the others ran"
        return f"the scheduler received {self._stop.signal.name if self._stop.signal else 'a stop request'}"

    def _decide_restart(self, attempt: Attempt) -> bool:
        """Return whether to start the job again after `attempt`, and log the decision."""
        if self._stop.signal is not None:
            logger.warning("[job %d] not restarting: the scheduler received %s", self.job_id, self._stop.signal.name)
            return False
        if attempt.failed_rank is not None and not attempt.preempted:
            # A task failed on its own and the scheduler stopped the others, as srun --kill-on-bad-exit does: a
            # requeue they asked for after that stop is not a preemption's, and a restart would fail the same way.
            logger.warning("[job %d] not restarting: task %d exited with status %d while the others ran",
                           self.job_id, attempt.failed_rank, attempt.exit_status)
            return False
        self._hint_if_killed_by_preemption_signal(attempt)
        killing_signal = attempt.killing_signal
        if attempt.requeue_requested:
            reason = "the job requested it"
        elif attempt.killed_after_preemption:
            reason = "the scheduler killed the job after a preemption"
        elif attempt.preempted and killing_signal is not None:
            # As SLURM with PreemptMode=REQUEUE: a preempted job requeues however a signal ended it, so a job that
            # died of the signal before it could handle it (start-up, shutdown, a shell wrapper) still resumes.
            reason = f"killed by {killing_signal.name} after a preemption"
        else:
            if attempt.exit_status == exitcodes.REQUEUED:
                logger.warning(
                    "[job %d] attempt %d exited with status %d (requeue) but did not create its requeue file %s; "
                    "not restarting",
                    self.job_id, attempt.number, attempt.exit_status, attempt.requeue_file,
                )
            return False
        if attempt.restart_count >= self.max_restarts:
            logger.warning(
                "[job %d] requeue rejected (%s): the job has already been restarted %d times, the maximum",
                self.job_id, reason, self.max_restarts,
            )
            return False
        attempt.requeued = True
        logger.info("[job %d] requeue (%s); starting attempt %d", self.job_id, reason, attempt.number + 1)
        return True

    def _hint_if_killed_by_preemption_signal(self, attempt: Attempt) -> None:
        """Log how to keep the job alive when one of its tasks died from the preemption signal itself."""
        if not attempt.preempted:
            return
        dead_ranks = [
            rank for rank, status in enumerate(attempt.task_exit_statuses)
            if status is not None and status_signal(status) is self.preempt_signal
        ]
        if not dead_ranks:
            return
        tasks = "its main process" if self.ntasks == 1 else f"task(s) {', '.join(map(str, dead_ranks))}"
        name = signal_short_name(self.preempt_signal)
        logger.warning(
            "[job %d] hint: %s died from %s, the preemption signal, before handling it; create runner.Job() first "
            "thing in the job, and in a shell wrapper start Python with `exec`, or add `trap : %s` to the wrapper "
            "and pass --signal-target group",
            self.job_id, tasks, self.preempt_signal.name, name,
        )

    def _final_status(self, attempt: Attempt) -> int:
        assert attempt.exit_status is not None
        failed_alone = attempt.failed_rank is not None and not attempt.preempted
        refused = attempt.requeue_requested and not attempt.requeued and self._stop.signal is None and not failed_alone
        return exitcodes.REQUEUE_LIMIT if refused else attempt.exit_status


def _check_seconds(name: str, value_s: float) -> None:
    if not math.isfinite(value_s) or value_s < 0:
        raise ValueError(f"invalid {name}: {value_s!r}; give a finite number of seconds, 0 or more")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"invalid {name}: {value!r}; give a whole number, 0 or more")


def _check_ntasks(ntasks: int) -> None:
    if isinstance(ntasks, bool) or not isinstance(ntasks, int) or ntasks < 1:
        raise ValueError(f"invalid ntasks: {ntasks!r}; give a whole number of tasks, 1 or more")


def _check_ranks(ranks: Sequence[int], ntasks: int) -> None:
    if not ranks:
        raise ValueError("invalid signal_ranks: the list is empty; give None to signal every task")
    for rank in ranks:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < ntasks:
            raise ValueError(
                f"invalid rank {rank!r} in signal_ranks: the job has {ntasks} task(s), ranks 0 to {ntasks - 1}"
            )


def _first_failed_rank(statuses: Sequence[int | None]) -> int | None:
    """Return the lowest rank that exited with a status other than 0 or 75 while another task still runs."""
    if all(status is not None for status in statuses):
        return None
    for rank, status in enumerate(statuses):
        if status is not None and status not in (exitcodes.FINISHED, exitcodes.REQUEUED):
            return rank
    return None


def _check_executable(program: str) -> None:
    """Raise CommandNotFoundError unless `program` is an executable path or a name found on PATH."""
    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise CommandNotFoundError(
                f"command not found or not executable: {program!r}; check the path, or run chmod +x on it", program
            )
    elif shutil.which(program) is None:
        raise CommandNotFoundError(
            f"command not found: {program!r}; check its spelling and PATH, or give the path to an executable", program
        )
