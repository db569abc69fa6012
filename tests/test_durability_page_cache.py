"""A large save starts writing each tensor to disk as it goes, and drops from the page cache what is already there."""

import os

import pytest
import torch

import runner

TENSOR_BYTES = 2 << 20


@pytest.fixture
def hints(monkeypatch):
    """Record the (offset, length, advice) of every posix_fadvise call, and still make it."""
    if not hasattr(os, "posix_fadvise"):
        pytest.skip("posix_fadvise is Linux and BSD only, and runner gives no hint without it")
    calls = []
    real_fadvise = os.posix_fadvise

    def recording_fadvise(fd, offset, length, advice):
        calls.append((offset, length, advice))
        return real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording_fadvise)
    return calls


def test_hints_follow_the_writes(tmp_path, hints):
    state = {f"tensor{i}": torch.full((TENSOR_BYTES // 4,), float(i)) for i in range(4)}
    path = tmp_path / "c.pkl"
    runner.save_checkpoint(state, path, exp_counter=1)

    assert [advice for _, _, advice in hints] == [os.POSIX_FADV_DONTNEED] * 4
    ends = [offset + length for offset, length, _ in hints]
    assert hints[0][0] == 0
    # Each hint starts where the write before it started, whose pages may be on disk by now and so can be dropped.
    assert [offset for offset, _, _ in hints[1:]] == [end - TENSOR_BYTES for end in ends[:-1]]
    assert ends[-1] <= path.stat().st_size
    loaded, _ = runner.maybe_load_checkpoint(None, path)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())


def test_small_save_gives_no_hint(tmp_path, hints):
    runner.save_checkpoint({"weights": torch.zeros(1000)}, tmp_path / "c.pkl", exp_counter=1)

    assert hints == []
