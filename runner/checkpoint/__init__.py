"""Checkpoints: atomic, locked, verified files holding a whole strategy and the random state."""

from runner.checkpoint.api import maybe_load_checkpoint, save_checkpoint
from runner.checkpoint.background import wait_for_saves
from runner.checkpoint.rng import register_generator, unregister_generator
from runner.checkpoint.unique import constructor_based_serialization

__all__ = [
    "constructor_based_serialization",
    "maybe_load_checkpoint",
    "register_generator",
    "save_checkpoint",
    "unregister_generator",
    "wait_for_saves",
]
