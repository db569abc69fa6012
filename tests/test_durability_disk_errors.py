"""Disk errors during a save: a clear error with path and errno, the previous checkpoints intact, no temp file left.

ENOSPC comes from a real, full 1 MiB tmpfs (mounting one needs root; without it that test is skipped). EIO and
EXDEV cannot be produced safely on a real disk here, so those tests replace ``os.fsync`` or ``os.replace`` with a
function that raises the error, which reaches the same handling as a real one.
"""

import errno
import logging
import os
import stat
import subprocess

import pytest
import torch

import runner
from runner.checkpoint import inventory, retention, tempfiles
from runner.errors import CheckpointError, CheckpointSaveError


class Model:
    def __init__(self, exp_counter: int, numel: int = 1000):
        self.exp_counter = exp_counter
        self.weights = torch.full((numel,), float(exp_counter))


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs, which needs root: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def temp_files(folder) -> list[str]:
    return [name for name in os.listdir(folder) if tempfiles.TEMP_MARKER in name]


def assert_previous_intact(path, counter: int) -> None:
    assert [status.valid for status in inventory.examine_all(str(path))] == [True]
    loaded, loaded_counter = runner.maybe_load_checkpoint(None, path)
    assert loaded_counter == counter
    assert loaded.weights[0].item() == float(counter)


@pytest.mark.parametrize("background", [False, True])
def test_full_disk_keeps_previous(small_tmpfs, background):
    path = small_tmpfs / "checkpoint.pt"
    runner.save_checkpoint(Model(1, numel=25_000), path)  # 100 kB

    with pytest.raises(CheckpointSaveError) as caught:
        runner.save_checkpoint(Model(2, numel=1_000_000), path, background=background)  # 4 MB, on a 1 MiB filesystem
        runner.wait_for_saves()  # raises the error of the background save

    message = str(caught.value)
    assert str(path) in message
    assert "[Errno 28 ENOSPC]" in message
    assert "keep=" in message
    assert isinstance(caught.value.__cause__, OSError)
    assert temp_files(small_tmpfs) == []
    assert retention.numbered_checkpoints(str(path)) == []
    assert_previous_intact(path, 1)
    runner.save_checkpoint(Model(3, numel=25_000), path)
    assert runner.maybe_load_checkpoint(None, path)[1] == 3


def test_full_disk_names_leftover_files(small_tmpfs):
    path = small_tmpfs / "checkpoint.pt"
    runner.save_checkpoint(Model(1, numel=25_000), path)  # 100 kB
    # A temp file of a writer that still runs (pid 1), as on another host whose lock this host cannot see.
    leftover = small_tmpfs / f".checkpoint.pt{tempfiles.TEMP_MARKER}1-0abc"
    leftover.write_bytes(bytes(600_000))

    with pytest.raises(CheckpointSaveError) as caught:
        runner.save_checkpoint(Model(2, numel=100_000), path)  # 400 kB, with 400 kB free

    message = str(caught.value)
    assert "[Errno 28 ENOSPC]" in message
    assert f"1 leftover file(s) of other saves take 600.0 kB there: {leftover} (a temp file of pid 1" in message
    assert f"runner inspect {path}" in message
    assert leftover.exists()
    assert_previous_intact(path, 1)


def test_io_error_on_fsync_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)
    real_fsync = os.fsync

    def failing_fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(CheckpointSaveError) as caught:
        runner.save_checkpoint(Model(2), path)
    monkeypatch.undo()

    message = str(caught.value)
    assert str(path) in message
    assert "[Errno 5 EIO]" in message
    assert temp_files(tmp_path) == []
    assert_previous_intact(path, 1)


def test_cross_device_rename_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)

    def failing_replace(source, target):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), source, None, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CheckpointSaveError) as caught:
        runner.save_checkpoint(Model(2), path)
    monkeypatch.undo()

    message = str(caught.value)
    assert str(path) in message
    assert "[Errno 18 EXDEV]" in message
    assert "crossed filesystems" in message
    assert temp_files(tmp_path) == []
    assert_previous_intact(path, 1)
    runner.save_checkpoint(Model(3), path)
    assert [status.header["exp_counter"] for status in inventory.examine_all(str(path))] == [3, 1]


def test_folder_fsync_error_after_rename(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)
    real_fsync = os.fsync

    def failing_folder_fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_folder_fsync)
    with pytest.raises(CheckpointSaveError, match="renamed into place, but fsync of its folder failed"):
        runner.save_checkpoint(Model(2), path)
    monkeypatch.undo()

    assert temp_files(tmp_path) == []
    assert runner.maybe_load_checkpoint(None, path)[1] == 2


def test_read_only_folder_loads_unlocked(small_tmpfs, caplog):
    path = small_tmpfs / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)
    runner.save_checkpoint(Model(2), path)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)

    with caplog.at_level(logging.WARNING, logger="runner"):
        loaded, counter = runner.maybe_load_checkpoint(None, path)

    assert counter == 2
    assert loaded.weights[0].item() == 2.0
    assert any(f"cannot lock {path}.lock" in record.getMessage() for record in caplog.records)
    with pytest.raises(CheckpointError, match=r"\[Errno 30 EROFS\]") as caught:
        runner.save_checkpoint(Model(3), path)
    assert f"{path}.lock" in str(caught.value)
