"""Capture and restore the random state of every generator a training job draws from.

Generators are restored after the strategy itself, so that unpickling cannot disturb the restored state.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch

try:
    import numpy
except ImportError:  # numpy is optional
    numpy = None

_generators: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}


def register_generator(name: str, get_state: Callable[[], Any], set_state: Callable[[Any], None]) -> None:
    """Add a generator whose state every checkpoint saves and restores, under ``name``."""
    if name in _generators:
        raise ValueError(f"a random generator named {name!r} is already registered; choose another name")
    _generators[name] = (get_state, set_state)


def unregister_generator(name: str) -> None:
    _generators.pop(name, None)


def _cuda_get() -> Any:
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _cuda_set(states: Any) -> None:
    if states is None or not torch.cuda.is_available():
        return
    for device_index, state in enumerate(states[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(state.cpu(), device_index)


def _builtin_generators() -> dict[str, tuple[Callable[[], Any], Callable[[Any], None]]]:
    builtin = {
        "random": (random.getstate, random.setstate),
        "torch": (torch.get_rng_state, lambda state: torch.set_rng_state(state.cpu())),
        "torch.cuda": (_cuda_get, _cuda_set),
    }
    if numpy is not None:
        builtin["numpy"] = (numpy.random.get_state, numpy.random.set_state)
    return builtin


def capture() -> dict[str, Any]:
    """Return the current state of every built-in and registered generator."""
    generators = {**_builtin_generators(), **_generators}
    return {name: get_state() for name, (get_state, _) in generators.items()}


def restore(states: dict[str, Any]) -> list[str]:
    """Set every generator found in ``states``; return the names of registered generators that had no state saved."""
    generators = {**_builtin_generators(), **_generators}
    for name, state in states.items():
        if name in generators:
            generators[name][1](state)
    return [name for name in generators if name not in states]
