"""Reading tensor storages in the pass that verifies a checkpoint, so that a load reads each byte once.

A verified load would otherwise read the file twice: once to check its checksum, then again in ``torch.load``.
Here ``fileformat.verify`` reads every large storage record of the ``torch.save`` payload straight into a new
storage while it hashes the file, and torch unpickles the payload with those storages only after the whole file
has passed the check. Each storage is an allocation of its own, as ``torch.load`` makes it.

This relies on a private function of torch, ``torch.serialization._load`` and its ``overall_storage`` argument
(torch 2.1 and later). Where that is missing, ``plan`` returns None and loads take the two-pass way.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import logging
from typing import Any, BinaryIO

import torch
import torch.serialization

from runner.checkpoint import fileformat

logger = logging.getLogger(__name__)

MIN_PRELOAD_BYTES = 1 << 20
"""Smaller storages are read again when unpickled; preloading them would save little and cost a call each."""


@functools.cache  # torch does not change while the process runs, and inspect.signature is slow
def supported() -> bool:
    """Tell whether this torch has the private load function and zip reader methods that preloading uses."""
    load = getattr(torch.serialization, "_load", None)
    reader_methods = ("get_all_records", "get_record_offset", "get_record_size", "get_storage_from_record")
    if load is None or not all(hasattr(torch._C.PyTorchFileReader, name) for name in reader_methods):
        return False
    return "overall_storage" in inspect.signature(load).parameters


class PreloadedStorages:
    """The large storage records of one payload, read during verification, handed to torch when it unpickles.

    torch's ``_load`` asks ``overall_storage[start:stop]`` for each storage record, with offsets in the payload.
    A preloaded record is returned as it is; any other one is read from the verified file then.
    """

    def __init__(self, payload_offset: int, records: dict[int, tuple[str, int]], reader: Any):
        self._records = records
        """Every storage record by its offset in the payload: ``(name, size)``."""
        self._storages: dict[int, torch.UntypedStorage] = {}
        self.regions: list[tuple[int, memoryview]] = []
        for offset, (_, size) in sorted(records.items()):
            if size < MIN_PRELOAD_BYTES:
                continue
            storage = torch.UntypedStorage(size)
            self._storages[offset] = storage
            self.regions.append((payload_offset + offset, _writable_view(storage)))
        self._reader = reader
        """The zip reader that found the records, kept to load with: parsing the zip directory again costs time."""

    def __getitem__(self, index: slice) -> torch.UntypedStorage:
        storage = self._storages.pop(index.start, None)
        if storage is not None and storage.nbytes() == index.stop - index.start:
            return storage
        record = self._records.get(index.start)
        if record is None:
            raise RuntimeError(
                f"torch {torch.__version__} asked for bytes {index.start}..{index.stop} of a checkpoint payload, "
                "where no storage record starts; runner's single-pass load does not fit this torch version")
        name, size = record
        return self._reader.get_storage_from_record(name, size, torch.UntypedStorage).untyped_storage()

    def load(self, map_location: Any, pickle_module: Any) -> Any:
        """Unpickle the payload that ``plan`` was given, once verified, taking the storages from here."""
        try:
            return torch.serialization._load(self._reader, map_location, pickle_module, overall_storage=self,
                                             encoding="utf-8")
        finally:
            self._reader = None
            self._storages.clear()


def plan(file: BinaryIO, payload_offset: int, payload_length: int) -> PreloadedStorages | None:
    """Return the storages to fill while ``file`` is verified, or None to load in two passes.

    The zip directory read here is not verified yet, so a damaged one only means no preloading: the checksum
    check that follows reports the damage.
    """
    if not supported():
        return None
    try:
        reader = torch._C.PyTorchFileReader(fileformat.FileWindow(file, payload_offset, payload_length))
        records = _storage_records(reader, payload_length)
    except (RuntimeError, ValueError, OSError) as error:
        logger.debug("not preloading storages of %s: %s", getattr(file, "name", file), error)
        return None
    if not any(size >= MIN_PRELOAD_BYTES for _, size in records.values()):
        return None
    return PreloadedStorages(payload_offset, records, reader)


def _storage_records(reader: Any, payload_length: int) -> dict[int, tuple[str, int]]:
    """Return ``{offset in payload: (record name, size)}`` of every storage record, checked to lie apart."""
    records = {}
    for name in reader.get_all_records():
        if name.startswith("data/"):
            records[reader.get_record_offset(name)] = (name, reader.get_record_size(name))
    end = 0
    for offset, (name, size) in sorted(records.items()):
        if offset < end or offset + size > payload_length:
            raise ValueError(f"storage record {name} at byte {offset} overlaps another or ends past the payload")
        end = offset + size
    return records


def _writable_view(storage: torch.UntypedStorage) -> memoryview:
    """Return a writable byte view of ``storage``'s memory, which the caller keeps alive for as long as the view."""
    size = storage.nbytes()
    return memoryview((ctypes.c_ubyte * size).from_address(storage.data_ptr())).cast("B")
