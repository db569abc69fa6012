"""Measure runner against the limits of the machine and the usual practice; print one table, or JSON.

Usage: python benchmarks/run.py [--quick] [--json] [--folder DIR]

Each figure is a ratio of two times measured in turns in this run (see ``timing.py``), so that machine noise
cancels. States of 16 MiB, 256 MiB and 1 GiB of tensors (``--quick``: 16 and 256 MiB, fewer repeats and a
shorter goodput run). With ``--json`` the one object printed has the headline figures as keys, each the worst
over the sizes, and every measurement under ``by_size``, ``checksums_gb_per_s`` and ``goodput``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

import background_stall
import checkpoint_io
import checksum_speed
import goodput
import memory
import unique_objects
from states import BenchmarkStrategy

TARGETS = {
    "save_over_raw_write": ("durable save / raw write + fsync", 1.15),
    "load_over_torch_load": ("verified load / torch.load of the payload", 1.15),
    "peak_extra_memory_over_state": ("extra peak memory of a save / state", 0.25),
    "async_stall_over_sync_save": ("background save stall / synchronous save", 0.2),
}
INFORMATIVE = {
    "save_over_streamed_write": "durable save / streamed raw write + fsync",
    "save_over_usual_practice": "save / torch.save with dill (no fsync)",
    "load_over_usual_practice": "load / torch.load of that file",
    "background_peak_extra_memory_over_state": "extra peak memory of a background save / state",
}
STALL_SIZE_MIB = 256


def run(quick: bool, folder: Path) -> dict:
    checkpoint_io.use_fresh_pages_for_large_allocations()
    sizes = [16, 256] if quick else [16, 256, 1024]
    repeats = 3 if quick else 7
    by_size = {}
    for size_mib in sizes:
        by_size[size_mib] = measure_size(size_mib, repeats, folder / f"{size_mib}-mib", more_turns=not quick)
    schedule = (goodput.Schedule(epochs=30, preemptions=1, preempt_after_s=2.0) if quick
                else goodput.Schedule(epochs=200, preemptions=3, preempt_after_s=6.0, rounds=3))
    results = {
        "quick": quick,
        "machine": machine(),
        "size_growth_10x_data": unique_objects.size_growth_10x_data(),
        "checksums_gb_per_s": checksum_speed.measure_checksums(64 if quick else 256, repeats),
        "goodput": goodput.measure_goodput(folder / "goodput", schedule),
        "by_size": by_size,
    }
    for key in [*TARGETS, *INFORMATIVE]:
        values = [figures[key] for figures in by_size.values() if key in figures]
        results[key] = round(max(values), 3)
    return results


def measure_size(size_mib: int, repeats: int, folder: Path, more_turns: bool = True) -> dict:
    folder.mkdir(parents=True)
    strategy = BenchmarkStrategy(size_mib)
    figures = {"state_bytes": strategy.tensor_bytes()}
    # Short turns vary the most relative to their length, and cost little. At 1 GiB a turn varies by up to 3x.
    turns = repeats
    if more_turns:
        turns *= 3 if size_mib <= STALL_SIZE_MIB else 2
    save = checkpoint_io.measure_save(strategy, folder, turns)
    load = checkpoint_io.measure_load(strategy, folder, turns)
    figures.update({key: round(value, 3) for key, value in {**save, **load}.items() if isinstance(value, float)})
    figures["medians_s"] = {"save": save["medians_s"], "load": load["medians_s"]}
    if size_mib == STALL_SIZE_MIB:
        stall = background_stall.measure_stall(strategy, folder, repeats)
        figures["async_stall_over_sync_save"] = round(stall["async_stall_over_sync_save"], 3)
        figures["medians_s"]["background"] = stall["medians_s"]
    del strategy
    peak = memory.measure(size_mib, folder)
    figures["peak_extra_memory_over_state"] = round(peak["peak_extra_memory_over_state"], 4)
    figures["background_peak_extra_memory_over_state"] = round(peak["background_peak_extra_memory_over_state"], 3)
    return figures


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "load_average_1min": round(os.getloadavg()[0], 2)}


def table(results: dict) -> str:
    sizes = list(results["by_size"])
    size_names = [f"{size} MiB" if size < 1024 else f"{size // 1024} GiB" for size in sizes]
    lines = [f"runner benchmarks ({'quick' if results['quick'] else 'full'}): {results['machine']['cpus']} CPUs, "
             f"load average {results['machine']['load_average_1min']}, python {results['machine']['python']}, "
             f"torch {results['machine']['torch']}; loads read warm files from the page cache",
             "",
             f"| figure | {' | '.join(size_names)} | target |",
             f"| --- | {' | '.join('---' for _ in sizes)} | --- |"]
    rows = [(key, name, target) for key, (name, target) in TARGETS.items()]
    rows += [(key, name, None) for key, name in INFORMATIVE.items()]
    for key, name, target in rows:
        cells = [_cell(results["by_size"][size].get(key)) for size in sizes]
        verdict = "" if target is None else f"<= {target} ({'met' if results[key] <= target else 'missed'})"
        lines.append(f"| {name} | {' | '.join(cells)} | {verdict} |")
    lines.append(f"| checkpoint size, data set 10x larger, unique objects / before | "
                 f"{_cell(results['size_growth_10x_data'])} (any size) | about 1 |")
    for policy, figures in results["goodput"]["policies"].items():
        lines.append(f"| goodput, checkpoint {_POLICY_NAMES[policy]} | {figures['goodput']:.2f} (digits example) | |")
    speeds = ", ".join(f"{name} {speed:.2f}" for name, speed in results["checksums_gb_per_s"].items())
    lines += ["", f"checksum throughput, GB/s: {speeds}"]
    return "\n".join(lines)


_POLICY_NAMES = {"iteration": "on signal between iterations (runner)", "experience": "at experience boundaries",
                 "scratch": "never: restart from scratch"}


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="16 and 256 MiB only, 3 repeats and one preemption in the goodput run (under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--folder", type=Path, help="where to write checkpoints (default: a temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="runner-benchmarks-", dir=args.folder) as root:
        results = run(args.quick, Path(root))
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
