"""Submitting a preemptible job to SLURM: through submitit, or as a job script rendered from ``slurm_templates/``.

runner replaces submitit's preemption machinery instead of using it. submitit's handler pickles the callable
(``checkpoint()``) and calls ``scontrol requeue`` inside the signal handler, in the middle of a training step, and
it takes every signal to a job shorter than 10 minutes for a time-out (submitit 1.5: ``min(0.8 T, T - 10 min)``).
A job submitted here runs with runner's watcher on the preemption signal and SIGTERM instead. The job saves at its
next safe point with ``runner.save_checkpoint`` and requeues itself through ``runner.Job``. Both sides agree on the
signal: the script exports RUNNER_PREEMPT_SIGNAL and SUBMITIT_PREEMPT_SIGNAL, and ``#SBATCH --signal`` names it.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from runner.backends.commands import run_command
from runner.backends.sbatch import (SbatchOptions, check_one_line, export_lines, job_exports, render_job_script,
                                    time_limit_minutes)
from runner.environment import JobEnvironment
from runner.preemption import PreemptionWatcher
from runner.requeue import MAX_REQUEUES_VAR

logger = logging.getLogger(__name__)

SUBMITIT_SIGNAL_VAR = "SUBMITIT_PREEMPT_SIGNAL"
"""The variable that submitit reads, when it is imported, to choose the signal of its handler (default USR2)."""


@dataclass(frozen=True)
class Submission:
    """Everything about one job but its program: sbatch's options, the log folder and the job's variables."""

    options: SbatchOptions = SbatchOptions()
    folder: Path = Path("slurm-logs")
    """Folder of the job's log (and, for submitit, its pickles), made absolute and created at submission."""
    max_requeues: int | None = None
    """Exported as RUNNER_MAX_REQUEUES, the cap that ``runner.Job`` applies; None leaves it unset."""
    environment: Mapping[str, str] = field(default_factory=dict)
    """More variables that the job script exports."""

    def exports(self) -> dict[str, str]:
        exports = job_exports(self.options.signal)
        if self.max_requeues is not None:
            exports[MAX_REQUEUES_VAR] = str(self.max_requeues)
        exports.update(self.environment)
        return exports

    def absolute_folder(self) -> Path:
        """Return the log folder as an absolute path; raise ValueError for one that sbatch would rewrite."""
        folder = Path(self.folder).expanduser().absolute()
        if "%" in str(folder):
            raise ValueError(f"invalid log folder {str(folder)!r}: sbatch expands patterns such as %j in log paths, "
                             "so a folder name with '%' would change; choose one without '%'")
        return folder


# submitit


def submit_command(command: Sequence[str], submission: Submission) -> "submitit.Job":
    """Submit ``command`` through submitit; it runs as a child of submitit's Python process in the job.

    The job's exit status is the command's, so 75, 76 and 77 show in sacct; ``job.result()`` returns 0 when the
    command succeeded.
    """
    if not command:
        raise ValueError("the job's command is empty; give the program and its arguments")
    return _executor(submission).submit(CommandTask([str(word) for word in command], os.getcwd()))


def submit_function(submission: Submission, function: Callable[..., Any], *args: Any, **kwargs: Any
                    ) -> "submitit.Job":
    """Submit ``function(*args, **kwargs)`` through submitit. The function creates ``runner.Job()`` and calls
    ``stop_if_preempted`` at its safe points, as a training script does."""
    if hasattr(function, "checkpoint"):
        raise ValueError(
            f"{function!r} has a checkpoint() method, which runner would never call: a job submitted by runner saves "
            "with runner.save_checkpoint at its safe points. Remove the method, or submit it with submitit directly")
    return _executor(submission).submit(FunctionTask(function, args, kwargs))


def submitit_script(submission: Submission, python: str | None = None) -> str:
    """Return the sbatch script that ``submit_command`` and ``submit_function`` make submitit write.

    ``python`` is the command that starts Python in the job, already quoted for the shell (default: this
    interpreter). NOTE: it calls submitit's private ``_make_sbatch_string``, which SlurmExecutor itself uses
    (submitit 1.5.4); a test compares the output with the script of a real submission.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    folder = submission.absolute_folder()
    python = shlex.quote(sys.executable) if python is None else python
    command = f"{python} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, **submitit_parameters(submission))


def submitit_parameters(submission: Submission) -> dict[str, Any]:
    """Return the keyword arguments of ``SlurmExecutor.update_parameters`` for this submission."""
    options = submission.options
    signal_spec = options.signal.for_layout(batch_only=False)
    check_one_line(str(submission.absolute_folder()))
    for key, value in options.directives():
        if isinstance(value, str):
            check_one_line(value)
        if isinstance(value, str) and "\\" in value:
            # submitit quotes #SBATCH values with shlex.quote, and sbatch reads a backslash inside '...' as an escape.
            raise ValueError(f"invalid --{key} {value!r}: submitit cannot pass a backslash to sbatch; remove it, "
                             "or submit with a template (--template single)")
    additional: dict[str, Any] = {"signal": signal_spec.directive_value(), "requeue": True}
    for key, value in (("gpus", options.gpus), ("mem", options.mem), ("ntasks", options.ntasks)):
        if value is not None:
            additional[key] = value
    additional.update(options.extra)
    exports = {**submission.exports(), SUBMITIT_SIGNAL_VAR: signal_spec.signal.name.removeprefix("SIG")}
    return {
        "job_name": options.job_name or "runner",
        "partition": options.partition,
        # None leaves the partition's default time limit; submitit would write 5 minutes.
        "time": None if options.time is None else (time_limit_minutes(options.time) or options.time),
        "nodes": options.nodes or 1,
        "cpus_per_task": options.cpus_per_task,
        "signal_delay_s": signal_spec.lead_s,
        "setup": export_lines(exports),
        "additional_parameters": additional,
    }


def _executor(submission: Submission) -> "submitit.SlurmExecutor":
    import submitit

    folder = submission.absolute_folder()
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
    executor.update_parameters(**submitit_parameters(submission))
    return executor


def take_over_submitit_signals() -> PreemptionWatcher:
    """Install runner's watcher in place of submitit's handlers, and return it.

    The watched signals are blocked during the swap, so one that arrives then is delivered to the new watcher.
    Handlers that are not submitit's stay, and the watcher calls them after recording the signal.
    """
    from submitit.core.job_environment import SignalHandler

    watcher = PreemptionWatcher()
    watched = watcher.watched_signals
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    replaced = []
    try:
        for sig in watched:
            if isinstance(getattr(signal.getsignal(sig), "__self__", None), SignalHandler):
                signal.signal(sig, signal.SIG_DFL)
                replaced.append(sig.name)
        watcher.install()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    if replaced:
        logger.info("replaced submitit's handlers on %s with runner's watcher: the job saves and requeues at its "
                    "next safe point", ", ".join(replaced))
    return watcher


@dataclass
class FunctionTask:
    """The callable that submitit runs in the job: runner's watcher, then the user's function."""

    function: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __call__(self) -> Any:
        take_over_submitit_signals()
        return self.function(*self.args, **self.kwargs)


@dataclass
class CommandTask:
    """The callable that submitit runs in the job: runner's watcher, then ``command`` as a child process.

    SLURM signals every process of the srun step, so the command gets the preemption signal from SLURM itself;
    this process only records it and waits. The command requeues the job through ``runner.Job`` and exits 75.
    """

    command: list[str]
    cwd: str

    def __call__(self) -> int:
        _log_to_stderr()
        take_over_submitit_signals()
        env = JobEnvironment.from_environ()
        logger.info("job %s run %d: starting %s", env.requeue_target, env.restart_count, shlex.join(self.command))
        try:
            process = subprocess.Popen(self.command, cwd=self.cwd)
        except OSError as error:
            raise RuntimeError(f"could not start {self.command[0]!r} in {self.cwd}: {error}") from error
        status = process.wait()
        if status == 0:
            logger.info("job %s run %d: the command finished", env.requeue_target, env.restart_count)
            return 0
        exit_status = status if status > 0 else 128 - status
        logger.warning("job %s run %d: the command exited with status %d", env.requeue_target, env.restart_count,
                       exit_status)
        # SystemExit, unlike an exception, makes submitit write no result, as its own requeue does.
        sys.exit(exit_status)


def _log_to_stderr() -> None:
    """Send runner's INFO lines to the job's log: this task is the program that runs in the job, like the CLI."""
    package_logger = logging.getLogger("runner")
    if not package_logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s runner: %(message)s"))
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)


# job scripts


def submit_job_script(layout: str, command: Sequence[str], submission: Submission) -> str:
    """Render the ``layout`` template (``single`` or ``multi``), submit it with ``sbatch`` and return the job id."""
    script = job_script(layout, command, submission)
    submission.absolute_folder().mkdir(parents=True, exist_ok=True)
    output = run_command(["sbatch", "--parsable"], input_text=script)
    # --parsable prints "<job id>" or "<job id>;<cluster>".
    return output.strip().split(";")[0]


def job_script(layout: str, command: Sequence[str], submission: Submission) -> str:
    """Return the job script of ``layout`` for ``command``, with its log at ``FOLDER/%j.out``."""
    output = str(submission.absolute_folder() / "%j.out")
    return render_job_script(layout, command, submission.options, output, submission.exports())
