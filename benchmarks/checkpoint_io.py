"""Save and load times of runner against the limits of the machine and against the usual practice.

- durable save: ``runner.save_checkpoint`` against writing the same number of bytes to a new file with
  ``os.write`` and ``fsync``, in one write, and streamed: in 4 MiB writes, each followed by a hint to start writing
  it to disk (``POSIX_FADV_DONTNEED``), much as runner writes. The streamed write is the fastest way to a durable file
  found on this project's machine, so the second ratio shows what is left between runner and the disk. Between
  turns, untimed, the raw file is removed, runner's worker finishes removing the old checkpoints
  (``runner.wait_for_saves()``) and ``os.sync()`` writes out everything, which is what the kernel does by itself
  while a job trains between two saves. Every turn then starts from the same clean state;
- verified load: ``runner.maybe_load_checkpoint`` against ``torch.load`` of the same payload bytes, copied out
  of the checkpoint into a file of their own. Both read a file that is in the page cache (warm);
- usual practice: ``torch.save(strategy, path, pickle_module=dill)`` straight over the file, without fsync, and
  ``torch.load`` of that file. The ``os.sync()`` between turns writes its file out, but the disk stays slower for
  a while after, so its saves take turns with runner's apart from the durable ones.

Large allocations get fresh pages from the kernel on every load (``mallopt``), as in a job that resumes in a new
process. Without that, ``torch.load`` would reuse the pages that the previous turn freed and run several times
faster than any first load.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from pathlib import Path

import dill
import torch

import runner
from runner.checkpoint import fileformat
from states import BenchmarkStrategy, placeholder
from timing import in_turns, medians_s, ratio

_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 << 10
_MAX_WRITE_BYTES = 1 << 30
_STREAMED_WRITE_BYTES = 4 << 20


def use_fresh_pages_for_large_allocations() -> bool:
    """Make glibc map every allocation of 128 KiB or more anew and unmap it on free; return whether it could.

    A fixed threshold stops glibc from raising it after frees, which would keep freed pages for the next turn.
    """
    library = ctypes.util.find_library("c")
    if library is None:
        return False
    try:
        mallopt = ctypes.CDLL(library).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


def measure_save(strategy: BenchmarkStrategy, folder: Path, repeats: int) -> dict:
    """Time runner's durable save against a raw write with fsync and against the usual practice."""
    path = folder / "runner" / "checkpoint.pkl"
    path.parent.mkdir(parents=True)
    for _ in range(2):  # steady state: a previous checkpoint to keep and an older one to prune
        runner.save_checkpoint(strategy, path)
    size = path.stat().st_size
    raw_path = folder / "raw.bin"
    data = memoryview(bytearray(os.urandom(1 << 20)) * ((size >> 20) + 1))[:size]
    usual_path = folder / "usual.pkl"

    durable = in_turns({
        "runner": lambda: runner.save_checkpoint(strategy, path),
        "raw_write_fsync": lambda: _write_raw(raw_path, data, _MAX_WRITE_BYTES),
        "streamed_write_fsync": lambda: _write_raw(raw_path, data, _STREAMED_WRITE_BYTES, start_writeback=True),
    }, repeats, prepare=lambda: _settle(raw_path))
    # Apart, because the side that runs after the usual practice waits for the disk to finish writing its file.
    usual = in_turns({
        "runner": lambda: runner.save_checkpoint(strategy, path),
        "usual_practice": lambda: torch.save(strategy, usual_path, pickle_module=dill),
    }, repeats, prepare=lambda: _settle(raw_path))
    return {
        "checkpoint_bytes": size,
        "save_over_raw_write": ratio(durable, "runner", "raw_write_fsync"),
        "save_over_streamed_write": ratio(durable, "runner", "streamed_write_fsync"),
        "save_over_usual_practice": ratio(usual, "runner", "usual_practice"),
        "medians_s": {**medians_s(durable), "usual_practice": medians_s(usual)["usual_practice"]},
    }


def measure_load(strategy: BenchmarkStrategy, folder: Path, repeats: int) -> dict:
    """Time runner's verified load against ``torch.load`` of the same payload and of the usual practice's file."""
    path = folder / "runner" / "checkpoint.pkl"
    payload_path = folder / "payload.pt"
    with open(path, "rb") as file:
        verified = fileformat.verify(file, str(path))
        file.seek(verified.payload_offset)
        payload_path.write_bytes(file.read(verified.payload_length))
    usual_path = folder / "usual.pkl"
    torch.save(strategy, usual_path, pickle_module=dill)
    start = placeholder()

    times = in_turns({
        "runner": lambda: runner.maybe_load_checkpoint(start, path),
        "torch_load": lambda: torch.load(payload_path, pickle_module=dill, weights_only=False),
        "usual_practice": lambda: torch.load(usual_path, pickle_module=dill, weights_only=False),
    }, repeats, prepare=gc.collect)
    return {
        "load_over_torch_load": ratio(times, "runner", "torch_load"),
        "load_over_usual_practice": ratio(times, "runner", "usual_practice"),
        "medians_s": medians_s(times),
    }


def _settle(raw_path: Path) -> None:
    """Bring the disk to the same clean state before each timed side: no raw file, nothing left to write out."""
    runner.wait_for_saves()
    raw_path.unlink(missing_ok=True)
    os.sync()


def _write_raw(path: Path, data: memoryview, piece_bytes: int, start_writeback: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        written = 0
        while written < len(data):
            count = os.write(fd, data[written:written + piece_bytes])
            if start_writeback:
                os.posix_fadvise(fd, written, count, os.POSIX_FADV_DONTNEED)
            written += count
        os.fsync(fd)
    finally:
        os.close(fd)
