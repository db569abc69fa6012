"""A background save's snapshot: the pickled payload and a copy of each tensor storage in host memory.

The caller's thread pickles the payload with runner's pickler, which gives each tensor storage the persistent id
that ``torch.save`` would give it, and copies each storage's bytes into host memory kept from one save to the
next. The worker thread then writes the checkpoint with ``torch.save``, replaying those bytes through a pickle
module of its own. The file is byte for byte the one ``torch.save`` writes for the payload (a test compares them),
while torch's zip writer and its bookkeeping for each storage run in the worker, not in the training loop.
"""

from __future__ import annotations

import io
import types
from typing import Any, BinaryIO

import torch
from torch.serialization import DEFAULT_PROTOCOL, location_tag, normalize_storage_type
from torch.utils.serialization import config as serialization_config

from runner.checkpoint.standard_pickling import CheckpointPickler

ALIGNMENT = 64
"""Each copy starts at a multiple of this many bytes of the host memory."""


class Snapshot:
    """The payload of one background save, taken by ``take`` and written by ``write`` as ``torch.save`` would."""

    def __init__(self) -> None:
        self._memory = HostMemory()
        self._pickled = b""
        self._copies: list[torch.UntypedStorage] = []
        self._save_settings: dict[str, Any] = {}

    def take(self, payload: Any) -> None:
        """Pickle ``payload`` and copy every tensor storage it contains into host memory."""
        self.release()
        buffer = io.BytesIO()
        pickler = _StoragePickler(buffer, DEFAULT_PROTOCOL)
        pickler.dump(payload)
        self._copies = self._memory.copy(pickler.storages)
        self._pickled = buffer.getvalue()
        self._save_settings = _save_settings()

    def write(self, target: BinaryIO, settings: dict[str, Any] | None = None) -> None:
        """Write the payload to ``target`` with ``torch.save``, from the bytes that ``take`` kept.

        torch.save runs with the ``torch.utils.serialization.config`` settings of the thread that called ``take``,
        updated with ``settings`` (such as ``{"save.compute_crc32": False}``).
        """
        with serialization_config.patch({**self._save_settings, **(settings or {})}):
            torch.save(_Replay(self._pickled, self._copies), target, pickle_module=_replay_module)

    def release(self) -> None:
        """Drop the pickled bytes and the views of host memory. The memory itself stays for the next snapshot."""
        self._pickled = b""
        self._copies = []


class HostMemory:
    """Host memory for the storage copies, kept from one snapshot to the next.

    Fresh memory costs a page fault for each page on its first write, which takes longer than the copy itself.
    NOTE: the memory is pageable, so copies from a GPU are not overlapped with anything; pinned memory may be faster.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def copy(self, storages: list[torch.UntypedStorage]) -> list[torch.UntypedStorage]:
        """Return a copy of each storage, each a storage of its own over a part of this memory."""
        sizes = [storage.nbytes() for storage in storages]
        needed = sum(_aligned(size) for size in sizes)
        if needed > len(self._buffer):
            # A state that grows from save to save, such as a replay buffer, reallocates now and then, not every time.
            self._buffer = bytearray(max(needed, len(self._buffer) * 5 // 4))
        memory = memoryview(self._buffer)
        copies = []
        offset = 0
        for storage, size in zip(storages, sizes):
            if size == 0:
                copies.append(torch.UntypedStorage(0))
                continue
            copy = torch.frombuffer(memory[offset:offset + size], dtype=torch.uint8).untyped_storage()
            copy.copy_(storage)  # from any device into host memory
            copies.append(copy)
            offset += _aligned(size)
        return copies


def _save_settings() -> dict[str, Any]:
    """Return torch.save's settings in this thread: torch keeps them per thread."""
    return {key: value for key, value in serialization_config.get_config_copy().items() if key.startswith("save.")}


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


class _StoragePickler(CheckpointPickler):
    """Runner's pickler, giving each tensor storage the persistent id ``torch.save`` gives it, and keeping each
    storage in the order of its key."""

    def __init__(self, file: BinaryIO, protocol: int):
        super().__init__(file, protocol)
        self.storages: list[torch.UntypedStorage] = []
        self._keys: dict[int, str] = {}
        self._dtypes: dict[int, torch.dtype] = {}

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.storage.TypedStorage):
            storage, dtype, numel = obj._untyped_storage, obj.dtype, obj._size()
            storage_type = getattr(torch, obj._pickle_storage_type())
        elif torch.is_storage(obj):
            storage, dtype, numel = obj, torch.uint8, obj.nbytes()
            storage_type = normalize_storage_type(type(obj))
        else:
            return None
        self._check_dtype(storage, dtype)
        key = self._keys.get(storage._cdata)
        if key is None:
            key = self._keys[storage._cdata] = str(len(self._keys))
            self.storages.append(storage)
        fake_device = getattr(obj, "_fake_device", None)
        location = str(fake_device) if fake_device is not None else location_tag(storage)
        return "storage", storage_type, key, location, numel

    def _check_dtype(self, storage: torch.UntypedStorage, dtype: torch.dtype) -> None:
        address = storage.data_ptr()
        if address == 0 or storage.device.type == "meta":
            return
        seen = self._dtypes.setdefault(address, dtype)
        if seen != dtype:  # torch.save rejects this too: the file gives each storage one dtype
            raise RuntimeError(f"cannot save tensors that view the same data as different types ({seen} and {dtype}): "
                               "save a copy of one of them (tensor.clone()) instead")


class _Replay:
    """The object the worker passes to ``torch.save``: the pickled payload and the storage copies in key order."""

    def __init__(self, pickled: bytes, copies: list[torch.UntypedStorage]):
        self.pickled = pickled
        self.copies = copies


class _ReplayPickler:
    """A pickler that writes a snapshot's pickled bytes and hands torch the storage copies in key order."""

    def __init__(self, file: BinaryIO, protocol: int | None = None, **kwargs: Any):
        self._file = file

    def persistent_id(self, obj: Any) -> Any:  # torch.save's subclass records each storage here
        return None

    def dump(self, replay: _Replay) -> None:
        for copy in replay.copies:
            self.persistent_id(copy)
        self._file.write(replay.pickled)


_replay_module = types.ModuleType("runner.checkpoint.snapshot.replay")
_replay_module.Pickler = _ReplayPickler  # type: ignore[attr-defined]
