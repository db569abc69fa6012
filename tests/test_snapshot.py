"""A background save's snapshot writes exactly what torch.save writes, and keeps its host memory between saves."""

import io
import threading

import numpy
import pytest
import torch
from torch.utils.serialization import config as serialization_config

import runner
from runner.checkpoint import serialization
from runner.checkpoint.exclusion import Exclusion
from runner.checkpoint.pickling import SaveContext, saving
from runner.checkpoint.snapshot import Snapshot
from runner.checkpoint.standard_pickling import pickle_module
from runner.errors import CheckpointSaveError


def shared_storages():
    base = torch.arange(24, dtype=torch.float32)
    return {"base": base, "view": base[5:11].view(2, 3), "strided": base[::4], "again": base}


def mixed_dtypes():
    return {"int64": torch.arange(5), "bool": torch.tensor([True, False]), "half": torch.ones(3, dtype=torch.half),
            "empty": torch.empty(0), "scalar": torch.tensor(2.5), "untyped": torch.zeros(7).untyped_storage()}


def modules():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return {"model": model, "optimizer": optimizer, "parameter": torch.nn.Parameter(torch.ones(2))}


def needs_dill():
    """A lambda sends the dump to dill's pickler, which must give storages the same persistent ids."""
    return {"weights": torch.randn(10), "schedule": lambda step: 0.5 ** step, "array": numpy.arange(4)}


def torch_save_bytes(payload):
    with saving(SaveContext(Exclusion())), serialization._without_zip_crc32():
        buffer = io.BytesIO()
        torch.save(payload, buffer, pickle_module=pickle_module)
    return buffer.getvalue()


def snapshot_bytes(snapshot, payload):
    with saving(SaveContext(Exclusion())), serialization._without_zip_crc32():
        snapshot.take(payload)
        buffer = io.BytesIO()
        snapshot.write(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("make_payload", [shared_storages, mixed_dtypes, modules, needs_dill])
def test_snapshot_matches_torch_save(make_payload):
    payload = make_payload()

    assert snapshot_bytes(Snapshot(), payload) == torch_save_bytes(payload)


def test_snapshot_keeps_bytes_of_the_call():
    payload = {"weights": torch.zeros(1000)}
    snapshot = Snapshot()
    expected = torch_save_bytes(payload)
    with saving(SaveContext(Exclusion())):
        snapshot.take(payload)

    payload["weights"].add_(1.0)
    buffer = io.BytesIO()
    snapshot.write(buffer, {"save.compute_crc32": False})

    assert buffer.getvalue() == expected


def test_snapshot_written_with_caller_save_settings():
    """torch keeps its save settings per thread, and the worker thread that writes must use the caller's."""
    payload = {"weights": torch.arange(100.0)}
    snapshot = Snapshot()
    with serialization_config.patch({"save.storage_alignment": 4096}):
        expected = torch_save_bytes(payload)
        with saving(SaveContext(Exclusion())), serialization._without_zip_crc32():
            snapshot.take(payload)
    written = io.BytesIO()

    writer = threading.Thread(target=snapshot.write, args=(written,))
    writer.start()
    writer.join()

    assert written.getvalue() == expected
    assert written.getvalue() != torch_save_bytes(payload)


def test_host_memory_reused_between_snapshots():
    snapshot = Snapshot()
    small, large = {"w": torch.ones(1 << 16)}, {"w": torch.ones(1 << 18)}

    snapshot_bytes(snapshot, small)
    first = snapshot._memory._buffer
    snapshot_bytes(snapshot, small)
    assert snapshot._memory._buffer is first

    assert snapshot_bytes(snapshot, large) == torch_save_bytes(large)
    grown = snapshot._memory._buffer
    assert grown is not first
    assert len(grown) >= 4 << 18
    assert snapshot_bytes(snapshot, small) == torch_save_bytes(small)
    assert snapshot._memory._buffer is grown

    snapshot_bytes(snapshot, {"w": torch.ones((1 << 18) + 1024)})  # a state that grows a little
    assert len(snapshot._memory._buffer) == len(grown) * 5 // 4


def test_two_dtypes_one_storage_rejected(tmp_path):
    weights = torch.zeros(4)
    state = {"weights": weights, "bits": weights.view(torch.int32)}
    with pytest.raises(RuntimeError, match="view the same data as different types"):
        torch_save_bytes(state)
    with pytest.raises(RuntimeError, match=r"different types \(torch.float32 and torch.int32\)"):
        snapshot_bytes(Snapshot(), state)

    with pytest.raises(CheckpointSaveError, match="view the same data as different types"):
        runner.save_checkpoint(state, tmp_path / "c.pkl", exp_counter=0, background=True)
    assert not (tmp_path / "c.pkl").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_snapshot_matches_torch_save():
    payload = {"weights": torch.randn(1000, device="cuda"), "cpu": torch.ones(3)}

    assert snapshot_bytes(Snapshot(), payload) == torch_save_bytes(payload)
