"""A data-parallel job whose ranks are seeded apart resumes with each rank's own random state."""

from __future__ import annotations

import json
import sys

from runner import exitcodes
from runner.backends.local import LocalScheduler

DRAWING_JOB = r'''
"""Test job: each rank, seeded apart, draws from torch and random at twelve safe points and appends the draws to
OUT.<rank>. With PREEMPT=yes, rank 1 sends itself the preemption signal at step 4 of the first attempt."""
import json, os, random, signal, sys

import runner

job = runner.Job()
rank = job.env.global_rank
out, checkpoint, preempt = sys.argv[1], sys.argv[2], sys.argv[3] == "yes"

import torch
from runner import distributed

distributed.init_process_group("gloo", timeout_s=60)
torch.manual_seed(100 + rank)
random.seed(100 + rank)


class State:
    exp_counter = 0


state, start = distributed.maybe_load_checkpoint(State(), checkpoint)
with open(f"{out}.{rank}", "a") as draws:
    for step in range(start, 12):
        draws.write(json.dumps([step, torch.rand(1).item(), random.random()]) + "\n")
        draws.flush()
        state.exp_counter = step + 1
        if preempt and rank == 1 and step == 4 and job.env.restart_count == 0:
            os.kill(os.getpid(), signal.SIGUSR1)
        job.stop_if_preempted(lambda: distributed.save_checkpoint(state, checkpoint))
'''


def run_job(tmp_path, name, preempt):
    script = tmp_path / "job.py"
    script.write_text(DRAWING_JOB)
    out = tmp_path / name
    command = [sys.executable, str(script), str(out), str(tmp_path / f"{name}.pkl"), "yes" if preempt else "no"]
    scheduler = LocalScheduler(command, ntasks=2, max_restarts=1, grace_s=60.0)
    status = scheduler.run()
    draws = [[json.loads(line) for line in (tmp_path / f"{name}.{rank}").read_text().splitlines()] for rank in (0, 1)]
    return status, scheduler.result, draws


def test_each_rank_resumes_own_random_state(tmp_path):
    _, _, expected = run_job(tmp_path, "uninterrupted", preempt=False)

    status, result, draws = run_job(tmp_path, "preempted", preempt=True)

    assert status == exitcodes.FINISHED
    assert len(result.attempts) == 2
    assert expected[0] != expected[1]  # the ranks draw different numbers
    assert draws[0] == expected[0]
    assert draws[1] == expected[1]  # rank 1 did not go on with rank 0's random state
