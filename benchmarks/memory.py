"""Peak memory that a save adds beyond the state, measured in a fresh process from the kernel's counters.

Usage: python benchmarks/memory.py --size-mib N --folder DIR   (prints one JSON object)

The child builds the state, resets the peak resident set size (``/proc/self/clear_refs``), saves, and reads the
new peak (``VmHWM`` in ``/proc/self/status``). The extra peak is that minus the resident size before the save.
``tracemalloc`` would miss it: torch allocates outside Python's allocator. Linux only.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

import dill
import torch

import runner
from checkpoint_io import use_fresh_pages_for_large_allocations
from states import BenchmarkStrategy


def read_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def extra_peak_bytes(action) -> int:
    """Run ``action()`` and return how far the resident set size rose above where it was before."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size
    before_kib = read_status_kib("VmRSS")
    action()
    return (read_status_kib("VmHWM") - before_kib) * 1024


def measure_in_this_process(size_mib: int, folder: Path) -> dict:
    # Memory freed before the save and kept by glibc would hide part of the save's own allocations.
    use_fresh_pages_for_large_allocations()
    strategy = BenchmarkStrategy(size_mib)
    state_bytes = strategy.tensor_bytes()
    path = folder / "memory" / "checkpoint.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    runner.save_checkpoint(strategy, path)  # imports and first-use allocations are not the save's cost
    runner_extra = extra_peak_bytes(lambda: runner.save_checkpoint(strategy, path))
    usual_extra = extra_peak_bytes(lambda: torch.save(strategy, folder / "memory" / "usual.pkl", pickle_module=dill))
    background_extra = extra_peak_bytes(lambda: _save_in_background(strategy, path))
    return {
        "state_bytes": state_bytes,
        "runner_extra_peak_bytes": runner_extra,
        "usual_practice_extra_peak_bytes": usual_extra,
        "background_extra_peak_bytes": background_extra,
        "peak_extra_memory_over_state": runner_extra / state_bytes,
        "background_peak_extra_memory_over_state": background_extra / state_bytes,
    }


def _save_in_background(strategy: BenchmarkStrategy, path: Path) -> None:
    runner.save_checkpoint(strategy, path, background=True)
    runner.wait_for_saves()


def measure(size_mib: int, folder: Path) -> dict:
    """Run the measurement in a fresh Python process and return its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--size-mib", str(size_mib), "--folder", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {result.returncode}:\n{result.stderr}")
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, required=True, help="size of the state's tensors, in MiB")
    parser.add_argument("--folder", type=Path, required=True, help="where to write the checkpoints")
    args = parser.parse_args(argv)
    print(json.dumps(measure_in_this_process(args.size_mib, args.folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
