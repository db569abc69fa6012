"""exclude: named attributes stay out of the checkpoint, and the loaded strategy takes them from the live one."""

import logging
import threading

import pytest
import torch

import runner
from checkpoint_objects import Plugin, Strategy
from runner.checkpoint import fileformat


def header_of(path) -> dict:
    with open(path, "rb") as file:
        return fileformat.verify(file, str(path)).header


def test_excluded_attribute_kept_from_live_strategy(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy()
    strategy.lock = threading.Lock()  # would fail the save if it were pickled
    runner.save_checkpoint(strategy, path, exclude=["lock", "optimizer"])
    live = Strategy()
    live.lock = threading.Lock()

    loaded, _ = runner.maybe_load_checkpoint(live, path)

    assert loaded.lock is live.lock
    assert loaded.optimizer is live.optimizer
    assert header_of(path)["excluded"] == ["lock", "optimizer"]


def test_excluded_data_not_in_file(tmp_path):
    with_data, without_data = tmp_path / "with.pkl", tmp_path / "without.pkl"
    strategy = Strategy()
    strategy.cache = torch.zeros(250_000)  # 1 MB
    runner.save_checkpoint(strategy, with_data)
    runner.save_checkpoint(strategy, without_data, exclude="cache")

    assert with_data.stat().st_size - without_data.stat().st_size > 900_000


def test_nested_paths_excluded_and_restored(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy(plugins=[Plugin(), Plugin(iterator=iter(range(3)), kept=5)])
    strategy.model[0].scratch = threading.Lock()
    strategy.extras = {"logger": Plugin(stream=threading.Lock(), level=2)}
    exclude = ["plugins[1].iterator", "model[0].scratch", "extras['logger'].stream"]
    runner.save_checkpoint(strategy, path, exclude=exclude)
    live = Strategy(plugins=[Plugin(), Plugin(iterator="live iterator")])
    live.model[0].scratch = "live scratch"
    live.extras = {"logger": Plugin(stream="live stream")}

    loaded, _ = runner.maybe_load_checkpoint(live, path)

    assert loaded.plugins[1].iterator == "live iterator"
    assert loaded.plugins[1].kept == 5
    assert loaded.model[0].scratch == "live scratch"
    assert loaded.extras["logger"].stream == "live stream"
    assert loaded.extras["logger"].level == 2
    assert sorted(header_of(path)["excluded"]) == sorted(exclude)


def test_missing_live_value_warns(tmp_path, caplog):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy()
    strategy.scratch = "saved without it"
    runner.save_checkpoint(strategy, path, exclude=["scratch"])

    with caplog.at_level(logging.WARNING, logger="runner"):
        loaded, _ = runner.maybe_load_checkpoint(Strategy(), path)

    assert not hasattr(loaded, "scratch")
    assert "excluded attribute scratch was not restored" in caplog.text


@pytest.mark.parametrize("exclude, message", [
    (["optimzer"], "has no instance attribute 'optimzer'"),
    (["plugins[3].iterator"], r"strategy.plugins\[3\] does not exist"),
    (["model[0]"], "ends with an item"),
    (["model.0"], "invalid object path"),
    (["model.linear"], "has no instance attribute 'linear'"),
    ([".optimizer"], "invalid object path"),
    ([3], "must be a str"),
])
def test_invalid_exclude_rejected_before_writing(tmp_path, exclude, message):
    path = tmp_path / "checkpoint.pkl"

    with pytest.raises((ValueError, TypeError), match=message):
        runner.save_checkpoint(Strategy(), path, exclude=exclude)

    assert list(tmp_path.iterdir()) == []


def test_submodule_exclude_explains(tmp_path):
    strategy = Strategy()
    strategy.model = torch.nn.Module()
    strategy.model.head = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="submodule, parameter or buffer .* exclude the module"):
        runner.save_checkpoint(strategy, tmp_path / "checkpoint.pkl", exclude=["model.head"])


def test_excluded_attribute_under_slots(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy(plugins=[Slotted(threading.Lock(), 4)])
    runner.save_checkpoint(strategy, path, exclude=["plugins[0].guard"])
    live = Strategy(plugins=[Slotted("live guard", 0)])

    loaded, _ = runner.maybe_load_checkpoint(live, path)

    assert loaded.plugins[0].guard == "live guard"
    assert loaded.plugins[0].value == 4


class Slotted:
    __slots__ = ("guard", "value")

    def __init__(self, guard, value):
        self.guard = guard
        self.value = value
