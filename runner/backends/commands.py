"""The one place in runner that runs SLURM's commands: an argument list, no shell, the command logged at DEBUG.

submitit runs ``sbatch`` itself for the jobs it submits."""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Sequence

from runner.errors import RunnerError

logger = logging.getLogger(__name__)


class CommandError(RunnerError):
    """An external command was missing, failed or timed out."""

    def __init__(self, message: str, command: Sequence[str], returncode: int | None = None,
                 stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.command = list(command)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __reduce__(self):
        return type(self), (self.args[0], self.command, self.returncode, self.stdout, self.stderr)


def run_command(command: Sequence[str], timeout_s: float = 60.0, input_text: str | None = None) -> str:
    """Run ``command`` with ``input_text`` on its stdin and return its stdout; raise CommandError with its exit
    code and output on failure."""
    command = [str(part) for part in command]
    if shutil.which(command[0]) is None:
        raise CommandError(
            f"command not found: {command[0]!r} is not on PATH; run this inside a SLURM job or install the SLURM "
            "client tools", command)
    logger.debug("running %s", command)
    try:
        completed = subprocess.run(command, input=input_text, capture_output=True, text=True, timeout=timeout_s,
                                   check=False)
    except subprocess.TimeoutExpired as error:
        raise CommandError(f"{' '.join(command)} timed out after {timeout_s:g} s", command,
                           stdout=str(error.stdout or ""), stderr=str(error.stderr or "")) from error
    if completed.returncode != 0:
        raise CommandError(
            f"{' '.join(command)} failed with exit code {completed.returncode}: "
            f"{_output_text(completed.stdout, completed.stderr)}",
            command, completed.returncode, completed.stdout, completed.stderr)
    return completed.stdout


def _output_text(stdout: str, stderr: str) -> str:
    parts = [part.strip() for part in (stderr, stdout) if part and part.strip()]
    return " / ".join(parts) if parts else "(no output)"
