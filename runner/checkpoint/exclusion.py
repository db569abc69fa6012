"""``exclude``: attributes a checkpoint leaves out and that the loaded strategy takes from the live one.

An excluded name is an object path such as ``optimizer`` or ``plugins[2].iterator``: the last step names an
attribute, and the steps before it lead from the strategy to the object that has the attribute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from runner.checkpoint import objectpath

logger = logging.getLogger(__name__)

_MODULE_STORES = ("_modules", "_parameters", "_buffers")


@dataclass(frozen=True)
class Exclusion:
    """The attributes one save leaves out, found in the strategy being saved."""

    paths: tuple[str, ...] = ()
    by_holder: dict[int, tuple[Any, frozenset[str]]] = field(default_factory=dict)
    """The id of each object with excluded attributes, mapped to the object and the names of those attributes."""

    def names_for(self, obj: Any) -> frozenset[str] | None:
        entry = self.by_holder.get(id(obj))
        return entry[1] if entry is not None and entry[0] is obj else None


def plan_exclusion(strategy: Any, exclude: Iterable[str] | str | None) -> Exclusion:
    """Check every path in ``exclude`` against ``strategy`` and find the objects that hold the attributes.

    Raise ValueError naming the path when it is malformed or leads to no attribute, before anything is written.
    """
    if exclude is None:
        return Exclusion()
    paths = [exclude] if isinstance(exclude, str) else list(exclude)
    by_holder: dict[int, tuple[Any, set[str]]] = {}
    canonical = []
    for path in paths:
        steps = objectpath.parse(path)
        holder = _holder_of(strategy, steps, path)
        name = steps[-1].value
        _check_attribute(holder, name, path)
        by_holder.setdefault(id(holder), (holder, set()))[1].add(name)
        canonical.append(objectpath.format_path(steps))
    frozen = {key: (holder, frozenset(names)) for key, (holder, names) in by_holder.items()}
    return Exclusion(tuple(sorted(set(canonical))), frozen)


def _holder_of(strategy: Any, steps: tuple[objectpath.Step, ...], path: str) -> Any:
    if not steps[-1].is_attribute:
        raise ValueError(
            f"cannot exclude {path!r}: exclude names attributes, and this path ends with an item; exclude the "
            "attribute that holds the container instead")
    try:
        return objectpath.resolve(strategy, steps[:-1])
    except (AttributeError, LookupError, TypeError) as error:
        raise ValueError(
            f"cannot exclude {path!r}: {objectpath.format_path(steps[:-1], 'strategy')} does not exist "
            f"({type(error).__name__}: {error}); check the path") from error


def _check_attribute(holder: Any, name: str, path: str) -> None:
    if name in getattr(holder, "__dict__", {}) or _in_slots(holder, name):
        return
    holder_type = type(holder).__qualname__
    for store in _MODULE_STORES:
        if name in (getattr(holder, "__dict__", {}).get(store) or {}):
            raise ValueError(
                f"cannot exclude {path!r}: it is a submodule, parameter or buffer of the {holder_type} module, kept "
                f"in its {store} and not as a plain attribute; exclude the module that holds it instead")
    known = sorted(getattr(holder, "__dict__", {}))
    raise ValueError(
        f"cannot exclude {path!r}: a {holder_type} has no instance attribute {name!r} (its attributes: "
        f"{', '.join(known) or 'none'}); fix the name or drop it from exclude")


def _in_slots(holder: Any, name: str) -> bool:
    for cls in type(holder).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        if name in ([slots] if isinstance(slots, str) else slots) and hasattr(holder, name):
            return True
    return False


def reduce_without(obj: Any, names: frozenset[str], protocol: int) -> tuple:
    """Reduce ``obj`` as pickle would, minus the attributes in ``names``."""
    reduced = list(obj.__reduce_ex__(protocol))
    state = reduced[2] if len(reduced) > 2 else None
    if isinstance(state, tuple) and len(state) == 2:
        instance_dict, slots = state
        reduced[2] = (_without(instance_dict, names), _without(slots, names))
    elif isinstance(state, dict):
        reduced[2] = _without(state, names)
    elif state is not None:
        raise TypeError(
            f"cannot exclude attributes {sorted(names)} from a {type(obj).__qualname__}: its pickled state is a "
            f"{type(state).__name__}, not a dict; make its __getstate__ return a dict, or drop them from exclude")
    return tuple(reduced)


def _without(state: dict | None, names: frozenset[str]) -> dict | None:
    if state is None:
        return None
    return {name: value for name, value in state.items() if name not in names}


def restore_excluded(loaded: Any, live: Any, paths: Iterable[str]) -> None:
    """Give each excluded attribute of ``loaded`` the value it has in ``live``, the strategy passed in."""
    for path in paths:
        steps = objectpath.parse(path)
        name = steps[-1].value
        try:
            live_holder = objectpath.resolve(live, steps[:-1])
            loaded_holder = objectpath.resolve(loaded, steps[:-1])
        except (AttributeError, LookupError, TypeError) as error:
            logger.warning("excluded attribute %s was not restored: %s is missing (%s)",
                           path, objectpath.format_path(steps[:-1], "strategy"), error)
            continue
        if not hasattr(live_holder, name):
            logger.warning("excluded attribute %s was not restored: the strategy passed in has no value for it, so "
                           "the loaded strategy has none either", path)
            continue
        setattr(loaded_holder, name, getattr(live_holder, name))
