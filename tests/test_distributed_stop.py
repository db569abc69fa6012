"""Ranks of a torch.distributed job agree to stop, save once, requeue once and exit together; rendezvous afresh."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from runner import exitcodes
from runner.backends.job_step import task_environment
from runner.backends.local import LocalScheduler
from runner.distributed import RendezvousError, derive_port, expand_nodelist, rendezvous_for
from runner.distributed.rendezvous import LOOPBACK_ADDRESS, PORT_BASE, PORT_COUNT
from runner.environment import JobEnvironment

STEP_SCRIPT = r'''
"""Test job: ten steps of one all-reduce each, with Job.stop_if_preempted(save) after every step.

argv: RECORD_PATH SIGNAL_RANK SIGNAL_STEP SAVE_MODE
The rank SIGNAL_RANK sends itself the preemption signal during step SIGNAL_STEP, so only it receives one.
SAVE_MODE: record (the save records itself) or fail (the save raises). From SLURM_RESTART_COUNT 1 on, the job
forms its process group and exits 0.
"""
import json, logging, os, signal, sys

import runner

job = runner.Job()
rank = job.env.global_rank
logging.basicConfig(level=logging.INFO, format=f"rank {rank} %(name)s: %(message)s")
record_path, signal_rank, signal_step, save_mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

import torch
import torch.distributed as dist
from runner import distributed

distributed.init_process_group("gloo", timeout_s=60)


def record(kind, **fields):
    with open(record_path, "a") as file:
        file.write(json.dumps({"kind": kind, "rank": rank, "restart_count": job.env.restart_count, **fields}) + "\n")


def save():
    if save_mode == "fail":
        raise OSError("disk full (test)")
    record("save", step=step)


record("start", world_size=dist.get_world_size())
if job.env.restart_count >= 1:
    dist.all_reduce(torch.ones(1))
    record("exit")
    sys.exit(0)
for step in range(10):
    if rank == signal_rank and step == signal_step:
        os.kill(os.getpid(), signal.SIGUSR1)
    dist.all_reduce(torch.ones(1))
    record("step", step=step)
    job.stop_if_preempted(save)
record("exit")
'''


@pytest.fixture
def step_job(tmp_path: Path):
    script = tmp_path / "steps.py"
    script.write_text(STEP_SCRIPT)
    record_path = tmp_path / "records.jsonl"

    def command(signal_rank: int, signal_step: int, save_mode: str = "record") -> list[str]:
        return [sys.executable, str(script), str(record_path), str(signal_rank), str(signal_step), save_mode]

    def records(kind: str, restart_count: int = 0) -> list[dict]:
        lines = [json.loads(line) for line in record_path.read_text().splitlines()] if record_path.exists() else []
        return [line for line in lines if line["kind"] == kind and line["restart_count"] == restart_count]

    command.records = records
    return command


@pytest.fixture
def checkout_on_path(monkeypatch):
    """Let the task processes import runner from this checkout."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def last_step_of_each_rank(records: list[dict]) -> dict[int, int]:
    return {line["rank"]: line["step"] for line in records}


@pytest.mark.parametrize("signal_rank", [0, 1])
def test_one_preempted_rank_stops_all(step_job, checkout_on_path, capfd, signal_rank):
    scheduler = LocalScheduler(step_job(signal_rank, signal_step=3), ntasks=2, grace_s=60.0, job_id=4100 + signal_rank)

    assert scheduler.run() == exitcodes.FINISHED
    first, second = scheduler.result.attempts
    assert last_step_of_each_rank(step_job.records("step")) == {0: 3, 1: 3}
    assert [(line["rank"], line["step"]) for line in step_job.records("save")] == [(0, 3)]
    assert first.task_exit_statuses == [exitcodes.REQUEUED, exitcodes.REQUEUED]
    assert first.requeue_requested is True
    assert first.killed_after_preemption is False, "a rank lingered past the grace period"
    # The requeued attempt formed its process group again, on a new port.
    assert sorted(line["rank"] for line in step_job.records("exit", restart_count=1)) == [0, 1]
    assert second.task_exit_statuses == [0, 0]
    stderr = capfd.readouterr().err
    requeue_lines = [line for line in stderr.splitlines() if "asked the local scheduler to requeue" in line]
    assert len(requeue_lines) == 1
    assert requeue_lines[0].startswith("rank 0 ")
    assert len(re.findall(r"stopping: 1 of 2 ranks were preempted", stderr)) == 2


def test_failed_save_stops_every_rank(step_job, checkout_on_path, capfd):
    scheduler = LocalScheduler(step_job(1, signal_step=2, save_mode="fail"), ntasks=2, grace_s=60.0,
                               kill_wait_s=30.0, job_id=4200)

    assert scheduler.run() == 1
    (attempt,) = scheduler.result.attempts
    assert sorted(attempt.task_exit_statuses) == [1, 1]
    assert attempt.requeue_requested is False
    stderr = capfd.readouterr().err
    assert "OSError: disk full (test)" in stderr
    assert "saving the checkpoint failed on 1 rank(s) before stopping; rank 1 stops too" in stderr


def test_requeue_policy_applies_to_every_rank(step_job, checkout_on_path, monkeypatch):
    monkeypatch.setenv("RUNNER_MAX_REQUEUES", "0")
    scheduler = LocalScheduler(step_job(1, signal_step=2), ntasks=2, grace_s=60.0, job_id=4250)

    assert scheduler.run() == exitcodes.REQUEUE_LIMIT
    (attempt,) = scheduler.result.attempts
    assert attempt.task_exit_statuses == [exitcodes.REQUEUE_LIMIT] * 2
    assert attempt.requeue_requested is False
    assert [(line["rank"], line["step"]) for line in step_job.records("save")] == [(0, 2)]


def test_requeue_failure_reaches_every_rank(step_job, python_env, tmp_path):
    """Outside any scheduler rank 0 cannot request a requeue, so every rank exits 76."""
    port = free_port()
    processes = []
    for rank in range(2):
        env = {**python_env, "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "MASTER_PORT": str(port)}
        processes.append(subprocess.Popen(step_job(0, signal_step=1), env=env, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=120)[1] for process in processes]

    assert [process.returncode for process in processes] == [exitcodes.REQUEUE_FAILED] * 2, outputs
    assert "no scheduler to requeue this job" in outputs[0]
    assert [(line["rank"], line["step"]) for line in step_job.records("save")] == [(0, 1)]


def test_new_attempt_ignores_previous_port(step_job, python_env):
    """A process still holding the first attempt's port does not stop the requeued attempt from forming."""
    job_id = 4300
    with socket.socket() as stale_store:
        stale_store.bind((LOOPBACK_ADDRESS, derive_port(str(job_id), 0)))
        stale_store.listen()
        processes = []
        for rank in range(2):
            env = task_environment(job_id=job_id, job_name="steps", restart_count=1, preempt_signal=signal.SIGUSR1,
                                   requeue_file=os.devnull, procid=rank, ntasks=2, base=python_env)
            processes.append(subprocess.Popen(step_job(0, 1), env=env, stderr=subprocess.PIPE, text=True))
        outputs = [process.communicate(timeout=120)[1] for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    assert f":{derive_port(str(job_id), 1)}" in outputs[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK_ADDRESS, 0))
        return probe.getsockname()[1]


def test_derived_ports_differ_between_attempts():
    for job_id in ["1", "42", "987654", "100_7"]:
        ports = [derive_port(job_id, restart) for restart in range(50)]
        assert len(set(ports)) == 50
        assert all(PORT_BASE <= port < PORT_BASE + PORT_COUNT for port in ports)
    assert derive_port("42", 0) == derive_port("42", 0)


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node1", ["node1"]),
        ("gpu[01-03,7],login1", ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]),
        ("rack[1-2]-n[8-9]", ["rack1-n8", "rack1-n9", "rack2-n8", "rack2-n9"]),
        ("a[09-10]", ["a09", "a10"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["", "n[a-b]", "n[1-]", "n[5-3]", "n[1-2-3]"])
def test_expand_nodelist_rejects(nodelist):
    with pytest.raises(RendezvousError, match="invalid node list"):
        expand_nodelist(nodelist)


def slurm_task(**variables: str) -> JobEnvironment:
    base = {"SLURM_JOB_ID": "555", "SLURM_RESTART_COUNT": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "4",
            "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "gpu[03-04]"}
    return JobEnvironment.from_environ({**base, **variables})


def test_rendezvous_on_several_nodes_uses_first_host():
    rendezvous = rendezvous_for(slurm_task(), environ={})

    assert rendezvous.master_addr == "gpu03"
    assert rendezvous.master_port == derive_port("555", 2)
    assert (rendezvous.rank, rendezvous.world_size) == (1, 4)
    assert rendezvous.init_method == f"tcp://gpu03:{derive_port('555', 2)}"


def test_rendezvous_on_one_node_uses_loopback():
    assert rendezvous_for(slurm_task(SLURM_STEP_NODELIST="node1"), environ={}).master_addr == LOOPBACK_ADDRESS


def test_rendezvous_respects_master_variables():
    rendezvous = rendezvous_for(slurm_task(), environ={"MASTER_ADDR": "::1", "MASTER_PORT": "29400"})

    assert rendezvous.init_method == "tcp://[::1]:29400"


def test_rendezvous_rejects_batch_script():
    batch_script = JobEnvironment.from_environ({"SLURM_JOB_ID": "555", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"})

    with pytest.raises(RendezvousError, match="start the training command with srun"):
        rendezvous_for(batch_script, environ={})


@pytest.mark.parametrize(
    ("variables", "environ", "expected"),
    [
        ({"SLURM_PROCID": "4"}, {}, "SLURM_PROCID=4"),
        ({}, {"MASTER_PORT": "70000"}, "MASTER_PORT='70000'"),
        ({}, {"MASTER_PORT": "auto"}, "MASTER_PORT='auto'"),
    ],
)
def test_rendezvous_rejects_bad_values(variables, environ, expected):
    with pytest.raises(RendezvousError, match=re.escape(expected)):
        rendezvous_for(slurm_task(**variables), environ=environ)


def test_plain_process_of_several_ranks_needs_master_port():
    plain = JobEnvironment.from_environ({"SLURM_NTASKS": "2"})

    with pytest.raises(RendezvousError, match="set MASTER_ADDR and MASTER_PORT"):
        rendezvous_for(plain, environ={})
