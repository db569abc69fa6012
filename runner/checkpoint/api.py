"""``save_checkpoint`` and ``maybe_load_checkpoint``: the two calls a training script makes."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import IO, Any, Iterable

import dill
import torch

from runner import __version__
from runner.checkpoint import background as background_saves
from runner.checkpoint import fileformat, inventory, locks, preload, retention, serialization, settings, store, streams
from runner.checkpoint.exclusion import Exclusion, plan_exclusion
from runner.checkpoint.pickling import check_map_location, check_map_location_usable
from runner.checkpoint.snapshot import Snapshot
from runner.checkpoint.unique import Registry, register_unique_objects
from runner.errors import CheckpointError, CorruptCheckpointError, NoValidCheckpointError

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 300.0


def save_checkpoint(
    strategy: Any,
    fname: str | os.PathLike | IO[bytes],
    exclude: Iterable[str] | str | None = None,
    *,
    exp_counter: int | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    keep: int | None = None,
    run_id: str | None = None,
    lock: str | None = None,
    background: bool = False,
) -> None:
    """Save ``strategy`` and the random state to ``fname`` atomically, under a lock beside it.

    ``fname`` may also be a binary file object, such as ``io.BytesIO``: the checkpoint is written at its position
    in the same format, but without lock, atomic rename or fallback checkpoints. ``exclude`` names attributes to
    leave out, as object paths relative to the strategy (``"optimizer"``, ``"plugins[2].iterator"``); a name that
    is not an attribute raises ValueError. State that cannot be pickled raises CheckpointSaveError naming where it
    sits. ``exp_counter`` is the index of the next experience to train; by default it is read from
    ``strategy.clock.train_exp_counter`` (Avalanche) or ``strategy.exp_counter``.
    ``keep`` is how many committed checkpoints to keep, the newest included: older ones stay beside ``fname`` as
    ``fname.<n>``, fallbacks for a damaged newest one (default ``RUNNER_KEEP_CHECKPOINTS``, else 2). ``run_id``
    (default ``RUNNER_RUN_ID``, else none) marks the checkpoint as this run's; a save never replaces another run's
    checkpoint. ``lock`` is ``"flock"`` (default ``RUNNER_LOCK``, else flock) or ``"soft"`` for filesystems without
    working flock, such as NFS mounted with ``nolock``.

    With ``background=True`` the call returns once the state is copied to host memory, and a worker thread
    writes and commits the checkpoint while training goes on (``runner.checkpoint.background``). Every save
    first waits for the background save in flight and raises its error if it failed; so does
    ``runner.wait_for_saves()``, and a preempted job waits for it before it requeues. A background save keeps a
    host buffer as large as the checkpoint for the next one, and needs a path, not a file object.
    """
    keep = settings.resolve_keep(keep)
    run_id = settings.resolve_run_id(run_id)
    lock = settings.resolve_lock_kind(lock)  # here, not in the worker, so a background save rejects it at the call
    lock_timeout_s = settings.check_lock_timeout(lock_timeout_s)
    counter = _exp_counter_of(strategy) if exp_counter is None else int(exp_counter)
    if counter < 0:
        raise ValueError(f"invalid experience counter {counter}: it is the index of the next experience, 0 or more")
    exclusion = plan_exclusion(strategy, exclude)
    header = {**_header(counter, list(exclusion.paths)), "run_id": run_id}
    name = streams.stream_name(fname) if streams.is_stream(fname) else _checked_path(fname)
    if background:
        if streams.is_stream(fname):
            raise ValueError(f"background=True needs a checkpoint path, not the file object {name}: pass a path, "
                             "or save without background")
        _save_in_background(strategy, name, counter, header, exclusion, keep, run_id, lock, lock_timeout_s)
        return
    background_saves.saver().wait_before_save(name)  # saves commit in the order they were made

    def write(file: IO[bytes]) -> None:
        serialization.write_checkpoint(file, strategy, counter, header, exclusion, name)

    if streams.is_stream(fname):
        streams.write_to_stream(fname, write)
    else:
        store.save_file(name, write, keep=keep, run_id=run_id, lock_kind=lock, lock_timeout_s=lock_timeout_s)
    logger.info("saved checkpoint %s (next experience %d)", name, counter)


def _save_in_background(strategy: Any, name: str, counter: int, header: dict, exclusion: Exclusion, keep: int,
                        run_id: str | None, lock: str | None, lock_timeout_s: float) -> None:
    def take_snapshot(snapshot: Snapshot) -> None:
        serialization.take_snapshot(snapshot, strategy, counter, exclusion, name)

    def commit(snapshot: Snapshot) -> None:
        def write(file: IO[bytes]) -> None:
            serialization.write_snapshot(file, header, snapshot)

        store.save_file(name, write, keep=keep, run_id=run_id, lock_kind=lock, lock_timeout_s=lock_timeout_s)
        logger.info("saved checkpoint %s in the background (next experience %d)", name, counter)

    background_saves.saver().start(name, commit, take_snapshot)


def maybe_load_checkpoint(
    strategy: Any,
    fname: str | os.PathLike | IO[bytes],
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

    ``map_location`` is what ``torch.load`` takes (None, a str, a ``torch.device``, a dict or a callable), and it
    also remaps every ``torch.device`` object in the strategy. ``unique_objects`` is one object or any structure
    holding some, such as a benchmark whose attributes hold data sets: an object in the checkpoint saved with
    ``constructor_based_serialization(..., deduplicate=True)`` whose class and arguments match one of them is that
    very object after loading, not a copy. The random state is restored last.

    ``fname`` may also be a binary file object: the checkpoint is read from its position to its end, with the
    same integrity and trust checks but no lock, fallback or run id check. An empty rest of the stream means no
    checkpoint, so seek back to where the checkpoint starts before loading one just written.

    Every checkpoint is checked (size, commit record, checksum, run id) before anything is unpickled. A newer
    checkpoint that fails the check is skipped with a WARNING, and an older kept one (``fname.<n>``) is loaded.
    When checkpoints exist but none is valid, NoValidCheckpointError lists them with the reasons, unless
    ``on_invalid="start_fresh"``, which logs them and starts from experience 0. ``run_id`` (default
    ``RUNNER_RUN_ID``, else none) must match the one the checkpoint was saved with. ``trust=True`` (or
    ``RUNNER_TRUST_CHECKPOINTS=1``) loads a checkpoint that another user owns or could have written.
    """
    if on_invalid not in ("raise", "start_fresh"):
        raise ValueError(f"invalid on_invalid={on_invalid!r}: use 'raise' (the default) or 'start_fresh'")
    map_location = check_map_location(map_location)
    check_map_location_usable(map_location)
    registry = None if unique_objects is None else register_unique_objects(unique_objects)
    if streams.is_stream(fname):
        return _load_stream(strategy, fname, map_location, registry, trust)
    path = _checked_path(fname, saving=False)
    run_id = settings.resolve_run_id(run_id)
    background_saves.saver().finish()  # this process's own last save is the newest checkpoint it can load
    if not os.path.lexists(path) and not inventory.checkpoint_files(path):  # listing the folder costs more
        logger.info("no checkpoint at %s, starting from experience 0", path)
        return strategy, 0
    try:
        with (locks.locked(retention.family_of(path), lock_timeout_s, lock, unlocked_if_read_only=True),
              inventory.open_newest_valid(path, run_id, trust, preload.plan) as found):
            if found is None:  # removed between the first look and taking the lock
                logger.info("no checkpoint at %s, starting from experience 0", path)
                return strategy, 0
            payload, header = _read(found, map_location, registry)
    except NoValidCheckpointError as error:
        if on_invalid == "raise":
            raise
        _reject_other_run(path, error)
        logger.warning("%s\nstarting from experience 0, as on_invalid='start_fresh' asks", error)
        return strategy, 0
    loaded, counter = serialization.finish_load(payload, header, strategy)
    logger.info("loaded checkpoint %s, resuming at experience %d", found.verified.path, counter)
    return loaded, counter


def _checked_path(fname: str | os.PathLike, saving: bool = True) -> str:
    """Return ``fname`` as a str, checked for a save or a load.

    Raise ValueError when it is empty, names a folder, or lies inside a file. A save also refuses a symlink.
    """
    path = os.fspath(fname)
    if not path:
        raise ValueError("the checkpoint path is empty: pass a file path such as 'runs/checkpoint.pkl'")
    if os.path.isdir(path):
        raise ValueError(f"the checkpoint path {path} is a folder: pass a file path inside it, such as "
                         f"{os.path.join(path, 'checkpoint.pkl')}")
    folder = os.path.dirname(path)
    if folder and os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"the checkpoint path {path} lies inside {folder}, which is a file, not a folder: "
                         "pass a path in a folder")
    if saving and os.path.islink(path):
        raise ValueError(
            f"the checkpoint path {path} is a symlink to {os.readlink(path)}: a save renames a new file over the "
            "path, which would replace the link instead of writing there. Pass the link's target as the path, or "
            "link the folder instead")
    return path


def _reject_other_run(path: str, error: NoValidCheckpointError) -> None:
    """Raise when another run's checkpoint is at ``path``: a fresh start would fail at its first save anyway."""
    for candidate, problem in error.reasons:
        if candidate == path and problem.startswith("it belongs to run"):
            raise CheckpointError(
                f"cannot start fresh at {path}: {problem}, and a save never replaces another run's checkpoint; "
                "use another checkpoint path, or the run id that wrote it", path) from error


def _load_stream(strategy: Any, stream: IO[bytes], map_location: Any, registry: Registry | None,
                 trust: bool) -> tuple[Any, int]:
    opened = streams.open_stream(stream, trust)
    if opened is None:
        logger.info("%s is empty: no checkpoint, starting from experience 0", streams.stream_name(stream))
        return strategy, 0
    file, verified = opened
    payload = _unpickle(file, verified, map_location, registry)
    loaded, counter = serialization.finish_load(payload, verified.header, strategy)
    logger.info("loaded checkpoint %s, resuming at experience %d", verified.path, counter)
    return loaded, counter


def _read(found: inventory.OpenCheckpoint, map_location: Any, registry: Registry | None) -> tuple[dict, dict]:
    return _unpickle(found.file, found.verified, map_location, registry), found.verified.header


def _unpickle(file: IO[bytes], verified: fileformat.VerifiedCheckpoint, map_location: Any,
              registry: Registry | None) -> dict:
    window = fileformat.FileWindow(file, verified.payload_offset, verified.payload_length)
    try:
        return serialization.read_payload(window, map_location, registry, verified.preloaded)
    except CheckpointError:
        raise
    except Exception as error:
        raise CorruptCheckpointError(
            f"checkpoint {verified.path} passed its checksum but could not be unpickled: "
            f"{type(error).__name__}: {error}", verified.path) from error


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
