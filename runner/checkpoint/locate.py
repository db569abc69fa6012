"""Find where the state that made a save fail sits, such as ``strategy.plugins[2].iterator``.

After a failed save, the object graph is walked down from the strategy: at each level every attribute or item is
pickled on its own with the same pickler, and the walk goes into the first one that fails. The deepest failing
object is the one to exclude or to give a ``__getstate__``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Iterator

import dill
import torch

from runner.checkpoint import objectpath
from runner.checkpoint.exclusion import Exclusion
from runner.checkpoint.pickling import DiscardingSink, Pickler

_PROTOCOL = 2  # the protocol torch.save uses
_MODULE_STORES = ("_modules", "_parameters", "_buffers")


@dataclass(frozen=True)
class Label:
    """A step that no object path can express, such as a closure variable, printed as is."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Finding:
    """The deepest object under the root that fails to pickle, and its error."""

    steps: tuple[objectpath.Step | Label, ...]
    obj: Any
    error: BaseException

    def path(self, root: str) -> str:
        return root + "".join(str(step) for step in self.steps)

    def excludable_steps(self) -> tuple[objectpath.Step, ...]:
        """Return the steps to the deepest attribute on the path that ``exclude`` could name, or ``()``."""
        end = next((index for index, step in enumerate(self.steps) if isinstance(step, Label)), len(self.steps))
        while end > 0 and not self.steps[end - 1].is_attribute:
            end -= 1
        return tuple(self.steps[:end])


class _TrialPickler(Pickler):
    """Runner's pickler that keeps tensor data out of the trial, as ``torch.save`` keeps it out of the pickle."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, (torch.UntypedStorage, torch.TypedStorage)):
            return "storage"
        return None


def pickling_error(obj: Any) -> BaseException | None:
    """Return the error pickling ``obj`` alone raises, or None when it pickles."""
    try:
        _TrialPickler(DiscardingSink(), _PROTOCOL).dump(obj)
    except Exception as error:  # user reducers may raise any exception, and each one means a failure
        return error
    return None


def find_unpicklable(root: Any, exclusion: Exclusion) -> Finding | None:
    """Return the deepest object under ``root`` that fails to pickle, or None when ``root`` pickles.

    Call it inside ``pickling.saving(...)`` of the failed save, so that exclusions apply as they did there.
    """
    error = pickling_error(root)
    if error is None:
        return None
    steps: list[objectpath.Step | Label] = []
    current = root
    on_path = {id(root)}
    while True:
        for step, child in _children(current, exclusion):
            if id(child) in on_path:
                continue
            child_error = pickling_error(child)
            if child_error is not None:
                steps.append(step)
                current, error = child, child_error
                on_path.add(id(child))
                break
        else:
            return Finding(tuple(steps), current, error)


def _children(obj: Any, exclusion: Exclusion) -> Iterator[tuple[objectpath.Step | Label, Any]]:
    if isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield objectpath.item(index), value
    elif isinstance(obj, dict):
        yield from _dict_children(obj)
    elif isinstance(obj, (set, frozenset)):
        for value in obj:
            yield Label(f" (member {value!r} of the set)"), value
    elif isinstance(obj, types.FunctionType):
        yield from _function_children(obj)
    elif type(obj) not in dill.Pickler.dispatch:
        yield from _reduced_children(obj, exclusion.names_for(obj) or frozenset())


def _dict_children(mapping: dict) -> Iterator[tuple[objectpath.Step | Label, Any]]:
    for key, value in mapping.items():
        yield objectpath.item(key), value
    for key in mapping:
        yield Label(f" (key {key!r})"), key


def _function_children(function: types.FunctionType) -> Iterator[tuple[Label, Any]]:
    for name, cell in zip(function.__code__.co_freevars, function.__closure__ or ()):
        try:
            yield Label(f" (closure variable {name!r})"), cell.cell_contents
        except ValueError:  # an empty cell
            continue
    for index, value in enumerate(function.__defaults__ or ()):
        yield Label(f" (default argument {index})"), value


def _reduced_children(obj: Any, excluded: frozenset[str]) -> Iterator[tuple[objectpath.Step | Label, Any]]:
    try:
        reduced = obj.__reduce_ex__(_PROTOCOL)
    except Exception:  # the object raises when reduced, so it is the one that fails
        return
    if isinstance(reduced, str):
        return
    arguments = reduced[1] if len(reduced) > 1 else ()
    for index, value in enumerate(arguments or ()):
        if not isinstance(value, type):
            yield Label(f" (constructor argument {index})"), value
    state = reduced[2] if len(reduced) > 2 else None
    if isinstance(state, tuple) and len(state) == 2 and all(part is None or isinstance(part, dict) for part in state):
        for part in state:
            yield from _state_children(obj, part or {}, excluded)
    elif isinstance(state, dict):
        yield from _state_children(obj, state, excluded)
    elif state is not None:
        yield Label(" (its __getstate__())"), state
    if len(reduced) > 3 and reduced[3] is not None:
        for index, value in enumerate(reduced[3]):
            yield objectpath.item(index), value
    if len(reduced) > 4 and reduced[4] is not None:
        for key, value in reduced[4]:
            yield objectpath.item(key), value


def _state_children(obj: Any, state: dict, excluded: frozenset[str]) -> Iterator[tuple[objectpath.Step, Any]]:
    for name, value in state.items():
        if name in excluded:
            continue
        if isinstance(obj, torch.nn.Module) and name in _MODULE_STORES and isinstance(value, dict):
            for member, member_value in value.items():  # shown as model.fc or model[0], not model._modules['fc']
                yield _module_member_step(obj, member), member_value
        else:
            yield objectpath.attribute(name), value


def _module_member_step(module: torch.nn.Module, member: str) -> objectpath.Step | Label:
    if member.isidentifier():
        return objectpath.attribute(member)
    if isinstance(module, (torch.nn.Sequential, torch.nn.ModuleList)) and member.isdigit():
        return objectpath.item(int(member))
    return Label(f" (member {member!r} of the module)")
