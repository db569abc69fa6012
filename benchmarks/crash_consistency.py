"""Kill a checkpoint writer with SIGKILL at every step of its saves, and at random moments; report what broke.

Usage: python benchmarks/crash_consistency.py [--random-kills N] [--max-delay-ms MS] [--seed S] [--folder DIR]

A writer making three saves reaches over 200 kill points ``STEP:N``: each named step of the transaction three
times, and every write call into the temp files. Each kill point gets a fresh folder, a real forked writer and a
real SIGKILL. Then ``--random-kills`` more writers, saving without pause, are killed from outside after a random
delay. Each outcome is checked as ``tests/crash_harness.py`` describes. Exits 1 if any kill broke a guarantee.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import crash_harness  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random-kills", type=int, default=50, metavar="N",
                        help="writers to kill from outside at a random moment (default: 50)")
    parser.add_argument("--max-delay-ms", type=float, default=60.0, metavar="MS",
                        help="maximum random delay before an outside kill, in milliseconds (default: 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random delays (default: 0)")
    parser.add_argument("--folder", type=Path, help="where to make one folder per kill (default: a temp folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="crash-consistency-", dir=args.folder) as root:
        root_path = Path(root)
        step_counts = crash_harness.count_steps(root_path / "trace")
        points = crash_harness.all_kill_points(step_counts)
        started = time.perf_counter()
        outcomes = [crash_harness.run_kill_point(root_path / f"point-{i}", point) for i, point in enumerate(points)]
        step_s = time.perf_counter() - started

        delays = random.Random(args.seed)
        started = time.perf_counter()
        outcomes += [
            crash_harness.run_random_kill(root_path / f"random-{i}", delays.uniform(0, args.max_delay_ms) / 1000)
            for i in range(args.random_kills)
        ]
        random_s = time.perf_counter() - started

    _report(outcomes, len(points), step_s, random_s)
    return 1 if any(outcome.problems for outcome in outcomes) else 0


def _report(outcomes: list[crash_harness.Outcome], step_points: int, step_s: float, random_s: float) -> None:
    broken = [outcome for outcome in outcomes if outcome.problems]
    in_flight_kept = sum(1 for outcome in outcomes if outcome.in_flight is not None and outcome.loaded == outcome.in_flight)
    print(f"kill points at named steps: {step_points}, in {step_s:.1f} s")
    print(f"kills from outside at random delays: {len(outcomes) - step_points}, in {random_s:.1f} s")
    print(f"kills after the in-flight rename, which kept the new checkpoint: {in_flight_kept}")
    print(f"kill points that broke a guarantee: {len(broken)}")
    for outcome in broken:
        print(f"  {outcome.kill_at}: " + "; ".join(outcome.problems))


if __name__ == "__main__":
    sys.exit(main())
