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
from typing import Any, Iterable

from runner import protocol

logger = logging.getLogger(__name__)

DEFAULT_SIGNAL = signal.SIGUSR1
UNCATCHABLE_SIGNALS = (signal.SIGKILL, signal.SIGSTOP)
"""Signals no process can handle, so a job could never save on them."""

WATCH_SIGTERM_VAR = "RUNNER_WATCH_SIGTERM"
"""Set to ``0`` to let SIGTERM keep its default action (end the process) instead of being recorded as a stop request."""


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


def default_watch_sigterm() -> bool:
    """Return whether SIGTERM is watched: yes unless ``RUNNER_WATCH_SIGTERM`` is ``0``, ``false`` or ``no``."""
    value = os.environ.get(WATCH_SIGTERM_VAR, "1").strip().lower()
    if value in ("1", "true", "yes", ""):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"{WATCH_SIGTERM_VAR}={value!r} is not a boolean; set it to 1 or 0, or unset it")


@dataclass(frozen=True)
class SignalRecord:
    """One delivery of a watched signal."""

    signal: signal.Signals
    received_at: float
    """``time.time()`` when it arrived."""
    received_monotonic: float


class PreemptionWatcher:
    """Recorder of preemption signals. Once one arrived, ``requested`` is true and the training loop stops at its next safe point.

    SIGTERM is watched too, as a stop request. SLURM sends it with the preemption signal when the partition has no
    GraceTime, and some clusters send only SIGTERM before SIGKILL, so dying from it would lose the work done since
    the last checkpoint. A handler that another library installed before on the same signal is called after runner
    records the signal, so neither is dropped. A watcher installed over another runner watcher copies the records
    that one holds, so a signal that arrived before it was installed still counts.
    """

    def __init__(self, signals: Iterable[str | int | signal.Signals] | None = None,
                 watch_sigterm: bool | None = None):
        self.signals = [parse_signal(s) for s in signals] if signals is not None else default_signals()
        """The preemption signals."""
        for sig in self.signals:
            if sig in UNCATCHABLE_SIGNALS:
                raise ValueError(
                    f"invalid preemption signal {sig.name}: no process can catch it, so the job could not save "
                    f"before stopping; set {protocol.PREEMPT_SIGNAL_VAR} or the signals argument to USR1, USR2 or TERM")
        self.watch_sigterm = default_watch_sigterm() if watch_sigterm is None else watch_sigterm
        self.records: list[SignalRecord] = []
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def watched_signals(self) -> list[signal.Signals]:
        """The preemption signals, and SIGTERM unless ``watch_sigterm`` is false."""
        watched = list(dict.fromkeys(self.signals))
        if self.watch_sigterm and signal.SIGTERM not in watched:
            watched.append(signal.SIGTERM)
        return watched

    @property
    def requested(self) -> bool:
        return bool(self.records)

    @property
    def first(self) -> SignalRecord | None:
        return self.records[0] if self.records else None

    def install(self) -> "PreemptionWatcher":
        for sig in self.watched_signals:
            if sig not in self._previous:
                previous = signal.signal(sig, self._handle)
                self._previous[sig] = previous
                self._adopt_records(previous)
        return self

    def _adopt_records(self, previous: Any) -> None:
        other = getattr(previous, "__self__", None)
        if isinstance(other, PreemptionWatcher) and other is not self:
            known = set(self.records)
            self.records.extend(record for record in other.records if record not in known)
            self.records.sort(key=lambda record: record.received_monotonic)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def ignore_further(self) -> None:
        """Ignore the watched signals from now on: the job is stopping, and a repeated signal during interpreter
        shutdown would otherwise kill it with the default action."""
        for sig in self.watched_signals:
            signal.signal(sig, signal.SIG_IGN)

    def _handle(self, signum: int, frame: Any) -> None:
        self.records.append(SignalRecord(signal.Signals(signum), time.time(), time.monotonic()))
        previous = self._previous.get(signal.Signals(signum))
        # Python's own SIGINT handler raises KeyboardInterrupt, which would end the job before its next safe point.
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)

    def __enter__(self) -> "PreemptionWatcher":
        return self.install()

    def __exit__(self, *exc_info: Any) -> None:
        self.uninstall()
