"""Importable strategies, data sets and benchmarks for the checkpoint tests."""

from __future__ import annotations

import random

import dill
import torch

from runner import constructor_based_serialization


class CountingDataset:
    """A data set built from (size, seed) that counts how often its constructor runs, in ``CountingDataset.built``."""

    built = 0

    def __init__(self, size: int, seed: int = 0, tags: frozenset = frozenset()):
        CountingDataset.built += 1
        self.size = size
        self.seed = seed
        self.tags = tags
        self.data = torch.randn(size, 4, generator=torch.Generator().manual_seed(seed))


@dill.register(CountingDataset)
def _save_counting_dataset(pickler, obj):
    constructor_based_serialization(pickler, obj, CountingDataset, deduplicate=True, args=[obj.size],
                                    kwargs={"seed": obj.seed, "tags": obj.tags})


class RebuiltDataset(CountingDataset):
    """Like CountingDataset, but stored by constructor without deduplication: always rebuilt on load."""


@dill.register(RebuiltDataset)
def _save_rebuilt_dataset(pickler, obj):
    constructor_based_serialization(pickler, obj, RebuiltDataset, args=[obj.size], kwargs={"seed": obj.seed})


class SubsetDataset:
    """A view on a parent data set, stored by its constructor arguments, the parent among them."""

    def __init__(self, parent: CountingDataset, indices: list[int]):
        self.parent = parent
        self.indices = list(indices)


@dill.register(SubsetDataset)
def _save_subset(pickler, obj):
    constructor_based_serialization(pickler, obj, SubsetDataset, deduplicate=True, args=(obj.parent, obj.indices))


class RandomDrawingDataset:
    """A data set whose constructor draws from the global random generators, as augmentation set-up may."""

    def __init__(self, size: int):
        self.size = size
        self.offset = random.random() + torch.rand(1).item()


@dill.register(RandomDrawingDataset)
def _save_random_drawing(pickler, obj):
    constructor_based_serialization(pickler, obj, RandomDrawingDataset, args=[obj.size])


class Benchmark:
    """A continual-learning benchmark: a stream of training data sets and a test set."""

    def __init__(self, sizes: list[int], seed: int = 0):
        self.train_stream = [CountingDataset(size, seed + index) for index, size in enumerate(sizes)]
        self.test_set = CountingDataset(sizes[0], seed + 100)
        self.description = "a benchmark holding data sets among other things"


class Plugin:
    """A strategy plugin that keeps whatever a test passes to it."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)


class Strategy:
    """A small training strategy: a model, its optimizer, plugins and the index of the next experience."""

    def __init__(self, plugins: list | None = None, dataset=None):
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.plugins = list(plugins or [])
        self.dataset = dataset
        self.exp_counter = 0
