"""A job that checkpoints between iterations loses no iteration to a preemption and ends bitwise as if never stopped."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

EXAMPLE = str(ROOT / "examples" / "split_digits.py")
FAST = ["--epochs", "60"]


def run_example(python, env, workdir, example_options=(), scheduler_options=None):
    command = [python, EXAMPLE, "--workdir", str(workdir), *FAST, *example_options]
    if scheduler_options is not None:
        command = [python, "-m", "runner.cli", "local", *scheduler_options, "--", *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads((workdir / "final.json").read_text())


def child_env() -> dict:
    """The environment of conftest's ``python_env``, for the module-scoped fixture that cannot use it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name in [name for name in env if name.startswith(("SLURM_", "RUNNER_", "SUBMITIT_"))]:
        del env[name]
    return env


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    _, final = run_example(sys.executable, child_env(), tmp_path_factory.mktemp("uninterrupted"))
    return final


def test_iteration_checkpoint_resumes_bitwise(tmp_path, python, python_env, uninterrupted):
    options = ["--preempt-after", "2.5", "--max-preemptions", "2", "--grace", "60"]

    run, result = run_example(python, python_env, tmp_path, ["--checkpoint-on-signal", "iteration"], options)
    stdout = run.stdout

    # A signal that lands during an evaluation stops the job at the experience boundary instead.
    mid_experience = [int(n) for n in re.findall(r"preempted: saving after iteration (\d+)", stdout)]
    stop_pattern = r"preempted: (?:saving after|stopping after experience \d+,) iteration (\d+)"
    stopped_at = [int(n) for n in re.findall(stop_pattern, stdout)]
    started_at = [int(n) for n in re.findall(r"starting at experience \d+ of \d+, after iteration (\d+)", stdout)]
    trained = [int(n) for n in re.findall(r"this attempt trained (\d+) iterations", stdout)]
    assert len(mid_experience) >= 1, stdout  # at least one stop fell between iterations
    assert result["restarts"] == len(stopped_at)
    assert started_at == [0, *stopped_at]  # each attempt starts with the iteration after the last one saved
    assert sum(trained) == uninterrupted["iterations"]  # no iteration trained twice: none lost
    assert result["iterations"] == uninterrupted["iterations"]
    assert result["params_sha256"] == uninterrupted["params_sha256"]
    assert result["accuracy"] == uninterrupted["accuracy"]


def test_background_saves_resume_bitwise(tmp_path, python, python_env, uninterrupted):
    options = ["--preempt-after", "3", "--max-preemptions", "1", "--grace", "60"]

    run, result = run_example(python, python_env, tmp_path, ["--background-saves"], options)

    starts = [int(start) for start in re.findall(r"starting at experience (\d+)", run.stdout)]
    assert result["restarts"] == 1
    assert starts == sorted(set(starts)), "each attempt must resume further on"
    assert "saved checkpoint" in run.stderr
    assert "in the background" in run.stderr
    assert result["params_sha256"] == uninterrupted["params_sha256"]
    assert result["accuracy"] == uninterrupted["accuracy"]
