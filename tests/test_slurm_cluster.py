"""Jobs on the SLURM cluster of scripts/slurm-cluster.sh: submitted through submitit and through the templates,
preempted by hand and by a job on the higher-priority partition, requeued, and finished with the uninterrupted
run's model.

Every test waits on job events (log lines, sacct states) with a bound, so a broken cluster fails instead of hanging.
NOTE: the preemption by partition urgent (--exclusive) also requeues any other job running on partition debug.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT
from runner import exitcodes
from runner.backends.sbatch import SbatchOptions, SignalSpec
from runner.backends.slurm import Submission, submit_function, submit_job_script
from runner.backends.slurm_control import job_exit_codes, job_states, show_job

pytestmark = pytest.mark.slurm

EXAMPLE = str(ROOT / "examples" / "split_digits.py")
EPOCHS = ["--epochs", "120"]
"""About 1 s per experience on one idle CPU: a signal sent when a run starts arrives while it trains, and a run
preempted by partition urgent reaches its safe point within the cluster's KillWait of 5 s."""
WAIT_TIMEOUT_S = 180
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL"}

SMALL_JOB = textwrap.dedent("""
    import json, os, sys, time
    import runner

    job = runner.Job()
    state_path, steps, finish_on_restart = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "yes"
    state = json.load(open(state_path)) if os.path.exists(state_path) else {"step": 0}
    print(f"run {job.env.restart_count} starting at step {state['step']}", flush=True)
    if finish_on_restart and job.env.restart_count > 0:
        steps = state["step"]

    def save():
        with open(state_path + ".tmp", "w") as file:
            json.dump(state, file)
        os.replace(state_path + ".tmp", state_path)

    while state["step"] < steps:
        time.sleep(0.2)
        state["step"] += 1
        job.stop_if_preempted(save)
    save()
    print(f"finished at step {state['step']}", flush=True)
""")


@pytest.fixture
def jobs():
    """Job ids submitted by a test, cancelled at its end so that a failed test leaves nothing running."""
    submitted = []
    yield submitted
    if submitted:
        subprocess.run(["scancel", *submitted], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The digits example run once, directly and without preemption."""
    workdir = tmp_path_factory.mktemp("reference")
    env = clean_environment()
    subprocess.run([sys.executable, EXAMPLE, "--workdir", str(workdir), *EPOCHS], env=env, check=True,
                   capture_output=True, timeout=300)
    return json.loads((workdir / "final.json").read_text())


def clean_environment():
    return {name: value for name, value in os.environ.items()
            if not name.startswith(("SLURM_", "RUNNER_", "SUBMITIT_"))}


def wait_until(condition, description, timeout_s=WAIT_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {description}")
        time.sleep(0.2)


def read_text(path):
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_line(path, pattern, description):
    wait_until(lambda: re.search(pattern, read_text(path), re.MULTILINE), f"{description} in {path}")


def wait_for_final_state(job_id):
    def finished():
        states = job_states(job_id)
        return bool(states) and states[-1] in FINAL_STATES

    wait_until(finished, f"job {job_id} to finish (sacct states so far: see the job's log)")
    return job_states(job_id)


def submit_urgent_job():
    """Submit a job that needs the whole node on partition urgent, which preempts the jobs on partition debug."""
    output = subprocess.run(["sbatch", "--parsable", "--partition=urgent", "--exclusive", "--output=/dev/null",
                             "--job-name=runner-urgent", "--wrap=sleep 1"],
                            capture_output=True, text=True, timeout=30, check=True).stdout
    return output.strip().split(";")[0]


def preempt_runs(job_id, log, hand_preemptions, batch_shell, jobs):
    """Signal runs 0 .. hand_preemptions-1 with scancel once each starts training, then preempt the next run with a
    job on partition urgent."""
    scancel = ["scancel", "--signal=USR1", *(["--batch"] if batch_shell else []), job_id]
    for run in range(hand_preemptions):
        wait_for_line(log, rf"^restart {run}: starting at experience", f"run {run} of job {job_id} to train")
        subprocess.run(scancel, check=True, timeout=30)
    wait_for_line(log, rf"^restart {hand_preemptions}: starting at experience",
                  f"run {hand_preemptions} of job {job_id} to train")
    jobs.append(submit_urgent_job())


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=clean_environment(),
                          capture_output=True, text=True, timeout=120)


def test_submitit_job_preempted_matches_reference(tmp_path, reference, jobs):
    workdir, folder = tmp_path / "work", tmp_path / "logs"
    arguments = ["submit", "--folder", str(folder), "--partition", "debug", "--time", "10", "--cpus-per-task", "1",
                 "--job-name", "digits-submitit", "--", sys.executable, EXAMPLE, "--workdir", str(workdir), *EPOCHS]

    submitted = run_cli(*arguments)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    jobs.append(job_id)
    preempt_runs(job_id, folder / f"{job_id}_0_log.out", 1, batch_shell=False, jobs=jobs)
    states = wait_for_final_state(job_id)

    result = json.loads((workdir / "final.json").read_text())
    runner_log = read_text(folder / f"{job_id}_0_log.err")
    assert states[-1] == "COMPLETED", read_text(folder / f"{job_id}_0_log.out") + runner_log
    assert result["restarts"] == 2
    assert result["params_sha256"] == reference["params_sha256"]
    assert result["accuracy"] == reference["accuracy"]
    assert "PREEMPTED" in states
    assert runner_log.count("signal (SIGUSR1 came") == 1
    assert "preemption (SLURM already requeued the job" in runner_log
    assert "replaced submitit's handlers on SIGUSR1, SIGTERM" in runner_log


def test_dry_run_matches_submitted_script(tmp_path, jobs):
    folder = tmp_path / "logs"
    arguments = ["--folder", str(folder), "--time", "5", "--job-name", "dry run", "--signal", "USR2@30",
                 "--sbatch-arg", "comment=x y", "--", "true"]

    printed = run_cli("submit", "--dry-run", *arguments)
    submitted = run_cli("submit", *arguments)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    jobs.append(job_id)
    wait_for_final_state(job_id)

    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.rstrip("\n") == (folder / f"{job_id}_submission.sh").read_text().rstrip("\n")
    assert job_states(job_id) == ["COMPLETED"]


def test_template_job_preempted_matches_reference(tmp_path, reference, jobs):
    workdir, folder = tmp_path / "work", tmp_path / "logs"
    submitted = run_cli("submit", "--template", "single", "--folder", str(folder), "--time", "10",
                        "--cpus-per-task", "1", "--signal", "USR1@60", "--job-name", "digits-template", "--",
                        sys.executable, EXAMPLE, "--workdir", str(workdir), *EPOCHS)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    jobs.append(job_id)
    log = folder / f"{job_id}.out"

    preempt_runs(job_id, log, 2, batch_shell=True, jobs=jobs)
    states = wait_for_final_state(job_id)

    result = json.loads((workdir / "final.json").read_text())
    assert states[-1] == "COMPLETED", read_text(log)
    assert result["restarts"] == 3
    assert result["params_sha256"] == reference["params_sha256"]
    assert "PREEMPTED" in states
    assert read_text(log).count("signal (SIGUSR1 came") == 2
    assert "preemption (SLURM already requeued the job" in read_text(log)
    assert [int(run) for run in re.findall(r"^runner: job \d+ run (\d+) starting", read_text(log), re.M)] == [0, 1, 2, 3]


HOSTILE_ARGS = ["with space", "it's", 'double"quote', "semi; touch pwned", "$(touch pwned)", "`touch pwned`",
                "new\nline", "$HOME", "*", "back\\slash", ""]
PRINT_ARGV = ("import json, os, sys; "
              "print(json.dumps({'argv': sys.argv[1:], 'name': os.environ['SLURM_JOB_NAME']}), flush=True)")


@pytest.mark.parametrize("layout", ["single", "multi"])
def test_template_hostile_values_through_sbatch(tmp_path, jobs, layout):
    folder = tmp_path / "logs 'dir' $(x) \"q\""
    name = "name \"with\" 'quotes' $(x); #"
    submission = Submission(SbatchOptions(job_name=name, time="5", signal=SignalSpec.parse("USR1@30")), folder)

    job_id = submit_job_script(layout, [sys.executable, "-c", PRINT_ARGV, *HOSTILE_ARGS], submission)
    jobs.append(job_id)
    states = wait_for_final_state(job_id)

    output = read_text(folder / f"{job_id}.out")
    assert states == ["COMPLETED"], output
    printed = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    assert printed["argv"] == HOSTILE_ARGS
    assert printed["name"] == name
    assert not list(tmp_path.glob("**/pwned"))
    assert not list(Path.cwd().glob("pwned"))


def small_job_command(tmp_path, steps, finish_on_restart):
    script = tmp_path / "small_job.py"
    script.write_text(SMALL_JOB)
    return [sys.executable, str(script), str(tmp_path / "state.json"), str(steps),
            "yes" if finish_on_restart else "no"]


def test_requeue_limit_cancels_slurm_requeue(tmp_path, jobs):
    """At the cap, a job that SLURM requeued after a preemption is cancelled: it exits 77 and never runs again."""
    folder = tmp_path / "logs"
    submission = Submission(SbatchOptions(job_name="capped", time="10", cpus_per_task=1), folder, max_requeues=1)
    job_id = submit_job_script("single", small_job_command(tmp_path, 300, False), submission)
    jobs.append(job_id)
    log = folder / f"{job_id}.out"

    wait_for_line(log, r"^run 0 starting", "run 0 to start")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, timeout=30)
    wait_for_line(log, r"^run 1 starting", "run 1 to start")
    jobs.append(submit_urgent_job())
    # sacct keeps PREEMPTED as the last state of a job cancelled while SLURM's requeue pends, so ask slurmctld.
    wait_until(lambda: show_job(job_id).get("JobState") in FINAL_STATES, f"job {job_id} to finish")

    text = read_text(log)
    assert show_job(job_id)["JobState"] == "CANCELLED", text
    assert show_job(job_id)["ExitCode"] == f"{exitcodes.REQUEUE_LIMIT}:0"
    assert "maximum of 1 requeues" in text
    assert "cancelled the run that SLURM had queued" in text
    assert "run 2 starting" not in text


def test_time_limit_requeues_or_stops(tmp_path, jobs):
    """A job signalled near its 1-minute time limit logs a time limit, then requeues or, by policy, exits 77."""
    folders = {}
    for policy in ("1", "0"):
        workdir = tmp_path / f"policy-{policy}"
        workdir.mkdir()
        submission = Submission(SbatchOptions(job_name=f"time-limit-{policy}", time="1", cpus_per_task=1,
                                              signal=SignalSpec.parse("USR1@55")),
                                workdir / "logs", environment={"RUNNER_REQUEUE_ON_TIME_LIMIT": policy})
        job_id = submit_job_script("single", small_job_command(workdir, 1000, True), submission)
        jobs.append(job_id)
        folders[policy] = (job_id, workdir / "logs" / f"{job_id}.out")

    requeue_id, requeue_log = folders["1"]
    stop_id, stop_log = folders["0"]
    requeue_states = wait_for_final_state(requeue_id)
    stop_states = wait_for_final_state(stop_id)

    assert "time limit (SIGUSR1 came" in read_text(requeue_log)
    assert requeue_states == ["REQUEUED", "COMPLETED"], read_text(requeue_log)
    assert "time limit (SIGUSR1 came" in read_text(stop_log)
    assert stop_states == ["FAILED"], read_text(stop_log)
    assert job_exit_codes(stop_id) == [f"{exitcodes.REQUEUE_LIMIT}:0"]


def test_failed_requeue_exits_76_with_output(tmp_path):
    """scontrol responds, but does not know this job id: the job exits 76 and shows scontrol's message."""
    env = {**clean_environment(), "SLURM_JOB_ID": "987654321"}
    process = subprocess.Popen(small_job_command(tmp_path, 50, False), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    first_line = process.stdout.readline()
    process.send_signal(signal.SIGUSR1)
    stdout, stderr = process.communicate(timeout=60)

    assert first_line == "run 0 starting at step 0\n"
    assert process.returncode == exitcodes.REQUEUE_FAILED, stdout + stderr
    assert (tmp_path / "state.json").exists()
    assert "scontrol requeue 987654321 failed" in stderr
    assert "Invalid job id specified" in stderr


def test_function_job_resumes_and_returns(tmp_path, jobs):
    def count_steps(state_path):
        import json
        import os
        import time

        import runner

        job = runner.Job()
        state = json.load(open(state_path)) if os.path.exists(state_path) else {"step": 0, "runs": []}
        state["runs"].append(job.env.restart_count)
        print(f"run {job.env.restart_count} starting at step {state['step']}", flush=True)

        def save():
            with open(state_path + ".tmp", "w") as file:
                json.dump(state, file)
            os.replace(state_path + ".tmp", state_path)

        while state["step"] < 40:
            time.sleep(0.1)
            state["step"] += 1
            job.stop_if_preempted(save)
        return state

    folder = tmp_path / "logs"
    submission = Submission(SbatchOptions(job_name="function", time="5", cpus_per_task=1), folder)
    job = submit_function(submission, count_steps, str(tmp_path / "state.json"))
    jobs.append(str(job.job_id))
    wait_for_line(job.paths.stdout, r"^run 0 starting", "run 0 to start")
    subprocess.run(["scancel", "--signal=USR1", str(job.job_id)], check=True, timeout=30)
    states = wait_for_final_state(str(job.job_id))

    assert states == ["REQUEUED", "COMPLETED"], read_text(job.paths.stderr)
    result = job.result()
    assert result["step"] == 40
    assert result["runs"] == [0, 1]
