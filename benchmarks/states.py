"""The training state that the benchmarks save and load: a model, its optimizer and a little bookkeeping."""

from __future__ import annotations

import torch

MIB = 1 << 20
LAYER_WIDTH = 1024
"""Each linear layer has a 1024 x 1024 float32 weight (4 MiB) and a bias."""


class BenchmarkStrategy:
    """A strategy as a continual-learning job keeps it: an MLP, the state of SGD with momentum, and counters.

    The momentum buffers are as large as the parameters, so the tensors total about twice the model's size. The
    optimizer is kept as its state dict because plain dill 0.4.1, which the usual practice uses, cannot pickle a
    ``torch.optim.SGD`` object (runner's pickler can).
    """

    def __init__(self, size_mib: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        layers = max(1, size_mib // 8)
        self.model = torch.nn.Sequential(*[torch.nn.Linear(LAYER_WIDTH, LAYER_WIDTH) for _ in range(layers)])
        with torch.no_grad():
            for parameter in self.model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        for parameter in self.model.parameters():
            parameter.grad = torch.ones_like(parameter)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.optimizer_state = optimizer.state_dict()
        self.exp_counter = 3
        self.accuracy = [[0.9, 0.8], [0.85, 0.8, 0.7]]

    def tensor_bytes(self) -> int:
        """Return the bytes of every tensor in the state: parameters and momentum buffers."""
        total = sum(parameter.nbytes for parameter in self.model.parameters())
        for state in self.optimizer_state["state"].values():
            total += sum(value.nbytes for value in state.values() if isinstance(value, torch.Tensor))
        return total


def placeholder() -> BenchmarkStrategy:
    """Return a one-layer strategy to pass to ``maybe_load_checkpoint``, which returns the loaded one instead."""
    return BenchmarkStrategy(8, seed=1)
