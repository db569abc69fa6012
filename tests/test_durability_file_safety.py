"""Owner-only files, no symlink followed at temp or lock paths, and no loading of another user's checkpoint."""

import os
import stat

import pytest
import torch

import runner
from runner.checkpoint import locks, tempfiles
from runner.errors import UntrustedCheckpointError

NOBODY_UID = 65534


class Model:
    def __init__(self, exp_counter: int):
        self.exp_counter = exp_counter
        self.weights = torch.zeros(4)


@pytest.fixture
def open_umask():
    """Run with umask 0, so that only the modes runner passes to open protect its files."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("lock", ["flock", "soft"])
def test_files_owner_only(tmp_path, open_umask, lock):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path, lock=lock)
    runner.save_checkpoint(Model(2), path, lock=lock)

    assert mode_of(path) == 0o600
    assert mode_of(tmp_path / "checkpoint.pt.1") == 0o600
    with locks.locked(str(path), timeout_s=5, kind=lock):  # a soft lock file exists only while it is held
        assert mode_of(tmp_path / "checkpoint.pt.lock") == 0o600


def test_temp_file_owner_only(tmp_path, open_umask):
    fd, temp_path = tempfiles.create_temp(str(tmp_path / "checkpoint.pt"))
    os.close(fd)

    assert mode_of(temp_path) == 0o600
    assert tempfiles.writer_pid("checkpoint.pt", os.path.basename(temp_path)) == os.getpid()


def test_temp_symlink_not_followed(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    names = iter(["0badc0de", "00c0ffee"])
    monkeypatch.setattr(tempfiles.secrets, "token_hex", lambda _: next(names))
    planted = tmp_path / f".checkpoint.pt{tempfiles.TEMP_MARKER}{os.getpid()}-0badc0de"
    planted.symlink_to(victim)

    fd, temp_path = tempfiles.create_temp(str(path))  # a save removes the planted name first, so call this directly
    with os.fdopen(fd, "wb") as file:
        file.write(b"temp")

    assert temp_path.endswith("-00c0ffee")
    assert victim.read_text() == "keep me"
    assert planted.is_symlink()


def test_other_owner_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)
    os.chown(path, NOBODY_UID, -1)

    with pytest.raises(UntrustedCheckpointError) as caught:
        runner.maybe_load_checkpoint(None, path)

    message = str(caught.value)
    assert str(path) in message
    assert f"owned by uid {NOBODY_UID}" in message
    assert "trust=True" in message
    assert "RUNNER_TRUST_CHECKPOINTS=1" in message


@pytest.mark.parametrize("mode", [0o620, 0o602])
def test_group_or_other_writable_refused(tmp_path, mode):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)
    os.chmod(path, mode)

    with pytest.raises(UntrustedCheckpointError, match="group or others can write it"):
        runner.maybe_load_checkpoint(None, path)


def test_untrusted_newest_not_skipped(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)
    runner.save_checkpoint(Model(2), path)
    replacement = tmp_path / "replacement.pt"
    runner.save_checkpoint(Model(3), replacement, keep=1)
    os.chown(replacement, NOBODY_UID, -1)
    os.replace(replacement, path)

    with pytest.raises(UntrustedCheckpointError):
        runner.maybe_load_checkpoint(None, path)


def test_trust_allows_other_owner(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)
    os.chown(path, NOBODY_UID, -1)

    assert runner.maybe_load_checkpoint(None, path, trust=True)[1] == 1
    monkeypatch.setenv("RUNNER_TRUST_CHECKPOINTS", "1")
    assert runner.maybe_load_checkpoint(None, path)[1] == 1
