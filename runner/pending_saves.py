"""Checkpoint saves still in flight, which a stopping job waits for so that it requeues only once they committed.

``runner.checkpoint.background`` registers its wait function here when it is first imported, and ``runner.Job``
calls ``wait_for_pending_saves`` before it requeues. This module imports nothing heavy, so ``runner.Job`` does not
pull in torch.
"""

from __future__ import annotations

from typing import Callable

_waits: list[Callable[[], None]] = []


def register(wait: Callable[[], None]) -> None:
    """Have ``wait_for_pending_saves`` call ``wait()``, which returns once its saves committed or raises their error."""
    if wait not in _waits:
        _waits.append(wait)


def wait_for_pending_saves() -> None:
    """Wait until every save in flight has committed; raise the error of a save that failed."""
    for wait in list(_waits):
        wait()
