"""Objects stored by constructor arguments: reused when passed in unique_objects, rebuilt otherwise."""

import io
import logging
import subprocess
import textwrap
import threading
from pathlib import Path

import dill
import numpy
import pytest
import torch

import runner
from checkpoint_objects import Benchmark, CountingDataset, Plugin, RebuiltDataset, Strategy, SubsetDataset
from runner.checkpoint.unique import UnkeyableArgumentsError, object_key, register_unique_objects
from runner.errors import CheckpointSaveError


def saved_strategy(path, dataset, **plugin_attributes) -> Strategy:
    strategy = Strategy(plugins=[Plugin(replay_source=dataset, **plugin_attributes)], dataset=dataset)
    runner.save_checkpoint(strategy, path)
    return strategy


@pytest.mark.parametrize("wrap", [
    lambda benchmark: benchmark,
    lambda benchmark: benchmark.train_stream[0],
    lambda benchmark: [benchmark.test_set, benchmark.train_stream[0]],
    lambda benchmark: {"stream": tuple(benchmark.train_stream)},
], ids=["benchmark", "one-object", "list", "nested-structure"])
def test_matching_object_reused_not_rebuilt(tmp_path, wrap):
    path = tmp_path / "checkpoint.pkl"
    benchmark = Benchmark([50, 60])
    saved_strategy(path, benchmark.train_stream[0])
    built_before = CountingDataset.built

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, unique_objects=wrap(benchmark))

    assert loaded.dataset is benchmark.train_stream[0]
    assert loaded.plugins[0].replay_source is benchmark.train_stream[0]
    assert CountingDataset.built == built_before
    assert loaded.dataset.data.data_ptr() == benchmark.train_stream[0].data.data_ptr()


def test_unmatched_object_rebuilt_from_arguments(tmp_path, caplog):
    path = tmp_path / "checkpoint.pkl"
    dataset = CountingDataset(40, seed=7)
    saved_strategy(path, dataset)
    other = Benchmark([40])  # same size, other seed: other arguments
    built_before = CountingDataset.built

    with caplog.at_level(logging.WARNING, logger="runner"):
        loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, unique_objects=other)

    assert CountingDataset.built == built_before + 1
    assert loaded.dataset is not dataset
    assert loaded.dataset is loaded.plugins[0].replay_source  # one rebuild for both references
    assert torch.equal(loaded.dataset.data, dataset.data)
    assert "1 CountingDataset" in caplog.text


def test_rebuilt_without_unique_objects(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    dataset = CountingDataset(30)
    saved_strategy(path, dataset)
    built_before = CountingDataset.built

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path)

    assert CountingDataset.built == built_before + 1
    assert torch.equal(loaded.dataset.data, dataset.data)


def test_without_deduplicate_always_rebuilt(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    dataset = RebuiltDataset(30)
    saved_strategy(path, dataset)
    built_before = CountingDataset.built

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, unique_objects=[dataset])

    assert loaded.dataset is not dataset
    assert CountingDataset.built == built_before + 1


def test_checkpoint_holds_arguments_not_data(tmp_path):
    small, large = tmp_path / "small.pkl", tmp_path / "large.pkl"
    saved_strategy(small, CountingDataset(1_000))
    saved_strategy(large, CountingDataset(100_000))

    assert large.stat().st_size - small.stat().st_size < 100


def test_nested_unique_object_found_through_arguments(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    parent = CountingDataset(20, seed=3)
    subset = SubsetDataset(parent, [1, 2, 3])
    saved_strategy(path, subset)
    built_before = CountingDataset.built

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, unique_objects=subset)

    assert loaded.dataset is subset
    assert CountingDataset.built == built_before


def test_parent_reused_when_only_parent_given(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    parent = CountingDataset(20, seed=3)
    saved_strategy(path, SubsetDataset(parent, [4, 5]))
    built_before = CountingDataset.built

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, unique_objects=[parent])

    assert loaded.dataset.parent is parent
    assert loaded.dataset.indices == [4, 5]
    assert CountingDataset.built == built_before


def test_unpicklable_parts_of_unique_objects_skipped(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    benchmark = Benchmark([10])
    benchmark.stream_iterator = iter(benchmark.train_stream)
    benchmark.lock = threading.Lock()
    saved_strategy(path, benchmark.train_stream[0])

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, unique_objects=benchmark)

    assert loaded.dataset is benchmark.train_stream[0]


def test_unique_objects_without_candidates_warns(tmp_path, caplog):
    path = tmp_path / "checkpoint.pkl"
    saved_strategy(path, CountingDataset(10))

    with caplog.at_level(logging.WARNING, logger="runner"):
        runner.maybe_load_checkpoint(Strategy(), path, unique_objects=[torch.zeros(3), "text"])

    assert "unique_objects contains no object" in caplog.text


def test_key_ignores_set_and_dict_order():
    tags = frozenset(f"tag{index}" for index in range(20))
    reordered = frozenset(sorted(tags, reverse=True))

    assert object_key(CountingDataset, (1,), {"tags": tags, "seed": 0}) == \
        object_key(CountingDataset, (1,), {"seed": 0, "tags": reordered})
    assert object_key(CountingDataset, ({"a": 1, "b": 2},), {}) == object_key(CountingDataset, ({"b": 2, "a": 1},), {})
    assert object_key(CountingDataset, (1,), {}) != object_key(CountingDataset, (2,), {})
    assert object_key(CountingDataset, (1,), {}) != object_key(RebuiltDataset, (1,), {})


def test_key_compares_tensors_and_arrays_by_content():
    assert object_key(CountingDataset, (torch.arange(4),), {}) == object_key(CountingDataset, (torch.arange(4),), {})
    assert object_key(CountingDataset, (torch.arange(4),), {}) != object_key(CountingDataset, (torch.ones(4),), {})
    assert object_key(CountingDataset, (numpy.arange(3),), {}) == object_key(CountingDataset, (numpy.arange(3),), {})


KEY_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from checkpoint_objects import CountingDataset
    from runner.checkpoint.unique import object_key
    tags = frozenset(f"tag{index}" for index in range(50))
    print(object_key(CountingDataset, (7, {"x", "y", "z"}), {"tags": tags, "device": torch.device("cpu"),
                                                             "weights": torch.linspace(0, 1, 5)}))
""")


def test_key_equal_across_hash_seeds(tmp_path, python, python_env):
    script = tmp_path / "key.py"
    script.write_text(KEY_SCRIPT)
    tests_folder = str(Path(__file__).parent)
    keys = set()
    for seed in ("1", "2", "3"):
        env = {**python_env, "PYTHONHASHSEED": seed}
        result = subprocess.run([python, str(script), tests_folder], env=env, capture_output=True, text=True,
                                check=True)
        keys.add(result.stdout.strip())

    assert len(keys) == 1
    assert len(keys.pop()) == 64


class HoldsGenerator:
    def __init__(self, source):
        self.source = source


@dill.register(HoldsGenerator)
def _save_holds_generator(pickler, obj):
    runner.constructor_based_serialization(pickler, obj, HoldsGenerator, deduplicate=True, args=[obj.source])


class Transformed:
    def __init__(self, transform):
        self.transform = transform


@dill.register(Transformed)
def _save_transformed(pickler, obj):
    runner.constructor_based_serialization(pickler, obj, Transformed, deduplicate=True, args=[obj.transform])


# The lambda is pickled by value with this module's namespace, which in turn contains the data set.
TRANSFORMED = Transformed(lambda rows: rows * 2)


def test_lambda_argument_keyed_and_reused(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    saved_strategy(path, TRANSFORMED)

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, unique_objects=TRANSFORMED)

    assert loaded.dataset is TRANSFORMED
    key = object_key(Transformed, (TRANSFORMED.transform,), {})
    assert key == object_key(Transformed, (TRANSFORMED.transform,), {})


def test_unkeyable_arguments_fail_save_naming_argument(tmp_path):
    path = tmp_path / "checkpoint.pkl"

    with pytest.raises(CheckpointSaveError) as raised:
        saved_strategy(path, HoldsGenerator(item for item in range(3)))

    assert "positional argument 0 (generator)" in str(raised.value)
    assert "HoldsGenerator" in str(raised.value)
    assert not path.exists()


def test_unkeyable_unique_object_rejected():
    with pytest.raises(UnkeyableArgumentsError, match="positional argument 0"):
        register_unique_objects([HoldsGenerator(item for item in range(3))])


def test_registry_finds_every_candidate():
    benchmark = Benchmark([5, 6, 7])

    registry = register_unique_objects(benchmark)

    assert len(registry.objects) == 4
    assert set(map(id, registry.objects.values())) == {id(dataset) for dataset in
                                                        [*benchmark.train_stream, benchmark.test_set]}


@pytest.mark.parametrize("cls, args, kwargs, message", [
    (RebuiltDataset, [1], None, "pass the class of the object"),
    (CountingDataset, "abc", None, "list or tuple"),
    (CountingDataset, None, [("seed", 1)], "dict of keyword arguments"),
])
def test_invalid_serialization_call_rejected(cls, args, kwargs, message):
    dataset = CountingDataset(1)

    with pytest.raises(TypeError, match=message):
        runner.constructor_based_serialization(dill.Pickler(io.BytesIO()), dataset, cls, args=args, kwargs=kwargs)


def test_every_reference_reused(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    benchmark = Benchmark([8, 9])
    strategy = Strategy(plugins=[Plugin(buffer=list(benchmark.train_stream))], dataset=benchmark.test_set)
    runner.save_checkpoint(strategy, path)

    loaded, _ = runner.maybe_load_checkpoint(Strategy(), path, unique_objects=benchmark)

    assert loaded.plugins[0].buffer[0] is benchmark.train_stream[0]
    assert loaded.plugins[0].buffer[1] is benchmark.train_stream[1]
    assert loaded.dataset is benchmark.test_set
