"""Data-parallel class-incremental learning on scikit-learn's digits, resumable after any preemption.

The data-parallel form of split_digits.py: every task keeps a replica of the model, trains on its share of each
batch and sums the gradients with the others (gloo, on CPU). Rank 0 saves a checkpoint after every experience.
After a preemption all tasks stop at the same safe point (an experience boundary, or with --checkpoint-on-signal
iteration any iteration), even when only one task received the signal, and resume from the checkpoint. Run it as N tasks, each started with the SLURM task variables:

    runner local --ntasks 2 --preempt-every 8 --max-preemptions 2 -- \\
        python examples/split_digits_ddp.py --workdir runs/ddp
    srun --ntasks 2 python examples/split_digits_ddp.py --workdir runs/ddp     (in a batch job with --requeue)

With the same number of tasks, a preempted run ends with bitwise the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import runner
from split_digits import Experience, Strategy, load_stream, params_sha256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="folder for the checkpoint and final.json")
    parser.add_argument("--strategy", choices=["naive", "replay"], default="replay", help="training strategy")
    parser.add_argument("--epochs", type=int, default=200, help="epochs per experience")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per step, summed over all tasks")
    parser.add_argument("--hidden", type=int, default=256, help="width of the two hidden layers")
    parser.add_argument("--replay-per-class", type=int, default=20, help="samples kept per class by replay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per task; keep it fixed across restarts so results are bitwise "
                        "reproducible")
    parser.add_argument("--checkpoint-on-signal", choices=["experience", "iteration"], default="experience",
                        help="where the ranks check for a preemption: only after each experience, or also after "
                        "every iteration, saving the position inside the experience")
    parser.add_argument("--allow-world-size-change", action="store_true",
                        help="resume a checkpoint saved with another number of tasks, splitting batches anew")
    return parser.parse_args(argv)


def all_reduce_gradients(model: "torch.nn.Module") -> None:
    """Sum every parameter's gradient over the ranks, as one flat tensor in parameter order.

    One fixed layout for every step keeps gloo's order of additions the same in every attempt, which the
    bitwise comparison with an uninterrupted run relies on.
    """
    import torch
    import torch.distributed as dist

    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([gradient.reshape(-1) for gradient in gradients])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for parameter in parameters:
        parameter.grad = flat[offset:offset + parameter.numel()].view_as(parameter)
        offset += parameter.numel()


class DataParallelStrategy(Strategy):
    """The strategy of split_digits.py, with every batch split over the ranks.

    All ranks draw the same permutation of the samples, so their random state stays identical and rank 0's
    checkpoint resumes every rank. Rank r takes positions r, r + N, r + 2N ... of each batch; each rank's loss is
    its share of the batch's mean, so the summed gradient is the gradient of the whole batch. Training resumes at
    the saved epoch and batch, as in split_digits.py.
    """

    def train(self, experience: Experience, after_iteration: "Callable[[], None] | None" = None) -> None:
        import torch
        import torch.distributed as dist

        rank, world_size = dist.get_rank(), dist.get_world_size()
        loss_sum = torch.nn.CrossEntropyLoss(reduction="sum")
        x = torch.cat([experience.train_x, self.buffer_x])
        y = torch.cat([experience.train_y, self.buffer_y])
        self.model.train()
        while self.epoch < self.epochs:
            if self.order is None:
                self.order = torch.randperm(len(x))
            while self.batch_start < len(x):
                batch = self.order[self.batch_start:self.batch_start + self.batch_size]
                shard = batch[rank::world_size]
                self.optimizer.zero_grad()
                (loss_sum(self.model(x[shard]), y[shard]) / len(batch)).backward()
                all_reduce_gradients(self.model)
                self.optimizer.step()
                self.batch_start += self.batch_size
                self.iterations += 1
                if after_iteration is not None:
                    after_iteration()
            self.epoch, self.batch_start, self.order = self.epoch + 1, 0, None
        self._update_buffer(experience)
        self.epoch = 0
        self.exp_counter += 1


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    job = runner.Job()  # first, so that a preemption signal during start-up is recorded
    rank = job.env.global_rank
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank} pid %(process)d %(name)s: %(message)s")
    import torch
    import torch.distributed as dist

    from runner import distributed

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    distributed.init_process_group("gloo")
    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.workdir / "checkpoint.pkl"

    stream = load_stream(args.seed)
    replay = args.replay_per_class if args.strategy == "replay" else 0
    strategy = DataParallelStrategy(args.hidden, args.epochs, args.batch_size, replay)
    strategy, start = distributed.maybe_load_checkpoint(
        strategy, checkpoint, allow_world_size_change=args.allow_world_size_change)
    if rank == 0:
        print(f"restart {job.env.restart_count}: {dist.get_world_size()} tasks starting at experience {start} of "
              f"{len(stream)}, after iteration {strategy.iterations}", flush=True)

    after_iteration = None
    if args.checkpoint_on_signal == "iteration":
        # Every rank calls this after the same iteration; the save runs on rank 0 alone, inside the stop.
        def after_iteration() -> None:
            job.stop_if_preempted(lambda: distributed.save_checkpoint(strategy, checkpoint))

    for experience in stream[start:]:
        began = time.monotonic()
        strategy.train(experience, after_iteration)
        row = strategy.evaluate(stream[: experience.index + 1])
        if rank == 0:
            cells = " ".join(f"{accuracy:.3f}" for accuracy in row)
            print(f"experience {experience.index} classes {experience.classes} trained in "
                  f"{time.monotonic() - began:.1f} s; accuracy on experiences 0..{experience.index}: {cells}",
                  flush=True)
        distributed.save_checkpoint(strategy, checkpoint)
        job.stop_if_preempted()

    # Training is done, so a preemption signal has nothing left to save. Ignored, a signal that arrives during the
    # final collectives or the interpreter's shutdown cannot kill the rank with the signal's default action.
    job.watcher.ignore_further()
    write_result(args.workdir, strategy, job, rank)


def write_result(workdir: Path, strategy: DataParallelStrategy, job: runner.Job, rank: int) -> None:
    """Write final.json on rank 0, with every rank's parameter hash to show that the replicas agree."""
    import torch.distributed as dist

    hashes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(hashes, params_sha256(strategy.model))
    if rank != 0:
        return
    result = {"accuracy": strategy.accuracy, "params_sha256": hashes[0], "rank_params_sha256": hashes,
              "restarts": job.env.restart_count, "world_size": dist.get_world_size(),
              "iterations": strategy.iterations}
    temporary = workdir / f"final.json.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, workdir / "final.json")
    print(f"finished: {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main()
