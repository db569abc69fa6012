"""Why a job stops (preemption, time limit, other signal), the requeue policy, and the parsing behind them.

The scontrol lines are real output of SLURM 22.05 (scripts/slurm-cluster.sh), captured from jobs that were running
a Python process when it received the signal, trimmed to the fields read here.
"""

import signal
import subprocess
import textwrap

import pytest

from runner import exitcodes
from runner.backends.sbatch import SignalSpec, time_limit_minutes
from runner.backends.slurm_control import parse_job_record, parse_time
from runner.preemption import SignalRecord
from runner.requeue import RequeuePolicy
from runner.stop_reason import StopCause, classify_stop

# Preempted on a partition with GraceTime=0: SLURM had already requeued the job when it looked.
PREEMPTED_NO_GRACE = ("JobId=17 JobName=p.sh UserId=root(0) JobState=COMPLETING Reason=None Requeue=1 Restarts=1 "
                      "TimeLimit=00:05:00 StartTime=2026-12-04T20:56:26 EndTime=2026-12-04T21:01:26 "
                      "Partition=debug Comment=a b StdOut=/tmp/probe/p-17.out")
# Preempted on a partition with GraceTime=20: still running, PreemptTime set, EndTime moved to the grace end.
PREEMPTED_IN_GRACE = ("JobId=19 JobName=p.sh JobState=RUNNING Reason=None Requeue=1 Restarts=0 TimeLimit=00:05:00 "
                      "StartTime=2026-12-04T20:56:42 EndTime=2026-12-04T20:57:05 "
                      "PreemptEligibleTime=2026-12-04T20:56:42 PreemptTime=2026-12-04T20:56:45")
# Running, no preemption: scancel --signal, or the --signal before the time limit.
RUNNING = ("JobId=14 JobName=a b\"c'd;$(x) JobState=RUNNING Reason=None Requeue=1 Restarts=0 TimeLimit=00:05:00 "
           "StartTime=2026-12-04T20:55:08 EndTime=2026-12-04T21:00:08 PreemptTime=None")
TIMED_OUT = "JobId=30 JobName=t JobState=TIMEOUT Reason=TimeLimit Restarts=0 EndTime=2026-12-04T21:00:08"


def record_at(end_time, seconds_before_end, signum=signal.SIGUSR1):
    received = parse_time(end_time) - seconds_before_end
    return SignalRecord(signal.Signals(signum), received, received)


def test_preemption_without_grace():
    reason = classify_stop(parse_job_record(PREEMPTED_NO_GRACE), record_at("2026-12-04T21:01:26", 300), 0, 90)

    assert reason.cause is StopCause.PREEMPTION
    assert reason.requeued_by_slurm


def test_preemption_in_grace_time_not_time_limit():
    """EndTime is 20 s away, as at a time limit, but PreemptTime shows the preemption."""
    reason = classify_stop(parse_job_record(PREEMPTED_IN_GRACE), record_at("2026-12-04T20:57:05", 20), 0, 90)

    assert reason.cause is StopCause.PREEMPTION
    assert not reason.requeued_by_slurm


def test_signal_near_end_is_time_limit():
    reason = classify_stop(parse_job_record(RUNNING), record_at("2026-12-04T21:00:08", 95), 0, 90)

    assert reason.cause is StopCause.TIME_LIMIT
    assert "95 s before the time limit" in reason.detail


def test_signal_up_to_60s_early_is_time_limit():
    reason = classify_stop(parse_job_record(RUNNING), record_at("2026-12-04T21:00:08", 150), 0, 90)

    assert reason.cause is StopCause.TIME_LIMIT


def test_signal_far_from_end_is_signal():
    """A 5-minute job signalled 4 minutes before its end: neither a preemption nor its time limit."""
    reason = classify_stop(parse_job_record(RUNNING), record_at("2026-12-04T21:00:08", 240), 0, 30)

    assert reason.cause is StopCause.SIGNAL


def test_timeout_state_is_time_limit():
    reason = classify_stop(parse_job_record(TIMED_OUT), record_at("2026-12-04T21:00:08", 0, signal.SIGTERM), 0, 90)

    assert reason.cause is StopCause.TIME_LIMIT


def test_end_time_variable_without_scontrol():
    end_s = parse_time("2026-12-04T21:00:08")

    near = classify_stop(None, record_at("2026-12-04T21:00:08", 30), 0, 60, str(int(end_s)))
    unknown = classify_stop(None, record_at("2026-12-04T21:00:08", 30), 0, 60, None)

    assert near.cause is StopCause.TIME_LIMIT
    assert unknown.cause is StopCause.UNKNOWN


def test_job_record_keeps_blanks_in_values():
    fields = parse_job_record(RUNNING)

    assert fields["JobName"] == "a b\"c'd;$(x)"
    assert fields["JobState"] == "RUNNING"
    assert fields["PreemptTime"] == "None"
    assert parse_job_record(PREEMPTED_NO_GRACE)["Comment"] == "a b"


@pytest.mark.parametrize(("text", "minutes"), [
    ("30", 30), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440), ("1-2:30", 1590), ("0-0:0:59", 1), ("UNLIMITED", None),
])
def test_time_limit_minutes(text, minutes):
    assert time_limit_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "1h", "1:2:3:4", "-5", "a-1"])
def test_time_limit_invalid(text):
    with pytest.raises(ValueError, match="invalid --time"):
        time_limit_minutes(text)


@pytest.mark.parametrize(("text", "directive"), [
    ("USR1", "USR1@90"), ("SIGUSR2@120", "USR2@120"), ("B:USR1@60", "B:USR1@60"), ("b:TERM@0", "B:TERM@0"),
])
def test_signal_spec_forms(text, directive):
    assert SignalSpec.parse(text).directive_value() == directive


@pytest.mark.parametrize("text", ["USR1@x", "USR1@70000", "USR9@60"])
def test_signal_spec_invalid(text):
    with pytest.raises(ValueError, match="USR"):
        SignalSpec.parse(text)


def test_policy_from_environment():
    policy = RequeuePolicy.from_environ({"RUNNER_MAX_REQUEUES": "3", "RUNNER_REQUEUE_ON_TIME_LIMIT": "0"})

    assert policy.max_requeues == 3
    assert policy.requeue_on_time_limit is False
    assert RequeuePolicy.from_environ({}) == RequeuePolicy(None, True)
    assert RequeuePolicy.from_environ({"RUNNER_MAX_REQUEUES": "3"}, max_requeues=1).max_requeues == 1


@pytest.mark.parametrize(("name", "value"), [("RUNNER_MAX_REQUEUES", "-1"), ("RUNNER_MAX_REQUEUES", "many"),
                                             ("RUNNER_REQUEUE_ON_TIME_LIMIT", "maybe")])
def test_policy_variable_invalid(name, value):
    with pytest.raises(ValueError, match=name):
        RequeuePolicy.from_environ({name: value})


JOB = textwrap.dedent("""
    import os, signal, sys, time, runner
    job = runner.Job()
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    job.stop_if_preempted(save=lambda: print("saved", flush=True))
    print("not stopped", flush=True)
""")


def run_job(tmp_path, python, env, signal_name):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    return subprocess.run([python, str(script), signal_name], env=env, capture_output=True, text=True, timeout=60)


def test_requeue_limit_exits_77_after_saving(tmp_path, python, python_env):
    requeue_file = tmp_path / "requeue"
    python_env.update({"RUNNER_BACKEND": "local", "RUNNER_REQUEUE_FILE": str(requeue_file), "SLURM_JOB_ID": "42",
                       "SLURM_RESTART_COUNT": "2", "RUNNER_MAX_REQUEUES": "2"})

    result = run_job(tmp_path, python, python_env, "SIGUSR1")

    assert result.returncode == exitcodes.REQUEUE_LIMIT
    assert result.stdout == "saved\n"
    assert "maximum of 2 requeues" in result.stderr
    assert not requeue_file.exists()


def test_requeue_below_limit(tmp_path, python, python_env):
    requeue_file = tmp_path / "requeue"
    python_env.update({"RUNNER_BACKEND": "local", "RUNNER_REQUEUE_FILE": str(requeue_file), "SLURM_JOB_ID": "42",
                       "SLURM_RESTART_COUNT": "1", "RUNNER_MAX_REQUEUES": "2"})

    result = run_job(tmp_path, python, python_env, "SIGUSR1")

    assert result.returncode == exitcodes.REQUEUED
    assert requeue_file.read_text() == "42\n"


def test_sigterm_alone_saves_and_requeues(tmp_path, python, python_env):
    """A cluster that sends only SIGTERM before SIGKILL still gets a checkpoint at the next safe point."""
    requeue_file = tmp_path / "requeue"
    python_env.update({"RUNNER_BACKEND": "local", "RUNNER_REQUEUE_FILE": str(requeue_file), "SLURM_JOB_ID": "42"})

    result = run_job(tmp_path, python, python_env, "SIGTERM")

    assert result.returncode == exitcodes.REQUEUED
    assert result.stdout == "saved\n"
    assert "SIGTERM" in result.stderr


def test_sigterm_default_action_when_disabled(tmp_path, python, python_env):
    python_env["RUNNER_WATCH_SIGTERM"] = "0"

    result = run_job(tmp_path, python, python_env, "SIGTERM")

    assert result.returncode == -signal.SIGTERM
    assert result.stdout == ""
