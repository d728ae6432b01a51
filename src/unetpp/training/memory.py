"""How much GPU memory a training step takes: the memory model the device planner sizes
patches and batches with (:mod:`unetpp.training.plan`).

A step holds, at its peak:

- the **model state**: fp32 weights, gradients and Adam's two moments, 16 bytes a parameter;
- the **activations** autograd keeps for the backward pass, which grow linearly with the
  voxels of the batch (the network is fully convolutional). They are *counted*, not guessed:
  one forward pass and the deep-supervision loss run on the ``meta`` device (shapes only,
  no memory, no compute, ~1 s for the 3D paper network) under
  ``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor autograd saves (each
  storage counted once); floating-point ones at the training precision's size (bf16/fp16
  autocast keeps convolution and normalisation activations in 2 bytes). Two patch sizes are
  counted and subtracted, so what does not grow with the voxels (saved weights) drops out;
- the backward pass's **transients** (an activation's gradient while the saved tensors of
  the layers before it are still alive) and the caching allocator's slack:
  :data:`PEAK_FACTOR` times the saved activations, and a fixed :data:`WORKSPACE_BYTES`
  (CUDA context, cuDNN workspaces).

``benchmarks/plan.py`` checks the model against measured peaks (peak RSS of a CPU step in
fp32 here, ``torch.cuda.max_memory_allocated`` in ``benchmarks/gpu.py`` on a GPU).

Example:
    >>> from unetpp.models import ModelConfig
    >>> mc = ModelConfig.from_preset("unetpp", "paper", dims=3, in_channels=1, classes=1)
    >>> gib = step_memory(mc, batch=2, patch=(128, 128, 128), bytes_per_value=2) / 2**30  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence

import torch

from ..models import ModelConfig, build_model
from ..models.topology import patch_multiple
from .loss import DeepSupervisionLoss

#: the step's peak over the activations autograd saves: backward transients, allocator slack
PEAK_FACTOR = 1.35
#: CUDA context, cuDNN/cuBLAS workspaces and the loader's pinned batches, whatever the model
WORKSPACE_BYTES = 1.5 * 2**30
#: fp32 weights + gradients + Adam's exp_avg and exp_avg_sq
STATE_BYTES_PER_PARAMETER = 16


def _multiple(config: ModelConfig) -> tuple[int, ...]:
    if config.strides:
        return patch_multiple(config.strides)
    return (2 ** config.depth,) * config.dims


@functools.lru_cache(maxsize=64)
def _saved_per_voxel(config_json: str, bytes_per_value: int) -> tuple[float, int]:
    """(activation bytes saved per voxel of one sample, parameters) of a config (as JSON)."""
    config = ModelConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model = build_model(config)
    levels = tuple(model.levels)
    criterion = DeepSupervisionLoss(levels, config.classes, None, 0.5, 1.0)
    def saved(scale: int) -> tuple[int, int]:
        """Bytes saved by a step on one sample of ``scale`` x the pooling multiple, and its voxels."""
        total, seen = 0, set()

        def count(t: torch.Tensor) -> torch.Tensor:
            # One tensor is often saved twice (a ReLU's output is the next convolution's input):
            # count each storage once. Its C pointer is the one identity a meta storage has.
            nonlocal total
            storage = t.untyped_storage()
            key = getattr(storage, "_cdata", id(t))
            if key not in seen:
                seen.add(key)
                scale = bytes_per_value / t.element_size() if t.is_floating_point() else 1
                total += int(storage.nbytes() * scale)
            return t

        patch = tuple(scale * m for m in _multiple(config))  # every row's size a whole number
        x = torch.zeros((1, config.in_channels, *patch), device="meta")
        y = torch.zeros((1, *patch), dtype=torch.long, device="meta")
        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            criterion(model(x), y)
        return total, math.prod(patch)

    # two sizes: what grows with the voxels, without what does not (the weights that
    # convolutions save for their backward are counted in the model state)
    (small, n_small), (large, n_large) = saved(2), saved(3)
    per_voxel = (large - small) / (n_large - n_small)
    params = sum(p.numel() for p in model.parameters())
    return per_voxel, params


def _key(config: ModelConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)  # hashable, for the cache


def saved_bytes_per_voxel(config: ModelConfig, bytes_per_value: int = 4) -> float:
    """Bytes of activations autograd keeps per voxel of one training sample.

    Args:
        config: the network.
        bytes_per_value: 4 (fp32) or 2 (bf16/fp16 autocast).
    """
    return _saved_per_voxel(_key(config), bytes_per_value)[0]


def step_memory(config: ModelConfig, batch: int, patch: Sequence[int], bytes_per_value: int = 4) -> float:
    """Estimated peak bytes of one training step (forward, loss, backward, Adam) on a GPU.

    Args:
        config: the network.
        batch: samples per step.
        patch: the patch, ``config.dims`` values.
        bytes_per_value: 4 (fp32) or 2 (bf16/fp16 autocast).

    Returns:
        bytes: model state + ``PEAK_FACTOR`` x saved activations + ``WORKSPACE_BYTES``.
    """
    per_voxel, params = _saved_per_voxel(_key(config), bytes_per_value)
    voxels = batch * math.prod(patch)
    return STATE_BYTES_PER_PARAMETER * params + PEAK_FACTOR * per_voxel * voxels + WORKSPACE_BYTES


__all__ = ["PEAK_FACTOR", "WORKSPACE_BYTES", "saved_bytes_per_voxel", "step_memory"]
