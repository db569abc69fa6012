"""Tests of `runner local`: real job processes, real signals, short grace periods."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import exitcodes
from runner.backends.job_step import SignalTarget, parse_signal
from runner.backends.local import CommandNotFoundError, LocalScheduler
from runner.backends.schedule import PreemptAfter, PreemptEvery, PreemptRandom, parse_delay_range
from runner.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parent.parent

# Long enough for the job's interpreter to install its handlers before the first signal arrives.
STARTUP_S = 0.5

JOB_SCRIPT = r'''
"""Test job: records its environment and the signals it sees as JSON lines, then acts as MODE says.

argv: MODE RUN_S RECORD_PATH [FINISH_FROM_RESTART]
MODE: requeue (create $RUNNER_REQUEUE_FILE and exit 75 on the preemption signal), ignore (keep running),
ignore-term (keep running through SIGTERM too), spawn-child (start a child that records signals, then ignore).
An attempt whose SLURM_RESTART_COUNT is at least FINISH_FROM_RESTART exits 0 at once.
"""
import json, os, signal, subprocess, sys, time

mode, run_s, record_path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
finish_from_restart = int(sys.argv[4]) if len(sys.argv) > 4 else 10**6
restart_count = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
received = []


def record(kind, **fields):
    with open(record_path, "a") as file:
        file.write(json.dumps({"kind": kind, "restart_count": restart_count, "pid": os.getpid(), **fields}) + "\n")


def on_signal(signum, frame):
    received.append(signum)


preempt_signal = signal.Signals["SIG" + os.environ["RUNNER_PREEMPT_SIGNAL"]]
signal.signal(preempt_signal, on_signal)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, on_signal)
if mode == "spawn-child":
    child_code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda s, f: open(sys.argv[1] + '.child-signal', 'w').close())\n"
        "open(sys.argv[1] + '.child-pid', 'w').write(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    subprocess.Popen([sys.executable, "-c", child_code, record_path])
variables = {k: v for k, v in os.environ.items() if k.startswith(("SLURM", "RUNNER_"))}
requeue_dir = os.path.dirname(os.environ["RUNNER_REQUEUE_FILE"])
record("start", env=variables, requeue_dir_mode=os.stat(requeue_dir).st_mode & 0o777,
       requeue_file_existed=os.path.exists(os.environ["RUNNER_REQUEUE_FILE"]))
if restart_count >= finish_from_restart:
    record("exit")
    sys.exit(0)

started = time.monotonic()
seen = 0
while time.monotonic() - started < run_s:
    while seen < len(received):
        signum = received[seen]
        seen += 1
        record("signal", signal=signal.Signals(signum).name)
        if mode == "requeue" and signum == preempt_signal:
            open(os.environ["RUNNER_REQUEUE_FILE"], "w").close()
            record("requeue")
            sys.exit(75)
    time.sleep(0.01)
record("exit")
'''


@pytest.fixture
def job(tmp_path: Path):
    """Return a function that builds the command of the test job for a mode, and the path of its records."""
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT)
    records = tmp_path / "records.jsonl"

    def command(mode: str, run_s: float, finish_from_restart: int | None = None) -> list[str]:
        argv = [sys.executable, str(script), mode, str(run_s), str(records)]
        return argv if finish_from_restart is None else [*argv, str(finish_from_restart)]

    command.records = records
    return command


def read_records(path: Path, kind: str | None = None) -> list[dict]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if kind is None or line["kind"] == kind]


def signal_names(attempt) -> list[str]:
    return [sent.signal.name for sent in attempt.signals]


def test_unpreempted_job_runs_once(job):
    scheduler = LocalScheduler(job("ignore", 0.2), grace_s=0.2, kill_wait_s=0.2)

    assert scheduler.run() == exitcodes.FINISHED
    assert len(scheduler.result.attempts) == 1
    assert scheduler.result.attempts[0].signals == []
    assert scheduler.result.attempts[0].requeued is False
    assert [r["restart_count"] for r in read_records(job.records, "start")] == [0]
    assert len(read_records(job.records, "exit")) == 1


def test_job_environment_is_slurm_like(job, monkeypatch, tmp_path):
    # A variable from an enclosing SLURM allocation must not leak into the local job.
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("MY_SETTING", "kept")
    monkeypatch.chdir(tmp_path)
    scheduler = LocalScheduler(job("ignore", 0.0), job_id=4242, job_name="train")

    assert scheduler.run() == 0
    (start,) = read_records(job.records, "start")
    env = start["env"]
    assert env["SLURM_JOB_ID"] == "4242"
    assert env["SLURM_JOB_NAME"] == "train"
    assert "SLURM_RESTART_COUNT" not in env  # real SLURM sets it from the first requeue on
    for name in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"):
        assert env[name] == "0"
    for name in ("SLURM_NTASKS", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"):
        assert env[name] == "1"
    assert env["SLURM_SUBMIT_DIR"] == str(tmp_path)
    assert env["SLURMD_NODENAME"]
    assert env["SLURM_CLUSTER_NAME"] == "local"
    assert env["RUNNER_BACKEND"] == "local"
    assert env["RUNNER_PREEMPT_SIGNAL"] == "USR1"
    assert "SLURM_ARRAY_TASK_ID" not in env
    assert start["requeue_dir_mode"] == 0o700
    assert start["requeue_file_existed"] is False
    assert not Path(env["RUNNER_REQUEUE_FILE"]).parent.exists()


def test_default_job_id_and_name(job):
    scheduler = LocalScheduler(job("ignore", 0.0))

    scheduler.run()
    env = read_records(job.records, "start")[0]["env"]
    assert env["SLURM_JOB_ID"] == str(os.getpid())
    assert env["SLURM_JOB_NAME"] == os.path.basename(sys.executable)


def test_requeue_restarts_with_next_count(job):
    scheduler = LocalScheduler(
        job("requeue", 3.0, finish_from_restart=2),
        schedule=PreemptAfter(STARTUP_S),
        max_preemptions=2,
        grace_s=5.0,
    )

    assert scheduler.run() == exitcodes.FINISHED
    attempts = scheduler.result.attempts
    assert [a.restart_count for a in attempts] == [0, 1, 2]
    assert [a.preemption_count for a in attempts] == [1, 1, 0]
    assert [a.exit_status for a in attempts] == [75, 75, 0]
    assert [a.requeue_requested for a in attempts] == [True, True, False]
    assert [a.requeued for a in attempts] == [True, True, False]
    starts = read_records(job.records, "start")
    assert [r["restart_count"] for r in starts] == [0, 1, 2]
    assert len({r["env"]["RUNNER_REQUEUE_FILE"] for r in starts}) == 3
    assert [r["signal"] for r in read_records(job.records, "signal")] == ["SIGUSR1", "SIGUSR1"]


def test_max_restarts_rejects_requeue(job):
    scheduler = LocalScheduler(
        job("requeue", 3.0),
        schedule=PreemptAfter(STARTUP_S),
        preempt_signal=signal.SIGUSR2,
        max_restarts=1,
        grace_s=5.0,
    )

    assert scheduler.run() == exitcodes.REQUEUE_LIMIT
    attempts = scheduler.result.attempts
    assert [a.restart_count for a in attempts] == [0, 1]
    assert [a.requeued for a in attempts] == [True, False]
    assert attempts[-1].requeue_requested is True
    assert [r["signal"] for r in read_records(job.records, "signal")] == ["SIGUSR2", "SIGUSR2"]
    assert read_records(job.records, "start")[0]["env"]["RUNNER_PREEMPT_SIGNAL"] == "USR2"


def test_grace_expiry_sends_sigterm(job):
    scheduler = LocalScheduler(
        job("ignore", 10.0), schedule=PreemptAfter(STARTUP_S), grace_s=0.3, kill_wait_s=5.0, max_restarts=0
    )

    assert scheduler.run() == 128 + signal.SIGTERM
    (attempt,) = scheduler.result.attempts
    assert signal_names(attempt) == ["SIGUSR1", "SIGTERM"]
    assert [sent.reason for sent in attempt.signals] == ["preemption", "grace expired"]
    assert attempt.signals[1].after_s - attempt.signals[0].after_s == pytest.approx(0.3, abs=0.2)
    assert attempt.killed_after_preemption is True
    assert attempt.requeued is False
    assert [r["signal"] for r in read_records(job.records, "signal")] == ["SIGUSR1"]


def test_sigkill_after_kill_wait_then_restart(job):
    scheduler = LocalScheduler(
        job("ignore-term", 10.0, finish_from_restart=1),
        schedule=PreemptAfter(STARTUP_S),
        max_preemptions=1,
        grace_s=0.2,
        kill_wait_s=0.3,
    )

    assert scheduler.run() == exitcodes.FINISHED
    first, second = scheduler.result.attempts
    assert first.exit_status == 128 + signal.SIGKILL
    assert signal_names(first) == ["SIGUSR1", "SIGTERM", "SIGKILL"]
    assert first.signals[2].after_s - first.signals[1].after_s == pytest.approx(0.3, abs=0.2)
    assert first.requeued is True
    assert second.restart_count == 1
    assert second.signals == []
    assert [r["signal"] for r in read_records(job.records, "signal")] == ["SIGUSR1", "SIGTERM"]


def test_preempt_every_repeats_within_attempt(job):
    scheduler = LocalScheduler(
        job("ignore", 1.8), schedule=PreemptEvery(0.4), max_preemptions=3, grace_s=10.0, max_restarts=0
    )

    assert scheduler.run() == exitcodes.FINISHED
    (attempt,) = scheduler.result.attempts
    assert attempt.preemption_count == 3
    assert [sent.after_s for sent in attempt.signals] == pytest.approx([0.4, 0.8, 1.2], abs=0.15)
    assert [r["signal"] for r in read_records(job.records, "signal")] == ["SIGUSR1"] * 3


@pytest.mark.parametrize(("target", "child_signalled"), [(SignalTarget.GROUP, True), (SignalTarget.MAIN, False)])
def test_signal_target_reaches_children(job, target, child_signalled):
    scheduler = LocalScheduler(
        job("spawn-child", 1.2), schedule=PreemptAfter(0.8), signal_target=target, grace_s=5.0, max_restarts=0
    )

    assert scheduler.run() == 0
    assert Path(f"{job.records}.child-signal").exists() is child_signalled
    assert [r["signal"] for r in read_records(job.records, "signal")] == ["SIGUSR1"]
    # The child outlived the job, so the scheduler killed what was left of its process group.
    child_pid = int(Path(f"{job.records}.child-pid").read_text())
    assert_gone(child_pid)


def assert_gone(pid: int) -> None:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs after the job exited")


@pytest.mark.parametrize(
    ("code", "expected_status"),
    [
        ("import sys; sys.exit(3)", 3),
        ("import sys; sys.exit(75)", 75),
        ("import os, signal; os.kill(os.getpid(), signal.SIGABRT)", 128 + signal.SIGABRT),
    ],
)
def test_exit_status_propagated_without_restart(code, expected_status):
    scheduler = LocalScheduler([sys.executable, "-c", code])

    assert scheduler.run() == expected_status
    assert len(scheduler.result.attempts) == 1
    assert scheduler.result.attempts[0].requeued is False


def test_random_schedule_reproducible():
    first = PreemptRandom(0.5, 9.0, seed=7)
    again = PreemptRandom(0.5, 9.0, seed=7)
    other_seed = PreemptRandom(0.5, 9.0, seed=8)

    draws = [list(first.delays_s(restart)) for restart in range(5)]
    assert draws == [list(again.delays_s(restart)) for restart in range(5)]
    assert draws != [list(other_seed.delays_s(restart)) for restart in range(5)]
    assert all(len(delays) == 1 and 0.5 <= delays[0] <= 9.0 for delays in draws)
    assert len({delays[0] for delays in draws}) == 5
    assert PreemptRandom(1.0, 2.0).seed is not None


def test_random_schedule_times_signals(job):
    schedule = PreemptRandom(STARTUP_S, 0.8, seed=3)
    scheduler = LocalScheduler(
        job("requeue", 3.0, finish_from_restart=2), schedule=schedule, max_preemptions=2, grace_s=5.0
    )

    assert scheduler.run() == 0
    for attempt in scheduler.result.attempts[:2]:
        (delay_s,) = schedule.delays_s(attempt.restart_count)
        assert attempt.signals[0].after_s == pytest.approx(delay_s, abs=0.1)


def run_cli(*args: str, **popen_options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runner.cli", *args],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        **popen_options,
    )


def test_cli_logs_each_event(job):
    process = run_cli("local", "--preempt-after", str(STARTUP_S), "--max-preemptions", "1", "--job-id", "1234",
                      "--", *job("requeue", 3.0, finish_from_restart=1))
    _, stderr = process.communicate(timeout=20)

    assert process.returncode == 0, stderr
    lines = stderr.splitlines()
    assert any(line.startswith("runner local: [job 1234] attempt 1 started, pid ") for line in lines), stderr
    first_starts = [line for line in lines if "attempt 1 started" in line]
    assert first_starts[0].endswith(", SLURM_RESTART_COUNT unset"), stderr
    assert "SLURM_RESTART_COUNT=1" in stderr
    assert "sent SIGUSR1 to pid" in stderr
    assert "requeue (the job requested it); starting attempt 2" in stderr
    assert "attempt 1 exited with status 75" in stderr
    assert "runner local: [job 1234] finished with status 0 after 2 attempt(s)" in lines


@pytest.mark.parametrize(
    ("stop_signal", "mode", "expected_status"),
    [(signal.SIGTERM, "ignore", 128 + signal.SIGTERM), (signal.SIGINT, "ignore-term", 128 + signal.SIGKILL),
     (signal.SIGHUP, "ignore", 128 + signal.SIGTERM)],
)
def test_stopping_scheduler_stops_job(job, stop_signal, mode, expected_status):
    process = run_cli("local", "--kill-wait", "0.3", "--", *job(mode, 20.0))
    deadline = time.monotonic() + 15.0
    while not read_records(job.records, "start"):
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)

    process.send_signal(stop_signal)
    _, stderr = process.communicate(timeout=10)

    assert process.returncode == expected_status, stderr
    assert f"the scheduler received {stop_signal.name}" in stderr
    assert "not restarting" in stderr
    assert len(read_records(job.records, "start")) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--signal", "BOGUS", "--", "true"], "'BOGUS'"),
        (["--signal", "KILL", "--", "true"], "'KILL'"),
        (["--grace", "-1", "--", "true"], "'-1'"),
        (["--kill-wait", "soon", "--", "true"], "'soon'"),
        (["--preempt-after", "nan", "--", "true"], "'nan'"),
        (["--preempt-every", "0", "--", "true"], "'0'"),
        (["--preempt-random", "5:2", "--", "true"], "'5:2'"),
        (["--preempt-random", "5", "--", "true"], "'5'"),
        (["--max-restarts", "-2", "--", "true"], "'-2'"),
        (["--seed", "4", "--", "true"], "--seed 4"),
        (["--preempt-after", "1", "--preempt-every", "2", "--", "true"], "not allowed with"),
        (["--"], "missing command"),
        ([], "missing command"),
    ],
)
def test_cli_rejects_bad_options(capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["local", *args])

    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_cli_command_not_found(capsys, tmp_path):
    assert main(["local", "--", "no-such-command-for-runner"]) == 127
    assert "command not found: 'no-such-command-for-runner'" in capsys.readouterr().err

    not_executable = tmp_path / "train.sh"
    not_executable.write_text("echo hi\n")
    assert main(["local", "--", str(not_executable)]) == 127
    assert str(not_executable) in capsys.readouterr().err


def test_cli_passes_job_options_through():
    check_argv = "import sys; sys.exit(0 if sys.argv[1:] == ['--grace', '-1', '--'] else 1)"

    assert main(["local", "--", sys.executable, "-c", check_argv, "--grace", "-1", "--"]) == 0


def test_cli_command_needs_separator(capsys):
    with pytest.raises(SystemExit):
        main(["local", "--grace", "1", "stray", "--preempt-after", "1", "--", "true"])

    assert "put the command after '--'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"grace_s": -1.0}, "grace_s: -1.0"),
        ({"kill_wait_s": float("inf")}, "kill_wait_s: inf"),
        ({"max_restarts": -1}, "max_restarts: -1"),
        ({"max_preemptions": 1.5}, "max_preemptions: 1.5"),
    ],
)
def test_scheduler_rejects_bad_values(options, expected):
    with pytest.raises(ValueError, match=expected):
        LocalScheduler(["true"], **options)


def test_scheduler_rejects_empty_command():
    with pytest.raises(ValueError, match="missing command"):
        LocalScheduler([])


def test_scheduler_command_not_found():
    with pytest.raises(CommandNotFoundError, match="no-such-command-for-runner") as error_info:
        LocalScheduler(["no-such-command-for-runner"]).run()
    assert error_info.value.command == "no-such-command-for-runner"


@pytest.mark.parametrize("factory", [lambda: PreemptAfter(-1.0), lambda: PreemptEvery(0.0), lambda: PreemptRandom(2, 1)])
def test_schedules_reject_bad_times(factory):
    with pytest.raises(ValueError, match="invalid"):
        factory()


@pytest.mark.parametrize("text", ["USR1", "SIGUSR1", "usr1", str(int(signal.SIGUSR1))])
def test_parse_signal_accepts_names_and_numbers(text):
    assert parse_signal(text) is signal.SIGUSR1


@pytest.mark.parametrize("text", ["USR9", "999", "", "STOP"])
def test_parse_signal_rejects(text):
    with pytest.raises(ValueError, match=repr(text)):
        parse_signal(text)


def test_parse_delay_range():
    assert parse_delay_range("30:600") == (30.0, 600.0)
    assert parse_delay_range("0:0") == (0.0, 0.0)
    for text in ("600:30", "a:b", "1:2:3", "-1:5"):
        with pytest.raises(ValueError, match="invalid"):
            parse_delay_range(text)


SIGNAL_DEATH_JOB = r'''
"""Test job: the first attempt runs MODE and waits; later attempts exit 0 at once.

MODE: default (no handler, so the preemption signal kills it), abort (the handler aborts), exit1 (the handler
exits 1).
"""
import os, signal, sys, time

mode = sys.argv[1]
if os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
    sys.exit(0)
if mode == "abort":
    signal.signal(signal.SIGUSR1, lambda signum, frame: os.abort())
elif mode == "exit1":
    signal.signal(signal.SIGUSR1, lambda signum, frame: sys.exit(1))
time.sleep(30)
'''


@pytest.fixture
def signal_death_job(tmp_path: Path):
    """Return a function that builds the command of SIGNAL_DEATH_JOB for a mode."""
    script = tmp_path / "signal_death_job.py"
    script.write_text(SIGNAL_DEATH_JOB)
    return lambda mode: [sys.executable, str(script), mode]


@pytest.mark.parametrize(("mode", "first_status"), [("default", 128 + signal.SIGUSR1), ("abort", 128 + signal.SIGABRT)])
def test_signal_death_after_preemption_requeues(signal_death_job, mode, first_status):
    scheduler = LocalScheduler(
        signal_death_job(mode), schedule=PreemptAfter(STARTUP_S), max_preemptions=1, grace_s=10.0
    )

    assert scheduler.run() == exitcodes.FINISHED
    first, second = scheduler.result.attempts
    assert first.exit_status == first_status
    assert first.requeue_requested is False
    assert first.requeued is True
    assert second.exit_status == exitcodes.FINISHED


def test_exit_code_after_preemption_is_final(signal_death_job):
    scheduler = LocalScheduler(
        signal_death_job("exit1"), schedule=PreemptAfter(STARTUP_S), max_preemptions=1, grace_s=10.0
    )

    assert scheduler.run() == 1
    (attempt,) = scheduler.result.attempts
    assert attempt.preemption_count == 1
    assert attempt.requeued is False


def test_signal_death_requeue_respects_max_restarts(signal_death_job, caplog):
    scheduler = LocalScheduler(
        signal_death_job("default"), schedule=PreemptAfter(STARTUP_S), max_restarts=0, grace_s=10.0
    )

    with caplog.at_level("INFO", logger="runner"):
        assert scheduler.run() == 128 + signal.SIGUSR1
    assert len(scheduler.result.attempts) == 1
    assert "requeue rejected (killed by SIGUSR1 after a preemption)" in caplog.text


def test_cli_requeues_shell_wrapper_killed_by_signal(signal_death_job, tmp_path):
    # Without exec, bash runs Python as a child and dies of the SIGUSR1 meant for it.
    wrapper = tmp_path / "train.sh"
    wrapper.write_text(f"#!/bin/bash\n{' '.join(signal_death_job('exit1'))}\necho wrapper done\n")
    wrapper.chmod(0o755)
    process = run_cli("local", "--preempt-after", str(STARTUP_S), "--max-preemptions", "1", "--", str(wrapper))
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == exitcodes.FINISHED, stderr
    assert "attempt 1 exited with status 138" in stderr
    assert "requeue (killed by SIGUSR1 after a preemption); starting attempt 2" in stderr
    hints = [line for line in stderr.splitlines() if "hint:" in line]
    assert len(hints) == 1, stderr
    assert "its main process died from SIGUSR1" in hints[0]
    assert "`exec`" in hints[0]
    assert "runner.Job()" in hints[0]


@pytest.mark.parametrize("job_id", ["abc", "\u0661\u0662"])  # the second is 12 in Arabic-Indic digits
def test_cli_job_id_error_names_option(capsys, job_id):
    with pytest.raises(SystemExit) as exit_info:
        main(["local", "--job-id", job_id, "--", "true"])

    assert exit_info.value.code == 2
    assert f"argument --job-id: invalid job id {job_id!r}" in capsys.readouterr().err


@pytest.mark.parametrize("job_id", ["0", "000", "4294967294", "4294967295", "18446744073709551616", "1" + "0" * 5000],
                         ids=["zero", "zeros", "NO_VAL", "2**32-1", "2**64", "5001 digits"])
def test_cli_job_id_outside_slurm_range(capsys, job_id):
    with pytest.raises(SystemExit) as exit_info:
        main(["local", "--job-id", job_id, "--", "true"])

    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument --job-id: invalid job id {job_id!r}" in error
    assert "give a whole number from 1 to 4294967293" in error


@pytest.mark.parametrize("job_id, expected", [("1", 1), ("4294967293", 4294967293), ("0" * 5000 + "42", 42)],
                         ids=["one", "2**32-3", "leading zeros"])
def test_cli_job_id_slurm_range_accepted(job_id, expected):
    args = build_parser().parse_args(["local", "--job-id", job_id, "--", "true"])

    assert args.job_id == expected
