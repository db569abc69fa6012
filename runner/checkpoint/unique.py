"""Objects stored by their constructor arguments, and reused on load instead of rebuilt.

A large data set in a checkpoint costs disk, time and memory twice: once in the file and once more when the
loaded copy sits beside the one the job already built. ``constructor_based_serialization`` stores such an object
as its class and constructor arguments only. With ``deduplicate=True``, ``maybe_load_checkpoint(unique_objects=...)``
hands back the live object whose class and arguments match, so the loaded strategy refers to the very same object.
"""

from __future__ import annotations

import hashlib
import io
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from runner.checkpoint.pickling import DiscardingSink, Pickler, SaveContext, current_load_context

try:
    import numpy
except ImportError:  # numpy is optional
    numpy = None

logger = logging.getLogger(__name__)

_KEY_PROTOCOL = 4


class UnkeyableArgumentsError(TypeError):
    """The constructor arguments of an object cannot be turned into a matching key."""


def constructor_based_serialization(
    pickler: Any,
    obj: Any,
    cls: type,
    deduplicate: bool = False,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Save ``obj`` as ``cls(*args, **kwargs)``: call it from a dill reducer registered for ``cls``.

    Loading calls the constructor again, unless ``deduplicate`` is true and an object passed in
    ``maybe_load_checkpoint(unique_objects=...)`` has the same class and arguments: then that object itself is
    used. Only state that the constructor rebuilds from its arguments survives, so use this for objects that do
    not change after construction, such as data sets::

        @dill.register(MyDataset)
        def save_my_dataset(pickler, obj):
            constructor_based_serialization(pickler, obj, MyDataset, deduplicate=True,
                                            kwargs={"root": obj.root, "train": obj.train})

    With ``deduplicate``, the arguments must pickle to the same bytes in every process for equal values; tensors,
    arrays, sets and dicts are compared by content. Arguments that cannot be pickled raise
    UnkeyableArgumentsError naming the argument.
    """
    if not isinstance(obj, cls):
        raise TypeError(f"constructor_based_serialization got a {type(obj).__qualname__} to save as a "
                        f"{cls.__qualname__}: pass the class of the object, or a base class of it")
    args, kwargs = _checked_arguments(cls, args, kwargs)
    if deduplicate and not isinstance(pickler, _KeyPickler):  # a key pickler writes the arguments into its key
        key = object_key(cls, args, kwargs)  # fails here, at save time, when the arguments cannot be keyed
        if isinstance(pickler, RegisteringPickler):
            pickler.registry.add(key, obj)
    pickler.save_reduce(construct, (cls, deduplicate, args, kwargs), obj=obj)


def _checked_arguments(cls: type, args: Any, kwargs: Any) -> tuple[tuple, dict]:
    if isinstance(args, (str, bytes, Mapping)) or (args is not None and not isinstance(args, Sequence)):
        raise TypeError(f"args for {cls.__qualname__} must be a list or tuple of positional arguments, not {args!r}")
    if kwargs is not None and not (isinstance(kwargs, Mapping) and all(isinstance(k, str) for k in kwargs)):
        raise TypeError(f"kwargs for {cls.__qualname__} must be a dict of keyword arguments, not {kwargs!r}")
    return tuple(args or ()), dict(kwargs or {})


def construct(cls: type, deduplicate: bool, args: tuple, kwargs: dict) -> Any:
    """Rebuild an object saved by ``constructor_based_serialization``, or reuse a matching unique object."""
    registry = current_load_context().unique_objects
    if deduplicate and registry is not None:
        try:
            match = registry.find(object_key(cls, args, kwargs))
        except UnkeyableArgumentsError as error:
            logger.warning("rebuilding a %s without looking for a unique object to reuse: %s", cls.__qualname__, error)
            match = None
        if match is not None:
            return match
        registry.rebuilt[cls.__qualname__] += 1
    return cls(*args, **kwargs)


def object_key(cls: type, args: tuple, kwargs: dict) -> str:
    """Return a SHA-256 hex digest of ``cls`` and its arguments, equal in every process for equal arguments."""
    record = (cls.__module__, cls.__qualname__, args, sorted(kwargs.items()))
    try:
        return hashlib.sha256(_canonical_bytes(record)).hexdigest()
    except Exception as error:  # any failure of a user's __reduce__ means: cannot be keyed
        culprit = _first_unkeyable(args, kwargs)
        raise UnkeyableArgumentsError(
            f"the constructor arguments of {cls.__module__}.{cls.__qualname__} cannot be keyed to find a unique "
            f"object on load: {culprit} cannot be pickled ({type(error).__name__}: {error}); pass arguments that "
            "pickle, or call constructor_based_serialization with deduplicate=False") from error


def _first_unkeyable(args: tuple, kwargs: dict) -> str:
    labelled = [(f"positional argument {index}", value) for index, value in enumerate(args)]
    labelled += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
    for label, value in labelled:
        try:
            _canonical_bytes(value)
        except Exception:  # the label of the first failing argument is all that is wanted here
            return f"{label} ({type(value).__qualname__})"
    return "an argument"


def _canonical_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _KeyPickler(buffer, _KEY_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _tensor_record(tensor: torch.Tensor) -> tuple:
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return "torch.Tensor", str(tensor.dtype), tuple(tensor.shape), str(tensor.device), hashlib.sha256(data).digest()


class _KeyPickler(Pickler):
    """Runner's pickler writing a canonical form: tensors by content, sets and dicts in a fixed order."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._context = SaveContext()  # a key must not depend on what the save in progress excludes

    def persistent_id(self, obj: Any) -> Any:
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return tuple, (_tensor_record(obj),)
        if isinstance(obj, (set, frozenset)):
            return frozenset, (tuple(sorted(obj, key=_canonical_bytes)),)
        if type(obj) is dict and not _is_module_namespace(obj):  # dill stores a module's namespace by name
            items = sorted(obj.items(), key=lambda pair: _canonical_bytes(pair[0]))
            return dict, (), None, None, iter(items)
        return super().reducer_override(obj)


def _is_module_namespace(mapping: dict) -> bool:
    module = sys.modules.get(mapping.get("__name__")) if isinstance(mapping.get("__name__"), str) else None
    return module is not None and vars(module) is mapping


@dataclass
class Registry:
    """The unique objects of one load, by key, and the classes rebuilt for want of a match."""

    objects: dict[str, Any] = field(default_factory=dict)
    rebuilt: Counter = field(default_factory=Counter)
    reused: int = 0

    def add(self, key: str, obj: Any) -> None:
        self.objects.setdefault(key, obj)

    def find(self, key: str) -> Any:
        match = self.objects.get(key)
        if match is not None:
            self.reused += 1
        return match


class RegisteringPickler(Pickler):
    """Walks unique objects the way a save would, registering each one saved with ``deduplicate=True``.

    It writes to a sink that discards everything, skips tensor and array data, and steps over parts that cannot be
    pickled, so that a benchmark object holding data sets among other things can be passed whole.
    """

    def __init__(self, registry: Registry):
        super().__init__(DiscardingSink(), _KEY_PROTOCOL)
        self.registry = registry
        self.skipped = 0

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, (torch.UntypedStorage, torch.TypedStorage)):
            return "storage"  # tensor data cannot hold unique objects
        return None

    def reducer_override(self, obj: Any) -> Any:
        if numpy is not None and isinstance(obj, numpy.ndarray) and not obj.dtype.hasobject:
            return int, ()  # nor can an array of numbers
        return super().reducer_override(obj)

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        try:
            super().save(obj, save_persistent_id)
        except UnkeyableArgumentsError:
            raise
        except Exception as error:  # a part that cannot be pickled contains no object that a save could reuse
            self.skipped += 1
            logger.debug("skipped a %s while looking for unique objects: %s", type(obj).__qualname__, error)


def register_unique_objects(unique_objects: Any) -> Registry:
    """Find every object in ``unique_objects`` (one object, or any structure holding some) that can be reused."""
    registry = Registry()
    RegisteringPickler(registry).dump(unique_objects)
    if not registry.objects:
        logger.warning(
            "unique_objects contains no object whose dill reducer calls constructor_based_serialization(..., "
            "deduplicate=True), so nothing can be reused and every such object in the checkpoint is rebuilt")
    return registry


def report_rebuilt(registry: Registry) -> None:
    """Log the objects that were rebuilt although unique objects were given: each is a copy in memory."""
    if registry.rebuilt:
        counts = ", ".join(f"{count} {name}" for name, count in sorted(registry.rebuilt.items()))
        logger.warning("no unique object matched the class and arguments of %s in the checkpoint, so these were "
                       "rebuilt from their arguments", counts)
    logger.debug("reused %d unique objects", registry.reused)

