"""Damaged checkpoints are detected before anything is unpickled, and loading falls back to an older kept one."""

import functools
import io
import logging
import os

import pytest
import torch

import runner
from runner.checkpoint import fileformat, inventory
from runner.errors import CorruptCheckpointError, NoValidCheckpointError


class Model:
    def __init__(self, exp_counter: int, numel: int = 16):
        self.exp_counter = exp_counter
        self.weights = torch.full((numel,), float(exp_counter))


@pytest.fixture
def unpickle_calls(monkeypatch):
    """Record every call of torch.serialization._load, which unpickles for torch.load and runner's single-pass load."""
    calls = []
    real_load = torch.serialization._load

    @functools.wraps(real_load)
    def recording_load(*args, **kwargs):
        calls.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.serialization, "_load", recording_load)
    return calls


def verify_file(path) -> fileformat.VerifiedCheckpoint:
    with open(path, "rb") as file:
        return fileformat.verify(file, str(path))


def saved(tmp_path, counter: int = 1, **kwargs):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(counter), path, **kwargs)
    return path


def test_valid_checkpoint_records_its_size(tmp_path):
    path = saved(tmp_path)

    verified = verify_file(path)

    assert verified.size == os.path.getsize(path)
    assert verified.payload_offset + verified.payload_length + fileformat.COMMIT_SIZE == verified.size
    assert verified.header["exp_counter"] == 1


def test_zero_byte_file_rejected(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"")

    with pytest.raises(CorruptCheckpointError, match="empty"):
        verify_file(path)


def test_every_truncation_rejected(tmp_path):
    data = saved(tmp_path).read_bytes()
    accepted = []

    for length in range(len(data)):
        try:
            fileformat.verify(io.BytesIO(data[:length]), "damaged.pt")
        except CorruptCheckpointError:
            continue
        accepted.append(length)

    assert accepted == []


def test_every_bit_flip_rejected(tmp_path):
    data = saved(tmp_path).read_bytes()
    accepted = []

    for position in range(len(data)):  # one bit in every byte: header, payload and commit record
        flipped = bytearray(data)
        flipped[position] ^= 1 << (position % 8)
        try:
            fileformat.verify(io.BytesIO(flipped), "damaged.pt")
        except CorruptCheckpointError:
            continue
        accepted.append(position)

    assert len(data) > 1000
    assert accepted == []


def test_uncommitted_file_rejected(tmp_path):
    path = saved(tmp_path)
    data = path.read_bytes()
    uncommitted = tmp_path / "uncommitted.pt"
    uncommitted.write_bytes(data[: -fileformat.COMMIT_SIZE])

    with pytest.raises(CorruptCheckpointError, match="no commit record"):
        verify_file(uncommitted)


def test_appended_bytes_rejected(tmp_path):
    path = saved(tmp_path)
    with open(path, "ab") as file:
        file.write(b"\0" * 64)

    with pytest.raises(CorruptCheckpointError):
        verify_file(path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "bit flip", "uncommitted"])
def test_damaged_newest_falls_back(tmp_path, caplog, unpickle_calls, damage):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)
    runner.save_checkpoint(Model(2), path)
    damage_file(path, damage)

    with caplog.at_level(logging.WARNING, logger="runner"):
        loaded, counter = runner.maybe_load_checkpoint(None, path)

    assert counter == 1
    assert torch.equal(loaded.weights, torch.full((16,), 1.0))
    assert len(unpickle_calls) == 1
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"skipping checkpoint {path}" in warnings[0]


@pytest.mark.parametrize("damage", ["empty", "truncated", "bit flip", "uncommitted"])
def test_no_valid_checkpoint_never_unpickles(tmp_path, unpickle_calls, damage):
    path = saved(tmp_path, keep=1)
    damage_file(path, damage)

    with pytest.raises(NoValidCheckpointError) as caught:
        runner.maybe_load_checkpoint(None, path)

    assert unpickle_calls == []
    assert caught.value.reasons[0][0] == str(path)


def test_none_valid_error_lists_each(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path, keep=3)
    runner.save_checkpoint(Model(2), path, keep=3)
    runner.save_checkpoint(Model(3), path, keep=3)
    kept = [name for _, name in inventory.checkpoint_files(str(path))]
    damage_file(kept[0], "bit flip")
    damage_file(kept[1], "truncated")
    damage_file(kept[2], "empty")

    with pytest.raises(NoValidCheckpointError) as caught:
        runner.maybe_load_checkpoint(None, path)

    message = str(caught.value)
    assert [reason_path for reason_path, _ in caught.value.reasons] == kept
    assert f"{kept[0]}: fails its CRC-32 check" in message
    assert f"{kept[1]}: has no commit record" in message
    assert f"{kept[2]}: is empty" in message
    assert "on_invalid='start_fresh'" in message


def test_start_fresh_must_be_asked_for(tmp_path, caplog):
    path = saved(tmp_path, keep=1)
    damage_file(path, "bit flip")
    strategy = Model(0)

    with caplog.at_level(logging.WARNING, logger="runner"):
        loaded, counter = runner.maybe_load_checkpoint(strategy, path, on_invalid="start_fresh")

    assert loaded is strategy
    assert counter == 0
    assert any("start_fresh" in record.getMessage() for record in caplog.records)


def test_invalid_on_invalid_rejected(tmp_path):
    with pytest.raises(ValueError, match="on_invalid='ignore'"):
        runner.maybe_load_checkpoint(None, tmp_path / "checkpoint.pt", on_invalid="ignore")


def test_newer_format_not_skipped(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runner.save_checkpoint(Model(1), path)
    runner.save_checkpoint(Model(2), path)
    rewrite_header(path, format_version=fileformat.FORMAT_VERSION + 1)

    with pytest.raises(runner.errors.UnsupportedCheckpointError, match="upgrade runner"):
        runner.maybe_load_checkpoint(None, path)


def damage_file(path, damage: str) -> None:
    data = bytearray(open(path, "rb").read())
    if damage == "empty":
        data = bytearray()
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "bit flip":
        data[len(data) // 3] ^= 0x10
    elif damage == "uncommitted":
        data = data[: -fileformat.COMMIT_SIZE]
    with open(path, "wb") as file:
        file.write(data)


def rewrite_header(path, **changes) -> None:
    """Rewrite the header of the checkpoint at ``path`` with ``changes``, with a valid checksum."""
    with open(path, "rb") as file:
        verified = fileformat.verify(file, str(path))
        file.seek(verified.payload_offset)
        payload = file.read(verified.payload_length)
    with open(path, "wb") as file:
        writer = fileformat.HashingWriter(file)
        fileformat.write_header(writer, {**verified.header, **changes})
        offset = writer.bytes_written
        writer.write(payload)
        fileformat.write_commit(writer, offset)
