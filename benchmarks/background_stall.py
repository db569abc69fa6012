"""The stall that a background save causes in the training loop, against a synchronous save of the same state.

The stall is the time until ``save_checkpoint(..., background=True)`` returns: the snapshot into host memory.
Before each turn the previous background save is waited for, untimed, as a training loop that saves once per
experience finds it long committed. The first background save, which allocates the snapshot memory, is a warmup.
A turn takes a fraction of a second, so the figure takes three times the turns of the others: the stall is short,
and its median moves with a few slow turns more than a save's.
"""

from __future__ import annotations

from pathlib import Path

import runner
from states import BenchmarkStrategy
from timing import in_turns, medians_s, ratio


def measure_stall(strategy: BenchmarkStrategy, folder: Path, repeats: int) -> dict:
    background_path = folder / "background" / "checkpoint.pkl"
    sync_path = folder / "sync" / "checkpoint.pkl"
    background_path.parent.mkdir(parents=True)
    sync_path.parent.mkdir(parents=True)

    times = in_turns({
        "background_stall": lambda: runner.save_checkpoint(strategy, background_path, background=True),
        "sync_save": lambda: runner.save_checkpoint(strategy, sync_path),
    }, 3 * repeats, prepare=runner.wait_for_saves, warmup=2)
    runner.wait_for_saves()
    return {
        "async_stall_over_sync_save": ratio(times, "background_stall", "sync_save"),
        "medians_s": medians_s(times),
    }
