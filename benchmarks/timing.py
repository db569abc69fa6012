"""Ratios of a candidate's time to a baseline's, measured in one run so that machine noise cancels.

Every action runs once per turn, each after the same preparation, and a ratio is of two medians over the turns. A
slow moment of the machine then hits all sides alike. The order of the actions rotates from turn to turn, so that
each runs in every position equally often. On a virtual machine that hands freed memory back to its host (free
page reporting), a large write runs 2x to 5x slower in some turns than in others, whichever side it belongs to.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def in_turns(actions: dict[str, Callable[[], object]], repeats: int, prepare: Callable[[], object] | None = None,
             warmup: int = 1) -> dict[str, list[float]]:
    """Return the seconds of each action over ``repeats`` turns, after ``warmup`` untimed turns.

    ``prepare`` runs before every action, untimed, to give each the same starting condition.
    """
    times: dict[str, list[float]] = {name: [] for name in actions}
    names = list(actions)
    for turn in range(warmup + repeats):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            if prepare is not None:
                prepare()
            elapsed = timed(actions[name])
            if turn >= warmup:
                times[name].append(elapsed)
    return times


def ratio(times: dict[str, list[float]], candidate: str, baseline: str) -> float:
    """Return the median time of ``candidate`` over the median time of ``baseline``."""
    return statistics.median(times[candidate]) / statistics.median(times[baseline])


def medians_s(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: round(statistics.median(values), 4) for name, values in times.items()}
