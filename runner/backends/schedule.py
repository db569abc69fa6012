"""Preemption schedules for the local scheduler: when, within an attempt, to announce a preemption.

A schedule yields delays in seconds from the start of an attempt, in increasing order. The scheduler sends the
preemption signal at each delay while the job runs, subject to its cap on preemptions over the whole run.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Iterator, Protocol


class PreemptionSchedule(Protocol):
    """Delays, in seconds from an attempt's start, at which the scheduler sends the preemption signal."""

    def delays_s(self, restart_count: int) -> Iterator[float]:
        """Yield the delays for the attempt started with this SLURM_RESTART_COUNT, in increasing order."""
        ...


def _check_seconds(name: str, value_s: float, *, allow_zero: bool = True) -> None:
    if not math.isfinite(value_s) or value_s < 0 or (value_s == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "more than 0"
        raise ValueError(f"invalid {name}: {value_s!r} seconds; give a finite number of seconds, {bound}")


@dataclass(frozen=True)
class NoPreemption:
    """Never preempt: the job runs until it exits."""

    def delays_s(self, restart_count: int) -> Iterator[float]:
        return iter(())


@dataclass(frozen=True)
class PreemptAfter:
    """Preempt once per attempt, `after_s` seconds after it starts."""

    after_s: float

    def __post_init__(self) -> None:
        _check_seconds("preemption delay", self.after_s)

    def delays_s(self, restart_count: int) -> Iterator[float]:
        return iter((self.after_s,))


@dataclass(frozen=True)
class PreemptEvery:
    """Preempt every `every_s` seconds while an attempt runs, starting `every_s` after it starts."""

    every_s: float

    def __post_init__(self) -> None:
        # Zero would ask for an unbounded burst of signals at the attempt's start.
        _check_seconds("preemption interval", self.every_s, allow_zero=False)

    def delays_s(self, restart_count: int) -> Iterator[float]:
        return (self.every_s * n for n in itertools.count(1))


@dataclass(frozen=True)
class PreemptRandom:
    """Preempt once per attempt, after a delay drawn uniformly from [min_s, max_s].

    The draw depends only on `seed` and the attempt's restart count, so a run with the same seed sends its
    signals at the same offsets, whatever happened in earlier attempts. Without a seed, one is drawn at
    construction and stored in `seed`, so a run can be repeated.
    """

    min_s: float
    max_s: float
    seed: int = field(default_factory=lambda: random.randrange(2**32))

    def __post_init__(self) -> None:
        _check_seconds("minimum preemption delay", self.min_s)
        _check_seconds("maximum preemption delay", self.max_s)
        if self.min_s > self.max_s:
            raise ValueError(
                f"invalid preemption delay range {self.min_s:g}:{self.max_s:g}: "
                "the minimum is greater than the maximum; give MIN:MAX with MIN <= MAX"
            )

    def delays_s(self, restart_count: int) -> Iterator[float]:
        # random.Random turns a str seed into the same number in every process, unlike hash(), which is salted.
        generator = random.Random(f"{self.seed}:{restart_count}")
        return iter((generator.uniform(self.min_s, self.max_s),))


def parse_delay_range(text: str) -> tuple[float, float]:
    """Parse ``MIN:MAX`` in seconds, such as ``30:600``; raise ValueError naming the text when it is invalid."""
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"invalid delay range {text!r}: expected MIN:MAX in seconds, such as 30:600")
    try:
        min_s, max_s = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"invalid delay range {text!r}: MIN and MAX must be numbers of seconds, such as 30:600") from None
    _check_seconds("minimum preemption delay", min_s)
    _check_seconds("maximum preemption delay", max_s)
    if min_s > max_s:
        raise ValueError(f"invalid delay range {text!r}: MIN is greater than MAX; give MIN:MAX with MIN <= MAX")
    return min_s, max_s
