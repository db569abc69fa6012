"""Every checkpoint promise holds when a new process loads it, with classes and lambdas from the script's __main__."""

import json
import subprocess
import textwrap

import pytest

TRAINING_SCRIPT = textwrap.dedent("""
    import io
    import json
    import random
    import sys
    import threading
    from pathlib import Path

    import dill
    import numpy
    import torch

    import runner

    folder = Path(sys.argv[2])


    class Dataset:
        built = 0

        def __init__(self, size, seed, transform=None):
            type(self).built += 1
            self.size, self.seed, self.transform = size, seed, transform
            self.data = torch.randn(size, 3, generator=torch.Generator().manual_seed(seed))


    @dill.register(Dataset)
    def save_dataset(pickler, obj):
        runner.constructor_based_serialization(pickler, obj, Dataset, deduplicate=True, args=[obj.size],
                                               kwargs={"seed": obj.seed, "transform": obj.transform})


    class Benchmark:
        def __init__(self):
            self.train_stream = [Dataset(200, 1), Dataset(300, 2, transform=lambda rows: rows * 2)]
            self.classes = {"a", "b", "c"}


    class Plugin:
        def __init__(self):
            self.handle = threading.Lock()  # excluded: the live one is kept
            self.scale = lambda value: value * 3


    class BaseStrategy:
        def describe(self):
            return "base"


    class Strategy(BaseStrategy):
        def describe(self):
            return "strategy of " + super().describe()

        def __init__(self, benchmark):
            self.model = torch.nn.Linear(3, 2)
            self.device = torch.device("cuda:1")
            self.plugins = [Plugin()]
            self.dataset = benchmark.train_stream[1]
            self.exp_counter = 0


    data_order = torch.Generator()
    runner.register_generator("data-order", data_order)


    def draw():
        return [random.random(), float(numpy.random.rand()), torch.rand(2).tolist(),
                torch.randperm(6, generator=data_order).tolist()]


    def save():
        for seed in (random.seed, numpy.random.seed, torch.manual_seed, data_order.manual_seed):
            seed(0)
        strategy = Strategy(Benchmark())
        draw()
        strategy.exp_counter = 1
        runner.save_checkpoint(strategy, folder / "checkpoint.pkl", exclude=["plugins[0].handle"])
        stream = io.BytesIO()
        runner.save_checkpoint(strategy, stream, exclude=["plugins[0].handle"])
        (folder / "stream.bin").write_bytes(stream.getvalue())
        (folder / "expected.json").write_text(json.dumps({"draws": draw()}))


    def load(source):
        benchmark = Benchmark()
        built = Dataset.built
        for seed in (random.seed, numpy.random.seed, torch.manual_seed, data_order.manual_seed):
            seed(42)
        live = Strategy(benchmark)
        if source == "stream":
            with open(folder / "stream.bin", "rb") as file:
                loaded, counter = runner.maybe_load_checkpoint(live, file, map_location={"cuda:1": "cpu"},
                                                               unique_objects=benchmark)
        else:
            loaded, counter = runner.maybe_load_checkpoint(live, folder / "checkpoint.pkl",
                                                           map_location={"cuda:1": "cpu"}, unique_objects=benchmark)
        print(json.dumps({
            "counter": counter,
            "strategy_class_is_main": type(loaded) is Strategy,
            "plugin_class_is_main": type(loaded.plugins[0]) is Plugin,
            "lambda": loaded.plugins[0].scale(2),
            "method": loaded.describe(),
            "dataset_transform": loaded.dataset.transform(5),
            "device": str(loaded.device),
            "dataset_reused": loaded.dataset is benchmark.train_stream[1],
            "datasets_built_on_load": Dataset.built - built,
            "excluded_kept": loaded.plugins[0].handle is live.plugins[0].handle,
            "draws": draw(),
        }))


    save() if sys.argv[1] == "save" else load(sys.argv[1])
""")

OTHER_SCRIPT = textwrap.dedent("""
    import json
    import sys

    import torch

    import runner


    class Placeholder:
        exp_counter = 0


    loaded, counter = runner.maybe_load_checkpoint(Placeholder(), sys.argv[1], map_location="cpu")
    print(json.dumps({
        "counter": counter,
        "strategy_class": type(loaded).__qualname__,
        "lambda": loaded.plugins[0].scale(5),
        "method": loaded.describe(),
        "dataset_rows": loaded.dataset.data.shape[0],
        "device": str(loaded.device),
    }))
""")


def run(python, env, script, *args, hash_seed):
    result = subprocess.run([python, str(script), *map(str, args)], env={**env, "PYTHONHASHSEED": hash_seed},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def saved(tmp_path, python, python_env):
    script = tmp_path / "train.py"
    script.write_text(TRAINING_SCRIPT)
    run(python, python_env, script, "save", tmp_path, hash_seed="1")
    return script


@pytest.mark.parametrize("source", ["file", "stream"])
def test_fresh_process_restores_everything(tmp_path, python, python_env, saved, source):
    outcome = json.loads(run(python, python_env, saved, source, tmp_path, hash_seed="2"))
    expected = json.loads((tmp_path / "expected.json").read_text())

    assert outcome["counter"] == 1
    assert outcome["strategy_class_is_main"]
    assert outcome["plugin_class_is_main"]
    assert outcome["lambda"] == 6
    assert outcome["method"] == "strategy of base"
    assert outcome["dataset_transform"] == 10
    assert outcome["device"] == "cpu"
    assert outcome["dataset_reused"]
    assert outcome["datasets_built_on_load"] == 0
    assert outcome["excluded_kept"]
    assert outcome["draws"] == expected["draws"]


def test_other_script_loads_classes_by_value(tmp_path, python, python_env, saved):
    other = tmp_path / "inspect_checkpoint.py"
    other.write_text(OTHER_SCRIPT)

    outcome = json.loads(run(python, python_env, other, tmp_path / "checkpoint.pkl", hash_seed="3"))

    assert outcome == {"counter": 1, "strategy_class": "Strategy", "lambda": 15, "method": "strategy of base",
                       "dataset_rows": 300, "device": "cpu"}
