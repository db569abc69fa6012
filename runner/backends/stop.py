"""Record SIGINT, SIGTERM and SIGHUP sent to the scheduler itself, so it can stop its job at a safe point.

SIGHUP comes when the terminal that started the scheduler closes. Without a handler the scheduler would die and
leave its job running unsupervised, because the tasks run in sessions of their own.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """Context manager that installs handlers for the stop signals which only record the signal.

    Python lets only the main thread install signal handlers, so in another thread this records nothing and the
    signals keep their previous handlers.
    """

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        """The first stop signal received, or None."""
        self.count = 0
        """Stop signals received so far."""
        self._previous_handlers: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopRequest:
        self.signal = None
        self.count = 0
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                self._previous_handlers[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
        self.count += 1
