"""The lock beside a checkpoint: one object per path, timeouts that name the holder, and real concurrent writers."""

import os
import socket
import time
import traceback

import pytest
import torch

import runner
from runner.checkpoint import faults, inventory, locks, tempfiles
from runner.errors import CheckpointError, LockTimeoutError

WRITERS = 4
SAVES_PER_WRITER = 8
PAUSE_S = 0.06
"""Pause between two saves of one writer: longer than filelock's 0.05 s poll, so waiting writers get their turn."""


class Model:
    def __init__(self, exp_counter: int):
        self.exp_counter = exp_counter
        self.weights = torch.full((2048,), float(exp_counter))


def fork(function, *args) -> int:
    """Run ``function(*args)`` in a forked child that exits 0 when it returns and 1 when it raises; return its pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            function(*args)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_one_lock_object_per_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    first = locks.checkpoint_lock("checkpoint.pt")
    second = locks.checkpoint_lock(str(tmp_path / "checkpoint.pt"))

    assert first is second
    assert locks.checkpoint_lock("checkpoint.pt", "soft") is not first


def test_load_and_save_inside_held_lock(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)

    with locks.locked(str(path), timeout_s=5):
        _, counter = runner.maybe_load_checkpoint(None, path, lock_timeout_s=5)
        runner.save_checkpoint(Model(2), path, lock_timeout_s=5)

    assert counter == 1
    assert runner.maybe_load_checkpoint(None, path)[1] == 2


@pytest.mark.parametrize("kind", ["flock", "soft"])
def test_timeout_names_lock_and_holder(tmp_path, kind):
    path = tmp_path / "checkpoint.pt"
    locked_read, locked_write = os.pipe()
    release_read, release_write = os.pipe()

    def hold_lock():
        with locks.locked(str(path), timeout_s=5, kind=kind):
            os.write(locked_write, b"locked")
            os.read(release_read, 1)

    holder = fork(hold_lock)
    assert os.read(locked_read, 6) == b"locked"
    try:
        with pytest.raises(LockTimeoutError) as caught:
            runner.save_checkpoint(Model(1), path, lock_timeout_s=0.1, lock=kind)
    finally:
        os.write(release_write, b"x")
        assert exit_code(holder) == 0

    message = str(caught.value)
    assert f"{path}.lock" in message
    assert f"pid {holder} on host {socket.gethostname()} since " in message
    assert caught.value.path == str(path)
    assert not path.exists()


def concurrent_saves(path, writer: int, trace: str, kind: str, start_read: int) -> None:
    os.environ[faults.TRACE_ENV_VAR] = trace
    os.environ["RUNNER_LOCK"] = kind
    os.read(start_read, 1)
    for save in range(SAVES_PER_WRITER):
        runner.save_checkpoint(Model(writer * 100 + save), path)
        time.sleep(PAUSE_S)
    runner.wait_for_saves()  # the child leaves through os._exit, which does not wait for the unlink thread


@pytest.mark.parametrize("kind", ["flock", "soft"])
def test_concurrent_writers_never_interleave(tmp_path, kind):
    path = tmp_path / "checkpoint.pt"
    trace = tmp_path / "trace.txt"
    start_read, start_write = os.pipe()

    writers = [fork(concurrent_saves, path, writer, str(trace), kind, start_read) for writer in range(1, WRITERS + 1)]
    os.write(start_write, b"go" * WRITERS)

    assert [exit_code(pid) for pid in writers] == [0] * WRITERS
    events = [line.split() for line in trace.read_text().splitlines()]
    assert sum(1 for _, step in events if step == "lock-acquired") == WRITERS * SAVES_PER_WRITER
    assert interleaved_events(events) == []
    holders = [pid for pid, step in events if step == "lock-acquired"]
    assert len(set(holders)) == WRITERS
    assert sum(1 for first, second in zip(holders, holders[1:]) if first != second) > WRITERS  # they did contend
    statuses = inventory.examine_all(str(path))
    assert [status.valid for status in statuses] == [True, True]
    loaded, counter = runner.maybe_load_checkpoint(None, path)
    assert torch.equal(loaded.weights, torch.full((2048,), float(counter)))
    assert [name for name in os.listdir(tmp_path) if tempfiles.TEMP_MARKER in name or tempfiles.TRASH_MARKER in name] == []


def interleaved_events(events: list[list[str]]) -> list[str]:
    """Events of one process that fall inside another process's hold of the lock."""
    holder = None
    found = []
    for pid, step in events:
        if step == "lock-acquired":
            if holder is not None:
                found.append(f"{pid} acquired while {holder} held the lock")
            holder = pid
        elif pid != holder:
            found.append(f"{pid} {step} while {holder} held the lock")
        elif step == "lock-releasing":
            holder = None
    return found


def test_soft_lock_of_dead_holder_taken_over(tmp_path):
    path = tmp_path / "checkpoint.pt"

    def acquire_and_die():
        locks.checkpoint_lock(str(path), "soft").acquire()
        os._exit(0)  # leaves the marker behind, as a killed process would

    assert exit_code(fork(acquire_and_die)) == 0
    assert os.path.exists(f"{path}.lock")

    runner.save_checkpoint(Model(1), path, lock="soft", lock_timeout_s=10)

    assert runner.maybe_load_checkpoint(None, path, lock="soft")[1] == 1


def test_flock_lock_symlink_not_followed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, f"{path}.lock")

    with pytest.raises(CheckpointError, match="symlink") as caught:
        runner.save_checkpoint(Model(1), path)

    assert f"{path}.lock" in str(caught.value)
    assert victim.read_text() == "keep me"
    assert not path.exists()


def test_soft_lock_symlink_not_followed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, f"{path}.lock")

    with pytest.raises(LockTimeoutError, match="symlink"):
        runner.save_checkpoint(Model(1), path, lock="soft", lock_timeout_s=0.1)

    assert victim.read_text() == "keep me"
    assert os.path.islink(f"{path}.lock")


def test_lock_kind_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_LOCK", "fcntl")

    with pytest.raises(ValueError, match="RUNNER_LOCK=fcntl"):
        runner.save_checkpoint(Model(1), tmp_path / "checkpoint.pt")


def test_save_creates_missing_folder(tmp_path):
    path = tmp_path / "missing" / "checkpoint.pt"

    runner.save_checkpoint(Model(1), path)  # filelock 4.3 creates the lock file's folder

    assert runner.maybe_load_checkpoint(None, path)[1] == 1
