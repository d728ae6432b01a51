"""Data-parallel training with PyTorch's DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node N -m unetpp train ...`` (or ``torchrun ... $(which unetpp) train``)
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the same
command without torchrun runs one process. Backend: NCCL on CUDA, gloo on CPU.

- every rank samples its own patches: the loader of rank ``r`` is seeded with
  ``seed + r * RANK_SEED_STRIDE``, the per-rank batch stays ``--batch-size`` (global batch =
  N x batch size) and each rank runs ``steps_per_epoch`` steps, so an epoch sees N times the
  patches;
- gradients are averaged by DDP; every rank holds the same weights;
- validation cases are split across ranks (case ``i`` on rank ``i % N``) and the per-case
  score sums all-reduced, so all ranks take the same early-stopping decision;
- only rank 0 writes files and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """The process's place in a ``torchrun`` job (a single process without one)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    return DistInfo(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                    world_size=world)


def setup(info: DistInfo, device: torch.device) -> None:
    """Join the process group (no-op for one process)."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # validation of a big volume on rank 0 may keep the others waiting a while
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks, in place (identity for one process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def mean_over_ranks(value: float, info: DistInfo, device: torch.device) -> float:
    """``value`` averaged over the ranks (itself for one process): a decision every rank takes
    alike (the time budget, the learning-rate horizon)."""
    if not info.enabled:
        return value
    return float(all_reduce_sum(torch.tensor([value], dtype=torch.float64, device=device), info)[0]
                 / info.world_size)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
