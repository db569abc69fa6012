import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def python_env() -> dict:
    """The environment for a child Python process that imports runner from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name in [name for name in env if name.startswith(("SLURM_", "RUNNER_", "SUBMITIT_"))]:
        del env[name]
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
