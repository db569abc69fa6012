"""The digits example preempted under the local scheduler ends with exactly the uninterrupted run's model."""

import json
import re
import subprocess

import pytest

from conftest import ROOT

EXAMPLE = str(ROOT / "examples" / "split_digits.py")
FAST = ["--epochs", "60"]


def run_example(python, env, workdir, scheduler_options=None, strategy="replay", job_env=()):
    command = ["env", *job_env, python, EXAMPLE, "--workdir", str(workdir), "--strategy", strategy, *FAST]
    if scheduler_options is not None:
        command = [python, "-m", "runner.cli", "local", *scheduler_options, "--", *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads((workdir / "final.json").read_text())


@pytest.mark.parametrize("strategy", ["naive", "replay"])
def test_preempted_run_matches_uninterrupted(tmp_path, python, python_env, strategy):
    _, expected = run_example(python, python_env, tmp_path / "reference", strategy=strategy)

    options = ["--preempt-after", "2", "--max-preemptions", "3", "--grace", "60"]
    result, actual = run_example(python, python_env, tmp_path / "preempted", options, strategy)

    starts = [int(start) for start in re.findall(r"starting at experience (\d+)", result.stdout)]
    assert starts[0] == 0
    assert len(starts) == 4
    assert starts == sorted(set(starts)), "each attempt must resume further on"
    assert actual["restarts"] == 3
    assert expected["restarts"] == 0
    assert actual["params_sha256"] == expected["params_sha256"]
    assert actual["accuracy"] == expected["accuracy"]
    assert len(actual["accuracy"]) == 5


def test_killed_job_resumes_from_last_checkpoint(tmp_path, python, python_env):
    """A job that ignores the signal is killed after the grace period and still ends with the right model."""
    _, expected = run_example(python, python_env, tmp_path / "reference")
    # Set inside the job, after the scheduler set its own: the job watches only USR2, so the URG that the
    # scheduler sends does nothing, and the SIGTERM after the grace period kills it.
    job_env = ["RUNNER_PREEMPT_SIGNAL=USR2", "RUNNER_WATCH_SIGTERM=0"]

    options = ["--preempt-after", "2.5", "--max-preemptions", "2", "--grace", "0.5", "--kill-wait", "0.5",
               "--signal", "URG"]
    result, actual = run_example(python, python_env, tmp_path / "killed", options, job_env=job_env)

    assert "SIGTERM" in result.stderr
    assert "stopping after" not in result.stderr
    assert result.stderr.count("the scheduler killed the job after a preemption") == 2
    assert actual["restarts"] == 2
    assert actual["params_sha256"] == expected["params_sha256"]
