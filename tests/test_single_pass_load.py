"""Loads read large storages in the pass that checks the checksum; damage is still found before unpickling."""

import functools
import io
import os
import zlib

import pytest
import torch

import runner
from runner.checkpoint import checksums, fileformat, preload
from runner.errors import CorruptCheckpointError, NoValidCheckpointError

LARGE = (preload.MIN_PRELOAD_BYTES // 4) * 3  # float32 elements of a 3 MiB tensor


class Holder:
    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.large = torch.randn(LARGE, generator=generator)
        self.other_large = torch.randn(LARGE // 2, generator=generator).double()
        self.small = torch.arange(10)
        self.view = self.large[5:20]  # shares the storage of ``large``
        self.exp_counter = 1


@pytest.fixture
def unpickle_calls(monkeypatch):
    calls = []
    real_load = torch.serialization._load

    @functools.wraps(real_load)
    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("overall_storage"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.serialization, "_load", recording_load)
    return calls


def test_large_storages_preloaded_and_equal(tmp_path, unpickle_calls):
    saved = Holder()
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(saved, path)

    loaded, counter = runner.maybe_load_checkpoint(Holder(seed=1), path)

    assert counter == 1
    assert torch.equal(loaded.large, saved.large)
    assert torch.equal(loaded.other_large, saved.other_large)
    assert torch.equal(loaded.small, saved.small)
    assert torch.equal(loaded.view, saved.view)
    assert loaded.view.untyped_storage().data_ptr() == loaded.large.untyped_storage().data_ptr()
    assert len(unpickle_calls) == 1
    assert isinstance(unpickle_calls[0], preload.PreloadedStorages)


def test_preloaded_tensor_owns_resizable_storage(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Holder(), path)

    loaded, _ = runner.maybe_load_checkpoint(Holder(seed=1), path)

    assert loaded.large.untyped_storage().nbytes() == loaded.large.nbytes
    loaded.large.resize_(LARGE * 2)  # a slice of one shared allocation could not grow
    assert loaded.large.numel() == LARGE * 2


def test_unsupported_torch_loads_in_two_passes(tmp_path, monkeypatch, unpickle_calls):
    saved = Holder()
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(saved, path)
    monkeypatch.setattr(preload, "supported", lambda: False)

    loaded, _ = runner.maybe_load_checkpoint(Holder(seed=1), path)

    assert torch.equal(loaded.large, saved.large)
    assert unpickle_calls == [None]


def test_map_location_applies_to_preloaded(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Holder(), path)

    loaded, _ = runner.maybe_load_checkpoint(Holder(seed=1), path, map_location={"cpu": "meta"})

    assert loaded.large.device.type == "meta"
    assert loaded.small.device.type == "meta"


def test_damaged_large_storage_never_unpickled(tmp_path, unpickle_calls):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Holder(), path, keep=1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the bytes of ``large``
    path.write_bytes(data)

    with pytest.raises(NoValidCheckpointError, match="fails its CRC-32 check"):
        runner.maybe_load_checkpoint(Holder(seed=1), path)

    assert unpickle_calls == []


def test_damaged_zip_directory_found_by_checksum(tmp_path, unpickle_calls):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Holder(), path, keep=1)
    data = bytearray(path.read_bytes())
    directory = data.rfind(b"PK\x01\x02")  # a central directory entry of the torch.save zip
    data[directory:directory + 4] = b"XXXX"
    path.write_bytes(data)

    with pytest.raises(NoValidCheckpointError, match="fails its CRC-32 check"):
        runner.maybe_load_checkpoint(Holder(seed=1), path)

    assert unpickle_calls == []


def test_damaged_newest_falls_back_after_preload(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    older = Holder(seed=2)
    runner.save_checkpoint(older, path)
    runner.save_checkpoint(Holder(seed=3), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x80
    path.write_bytes(data)

    loaded, _ = runner.maybe_load_checkpoint(Holder(seed=1), path)

    assert torch.equal(loaded.large, older.large)


def test_format_1_sha256_checkpoint_loads(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Holder(), path, keep=1)
    rewrite_with_checksum(path, checksums.SHA256, format_version=1)

    loaded, counter = runner.maybe_load_checkpoint(Holder(seed=1), path)

    assert counter == 1
    assert torch.equal(loaded.large, Holder().large)


def test_format_1_damage_names_sha256(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Holder(), path, keep=1)
    rewrite_with_checksum(path, checksums.SHA256, format_version=1)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x04
    path.write_bytes(data)

    with pytest.raises(CorruptCheckpointError, match="fails its SHA-256 check"):
        with open(path, "rb") as file:
            fileformat.verify(file, str(path))


def test_written_commit_record_holds_crc32(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Holder(), path, keep=1)
    data = path.read_bytes()
    record = data[-fileformat.COMMIT_SIZE:]

    assert record[:8] == checksums.CRC32.commit_magic
    assert record[-32:] == zlib.crc32(data[:-fileformat.COMMIT_SIZE]).to_bytes(4, "little") + bytes(28)


def test_crc32_in_pieces_matches_zlib():
    """A faster CRC-32 implementation must give zlib's values, or older checkpoints would fail their check."""
    data = os.urandom(5 * checksums.CHUNK_BYTES + 3)
    digest = checksums.CRC32.new()
    for start in range(0, len(data), 777_777):
        digest.update(memoryview(data)[start:start + 777_777])

    assert digest.digest() == zlib.crc32(data).to_bytes(4, "little") + bytes(28)


def test_nonzero_crc32_padding_rejected(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    runner.save_checkpoint(Holder(), path, keep=1)
    data = bytearray(path.read_bytes())
    data[-1] = 0x01

    with pytest.raises(CorruptCheckpointError, match="fails its CRC-32 check"):
        fileformat.verify(io.BytesIO(data), "padded.pkl")


@pytest.mark.parametrize("kind", [checksums.CRC32, checksums.SHA256])
def test_checksum_with_regions_matches_plain(kind):
    data = os.urandom(3 * checksums.CHUNK_BYTES + 12345)
    regions = [(100, memoryview(bytearray(5000))),
               (checksums.CHUNK_BYTES, memoryview(bytearray(checksums.CHUNK_BYTES + 7))),
               (len(data) - 10, memoryview(bytearray(10)))]
    expected = kind.new()
    expected.update(data)

    actual = checksums.checksum_file(io.BytesIO(data), len(data), kind, regions)

    assert actual == expected.digest()
    for start, buffer in regions:
        assert bytes(buffer) == data[start:start + len(buffer)]


def test_overlapping_regions_rejected():
    data = bytes(4096)
    regions = [(0, memoryview(bytearray(100))), (50, memoryview(bytearray(100)))]

    with pytest.raises(ValueError, match="overlaps"):
        checksums.checksum_file(io.BytesIO(data), len(data), checksums.CRC32, regions)


def rewrite_with_checksum(path, kind, **header_changes) -> None:
    """Rewrite the checkpoint at ``path`` with the checksum ``kind`` and ``header_changes``, as an older runner would."""
    with open(path, "rb") as file:
        verified = fileformat.verify(file, str(path))
        file.seek(verified.payload_offset)
        payload = file.read(verified.payload_length)
    with open(path, "wb") as file:
        writer = fileformat.HashingWriter(file, kind)
        fileformat.write_header(writer, {**verified.header, **header_changes})
        offset = writer.bytes_written
        writer.write(payload)
        fileformat.write_commit(writer, offset)
