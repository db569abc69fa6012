"""The ``runner`` command. Each subcommand has one function that registers its parser and sets its handler."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from typing import Callable, Sequence

from runner.backends.job_step import SignalTarget, parse_signal
from runner.backends.local import CommandNotFoundError, LocalScheduler
from runner.backends.schedule import (
    NoPreemption,
    PreemptAfter,
    PreemptEvery,
    PreemptionSchedule,
    PreemptRandom,
    parse_delay_range,
)
from runner.cli_checkpoints import add_inspect_parser, add_verify_parser
from runner.cli_command import command_after_separator
from runner.cli_submit import add_submit_parser

EXIT_COMMAND_NOT_FOUND = 127
"""Exit status when the job's command cannot be started, as shells use."""

MAX_JOB_ID = 0xFFFFFFFD
"""Largest value of ``--job-id``. SLURM job ids are unsigned 32-bit integers from 1 (slurm.conf(5), FirstJobId and
MaxJobId), and SLURM reserves 0xFFFFFFFE as NO_VAL and 0xFFFFFFFF as INFINITE."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``runner`` command with `argv` (default sys.argv[1:]) and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"runner {args.subcommand}: %(message)s"))
    package_logger = logging.getLogger("runner")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        return args.run_subcommand(args)
    finally:
        package_logger.removeHandler(handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner", description="Run PyTorch training jobs that survive preemption.")
    subparsers = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def add_local_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "local",
        help="run a command as a preemptible job on this machine, as SLURM would",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run COMMAND with a SLURM-like environment and preempt it on a schedule: send the\n"
            "preemption signal, SIGTERM after the grace period, SIGKILL after the kill wait.\n"
            "The job is started again, with SLURM_RESTART_COUNT one higher, when it creates\n"
            "$RUNNER_REQUEUE_FILE or when it was killed after a preemption. The exit status\n"
            "is the job's final status."
        ),
        epilog="example:\n  runner local --preempt-every 60 --grace 10 --max-preemptions 3 -- python train.py",
    )
    when = parser.add_argument_group("preemption schedule (measured from the start of each attempt; default: never)")
    schedule = when.add_mutually_exclusive_group()
    schedule.add_argument("--preempt-after", type=_seconds, metavar="SECONDS", help="preempt once, after SECONDS")
    schedule.add_argument(
        "--preempt-every", type=_positive_seconds, metavar="SECONDS", help="preempt every SECONDS while the job runs"
    )
    schedule.add_argument(
        "--preempt-random", type=_delay_range, metavar="MIN:MAX",
        help="preempt once, after a random delay in [MIN, MAX] seconds, drawn anew for each attempt",
    )
    when.add_argument("--seed", type=int, metavar="N", help="seed for --preempt-random (default: random, logged)")
    when.add_argument(
        "--max-preemptions", type=_count, metavar="N", help="send at most N preemption signals in the whole run"
    )

    signals = parser.add_argument_group("signals")
    signals.add_argument(
        "--signal", type=_signal, default="USR1", metavar="NAME",
        help="signal that announces a preemption: a name (USR1, SIGUSR1) or a number (default: USR1)",
    )
    signals.add_argument(
        "--signal-target", choices=[target.value for target in SignalTarget], default=SignalTarget.MAIN.value,
        help="send the preemption signal to the main process only, or to its whole process group (default: main)",
    )
    signals.add_argument(
        "--signal-tasks", type=_signal_tasks, default=None, metavar="all|RANK[,RANK...]",
        help="tasks that receive the preemption signal: all of them, as scancel --signal sends it, or the listed "
        "ranks only, as when one node is preempted (default: all)",
    )
    signals.add_argument(
        "--grace", type=_seconds, default=30.0, metavar="SECONDS",
        help="seconds from the first preemption signal until SIGTERM to the job's process group (default: 30)",
    )
    signals.add_argument(
        "--kill-wait", type=_seconds, default=5.0, metavar="SECONDS",
        help="seconds from SIGTERM until SIGKILL, as SLURM's KillWait (default: 5)",
    )

    job = parser.add_argument_group("job")
    job.add_argument(
        "--max-restarts", type=_count, default=10, metavar="N", help="start the job again at most N times (default: 10)"
    )
    job.add_argument(
        "--ntasks", type=_task_count, default=1, metavar="N",
        help="start N tasks of the command, as srun --ntasks N does on one node, with SLURM_PROCID 0 to N-1 "
        "(default: 1)",
    )
    job.add_argument(
        "--job-id", type=_job_id, metavar="ID",
        help=f"SLURM_JOB_ID, from 1 to {MAX_JOB_ID} (default: the scheduler's pid)",
    )
    job.add_argument("--job-name", metavar="NAME", help="SLURM_JOB_NAME (default: the command's basename)")
    job.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]", help="the job to run")
    parser.set_defaults(run_subcommand=run_local, subcommand_parser=parser)


def run_local(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.subcommand_parser
    command = command_after_separator(parser, args.command, "runner local --preempt-after 60 -- python train.py")
    if args.signal_tasks is not None and max(args.signal_tasks) >= args.ntasks:
        parser.error(
            f"--signal-tasks names rank {max(args.signal_tasks)}, but the job has {args.ntasks} task(s), "
            f"ranks 0 to {args.ntasks - 1}; raise --ntasks or choose another rank"
        )
    if args.seed is not None and args.preempt_random is None:
        parser.error(f"--seed {args.seed} applies only to --preempt-random; add --preempt-random MIN:MAX or drop --seed")

    scheduler = LocalScheduler(
        command,
        schedule=_schedule_from_args(args),
        preempt_signal=args.signal,
        signal_target=SignalTarget(args.signal_target),
        grace_s=args.grace,
        kill_wait_s=args.kill_wait,
        max_restarts=args.max_restarts,
        max_preemptions=args.max_preemptions,
        job_id=args.job_id,
        job_name=args.job_name,
        ntasks=args.ntasks,
        signal_ranks=args.signal_tasks,
    )
    try:
        return scheduler.run()
    except CommandNotFoundError as error:
        print(f"runner local: error: {error}", file=sys.stderr)
        return EXIT_COMMAND_NOT_FOUND


def _schedule_from_args(args: argparse.Namespace) -> PreemptionSchedule:
    if args.preempt_after is not None:
        return PreemptAfter(args.preempt_after)
    if args.preempt_every is not None:
        return PreemptEvery(args.preempt_every)
    if args.preempt_random is not None:
        min_s, max_s = args.preempt_random
        schedule = PreemptRandom(min_s, max_s) if args.seed is None else PreemptRandom(min_s, max_s, args.seed)
        logging.getLogger("runner.cli").info("random preemption delays use --seed %d", schedule.seed)
        return schedule
    return NoPreemption()


def _seconds(text: str) -> float:
    try:
        value_s = float(text)
    except ValueError:
        value_s = math.nan
    if not math.isfinite(value_s) or value_s < 0:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}: give a number, 0 or more, such as 30")
    return value_s


def _positive_seconds(text: str) -> float:
    value_s = _seconds(text)
    if value_s == 0:
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}: give a number of seconds more than 0, such as 60")
    return value_s


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: give a whole number, 0 or more")
    return value


def _job_id(text: str) -> int:
    if not (text.isascii() and text.isdigit() and _is_slurm_job_id(text)):
        raise argparse.ArgumentTypeError(
            f"invalid job id {text!r}: give a whole number from 1 to {MAX_JOB_ID}, as SLURM allows, such as 1234"
        )
    return int(text.lstrip("0"))


def _is_slurm_job_id(digits: str) -> bool:
    # Compare lengths first because int() raises on strings of more than 4300 digits (CPython 3.11+ by default).
    significant = digits.lstrip("0")
    return len(significant) <= len(str(MAX_JOB_ID)) and 1 <= int(significant or "0") <= MAX_JOB_ID


def _task_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid number of tasks {text!r}: give a whole number, 1 or more")
    return value


def _signal_tasks(text: str) -> list[int] | None:
    """Parse ``all`` (None: every task) or comma-separated ranks such as ``0`` or ``1,3``."""
    if text.strip().lower() == "all":
        return None
    try:
        ranks = [int(part) for part in text.split(",")]
    except ValueError:
        ranks = [-1]
    if any(rank < 0 for rank in ranks):
        raise argparse.ArgumentTypeError(
            f"invalid --signal-tasks {text!r}: give 'all' or ranks separated by commas, such as 0 or 1,3"
        )
    return ranks


def _signal(text: str) -> signal.Signals:
    try:
        return parse_signal(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _delay_range(text: str) -> tuple[float, float]:
    try:
        return parse_delay_range(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_local_parser,
    add_inspect_parser,
    add_verify_parser,
    add_submit_parser,
]
"""Functions that each register one subcommand's parser; add new subcommands here."""


if __name__ == "__main__":
    sys.exit(main())
