"""What the training loop learns of its steps without waiting for the GPU.

Reading a CUDA tensor on the host waits for every kernel queued before it, so the loop
keeps its per-step bookkeeping on the device (:func:`count_step`) and reads it once every few
steps (:func:`read_steps`): the loss sum for the log, whether a loss was not finite (and the
first such step, for the error), and the stop request, all-reduced in one collective under
torchrun so every process stops at the same step.
"""

from __future__ import annotations

from typing import Any

import torch

from . import distributed


def step_stats(device: torch.device) -> torch.Tensor:
    """``[stop, non-finite steps, first non-finite step, its loss, sum of finite losses]``."""
    return torch.zeros(5, dtype=torch.float64, device=device)


def count_step(stats: torch.Tensor, loss: torch.Tensor, step: int) -> None:
    """Add a step's loss to ``stats`` on its device, without reading it: ``[stop, non-finite
    steps, first non-finite step, its loss, sum of finite losses]`` (slot 0: :func:`read_steps`)."""
    finite = torch.isfinite(loss).to(stats.device)
    value = loss.to(stats.device, torch.float64)
    first = (stats[2] == 0) & ~finite
    stats[1] += (~finite).double()
    stats[3] = torch.where(first, value, stats[3])
    stats[2] = torch.where(first, torch.full_like(stats[2], step), stats[2])
    stats[4] += torch.where(finite, value, torch.zeros_like(value))


def read_steps(stats: torch.Tensor, stop: bool, info: distributed.DistInfo) -> tuple[float, Any, int, float]:
    """One read of ``stats`` (all-reduced under torchrun, so every process stops at the same
    step); resets it. Returns ``(stop, bad, first_bad, loss_sum)``: ``bad`` is None when every
    loss was finite, else the first non-finite loss (``first_bad``: its step; 0 when it was
    another process's, whose step this one does not know)."""
    local = stats.tolist() if info.world_size > 1 else None  # whose the non-finite loss was
    stats[0] = float(stop)
    distributed.all_reduce_sum(stats, info)
    values = stats.tolist()
    stats.zero_()
    if values[1] == 0:
        return values[0], None, 0, values[4]
    source = values if local is None else local if local[1] > 0 else None
    if source is None:
        return values[0], "not finite", 0, values[4]
    return values[0], source[3], int(source[2]), values[4]


__all__ = ["count_step", "read_steps", "step_stats"]
