"""Checkpoints in binary file objects, such as ``io.BytesIO`` or a file the caller opened.

A stream gets the same bytes and the same checks as a checkpoint file, but none of the file machinery: no lock,
no temp file and rename, no fallback checkpoints and no run id check. A checkpoint is written at the stream's
current position, and read from its current position to its end.
"""

from __future__ import annotations

import io
import logging
import os
from typing import IO, Any, Callable

from runner.checkpoint import fileformat
from runner.checkpoint.store import check_trusted

logger = logging.getLogger(__name__)


def is_stream(fname: Any) -> bool:
    return not isinstance(fname, (str, bytes, os.PathLike)) and (hasattr(fname, "read") or hasattr(fname, "write"))


def stream_name(stream: Any) -> str:
    name = getattr(stream, "name", None)
    return name if isinstance(name, str) else f"<{type(stream).__name__} stream>"


def write_to_stream(stream: IO[bytes], write: Callable[[IO[bytes]], None]) -> None:
    """Write a checkpoint at the position of ``stream`` with ``write``; on failure, cut the stream back if it can."""
    if isinstance(stream, io.TextIOBase) or not _supports(stream, "writable", "write"):
        raise TypeError(f"cannot save a checkpoint to {stream_name(stream)}: it is not a binary stream open for "
                        "writing; open it with mode 'wb' or pass a path")
    start = stream.tell() if _supports(stream, "seekable", "seek") else None
    try:
        write(stream)
        stream.flush()
    except BaseException:
        if start is not None:
            _cut_back(stream, start)
        raise


def _cut_back(stream: IO[bytes], start: int) -> None:
    try:
        stream.seek(start)
        stream.truncate()
    except (OSError, ValueError) as error:  # never hide the error that made the save fail
        logger.warning("could not remove the partial checkpoint from %s: %s", stream_name(stream), error)


def open_stream(stream: IO[bytes], trust: bool) -> tuple[IO[bytes], fileformat.VerifiedCheckpoint] | None:
    """Verify the checkpoint from the position of ``stream`` to its end; return it and its verified layout.

    Return None for an empty rest of the stream, which means no checkpoint. A stream that cannot seek is read
    into memory first.
    """
    name = stream_name(stream)
    if isinstance(stream, io.TextIOBase) or not _supports(stream, "readable", "read"):
        raise TypeError(f"cannot load a checkpoint from {name}: it is not a binary stream open for reading; open it "
                        "with mode 'rb' or pass a path")
    if not _supports(stream, "seekable", "seek"):
        stream = io.BytesIO(stream.read())
    if not trust:
        _check_owner(stream, name)
    start = stream.tell()
    end = stream.seek(0, os.SEEK_END)
    if end <= start:
        return None
    window = fileformat.FileWindow(stream, start, end - start)
    verified = fileformat.verify(window, name)
    return window, verified


def _check_owner(stream: IO[bytes], name: str) -> None:
    try:
        descriptor = stream.fileno()
    except (OSError, AttributeError, ValueError):  # an in-memory stream such as io.BytesIO: the caller has the bytes
        return
    check_trusted(name, os.fstat(descriptor))


def _supports(stream: Any, check: str, method: str) -> bool:
    if not hasattr(stream, method):
        return False
    probe = getattr(stream, check, None)
    try:
        return bool(probe()) if callable(probe) else True
    except (OSError, ValueError):  # a closed stream
        return False
