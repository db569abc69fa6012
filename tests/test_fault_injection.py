"""SIGKILL at a sample of steps of a save, in a real forked writer; benchmarks/crash_consistency.py runs them all.

After each kill, the newest loadable checkpoint must be the last committed one, every kept checkpoint must be
valid, and the next save must succeed, remove the dead writer's temp file and leave foreign files alone.
"""

import os
import subprocess
from pathlib import Path

import pytest

import crash_harness
import runner
from runner.checkpoint import faults, tempfiles

# Each step at the second of the child's three saves, the first save's boundaries, and writes spread over all three.
SAMPLE = (
    [f"{step}:2" for step in faults.STEPS if step != "write"]
    + ["lock-acquired:1", "temp-created:1", "replaced:1", "pruning:1", "folder-fsynced:3"]
    + [f"write@{percent}%" for percent in range(0, 101, 10)]
)


@pytest.fixture(scope="module")
def step_counts(tmp_path_factory):
    return crash_harness.count_steps(tmp_path_factory.mktemp("trace"))


def test_every_step_is_reached(step_counts):
    for step in faults.STEPS:
        assert step_counts[step] >= len(crash_harness.CHILD_COUNTERS), step
    assert step_counts["write"] >= 30


@pytest.mark.parametrize("point", SAMPLE)
def test_kill_leaves_last_committed(tmp_path, step_counts, point):
    if point.startswith("write@"):
        percent = int(point[len("write@"):-1])
        point = f"write:{max(1, round(step_counts['write'] * percent / 100))}"

    outcome = crash_harness.run_kill_point(tmp_path, point)

    assert outcome.killed
    assert outcome.problems == []
    assert outcome.loaded == outcome.expected


def test_kill_after_rename_keeps_new_checkpoint(tmp_path):
    outcome = crash_harness.run_kill_point(tmp_path, "replaced:1")

    assert outcome.returned == []
    assert outcome.in_flight == 3
    assert outcome.loaded == 3


def test_kill_before_rename_keeps_previous(tmp_path):
    outcome = crash_harness.run_kill_point(tmp_path, "linked:2")

    assert outcome.returned == [3]
    assert outcome.in_flight == 4
    assert outcome.loaded == 3


def test_stale_temp_of_dead_writer_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".checkpoint.pt{tempfiles.TEMP_MARKER}{dead.pid}-0badc0de"
    stale.write_bytes(b"half a checkpoint")
    own = tmp_path / f".checkpoint.pt{tempfiles.TEMP_MARKER}{os.getpid()}-00c0ffee"
    own.write_bytes(b"left by a killed job whose pid this process has now")
    trash = tmp_path / f".checkpoint.pt{tempfiles.TRASH_MARKER}5ca1ab1e"
    trash.write_bytes(b"an old checkpoint renamed for unlinking")
    foreign = tmp_path / ".checkpoint.pt.runner-tmp-by-hand"
    foreign.write_bytes(b"not runner's")
    with subprocess.Popen(["sleep", "60"]) as other:
        live = tmp_path / f".checkpoint.pt{tempfiles.TEMP_MARKER}{other.pid}-00c0ffee"
        live.write_bytes(b"maybe a save on another host that the lock does not exclude")

        runner.save_checkpoint(crash_harness.Model(1), path)
        other.kill()

    assert not stale.exists()
    assert not own.exists()
    assert not trash.exists()
    assert live.exists()
    assert foreign.exists()
    assert runner.maybe_load_checkpoint(None, path)[1] == 1


def test_stale_temp_of_zombie_writer_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    zombie = subprocess.Popen(["true"])
    try:
        # WNOWAIT waits for the exit but leaves the child unreaped, so it stays a zombie that kill(pid, 0) still finds.
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)
        assert process_state(zombie.pid) == "Z"
        stale = tmp_path / f".checkpoint.pt{tempfiles.TEMP_MARKER}{zombie.pid}-0badc0de"
        stale.write_bytes(b"half a checkpoint")

        [(_, _, description)] = tempfiles.leftovers(str(path))
        runner.save_checkpoint(crash_harness.Model(1), path)

        assert description == f"a temp file of pid {zombie.pid}, not running on this host"
        assert not stale.exists()
        assert process_state(zombie.pid) == "Z"  # the save saw a zombie, not a reaped pid
    finally:
        zombie.wait()
    assert runner.maybe_load_checkpoint(None, path)[1] == 1


def test_stale_temp_of_pid_zero_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    stale = tmp_path / f".checkpoint.pt{tempfiles.TEMP_MARKER}0-0badc0de"
    stale.write_bytes(b"half a checkpoint")

    runner.save_checkpoint(crash_harness.Model(1), path)

    assert not stale.exists()
    assert runner.maybe_load_checkpoint(None, path)[1] == 1


def process_state(pid: int) -> str:
    stat_text = Path(f"/proc/{pid}/stat").read_text()
    return stat_text[stat_text.rfind(")") + 1:].split()[0]


def test_stale_temp_symlink_removed_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    stale = tmp_path / f".checkpoint.pt{tempfiles.TEMP_MARKER}999999999-0badc0de"
    stale.symlink_to(victim)

    runner.save_checkpoint(crash_harness.Model(1), tmp_path / "checkpoint.pt")

    assert not os.path.lexists(stale)
    assert victim.read_text() == "keep me"
