"""Checkpoints are pickled by the C pickler when the state allows it, by dill's otherwise, and load the same."""

import collections
import enum
import threading
import json
import subprocess
import textwrap

import dill
import numpy
import pytest
import torch

import runner
from runner.checkpoint import standard_pickling
from runner.errors import CheckpointSaveError


class Color(enum.Enum):
    RED = 1


class Holder:
    def __init__(self, **attributes):
        self.__dict__.update(attributes)

    def double(self, value):
        return 2 * value


class Rows:
    def __init__(self, count):
        self.count = count
        self.rows = torch.arange(count)


@pytest.fixture
def dill_dumps(monkeypatch):
    """Count the dumps that fall back to runner's dill pickler."""
    calls = []
    dill_pickler = standard_pickling.Pickler

    class CountingPickler(dill_pickler):
        def dump(self, obj):
            calls.append(type(obj))
            return super().dump(obj)

    monkeypatch.setattr(standard_pickling, "Pickler", CountingPickler)
    return calls


def standard_state():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return Holder(model=model, optimizer=optimizer, device=torch.device("cpu"), color=Color.RED,
                  scores=numpy.arange(6.0).reshape(2, 3), best=numpy.float64(0.75),
                  history=collections.OrderedDict(a=[1, 2]), counts=collections.Counter("aab"),
                  rows=Rows(3), kind=torch.float16)


def round_trip(strategy, path):
    runner.save_checkpoint(strategy, path, exp_counter=1)
    loaded, counter = runner.maybe_load_checkpoint(None, path)
    assert counter == 1
    return loaded


def test_standard_state_needs_no_dill(tmp_path, dill_dumps):
    state = standard_state()

    loaded = round_trip(state, tmp_path / "c.pkl")

    assert dill_dumps == []
    for saved, restored in zip(state.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(saved, restored)
    assert loaded.optimizer.state_dict()["state"][0]["momentum_buffer"].equal(
        state.optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert loaded.optimizer.param_groups[0]["params"][0] is next(loaded.model.parameters())
    assert (loaded.device, loaded.color, loaded.kind) == (torch.device("cpu"), Color.RED, torch.float16)
    assert numpy.array_equal(loaded.scores, state.scores)
    assert loaded.best == numpy.float64(0.75)
    assert loaded.history == {"a": [1, 2]}
    assert type(loaded.history) is collections.OrderedDict
    assert loaded.counts == collections.Counter("aab")
    assert loaded.rows.count == 3
    assert torch.equal(loaded.rows.rows, torch.arange(3))


def call_extra(loaded):
    return loaded.extra(2)


def call_sqrt(loaded):
    return loaded.extra.sqrt(4.0)


@pytest.mark.parametrize("make_extra, use, expected", [
    (lambda state: lambda value: value * 3, call_extra, 6),
    (lambda state: state.double, call_extra, 4),
    (lambda state: numpy, call_sqrt, 2.0),
], ids=["lambda", "bound method", "module"])
def test_objects_only_dill_stores_fall_back(tmp_path, dill_dumps, make_extra, use, expected):
    state = Holder(model=torch.nn.Linear(2, 2))
    state.extra = make_extra(state)

    loaded = round_trip(state, tmp_path / "c.pkl")

    assert dill_dumps == [dict]
    assert use(loaded) == expected
    assert torch.equal(loaded.model.weight, state.model.weight)


def test_lambda_after_tensors_starts_over_cleanly(tmp_path, dill_dumps):
    """The C pickler has already met storages when it stops: dill's pass must still write each one once."""
    state = Holder(first=torch.randn(100), second=torch.randn(100), last=lambda: "late")

    loaded = round_trip(state, tmp_path / "c.pkl")

    assert dill_dumps == [dict]
    assert torch.equal(loaded.first, state.first)
    assert torch.equal(loaded.second, state.second)
    assert loaded.last() == "late"


def test_registered_reducer_runs_in_c_pickler(tmp_path, dill_dumps):
    @dill.register(Rows)
    def save_rows(pickler, obj):
        runner.constructor_based_serialization(pickler, obj, Rows, deduplicate=True, args=[obj.count])

    try:
        live = Rows(5)
        loaded, _ = runner.maybe_load_checkpoint(
            None, save_and_return(Holder(data=live), tmp_path / "c.pkl"), unique_objects=[live])
    finally:
        del dill.Pickler.dispatch[Rows]

    assert dill_dumps == []
    assert loaded.data is live


def test_registered_reducer_that_writes_itself_falls_back(tmp_path, dill_dumps):
    @dill.register(Rows)
    def save_rows(pickler, obj):
        pickler.save_reduce(Rows, (obj.count + 1,), obj=obj)
        pickler.write(b"")  # anything beyond save_reduce needs dill's own pickler

    try:
        loaded = round_trip(Holder(data=Rows(5)), tmp_path / "c.pkl")
    finally:
        del dill.Pickler.dispatch[Rows]

    assert dill_dumps == [dict]
    assert loaded.data.count == 6


def test_user_reducer_for_dict_sends_everything_to_dill(tmp_path, dill_dumps):
    dict_saver = dill.Pickler.dispatch[dict]

    @dill.register(dict)
    def save_dict(pickler, obj):
        dict_saver(pickler, obj)

    try:
        round_trip(Holder(values={"a": 1}), tmp_path / "c.pkl")
    finally:
        dill.Pickler.dispatch[dict] = dict_saver

    assert dill_dumps == [dict]


def test_excluded_attribute_left_out_by_c_pickler(tmp_path, dill_dumps):
    live = Holder(model=torch.nn.Linear(2, 2), guard=threading.Lock())
    runner.save_checkpoint(live, tmp_path / "c.pkl", exp_counter=1, exclude=["guard"])

    loaded, _ = runner.maybe_load_checkpoint(live, tmp_path / "c.pkl")

    assert dill_dumps == []
    assert loaded is not live
    assert loaded.guard is live.guard


def test_unpicklable_state_explained_as_before(tmp_path):
    state = Holder(model=torch.nn.Linear(2, 2), guard=threading.Lock())

    with pytest.raises(CheckpointSaveError, match=r"strategy\.guard .*exclude=\['guard'\]"):
        runner.save_checkpoint(state, tmp_path / "c.pkl", exp_counter=1)


def save_and_return(strategy, path):
    runner.save_checkpoint(strategy, path, exp_counter=1)
    return path


MAIN_SCRIPT = textwrap.dedent("""
    import json
    import sys

    import torch

    import runner


    class Strategy:
        def __init__(self):
            self.model = torch.nn.Linear(3, 2)
            self.note = "kept"

        def describe(self):
            return "main strategy with " + self.note


    path = sys.argv[1]
    if sys.argv[2] == "save":
        runner.save_checkpoint(Strategy(), path, exp_counter=2)
    else:
        loaded, counter = runner.maybe_load_checkpoint(None, path)
        print(json.dumps({"is_main_class": type(loaded) is Strategy, "counter": counter}))
""")

OTHER_SCRIPT = textwrap.dedent("""
    import json
    import sys

    import runner

    loaded, counter = runner.maybe_load_checkpoint(None, sys.argv[1])
    print(json.dumps({"class": type(loaded).__qualname__, "describe": loaded.describe(), "counter": counter}))
""")


def test_main_class_loads_as_own_class_or_by_value(tmp_path, python, python_env):
    main_script, other_script = tmp_path / "train.py", tmp_path / "inspect_checkpoint.py"
    main_script.write_text(MAIN_SCRIPT)
    other_script.write_text(OTHER_SCRIPT)
    path = str(tmp_path / "c.pkl")

    def run(*args):
        output = subprocess.run([python, *args], env=python_env, check=True, capture_output=True, text=True,
                                timeout=120).stdout
        return json.loads(output) if output else None

    run(str(main_script), path, "save")
    assert b"main_class_or_pickled" in (tmp_path / "c.pkl").read_bytes()  # written by the C pickler, not dill's
    assert run(str(main_script), path, "load") == {"is_main_class": True, "counter": 2}
    assert run(str(other_script), path) == {"class": "Strategy", "describe": "main strategy with kept",
                                            "counter": 2}


def test_reducer_without_obj_loads_copies(tmp_path):
    """dill's pickler memoizes only what save_reduce names as obj, so each reference loads as its own copy."""
    @dill.register(Rows)
    def save_rows(pickler, obj):
        pickler.save_reduce(Rows, (obj.count,))

    try:
        shared = Rows(2)
        loaded = round_trip(Holder(first=shared, second=shared), tmp_path / "c.pkl")
    finally:
        del dill.Pickler.dispatch[Rows]

    assert loaded.first is not loaded.second
    assert loaded.first.count == 2
    assert loaded.second.count == 2


RELATED_CLASSES_SCRIPT = textwrap.dedent("""
    import sys

    import torch

    import runner


    class Base:
        pass


    class Child(Base):
        pass


    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)


    class Outer:
        class Inner:
            pass


    class Strategy:
        model_class = Net
        defaults = {"lr": 0.1}

        def __init__(self):
            self.base, self.child, self.model = Base(), Child(), Net()
            self.outer, self.inner = Outer(), Outer.Inner()
            self.options = self.defaults


    runner.save_checkpoint(Strategy(), sys.argv[1], exp_counter=1)
""")

RELATED_CLASSES_CHECK = textwrap.dedent("""
    import json
    import sys

    import runner

    loaded, _ = runner.maybe_load_checkpoint(None, sys.argv[1])
    print(json.dumps({
        "child is a base": isinstance(loaded.child, type(loaded.base)),
        "model_class is the model's class": type(loaded).model_class is type(loaded.model),
        "Outer.Inner is the inner's class": type(loaded.outer).Inner is type(loaded.inner),
        "options are the class's defaults": loaded.options is type(loaded).defaults,
    }))
""")


def test_related_main_classes_stay_identical(tmp_path, python, python_env):
    """Loaded where __main__ lacks them, a base class, a class attribute and a nested class stay the very classes
    that the instances have, and a class attribute the very object that the instance holds, as when dill's
    pickler stores them all in one pickle."""
    save_script, check_script = tmp_path / "train.py", tmp_path / "inspect_checkpoint.py"
    save_script.write_text(RELATED_CLASSES_SCRIPT)
    check_script.write_text(RELATED_CLASSES_CHECK)
    path = str(tmp_path / "c.pkl")

    subprocess.run([python, str(save_script), path], env=python_env, check=True, timeout=120)
    output = subprocess.run([python, str(check_script), path], env=python_env, check=True, capture_output=True,
                            text=True, timeout=120).stdout

    checks = json.loads(output)
    assert checks["child is a base"]
    assert checks["model_class is the model's class"]
    assert checks["Outer.Inner is the inner's class"]
    assert checks["options are the class's defaults"]


ENUM_SCRIPT = textwrap.dedent("""
    import enum
    import json
    import sys

    import runner


    class Phase(enum.IntEnum):
        TRAIN = 1
        EVAL = 2


    class Strategy:
        def __init__(self, with_lambda):
            self.phase = Phase.EVAL
            self.phases = list(Phase)
            if with_lambda:  # only dill's pickler stores a lambda
                self.scale = lambda value: value * 2


    path = sys.argv[1]
    if sys.argv[2] == "load":
        loaded, _ = runner.maybe_load_checkpoint(None, path)
        print(json.dumps({"same_member": loaded.phase is Phase.EVAL}))
    else:
        runner.save_checkpoint(Strategy(sys.argv[2] == "save-with-lambda"), path, exp_counter=1)
""")

ENUM_OTHER_SCRIPT = textwrap.dedent("""
    import json
    import sys

    import runner

    loaded, _ = runner.maybe_load_checkpoint(None, sys.argv[1])
    print(json.dumps({"class": type(loaded.phase).__qualname__, "name": loaded.phase.name,
                      "value": loaded.phase.value, "is_int": isinstance(loaded.phase, int),
                      "members": [member.name for member in loaded.phases]}))
""")


@pytest.mark.parametrize("save_mode", ["save", "save-with-lambda"], ids=["c pickler", "dill"])
def test_main_enum_rebuilt_without_its_class(tmp_path, python, python_env, save_mode):
    main_script, other_script = tmp_path / "train.py", tmp_path / "inspect_checkpoint.py"
    main_script.write_text(ENUM_SCRIPT)
    other_script.write_text(ENUM_OTHER_SCRIPT)
    path = str(tmp_path / "c.pkl")

    def run(*args):
        return subprocess.run([python, *args], env=python_env, check=True, capture_output=True, text=True,
                              timeout=120)

    saved = run(str(main_script), path, save_mode)

    assert "Warning" not in saved.stderr
    assert json.loads(run(str(main_script), path, "load").stdout) == {"same_member": True}
    assert json.loads(run(str(other_script), path).stdout) == {"class": "Phase", "name": "EVAL", "value": 2,
                                                               "is_int": True, "members": ["TRAIN", "EVAL"]}
