"""Capture and restore the random state of every generator a training job draws from.

Built in: Python's ``random``, numpy's global generator when numpy is installed, torch's CPU generator and the
generator of every CUDA device when CUDA is available. ``register_generator`` adds more. Generators are restored
after the strategy is unpickled, because unpickling may draw random numbers (a constructor called on load, say).
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable

import torch

try:
    import numpy
except ImportError:  # numpy is optional
    numpy = None

logger = logging.getLogger(__name__)

GetState = Callable[[], Any]
SetState = Callable[[Any], None]

_generators: dict[str, tuple[GetState, SetState]] = {}
_BUILTIN_NAMES = ("random", "numpy", "torch", "torch.cuda")


def register_generator(name: str, get_state: Any, set_state: SetState | None = None) -> None:
    """Save and restore one more random generator with every checkpoint, under ``name``.

    Pass either two functions, ``get_state()`` returning a picklable state and ``set_state(state)``, or one
    generator object as ``get_state`` and no ``set_state``: a ``torch.Generator``, a ``random.Random``, a
    ``numpy.random.Generator`` or a ``numpy.random.RandomState``. Register the same names, in the same way, before
    ``maybe_load_checkpoint`` in every run of the job.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a random generator needs a non-empty str name, not {name!r}")
    if name in _generators or name in _BUILTIN_NAMES:
        raise ValueError(f"a random generator named {name!r} is already registered; choose another name, or call "
                         "unregister_generator first")
    if set_state is None:
        _generators[name] = _accessors_of(name, get_state)
    elif callable(get_state) and callable(set_state):
        _generators[name] = (get_state, set_state)
    else:
        raise TypeError(f"register_generator({name!r}, ...) takes two callables get_state() and set_state(state), "
                        f"or one generator object; got {get_state!r} and {set_state!r}")


def unregister_generator(name: str) -> None:
    """Stop saving the generator registered as ``name``; do nothing if there is none."""
    _generators.pop(name, None)


def _accessors_of(name: str, generator: Any) -> tuple[GetState, SetState]:
    if isinstance(generator, torch.Generator):
        return (lambda: _tensor_bytes(generator.get_state()),
                lambda state: generator.set_state(_byte_tensor(state)))
    if isinstance(generator, random.Random):
        return generator.getstate, generator.setstate
    if numpy is not None and isinstance(generator, numpy.random.Generator):
        bit_generator = generator.bit_generator
        return (lambda: bit_generator.state), (lambda state: setattr(bit_generator, "state", state))
    if numpy is not None and isinstance(generator, numpy.random.RandomState):
        return generator.get_state, generator.set_state
    raise TypeError(
        f"register_generator({name!r}, ...) without set_state takes a torch.Generator, random.Random, "
        f"numpy.random.Generator or numpy.random.RandomState, not a {type(generator).__qualname__}; pass "
        "get_state and set_state functions for other generators")


def _tensor_bytes(state: torch.Tensor) -> bytes:
    """Return a torch generator state as bytes, which ``map_location`` leaves alone on load."""
    return state.cpu().numpy().tobytes()


def _byte_tensor(state: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(state), dtype=torch.uint8)


def _get_cuda_states() -> list[bytes] | None:
    if not torch.cuda.is_available():
        return None
    return [_tensor_bytes(state) for state in torch.cuda.get_rng_state_all()]


def _set_cuda_states(states: list[bytes] | None) -> None:
    if states is None:
        if torch.cuda.is_available():
            logger.warning("the checkpoint was saved without CUDA, so the CUDA random generators keep their state")
        return
    if not torch.cuda.is_available():
        logger.warning("the checkpoint contains the random state of %d CUDA devices, but CUDA is not available here; "
                       "it is not restored", len(states))
        return
    count = torch.cuda.device_count()
    if len(states) != count:
        logger.warning("the checkpoint contains the random state of %d CUDA devices and this process sees %d; "
                       "restoring the first %d", len(states), count, min(count, len(states)))
    for index, state in enumerate(states[:count]):
        torch.cuda.set_rng_state(_byte_tensor(state), index)


def _builtin_generators() -> dict[str, tuple[GetState, SetState]]:
    builtin: dict[str, tuple[GetState, SetState]] = {
        "random": (random.getstate, random.setstate),
        "torch": (lambda: _tensor_bytes(torch.get_rng_state()), lambda state: torch.set_rng_state(_byte_tensor(state))),
        "torch.cuda": (_get_cuda_states, _set_cuda_states),
    }
    if numpy is not None:
        builtin["numpy"] = (numpy.random.get_state, numpy.random.set_state)
    return builtin


def capture() -> dict[str, Any]:
    """Return the current state of every built-in and registered generator, by name."""
    generators = {**_builtin_generators(), **_generators}
    return {name: get_state() for name, (get_state, _) in generators.items()}


def restore(states: dict[str, Any]) -> None:
    """Set every generator that has a state in ``states``; warn about those on only one side."""
    generators = {**_builtin_generators(), **_generators}
    for name, state in states.items():
        if name not in generators:
            logger.warning("the checkpoint contains the state of random generator %r, which this process has not "
                           "registered; register it before maybe_load_checkpoint to restore it", name)
            continue
        try:
            generators[name][1](_upgraded(name, state))
        except Exception as error:  # a user's set_state may raise anything
            raise ValueError(f"restoring the state of random generator {name!r} failed: "
                             f"{type(error).__name__}: {error}") from error
    for name in generators.keys() - states.keys():
        logger.warning("the checkpoint contains no state for random generator %r, so it keeps its current state", name)


def _upgraded(name: str, state: Any) -> Any:
    """Accept the tensor states that runner 0.1.0 checkpoints hold for torch's generators."""
    if name == "torch" and isinstance(state, torch.Tensor):
        return _tensor_bytes(state)
    if name == "torch.cuda" and isinstance(state, (list, tuple)):
        return [_tensor_bytes(part) if isinstance(part, torch.Tensor) else part for part in state]
    return state
