"""Named steps of the save transaction, where fault-injection tests kill the writer or trace what it does.

Both hooks are off unless their environment variable is set, and exist for tests only:

- ``RUNNER_TEST_KILL_AT=STEP`` or ``STEP:N`` makes the process send itself SIGKILL the Nth time (default: the
  first) it reaches STEP.
- ``RUNNER_TEST_TRACE=FILE`` appends ``<pid> <step>`` to FILE at every step, with one ``O_APPEND`` write per line
  so that lines from several processes never mix.
"""

from __future__ import annotations

import collections
import os
import signal

KILL_ENV_VAR = "RUNNER_TEST_KILL_AT"
TRACE_ENV_VAR = "RUNNER_TEST_TRACE"

STEPS = (
    "lock-acquired",  # the save's lock is held
    "stale-temps-removed",  # temp files of dead writers are gone
    "temp-created",  # the empty temp file exists
    "write",  # one write call into the temp file, reached many times per save
    "written",  # the whole file went to the temp file, not yet flushed
    "fsynced",  # the temp file is flushed, fsynced and closed
    "linked",  # the previous checkpoint has its numbered name
    "replaced",  # the temp file was renamed over the checkpoint
    "folder-fsynced",  # the rename is durable
    "pruning",  # one old numbered checkpoint is about to be removed
    "pruned",  # retention clean-up finished
    "lock-releasing",  # the lock is about to be released
)

_reached_counts: collections.Counter[str] = collections.Counter()


def reached(step: str) -> None:
    """Record that this process reached ``step``: trace it, or die here if a test asked for it."""
    kill_at = os.environ.get(KILL_ENV_VAR)
    trace_path = os.environ.get(TRACE_ENV_VAR)
    if not kill_at and not trace_path:
        return
    _reached_counts[step] += 1
    if trace_path:
        _append_line(trace_path, f"{os.getpid()} {step}\n")
    if kill_at and _kill_target(kill_at) == (step, _reached_counts[step]):
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_target(text: str) -> tuple[str, int]:
    step, _, count = text.partition(":")
    if step not in STEPS or (count and not count.isdigit()):
        raise ValueError(f"invalid {KILL_ENV_VAR}={text!r}: give STEP or STEP:N, with STEP one of {', '.join(STEPS)}")
    return step, int(count or 1)


def _append_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
