"""The dill pickler that checkpoints use, handed to ``torch.save`` and ``torch.load`` as their pickle module.

Two changes from plain dill: classes and functions that can be imported are stored by reference, and on load
``torch.device`` objects are remapped by the same ``map_location`` rule as tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import types
from dataclasses import dataclass, field
from typing import Any, Iterator

import dill
import torch

_IMPORTABLE_KINDS = (type, types.FunctionType, types.BuiltinFunctionType)


@dataclass
class SaveContext:
    """What the pickler needs to know about one save beyond the object itself."""

    root: Any = None
    exclude: frozenset[str] = field(default_factory=frozenset)


@dataclass
class LoadContext:
    """What the unpickler needs to know about one load."""

    map_location: Any = None


_save_context: contextvars.ContextVar[SaveContext] = contextvars.ContextVar("runner_save_context")
_load_context: contextvars.ContextVar[LoadContext] = contextvars.ContextVar("runner_load_context")


@contextlib.contextmanager
def saving(context: SaveContext) -> Iterator[None]:
    token = _save_context.set(context)
    try:
        yield
    finally:
        _save_context.reset(token)


@contextlib.contextmanager
def loading(context: LoadContext) -> Iterator[None]:
    token = _load_context.set(context)
    try:
        yield
    finally:
        _load_context.reset(token)


def importable_name(obj: Any) -> str | None:
    """Return the qualified name under which ``obj`` can be imported, or None when it cannot.

    dill 0.4.1 decides this with ``getattr`` on the parent package, so ``torch.optim.sgd.SGD`` looks unimportable
    (``torch.optim.sgd`` is also a function) and gets pickled by value, which then fails on typing_extensions'
    sentinels. Importing the module by its full name avoids that.
    """
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module_name or not qualname or module_name == "__main__" or "<" in qualname:
        return None
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        return None
    return qualname if target is obj else None


class Pickler(dill.Pickler):
    """dill's pickler, storing importable classes and functions by reference and leaving out excluded attributes."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._context = _save_context.get(SaveContext())

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _IMPORTABLE_KINDS):
            return importable_name(obj) or NotImplemented
        if obj is self._context.root and self._context.exclude:
            return _reduce_without(obj, self._context.exclude, self.proto)
        return NotImplemented


def _reduce_without(obj: Any, exclude: frozenset[str], protocol: int) -> tuple:
    """Reduce ``obj`` as pickle would, minus the attributes named in ``exclude``."""
    reduced = list(obj.__reduce_ex__(protocol))
    state = reduced[2] if len(reduced) > 2 else None
    if isinstance(state, tuple) and len(state) == 2:
        instance_dict, slots = state
        reduced[2] = (_without(instance_dict, exclude), _without(slots, exclude))
    elif isinstance(state, dict):
        reduced[2] = _without(state, exclude)
    else:
        raise TypeError(
            f"cannot exclude attributes {sorted(exclude)} from a {type(obj).__qualname__}: its pickled state is "
            f"{type(state).__name__}, not a dict; make __getstate__ return a dict or drop exclude"
        )
    return tuple(reduced)


def _without(state: dict | None, exclude: frozenset[str]) -> dict | None:
    if state is None:
        return None
    return {name: value for name, value in state.items() if name not in exclude}


def remap_device(device: torch.device, map_location: Any) -> torch.device:
    """Map ``device`` the way ``torch.load`` maps a storage saved on it."""
    if map_location is None:
        return device
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    if isinstance(map_location, dict):
        mapped = map_location.get(str(device))
        return device if mapped is None else torch.device(mapped)
    if callable(map_location):
        result = map_location(torch.UntypedStorage(0), str(device))
        return device if result is None else result.device
    raise TypeError(f"map_location must be None, a str, a torch.device, a dict or a callable, not {map_location!r}")


def _make_device(*args: Any) -> torch.device:
    return remap_device(torch.device(*args), _load_context.get(LoadContext()).map_location)


class Unpickler(dill.Unpickler):
    """dill's unpickler, remapping ``torch.device`` objects by the load's ``map_location``."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name == "device":
            return _make_device
        return super().find_class(module, name)


class PickleModule(types.ModuleType):
    """A module-like object with runner's pickler, in the shape ``torch.save(pickle_module=...)`` expects."""

    Pickler = Pickler
    Unpickler = Unpickler
    PicklingError = dill.PicklingError
    UnpicklingError = dill.UnpicklingError
    HIGHEST_PROTOCOL = dill.HIGHEST_PROTOCOL

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    @staticmethod
    def dump(obj: Any, file: Any, protocol: int | None = None, **kwargs: Any) -> None:
        Pickler(file, protocol, **kwargs).dump(obj)


pickle_module = PickleModule("runner.checkpoint.pickle_module")
