"""``runner inspect`` and ``runner verify``: check a run's checkpoints from the shell, without unpickling any."""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from runner.checkpoint import inventory, settings, sizes, tempfiles

EXIT_INVALID = 1
"""Exit status of ``runner verify`` when the newest checkpoint is invalid or there is none."""


def add_inspect_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="list the checkpoints kept for a path, and whether each is valid",
        description=(
            "List the checkpoint at PATH and the older ones kept beside it (PATH.<n>), newest first, with the "
            "experience counter, size, time written, run id, and whether each is valid or why not. Each file's "
            "size, commit record and checksum are checked; nothing is unpickled. Then list the temp files and "
            "renamed old checkpoints of PATH that a save left behind, with their sizes."
        ),
    )
    _add_common_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per checkpoint instead of a table")
    parser.set_defaults(run_subcommand=run_inspect)


def add_verify_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="exit 0 if the newest checkpoint of a path is valid, 1 if not",
        description=(
            "Check the newest checkpoint of PATH as loading would, without unpickling it: exit 0 when it is valid, "
            f"{EXIT_INVALID} when it is invalid, untrusted (another user could have written it) or there is none. "
            "Older kept checkpoints are reported but do not change the exit status."
        ),
    )
    _add_common_arguments(parser)
    parser.set_defaults(run_subcommand=run_verify)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the checkpoint path, as passed to save_checkpoint")
    parser.add_argument(
        "--run-id", metavar="ID",
        help=f"count a checkpoint as valid only if it belongs to run ID (default: {settings.RUN_ID_ENV_VAR} when set, "
             "else accept every run)",
    )


def run_inspect(args: argparse.Namespace) -> int:
    statuses = _examine(args)
    if not statuses:
        print(f"runner inspect: no checkpoint at {args.path}, nor kept ones named {args.path}.<n>", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        for status in statuses:
            print(json.dumps(_as_record(status), sort_keys=True))
        return 0
    _print_table(statuses)
    for leftover, size, description in tempfiles.leftovers(args.path):
        print(f"leftover: {leftover} ({_size_text(size)}), {description}; the next save removes it unless its writer runs")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    statuses = _examine(args)
    if not statuses:
        print(f"invalid: no checkpoint at {args.path}, nor kept ones named {args.path}.<n>")
        return EXIT_INVALID
    newest = statuses[0]
    if newest.number is not None:
        print(f"note: {args.path} is missing; the newest checkpoint is {newest.path}")
    if newest.untrusted and not settings.trust_from_environment():
        print(f"untrusted: {newest.path}: {newest.untrusted}, so loading refuses it unless trust=True or "
              f"{settings.TRUST_ENV_VAR}=1")
        return EXIT_INVALID
    if newest.valid:
        print(f"valid: {newest.path} (experience {_field(newest, 'exp_counter')}, {_size_text(newest.size)})")
        return 0
    print(f"invalid: {newest.path}: {newest.problem}")
    fallback = next((status for status in statuses[1:] if status.valid), None)
    if fallback is not None:
        print(f"loading would fall back to {fallback.path} (experience {_field(fallback, 'exp_counter')})")
    else:
        print("no older valid checkpoint is kept, so loading would fail")
    return EXIT_INVALID


def _examine(args: argparse.Namespace) -> list[inventory.CheckpointStatus]:
    run_id = args.run_id if args.run_id is not None else settings.resolve_run_id(None)
    return inventory.examine_all(args.path, inventory.ANY_RUN if run_id is None else run_id)


def _print_table(statuses: list[inventory.CheckpointStatus]) -> None:
    rows = [("FILE", "EXPERIENCE", "SIZE", "WRITTEN", "RUN", "STATUS")]
    for status in statuses:
        rows.append((
            status.path,
            str(_field(status, "exp_counter")),
            _size_text(status.size),
            _written_text(status),
            str(_field(status, "run_id") if _field(status, "run_id", None) is not None else "-"),
            "valid" if status.valid else f"invalid: {status.problem}",
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    for status in statuses:
        if status.untrusted:
            print(f"note: loading {status.path} needs trust=True: {status.untrusted}")


def _as_record(status: inventory.CheckpointStatus) -> dict:
    return {
        "path": status.path,
        "number": status.number,
        "exp_counter": _field(status, "exp_counter", None),
        "size": status.size,
        "created_at": _field(status, "created_at", None),
        "modified_at": status.modified_at,
        "run_id": _field(status, "run_id", None),
        "valid": status.valid,
        "problem": status.problem,
        "untrusted": status.untrusted,
    }


def _field(status: inventory.CheckpointStatus, name: str, missing: object = "-") -> object:
    return missing if status.header is None else status.header.get(name, missing)


def _size_text(size: int | None) -> str:
    return "-" if size is None else sizes.format_size(size)


def _written_text(status: inventory.CheckpointStatus) -> str:
    """Format the time in the header, or the file's modification time when the header cannot be trusted."""
    created_at = _field(status, "created_at", None)
    if not isinstance(created_at, (int, float)):
        created_at = status.modified_at
    if created_at is None:
        return "-"
    return datetime.datetime.fromtimestamp(created_at).astimezone().isoformat(timespec="seconds")
