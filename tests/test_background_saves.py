"""Background saves: a snapshot taken at the call, commits in order, errors raised later, waited for on preemption."""

import io
import subprocess
import textwrap
import threading

import pytest
import torch

import runner
from runner.checkpoint import background, fileformat
from runner.errors import CheckpointError, CheckpointSaveError


class State:
    def __init__(self, value: float = 0.0, numel: int = 1 << 20):
        self.weights = torch.full((numel,), value)
        self.notes = {"value": value}
        self.exp_counter = int(value)


@pytest.fixture(autouse=True)
def no_save_in_flight():
    yield
    try:
        runner.wait_for_saves()
    except CheckpointError:
        pass


def unwritable(tmp_path):
    """Return a checkpoint path whose lock file is a folder, where every save fails in the worker, even as root."""
    folder = tmp_path / "blocked-lock"
    (folder / "checkpoint.pkl.lock").mkdir(parents=True)
    return folder / "checkpoint.pkl"


def counter_in(path) -> int:
    with open(path, "rb") as file:
        return fileformat.verify(file, str(path)).header["exp_counter"]


def test_background_round_trip(tmp_path):
    path = tmp_path / "checkpoint.pkl"

    runner.save_checkpoint(State(3.0), path, background=True)
    runner.wait_for_saves()
    loaded, counter = runner.maybe_load_checkpoint(State(), path)

    assert counter == 3
    assert torch.all(loaded.weights == 3.0)


def test_training_after_call_not_saved(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    state = State(1.0)

    runner.save_checkpoint(state, path, background=True)
    state.weights.fill_(99.0)  # in place, as an optimizer step changes parameters
    state.notes["value"] = 99.0
    runner.wait_for_saves()
    loaded, _ = runner.maybe_load_checkpoint(State(), path)

    assert torch.all(loaded.weights == 1.0)
    assert loaded.notes == {"value": 1.0}


def test_saves_commit_in_call_order(tmp_path):
    path = tmp_path / "checkpoint.pkl"

    for value in (1.0, 2.0, 3.0):
        runner.save_checkpoint(State(value), path, background=True)
    runner.save_checkpoint(State(4.0), path)  # a synchronous save waits for the one in flight

    assert counter_in(path) == 4
    assert counter_in(f"{path}.3") == 3


def test_call_returns_before_commit(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pkl"
    release = threading.Event()
    real_save_file = background_module_store().save_file

    def held_save_file(*args, **kwargs):
        assert release.wait(timeout=60)
        real_save_file(*args, **kwargs)

    monkeypatch.setattr(background_module_store(), "save_file", held_save_file)

    runner.save_checkpoint(State(5.0), path, background=True)
    exists_before_commit = path.exists()
    release.set()
    runner.wait_for_saves()

    assert not exists_before_commit
    assert counter_in(path) == 5


def test_failed_save_raised_by_next_save(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(State(1.0), unwritable(tmp_path), background=True)

    with pytest.raises(CheckpointError, match="blocked-lock"):
        runner.save_checkpoint(State(2.0), path, background=True)

    assert not path.exists()  # the failing call started no save
    runner.save_checkpoint(State(2.0), path, background=True)
    runner.wait_for_saves()
    assert counter_in(path) == 2


def test_failed_save_raised_by_wait(tmp_path):
    runner.save_checkpoint(State(1.0), unwritable(tmp_path), background=True)

    with pytest.raises(CheckpointError, match="blocked-lock"):
        runner.wait_for_saves()

    runner.wait_for_saves()  # the error is raised once


def test_failed_save_raised_by_synchronous_save(tmp_path):
    runner.save_checkpoint(State(1.0), unwritable(tmp_path), background=True)

    with pytest.raises(CheckpointError, match="blocked-lock"):
        runner.save_checkpoint(State(2.0), tmp_path / "checkpoint.pkl")


def test_next_save_reports_earlier_failure(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(State(1.0), unwritable(tmp_path), background=True)

    with pytest.raises(CheckpointSaveError) as caught:
        runner.save_checkpoint(State(2.0), path, background=True)

    assert f"checkpoint {path} was not saved, because the background save before it failed" in str(caught.value)
    assert "blocked-lock" in str(caught.value)


def test_failed_save_logged_when_it_fails(tmp_path, caplog):
    blocked = unwritable(tmp_path)
    runner.save_checkpoint(State(1.0), blocked, background=True)
    background.saver().finish()  # the save has ended, and its error waits for the next save

    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1
    assert f"background save of checkpoint {blocked} failed" in errors[0]
    with pytest.raises(CheckpointError, match="blocked-lock"):
        runner.wait_for_saves()


@pytest.mark.parametrize("option, error", [({"lock": "bogus"}, "invalid lock='bogus'"),
                                           ({"lock_timeout_s": float("nan")}, "invalid lock_timeout_s=nan"),
                                           ({"lock_timeout_s": "30"}, "invalid lock_timeout_s='30'")])
def test_invalid_lock_option_raised_at_call(tmp_path, option, error):
    path = tmp_path / "checkpoint.pkl"

    with pytest.raises((ValueError, TypeError), match=error):
        runner.save_checkpoint(State(1.0), path, background=True, **option)

    runner.wait_for_saves()
    assert not path.exists()


def test_load_returns_own_background_save(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    for value in range(1, 6):
        runner.save_checkpoint(State(float(value)), path, background=True)

        loaded, counter = runner.maybe_load_checkpoint(None, path)

        assert counter == value
        assert loaded.weights[0].item() == float(value)


def test_unpicklable_state_raised_at_call(tmp_path):
    state = State(1.0)
    state.lock = threading.Lock()

    with pytest.raises(CheckpointSaveError, match="lock"):
        runner.save_checkpoint(state, tmp_path / "checkpoint.pkl", background=True)

    runner.wait_for_saves()
    assert not (tmp_path / "checkpoint.pkl").exists()


def test_stream_rejected():
    with pytest.raises(ValueError, match="needs a checkpoint path"):
        runner.save_checkpoint(State(1.0), io.BytesIO(), background=True)


PREEMPTED_JOB = textwrap.dedent("""
    import os, signal, sys
    import torch
    import runner
    import runner.job

    trace = os.environ["RUNNER_TEST_TRACE"]
    real_requeue = runner.job.requeue_after_stop

    def traced_requeue(*args):
        with open(trace, "a") as file:
            file.write(f"{os.getpid()} requeue\\n")
        return real_requeue(*args)

    runner.job.requeue_after_stop = traced_requeue
    job = runner.Job()

    class State:
        pass

    state = State()
    state.weights = torch.ones(16 << 20)  # 64 MiB: the write takes longer than the stop
    state.exp_counter = 7
    runner.save_checkpoint(state, sys.argv[1], background=True)
    os.kill(os.getpid(), signal.SIGUSR1)
    job.stop_if_preempted()
""")


def run_preempted_job(tmp_path, python, python_env, checkpoint):
    trace = tmp_path / "trace"
    python_env["RUNNER_TEST_TRACE"] = str(trace)
    result = subprocess.run([python, "-c", PREEMPTED_JOB, str(checkpoint)], env=python_env, capture_output=True,
                            text=True, timeout=120)
    steps = [line.split()[1] for line in trace.read_text().splitlines()] if trace.exists() else []
    return result, steps


def test_preemption_waits_for_commit(tmp_path, python, python_env):
    checkpoint = tmp_path / "checkpoint.pkl"

    result, steps = run_preempted_job(tmp_path, python, python_env, checkpoint)

    assert result.returncode == 76, result.stderr  # saved, but no scheduler to ask for a requeue
    assert "requeue" in steps
    assert "folder-fsynced" in steps
    assert steps.index("folder-fsynced") < steps.index("requeue")
    assert counter_in(checkpoint) == 7


def test_preemption_raises_failed_save(tmp_path, python, python_env):
    checkpoint = unwritable(tmp_path)

    result, steps = run_preempted_job(tmp_path, python, python_env, checkpoint)

    assert result.returncode == 1
    assert "CheckpointError" in result.stderr
    assert "requeue" not in steps


def test_uncollected_error_logged_at_exit(tmp_path, python, python_env):
    script = textwrap.dedent("""
        import logging, sys
        import torch
        import runner

        logging.basicConfig(level=logging.INFO)

        class State:
            exp_counter = 1

        runner.save_checkpoint(State(), sys.argv[1], background=True)
    """)

    result = subprocess.run([python, "-c", script, str(unwritable(tmp_path))], env=python_env,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0
    assert "ERROR" in result.stderr
    assert "nothing waited for it" in result.stderr


def background_module_store():
    from runner.checkpoint import api

    return api.store


SAVE_AND_EXIT = textwrap.dedent("""
    import multiprocessing, sys, threading
    import torch
    import runner

    class State:
        exp_counter = 4

    def save(path):
        state = State()
        state.weights = torch.arange(16 << 20, dtype=torch.float32)  # 64 MiB: still writing when the script ends
        runner.save_checkpoint(state, path, background=True)

    def save_from_daemon_thread(path):
        thread = threading.Thread(target=save, args=(path,), daemon=True)
        thread.start()
        thread.join()

    if __name__ == "__main__":
        target = save_from_daemon_thread if sys.argv[2].endswith("daemon thread") else save
        if sys.argv[2].startswith("child"):  # multiprocessing joins the child's threads, then leaves by os._exit
            child = multiprocessing.get_context("fork").Process(target=target, args=(sys.argv[1],))
            child.start()
            child.join()
            sys.exit(child.exitcode)
        target(sys.argv[1])
""")


@pytest.mark.parametrize("where", ["main", "child", "child, daemon thread"])
def test_save_in_flight_at_exit_commits(tmp_path, python, python_env, where):
    checkpoint = tmp_path / "checkpoint.pkl"

    result = subprocess.run([python, "-c", SAVE_AND_EXIT, str(checkpoint), where], env=python_env,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "failed" not in result.stderr
    loaded, counter = runner.maybe_load_checkpoint(None, checkpoint)
    assert counter == 4
    assert torch.equal(loaded.weights, torch.arange(16 << 20, dtype=torch.float32))
