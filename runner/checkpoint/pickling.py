"""runner's dill pickler, which writes a checkpoint whenever the C pickler of ``standard_pickling`` cannot.

Changes from plain dill, which the C pickler follows too where it can:

- classes and functions that can be imported are stored by reference, and classes of the training script's
  ``__main__`` load as that process's class when it defines one, so ``isinstance`` keeps working after a resume;
- ``torch.device`` objects are stored so that loading remaps them by the ``map_location`` rule of the tensors;
- excluded attributes are left out;
- open files and locks are rejected: dill would reopen a file on load (perhaps truncating it) and restore a held
  lock that no thread will release.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import importlib
import io
import pickle
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Iterator

import dill
import torch

from runner.checkpoint.exclusion import Exclusion, reduce_without

IMPORTABLE_KINDS = (type, types.FunctionType, types.BuiltinFunctionType)
_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
_IN_MEMORY_STREAMS = (io.BytesIO, io.StringIO)
_DILL_SAVERS = dict(dill.Pickler.dispatch)
_ENUM_KINDS = tuple(kind for kind in (getattr(enum, name, None) for name in ("IntFlag", "Flag", "IntEnum", "StrEnum"))
                    if kind is not None) + (enum.Enum,)
"""The Enum bases that ``main_enum`` can rebuild a class from, most specific first (StrEnum is Python 3.11+)."""
PLAIN_TYPES = (int, float, bool, complex, str, bytes, type(None), tuple, list, dict, set, frozenset)
"""Builtin types without instance attributes: nothing to exclude, remap or reject in them."""


@dataclass
class SaveContext:
    """Settings of one save that the pickler reads, beyond the object itself."""

    exclusion: Exclusion = field(default_factory=Exclusion)


@dataclass
class LoadContext:
    """Settings of one load that the unpickler reads."""

    map_location: Any = None
    unique_objects: Any = None
    """The ``unique.Registry`` of objects to reuse, or None."""


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


def current_load_context() -> LoadContext:
    return _load_context.get(LoadContext())


def current_save_context() -> SaveContext:
    return _save_context.get(SaveContext())


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


def is_main_class(obj: Any) -> bool:
    return isinstance(obj, type) and obj.__module__ == "__main__" and "<" not in obj.__qualname__


class ByValue:
    """Marks a ``__main__`` class that the pickler is to store by value, as the fallback of ``main_class``."""

    __slots__ = ("cls",)

    def __init__(self, cls: type):
        self.cls = cls


class Pickler(dill.Pickler):
    """dill's pickler with runner's changes; see the module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._context = current_save_context()
        self._classes_by_value: set[int] = set()
        self._retired_memo_keys: list[object] = []
        # Most objects of a state are of these types, and skipping the checks below for them saves time per object.
        self._plain_types = frozenset(kind for kind in PLAIN_TYPES if not _has_user_reducer_for(kind))

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if type(obj) is ByValue:
            self._save_class_by_value(obj.cls)
            return
        super().save(obj, save_persistent_id)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in self._plain_types:
            return NotImplemented
        if isinstance(obj, torch.device):
            return restore_device, (obj.type, obj.index)
        if isinstance(obj, IMPORTABLE_KINDS):
            if is_main_class(obj):
                if issubclass(obj, enum.Enum):
                    return reduce_main_enum(obj)
                if id(obj) not in self._classes_by_value:
                    return main_class, (obj.__qualname__, ByValue(obj))
            return importable_name(obj) or NotImplemented
        if has_user_reducer(obj):
            return NotImplemented
        excluded = self._context.exclusion.names_for(obj)
        if excluded:
            return reduce_without(obj, excluded, self.proto)
        reject_process_resources(obj)
        return NotImplemented

    def _save_class_by_value(self, cls: type) -> None:
        self._classes_by_value.add(id(cls))
        try:
            super().save(cls)
        finally:
            self._classes_by_value.discard(id(cls))
        # The enclosing reduce must memoize the class that main_class returns, not this fallback copy. A new key
        # keeps the memo's size, which numbers the next entry, unchanged.
        retired = object()
        self._retired_memo_keys.append(retired)
        self.memo[id(retired)] = self.memo.pop(id(cls))


def has_user_reducer(obj: Any) -> bool:
    """Tell whether a reducer registered with ``dill.register``, not one of dill's own, saves ``obj``."""
    return _has_user_reducer_for(type(obj))


def plain_types_have_user_reducers() -> bool:
    """Tell whether ``dill.register`` replaced the saver of a builtin type such as dict, which only dill applies."""
    return any(_has_user_reducer_for(kind) for kind in PLAIN_TYPES)


def _has_user_reducer_for(kind: type) -> bool:
    saver = dill.Pickler.dispatch.get(kind)
    # dill registers its numpy savers on first use, so they are missing from the copy taken at import.
    return saver is not None and saver is not _DILL_SAVERS.get(kind) and saver.__module__ != dill.Pickler.__module__


def reject_process_resources(obj: Any) -> None:
    if isinstance(obj, io.IOBase) and not isinstance(obj, _IN_MEMORY_STREAMS) and not _is_standard_stream(obj):
        raise pickle.PicklingError(
            f"cannot pickle the open file {getattr(obj, 'name', obj)!r}: a checkpoint would reopen it on load")
    if isinstance(obj, _LOCK_TYPES):
        raise pickle.PicklingError(
            f"cannot pickle a {type(obj).__module__}.{type(obj).__qualname__}: it guards this process's threads, "
            "and a lock held at save time would stay held forever after loading")


def _is_standard_stream(obj: Any) -> bool:
    """Tell whether dill stores ``obj`` by name and loads it as this process's own stream."""
    return any(obj is stream for stream in (sys.__stdin__, sys.__stdout__, sys.__stderr__))


def main_class(qualname: str, fallback: type) -> type:
    """Return the class ``qualname`` of this process's ``__main__``, or the copy stored by value if it has none."""
    found = find_main_class(qualname)
    return fallback if found is None else found


def reduce_main_enum(cls: type[enum.Enum]) -> tuple:
    """Reduce an Enum class of ``__main__`` to its name, kind and members: dill cannot store one by value."""
    kind = next(base for base in _ENUM_KINDS if issubclass(cls, base))
    members = [(name, member.value) for name, member in cls.__members__.items()]
    return main_enum, (cls.__qualname__, kind.__name__, members)


def main_enum(qualname: str, kind_name: str, members: list[tuple[str, Any]]) -> type[enum.Enum]:
    """Return the Enum class ``qualname`` of this process's ``__main__``, or rebuild one with the same members.

    The rebuilt class has the members and values of the saved one, but none of its methods.
    """
    found = find_main_class(qualname)
    if found is not None:
        return found
    kind = getattr(enum, kind_name)
    return kind(qualname.rpartition(".")[2], members, module="__main__", qualname=qualname)


def find_main_class(qualname: str) -> type | None:
    """Return the class ``qualname`` of this process's ``__main__``, or None when it has no such class."""
    target: Any = sys.modules.get("__main__")
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target if isinstance(target, type) else None


def check_map_location(map_location: Any) -> Any:
    """Return ``map_location`` in the form ``torch.load`` takes; raise TypeError naming it when it is invalid.

    A dict may map to ``torch.device`` values as well as strings; they become strings here.
    """
    if map_location is None:
        return map_location
    if isinstance(map_location, (str, torch.device)):
        return map_location
    if isinstance(map_location, dict):
        bad_keys = [key for key in map_location if not isinstance(key, str)]
        bad_values = [value for value in map_location.values() if not isinstance(value, (str, torch.device))]
        if bad_keys or bad_values:
            raise TypeError(
                f"map_location as a dict maps location strings such as 'cuda:1' to a str or torch.device, but "
                f"{map_location!r} has {(bad_keys + bad_values)[0]!r}")
        return {key: str(value) for key, value in map_location.items()}
    if callable(map_location):
        return map_location
    raise TypeError(
        f"map_location must be None, a str, a torch.device, a dict or a callable(storage, location), "
        f"not {map_location!r}")


def check_map_location_usable(map_location: Any) -> None:
    """Raise ValueError naming ``map_location`` when a device it maps to is invalid or missing on this machine.

    Without this, torch fails deep inside unpickling and the checkpoint would look damaged.
    """
    if isinstance(map_location, (str, torch.device)):
        _check_device_usable(map_location, map_location)
    elif isinstance(map_location, dict):
        for value in map_location.values():
            _check_device_usable(value, map_location)


def _check_device_usable(target: str | torch.device, map_location: Any) -> None:
    """Raise ValueError naming ``map_location`` when ``target`` is not a device, or a CUDA device this machine lacks."""
    try:
        device = torch.device(target)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"invalid map_location {map_location!r}: {target!r} is not a device ({error}); use e.g. 'cpu' or 'cuda:0'"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise ValueError(
                f"invalid map_location {map_location!r}: {str(device)!r} is not available on this machine, which "
                f"has {count} CUDA device(s); use map_location='cpu' or a device that exists here")


def remap_device(device: torch.device, map_location: Any) -> torch.device:
    """Map ``device`` the way ``torch.load`` maps a storage saved on it."""
    map_location = check_map_location(map_location)
    if map_location is None:
        return device
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    if isinstance(map_location, dict):
        mapped = map_location.get(str(device))
        return device if mapped is None else torch.device(mapped)
    # torch.load hands the callable each storage on the CPU with its saved location; an empty one costs nothing.
    result = map_location(torch.UntypedStorage(0), str(device))
    return device if result is None else result.device


def restore_device(device_type: str, index: int | None) -> torch.device:
    """Rebuild a pickled ``torch.device``, remapped by the ``map_location`` of the load in progress."""
    device = torch.device(device_type) if index is None else torch.device(device_type, index)
    return remap_device(device, current_load_context().map_location)


class DiscardingSink(io.RawIOBase):
    """A binary stream that drops what is written: for pickling an object only to see what the pickler does."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return memoryview(data).nbytes
