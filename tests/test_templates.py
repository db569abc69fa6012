"""The sbatch templates: golden files pin the rendered scripts, and hostile values go through a real bash unchanged.

Set RUNNER_UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate change, then review their diff.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.backends.sbatch import SbatchOptions, SignalSpec, quote_directive_value, render, render_job_script
from runner.backends.slurm import Submission, job_script, submitit_script
from runner.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden"

OPTIONS = SbatchOptions(job_name="digits", partition="debug", time="1:00:00", cpus_per_task=2, mem="4G",
                        signal=SignalSpec.parse("USR1@120"), extra={"qos": "normal"})
SUBMISSION = Submission(OPTIONS, Path("/jobs/digits"), max_requeues=5)
COMMAND = ["python", "train.py", "--workdir", "runs/digits"]

HOSTILE_ARGS = ["with space", "it's", 'double"quote', "semi; touch pwned-semicolon", "$(touch pwned-dollar)",
                "`touch pwned-backtick`", "new\nline", "$HOME", "*", "-n", "", "back\\slash", "tab\tx", "#hash",
                "&& touch pwned-and", "> pwned-redirect"]

PRINT_ARGV = "import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'hostile': os.environ.get('HOSTILE')}))"


def check_golden(name, text):
    path = GOLDEN / name
    if os.environ.get("RUNNER_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with RUNNER_UPDATE_GOLDEN=1 if that is intended"


def test_single_task_golden():
    check_golden("single_task.sbatch", job_script("single", COMMAND, SUBMISSION))


def test_multi_task_golden():
    submission = Submission(SbatchOptions(job_name="digits-ddp", time="30", ntasks=4, cpus_per_task=1),
                            Path("/jobs/digits"))
    check_golden("multi_task.sbatch", job_script("multi", COMMAND, submission))


def test_submitit_script_golden():
    check_golden("submitit.sbatch", submitit_script(SUBMISSION, python="python3"))


def test_single_task_signal_reaches_python():
    script = job_script("single", COMMAND, SUBMISSION)

    assert "#SBATCH --signal=B:USR1@120" in script.splitlines()
    assert "exec python train.py --workdir runs/digits" in script.splitlines()
    assert "#SBATCH --requeue" in script.splitlines()
    assert "#SBATCH --open-mode=append" in script.splitlines()


def test_multi_task_signal_reaches_steps():
    script = job_script("multi", COMMAND, SUBMISSION)

    assert "#SBATCH --signal=USR1@120" in script.splitlines()
    assert "srun python train.py --workdir runs/digits" in script.splitlines()


def test_batch_signal_rejected_for_steps():
    submission = Submission(SbatchOptions(signal=SignalSpec.parse("B:USR1@60")))

    with pytest.raises(ValueError, match="drop the 'B:'"):
        job_script("multi", COMMAND, submission)
    with pytest.raises(ValueError, match="drop the 'B:'"):
        submitit_script(submission)


def test_submitit_script_exports_one_signal():
    script = submitit_script(Submission(SbatchOptions(signal=SignalSpec.parse("USR2@45"))), python="python3")

    lines = script.splitlines()
    assert "#SBATCH --signal=USR2@45" in lines
    assert "export RUNNER_PREEMPT_SIGNAL=USR2" in lines
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR2" in lines
    assert "export RUNNER_SIGNAL_LEAD_S=45" in lines
    assert not any(line.startswith("#SBATCH --time") for line in lines), "the partition's default must apply"


def test_hostile_values_reach_python_unchanged(tmp_path):
    hostile_env = "$(touch pwned-env); 'x' \"y\"\nz"
    options = SbatchOptions(job_name='name "with" $(quotes) ; and #', signal=SignalSpec.parse("USR1@60"))
    submission = Submission(options, tmp_path / "logs dir 'q' $(x)", environment={"HOSTILE": hostile_env})
    script = job_script("single", [sys.executable, "-c", PRINT_ARGV, *HOSTILE_ARGS], submission)
    (tmp_path / "job.sh").write_text(script)

    result = subprocess.run(["bash", str(tmp_path / "job.sh")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)

    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.splitlines()[-1])
    assert printed["argv"] == HOSTILE_ARGS
    assert printed["hostile"] == hostile_env
    assert sorted(path.name for path in tmp_path.iterdir()) == ["job.sh"]


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b"])
def test_directive_line_break_rejected(value):
    with pytest.raises(ValueError, match="line break or NUL"):
        quote_directive_value(value)


def test_job_name_with_newline_rejected():
    submission = Submission(SbatchOptions(job_name="x\n#SBATCH --partition=urgent"))

    with pytest.raises(ValueError, match="line break"):
        job_script("single", COMMAND, submission)


@pytest.mark.parametrize(("value", "quoted"), [
    ("debug", "debug"),
    ("/tmp/logs/%j.out", "/tmp/logs/%j.out"),
    ("a b", '"a b"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
    ("it's", '"it\'s"'),
])
def test_directive_quoting(value, quoted):
    assert quote_directive_value(value) == quoted


def test_environment_name_rejected():
    submission = Submission(environment={"BAD NAME": "x"})

    with pytest.raises(ValueError, match="'BAD NAME'"):
        job_script("single", COMMAND, submission)


def test_extra_option_name_rejected():
    with pytest.raises(ValueError, match="'qos=high'"):
        SbatchOptions(extra={"qos=high": "x"})


def test_render_rejects_unknown_section():
    with pytest.raises(ValueError, match="missing \\['command'\\]"):
        render("exec {{command}}", {})
    with pytest.raises(ValueError, match="not in the template \\['extra'\\]"):
        render("exec {{command}}", {"command": "x", "extra": "y"})


def test_unknown_layout_rejected():
    with pytest.raises(ValueError, match="'array'"):
        render_job_script("array", COMMAND, OPTIONS, "out")


@pytest.mark.parametrize(("key", "message"), [
    ("signal", "use --signal"),
    ("sig", "may read as --signal"),
    ("requeue", "'requeue'"),
    ("no-requeue", "--max-requeues 0"),
    ("open-mode", "'open-mode'"),
    ("output", "--folder"),
    ("time", "use --time"),
])
def test_extra_option_set_by_runner_rejected(key, message):
    with pytest.raises(ValueError, match=message):
        SbatchOptions(extra={key: "x"})


def test_extra_option_not_prefix_accepted():
    options = SbatchOptions(extra={"signals-extra": "x", "mem-per-cpu": "2G"})

    assert ("mem-per-cpu", "2G") in options.directives()


@pytest.mark.parametrize("name", ["KILL", "STOP"])
def test_signal_spec_rejects_uncatchable(name):
    with pytest.raises(ValueError, match=f"invalid --signal {name}"):
        SignalSpec.parse(f"{name}@60")


@pytest.mark.parametrize("option", [["--job-name", "x\ntouch pwned #"], ["--sbatch-arg", "comment=x\ntouch pwned"],
                                    ["--folder", "logs\ntouch pwned"]])
def test_submitit_script_line_break_rejected(tmp_path, option, capsys):
    with pytest.raises(SystemExit):
        main(["submit", "--dry-run", *option, "--", "python", "train.py"])

    assert "line break" in capsys.readouterr().err


def test_percent_in_folder_rejected():
    with pytest.raises(ValueError, match="without '%'"):
        Submission(OPTIONS, "logs%j").absolute_folder()
