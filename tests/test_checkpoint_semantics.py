"""What a checkpoint records about its writer, newer formats refused, and the save_checkpoint basics."""

import io
import stat
import time

import dill
import pytest
import torch

import runner
from checkpoint_objects import Strategy
from runner.checkpoint import fileformat
from runner.errors import UnsupportedCheckpointError


def header_of(stream: io.BytesIO) -> dict:
    return fileformat.verify(io.BytesIO(stream.getvalue()), "<stream>").header


def test_header_records_writer_versions():
    stream = io.BytesIO()

    runner.save_checkpoint(Strategy(), stream)

    header = header_of(stream)
    assert header["format_version"] == fileformat.FORMAT_VERSION
    assert header["runner_version"] == runner.__version__
    assert header["torch_version"] == torch.__version__
    assert header["dill_version"] == dill.__version__
    assert header["exp_counter"] == 0


def future_checkpoint(target) -> None:
    """Write a well-formed, committed checkpoint in a format newer than this runner reads."""
    writer = fileformat.HashingWriter(target)
    fileformat.write_header(writer, {
        "format_version": fileformat.FORMAT_VERSION + 1,
        "runner_version": "9.4.2",
        "torch_version": "9.0.0",
        "dill_version": "1.0.0",
        "exp_counter": 7,
        "excluded": [],
        "run_id": None,
        "created_at": time.time(),
    })
    offset = writer.bytes_written
    writer.write(b"a payload of a format not invented yet")
    fileformat.write_commit(writer, offset)


def test_newer_format_refused_naming_writer(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    with open(path, "wb") as file:
        future_checkpoint(file)
    path.chmod(0o600)

    with pytest.raises(UnsupportedCheckpointError) as raised:
        runner.maybe_load_checkpoint(Strategy(), path)

    message = str(raised.value)
    assert f"format version {fileformat.FORMAT_VERSION + 1}" in message
    assert "written by runner 9.4.2" in message
    assert "upgrade runner" in message


def test_newer_format_refused_in_stream():
    stream = io.BytesIO()
    future_checkpoint(stream)
    stream.seek(0)

    with pytest.raises(UnsupportedCheckpointError, match="written by runner 9.4.2"):
        runner.maybe_load_checkpoint(Strategy(), stream)


class Clock:
    def __init__(self, train_exp_counter: int):
        self.train_exp_counter = train_exp_counter


def test_counter_read_from_avalanche_clock(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy()
    strategy.clock = Clock(6)
    strategy.exp_counter = 1  # the clock wins, as in Avalanche

    runner.save_checkpoint(strategy, path)
    _, counter = runner.maybe_load_checkpoint(Strategy(), path)

    assert counter == 6


def test_counter_given_explicitly(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy()
    del strategy.exp_counter

    runner.save_checkpoint(strategy, path, exp_counter=9)
    _, counter = runner.maybe_load_checkpoint(Strategy(), path)

    assert counter == 9


def test_counter_missing_explains(tmp_path):
    strategy = Strategy()
    del strategy.exp_counter

    with pytest.raises(ValueError, match="pass exp_counter= to save_checkpoint"):
        runner.save_checkpoint(strategy, tmp_path / "checkpoint.pkl")


def test_saved_file_readable_by_owner_only(tmp_path):
    path = tmp_path / "checkpoint.pkl"

    runner.save_checkpoint(Strategy(), path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_loaded_strategy_is_new_object(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy()
    strategy.exp_counter = 2
    runner.save_checkpoint(strategy, path)
    live = Strategy()

    loaded, counter = runner.maybe_load_checkpoint(live, path)

    assert loaded is not live
    assert type(loaded) is Strategy
    assert counter == 2
    assert loaded.optimizer.param_groups[0]["params"][0] is loaded.model[0].weight
