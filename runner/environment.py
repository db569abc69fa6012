"""The job as seen from inside: one table of environment variables per backend, read into one object."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping

from runner import protocol


@dataclass(frozen=True)
class JobEnvironment:
    """The place of this process in its job: backend, job id, array task, restart count and rank."""

    backend: str
    """``slurm``, ``local`` (runner's local scheduler) or ``none`` (a plain process)."""
    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: str | None = None
    restart_count: int = 0
    global_rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    """Tasks in this job step (SLURM_STEP_NUM_TASKS under srun, else SLURM_NTASKS)."""
    node_rank: int = 0
    num_nodes: int = 1
    hostname: str = ""
    requeue_file: str | None = None
    step_id: str | None = None
    """SLURM_STEP_ID: set in tasks that srun (or ``runner local``) started, unset in a batch script itself."""
    nodelist: str | None = None
    """The step's nodes in SLURM's compressed form, such as ``node[01-04]``; the job's nodes outside a step."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "JobEnvironment":
        env = os.environ if environ is None else environ
        if env.get(protocol.BACKEND_VAR) == "local":
            backend = "local"
        elif "SLURM_JOB_ID" in env:
            backend = "slurm"
        else:
            backend = "none"
        return cls(
            backend=backend,
            job_id=env.get("SLURM_JOB_ID"),
            array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
            array_task_id=env.get("SLURM_ARRAY_TASK_ID"),
            restart_count=_int(env, "SLURM_RESTART_COUNT", 0),
            global_rank=_int(env, "SLURM_PROCID", 0),
            local_rank=_int(env, "SLURM_LOCALID", 0),
            world_size=_int(env, "SLURM_STEP_NUM_TASKS", _int(env, "SLURM_NTASKS", 1)),
            node_rank=_int(env, "SLURM_NODEID", 0),
            num_nodes=_int(env, "SLURM_JOB_NUM_NODES", _int(env, "SLURM_NNODES", 1)),
            hostname=env.get("SLURMD_NODENAME") or socket.gethostname(),
            requeue_file=env.get(protocol.REQUEUE_FILE_VAR),
            step_id=env.get("SLURM_STEP_ID"),
            nodelist=env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST"),
        )

    @property
    def requeue_target(self) -> str | None:
        """The id that ``scontrol requeue`` takes: ``<array job id>_<task id>`` for an array task, so only it requeues."""
        if self.array_job_id and self.array_task_id:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; unset it or fix the job script") from None
