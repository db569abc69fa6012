"""A 2-task job on the local SLURM cluster, started with srun, preempted twice and requeued by runner.

The first preemption reaches both tasks (scancel --signal), the second only rank 1 (kill on its pid). The job
must end with bitwise the same parameters as an uninterrupted 2-task run, with each stop's job step ending with
exit code 75 and each requeue asked for once.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EXAMPLE = ROOT / "examples" / "split_digits_ddp.py"
EXAMPLE_OPTIONS = ["--epochs", "30"]
"""Enough epochs that each experience takes about a second, so a signal sent after a start message lands in time."""
WAIT_S = 300.0
"""Upper bound for each step of the job; a requeued job waits about 7 s for its old credential to expire."""


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name in [name for name in env if name.startswith(("SLURM_", "RUNNER_", "SUBMITIT_", "MASTER_"))]:
        del env[name]
    return env


def write_batch_script(folder: Path) -> Path:
    command = shlex.join([sys.executable, str(EXAMPLE), "--workdir", str(folder / "work"), *EXAMPLE_OPTIONS])
    script = folder / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --job-name=runner-ddp-test\n"
        "#SBATCH --partition=debug\n"
        "#SBATCH --ntasks=2\n"
        "#SBATCH --requeue\n"
        "#SBATCH --open-mode=append\n"
        f"#SBATCH --output={shlex.quote(str(folder / 'job.out'))}\n"
        f"export PYTHONPATH={shlex.quote(str(ROOT))}\n"
        f"srun --kill-on-bad-exit=1 {command}\n"
    )
    return script


def wait_for_output(output: Path, pattern: str, job_id: str) -> re.Match:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        text = output.read_text() if output.exists() else ""
        match = re.search(pattern, text)
        if match:
            return match
        time.sleep(0.2)
    state = subprocess.run(["squeue", "--noheader", "--jobs", job_id], capture_output=True, text=True).stdout
    raise AssertionError(f"no {pattern!r} in the job output after {WAIT_S:g} s; squeue: {state!r}\n{text}")


def step_exit_codes(job_id: str) -> list[tuple[str, str]]:
    """Return (state, exit code) of step 0 in every run of the job, oldest first, once the last run completed."""
    deadline = time.monotonic() + WAIT_S
    while True:
        lines = subprocess.run(
            ["sacct", "--noheader", "--duplicates", "--parsable2", "--format=JobID,State,ExitCode", "--jobs", job_id],
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()
        steps = [tuple(line.split("|")[1:]) for line in lines if line.startswith(f"{job_id}.0|")]
        if steps and steps[-1][0] == "COMPLETED":
            return steps
        assert time.monotonic() < deadline, f"sacct shows no completed step 0 of job {job_id}: {lines}"
        time.sleep(0.5)


def test_preempted_srun_job_matches_uninterrupted(tmp_path):
    reference_dir = tmp_path / "reference"
    reference = subprocess.run(
        [sys.executable, "-m", "runner.cli", "local", "--ntasks", "2", "--",
         sys.executable, str(EXAMPLE), "--workdir", str(reference_dir), *EXAMPLE_OPTIONS],
        env=child_env(), capture_output=True, text=True, timeout=WAIT_S,
    )
    assert reference.returncode == 0, reference.stderr
    expected = json.loads((reference_dir / "final.json").read_text())

    output = tmp_path / "job.out"
    submitted = subprocess.run(["sbatch", "--parsable", str(write_batch_script(tmp_path))],
                               env=child_env(), capture_output=True, text=True, check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        wait_for_output(output, r"restart 0: 2 tasks starting at experience 0", job_id)
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)

        wait_for_output(output, r"restart 1: 2 tasks starting", job_id)
        # Rank 1 logs its join before rank 0 can print its start, so the last join line is the requeued run's.
        rank_1_pids = re.findall(r"rank 1 pid (\d+) runner\.distributed\.rendezvous: rank 1 of 2 joined",
                                 output.read_text())
        os.kill(int(rank_1_pids[-1]), signal.SIGUSR1)

        wait_for_output(output, r"finished: ", job_id)
        steps = step_exit_codes(job_id)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)

    text = output.read_text()
    actual = json.loads((tmp_path / "work" / "final.json").read_text())
    assert actual["params_sha256"] == expected["params_sha256"], text
    assert actual["accuracy"] == expected["accuracy"]
    assert actual["restarts"] == 2
    assert "stopping: 2 of 2 ranks were preempted" in text
    assert "stopping: 1 of 2 ranks were preempted" in text
    requeues = [line for line in text.splitlines() if "asked SLURM to requeue job" in line]
    assert len(requeues) == 2, text
    assert all(" rank 0 " in line for line in requeues)
    # Both tasks exited 75 in each stopped run: srun reports the highest exit code of the step's tasks.
    assert steps == [("FAILED", "75:0"), ("FAILED", "75:0"), ("COMPLETED", "0:0")]
