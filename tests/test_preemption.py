"""The preemption watcher and the job's stop at a safe point, with real signals."""

import os
import signal
import subprocess
import textwrap

import pytest

from runner import exitcodes
from runner.environment import JobEnvironment
from runner.preemption import PreemptionWatcher, parse_signal


@pytest.mark.parametrize("text", ["USR1", "SIGUSR1", "usr1", str(int(signal.SIGUSR1))])
def test_parse_signal_forms(text):
    assert parse_signal(text) == signal.SIGUSR1


def test_parse_signal_unknown_names_value():
    with pytest.raises(ValueError, match="'USR9'"):
        parse_signal("USR9")


def test_watcher_records_signal_only():
    with PreemptionWatcher(["USR2"]) as watcher:
        assert not watcher.requested
        os.kill(os.getpid(), signal.SIGUSR2)

        assert watcher.requested
        assert watcher.first.signal == signal.SIGUSR2
        assert len(watcher.records) == 1
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


def test_watcher_calls_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        with PreemptionWatcher(["USR1"]) as watcher:
            os.kill(os.getpid(), signal.SIGUSR1)

            assert watcher.requested
            assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_watcher_on_sigint_raises_no_keyboard_interrupt():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job may ignore it
    try:
        with PreemptionWatcher(["INT"]) as watcher:
            os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt here if passed on to Python's handler

            assert watcher.requested
            assert watcher.first.signal == signal.SIGINT
    finally:
        signal.signal(signal.SIGINT, previous)


def test_watcher_signal_from_environment(monkeypatch):
    monkeypatch.setenv("RUNNER_PREEMPT_SIGNAL", "USR2")

    assert PreemptionWatcher().signals == [signal.SIGUSR2]


def test_array_task_requeues_only_itself():
    env = JobEnvironment.from_environ({"SLURM_JOB_ID": "107", "SLURM_ARRAY_JOB_ID": "100",
                                       "SLURM_ARRAY_TASK_ID": "7", "SLURM_RESTART_COUNT": "2"})

    assert env.backend == "slurm"
    assert env.requeue_target == "100_7"
    assert env.restart_count == 2


JOB = textwrap.dedent("""
    import os, sys, time, runner
    job = runner.Job()
    saved = []
    for step in range(50):
        time.sleep(0.05)
        if step == 3:
            os.kill(os.getpid(), int(sys.argv[1])) if sys.argv[1] != "0" else None
        job.stop_if_preempted(save=lambda: saved.append(step) or print("saved at", step, flush=True))
    print("finished", flush=True)
""")


def run_job(tmp_path, python, env, signum):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    return subprocess.run([python, str(script), str(signum)], env=env, capture_output=True, text=True, timeout=60)


def test_job_without_signal_never_stops_early(tmp_path, python, python_env):
    result = run_job(tmp_path, python, python_env, 0)

    assert result.returncode == exitcodes.FINISHED
    assert "finished" in result.stdout


def test_job_requeues_through_local_file(tmp_path, python, python_env):
    requeue_file = tmp_path / "requeue"
    python_env.update({"RUNNER_BACKEND": "local", "RUNNER_REQUEUE_FILE": str(requeue_file), "SLURM_JOB_ID": "42"})

    result = run_job(tmp_path, python, python_env, int(signal.SIGUSR1))

    assert result.returncode == exitcodes.REQUEUED
    assert "saved at 3" in result.stdout
    assert "finished" not in result.stdout
    assert requeue_file.read_text() == "42\n"


def test_job_without_scheduler_exits_requeue_failed(tmp_path, python, python_env):
    result = run_job(tmp_path, python, python_env, int(signal.SIGUSR1))

    assert result.returncode == exitcodes.REQUEUE_FAILED
    assert "saved at 3" in result.stdout
    assert "no scheduler to requeue" in result.stderr


def test_missing_scontrol_exits_requeue_failed(tmp_path, python, python_env):
    python_env.update({"SLURM_JOB_ID": "42", "PATH": str(tmp_path)})

    result = run_job(tmp_path, python, python_env, int(signal.SIGUSR1))

    assert result.returncode == exitcodes.REQUEUE_FAILED
    assert "scontrol" in result.stderr
