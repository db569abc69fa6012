"""Environment variables that runner's local scheduler sets for a job, beside SLURM's own."""

BACKEND_VAR = "RUNNER_BACKEND"
"""``local`` under ``runner local``; unset under SLURM."""

REQUEUE_FILE_VAR = "RUNNER_REQUEUE_FILE"
"""Path the job creates to ask the local scheduler for a requeue (the local form of ``scontrol requeue``)."""

PREEMPT_SIGNAL_VAR = "RUNNER_PREEMPT_SIGNAL"
"""Name of the signal that announces a preemption, such as ``USR1``; runner's default is SIGUSR1."""
