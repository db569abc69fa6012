"""Questions to SLURM about one job, through ``scontrol`` and ``sacct``, and the parsing of their output."""

from __future__ import annotations

import re
from datetime import datetime

from runner.backends.commands import run_command

_FIELD_KEY = re.compile(r"[A-Za-z][A-Za-z0-9:/_]*")


def show_job(job_id: str) -> dict[str, str]:
    """Return the fields of ``scontrol show job --oneliner JOB_ID``, such as JobState, Restarts and EndTime.

    Raise CommandError when scontrol is missing or fails, for example for a job id that SLURM no longer has.
    """
    return parse_job_record(run_command(["scontrol", "show", "job", "--oneliner", str(job_id)]))


def parse_job_record(text: str) -> dict[str, str]:
    """Parse one ``Key=Value Key=Value`` line of scontrol; a word without ``=`` continues the previous value.

    Values such as ``JobName=a b`` contain blanks, so a split at blanks alone would cut them. The first
    occurrence of a key wins, because fields such as JobState come before the free-text ones (Comment, paths).
    """
    fields: dict[str, str] = {}
    key = None
    for word in text.strip().splitlines()[0].split(" ") if text.strip() else []:
        name, equals, value = word.partition("=")
        if equals and _FIELD_KEY.fullmatch(name):
            key = name if name not in fields else None
            if key is not None:
                fields[key] = value
        elif key is not None:
            fields[key] += " " + word
    return fields


def parse_time(value: str | None) -> float | None:
    """Return a SLURM timestamp such as ``2024-05-01T12:00:00`` (local time) as epoch seconds; None for
    ``None``, ``Unknown`` or ``N/A``."""
    if not value or value in ("None", "Unknown", "N/A", "(null)"):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def job_states(job_id: str) -> list[str]:
    """Return the state of each run of a job that sacct records, oldest first, such as
    ``["REQUEUED", "PREEMPTED", "COMPLETED"]``."""
    output = run_command(["sacct", "--noheader", "--allocations", "--duplicates", "--parsable2",
                          "--format=State", f"--jobs={job_id}"])
    return [line.split()[0] for line in output.splitlines() if line.strip()]


def job_exit_codes(job_id: str) -> list[str]:
    """Return sacct's ``ExitCode`` (``status:signal``) of each run of a job, oldest first."""
    output = run_command(["sacct", "--noheader", "--allocations", "--duplicates", "--parsable2",
                          "--format=ExitCode", f"--jobs={job_id}"])
    return [line.strip() for line in output.splitlines() if line.strip()]
