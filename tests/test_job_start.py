"""Checks that ``runner.Job()`` makes when it is created, and how it treats a signal during interpreter shutdown."""

import signal
import subprocess
import textwrap

import pytest

from runner.job import Job
from runner.preemption import PreemptionWatcher


@pytest.mark.parametrize("value", ["abc", "-5", "1.5"])
def test_job_rejects_bad_signal_lead(monkeypatch, value):
    monkeypatch.setenv("RUNNER_SIGNAL_LEAD_S", value)
    handler_before = signal.getsignal(signal.SIGUSR1)

    with pytest.raises(ValueError, match=f"RUNNER_SIGNAL_LEAD_S='{value}'") as error_info:
        Job()
    assert "such as 90" in str(error_info.value)
    assert signal.getsignal(signal.SIGUSR1) is handler_before


@pytest.mark.parametrize("name", ["KILL", "STOP", "SIGKILL"])
def test_job_rejects_uncatchable_preempt_signal(monkeypatch, name):
    monkeypatch.setenv("RUNNER_PREEMPT_SIGNAL", name)

    with pytest.raises(ValueError, match="invalid preemption signal SIG(KILL|STOP)") as error_info:
        Job()
    assert "RUNNER_PREEMPT_SIGNAL" in str(error_info.value)


def test_watcher_rejects_uncatchable_signal():
    with pytest.raises(ValueError, match="invalid preemption signal SIGKILL"):
        PreemptionWatcher(["USR1", "KILL"])


def test_signal_during_shutdown_keeps_exit_status(python, python_env):
    # Module teardown runs after Python has given signals their default action back, so a watched signal sent
    # then kills the process unless it is ignored.
    script = textwrap.dedent("""
        import os, signal, sys
        import runner

        class SignalAtTeardown:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGUSR1)
                os.kill(os.getpid(), signal.SIGTERM)
                sys.stderr.write("survived the signals\\n")

        job = runner.Job()
        teardown = SignalAtTeardown()
        print("work done", flush=True)
    """)
    result = subprocess.run([python, "-c", script], env=python_env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "work done\n"
    assert "survived the signals" in result.stderr
