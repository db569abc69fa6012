"""The pickler that ``torch.save`` gets for checkpoints: the standard library's C pickler first, dill's when needed.

dill's pickler is written in Python and spends a few microseconds on every object, and a training state contains
thousands of small ones (each ``nn.Module`` keeps a dozen dicts). Most of them are stored the same way by both
picklers: by reference, or through their ``__reduce_ex__``. The C pickler takes the state first, with runner's
rules. The first object that only dill stores right (a lambda, a function of ``__main__``, a module, a bound
method) makes the dump start over with runner's dill pickler. What is loaded never depends on which pickler
wrote it, and dill's unpickler reads both.
"""

from __future__ import annotations

import enum
import io
import pickle
import types
from typing import Any, BinaryIO

import dill
import torch

from runner.checkpoint import pickling
from runner.checkpoint.exclusion import reduce_without
from runner.checkpoint.pickling import Pickler


class _NeedsDill(Exception):
    """The C pickler met an object that only dill's pickler stores as a checkpoint needs."""


_STORAGE_TYPES = (torch.UntypedStorage, torch.storage.TypedStorage)
"""The types of every tensor storage (``torch.is_storage``), the only objects that ``torch.save`` stores apart."""
_DILL_TYPES = frozenset(kind for kind in dill.Pickler.dispatch if kind not in pickling.PLAIN_TYPES)
"""Types that dill saves its own way: functions, classes and modules by value, bound methods, cells and more."""


class _CPickler(pickle.Pickler):
    """The standard library's C pickler with runner's rules; raises _NeedsDill where they need dill."""

    def __init__(self, file: BinaryIO, protocol: int | None):
        super().__init__(file, protocol)
        self._protocol = pickle.DEFAULT_PROTOCOL if protocol is None else protocol  # the C pickler does not say
        self._context = pickling.current_save_context()
        self._classes_by_value: list[tuple[type, dict]] = []
        """Each ``__main__`` class stored by value, with the memo of the dill pickler that stored it."""
        self._ordinary_types: set[type] = set()
        """Types whose objects passed every check that depends on the type alone, such as OrderedDict."""

    def dump(self, obj: Any) -> None:
        super().dump(obj)
        if self._classes_by_value and _shares_objects(self.memo.copy(), self._classes_by_value):
            raise _NeedsDill("a __main__ class stored by value shares objects with the rest of the checkpoint")

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in self._ordinary_types:
            return self._reduce_ordinary(obj)
        if isinstance(obj, torch.device):
            return pickling.restore_device, (obj.type, obj.index)
        if isinstance(obj, pickling.IMPORTABLE_KINDS):
            return self._reduce_importable(obj)
        if pickling.has_user_reducer(obj):
            return _recorded_reduce(obj)
        if kind in _DILL_TYPES or _numpy_needs_dill(kind):
            raise _NeedsDill(kind)
        reduced = self._reduce_ordinary(obj)
        if reduced is NotImplemented:
            pickling.reject_process_resources(obj)
            if not issubclass(kind, io.IOBase):  # whether a stream is rejected depends on the stream itself
                self._ordinary_types.add(kind)
        return reduced

    def _reduce_ordinary(self, obj: Any) -> Any:
        """Reduce ``obj`` without its excluded attributes, or return NotImplemented to reduce it as pickle does."""
        excluded = self._context.exclusion.names_for(obj)
        return reduce_without(obj, excluded, self._protocol) if excluded else NotImplemented

    def _reduce_importable(self, obj: Any) -> Any:
        if pickling.is_main_class(obj):
            if issubclass(obj, enum.Enum):
                return pickling.reduce_main_enum(obj)
            pickled, memo = _class_by_value(obj, self._protocol)
            self._classes_by_value.append((obj, memo))
            return main_class_or_pickled, (obj.__qualname__, pickled)
        name = pickling.importable_name(obj)
        if name is None:
            raise _NeedsDill(obj)
        return name


def _class_by_value(cls: type, protocol: int | None) -> tuple[bytes, dict]:
    """Return ``cls`` pickled by value with runner's dill pickler, the fallback for a process without it, and the
    pickler's memo, which keeps every object it stored alive for ``_shares_objects``."""
    buffer = io.BytesIO()
    pickler = Pickler(buffer, protocol)
    pickler.dump(pickling.ByValue(cls))
    return buffer.getvalue(), pickler.memo


def _shares_objects(memo: dict, classes_by_value: list[tuple[type, dict]]) -> bool:
    """Tell whether a class stored by value contains an object that the rest of the payload contains too, or
    another ``__main__`` class that a second class stored by value contains.

    Each class stored by value is a pickle of its own. A process without the class would load such an object
    twice (a base class, a nested class, a tensor in a class attribute), where dill's single pickle loads it once.
    """
    elsewhere = set(memo)
    for cls, class_memo in classes_by_value:
        contained = {key: obj for key, (_, obj) in class_memo.items() if obj is not cls}
        if any(_identity_matters(contained[key]) for key in elsewhere.intersection(contained)):
            return True
        elsewhere.update(key for key, obj in contained.items() if pickling.is_main_class(obj))
    return False


def _identity_matters(obj: Any) -> bool:
    """Tell whether loading ``obj`` twice from separate pickles gives something other than loading it once."""
    if isinstance(obj, (str, bytes, int, float, complex, tuple, frozenset, types.CodeType)):
        return False
    if isinstance(obj, pickling.IMPORTABLE_KINDS):
        return pickling.is_main_class(obj)
    try:
        return not isinstance(obj.__reduce_ex__(pickle.DEFAULT_PROTOCOL), str)  # a str names a global
    except Exception:  # an object whose __reduce_ex__ fails counts as one whose identity matters
        return True


def main_class_or_pickled(qualname: str, pickled: bytes) -> type:
    """Return the class ``qualname`` of this process's ``__main__``, or unpickle the copy stored by value."""
    found = pickling.find_main_class(qualname)
    if found is not None:
        return found
    return dill.Unpickler(io.BytesIO(pickled)).load()


class _ReduceRecorder:
    """Stands in for the pickler when a reducer registered with ``dill.register`` runs, to keep its save_reduce.

    Any other use of the pickler means the reducer needs dill's own.
    """

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.reduced: tuple | None = None

    def save_reduce(self, func: Any, args: tuple, state: Any = None, listitems: Any = None, dictitems: Any = None,
                    state_setter: Any = None, obj: Any = None) -> None:
        if self.reduced is not None:
            raise _NeedsDill("a registered reducer called save_reduce twice")
        if obj is not self.obj:
            # Without obj=, dill's pickler does not memoize the object and loads each reference as its own copy.
            raise _NeedsDill("a registered reducer called save_reduce without obj=obj")
        self.reduced = (func, args, state, listitems, dictitems, state_setter)

    def __getattr__(self, name: str) -> Any:
        raise _NeedsDill(f"a registered reducer uses pickler.{name}")


def _recorded_reduce(obj: Any) -> tuple:
    recorder = _ReduceRecorder(obj)
    dill.Pickler.dispatch[type(obj)](recorder, obj)
    if recorder.reduced is None:
        raise _NeedsDill("a registered reducer did not call save_reduce")
    return recorder.reduced


def _numpy_needs_dill(kind: type) -> bool:
    """Tell whether dill stores objects of ``kind`` its own way: numpy ufuncs, dtype classes and array subclasses."""
    if not kind.__module__.startswith("numpy"):
        return False
    import numpy

    return kind is not numpy.ndarray and issubclass(kind, (numpy.ufunc, numpy.ndarray))


class CheckpointPickler:
    """The pickler class that ``torch.save`` subclasses, overriding ``persistent_id`` to store tensor storages.

    ``dump`` tries the C pickler and starts over with runner's dill pickler when the C pickler cannot go on.
    """

    def __init__(self, file: BinaryIO, protocol: int | None = None, **kwargs: Any):
        self._file = file
        self._protocol = protocol
        self._kwargs = kwargs

    def persistent_id(self, obj: Any) -> Any:
        return None

    def dump(self, obj: Any) -> None:
        start = self._file.tell()
        if not pickling.plain_types_have_user_reducers():
            try:
                self._dump_with(_CPickler(self._file, self._protocol), obj)
                return
            except Exception:  # whatever stopped the C pickler, dill's pickler stores it or explains the failure
                # NOTE: each __getstate__ or __reduce__ that the C pickler already called runs again in dill's pass,
                # so one with side effects, such as a save counter, applies them twice.
                self._file.seek(start)
                self._file.truncate()
        self._dump_with(Pickler(self._file, self._protocol, **self._kwargs), obj)

    def _dump_with(self, pickler: Any, obj: Any) -> None:
        storage_id = self.persistent_id

        # torch's persistent_id returns an id for storages only. Testing the type here first spares a Python call
        # into torch for each of the thousands of other objects.
        def persistent_id(candidate: Any) -> Any:
            return storage_id(candidate) if isinstance(candidate, _STORAGE_TYPES) else None

        pickler.persistent_id = persistent_id
        pickler.dump(obj)


class PickleModule(types.ModuleType):
    """A module-like object with runner's picklers, in the shape ``torch.save(pickle_module=...)`` expects."""

    Pickler = CheckpointPickler
    Unpickler = dill.Unpickler
    PicklingError = dill.PicklingError
    UnpicklingError = dill.UnpicklingError
    HIGHEST_PROTOCOL = dill.HIGHEST_PROTOCOL

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return dill.Unpickler(file, **kwargs).load()

    @staticmethod
    def dump(obj: Any, file: Any, protocol: int | None = None, **kwargs: Any) -> None:
        CheckpointPickler(file, protocol, **kwargs).dump(obj)


pickle_module = PickleModule("runner.checkpoint.pickle_module")
