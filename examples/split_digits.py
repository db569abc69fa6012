"""Class-incremental learning on scikit-learn's handwritten digits, resumable after any preemption.

Five experiences of two digit classes each, trained with naive fine-tuning or with a small replay buffer. After
every experience the script prints the accuracy on each experience seen so far and saves a checkpoint. Run it
directly, under ``runner local`` or in a SLURM job: it resumes from ``WORKDIR/checkpoint.pkl`` when one exists.
With ``--checkpoint-on-signal iteration`` a preempted job saves and stops after the iteration in progress, and
resumes from that iteration, instead of training on to the end of the experience.

    python examples/split_digits.py --workdir runs/digits
    runner local --preempt-every 6 --max-preemptions 3 -- python examples/split_digits.py --workdir runs/digits
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import runner

CLASSES_PER_EXPERIENCE = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="folder for the checkpoint and final.json")
    parser.add_argument("--strategy", choices=["naive", "replay"], default="replay", help="training strategy")
    parser.add_argument("--epochs", type=int, default=200, help="epochs per experience")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256, help="width of the two hidden layers")
    parser.add_argument("--replay-per-class", type=int, default=20, help="samples kept per class by replay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; keep it fixed across restarts so results are bitwise reproducible")
    parser.add_argument("--checkpoint-on-signal", choices=["experience", "iteration"], default="experience",
                        help="after a preemption signal, save and stop at the end of the experience (default) or "
                             "after the iteration in progress")
    parser.add_argument("--background-saves", action="store_true",
                        help="write the checkpoint after each experience in the background while training goes on")
    return parser.parse_args(argv)


@dataclass
class Experience:
    """One slice of the stream: the training and test samples of two classes."""

    index: int
    classes: list[int]
    train_x: "torch.Tensor"
    train_y: "torch.Tensor"
    test_x: "torch.Tensor"
    test_y: "torch.Tensor"


def load_stream(seed: int) -> list[Experience]:
    """Split the digits data set into 5 experiences of 2 classes, with a fixed 75/25 train/test split."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype("float32") / 16.0
    train_x, test_x, train_y, test_y = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)
    stream = []
    for index in range(10 // CLASSES_PER_EXPERIENCE):
        classes = list(range(index * CLASSES_PER_EXPERIENCE, (index + 1) * CLASSES_PER_EXPERIENCE))
        train_mask = [label in classes for label in train_y]
        test_mask = [label in classes for label in test_y]
        stream.append(Experience(
            index, classes,
            torch.from_numpy(train_x[train_mask]), torch.from_numpy(train_y[train_mask]).long(),
            torch.from_numpy(test_x[test_mask]), torch.from_numpy(test_y[test_mask]).long()))
    return stream


class Strategy:
    """Fine-tuning of a small MLP, optionally with a class-balanced replay buffer.

    ``exp_counter`` is the index of the next experience to train, which is what ``save_checkpoint`` records.
    ``epoch``, ``batch_start`` and ``order`` (the epoch's permutation of the samples) are the position of training
    inside that experience, so that a checkpoint taken between two iterations resumes with the next one.
    """

    def __init__(self, hidden: int, epochs: int, batch_size: int, replay_per_class: int):
        import torch

        self.model = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 10))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.loss = torch.nn.CrossEntropyLoss()
        self.epochs = epochs
        self.batch_size = batch_size
        self.replay_per_class = replay_per_class
        self.buffer_x = torch.empty(0, 64)
        self.buffer_y = torch.empty(0, dtype=torch.long)
        self.exp_counter = 0
        self.accuracy: list[list[float]] = []
        self.epoch = 0
        self.batch_start = 0
        self.order: "torch.Tensor | None" = None
        self.iterations = 0
        """Iterations trained over the whole run, restarts included."""

    def train(self, experience: Experience, after_iteration: "Callable[[], None] | None" = None) -> None:
        """Train on ``experience`` from the saved position on; call ``after_iteration()`` after each iteration."""
        import torch

        x = torch.cat([experience.train_x, self.buffer_x])
        y = torch.cat([experience.train_y, self.buffer_y])
        self.model.train()
        while self.epoch < self.epochs:
            if self.order is None:
                self.order = torch.randperm(len(x))
            while self.batch_start < len(x):
                batch = self.order[self.batch_start:self.batch_start + self.batch_size]
                self.optimizer.zero_grad()
                self.loss(self.model(x[batch]), y[batch]).backward()
                self.optimizer.step()
                self.batch_start += self.batch_size
                self.iterations += 1
                if after_iteration is not None:
                    after_iteration()
            self.epoch, self.batch_start, self.order = self.epoch + 1, 0, None
        self._update_buffer(experience)
        self.epoch = 0
        self.exp_counter += 1

    def _update_buffer(self, experience: Experience) -> None:
        import torch

        if self.replay_per_class <= 0:
            return
        for label in experience.classes:
            samples = experience.train_x[experience.train_y == label]
            chosen = torch.randperm(len(samples))[: self.replay_per_class]
            self.buffer_x = torch.cat([self.buffer_x, samples[chosen]])
            self.buffer_y = torch.cat([self.buffer_y, torch.full((len(chosen),), label, dtype=torch.long)])

    def evaluate(self, experiences: list[Experience]) -> list[float]:
        import torch

        self.model.eval()
        with torch.no_grad():
            row = [float((self.model(e.test_x).argmax(1) == e.test_y).float().mean()) for e in experiences]
        self.accuracy.append(row)
        return row


def params_sha256(model: "torch.nn.Module") -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    job = runner.Job()  # first, so that a preemption signal during start-up is recorded
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.workdir / "checkpoint.pkl"

    stream = load_stream(args.seed)
    replay = args.replay_per_class if args.strategy == "replay" else 0
    strategy = Strategy(args.hidden, args.epochs, args.batch_size, replay)
    strategy, start = runner.maybe_load_checkpoint(strategy, checkpoint)
    print(f"restart {job.env.restart_count}: starting at experience {start} of {len(stream)}, after iteration "
          f"{strategy.iterations}", flush=True)
    if strategy.epoch or strategy.batch_start:
        print(f"resuming inside experience {start} at epoch {strategy.epoch}, batch start {strategy.batch_start}, "
              f"after iteration {strategy.iterations}", flush=True)
    first_iteration = strategy.iterations

    def save_mid_experience() -> None:
        print(f"preempted: saving after iteration {strategy.iterations} (experience {strategy.exp_counter}, epoch "
              f"{strategy.epoch}); this attempt trained {strategy.iterations - first_iteration} iterations",
              flush=True)
        runner.save_checkpoint(strategy, checkpoint)

    after_iteration = None
    if args.checkpoint_on_signal == "iteration":
        after_iteration = lambda: job.stop_if_preempted(save_mid_experience)  # noqa: E731

    for experience in stream[start:]:
        began = time.monotonic()
        strategy.train(experience, after_iteration)
        row = strategy.evaluate(stream[: experience.index + 1])
        cells = " ".join(f"{accuracy:.3f}" for accuracy in row)
        print(f"experience {experience.index} classes {experience.classes} trained in "
              f"{time.monotonic() - began:.1f} s; accuracy on experiences 0..{experience.index}: {cells}", flush=True)
        runner.save_checkpoint(strategy, checkpoint, background=args.background_saves)
        job.stop_if_preempted(lambda: print(
            f"preempted: stopping after experience {experience.index}, iteration {strategy.iterations}; this "
            f"attempt trained {strategy.iterations - first_iteration} iterations", flush=True))

    runner.wait_for_saves()  # raises the error of a failed background save
    # Training is done, so a preemption signal now has nothing to save; left armed, one arriving while the
    # interpreter shuts down would kill the process with the signal's default action.
    job.watcher.ignore_further()
    print(f"all experiences trained; this attempt trained {strategy.iterations - first_iteration} iterations", flush=True)
    result = {"accuracy": strategy.accuracy, "params_sha256": params_sha256(strategy.model),
              "restarts": job.env.restart_count, "iterations": strategy.iterations}
    (args.workdir / "final.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"finished: {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main()
