"""The processes of one attempt of a local job: their SLURM-like environment, start, signals and exit status.

An attempt runs one task today. Environment and signalling take the task's rank as an argument, so that running
N tasks means starting N processes here and combining their exit statuses, without touching the scheduler's policy.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import socket
import subprocess
from typing import Mapping, Sequence

from runner import protocol

logger = logging.getLogger(__name__)

_UNCATCHABLE_SIGNALS = (signal.SIGKILL, signal.SIGSTOP)


class SignalTarget(str, enum.Enum):
    """Set of processes that receive the preemption signal."""

    MAIN = "main"
    """Only the process the scheduler started, as SLURM's ``sbatch --signal=B:USR1@...`` signals only the batch shell."""
    GROUP = "group"
    """Every process in the job's process group, such as data loader workers."""


def parse_signal(value: str | int) -> signal.Signals:
    """Parse a signal given as ``USR1``, ``SIGUSR1``, ``usr1`` or a number such as ``10``.

    Raise ValueError naming the value when it is unknown, or when it is SIGKILL or SIGSTOP, which a job cannot catch.
    """
    text = str(value).strip()
    try:
        if text.isdigit():
            parsed = signal.Signals(int(text))
        else:
            name = text.upper()
            parsed = signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise ValueError(
            f"unknown signal {value!r}: give a name such as USR1 or SIGUSR1, or a number such as "
            f"{int(signal.SIGUSR1)}; `kill -l` lists the names"
        ) from None
    if parsed in _UNCATCHABLE_SIGNALS:
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

    The SLURM variables match those of a batch job on one node, and the RUNNER_ ones carry the local protocol.
    """
    host = socket.gethostname().split(".")[0]
    environment = _without_slurm_variables(os.environ if base is None else base)
    environment.update(
        {
            "SLURM_JOB_ID": str(job_id),
            "SLURM_JOB_NAME": job_name,
            "SLURM_RESTART_COUNT": str(restart_count),
            "SLURM_PROCID": str(procid),
            # One node, so the local rank equals the global rank.
            "SLURM_LOCALID": str(procid),
            "SLURM_NODEID": "0",
            "SLURM_NTASKS": str(ntasks),
            "SLURM_NNODES": "1",
            "SLURM_JOB_NUM_NODES": "1",
            "SLURM_JOB_NODELIST": host,
            "SLURM_SUBMIT_DIR": os.getcwd(),
            "SLURMD_NODENAME": host,
            "SLURM_CLUSTER_NAME": "local",
            protocol.BACKEND_VAR: "local",
            protocol.PREEMPT_SIGNAL_VAR: signal_short_name(preempt_signal),
            protocol.REQUEUE_FILE_VAR: requeue_file,
        }
    )
    return environment


class JobStep:
    """The running processes of one attempt; the job's command runs in a new session and process group."""

    def __init__(self, command: Sequence[str], environment: Mapping[str, str]) -> None:
        # start_new_session keeps a terminal's Ctrl-C away from the job, so only the scheduler decides what it gets.
        self._process = subprocess.Popen(list(command), env=dict(environment), start_new_session=True)

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to `timeout_s` for the job to exit; return its shell-style exit status, or None if it still runs."""
        try:
            return shell_status(self._process.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            return None

    def send(self, sig: signal.Signals, target: SignalTarget) -> None:
        """Send `sig` to the main process or its whole group; do nothing once the job has been reaped."""
        # After the scheduler reaps the job, its pid and group id may belong to another process.
        if self._process.poll() is not None:
            return
        try:
            if target is SignalTarget.GROUP:
                os.killpg(self._process.pid, sig)
            else:
                os.kill(self._process.pid, sig)
        except ProcessLookupError:
            pass

    def kill_leftovers(self) -> None:
        """SIGKILL processes still in the job's group after it exited, as SLURM's process tracking does for a job step."""
        # POSIX does not reuse a pid while a process group of that id exists, so this reaches only the job's processes.
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        logger.warning("sent SIGKILL to process group %d: it still had processes after the job exited", self._process.pid)
