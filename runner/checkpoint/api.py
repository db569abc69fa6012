"""``save_checkpoint`` and ``maybe_load_checkpoint``: the two calls a training script makes."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import time
from typing import IO, Any, Iterable

import dill
import torch

from runner import __version__
from runner.checkpoint import fileformat, rng, store
from runner.checkpoint.pickling import LoadContext, SaveContext, loading, pickle_module, saving
from runner.errors import CheckpointError, CheckpointSaveError, CorruptCheckpointError

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 300.0


def save_checkpoint(
    strategy: Any,
    fname: str | os.PathLike,
    exclude: Iterable[str] | None = None,
    *,
    exp_counter: int | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> None:
    """Save ``strategy`` and the random state to ``fname`` atomically, under a lock beside it.

    ``exclude`` names attributes of the strategy to leave out. ``exp_counter`` is the index of the next experience
    to train; by default it is read from ``strategy.clock.train_exp_counter`` (Avalanche) or ``strategy.exp_counter``.
    """
    path = os.fspath(fname)
    counter = _exp_counter_of(strategy) if exp_counter is None else int(exp_counter)
    payload = {"strategy": strategy, "rng": rng.capture(), "exp_counter": counter}
    context = SaveContext(root=strategy, exclude=frozenset(exclude or ()))
    header = _header(counter, sorted(context.exclude))

    def write(file: IO[bytes]) -> None:
        writer = fileformat.HashingWriter(file)
        fileformat.write_header(writer, header)
        payload_offset = writer.bytes_written
        with saving(context):
            torch.save(payload, writer, pickle_module=pickle_module)
        fileformat.write_commit(writer, payload_offset)

    with store.locked(path, lock_timeout_s):
        try:
            store.write_atomically(path, write)
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            raise CheckpointSaveError(
                f"saving checkpoint {path} failed: the strategy could not be pickled ({error}); exclude the "
                "attribute with exclude=[...] or give its class __getstate__; the previous checkpoint is unchanged",
                path) from error
    logger.info("saved checkpoint %s (next experience %d)", path, counter)


def maybe_load_checkpoint(
    strategy: Any,
    fname: str | os.PathLike,
    map_location: Any = None,
    unique_objects: Any = None,
    *,
    trust: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> tuple[Any, int]:
    """Load the checkpoint at ``fname`` if there is one; return ``(strategy, index of the next experience)``.

    Without a checkpoint, return ``strategy`` unchanged and 0, so that one script serves the first run and every
    resume. Attributes left out with ``exclude`` on save keep the values of the ``strategy`` passed in.
    """
    path = os.fspath(fname)
    if not os.path.exists(path):
        logger.info("no checkpoint at %s, starting from experience 0", path)
        return strategy, 0
    with store.locked(path, lock_timeout_s):
        payload, header = _read(path, map_location, trust)
    loaded = payload["strategy"]
    for name in header.get("excluded", ()):
        if hasattr(strategy, name):
            setattr(loaded, name, getattr(strategy, name))
    rng.restore(payload["rng"])
    logger.info("loaded checkpoint %s, resuming at experience %d", path, payload["exp_counter"])
    return loaded, payload["exp_counter"]


def _read(path: str, map_location: Any, trust: bool) -> tuple[dict, dict]:
    with open(path, "rb") as file:
        if not trust:
            store.check_trusted(path, os.fstat(file.fileno()))
        verified = fileformat.verify(file, path)
        window = fileformat.FileWindow(file, verified.payload_offset, verified.payload_length)
        try:
            with loading(LoadContext(map_location=map_location)):
                payload = torch.load(window, map_location=map_location, pickle_module=pickle_module,
                                     weights_only=False)
        except CheckpointError:
            raise
        except Exception as error:
            raise CorruptCheckpointError(
                f"checkpoint {path} passed its checksum but could not be unpickled: {type(error).__name__}: {error}",
                path) from error
    return payload, verified.header


def _exp_counter_of(strategy: Any) -> int:
    clock = getattr(strategy, "clock", None)
    if clock is not None and hasattr(clock, "train_exp_counter"):
        return int(clock.train_exp_counter)
    if hasattr(strategy, "exp_counter"):
        return int(strategy.exp_counter)
    raise ValueError(
        f"cannot tell which experience comes next for a {type(strategy).__qualname__}: pass exp_counter= to "
        "save_checkpoint, or give the strategy an exp_counter attribute (or an Avalanche clock)")


def _header(exp_counter: int, excluded: list[str]) -> dict:
    return {
        "excluded": excluded,
        "format_version": fileformat.FORMAT_VERSION,
        "runner_version": __version__,
        "torch_version": torch.__version__,
        "dill_version": dill.__version__,
        "exp_counter": exp_counter,
        "created_at": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
