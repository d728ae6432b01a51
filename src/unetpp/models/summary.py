"""Parameter and FLOP counts per level, computed on the meta device (no memory, no compute)."""

from __future__ import annotations

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


def summarize(config: ModelConfig, size: int = 96) -> dict[str, Any]:
    """``{"arch", "preset", "dims", "params": {"total", "levels"}, "flops"}``.

    ``params.levels[L]`` counts UNet++ L<L> with its one head (``model.prune(L)``); ``total``
    counts the full network with every head. ``flops[L]`` is for one image of side ``size``.
    """
    with torch.device("meta"):
        model = build_model(config)
    shape = (1, config.in_channels) + (size,) * config.dims
    levels: dict[str, int] = {}
    flops: dict[str, int] = {}
    for level in config.levels:
        pruned = model.prune(level)
        levels[str(level)] = count_parameters(pruned)
        flops[str(level)] = count_flops(pruned, shape)
    return {"arch": config.arch, "preset": config.preset, "dims": config.dims,
            "in_channels": config.in_channels, "classes": config.classes, "size": size,
            "params": {"total": count_parameters(model), "levels": levels}, "flops": flops}
