"""Random state: a draw after a resume equals the draw an uninterrupted run makes at that point."""

import logging
import random

import numpy
import pytest
import torch

import runner
from checkpoint_objects import RandomDrawingDataset, Strategy
from runner.checkpoint import rng

CUDA_MISSING = "no CUDA device on this machine: the CUDA generators are checked only where CUDA exists"


class CounterGenerator:
    """A user's own generator with a get/set state pair: a counter scrambled into numbers."""

    def __init__(self):
        self.count = 0

    def draw(self) -> int:
        self.count += 1
        return self.count * 7919 % 1000


@pytest.fixture
def registered():
    """Register one generator of every supported kind; unregister them after the test."""
    generators = {
        "data-order": torch.Generator().manual_seed(11),
        "augment": numpy.random.default_rng(12),
        "legacy": numpy.random.RandomState(13),
        "sampler": random.Random(14),
        "counter": CounterGenerator(),
    }
    for name in ("data-order", "augment", "legacy", "sampler"):
        runner.register_generator(name, generators[name])
    counter = generators["counter"]
    runner.register_generator("counter", lambda: counter.count, lambda state: setattr(counter, "count", state))
    yield generators
    for name in generators:
        runner.unregister_generator(name)


def draw_all(generators: dict) -> dict:
    return {
        "random": random.random(),
        "numpy": float(numpy.random.rand()),
        "torch": torch.rand(3).tolist(),
        "data-order": torch.randperm(10, generator=generators["data-order"]).tolist(),
        "augment": float(generators["augment"].random()),
        "legacy": float(generators["legacy"].rand()),
        "sampler": generators["sampler"].random(),
        "counter": generators["counter"].draw(),
    }


def reseed_all(generators: dict, seed: int) -> None:
    """Move every generator elsewhere, as a new process would start from other states."""
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)
    generators["data-order"].manual_seed(seed)
    generators["augment"].bit_generator.state = numpy.random.default_rng(seed).bit_generator.state
    generators["legacy"].seed(seed)
    generators["sampler"].seed(seed)
    generators["counter"].count = seed


def test_draw_after_resume_equals_uninterrupted(tmp_path, registered):
    path = tmp_path / "checkpoint.pkl"
    reseed_all(registered, 0)
    draw_all(registered)  # the first experience
    runner.save_checkpoint(Strategy(), path)
    uninterrupted = draw_all(registered)

    reseed_all(registered, 99)
    runner.maybe_load_checkpoint(Strategy(), path)
    resumed = draw_all(registered)

    for name in uninterrupted:
        assert resumed[name] == uninterrupted[name], name


def test_restored_after_strategy_unpickled(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy(dataset=RandomDrawingDataset(3))  # rebuilt on load, drawing random numbers
    random.seed(1)
    torch.manual_seed(1)
    runner.save_checkpoint(strategy, path)
    expected = (random.random(), torch.rand(2).tolist())

    runner.maybe_load_checkpoint(Strategy(), path)

    assert (random.random(), torch.rand(2).tolist()) == expected


def test_state_survives_map_location(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    torch.manual_seed(5)
    runner.save_checkpoint(Strategy(), path)
    expected = torch.rand(4)

    runner.maybe_load_checkpoint(Strategy(), path, map_location=lambda storage, location: storage)

    assert torch.equal(torch.rand(4), expected)


def test_unregistered_generator_in_checkpoint_warns(tmp_path, caplog):
    path = tmp_path / "checkpoint.pkl"
    runner.register_generator("temporary", lambda: 1, lambda state: None)
    runner.save_checkpoint(Strategy(), path)
    runner.unregister_generator("temporary")

    with caplog.at_level(logging.WARNING, logger="runner"):
        runner.maybe_load_checkpoint(Strategy(), path)

    assert "'temporary', which this process has not registered" in caplog.text


def test_generator_missing_from_checkpoint_warns(tmp_path, caplog):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Strategy(), path)
    state = {"count": 3}
    runner.register_generator("late", lambda: state["count"], lambda value: state.update(count=value))
    try:
        with caplog.at_level(logging.WARNING, logger="runner"):
            runner.maybe_load_checkpoint(Strategy(), path)
    finally:
        runner.unregister_generator("late")

    assert "no state for random generator 'late'" in caplog.text
    assert state["count"] == 3


def test_failing_set_state_names_generator(tmp_path):
    path = tmp_path / "checkpoint.pkl"

    def refuse(state):
        raise RuntimeError("wrong shape")

    runner.register_generator("fragile", lambda: 1, refuse)
    try:
        runner.save_checkpoint(Strategy(), path)
        with pytest.raises(ValueError, match="random generator 'fragile' failed: RuntimeError: wrong shape"):
            runner.maybe_load_checkpoint(Strategy(), path)
    finally:
        runner.unregister_generator("fragile")


@pytest.mark.parametrize("name, get_state, set_state, error, message", [
    ("random", lambda: 1, lambda state: None, ValueError, "already registered"),
    ("", lambda: 1, lambda state: None, TypeError, "non-empty str"),
    ("odd", object(), None, TypeError, "torch.Generator, random.Random"),
    ("odd", lambda: 1, "not callable", TypeError, "two callables"),
])
def test_invalid_registration_rejected(name, get_state, set_state, error, message):
    with pytest.raises(error, match=message):
        runner.register_generator(name, get_state, set_state)


def test_duplicate_registration_rejected():
    runner.register_generator("once", torch.Generator())
    try:
        with pytest.raises(ValueError, match="'once' is already registered"):
            runner.register_generator("once", torch.Generator())
    finally:
        runner.unregister_generator("once")


def test_capture_holds_bytes_for_torch():
    states = rng.capture()

    assert isinstance(states["torch"], bytes)
    assert set(states) >= {"random", "numpy", "torch", "torch.cuda"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_MISSING)
def test_cuda_draw_after_resume_equals_uninterrupted(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    torch.cuda.manual_seed_all(3)
    runner.save_checkpoint(Strategy(), path)
    expected = [torch.rand(3, device=f"cuda:{index}").tolist() for index in range(torch.cuda.device_count())]

    torch.cuda.manual_seed_all(77)
    runner.maybe_load_checkpoint(Strategy(), path)

    resumed = [torch.rand(3, device=f"cuda:{index}").tolist() for index in range(torch.cuda.device_count())]
    assert resumed == expected
