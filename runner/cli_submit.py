"""``runner submit``: submit a preemptible job to SLURM through submitit, or as a job script from a template."""

from __future__ import annotations

import argparse
import logging
import sys

from runner.backends.commands import CommandError
from runner.backends.sbatch import LAYOUTS, SbatchOptions, SignalSpec, time_limit_minutes, validate_extra_option
from runner.backends.slurm import Submission, job_script, submit_command, submit_job_script, submitit_script
from runner.backends.wait import wait_for_job
from runner.cli_command import command_after_separator

logger = logging.getLogger(__name__)

EXIT_SUBMISSION_FAILED = 1


def add_submit_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="submit a command to SLURM as a preemptible, requeueable job",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Submit COMMAND to SLURM. By default submitit submits it and runs it under srun; with\n"
            "--template, runner renders slurm_templates/ and submits the script with sbatch. The job gets\n"
            "--requeue and a --signal that runner's watcher in the job agrees with. Prints the job id."
        ),
        epilog=("examples:\n"
                "  runner submit --partition debug --time 60 -- python train.py --workdir runs/a\n"
                "  runner submit --template single --signal USR1@120 --dry-run -- python train.py"),
    )
    sbatch = parser.add_argument_group("sbatch options (passed to sbatch under the same names)")
    sbatch.add_argument("--job-name", metavar="NAME", help="job name (default: runner)")
    sbatch.add_argument("--partition", metavar="NAME", help="partition (default: the cluster's default)")
    sbatch.add_argument("--time", type=_time, metavar="TIME",
                        help="time limit: MINUTES, HH:MM:SS or D-HH:MM:SS (default: the partition's)")
    sbatch.add_argument("--cpus-per-task", type=_positive, metavar="N", help="CPUs of each task")
    sbatch.add_argument("--gpus", metavar="[TYPE:]N", help="GPUs of the whole job")
    sbatch.add_argument("--mem", metavar="SIZE", help="memory per node, such as 4G")
    sbatch.add_argument("--ntasks", type=_positive, metavar="N", help="number of tasks")
    sbatch.add_argument("--nodes", type=_positive, metavar="N", help="number of nodes")
    sbatch.add_argument(
        "--signal", type=_signal, default=SignalSpec(), metavar="[B:]SIG[@SECONDS]",
        help="preemption signal and its lead before the time limit (default: USR1@90); the target (B: or not) "
             "follows the job layout")
    sbatch.add_argument("--sbatch-arg", action="append", default=[], type=_sbatch_arg, metavar="KEY[=VALUE]",
                        help="another sbatch option, such as qos=high or exclusive; repeat it for several")

    job = parser.add_argument_group("runner")
    job.add_argument("--template", choices=sorted(LAYOUTS),
                     help="submit a job script rendered from slurm_templates/ with sbatch: single (the command "
                          "replaces the batch shell) or multi (srun starts --ntasks copies); default: submitit")
    job.add_argument("--folder", default="slurm-logs", metavar="DIR",
                     help="folder for the job's log (and submitit's files), created if missing (default: slurm-logs)")
    job.add_argument("--max-requeues", type=_count, metavar="N",
                     help="requeue the job at most N times, then exit 77 (sets RUNNER_MAX_REQUEUES; default: no cap)")
    job.add_argument("--dry-run", action="store_true", help="print the sbatch script and submit nothing")
    job.add_argument("--wait", action="store_true",
                     help="after submitting, wait until the job ends, through its requeues, and exit with its exit "
                          "code (1 for a job cancelled or ended by SLURM without one)")
    job.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]", help="the job to run")
    parser.set_defaults(run_subcommand=run_submit, subcommand_parser=parser)


def run_submit(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.subcommand_parser
    command = command_after_separator(parser, args.command, "runner submit --time 60 -- python train.py")
    if args.wait and args.dry_run:
        parser.error("--wait and --dry-run do not go together: a dry run submits no job to wait for")
    try:
        submission = Submission(_options(args), args.folder, args.max_requeues)
        if args.dry_run:
            script = job_script(args.template, command, submission) if args.template else submitit_script(submission)
            sys.stdout.write(script if script.endswith("\n") else script + "\n")
            return 0
        job_id = _submit(args.template, command, submission)
    except ValueError as error:
        parser.error(str(error))
    except (CommandError, RuntimeError, OSError) as error:
        logger.error("submission failed: %s", error)
        return EXIT_SUBMISSION_FAILED
    print(job_id, flush=True)
    return _wait(job_id) if args.wait else 0


def _wait(job_id: str) -> int:
    try:
        end = wait_for_job(job_id)
    except CommandError as error:
        logger.error("could not follow job %s: %s", job_id, error)
        return EXIT_SUBMISSION_FAILED
    logger.info("job %s ended %s with exit code %d:%d after %d restart(s)", job_id, end.state, end.exit_status,
                end.signal, end.restarts)
    return end.exit_code()


def _submit(template: str | None, command: list[str], submission: Submission) -> str:
    if template:
        job_id = submit_job_script(template, command, submission)
        logger.info("submitted job %s; its log is %s", job_id, submission.absolute_folder() / f"{job_id}.out")
        return job_id
    job = submit_command(command, submission)
    logger.info("submitted job %s through submitit; its log is %s and %s", job.job_id, job.paths.stdout,
                job.paths.stderr)
    return str(job.job_id)


def _options(args: argparse.Namespace) -> SbatchOptions:
    return SbatchOptions(
        job_name=args.job_name or "runner", partition=args.partition, time=args.time,
        cpus_per_task=args.cpus_per_task,
        gpus=args.gpus, mem=args.mem, ntasks=args.ntasks, nodes=args.nodes, signal=args.signal,
        extra=dict(args.sbatch_arg),
    )


def _time(text: str) -> str:
    try:
        time_limit_minutes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _signal(text: str) -> SignalSpec:
    try:
        return SignalSpec.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _sbatch_arg(text: str) -> tuple[str, str | bool]:
    key, equals, value = text.partition("=")
    key = key.strip().removeprefix("--")
    try:
        validate_extra_option(key)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return (key, value) if equals else (key, True)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: give a whole number, 1 or more")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: give a whole number, 0 or more")
    return int(text)
