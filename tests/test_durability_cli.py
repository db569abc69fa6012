"""``runner inspect`` and ``runner verify``, run as subprocesses, on valid, damaged and missing checkpoints."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import runner
from runner.checkpoint import sizes

TESTS = Path(__file__).resolve().parent


class Tripwire:
    """A strategy that creates the file ``marker`` when it is unpickled."""

    def __init__(self, exp_counter: int, marker: str):
        self.exp_counter = exp_counter
        self.marker = marker
        self.weights = torch.zeros(4)

    def __setstate__(self, state):
        self.__dict__.update(state)
        Path(self.marker).touch()


@pytest.fixture
def cli(python, python_env):
    """Run ``python -m runner.cli ARGS...`` in a child that could import Tripwire; return the completed process."""
    python_env["PYTHONPATH"] = os.pathsep.join([str(TESTS), python_env["PYTHONPATH"]])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "runner.cli", *args], env=python_env, capture_output=True, text=True,
                              timeout=120)

    return run


@pytest.fixture
def checkpoints(tmp_path):
    """Three saves of a Tripwire with keep=3, from this test module imported by its name as the CLI would."""
    import test_durability_cli

    path = tmp_path / "checkpoint.pt"
    marker = tmp_path / "unpickled"
    for counter in (1, 2, 3):
        runner.save_checkpoint(test_durability_cli.Tripwire(counter, str(marker)), path, keep=3, run_id="run-a")
    return path, marker


def test_inspect_lists_each_checkpoint(checkpoints, cli):
    path, marker = checkpoints

    result = cli("inspect", str(path))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["FILE", "EXPERIENCE", "SIZE", "WRITTEN", "RUN", "STATUS"]
    assert [line.split()[:2] for line in lines[1:]] == [[str(path), "3"], [f"{path}.2", "2"], [f"{path}.1", "1"]]
    assert all(line.endswith("valid") and "run-a" in line for line in lines[1:])
    assert not marker.exists()


def test_inspect_shows_why_invalid(checkpoints, cli):
    path, marker = checkpoints
    with open(f"{path}.2", "r+b") as file:
        file.truncate(100)

    result = cli("inspect", str(path))

    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"{path}.2 "))
    assert "invalid: has no commit record" in line
    assert not marker.exists()


def test_inspect_json(checkpoints, cli):
    path, _ = checkpoints

    result = cli("inspect", "--json", str(path))

    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["exp_counter"] for record in records] == [3, 2, 1]
    assert [record["number"] for record in records] == [None, 2, 1]
    assert all(record["valid"] and record["size"] == os.path.getsize(record["path"]) for record in records)
    assert all(isinstance(record["created_at"], float) for record in records)


def test_verify_valid_exits_zero(checkpoints, cli):
    path, marker = checkpoints

    result = cli("verify", str(path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"valid: {path} (experience 3")
    assert not marker.exists()


def test_verify_damaged_newest_exits_one(checkpoints, cli):
    path, marker = checkpoints
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    result = cli("verify", str(path))

    assert result.returncode == 1
    assert f"invalid: {path}: fails its CRC-32 check" in result.stdout
    assert f"loading would fall back to {path}.2 (experience 2)" in result.stdout
    assert not marker.exists()


def test_verify_other_run_exits_one(checkpoints, cli):
    path, _ = checkpoints

    assert cli("verify", "--run-id", "run-a", str(path)).returncode == 0
    result = cli("verify", "--run-id", "run-b", str(path))
    assert result.returncode == 1
    assert "belongs to run 'run-a'" in result.stdout


def test_verify_missing_exits_one(tmp_path, cli):
    result = cli("verify", str(tmp_path / "none.pt"))

    assert result.returncode == 1
    assert "no checkpoint at" in result.stdout


def test_inspect_missing_exits_one(tmp_path, cli):
    result = cli("inspect", str(tmp_path / "none.pt"))

    assert result.returncode == 1
    assert "no checkpoint at" in result.stderr


def test_verify_fifo_does_not_block(tmp_path, cli):
    fifo = tmp_path / "checkpoint.pt"
    os.mkfifo(fifo)

    result = cli("verify", str(fifo))

    assert result.returncode == 1
    assert "not a regular file" in result.stdout + result.stderr


def test_load_sets_tripwire(checkpoints):
    path, marker = checkpoints

    runner.maybe_load_checkpoint(None, path, run_id="run-a")

    assert marker.exists()  # so the checks above would see an unpickling


def test_inspect_lists_leftovers(checkpoints, cli):
    path, _ = checkpoints
    trash = path.parent / f".{path.name}.runner-old-5ca1ab1e"
    trash.write_bytes(b"x" * 2000)

    result = cli("inspect", str(path))

    assert result.returncode == 0, result.stderr
    assert f"leftover: {trash} (2.0 kB), an old checkpoint renamed for unlinking" in result.stdout


@pytest.mark.parametrize("size_bytes, expected", [
    (0, "0 B"),
    (999, "999 B"),
    (1000, "1.0 kB"),
    (600_000, "600.0 kB"),
    (999_949, "999.9 kB"),
    (999_960, "1.0 MB"),
    (4_200_000, "4.2 MB"),
    (3 * 10**9, "3.0 GB"),
    (5 * 10**15, "5000.0 TB"),
])
def test_format_size_units(size_bytes, expected):
    assert sizes.format_size(size_bytes) == expected


def test_verify_reads_run_id_variable(checkpoints, cli, python_env):
    path, _ = checkpoints
    python_env["RUNNER_RUN_ID"] = "run-b"

    result = cli("verify", str(path))

    assert result.returncode == 1
    assert "belongs to run 'run-a'" in result.stdout


def test_verify_untrusted_exits_one(checkpoints, cli, python_env):
    path, _ = checkpoints
    os.chown(path, 65534, -1)  # nobody

    result = cli("verify", str(path))

    assert result.returncode == 1
    assert "untrusted" in result.stdout
    python_env["RUNNER_TRUST_CHECKPOINTS"] = "1"
    assert cli("verify", str(path)).returncode == 0
