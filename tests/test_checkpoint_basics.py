"""The checkpoint round trip, torch optimizers under dill, a corrupt file, and SIGKILL in the middle of a write."""

import os
import random
import signal
import subprocess
import textwrap
import time

import numpy
import pytest
import torch

import runner
from runner.errors import CorruptCheckpointError


class Strategy:
    def __init__(self, optimizer: str = "sgd"):
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        optimizers = {"sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9), "adam": torch.optim.Adam}
        self.optimizer = optimizers[optimizer](self.model.parameters(), lr=0.01)
        self.exp_counter = 0
        self.history = []

    def step(self) -> None:
        self.optimizer.zero_grad()
        self.model(torch.randn(5, 4)).sum().backward()
        self.optimizer.step()
        self.exp_counter += 1
        self.history.append(self.exp_counter)


def test_missing_file_returns_strategy_unchanged(tmp_path):
    strategy = Strategy()

    loaded, counter = runner.maybe_load_checkpoint(strategy, tmp_path / "none.pkl")

    assert loaded is strategy
    assert counter == 0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_round_trip_restores_whole_state(tmp_path, optimizer):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy(optimizer)
    strategy.step()
    strategy.step()
    runner.save_checkpoint(strategy, path)
    expected_draws = (random.random(), numpy.random.rand(), torch.rand(3))
    strategy.step()  # moves the live state past the checkpoint

    loaded, counter = runner.maybe_load_checkpoint(Strategy(optimizer), path)

    assert counter == 2
    assert loaded.history == [1, 2]
    assert type(loaded.optimizer) is type(strategy.optimizer)
    assert loaded.optimizer.param_groups[0]["lr"] == 0.01
    assert loaded.optimizer.param_groups[0]["params"][0] is next(loaded.model.parameters())
    assert loaded.optimizer.state_dict()["state"].keys() == {0, 1, 2, 3}
    assert random.random() == expected_draws[0]
    assert numpy.random.rand() == expected_draws[1]
    assert torch.equal(torch.rand(3), expected_draws[2])


def test_resumed_training_matches_uninterrupted(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    torch.manual_seed(0)
    uninterrupted = Strategy("adam")
    for _ in range(4):
        uninterrupted.step()

    torch.manual_seed(0)
    first = Strategy("adam")
    for _ in range(2):
        first.step()
    runner.save_checkpoint(first, path)
    torch.manual_seed(123)  # a new process would start from another random state
    resumed, counter = runner.maybe_load_checkpoint(Strategy("adam"), path)
    for _ in range(counter, 4):
        resumed.step()

    for expected, actual in zip(uninterrupted.model.parameters(), resumed.model.parameters()):
        assert torch.equal(expected, actual)


def test_checkpoint_is_owner_only(tmp_path):
    path = tmp_path / "checkpoint.pkl"

    runner.save_checkpoint(Strategy(), path)

    assert os.stat(path).st_mode & 0o777 == 0o600


def test_corrupt_file_error_names_file(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Strategy(), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(CorruptCheckpointError) as caught:
        runner.maybe_load_checkpoint(Strategy(), path)

    assert str(path) in str(caught.value)


def test_counter_required_when_strategy_has_none(tmp_path):
    with pytest.raises(ValueError, match="exp_counter"):
        runner.save_checkpoint(object(), tmp_path / "checkpoint.pkl")


WRITER = textwrap.dedent("""
    import sys, torch, runner

    class Big:
        def __init__(self, counter, numel):
            self.exp_counter = counter
            self.weights = torch.full((numel,), float(counter))

    path = sys.argv[1]
    runner.save_checkpoint(Big(1, 1000), path)
    print("committed", flush=True)
    runner.save_checkpoint(Big(2, 100_000_000), path)  # 400 MB: killed while it writes
    print("second save finished", flush=True)
""")


def test_sigkill_during_write_keeps_previous(tmp_path, python, python_env):
    path = tmp_path / "checkpoint.pkl"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    child = subprocess.Popen([python, str(script), str(path)], env=python_env, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "committed"

    temp_files = []
    deadline = time.monotonic() + 60
    while not temp_files and time.monotonic() < deadline:
        temp_files = [name for name in os.listdir(tmp_path) if ".runner-tmp-" in name]
        time.sleep(0.001)
    child.send_signal(signal.SIGKILL)
    child.wait()

    assert temp_files, "the second save never started writing its temp file"
    assert child.returncode == -signal.SIGKILL
    loaded, counter = runner.maybe_load_checkpoint(None, path)
    assert counter == 1
    assert torch.equal(loaded.weights, torch.full((1000,), 1.0))

    loaded.exp_counter = 3
    runner.save_checkpoint(loaded, path)
    assert runner.maybe_load_checkpoint(None, path)[1] == 3


def test_negative_counter_rejected(tmp_path):
    with pytest.raises(ValueError, match="invalid experience counter -1"):
        runner.save_checkpoint(Strategy(), tmp_path / "checkpoint.pkl", exp_counter=-1)


def test_empty_path_rejected():
    with pytest.raises(ValueError, match="checkpoint path is empty"):
        runner.save_checkpoint(Strategy(), "")


def test_folder_path_rejected(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        runner.save_checkpoint(Strategy(), tmp_path)


def test_folder_path_rejected_on_load(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        runner.maybe_load_checkpoint(Strategy(), tmp_path)


@pytest.mark.parametrize("action", ["save", "load"])
def test_path_inside_file_rejected(tmp_path, action):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    path = tmp_path / "notes.txt" / "checkpoint.pkl"

    with pytest.raises(ValueError, match="which is a file, not a folder"):
        if action == "save":
            runner.save_checkpoint(Strategy(), path)
        else:
            runner.maybe_load_checkpoint(Strategy(), path)


def test_symlink_path_rejected_on_save(tmp_path):
    (tmp_path / "scratch").mkdir()
    saved = Strategy()
    saved.exp_counter = 3
    runner.save_checkpoint(saved, tmp_path / "scratch" / "checkpoint.pkl")
    link = tmp_path / "checkpoint.pkl"
    link.symlink_to(tmp_path / "scratch" / "checkpoint.pkl")

    with pytest.raises(ValueError, match="is a symlink"):
        runner.save_checkpoint(Strategy(), link)

    assert link.is_symlink()
    assert runner.maybe_load_checkpoint(Strategy(), link)[1] == 3  # loading through the link still works
