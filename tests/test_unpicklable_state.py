"""State that cannot be pickled fails the save with its path and a fix; the previous checkpoint stays as it was."""

import io
import sys
import threading

import pytest
import torch

import runner
from checkpoint_objects import Plugin, Strategy
from runner.errors import CheckpointError, CheckpointSaveError


def generator_state():
    return (value for value in range(3))


def open_file_state(tmp_path):
    return open(tmp_path / "log.txt", "w")


def loader_iterator_state():
    dataset = torch.utils.data.TensorDataset(torch.arange(8.0))
    return iter(torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True))


def closure_over_generator_state():
    source = generator_state()
    return lambda: next(source)


STATES = {
    "generator": lambda tmp_path: generator_state(),
    "open-file": open_file_state,
    "lock": lambda tmp_path: threading.Lock(),
    "rlock": lambda tmp_path: threading.RLock(),
    "dataloader-iterator": lambda tmp_path: loader_iterator_state(),
    "lambda-over-generator": lambda tmp_path: closure_over_generator_state(),
}


def files_in(folder) -> dict:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.name != "log.txt"}


@pytest.mark.parametrize("kind", STATES)
def test_save_error_names_path_and_fix(tmp_path, kind):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy(plugins=[Plugin(), Plugin()])
    runner.save_checkpoint(strategy, path)
    before = files_in(tmp_path)
    strategy.plugins.append(Plugin(iterator=STATES[kind](tmp_path)))

    with pytest.raises(CheckpointSaveError) as raised:
        runner.save_checkpoint(strategy, path)

    message = str(raised.value)
    assert "strategy.plugins[2].iterator" in message
    assert "exclude=['plugins[2].iterator']" in message
    assert "__getstate__" in message
    assert "previous checkpoint is unchanged" in message
    assert raised.value.path == str(path)
    assert files_in(tmp_path) == before  # same checkpoint bytes, no temp file


@pytest.mark.parametrize("kind", STATES)
def test_suggested_exclude_saves(tmp_path, kind):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy(plugins=[Plugin(), Plugin(), Plugin(iterator=STATES[kind](tmp_path), kept=1)])

    runner.save_checkpoint(strategy, path, exclude=["plugins[2].iterator"])
    loaded, _ = runner.maybe_load_checkpoint(Strategy(plugins=[Plugin(), Plugin(), Plugin(iterator="live")]), path)

    assert loaded.plugins[2].iterator == "live"
    assert loaded.plugins[2].kept == 1


def test_closure_variable_named(tmp_path):
    strategy = Strategy()
    strategy.callback = closure_over_generator_state()

    with pytest.raises(CheckpointSaveError) as raised:
        runner.save_checkpoint(strategy, tmp_path / "checkpoint.pkl")

    assert "strategy.callback (closure variable 'source')" in str(raised.value)
    assert "a generator" in str(raised.value)


def test_state_inside_submodule_named(tmp_path):
    strategy = Strategy()
    strategy.model[2].hook_source = generator_state()

    with pytest.raises(CheckpointSaveError) as raised:
        runner.save_checkpoint(strategy, tmp_path / "checkpoint.pkl")

    assert "strategy.model[2].hook_source" in str(raised.value)
    assert "exclude=['model[2].hook_source']" in str(raised.value)


def test_state_inside_dict_named(tmp_path):
    strategy = Strategy()
    strategy.loggers = {"text": Plugin(file=threading.Lock())}

    with pytest.raises(CheckpointSaveError) as raised:
        runner.save_checkpoint(strategy, tmp_path / "checkpoint.pkl")

    assert "strategy.loggers['text'].file" in str(raised.value)


def test_refusing_getstate_names_object(tmp_path):
    strategy = Strategy(plugins=[Plugin(inner=Refuses())])

    with pytest.raises(CheckpointSaveError) as raised:
        runner.save_checkpoint(strategy, tmp_path / "checkpoint.pkl")

    assert "strategy.plugins[0].inner (a Refuses)" in str(raised.value)
    assert "NotImplementedError: Refuses cannot be pickled" in str(raised.value)


def test_save_error_is_checkpoint_error(tmp_path):
    strategy = Strategy(plugins=[Plugin(iterator=generator_state())])

    with pytest.raises(CheckpointError):
        runner.save_checkpoint(strategy, tmp_path / "checkpoint.pkl")

    assert list(tmp_path.iterdir()) in ([], [tmp_path / "checkpoint.pkl.lock"])


def test_failed_stream_save_leaves_stream_as_before():
    stream = io.BytesIO()
    stream.write(b"earlier content")
    strategy = Strategy(plugins=[Plugin(iterator=generator_state())])

    with pytest.raises(CheckpointSaveError, match=r"strategy.plugins\[0\].iterator"):
        runner.save_checkpoint(strategy, stream)

    assert stream.getvalue() == b"earlier content"


def test_standard_streams_still_pickle(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy(plugins=[Plugin(output=sys.__stdout__, errors=sys.__stderr__)])

    runner.save_checkpoint(strategy, path)
    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path)

    assert loaded.plugins[0].output is sys.__stdout__
    assert loaded.plugins[0].errors is sys.__stderr__


class Refuses:
    def __getstate__(self):
        raise NotImplementedError("Refuses cannot be pickled")


def test_thread_attribute_excluded_whole(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy(plugins=[Plugin(iterator=threading.Thread(target=print))])

    with pytest.raises(CheckpointSaveError) as raised:
        runner.save_checkpoint(strategy, path)

    message = str(raised.value)
    assert "strategy.plugins[0].iterator._started" in message  # where the lock sits, inside the Thread
    assert "exclude=['plugins[0].iterator']" in message  # and what to leave out: the Thread, not its lock
    runner.save_checkpoint(strategy, path, exclude=["plugins[0].iterator"])
