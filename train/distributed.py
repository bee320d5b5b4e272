"""Data-parallel training of one model under ``torchrun`` (DistributedDataParallel; NCCL on GPUs, gloo on the CPU).

Every epoch draws one shuffled order from the seed and the epoch number (as ``DistributedSampler.set_epoch``
does), cuts it into the recipe's batches and gives each rank every ``world_size``-th sample of each batch: all
ranks take the same number of steps, no sample is read twice in an epoch and none is left out. Each rank's loss is
scaled so that DDP's gradient average equals the gradient of the whole batch, i.e. the single-process recipe.
Random streams (augmentation, dropout) are reseeded per epoch and rank, so a resume at an epoch boundary is exact
with rank 0's state file alone; rank 0 alone writes.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Rank 0 decodes the whole dataset into the cache while the others wait at a barrier: hours on a large dataset.
TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def writer(self) -> bool:
        """Rank 0 writes checkpoints, state, logs and artefacts; the others only compute."""
        return self.rank == 0


def from_environment() -> Ranks | None:
    """The ranks torchrun set in the environment, or None outside torchrun (or with a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    return Ranks(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def start(ranks: Ranks) -> torch.device:
    """Join the process group (NCCL when this rank has a GPU, else gloo); return this rank's device."""
    if torch.cuda.is_available():
        device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def epoch_steps(n_samples: int, batch_size: int, *, seed: int, epoch: int, world_size: int) -> list[list[int]]:
    """The epoch's batches of sample indices (the same on every rank). A last batch too small to give every rank a
    sample is merged into the one before, so each rank has work at every step."""
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    order = torch.randperm(n_samples, generator=generator).tolist()
    steps = [order[start:start + batch_size] for start in range(0, n_samples, batch_size)]
    if len(steps) > 1 and len(steps[-1]) < world_size:
        steps[-2].extend(steps.pop())
    if not steps or len(steps[-1]) < world_size:
        raise ValueError(f"{n_samples} training samples cannot be shared by {world_size} processes.")
    return steps


def shard(step: list[int], ranks: Ranks) -> list[int]:
    """This rank's samples of one batch."""
    return step[ranks.rank::ranks.world_size]


def seed_epoch(seed: int, epoch: int, ranks: Ranks) -> None:
    """Seed every random stream of this rank (CPU and CUDA) for one epoch."""
    torch.manual_seed(_mix(seed, epoch, ranks.rank))


def gather(value: object, ranks: Ranks) -> list[object]:
    """Every rank's ``value``, in rank order, on every rank."""
    values: list[object] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def check_coverage(read: list[list[int]], n_samples: int) -> None:
    """Refuse an epoch in which any sample was read twice (by one rank or two) or not at all."""
    seen = [index for indices in read for index in indices]
    if len(seen) != len(set(seen)) or sorted(seen) != list(range(n_samples)):
        twice = len(seen) - len(set(seen))
        raise RuntimeError(f"Sharding error: {twice} samples read twice and {n_samples - len(set(seen))} never, "
                           "in one epoch across ranks.")


def _mix(*numbers: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(numbers).encode()).digest()[:8], "little") & (2 ** 63 - 1)
