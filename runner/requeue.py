"""Asking the job's scheduler to run it again: ``scontrol requeue`` on SLURM, a request file under ``runner local``."""

from __future__ import annotations

import logging
import os

from runner.backends.commands import CommandError, run_command
from runner.environment import JobEnvironment
from runner.errors import RequeueError

logger = logging.getLogger(__name__)


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
