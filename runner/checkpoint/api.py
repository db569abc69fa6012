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
from runner.checkpoint import fileformat, inventory, locks, rng, settings, store
from runner.checkpoint.pickling import LoadContext, SaveContext, loading, pickle_module, saving
from runner.errors import CheckpointError, CheckpointSaveError, CorruptCheckpointError, NoValidCheckpointError

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 300.0


def save_checkpoint(
    strategy: Any,
    fname: str | os.PathLike,
    exclude: Iterable[str] | None = None,
    *,
    exp_counter: int | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    keep: int | None = None,
    run_id: str | None = None,
    lock: str | None = None,
) -> None:
    """Save ``strategy`` and the random state to ``fname`` atomically, under a lock beside it.

    ``exclude`` names attributes of the strategy to leave out. ``exp_counter`` is the index of the next experience
    to train; by default it is read from ``strategy.clock.train_exp_counter`` (Avalanche) or ``strategy.exp_counter``.
    ``keep`` is how many committed checkpoints to keep, the newest included: older ones stay beside ``fname`` as
    ``fname.<n>``, fallbacks for a damaged newest one (default ``RUNNER_KEEP_CHECKPOINTS``, else 2). ``run_id``
    (default ``RUNNER_RUN_ID``, else none) marks the checkpoint as this run's; a save never replaces another run's
    checkpoint. ``lock`` is ``"flock"`` (default ``RUNNER_LOCK``, else flock) or ``"soft"`` for filesystems without
    working flock, such as NFS mounted with ``nolock``.
    """
    path = os.fspath(fname)
    keep = settings.resolve_keep(keep)
    run_id = settings.resolve_run_id(run_id)
    counter = _exp_counter_of(strategy) if exp_counter is None else int(exp_counter)
    payload = {"strategy": strategy, "rng": rng.capture(), "exp_counter": counter}
    context = SaveContext(root=strategy, exclude=frozenset(exclude or ()))
    header = {**_header(counter, sorted(context.exclude)), "run_id": run_id}

    def write(file: IO[bytes]) -> None:
        writer = fileformat.HashingWriter(file)
        fileformat.write_header(writer, header)
        payload_offset = writer.bytes_written
        with saving(context):
            torch.save(payload, writer, pickle_module=pickle_module)
        fileformat.write_commit(writer, payload_offset)

    try:
        store.save_file(path, write, keep=keep, run_id=run_id, lock_kind=lock, lock_timeout_s=lock_timeout_s)
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
    run_id: str | None = None,
    lock: str | None = None,
    on_invalid: str = "raise",
) -> tuple[Any, int]:
    """Load the newest valid checkpoint of ``fname``; return ``(strategy, index of the next experience)``.

    Without a checkpoint, return ``strategy`` unchanged and 0, so that one script serves the first run and every
    resume. Attributes left out with ``exclude`` on save keep the values of the ``strategy`` passed in.

    Every checkpoint is checked (size, commit record, SHA-256, run id) before anything is unpickled. A newer
    checkpoint that fails the check is skipped with a WARNING, and an older kept one (``fname.<n>``) is loaded.
    When checkpoints exist but none is valid, NoValidCheckpointError lists them with the reasons, unless
    ``on_invalid="start_fresh"``, which logs them and starts from experience 0. ``run_id`` (default
    ``RUNNER_RUN_ID``, else none) must match the one the checkpoint was saved with. ``trust=True`` (or
    ``RUNNER_TRUST_CHECKPOINTS=1``) loads a checkpoint that another user owns or could have written.
    """
    path = os.fspath(fname)
    if on_invalid not in ("raise", "start_fresh"):
        raise ValueError(f"invalid on_invalid={on_invalid!r}: use 'raise' (the default) or 'start_fresh'")
    run_id = settings.resolve_run_id(run_id)
    if not inventory.checkpoint_files(path):
        logger.info("no checkpoint at %s, starting from experience 0", path)
        return strategy, 0
    try:
        with locks.locked(path, lock_timeout_s, lock), inventory.open_newest_valid(path, run_id, trust) as found:
            if found is None:  # removed between the first look and taking the lock
                logger.info("no checkpoint at %s, starting from experience 0", path)
                return strategy, 0
            payload, header = _read(found, map_location)
    except NoValidCheckpointError as error:
        if on_invalid == "raise":
            raise
        logger.warning("%s\nstarting from experience 0, as on_invalid='start_fresh' asks", error)
        return strategy, 0
    loaded = payload["strategy"]
    for name in header.get("excluded", ()):
        if hasattr(strategy, name):
            setattr(loaded, name, getattr(strategy, name))
    rng.restore(payload["rng"])
    logger.info("loaded checkpoint %s, resuming at experience %d", found.verified.path, payload["exp_counter"])
    return loaded, payload["exp_counter"]


def _read(found: inventory.OpenCheckpoint, map_location: Any) -> tuple[dict, dict]:
    verified = found.verified
    window = fileformat.FileWindow(found.file, verified.payload_offset, verified.payload_length)
    try:
        with loading(LoadContext(map_location=map_location)):
            payload = torch.load(window, map_location=map_location, pickle_module=pickle_module, weights_only=False)
    except CheckpointError:
        raise
    except Exception as error:
        raise CorruptCheckpointError(
            f"checkpoint {verified.path} passed its checksum but could not be unpickled: "
            f"{type(error).__name__}: {error}", verified.path) from error
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
