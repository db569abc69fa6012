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


# SLURM tests: @pytest.mark.slurm tests need the cluster of scripts/slurm-cluster.sh. They are skipped with the
# reason when sinfo or sacct fails, and fail instead when RUNNER_REQUIRE_SLURM=1 (as CI sets it).

REQUIRE_SLURM_VAR = "RUNNER_REQUIRE_SLURM"
_SLURM_PROBES = (["sinfo", "--noheader", "--format=%T"],
                 ["sacct", "--noheader", "--allocations", "--starttime=now-1minutes"])
_slurm_unavailable: list = []


def slurm_unavailable_reason():
    """Return why the SLURM cluster cannot run tests, or None when sinfo and sacct respond; checked once per session."""
    if not _slurm_unavailable:
        _slurm_unavailable.append(_probe_slurm())
    return _slurm_unavailable[0]


def _probe_slurm():
    import subprocess

    start = "start it with: bash scripts/slurm-cluster.sh up"
    for command in _SLURM_PROBES:
        try:
            subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
        except FileNotFoundError:
            return f"{command[0]} is not installed; {start}"
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} timed out after 30 s; {start}"
        except subprocess.CalledProcessError as error:
            return f"{' '.join(command)} failed with exit code {error.returncode}: {error.stderr.strip()}; {start}"
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("slurm") is None:
        return
    reason = slurm_unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_SLURM_VAR) == "1":
        pytest.fail(f"{REQUIRE_SLURM_VAR}=1 but the SLURM cluster is not responding: {reason}", pytrace=False)
    pytest.skip(f"SLURM cluster not available: {reason}")


SLURM_TESTS_LOCK = Path(os.environ.get("RUNNER_SLURM_TESTS_LOCK", "/tmp/runner-slurm-tests.lock"))
"""File locked around each SLURM test, so that test sessions running at once on this machine take turns on the
one-node cluster: a preemption test would otherwise requeue the jobs of another session's test."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if item.get_closest_marker("slurm") is None or slurm_unavailable_reason() is not None:
        yield
        return
    import fcntl

    with open(SLURM_TESTS_LOCK, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
