"""The processes of one attempt of a local job: their SLURM-like environment, start, signals and exit statuses.

An attempt is one job step of N tasks, as ``srun --ntasks N`` starts them on one node: N processes of the same
command, each in its own session and process group, distinguished by SLURM_PROCID.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import socket
import subprocess
from typing import Mapping, Sequence

from runner import preemption, protocol

logger = logging.getLogger(__name__)

class SignalTarget(str, enum.Enum):
    """Set of processes that receive the preemption signal."""

    MAIN = "main"
    """Only the process the scheduler started, as SLURM's ``sbatch --signal=B:USR1@...`` signals only the batch shell."""
    GROUP = "group"
    """Every process in the job's process group, such as data loader workers."""


def parse_signal(value: str | int) -> signal.Signals:
    """Parse a preemption signal given as ``USR1``, ``SIGUSR1``, ``usr1`` or a number such as ``10``.

    Raise ValueError naming the value when it is unknown, or when it is SIGKILL or SIGSTOP, which a job cannot catch.
    """
    parsed = preemption.parse_signal(value)
    if parsed in preemption.UNCATCHABLE_SIGNALS:
        raise ValueError(
            f"invalid preemption signal {value!r}: a job cannot catch {parsed.name}, so it could not save its state; "
            "use USR1, USR2 or TERM"
        )
    return parsed


def signal_short_name(sig: signal.Signals) -> str:
    """Return the name without its SIG prefix, as RUNNER_PREEMPT_SIGNAL and SLURM's ``--signal=USR1@60`` write it."""
    return sig.name.removeprefix("SIG")


def shell_status(returncode: int) -> int:
    """Return the exit status a shell reports: the code itself, or 128+N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def status_signal(status: int) -> signal.Signals | None:
    """Return signal N of a shell-style exit status 128+N, or None for an exit code or a number that is no signal."""
    if status <= 128:
        return None
    try:
        return signal.Signals(status - 128)
    except ValueError:
        return None


def _without_slurm_variables(environ: Mapping[str, str]) -> dict[str, str]:
    # Variables inherited from an enclosing SLURM allocation (array ids, node lists) would describe another job.
    return {key: value for key, value in environ.items() if not key.startswith(("SLURM_", "SLURMD_"))}


def task_environment(
    *,
    job_id: int,
    job_name: str,
    restart_count: int,
    preempt_signal: signal.Signals,
    requeue_file: str,
    procid: int = 0,
    ntasks: int = 1,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build the environment of one task: `base` (default os.environ) without its SLURM variables, plus ours.

    The SLURM variables match those that ``srun --ntasks N`` sets in a batch job on one node, and the RUNNER_ ones
    carry the local protocol. Every task gets the same requeue file, so any of them can request the requeue.
    """
    host = socket.gethostname().split(".")[0]
    environment = _without_slurm_variables(os.environ if base is None else base)
    environment.update(
        {
            "SLURM_JOB_ID": str(job_id),
            "SLURM_JOB_NAME": job_name,
            "SLURM_PROCID": str(procid),
            # One node, so the local rank equals the global rank.
            "SLURM_LOCALID": str(procid),
            "SLURM_NODEID": "0",
            "SLURM_NTASKS": str(ntasks),
            "SLURM_NPROCS": str(ntasks),
            "SLURM_TASKS_PER_NODE": str(ntasks),
            "SLURM_STEP_ID": "0",
            "SLURM_STEPID": "0",
            "SLURM_STEP_NUM_TASKS": str(ntasks),
            "SLURM_STEP_NUM_NODES": "1",
            "SLURM_STEP_NODELIST": host,
            "SLURM_STEP_TASKS_PER_NODE": str(ntasks),
            "SLURM_GTIDS": ",".join(str(rank) for rank in range(ntasks)),
            "SLURM_NNODES": "1",
            "SLURM_JOB_NUM_NODES": "1",
            "SLURM_JOB_NODELIST": host,
            "SLURM_NODELIST": host,
            "SLURM_SUBMIT_DIR": os.getcwd(),
            "SLURMD_NODENAME": host,
            "SLURM_CLUSTER_NAME": "local",
            protocol.BACKEND_VAR: "local",
            protocol.PREEMPT_SIGNAL_VAR: signal_short_name(preempt_signal),
            protocol.REQUEUE_FILE_VAR: requeue_file,
        }
    )
    if restart_count > 0:  # SLURM sets it only in a job that was requeued
        environment["SLURM_RESTART_COUNT"] = str(restart_count)
    return environment


class _Task:
    """One process of the step, the leader of its own session and process group."""

    def __init__(self, rank: int, command: Sequence[str], environment: Mapping[str, str]) -> None:
        self.rank = rank
        # start_new_session keeps a terminal's Ctrl-C away from the job, so only the scheduler decides what it gets.
        self.process = subprocess.Popen(list(command), env=dict(environment), start_new_session=True)
        self.exit_status: int | None = None

    def poll(self) -> int | None:
        if self.exit_status is None:
            returncode = self.process.poll()
            if returncode is not None:
                self.exit_status = shell_status(returncode)
        return self.exit_status

    def wait(self, timeout_s: float) -> int | None:
        if self.exit_status is None:
            try:
                self.exit_status = shell_status(self.process.wait(timeout=timeout_s))
            except subprocess.TimeoutExpired:
                pass
        return self.exit_status

    def send(self, sig: signal.Signals, target: SignalTarget) -> bool:
        """Send `sig` to the process or its group; return False, sending nothing, once the task has been reaped."""
        # After the scheduler reaps the task, its pid and group id may belong to another process.
        if self.poll() is not None:
            return False
        try:
            if target is SignalTarget.GROUP:
                os.killpg(self.process.pid, sig)
            else:
                os.kill(self.process.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def kill_leftovers(self) -> None:
        # POSIX does not reuse a pid while a process group of that id exists, so this reaches only the task's processes.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        logger.warning(
            "sent SIGKILL to process group %d of task %d: it still had processes after the task exited",
            self.process.pid, self.rank,
        )


class JobStep:
    """The running tasks of one attempt, one process per environment in `environments`, in rank order."""

    def __init__(self, command: Sequence[str], environments: Sequence[Mapping[str, str]]) -> None:
        if not environments:
            raise ValueError("a job step needs at least one task environment")
        self._tasks: list[_Task] = []
        try:
            for rank, environment in enumerate(environments):
                self._tasks.append(_Task(rank, command, environment))
        except BaseException:
            # A step that could not start all its tasks must not leave the started ones running.
            for task in self._tasks:
                task.send(signal.SIGKILL, SignalTarget.GROUP)
                task.wait(timeout_s=5.0)
            raise

    @property
    def pid(self) -> int:
        """The pid of task 0."""
        return self._tasks[0].process.pid

    @property
    def pids(self) -> list[int]:
        return [task.process.pid for task in self._tasks]

    @property
    def ntasks(self) -> int:
        return len(self._tasks)

    def exit_statuses(self) -> list[int | None]:
        """Return each task's shell-style exit status, None for a task that still runs."""
        return [task.poll() for task in self._tasks]

    def wait(self, timeout_s: float) -> list[int] | None:
        """Wait up to `timeout_s` for every task to exit; return their exit statuses, or None if one still runs.

        The wait blocks on the first running task only, so a caller that polls notices another task's exit at its
        next call, which is how it learns of a task that failed while the others run.
        """
        running = [task for task in self._tasks if task.poll() is None]
        if running:
            running[0].wait(timeout_s)
        statuses = self.exit_statuses()
        if any(status is None for status in statuses):
            return None
        return [status for status in statuses if status is not None]

    def send(self, sig: signal.Signals, target: SignalTarget, ranks: Sequence[int] | None = None) -> list[int]:
        """Send `sig` to the tasks of `ranks` (default all) that still run; return the ranks it reached."""
        chosen = self._tasks if ranks is None else [self._tasks[rank] for rank in ranks]
        return [task.rank for task in chosen if task.send(sig, target)]

    def kill_leftovers(self) -> None:
        """SIGKILL processes left in each task's group after it exited, as SLURM's process tracking does for a step."""
        for task in self._tasks:
            task.kill_leftovers()
