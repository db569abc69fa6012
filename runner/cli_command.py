"""The job's command at the end of ``runner local`` and ``runner submit``, which must follow ``--``."""

from __future__ import annotations

import argparse


def command_after_separator(parser: argparse.ArgumentParser, words: list[str], example: str) -> list[str]:
    """Return the command from the words after ``--``; exit with a usage error when ``--`` or the command is missing.

    Without ``--``, argparse hands every word from the first one that is not an option to the command, so an
    option written after a stray word, such as ``--dry-run``, would silently become part of the command.
    """
    if not words or words == ["--"]:
        parser.error(f"missing command: put it after '--', such as: {example}")
    if words[0] != "--":
        parser.error(f"put the command after '--', such as: {example}. {words[0]!r} came first without '--', and "
                     "every option after it would have become part of the command")
    return words[1:]
