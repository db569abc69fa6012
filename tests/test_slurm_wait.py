"""``runner submit --wait`` on the SLURM cluster of scripts/slurm-cluster.sh: it follows a job through its
requeue and exits with the job's own exit code."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slurm

REQUEUED_ONCE = textwrap.dedent("""
    import os, subprocess, sys, time
    if os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
        subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True)
        time.sleep(120)  # the requeue ends this run
    print("second run", flush=True)
    sys.exit(3)
""")


def submit_and_wait(tmp_path, script):
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("SLURM_", "RUNNER_", "SUBMITIT_"))}
    command = [sys.executable, "-m", "runner.cli", "submit", "--wait", "--template", "single", "--partition", "debug",
               "--time", "5", "--folder", str(tmp_path), "--", sys.executable, "-c", script]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240)
    job_id = result.stdout.split()[0] if result.stdout.split() else None
    if result.returncode != 0 and job_id:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    return result, job_id


def test_wait_follows_requeue(tmp_path):
    result, job_id = submit_and_wait(tmp_path, REQUEUED_ONCE)

    assert result.returncode == 3, result.stdout + result.stderr
    assert "after 1 restart(s)" in result.stderr
    assert f"job {job_id} ended FAILED with exit code 3:0" in result.stderr
    assert "second run" in (tmp_path / f"{job_id}.out").read_text()


def test_wait_success_exits_zero(tmp_path):
    result, job_id = submit_and_wait(tmp_path, "print('done')")

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"job {job_id} ended COMPLETED with exit code 0:0 after 0 restart(s)" in result.stderr
