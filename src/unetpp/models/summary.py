"""Parameter and FLOP counts per level, computed on the meta device (no memory, no compute)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .config import ModelConfig
from . import build_model, count_parameters


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs (2 per multiply-add, convs and transposed convs) for one input.

    ``model`` may live on the meta device, in which case nothing is computed.
    """
    device = next(model.parameters()).device
    x = torch.zeros(input_shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def summarize(config: ModelConfig, size: int | Sequence[int] = 96) -> dict[str, Any]:
    """``{"arch", "preset", "dims", "params": {"total", "levels"}, "flops"}``.

    ``params.levels[L]`` counts UNet++ L<L> with its one head (``model.prune(L)``); ``total``
    counts the full network with every head. ``flops[L]`` is for one image of side ``size``
    (one int for every axis, or one per axis, e.g. ``(24, 160, 160)`` for an anisotropic
    config's patch; the network pads it to ``config.pad_multiple`` as in training).
    """
    with torch.device("meta"):
        model = build_model(config)
    sides = (size,) * config.dims if isinstance(size, int) else tuple(int(s) for s in size)
    if len(sides) != config.dims:
        raise ValueError(f"size must be one int or {config.dims} ints, got {size!r}")
    shape = (1, config.in_channels) + sides
    levels: dict[str, int] = {}
    flops: dict[str, int] = {}
    for level in config.levels:
        pruned = model.prune(level)
        levels[str(level)] = count_parameters(pruned)
        flops[str(level)] = count_flops(pruned, shape)
    return {"arch": config.arch, "preset": config.preset, "dims": config.dims,
            "in_channels": config.in_channels, "classes": config.classes,
            "size": size if isinstance(size, int) else list(sides),
            "params": {"total": count_parameters(model), "levels": levels}, "flops": flops}
