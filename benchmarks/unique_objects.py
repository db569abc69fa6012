"""Checkpoint size when the data set grows tenfold, with and without unique objects; reuse on load checked too.

Usage: python benchmarks/unique_objects.py [--samples N] [--features F] [--folder DIR]

A strategy holding a small model, its optimizer and a reference to a synthetic data set of N samples is saved,
then the same with 10 N samples. Stored by value, the data set is pickled into the checkpoint, so the size grows
about tenfold. Stored with ``constructor_based_serialization(deduplicate=True)``, only its constructor arguments
are, so the size stays the same: a ratio of about 1.0. ``size_growth_10x_data()`` returns that ratio for
``benchmarks/run.py``. Exits 1 if the loaded strategy does not reuse the live data set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import dill
import torch

import runner

GROWTH = 10


class SyntheticDataset:
    """Random features and labels, built from (samples, features, seed): the same arguments give the same data."""

    built = 0

    def __init__(self, samples: int, features: int, seed: int = 0):
        type(self).built += 1
        self.samples, self.features, self.seed = samples, features, seed
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(samples, features, generator=generator)
        self.y = torch.randint(0, 10, (samples,), generator=generator)


class UniqueDataset(SyntheticDataset):
    """The same data set, stored in checkpoints by its constructor arguments and reused on load."""


@dill.register(UniqueDataset)
def _save_unique_dataset(pickler, obj):
    runner.constructor_based_serialization(pickler, obj, UniqueDataset, deduplicate=True,
                                           args=[obj.samples, obj.features], kwargs={"seed": obj.seed})


class ReplayStrategy:
    """A strategy that keeps a reference to its training data, as replay strategies do."""

    def __init__(self, dataset: SyntheticDataset):
        self.model = torch.nn.Sequential(torch.nn.Linear(dataset.features, 64), torch.nn.ReLU(),
                                         torch.nn.Linear(64, 10))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.dataset = dataset
        self.exp_counter = 1


def checkpoint_bytes(dataset_class: type, samples: int, features: int, folder: Path) -> int:
    """Save a strategy holding a ``dataset_class`` of ``samples`` rows; return the checkpoint's size in bytes."""
    path = folder / f"{dataset_class.__name__}-{samples}.pkl"
    runner.save_checkpoint(ReplayStrategy(dataset_class(samples, features)), path, keep=1)
    return path.stat().st_size


def reuses_live_dataset(samples: int, features: int, folder: Path) -> bool:
    """Save and load with the live data set in unique_objects; tell whether the load reused it without rebuilding."""
    path = folder / "reuse.pkl"
    live = UniqueDataset(samples, features)
    runner.save_checkpoint(ReplayStrategy(live), path, keep=1)
    built = UniqueDataset.built
    loaded, _ = runner.maybe_load_checkpoint(ReplayStrategy(live), path, unique_objects=[live])
    return loaded.dataset is live and UniqueDataset.built == built


def measure(samples: int = 20_000, features: int = 32, folder: Path | None = None) -> dict:
    """Return checkpoint sizes at ``samples`` and ``GROWTH`` times as many rows, by value and as unique objects."""
    with tempfile.TemporaryDirectory(prefix="unique-objects-", dir=folder) as root:
        root_path = Path(root)
        sizes = {
            name: [checkpoint_bytes(cls, count, features, root_path) for count in (samples, samples * GROWTH)]
            for name, cls in (("by_value", SyntheticDataset), ("unique_objects", UniqueDataset))
        }
        reused = reuses_live_dataset(samples, features, root_path)
    return {
        "samples": samples,
        "sizes_bytes": sizes,
        "ratios": {name: large / small for name, (small, large) in sizes.items()},
        "reused_on_load": reused,
    }


def size_growth_10x_data(samples: int = 20_000) -> float:
    """Return how many times larger the checkpoint gets when the data set grows tenfold, with unique objects."""
    return measure(samples)["ratios"]["unique_objects"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000, help="rows of the smaller data set (default: 20000)")
    parser.add_argument("--features", type=int, default=32, help="columns of float32 features (default: 32)")
    parser.add_argument("--folder", type=Path, help="where to write the checkpoints (default: a temp folder)")
    args = parser.parse_args(argv)

    result = measure(args.samples, args.features, args.folder)
    print(f"data set of {args.samples} and {args.samples * GROWTH} samples, {args.features} float32 features")
    for name, (small, large) in result["sizes_bytes"].items():
        print(f"{name:>15}: {small / 1e6:8.3f} MB -> {large / 1e6:8.3f} MB, ratio {result['ratios'][name]:.3f}")
    print(f"size_growth_10x_data: {result['ratios']['unique_objects']:.3f}")
    print(f"loaded strategy reuses the live data set, none rebuilt: {result['reused_on_load']}")
    return 0 if result["reused_on_load"] else 1


if __name__ == "__main__":
    sys.exit(main())
