"""Goodput of the digits example preempted on a fixed schedule, under three checkpoint policies.

Goodput is the wall time of an uninterrupted run over the wall time of a preempted run that trains the same
model: the share of the time spent on work that counts. Every run goes through ``runner local``, which preempts
each attempt once, PREEMPT_AFTER seconds after it starts, up to a number of preemptions, and kills a job that
has not stopped within the grace period and kill wait:

- ``iteration``: runner's, ``--checkpoint-on-signal iteration``: save and stop after the iteration in progress;
- ``experience``: checkpoints only at experience boundaries, so a job killed before the next one loses the
  experience's progress;
- ``scratch``: no resume: each attempt removes the checkpoints and starts from the beginning.
"""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "split_digits.py"
POLICIES = ("iteration", "experience", "scratch")


@dataclass(frozen=True)
class Schedule:
    """The preemptions of one goodput measurement, in seconds."""

    epochs: int
    preemptions: int
    preempt_after_s: float
    rounds: int = 1
    """How many times each run is repeated, in turns; goodput uses the median wall times."""
    grace_s: float = 0.5
    """Shorter than an experience, as a grace period of minutes is shorter than experiences of hours."""
    kill_wait_s: float = 0.5


def measure_goodput(folder: Path, schedule: Schedule) -> dict:
    """Run the example uninterrupted and under each policy, in turns; return each policy's goodput and wall times."""
    walls_s: dict[str, list[float]] = {name: [] for name in ("uninterrupted", *POLICIES)}
    reference_sha256 = None
    for round_index in range(schedule.rounds):
        for name in walls_s:
            workdir = folder / f"{name}-{round_index}"
            wall_s, final = _run(workdir, schedule, name, preempted=name != "uninterrupted")
            reference_sha256 = reference_sha256 or final["params_sha256"]
            if final["params_sha256"] != reference_sha256:
                raise RuntimeError(f"the {name} run ended with other parameters than the uninterrupted run")
            walls_s[name].append(wall_s)
    reference_s = statistics.median(walls_s["uninterrupted"])
    return {
        "reference_wall_s": round(reference_s, 2),
        "schedule": schedule.__dict__,
        "policies": {policy: {"goodput": round(reference_s / statistics.median(walls_s[policy]), 3),
                              "wall_s": [round(wall_s, 2) for wall_s in walls_s[policy]]}
                     for policy in POLICIES},
    }


def _run(workdir: Path, schedule: Schedule, policy: str, preempted: bool) -> tuple[float, dict]:
    example = [sys.executable, str(EXAMPLE), "--workdir", str(workdir), "--epochs", str(schedule.epochs)]
    if policy == "iteration":
        example += ["--checkpoint-on-signal", "iteration"]
    if policy == "scratch":
        remove = f"rm -f {shlex.quote(str(workdir))}/checkpoint.pkl*"
        example = ["sh", "-c", f"{remove}; exec {shlex.join(example)}"]
    scheduler = [sys.executable, "-m", "runner.cli", "local"]
    if preempted:
        scheduler += ["--preempt-after", str(schedule.preempt_after_s), "--max-preemptions",
                      str(schedule.preemptions), "--grace", str(schedule.grace_s), "--kill-wait",
                      str(schedule.kill_wait_s), "--max-restarts", str(schedule.preemptions + 2)]
    started = time.perf_counter()
    result = subprocess.run([*scheduler, "--", *example], capture_output=True, text=True, timeout=900)
    wall_s = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"the {policy} run failed with status {result.returncode}:\n{result.stderr[-3000:]}")
    return wall_s, json.loads((workdir / "final.json").read_text())
