"""Kill a real checkpoint writer with SIGKILL at a named step of its save, then check what it left behind.

A forked child saves checkpoints 3, 4 and 5 on top of committed checkpoints 1 and 2, and reports the start and the
return of each save through a pipe. ``RUNNER_TEST_KILL_AT`` makes it kill itself at one step of the save transaction
(see ``runner.checkpoint.faults``). The parent then checks that the newest loadable checkpoint is the last
committed one, that every kept checkpoint is valid, and that the next save succeeds, removes the dead writer's temp
file, prunes to ``keep`` and touches no foreign file. ``tests/test_fault_injection.py`` runs a sample of the kill
points; ``benchmarks/crash_consistency.py`` runs all of them.
"""

from __future__ import annotations

import collections
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

import runner
from runner.checkpoint import faults, inventory, tempfiles

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY = (1, 2)
"""Experience counters committed before the child starts."""
CHILD_COUNTERS = (3, 4, 5)
KEEP = 2
_MAX_COUNTER = 3000
"""Past the saves a writer killed from outside can make: its reports must fit in the pipe unread."""
POST_RENAME_STEPS = {"replaced", "folder-fsynced", "pruning", "pruned", "lock-releasing"}
"""Steps reached only after the save's rename: a kill there leaves the in-flight checkpoint committed."""
FOREIGN_NAMES = (
    f".{CHECKPOINT_NAME}.runner-tmp-notes",  # runner's marker, but not a pid and hex
    f"{CHECKPOINT_NAME}.bak",
    f"{CHECKPOINT_NAME}.7.partial",
    ".other.pt.runner-tmp-999999999-abcd",  # a temp file of another checkpoint
)


class Model:
    """A strategy stand-in: several tensors, so one save makes many write calls."""

    def __init__(self, exp_counter: int):
        self.exp_counter = exp_counter
        self.weights = [torch.full((256,), float(exp_counter)) for _ in range(8)]
        self.history = list(range(exp_counter))


@dataclass
class Outcome:
    """What one kill point left behind, and every way it broke the guarantees."""

    kill_at: str
    killed: bool = False
    returned: list[int] = field(default_factory=list)
    in_flight: int | None = None
    expected: int | None = None
    loaded: int | None = None
    problems: list[str] = field(default_factory=list)


def prepare(folder: Path) -> Path:
    """Commit the history checkpoints and plant foreign files in ``folder``; return the checkpoint path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_NAME
    for counter in HISTORY:
        runner.save_checkpoint(Model(counter), path, keep=KEEP)
    runner.wait_for_saves()  # no unlink in flight in the thread that fork does not copy
    for name in FOREIGN_NAMES:
        (folder / name).write_text("not runner's\n")
    return path


def count_steps(folder: Path) -> collections.Counter[str]:
    """Run the child's saves with tracing instead of a kill; return how often each step is reached."""
    path = prepare(folder)
    trace = folder / "trace.txt"
    status, events = _run_child(path, {faults.TRACE_ENV_VAR: str(trace)})
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise RuntimeError(f"the traced writer failed (wait status {status:#x}): " + "\n".join(events))
    return collections.Counter(line.split()[1] for line in trace.read_text().splitlines())


def all_kill_points(step_counts: collections.Counter[str]) -> list[str]:
    """Every ``STEP:N`` the child reaches, in the order of the transaction."""
    return [f"{step}:{n}" for step in faults.STEPS for n in range(1, step_counts[step] + 1)]


def run_kill_point(folder: Path, kill_at: str) -> Outcome:
    """Kill the writer at ``kill_at`` (``STEP:N``) and check; the expected checkpoint follows from the step."""
    path = prepare(folder)
    outcome = Outcome(kill_at)
    pid, events = _start_child(path, {faults.KILL_ENV_VAR: kill_at}, CHILD_COUNTERS)
    if _record_kill(outcome, *_finish_child(pid, events)):
        last_committed = outcome.returned[-1] if outcome.returned else HISTORY[-1]
        renamed = kill_at.split(":")[0] in POST_RENAME_STEPS and outcome.in_flight is not None
        outcome.expected = outcome.in_flight if renamed else last_committed
        check(path, outcome, {outcome.expected})
    return outcome


def run_random_kill(folder: Path, delay_s: float) -> Outcome:
    """Kill a writer that saves without pause from outside, after ``delay_s``, and check.

    The kill can land anywhere, inside torch.save or the kernel included. The newest checkpoint must then be the
    last one whose save returned, or the one in flight if its rename happened.
    """
    path = prepare(folder)
    outcome = Outcome(f"after {delay_s * 1000:.1f} ms")
    pid, events = _start_child(path, {}, range(HISTORY[-1] + 1, _MAX_COUNTER))
    time.sleep(delay_s)
    os.kill(pid, signal.SIGKILL)
    if _record_kill(outcome, *_finish_child(pid, events)):
        last_committed = outcome.returned[-1] if outcome.returned else HISTORY[-1]
        check(path, outcome, {last_committed, outcome.in_flight})
    return outcome


def _record_kill(outcome: Outcome, status: int, events: list[str]) -> bool:
    outcome.killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if not outcome.killed:
        outcome.problems.append(f"the writer was not killed by SIGKILL (wait status {status:#x}): {events}")
        return False
    started = [int(event.split()[1]) for event in events if event.startswith("start")]
    outcome.returned = [int(event.split()[1]) for event in events if event.startswith("done")]
    outcome.in_flight = started[-1] if started and started[-1] not in outcome.returned else None
    return True


def check(path: Path, outcome: Outcome, allowed: set[int | None]) -> None:
    """Check the files the killed writer left, then save once more and check again."""
    statuses = inventory.examine_all(str(path))
    for status in statuses:
        if not status.valid:
            outcome.problems.append(f"kept checkpoint {status.path} is invalid: {status.problem}")
    loaded, counter = runner.maybe_load_checkpoint(None, path)
    outcome.loaded = counter
    if counter not in allowed:
        expected = " or ".join(str(value) for value in sorted(value for value in allowed if value is not None))
        outcome.problems.append(f"loaded experience {counter}, expected {expected}")
    elif not torch.equal(loaded.weights[0], torch.full((256,), float(counter))):
        outcome.problems.append(f"checkpoint of experience {counter} holds another experience's weights")

    runner.save_checkpoint(Model(counter + 1), path, keep=KEEP)
    runner.wait_for_saves()  # the old files that the save renamed are unlinked
    _check_after_next_save(path, counter, outcome)


def _check_after_next_save(path: Path, counter: int, outcome: Outcome) -> None:
    folder = path.parent
    temps = [name for name in os.listdir(folder)
             if tempfiles.writer_pid(CHECKPOINT_NAME, name) is not None or tempfiles.is_trash(CHECKPOINT_NAME, name)]
    if temps:
        outcome.problems.append(f"temp files left after the next save: {temps}")
    kept = [status.header["exp_counter"] for status in inventory.examine_all(str(path)) if status.valid]
    if kept != [counter + 1, counter]:
        outcome.problems.append(f"after the next save the kept experiences are {kept}, expected {[counter + 1, counter]}")
    for name in FOREIGN_NAMES:
        if not (folder / name).exists():
            outcome.problems.append(f"foreign file {name} was removed")


def _run_child(path: Path, environment: dict[str, str]) -> tuple[int, list[str]]:
    return _finish_child(*_start_child(path, environment, CHILD_COUNTERS))


def _start_child(path: Path, environment: dict[str, str], counters: Iterable[int]) -> tuple[int, int]:
    """Fork a writer that saves ``counters`` to ``path``; return its pid and the pipe it reports its saves on."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into the caller's code
        os.close(read_end)
        code = 0
        try:
            os.environ.update(environment)
            for counter in counters:
                os.write(write_end, f"start {counter}\n".encode())
                runner.save_checkpoint(Model(counter), path, keep=KEEP)
                os.write(write_end, f"done {counter}\n".encode())
            runner.wait_for_saves()  # os._exit does not wait for the unlink thread
        except BaseException:
            os.write(write_end, traceback.format_exc().encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def _finish_child(pid: int, read_end: int) -> tuple[int, list[str]]:
    """Read the child's reports until it exits; return its wait status and the reports, one per line."""
    with os.fdopen(read_end, "rb") as events:
        output = events.read().decode()
    _, status = os.waitpid(pid, 0)
    return status, output.splitlines()
