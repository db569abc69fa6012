"""`runner local --ntasks N`: N real task processes, their SLURM variables, signals to all or some, bad exits."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from runner import exitcodes
from runner.backends.local import LocalScheduler
from runner.backends.schedule import PreemptAfter
from runner.cli import main

# Long enough for each task's interpreter to install its handler before the first signal arrives.
STARTUP_S = 0.5

TASK_SCRIPT = r'''
"""Test task: records its variables and signals as JSON lines, then acts as the MODE of its rank selects.

argv: RECORD_PATH RUN_S MODE_0 MODE_1 ... (one mode per rank)
MODE: requeue (on the preemption signal create $RUNNER_REQUEUE_FILE and exit 75), exit75 (on the signal exit 75
without the file), exit1 (on the signal exit 1), ignore (keep running RUN_S), fail (exit 3 at once), hang (ignore
SIGTERM and run RUN_S), default (no handler, so the preemption signal kills it), requeue_on_term (on SIGTERM create
$RUNNER_REQUEUE_FILE and exit 75, as runner's watcher does by default).
An attempt with SLURM_RESTART_COUNT >= 1 exits 0 at once.
"""
import json, os, signal, sys, time

record_path, run_s = sys.argv[1], float(sys.argv[2])
rank = int(os.environ["SLURM_PROCID"])
mode = sys.argv[3 + rank]
restart_count = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
received = []


def record(kind, **fields):
    with open(record_path, "a") as file:
        file.write(json.dumps({"kind": kind, "rank": rank, "restart_count": restart_count, **fields}) + "\n")


signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
if mode in ("hang", "requeue_on_term"):
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
if mode == "default":
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
record("start", env={k: v for k, v in os.environ.items() if k.startswith(("SLURM", "RUNNER_"))})
if restart_count >= 1:
    sys.exit(0)
if mode == "fail":
    sys.exit(3)
started = time.monotonic()
seen = 0
while time.monotonic() - started < run_s:
    while seen < len(received):
        record("signal", signal=signal.Signals(received[seen]).name)
        seen += 1
        if mode == "requeue" and received[seen - 1] == signal.SIGUSR1:
            open(os.environ["RUNNER_REQUEUE_FILE"], "w").close()
            sys.exit(75)
        if mode == "requeue_on_term" and received[seen - 1] == signal.SIGTERM:
            open(os.environ["RUNNER_REQUEUE_FILE"], "w").close()
            sys.exit(75)
        if mode == "exit75" and received[seen - 1] == signal.SIGUSR1:
            sys.exit(75)
        if mode == "exit1" and received[seen - 1] == signal.SIGUSR1:
            sys.exit(1)
    time.sleep(0.01)
record("exit")
'''


@pytest.fixture
def tasks(tmp_path: Path):
    """Return a function that builds the test task's command from one mode per rank; `.records` reads its log."""
    script = tmp_path / "task.py"
    script.write_text(TASK_SCRIPT)
    record_path = tmp_path / "records.jsonl"

    def command(run_s: float, *modes: str) -> list[str]:
        return [sys.executable, str(script), str(record_path), str(run_s), *modes]

    def records(kind: str) -> list[dict]:
        if not record_path.exists():
            return []
        lines = [json.loads(line) for line in record_path.read_text().splitlines()]
        return [line for line in lines if line["kind"] == kind]

    command.records = records
    return command


def test_each_task_gets_srun_variables(tasks):
    scheduler = LocalScheduler(tasks(0.0, "ignore", "ignore", "ignore"), ntasks=3, job_id=77)

    assert scheduler.run() == exitcodes.FINISHED
    starts = sorted(tasks.records("start"), key=lambda line: line["rank"])
    assert [start["rank"] for start in starts] == [0, 1, 2]
    for rank, start in enumerate(starts):
        env = start["env"]
        assert env["SLURM_PROCID"] == str(rank)
        assert env["SLURM_LOCALID"] == str(rank)
        assert env["SLURM_NODEID"] == "0"
        for name in ("SLURM_NTASKS", "SLURM_NPROCS", "SLURM_STEP_NUM_TASKS", "SLURM_TASKS_PER_NODE"):
            assert env[name] == "3", name
        assert env["SLURM_STEP_ID"] == "0"
        assert env["SLURM_GTIDS"] == "0,1,2"
        assert env["SLURM_JOB_ID"] == "77"
    assert len({start["env"]["RUNNER_REQUEUE_FILE"] for start in starts}) == 1
    (attempt,) = scheduler.result.attempts
    assert len(set(attempt.task_pids)) == 3
    assert attempt.task_exit_statuses == [0, 0, 0]


def test_signal_reaches_every_task_by_default(tasks):
    scheduler = LocalScheduler(
        tasks(3.0, "requeue", "requeue"), ntasks=2, schedule=PreemptAfter(STARTUP_S), max_preemptions=1, grace_s=10.0
    )

    assert scheduler.run() == exitcodes.FINISHED
    first, second = scheduler.result.attempts
    assert first.signals[0].ranks == [0, 1]
    assert sorted(line["rank"] for line in tasks.records("signal")) == [0, 1]
    assert first.task_exit_statuses == [75, 75]
    assert first.exit_status == exitcodes.REQUEUED
    assert first.requeued is True
    assert second.task_exit_statuses == [0, 0]


def test_signal_to_one_task_only(tasks):
    scheduler = LocalScheduler(
        tasks(1.5, "ignore", "requeue"), ntasks=2, schedule=PreemptAfter(STARTUP_S), signal_ranks=[1],
        max_preemptions=1, grace_s=10.0,
    )

    assert scheduler.run() == exitcodes.FINISHED
    first, second = scheduler.result.attempts
    assert first.signals[0].ranks == [1]
    assert [line["rank"] for line in tasks.records("signal")] == [1]
    # Task 0 ran on to its end, and the requeue file that task 1 created still restarted the job.
    assert [line["rank"] for line in tasks.records("exit")] == [0]
    assert first.task_exit_statuses == [0, 75]
    assert first.requeue_requested is True
    assert second.restart_count == 1


def test_grace_expiry_terminates_every_task(tasks):
    scheduler = LocalScheduler(
        tasks(10.0, "exit75", "ignore"), ntasks=2, schedule=PreemptAfter(STARTUP_S), grace_s=0.5, kill_wait_s=5.0,
        max_restarts=0,
    )

    assert scheduler.run() == 128 + signal.SIGTERM
    (attempt,) = scheduler.result.attempts
    assert [sent.reason for sent in attempt.signals] == ["preemption", "grace expired"]
    # Task 0 had already exited, so the SIGTERM reached task 1 only.
    assert attempt.signals[1].ranks == [1]
    assert attempt.task_exit_statuses == [75, 128 + signal.SIGTERM]
    assert attempt.killed_after_preemption is True


def test_bad_exit_terminates_other_tasks(tasks):
    scheduler = LocalScheduler(tasks(20.0, "ignore", "fail"), ntasks=2, kill_wait_s=5.0)

    assert scheduler.run() == 3
    (attempt,) = scheduler.result.attempts
    assert attempt.failed_rank == 1
    assert attempt.task_exit_statuses == [128 + signal.SIGTERM, 3]
    assert [(sent.signal, sent.reason, sent.ranks) for sent in attempt.signals] == [
        (signal.SIGTERM, "task failed", [0])
    ]
    assert attempt.requeued is False
    assert tasks.records("exit") == []


def test_bad_exit_kills_after_kill_wait(tasks):
    scheduler = LocalScheduler(tasks(20.0, "hang", "fail"), ntasks=2, kill_wait_s=0.3)

    assert scheduler.run() == 3
    (attempt,) = scheduler.result.attempts
    assert [sent.signal for sent in attempt.signals] == [signal.SIGTERM, signal.SIGKILL]
    assert attempt.task_exit_statuses == [128 + signal.SIGKILL, 3]


def test_exit_75_without_requeue_file_is_final(tasks):
    scheduler = LocalScheduler(
        tasks(3.0, "exit75", "exit75"), ntasks=2, schedule=PreemptAfter(STARTUP_S), grace_s=10.0
    )

    assert scheduler.run() == exitcodes.REQUEUED
    (attempt,) = scheduler.result.attempts
    assert attempt.task_exit_statuses == [75, 75]
    assert attempt.requeued is False


def test_task_killed_by_preemption_signal_requeues(tasks, caplog):
    scheduler = LocalScheduler(
        tasks(10.0, "ignore", "default"), ntasks=2, schedule=PreemptAfter(STARTUP_S), max_preemptions=1,
        grace_s=10.0, kill_wait_s=5.0,
    )

    with caplog.at_level("INFO", logger="runner"):
        assert scheduler.run() == exitcodes.FINISHED
    first, second = scheduler.result.attempts
    # Task 1 died of the signal while task 0 ran, so the scheduler ended task 0 as srun --kill-on-bad-exit does.
    assert first.task_exit_statuses == [128 + signal.SIGTERM, 128 + signal.SIGUSR1]
    assert first.exit_status == 128 + signal.SIGUSR1
    assert first.requeued is True
    assert second.task_exit_statuses == [0, 0]
    assert "requeue (killed by SIGUSR1 after a preemption)" in caplog.text
    assert "hint: task(s) 1 died from SIGUSR1" in caplog.text


def test_task_exit_1_after_preemption_is_final(tasks):
    scheduler = LocalScheduler(
        tasks(10.0, "ignore", "exit1"), ntasks=2, schedule=PreemptAfter(STARTUP_S), max_preemptions=1,
        grace_s=10.0, kill_wait_s=5.0,
    )

    assert scheduler.run() == 1
    (attempt,) = scheduler.result.attempts
    assert attempt.task_exit_statuses == [128 + signal.SIGTERM, 1]
    assert attempt.failed_rank == 1
    assert attempt.requeued is False


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"ntasks": 0}, "ntasks: 0"),
        ({"ntasks": 2, "signal_ranks": [2]}, "rank 2"),
        ({"ntasks": 2, "signal_ranks": []}, "empty"),
    ],
)
def test_scheduler_rejects_bad_task_options(options, expected):
    with pytest.raises(ValueError, match=expected):
        LocalScheduler(["true"], **options)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--ntasks", "0", "--", "true"], "'0'"),
        (["--ntasks", "two", "--", "true"], "'two'"),
        (["--signal-tasks", "first", "--", "true"], "'first'"),
        (["--signal-tasks", "-1", "--", "true"], "'-1'"),
        (["--ntasks", "2", "--signal-tasks", "2", "--", "true"], "rank 2"),
    ],
)
def test_cli_rejects_bad_task_options(capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["local", *args])

    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_cli_signals_chosen_task(tasks, capfd):
    status = main(["local", "--ntasks", "3", "--signal-tasks", "0,2", "--preempt-after", str(STARTUP_S),
                   "--max-restarts", "0", "--grace", "10", "--", *tasks(1.5, "ignore", "ignore", "ignore")])

    assert status == exitcodes.FINISHED
    assert sorted(line["rank"] for line in tasks.records("signal")) == [0, 2]
    stderr = capfd.readouterr().err
    assert "3 tasks, pids" in stderr
    assert "sent SIGUSR1 to task 0 (pid " in stderr
    assert "task 1 (pid" not in stderr


def test_failed_task_ends_job_despite_requeue(tasks):
    scheduler = LocalScheduler(tasks(30.0, "requeue_on_term", "fail"), ntasks=2, max_restarts=2)

    assert scheduler.run() == 3  # the failed task's status, not a requeue that the scheduler's SIGTERM caused
    (attempt,) = scheduler.result.attempts
    assert attempt.failed_rank == 1
    assert attempt.requeue_requested
