"""Checkpoints: atomic, locked, verified files holding a whole strategy and the random state."""

from runner.checkpoint.api import maybe_load_checkpoint, save_checkpoint
from runner.checkpoint.rng import register_generator

__all__ = ["maybe_load_checkpoint", "save_checkpoint", "register_generator"]
