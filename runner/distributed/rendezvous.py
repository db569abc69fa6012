"""Forming the torch.distributed process group from the SLURM task variables, afresh in every attempt.

Rank and world size come from SLURM_PROCID and SLURM_STEP_NUM_TASKS. The store address is 127.0.0.1 when the
step runs on one node, else the first host of the step's node list, where srun starts rank 0. The store port is
derived from the job id and the restart count, so the first attempt of a job and each requeued one use different
ports: a store or socket that the previous attempt left behind (a process that has not exited yet, a socket in
TIME_WAIT) keeps its own port, and the new attempt listens on the next one. MASTER_ADDR and MASTER_PORT, when set,
replace the derived values.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import itertools
import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import Mapping

import torch.distributed as dist

from runner.environment import JobEnvironment
from runner.errors import RunnerError

logger = logging.getLogger(__name__)

LOOPBACK_ADDRESS = "127.0.0.1"
PORT_BASE = 20000
PORT_COUNT = 12000
"""Derived ports lie in [20000, 32000), below Linux's default ephemeral range (32768-60999), so that the
outgoing connections of other programs do not take them."""


class RendezvousError(RunnerError):
    """The process group could not be formed: the task variables are inconsistent or the store could not start."""


@dataclass(frozen=True)
class Rendezvous:
    """The store address and port, rank and world size with which this task joins the process group."""

    master_addr: str
    master_port: int
    rank: int
    world_size: int

    @property
    def init_method(self) -> str:
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr
        return f"tcp://{host}:{self.master_port}"


def derive_port(job_id: str, restart_count: int) -> int:
    """Return the store port of one attempt of a job: consecutive restart counts get consecutive ports.

    Two different jobs on the same first node share a port with probability about 1 in PORT_COUNT per attempt;
    set MASTER_PORT to rule that out.
    """
    offset = int.from_bytes(hashlib.sha256(str(job_id).encode()).digest()[:4], "big")
    return PORT_BASE + (offset + restart_count) % PORT_COUNT


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand SLURM's compressed host list, such as ``gpu[01-03,7],login1``, into host names in order."""
    hosts: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist):
        parts = re.split(r"\[([^\]]*)\]", item)
        choices = []
        for index, part in enumerate(parts):
            choices.append(_expand_ranges(part, nodelist) if index % 2 else [part])
        hosts.extend("".join(combination) for combination in itertools.product(*choices))
    if not hosts:
        raise RendezvousError(f"invalid node list {nodelist!r}: it names no host")
    return hosts


def _expand_ranges(ranges: str, nodelist: str) -> list[str]:
    values = []
    for entry in ranges.split(","):
        bounds = entry.split("-")
        if len(bounds) > 2 or not all(bound.isdigit() for bound in bounds) or int(bounds[0]) > int(bounds[-1]):
            raise RendezvousError(f"invalid node list {nodelist!r}: cannot read the range {entry!r}")
        # SLURM keeps the zero padding of the first number: node[01-10] is node01 ... node10.
        width = len(bounds[0])
        values.extend(str(number).zfill(width) for number in range(int(bounds[0]), int(bounds[-1]) + 1))
    return values


def rendezvous_for(env: JobEnvironment, environ: Mapping[str, str] | None = None) -> Rendezvous:
    """Work out this task's rendezvous from its job environment and MASTER_ADDR / MASTER_PORT in `environ`."""
    environ = os.environ if environ is None else environ
    if env.backend == "slurm" and env.world_size > 1 and env.step_id is None:
        raise RendezvousError(
            f"SLURM_NTASKS={env.world_size} but this process is the batch script itself, not one of the "
            "tasks: start the training command with srun, such as `srun python train.py`"
        )
    if not 0 <= env.global_rank < env.world_size:
        raise RendezvousError(
            f"SLURM_PROCID={env.global_rank} is outside the job step's {env.world_size} task(s); "
            "check SLURM_PROCID and SLURM_STEP_NUM_TASKS in the job script"
        )
    return Rendezvous(_master_addr(env, environ), _master_port(env, environ), env.global_rank, env.world_size)


def _master_addr(env: JobEnvironment, environ: Mapping[str, str]) -> str:
    if environ.get("MASTER_ADDR"):
        return environ["MASTER_ADDR"]
    if env.backend != "slurm" or not env.nodelist:
        return LOOPBACK_ADDRESS
    hosts = expand_nodelist(env.nodelist)
    # On one node loopback always works, while the node's name may not resolve from inside the job.
    return LOOPBACK_ADDRESS if len(set(hosts)) == 1 else hosts[0]


def _master_port(env: JobEnvironment, environ: Mapping[str, str]) -> int:
    text = environ.get("MASTER_PORT")
    if text:
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise RendezvousError(f"invalid MASTER_PORT={text!r}: give a TCP port number from 1 to 65535, or unset it")
        return int(text)
    if env.job_id is not None:
        return derive_port(env.job_id, env.restart_count)
    if env.world_size == 1:
        return _free_port()
    raise RendezvousError(
        f"this process runs outside SLURM and `runner local` with {env.world_size} tasks, so there is no job id to "
        "derive the store port from: set MASTER_ADDR and MASTER_PORT"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK_ADDRESS, 0))
        return probe.getsockname()[1]


def init_process_group(
    backend: str = "gloo", *, env: JobEnvironment | None = None, timeout_s: float | None = None
) -> Rendezvous:
    """Join this task to the job step's process group and return where it met the others.

    `timeout_s` bounds the rendezvous and every later collective (default: torch's, 30 minutes for gloo). The
    group is destroyed at interpreter exit, because torch 2.13 aborts a process that exits with a gloo group
    still open, which would turn a clean exit status into 134.
    """
    rendezvous = rendezvous_for(env or JobEnvironment.from_environ())
    options = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    try:
        dist.init_process_group(
            backend, init_method=rendezvous.init_method, rank=rendezvous.rank, world_size=rendezvous.world_size,
            **options,
        )
    except dist.DistNetworkError as error:
        raise RendezvousError(
            f"rank {rendezvous.rank} could not join the process group at {rendezvous.init_method}: {error}. "
            "If another program holds the port, set MASTER_PORT to a free one"
        ) from error
    atexit.register(_destroy_process_group)
    logger.info("rank %d of %d joined the process group at %s", rendezvous.rank, rendezvous.world_size,
                rendezvous.init_method)
    return rendezvous


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
