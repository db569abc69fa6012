"""The data-parallel digits example as 2 tasks under `runner local`.

Preempted runs end with the uninterrupted run's parameters, whether the signal reached every rank or only one.
A checkpoint saved by 2 tasks and loaded by 1 is detected.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

EXAMPLE = str(ROOT / "examples" / "split_digits_ddp.py")
FAST = ["--epochs", "10"]

# The signal lands during the first attempt's start-up or its first experiences, always before its last save,
# because start-up alone (importing torch and scikit-learn in two processes) takes longer than this.
PREEMPT_AFTER_S = "2"


def run_example(workdir, ntasks, scheduler_options=(), example_options=()):
    command = [sys.executable, "-m", "runner.cli", "local", "--ntasks", str(ntasks), *scheduler_options, "--",
               sys.executable, EXAMPLE, "--workdir", str(workdir), *FAST, *example_options]
    return subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)


def final_result(result, workdir) -> dict:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((workdir / "final.json").read_text())


def child_env() -> dict:
    """The environment of the scheduler and its tasks: this checkout importable, no inherited job variables."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name in [name for name in env if name.startswith(("SLURM_", "RUNNER_", "SUBMITIT_", "MASTER_"))]:
        del env[name]
    return env


@pytest.fixture(scope="module")
def uninterrupted_workdir(tmp_path_factory) -> Path:
    """The workdir of an uninterrupted 2-task run, shared by the tests of this module; tests must not change it."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    final_result(run_example(workdir, ntasks=2), workdir)
    return workdir


@pytest.fixture
def uninterrupted(uninterrupted_workdir) -> dict:
    return json.loads((uninterrupted_workdir / "final.json").read_text())


@pytest.mark.parametrize(("signal_tasks", "safe_points"), [("all", "experience"), ("1", "iteration")])
def test_preempted_run_matches_uninterrupted(uninterrupted, tmp_path, signal_tasks, safe_points):
    options = ["--preempt-after", PREEMPT_AFTER_S, "--max-preemptions", "1", "--grace", "120",
               "--signal-tasks", signal_tasks]
    result = run_example(tmp_path, 2, options, ["--checkpoint-on-signal", safe_points])
    actual = final_result(result, tmp_path)

    starts = re.findall(r"2 tasks starting at experience (\d+) of 5, after iteration (\d+)", result.stdout)
    assert [int(iteration) for _, iteration in starts][:1] == [0]
    assert len(starts) == 2
    assert int(starts[1][1]) > 0, "the second attempt must resume further on"
    if safe_points == "experience":
        assert int(starts[1][0]) > 0
    assert "attempt 1 exited with status 75 (tasks: 75 75)" in result.stderr
    assert "SIGTERM" not in result.stderr, "a rank lingered past the grace period"
    requeue_lines = [line for line in result.stderr.splitlines() if "asked the local scheduler to requeue" in line]
    assert len(requeue_lines) == 1
    assert " rank 0 " in requeue_lines[0]
    assert actual["restarts"] == 1
    assert uninterrupted["restarts"] == 0
    assert actual["world_size"] == uninterrupted["world_size"] == 2
    assert actual["rank_params_sha256"] == [actual["params_sha256"]] * 2
    assert actual["params_sha256"] == uninterrupted["params_sha256"]
    assert actual["accuracy"] == uninterrupted["accuracy"]
    assert actual["iterations"] == uninterrupted["iterations"]


def test_changed_task_count_detected(uninterrupted_workdir, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(uninterrupted_workdir, workdir)
    (workdir / "final.json").unlink()

    resumed = run_example(workdir, 1)

    assert resumed.returncode == 1
    assert "WorldSizeChangedError" in resumed.stderr
    assert "was saved by a job of 2 task(s), but this job has 1" in resumed.stderr
    assert "allow_world_size_change=True" in resumed.stderr
    assert not (workdir / "final.json").exists()

    allowed = run_example(workdir, 1, example_options=["--allow-world-size-change"])
    result = final_result(allowed, workdir)
    assert "saved by 2 task(s); going on with 1" in allowed.stderr
    assert result["world_size"] == 1
    assert len(result["accuracy"]) == 5
