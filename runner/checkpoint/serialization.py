"""The bytes of one checkpoint: header, pickled payload and commit record, and the way back to a strategy.

The payload is ``{"strategy", "rng", "exp_counter"}`` written by ``torch.save`` with runner's dill pickler. Loading
unpickles the strategy first, then puts back the excluded attributes and the random state, so that nothing done
while unpickling (a constructor drawing random numbers, say) changes the restored state.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator

import torch

from runner.checkpoint import fileformat, locate, objectpath, rng
from runner.checkpoint.exclusion import Exclusion, plan_exclusion, restore_excluded
from runner.checkpoint.pickling import LoadContext, SaveContext, loading, saving
from runner.checkpoint.preload import PreloadedStorages
from runner.checkpoint.snapshot import Snapshot
from runner.checkpoint.standard_pickling import pickle_module
from runner.checkpoint.unique import Registry, report_rebuilt
from runner.errors import CheckpointSaveError

_ZIP_CRC32 = "save.compute_crc32"
"""The torch.save setting for the CRC-32 of each zip record, which runner turns off."""


def write_checkpoint(file: IO[bytes], strategy: Any, exp_counter: int, header: dict, exclusion: Exclusion,
                     name: str) -> None:
    """Write the whole checkpoint of ``strategy`` to ``file``; ``name`` is the path or stream named in errors.

    Raise CheckpointSaveError naming the object that cannot be pickled, such as ``strategy.plugins[2].iterator``.
    """
    payload = _payload(strategy, exp_counter)

    def write_payload(writer: IO[bytes]) -> None:
        with _pickling(payload, exclusion, name), _without_zip_crc32():
            torch.save(payload, writer, pickle_module=pickle_module)

    _write_framed(file, header, write_payload)


def take_snapshot(snapshot: Snapshot, strategy: Any, exp_counter: int, exclusion: Exclusion, name: str) -> None:
    """Keep the payload of ``strategy`` in ``snapshot``, in host memory, for ``write_snapshot`` to write later.

    Raise CheckpointSaveError naming the object that cannot be pickled.
    """
    payload = _payload(strategy, exp_counter)
    with _pickling(payload, exclusion, name):
        snapshot.take(payload)


def write_snapshot(file: IO[bytes], header: dict, snapshot: Snapshot) -> None:
    """Write a whole checkpoint to ``file`` from the payload that ``take_snapshot`` kept."""

    def write_payload(writer: IO[bytes]) -> None:
        snapshot.write(writer, {_ZIP_CRC32: False})

    _write_framed(file, header, write_payload)


def _payload(strategy: Any, exp_counter: int) -> dict:
    return {"strategy": strategy, "rng": rng.capture(), "exp_counter": exp_counter}


def _write_framed(file: IO[bytes], header: dict, write_payload: Callable[[IO[bytes]], None]) -> None:
    """Write the header, the payload that ``write_payload`` writes, and the commit record that covers both."""
    writer = fileformat.HashingWriter(file)
    fileformat.write_header(writer, header)
    payload_offset = writer.bytes_written
    write_payload(writer)
    fileformat.write_commit(writer, payload_offset)


@contextmanager
def _pickling(payload: dict, exclusion: Exclusion, name: str) -> Iterator[None]:
    """Pickle with ``exclusion`` applied, and turn a failure into a CheckpointSaveError that names the object."""
    with saving(SaveContext(exclusion)):
        try:
            yield
        except Exception as error:  # a __reduce__ may raise anything, and unpicklable_error explains it
            raise unpicklable_error(payload, exclusion, error, name) from error


def unpicklable_error(payload: dict, exclusion: Exclusion, error: Exception, name: str) -> CheckpointSaveError:
    """Build the error for a failed pickling: where the unpicklable object sits, and what to do about it."""
    finding = locate.find_unpicklable(payload["strategy"], exclusion)
    root = "strategy"
    if finding is None:
        finding = locate.find_unpicklable(payload["rng"], exclusion)
        root = "the random state"
    if finding is None:
        return CheckpointSaveError(
            f"saving checkpoint {name} failed while pickling: {type(error).__name__}: {error}. "
            "The previous checkpoint is unchanged.", name)
    where = finding.path(root)
    advice = _advice(finding, root, payload["strategy"])
    return CheckpointSaveError(
        f"saving checkpoint {name} failed: {where} (a {type(finding.obj).__qualname__}) cannot be pickled: "
        f"{type(finding.error).__name__}: {finding.error}. {advice} The previous checkpoint is unchanged.", name)


def _advice(finding: locate.Finding, root: str, strategy: Any) -> str:
    if root != "strategy":
        return "Make the get_state function of that registered random generator return a picklable state."
    if not finding.steps:
        return "Give its class a __getstate__ that returns only picklable state."
    holder = locate.Finding(finding.steps[:-1], None, finding.error).path(root)
    rebuild = f"give the class of {holder} a __getstate__ that drops it and a __setstate__ that rebuilds it"
    steps = _before_standard_library(strategy, finding.excludable_steps())
    exclude_path = objectpath.format_path(steps) if steps else None
    if exclude_path is None or not _can_exclude(strategy, exclude_path):
        return f"To fix it, {rebuild}, or exclude the attribute that holds it."
    if len(steps) == len(finding.steps):
        return f"Leave it out with save_checkpoint(..., exclude=[{exclude_path!r}]), or {rebuild}."
    return (f"Leave out {root}.{exclude_path}, which holds it, with save_checkpoint(..., "
            f"exclude=[{exclude_path!r}]), or give the class that holds it a __getstate__ that drops it.")


def _before_standard_library(strategy: Any, steps: tuple[objectpath.Step, ...]) -> tuple[objectpath.Step, ...]:
    """Return ``steps`` cut before the first attribute of a standard-library object, such as a Thread's lock: the
    user can leave out the attribute that holds the Thread, but not change the Thread's private fields."""
    holder = strategy
    for index, step in enumerate(steps):
        if index > 0 and step.is_attribute and _in_standard_library(holder):
            prefix = steps[:index]
            while prefix and not prefix[-1].is_attribute:
                prefix = prefix[:-1]
            return prefix or steps
        try:
            holder = objectpath.resolve(holder, (step,))
        except (AttributeError, KeyError, IndexError, TypeError):  # the path no longer resolves: keep it whole
            return steps
    return steps


def _in_standard_library(obj: Any) -> bool:
    return type(obj).__module__.partition(".")[0] in sys.stdlib_module_names


def _can_exclude(strategy: Any, path: str) -> bool:
    try:
        plan_exclusion(strategy, [path])
    except ValueError:  # exclude cannot take it, as for a submodule of a torch Module
        return False
    return True


def _without_zip_crc32() -> Any:
    """Return a context in which torch.save skips the CRC-32 of each zip record, in this thread only.

    The checksum of the whole file already covers every byte, and the CRC-32 would cost a second pass over the
    tensors. ``torch.load`` does not check the CRC-32 fields; other zip tools report them as wrong.
    """
    from torch.utils.serialization import config

    return config.patch({_ZIP_CRC32: False})


def read_payload(file: IO[bytes], map_location: Any, registry: Registry | None,
                 preloaded: PreloadedStorages | None = None) -> dict:
    """Unpickle the payload in ``file``, already verified, with a ``map_location`` that check_map_location passed.

    ``preloaded`` contains storages read while the file was verified, which then are not read again, and the zip
    reader over the same bytes of ``file`` that found them.
    """
    with loading(LoadContext(map_location=map_location, unique_objects=registry)):
        if preloaded is not None:
            payload = preloaded.load(map_location, pickle_module)
        else:
            payload = torch.load(file, map_location=map_location, pickle_module=pickle_module, weights_only=False)
    if registry is not None:
        report_rebuilt(registry)
    return payload


def finish_load(payload: dict, header: dict, live_strategy: Any) -> tuple[Any, int]:
    """Put the excluded attributes and the random state back; return the strategy and the next experience."""
    loaded = payload["strategy"]
    restore_excluded(loaded, live_strategy, header.get("excluded", ()))
    rng.restore(payload["rng"])
    return loaded, payload["exp_counter"]
