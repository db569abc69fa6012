"""map_location in every form torch.load takes, applied to tensors and to torch.device objects anywhere in the state."""

import pytest
import torch

import runner
from checkpoint_objects import Plugin, Strategy
from runner.checkpoint.pickling import remap_device

CUDA_MISSING = "no CUDA device on this machine: CUDA tensors cannot be saved, so this runs only where CUDA exists"


def cpu_storage(storage, location):
    return storage


def keep_location(storage, location):
    return None


def strategy_with_devices() -> Strategy:
    strategy = Strategy(plugins=[Plugin(device=torch.device("cuda", 1))])
    strategy.device = torch.device("cuda:1")
    strategy.devices = [torch.device("cuda:0"), torch.device("cpu"), (torch.device("cuda:1"),)]
    strategy.by_name = {"main": torch.device("cuda:1")}
    strategy.model[0].device = torch.device("cuda:1")  # an attribute of a submodule
    strategy.bare = torch.device("cuda")
    return strategy


def loaded_devices(strategy: Strategy) -> dict:
    return {
        "device": strategy.device,
        "devices[0]": strategy.devices[0],
        "devices[1]": strategy.devices[1],
        "devices[2][0]": strategy.devices[2][0],
        "by_name['main']": strategy.by_name["main"],
        "model[0].device": strategy.model[0].device,
        "plugins[0].device": strategy.plugins[0].device,
        "bare": strategy.bare,
    }


CPU = torch.device("cpu")
UNCHANGED = {
    "device": torch.device("cuda:1"),
    "devices[0]": torch.device("cuda:0"),
    "devices[1]": CPU,
    "devices[2][0]": torch.device("cuda:1"),
    "by_name['main']": torch.device("cuda:1"),
    "model[0].device": torch.device("cuda:1"),
    "plugins[0].device": torch.device("cuda:1"),
    "bare": torch.device("cuda"),
}
ALL_CPU = dict.fromkeys(UNCHANGED, CPU)
CUDA1_TO_CPU = {**UNCHANGED, "device": CPU, "devices[2][0]": CPU, "by_name['main']": CPU, "model[0].device": CPU,
                "plugins[0].device": CPU}


@pytest.mark.parametrize("map_location, expected", [
    (None, UNCHANGED),
    ("cpu", ALL_CPU),
    (torch.device("cpu"), ALL_CPU),
    ({"cuda:1": "cpu"}, CUDA1_TO_CPU),
    ({"cuda:1": torch.device("cpu")}, CUDA1_TO_CPU),
    (cpu_storage, ALL_CPU),
    (keep_location, UNCHANGED),
], ids=["none", "str", "device", "dict", "dict-of-devices", "callable", "callable-returning-none"])
def test_devices_remapped_everywhere(tmp_path, map_location, expected):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(strategy_with_devices(), path)

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, map_location=map_location)

    assert loaded_devices(loaded) == expected


def test_shared_device_stays_shared(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy()
    strategy.first = strategy.second = torch.device("cuda:1")
    runner.save_checkpoint(strategy, path)

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, map_location="cpu")

    assert loaded.first == CPU
    assert loaded.first is loaded.second


def test_callable_sees_each_location(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy()
    strategy.device = torch.device("cuda:1")
    runner.save_checkpoint(strategy, path)
    seen = []

    def record(storage, location):
        seen.append(location)
        return storage

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, map_location=record)

    assert "cuda:1" in seen  # the device object
    assert "cpu" in seen  # the tensors
    assert loaded.device == CPU
    assert next(loaded.model.parameters()).device == CPU


def test_tensors_keep_values_through_map_location(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy()
    runner.save_checkpoint(strategy, path)

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, map_location={"cpu": "cpu"})

    for saved, restored in zip(strategy.model.parameters(), loaded.model.parameters()):
        assert torch.equal(saved, restored)


@pytest.mark.parametrize("map_location", [5, ["cpu"], {1: "cpu"}, {"cuda:0": 0}])
def test_invalid_map_location_rejected(tmp_path, map_location):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Strategy(), path)

    with pytest.raises(TypeError, match="map_location"):
        runner.maybe_load_checkpoint(Strategy(), path, map_location=map_location)


@pytest.mark.parametrize("map_location", ["bogus", {"cuda:1": "nowhere"}])
def test_invalid_device_rejected_before_reading(tmp_path, map_location):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Strategy(), path)

    with pytest.raises(ValueError, match="invalid map_location .* is not a device"):
        runner.maybe_load_checkpoint(Strategy(), path, map_location=map_location)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("map_location", ["cuda", torch.device("cuda:0"), {"cpu": "cuda:1"}])
def test_missing_cuda_device_rejected(tmp_path, map_location):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Strategy(), path)

    with pytest.raises(ValueError, match="not available on this machine"):
        runner.maybe_load_checkpoint(Strategy(), path, map_location=map_location)


def test_remap_device_rules():
    cuda1 = torch.device("cuda:1")

    assert remap_device(cuda1, None) == cuda1
    assert remap_device(cuda1, "cuda:0") == torch.device("cuda:0")
    assert remap_device(cuda1, torch.device("cpu")) == CPU
    assert remap_device(cuda1, {"cuda:0": "cpu"}) == cuda1
    assert remap_device(cuda1, {"cuda:1": "cuda:0"}) == torch.device("cuda:0")
    assert remap_device(cuda1, cpu_storage) == CPU
    assert remap_device(cuda1, keep_location) == cuda1


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_MISSING)
def test_cuda_tensors_and_devices_load_on_cpu(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy()
    strategy.model.to("cuda:0")
    strategy.device = torch.device("cuda:0")
    strategy.buffer = torch.arange(5, device="cuda:0")
    runner.save_checkpoint(strategy, path)

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, map_location="cpu")

    assert loaded.device == CPU
    assert loaded.buffer.device == CPU
    assert torch.equal(loaded.buffer, torch.arange(5))
    assert all(parameter.device == CPU for parameter in loaded.model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_MISSING)
def test_cpu_checkpoint_loads_onto_cuda(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    strategy = Strategy()
    strategy.device = torch.device("cpu")
    runner.save_checkpoint(strategy, path)

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, map_location={"cpu": "cuda:0"})

    assert loaded.device == torch.device("cuda:0")
    assert all(parameter.device == torch.device("cuda:0") for parameter in loaded.model.parameters())
