"""runner: SLURM-aware, preemption-resilient training jobs that resume exactly where they stopped."""

__version__ = "0.1.0"

from runner.checkpoint import maybe_load_checkpoint, register_generator, save_checkpoint  # noqa: E402
from runner.environment import JobEnvironment  # noqa: E402
from runner.job import Job  # noqa: E402
from runner.preemption import PreemptionWatcher  # noqa: E402

__all__ = [
    "__version__",
    "Job",
    "JobEnvironment",
    "PreemptionWatcher",
    "maybe_load_checkpoint",
    "register_generator",
    "save_checkpoint",
]
