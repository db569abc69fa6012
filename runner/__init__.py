"""runner: SLURM-aware, preemption-resilient training jobs that resume exactly where they stopped.

The checkpoint functions are imported on first use, so that ``import runner; job = runner.Job()`` installs the
preemption handler before torch is imported: a signal sent during a slow start-up is then recorded, not fatal.
"""

import importlib
from typing import Any

from runner.environment import JobEnvironment
from runner.job import Job
from runner.preemption import PreemptionWatcher

__version__ = "0.1.0"

_LAZY = {
    "constructor_based_serialization": "runner.checkpoint",
    "maybe_load_checkpoint": "runner.checkpoint",
    "register_generator": "runner.checkpoint",
    "save_checkpoint": "runner.checkpoint",
    "unregister_generator": "runner.checkpoint",
    "wait_for_saves": "runner.checkpoint",
}

__all__ = ["__version__", "Job", "JobEnvironment", "PreemptionWatcher", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
