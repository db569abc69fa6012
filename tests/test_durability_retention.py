"""Kept checkpoints beside the newest one, and runs that never load or replace each other's checkpoints."""

import collections
import errno
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import runner
from runner.checkpoint import discard, inventory, known_good, retention, tempfiles
from runner.errors import CheckpointError, CheckpointSaveError, LockTimeoutError, NoValidCheckpointError


class Model:
    def __init__(self, exp_counter: int):
        self.exp_counter = exp_counter
        self.weights = torch.full((8,), float(exp_counter))


def kept_counters(path, run_id=inventory.ANY_RUN) -> list:
    return [status.header["exp_counter"] for status in inventory.examine_all(str(path), run_id) if status.valid]


def save_all(path, counters, **kwargs) -> None:
    for counter in counters:
        runner.save_checkpoint(Model(counter), path, **kwargs)
    runner.wait_for_saves()  # old checkpoints are unlinked in a worker thread


def test_default_keeps_two(tmp_path):
    path = tmp_path / "checkpoint.pt"

    save_all(path, range(1, 6))

    assert kept_counters(path) == [5, 4]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "checkpoint.pt.4", "checkpoint.pt.lock"]


def test_keep_three(tmp_path):
    path = tmp_path / "checkpoint.pt"

    save_all(path, range(1, 6), keep=3)

    assert kept_counters(path) == [5, 4, 3]
    assert [number for number, _ in retention.numbered_checkpoints(str(path))] == [4, 3]


def test_keep_one_keeps_no_numbered(tmp_path):
    path = tmp_path / "checkpoint.pt"

    save_all(path, range(1, 4), keep=1)

    assert kept_counters(path) == [3]
    assert retention.numbered_checkpoints(str(path)) == []


def test_keep_from_environment(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    monkeypatch.setenv("RUNNER_KEEP_CHECKPOINTS", "4")

    save_all(path, range(1, 7))

    assert kept_counters(path) == [6, 5, 4, 3]


@pytest.mark.parametrize("text", ["0", "two", "-1"])
def test_invalid_keep_from_environment(tmp_path, monkeypatch, text):
    monkeypatch.setenv("RUNNER_KEEP_CHECKPOINTS", text)

    with pytest.raises(ValueError, match="RUNNER_KEEP_CHECKPOINTS"):
        runner.save_checkpoint(Model(1), tmp_path / "checkpoint.pt")

    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("keep", [0, -2, 1.5, True])
def test_invalid_keep_argument(tmp_path, keep):
    with pytest.raises(ValueError, match=f"keep={keep!r}"):
        runner.save_checkpoint(Model(1), tmp_path / "checkpoint.pt", keep=keep)


def test_lower_keep_prunes_older(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_all(path, range(1, 5), keep=4)

    runner.save_checkpoint(Model(5), path, keep=2)

    assert kept_counters(path) == [5, 4]


def test_kept_checkpoint_is_hard_link_of_previous(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)
    first = os.stat(path)

    runner.save_checkpoint(Model(2), path)

    assert os.path.samestat(os.stat(tmp_path / "checkpoint.pt.1"), first)


def test_link_left_by_killed_save_counted_once(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_all(path, [1, 2])
    os.link(path, tmp_path / "checkpoint.pt.2")  # as a save killed between linking and renaming leaves it

    assert [name for _, name in inventory.checkpoint_files(str(path))] == [str(path), str(path) + ".1"]
    runner.save_checkpoint(Model(3), path)
    assert kept_counters(path) == [3, 2]


def test_no_hard_links_copies_previous(tmp_path, monkeypatch, caplog):
    """os.link is replaced, because no filesystem without hard links can be mounted here."""
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)

    def failing_link(*args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", failing_link)
    with caplog.at_level(logging.WARNING, logger="runner"):
        runner.save_checkpoint(Model(2), path)
        runner.save_checkpoint(Model(3), path)

    assert kept_counters(path) == [3, 2]
    assert any("has no hard links" in record.getMessage() for record in caplog.records)
    runner.wait_for_saves()
    assert [name for name in os.listdir(tmp_path) if ".runner-tmp-" in name] == []


def test_missing_newest_loads_kept_one(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    save_all(path, [1, 2])
    os.unlink(path)

    with caplog.at_level(logging.WARNING, logger="runner"):
        _, counter = runner.maybe_load_checkpoint(None, path)

    assert counter == 1
    assert any("is missing" in record.getMessage() for record in caplog.records)


def test_kept_copy_loads_under_family_lock(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_all(path, [1, 2, 3], keep=3)
    kept_copy = str(path) + ".2"

    loaded, counter = runner.maybe_load_checkpoint(None, kept_copy)

    assert counter == 2
    assert loaded.weights[0].item() == 2.0
    assert not os.path.exists(kept_copy + ".lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(path) + ".lock"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(LockTimeoutError):
            runner.maybe_load_checkpoint(None, kept_copy, lock_timeout_s=0.3)
    finally:
        holder.kill()
        holder.wait()


def test_numbered_name_without_family_has_own_lock(tmp_path):
    path = tmp_path / "model.7"
    runner.save_checkpoint(Model(1), path)

    assert runner.maybe_load_checkpoint(None, path)[1] == 1
    assert retention.family_of(str(path)) == str(path)
    assert os.path.exists(str(path) + ".lock")


def test_truncated_newest_not_kept_as_fallback(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    save_all(path, [1, 2, 3])
    with open(path, "r+b") as file:
        file.truncate(1000)
    loaded, counter = runner.maybe_load_checkpoint(None, path)
    assert counter == 2

    with caplog.at_level(logging.WARNING, logger="runner.checkpoint.retention"):
        runner.save_checkpoint(loaded, path, exp_counter=3)

    assert kept_counters(path) == [3, 2]
    assert "not keeping" in caplog.text


def test_prune_leaves_foreign_numbered_files(tmp_path):
    path = tmp_path / "checkpoint.pt"
    foreign = tmp_path / "checkpoint.pt.1"
    foreign.write_text("the user's own file, not a checkpoint\n")

    save_all(path, range(1, 5))

    assert foreign.read_text() == "the user's own file, not a checkpoint\n"
    assert kept_counters(path) == [4, 3]


def test_prune_leaves_other_runs(tmp_path):
    other_path = tmp_path / "checkpoint.pt.1"
    runner.save_checkpoint(Model(7), other_path, run_id="other")
    path = tmp_path / "checkpoint.pt"

    save_all(path, range(1, 5), run_id="mine")

    assert kept_counters(other_path) == [7]
    assert kept_counters(path, run_id="mine") == [4, 3]


def test_other_run_never_loaded(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(3), path, run_id="run-a")

    with pytest.raises(NoValidCheckpointError, match="belongs to run 'run-a', not to this job's run 'run-b'"):
        runner.maybe_load_checkpoint(None, path, run_id="run-b")


def test_run_without_id_never_loads_named_run(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(3), path, run_id="run-a")

    with pytest.raises(NoValidCheckpointError, match="run 'run-a'"):
        runner.maybe_load_checkpoint(None, path)


def test_run_id_from_environment(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    monkeypatch.setenv("RUNNER_RUN_ID", "run-a")
    runner.save_checkpoint(Model(3), path)

    assert runner.maybe_load_checkpoint(None, path)[1] == 3
    monkeypatch.setenv("RUNNER_RUN_ID", "run-b")
    with pytest.raises(NoValidCheckpointError, match="run 'run-a'"):
        runner.maybe_load_checkpoint(None, path)


def test_other_run_skipped_for_own_kept(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    save_all(path, [1, 2], run_id="run-a")
    runner.save_checkpoint(Model(9), tmp_path / "intruder.pt", run_id="run-b")
    os.replace(tmp_path / "intruder.pt", path)  # another run's file where this run's newest was

    with caplog.at_level(logging.WARNING, logger="runner"):
        _, counter = runner.maybe_load_checkpoint(None, path, run_id="run-a")

    assert counter == 1
    assert any("run 'run-b'" in record.getMessage() for record in caplog.records)


def test_save_never_replaces_other_run(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(3), path, run_id="run-a")
    before = path.read_bytes()

    with pytest.raises(CheckpointSaveError, match="run 'run-a'"):
        runner.save_checkpoint(Model(1), path, run_id="run-b")

    assert path.read_bytes() == before
    assert retention.numbered_checkpoints(str(path)) == []


def test_start_fresh_over_other_run_rejected(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(3), path, run_id="run-a")

    with pytest.raises(CheckpointError, match="cannot start fresh .* run 'run-a'"):
        runner.maybe_load_checkpoint(Model(0), path, run_id="run-b", on_invalid="start_fresh")


@pytest.mark.parametrize("run_id", ["", "  ", "tab\there", "x" * 201])
def test_invalid_run_id_rejected(tmp_path, run_id):
    with pytest.raises(ValueError, match="run_id="):
        runner.save_checkpoint(Model(1), tmp_path / "checkpoint.pt", run_id=run_id)


def test_unlink_runs_after_save_returns(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_all(path, [1, 2])
    release = threading.Event()
    unlink_all = discard._unlink_all

    def blocked_unlink_all(paths):
        release.wait(timeout=30)
        unlink_all(paths)

    monkeypatch.setattr(discard, "_unlink_all", blocked_unlink_all)
    runner.save_checkpoint(Model(3), path)

    assert kept_counters(path) == [3, 2]  # the old checkpoint left its name before the save returned
    pending = [name for name in os.listdir(tmp_path) if tempfiles.TRASH_MARKER in name]
    assert len(pending) == 1
    release.set()
    runner.wait_for_saves()
    assert not (tmp_path / pending[0]).exists()


def test_next_save_waits_for_unlink(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_all(path, [1, 2])
    unlinked = []
    unlink_all = discard._unlink_all

    def slow_unlink_all(paths):
        time.sleep(0.3)
        unlink_all(paths)
        unlinked.append(paths)

    monkeypatch.setattr(discard, "_unlink_all", slow_unlink_all)
    runner.save_checkpoint(Model(3), path)
    runner.save_checkpoint(Model(4), path)

    assert len(unlinked) == 1  # the second save started only after the first one's old file was gone
    runner.wait_for_saves()
    assert [name for name in os.listdir(tmp_path) if tempfiles.TRASH_MARKER in name] == []


def flip_middle_byte(path) -> None:
    with open(path, "r+b") as file:
        file.seek(os.path.getsize(path) // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))


def test_damaged_newest_not_kept(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_all(path, [1, 2])
    flip_middle_byte(path)
    changed = os.stat(path).st_mtime_ns + 1_000_000  # a later write: timestamps are too coarse to show it at once
    os.utime(path, ns=(changed, changed))

    runner.save_checkpoint(Model(3), path)

    assert kept_counters(path) == [3, 1]  # the damaged experience 2 did not push out experience 1


def test_unchecked_newest_verified_in_full(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_all(path, [1, 2])
    flip_middle_byte(path)
    monkeypatch.setattr(known_good, "_identities", collections.OrderedDict())  # as in a process that never loaded it

    runner.save_checkpoint(Model(3), path)

    assert kept_counters(path) == [3, 1]


def test_foreign_file_at_path_not_replaced(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.ones(4)}, path)
    before = path.read_bytes()

    with pytest.raises(CheckpointSaveError) as caught:
        runner.save_checkpoint(Model(1), path)

    assert "not a runner checkpoint" in str(caught.value)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before


def test_damaged_checkpoint_at_path_replaced(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_all(path, [1])
    path.write_bytes(path.read_bytes()[:20])  # a runner checkpoint cut short

    runner.save_checkpoint(Model(2), path)

    assert kept_counters(path) == [2]
