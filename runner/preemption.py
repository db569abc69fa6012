"""The preemption watcher: a signal handler that only records which signal came and when.

The training loop reads the record at safe points and does the work there (checkpoint, requeue, exit), because a
handler that pickles or calls ``scontrol`` can interrupt the very state it would save.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from runner import protocol

logger = logging.getLogger(__name__)

DEFAULT_SIGNAL = signal.SIGUSR1


def parse_signal(value: str | int | signal.Signals) -> signal.Signals:
    """Turn ``USR1``, ``SIGUSR1``, ``10`` or a ``signal.Signals`` into a ``signal.Signals``."""
    if isinstance(value, signal.Signals):
        return value
    text = str(value).strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise ValueError(f"unknown signal {value!r}; use a name such as USR1, SIGUSR2 or TERM, or a number") from None


def default_signals() -> list[signal.Signals]:
    """Return the preemption signal named by ``RUNNER_PREEMPT_SIGNAL``, or SIGUSR1."""
    configured = os.environ.get(protocol.PREEMPT_SIGNAL_VAR)
    return [parse_signal(configured)] if configured else [DEFAULT_SIGNAL]


@dataclass(frozen=True)
class SignalRecord:
    """One delivery of a watched signal."""

    signal: signal.Signals
    received_at: float
    """``time.time()`` when it arrived."""
    received_monotonic: float


class PreemptionWatcher:
    """Recorder of preemption signals. Once one arrived, ``requested`` is true and the training loop stops at its next safe point.

    A handler that another library installed before on the same signal is called after runner records the signal,
    so neither is dropped.
    """

    def __init__(self, signals: Iterable[str | int | signal.Signals] | None = None):
        self.signals = [parse_signal(s) for s in signals] if signals is not None else default_signals()
        self.records: list[SignalRecord] = []
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        return bool(self.records)

    @property
    def first(self) -> SignalRecord | None:
        return self.records[0] if self.records else None

    def install(self) -> "PreemptionWatcher":
        for sig in self.signals:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def ignore_further(self) -> None:
        """Ignore the watched signals from now on: the job is stopping, and a repeated signal during interpreter
        shutdown would otherwise kill it with the default action."""
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)

    def _handle(self, signum: int, frame: Any) -> None:
        self.records.append(SignalRecord(signal.Signals(signum), time.time(), time.monotonic()))
        previous = self._previous.get(signal.Signals(signum))
        if callable(previous):
            previous(signum, frame)

    def __enter__(self) -> "PreemptionWatcher":
        return self.install()

    def __exit__(self, *exc_info: Any) -> None:
        self.uninstall()
