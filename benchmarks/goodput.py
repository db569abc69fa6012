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
    grace_s: float = 0.3
    kill_wait_s: float = 0.3


def measure_goodput(folder: Path, schedule: Schedule) -> dict:
    """Run the example uninterrupted, then under each policy; return the goodput of each and the wall times."""
    reference_s, reference = _run(folder / "uninterrupted", schedule, "experience", preempted=False)
    results = {"reference_wall_s": round(reference_s, 2), "schedule": schedule.__dict__, "policies": {}}
    for policy in POLICIES:
        wall_s, final = _run(folder / policy, schedule, policy, preempted=True)
        if final["params_sha256"] != reference["params_sha256"]:
            raise RuntimeError(f"the {policy} run ended with other parameters than the uninterrupted run")
        results["policies"][policy] = {"goodput": round(reference_s / wall_s, 3), "wall_s": round(wall_s, 2),
                                       "restarts": final["restarts"]}
    return results


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
