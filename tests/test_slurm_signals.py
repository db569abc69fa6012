"""runner's watcher beside submitit's signal handlers, with real signals and submitit's real handler objects."""

import logging
import os
import signal

import pytest
import submitit
from submitit.core import utils as submitit_utils
from submitit.core.job_environment import SignalHandler
from submitit.slurm.slurm import SlurmJobEnvironment

from runner.backends.slurm import take_over_submitit_signals
from runner.preemption import PreemptionWatcher


@pytest.fixture
def submitit_handlers(tmp_path, monkeypatch):
    """Install submitit's handlers as its job runner does: USR1 for preemption, SIGTERM and SIGCONT bypassed."""
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path))
    monkeypatch.setattr(SlurmJobEnvironment, "USR_SIG", "USR1")
    delayed = submitit_utils.DelayedSubmission(print, "job")
    delayed.set_timeout(5, 3)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGCONT)}
    environment = SlurmJobEnvironment()
    environment._handle_signals(submitit_utils.JobPaths(tmp_path, job_id="42"), delayed)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_watcher_calls_submitit_bypass(submitit_handlers, caplog):
    with PreemptionWatcher(["USR2"]) as watcher:
        with caplog.at_level(logging.WARNING, logger="submitit"):
            os.kill(os.getpid(), signal.SIGTERM)

        assert [record.signal for record in watcher.records] == [signal.SIGTERM]
        assert "Bypassing signal SIGTERM" in caplog.text


def test_watcher_records_before_submitit_handler(submitit_handlers):
    """submitit's handler runs after runner's record: for a 5-minute job it takes USR1 for a time-out and raises."""
    with PreemptionWatcher(["USR1"]) as watcher:
        with pytest.raises(submitit.core.utils.UncompletedJobError, match="timed-out and not checkpointable"):
            os.kill(os.getpid(), signal.SIGUSR1)

        assert [record.signal for record in watcher.records] == [signal.SIGUSR1]


def test_take_over_replaces_submitit_handlers(submitit_handlers):
    watcher = take_over_submitit_signals()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)

        assert [record.signal for record in watcher.records] == [signal.SIGUSR1, signal.SIGTERM]
    finally:
        watcher.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_take_over_keeps_other_handlers(submitit_handlers):
    seen = []
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))

    watcher = take_over_submitit_signals()
    try:
        os.kill(os.getpid(), signal.SIGTERM)

        assert seen == [signal.SIGTERM]
        assert watcher.requested
    finally:
        watcher.uninstall()


def test_submitit_handler_left_on_sigcont(submitit_handlers):
    watcher = take_over_submitit_signals()
    try:
        assert isinstance(signal.getsignal(signal.SIGCONT).__self__, SignalHandler)
    finally:
        watcher.uninstall()


def test_second_watcher_adopts_earlier_signal():
    """A signal recorded by the submitted task's watcher, before the job created runner.Job(), still stops it."""
    first = PreemptionWatcher(["USR1"]).install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        second = PreemptionWatcher(["USR1"]).install()
        try:
            assert second.requested
            assert second.first == first.first
        finally:
            second.uninstall()
    finally:
        first.uninstall()


def test_watcher_records_sigterm_by_default(monkeypatch):
    monkeypatch.delenv("RUNNER_WATCH_SIGTERM", raising=False)
    with PreemptionWatcher(["USR1"]) as watcher:
        os.kill(os.getpid(), signal.SIGTERM)

        assert watcher.first.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_watcher_sigterm_opt_out(monkeypatch):
    monkeypatch.setenv("RUNNER_WATCH_SIGTERM", "0")

    assert PreemptionWatcher(["USR1"]).watched_signals == [signal.SIGUSR1]


def test_watcher_sigterm_setting_invalid(monkeypatch):
    monkeypatch.setenv("RUNNER_WATCH_SIGTERM", "sometimes")

    with pytest.raises(ValueError, match="RUNNER_WATCH_SIGTERM='sometimes'"):
        PreemptionWatcher(["USR1"])
