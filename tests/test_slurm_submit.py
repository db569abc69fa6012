"""``runner submit`` and the submission API without a cluster: option checks, dry runs and rejected input."""

from types import SimpleNamespace

import pytest
import submitit

from runner.backends.sbatch import SbatchOptions
from runner.backends.slurm import Submission, submit_function, submitit_parameters
from runner.cli import main


@pytest.fixture
def run_cli(capsys):
    """Run ``runner submit ARGS`` in this process and return its exit status, stdout and stderr."""
    def run(*args):
        try:
            returncode = main(["submit", *args])
        except SystemExit as error:
            returncode = error.code
        output = capsys.readouterr()
        return SimpleNamespace(returncode=returncode, stdout=output.out, stderr=output.err)

    return run


def test_checkpointable_function_rejected(tmp_path):
    class Resumable(submitit.helpers.Checkpointable):
        def __call__(self):
            return 1

    with pytest.raises(ValueError, match="checkpoint\\(\\) method"):
        submit_function(Submission(folder=tmp_path), Resumable())


def test_submitit_backslash_rejected():
    submission = Submission(SbatchOptions(job_name="a\\b"))

    with pytest.raises(ValueError, match="backslash"):
        submitit_parameters(submission)


def test_submitit_parameters_map_options():
    options = SbatchOptions(job_name="digits", partition="debug", time="1:30:00", cpus_per_task=2, gpus="a100:1",
                            mem="8G", ntasks=1, extra={"qos": "high", "exclusive": True})

    parameters = submitit_parameters(Submission(options, max_requeues=4))

    assert parameters["time"] == 90
    assert parameters["partition"] == "debug"
    assert parameters["cpus_per_task"] == 2
    assert parameters["additional_parameters"] == {"signal": "USR1@90", "requeue": True, "gpus": "a100:1",
                                                   "mem": "8G", "ntasks": 1, "qos": "high", "exclusive": True}
    assert "export RUNNER_MAX_REQUEUES=4" in parameters["setup"]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--mem", "lots", "invalid --mem 'lots'"),
    ("--gpus", "two", "invalid --gpus 'two'"),
    ("--time", "1h", "invalid --time '1h'"),
    ("--cpus-per-task", "0", "invalid count '0'"),
    ("--signal", "USR1@soon", "whole seconds"),
    ("--signal", "B:USR1@60", "drop the 'B:'"),
    ("--sbatch-arg", "Bad_Key=1", "'Bad_Key'"),
])
def test_cli_invalid_option(run_cli, option, value, message):
    result = run_cli(option, value, "--dry-run", "--", "true")

    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--sbatch-arg", "signal=USR2", "use --signal"),
    ("--sbatch-arg", "requeue", "'requeue'"),
    ("--sbatch-arg", "open-mode=truncate", "'open-mode'"),
    ("--signal", "KILL", "invalid --signal KILL"),
    ("--signal", "STOP@60", "invalid --signal STOP"),
])
@pytest.mark.parametrize("layout", [[], ["--template", "single"], ["--template", "multi"]])
def test_cli_rejects_signal_conflicts(run_cli, option, value, message, layout):
    result = run_cli(*layout, option, value, "--dry-run", "--", "true")

    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_cli_missing_command(run_cli):
    result = run_cli("--dry-run")

    assert result.returncode == 2
    assert "missing command" in result.stderr


def test_cli_template_dry_run(run_cli):
    result = run_cli("--template", "single", "--sbatch-arg", "exclusive", "--dry-run", "--",
                     "python", "train.py", "a b")

    assert result.returncode == 0, result.stderr
    assert "exec python train.py 'a b'" in result.stdout.splitlines()
    assert "#SBATCH --exclusive" in result.stdout.splitlines()
    assert "#SBATCH --signal=B:USR1@90" in result.stdout.splitlines()


def test_cli_submitit_dry_run(run_cli, tmp_path):
    result = run_cli("--folder", str(tmp_path), "--max-requeues", "2", "--dry-run", "--", "true")

    assert result.returncode == 0, result.stderr
    assert "#SBATCH --signal=USR1@90" in result.stdout.splitlines()
    assert "export RUNNER_MAX_REQUEUES=2" in result.stdout.splitlines()
    assert f"#SBATCH --output={tmp_path}/%j_0_log.out" in result.stdout.splitlines()
    assert list(tmp_path.iterdir()) == [], "a dry run must create nothing"


def test_cli_dry_run_after_stray_word_refused(run_cli):
    result = run_cli("--template", "single", "python", "x.py", "--dry-run")

    assert result.returncode == 2
    assert "put the command after '--'" in result.stderr
    assert "'python' came first" in result.stderr
