"""Checkpoints in binary file objects: the same format and checks as files, without lock or rename."""

import io
import os

import pytest
import torch

import runner
from checkpoint_objects import Strategy
from runner.errors import CorruptCheckpointError, UntrustedCheckpointError


def trained_strategy(exp_counter: int = 2) -> Strategy:
    strategy = Strategy()
    with torch.no_grad():
        strategy.model[0].weight.fill_(0.5)
    strategy.exp_counter = exp_counter
    return strategy


def test_bytes_io_round_trip():
    stream = io.BytesIO()
    runner.save_checkpoint(trained_strategy(), stream)
    stream.seek(0)

    loaded, counter = runner.maybe_load_checkpoint(Strategy(), stream)

    assert counter == 2
    assert torch.all(loaded.model[0].weight == 0.5)


def test_stream_holds_same_bytes_format_as_file(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    stream = io.BytesIO()
    runner.save_checkpoint(trained_strategy(), stream)
    path.write_bytes(stream.getvalue())
    path.chmod(0o600)

    loaded, counter = runner.maybe_load_checkpoint(Strategy(), path)

    assert counter == 2
    assert torch.all(loaded.model[0].weight == 0.5)


def test_open_file_round_trip(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    with open(path, "wb") as file:
        runner.save_checkpoint(trained_strategy(3), file)
    path.chmod(0o600)

    with open(path, "rb") as file:
        _, counter = runner.maybe_load_checkpoint(Strategy(), file)

    assert counter == 3
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pkl"]  # no lock file, no temp file


def test_empty_stream_means_no_checkpoint():
    strategy = Strategy()

    loaded, counter = runner.maybe_load_checkpoint(strategy, io.BytesIO())

    assert loaded is strategy
    assert counter == 0


def test_checkpoint_read_from_stream_position():
    stream = io.BytesIO()
    stream.write(b"a prefix that is not a checkpoint")
    start = stream.tell()
    runner.save_checkpoint(trained_strategy(4), stream)
    stream.seek(start)

    _, counter = runner.maybe_load_checkpoint(Strategy(), stream)

    assert counter == 4


def test_stream_at_end_reads_as_empty():
    stream = io.BytesIO()
    strategy = Strategy()
    runner.save_checkpoint(trained_strategy(), stream)  # the position is now at the end

    loaded, counter = runner.maybe_load_checkpoint(strategy, stream)

    assert (loaded, counter) == (strategy, 0)


def test_damaged_stream_rejected():
    stream = io.BytesIO()
    runner.save_checkpoint(trained_strategy(), stream)
    data = bytearray(stream.getvalue())
    data[len(data) // 2] ^= 0xFF

    with pytest.raises(CorruptCheckpointError, match="CRC-32"):
        runner.maybe_load_checkpoint(Strategy(), io.BytesIO(bytes(data)))


def test_truncated_stream_rejected():
    stream = io.BytesIO()
    runner.save_checkpoint(trained_strategy(), stream)

    with pytest.raises(CorruptCheckpointError):
        runner.maybe_load_checkpoint(Strategy(), io.BytesIO(stream.getvalue()[:-10]))


class ForwardOnly(io.RawIOBase):
    """A readable stream that cannot seek, like a pipe."""

    def __init__(self, data: bytes):
        super().__init__()
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._data.readinto(buffer)


def test_unseekable_stream_read_into_memory():
    stream = io.BytesIO()
    runner.save_checkpoint(trained_strategy(5), stream)

    _, counter = runner.maybe_load_checkpoint(Strategy(), ForwardOnly(stream.getvalue()))

    assert counter == 5


def test_text_stream_rejected():
    with pytest.raises(TypeError, match="binary stream open for writing"):
        runner.save_checkpoint(Strategy(), io.StringIO())
    with pytest.raises(TypeError, match="binary stream open for reading"):
        runner.maybe_load_checkpoint(Strategy(), io.StringIO("text"))


def test_open_file_of_other_writers_untrusted(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    with open(path, "wb") as file:
        runner.save_checkpoint(trained_strategy(), file)
    path.chmod(0o666)

    with open(path, "rb") as file, pytest.raises(UntrustedCheckpointError):
        runner.maybe_load_checkpoint(Strategy(), file)
    with open(path, "rb") as file:
        _, counter = runner.maybe_load_checkpoint(Strategy(), file, trust=True)

    assert counter == 2
