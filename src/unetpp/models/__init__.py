"""Model registry: one entry point, :func:`create_model`, for every architecture.

Every model exposes the same small interface: ``config`` (a :class:`ModelConfig`),
``levels`` (the levels it can output), ``forward`` (logits; a ``{level: logits}`` dict for a
deep-supervised UNet++) and ``prune(level)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import PRESETS, ModelConfig
from .mode import MODES, Mode, combine_heads, resolve_mode
from .registry import ArchSpec, arch_names, arch_spec, check_deep_supervision, register_arch
from .unet import UNet
from .unetpp import UNetPlusPlus


def list_models() -> dict[str, str]:
    """``{arch: one-line description}`` for every registered architecture."""
    return {name: arch_spec(name).description for name in arch_names()}


def build_model(config: ModelConfig) -> nn.Module:
    """The network a :class:`ModelConfig` describes (fresh weights)."""
    return arch_spec(config.arch).cls(config)


def create_model(arch: str = "unetpp", preset: str = "paper", dims: int = 2, in_channels: int = 1,
                 classes: int = 1, deep_supervision: bool | None = None, **overrides: Any) -> nn.Module:
    """Create a model by name.

    Args:
        arch: a registered architecture (:func:`arch_names`): ``"unetpp"``, ``"unet"``,
            ``"wide-unet"``.
        preset: ``"paper"`` (the DLMIA 2018 network exactly) or ``"modern"`` (instance norm,
            leaky ReLU).
        dims: 2 or 3.
        in_channels: input channels (1 for CT/microscopy, 3 for RGB endoscopy).
        classes: 1 for a binary (sigmoid) output, K >= 2 for K-class softmax.
        deep_supervision: heads on every X^{0,j} (UNet++ only; default on for UNet++).
        **overrides: any other :class:`ModelConfig` field (``depth``, ``base_filters``, ...).

    Example:
        >>> model = create_model("unetpp", preset="paper", dims=2, in_channels=1, classes=1)
        >>> sum(p.numel() for p in model.parameters())
        9041700
    """
    arch_spec(arch)  # ValueError naming the known architectures
    if deep_supervision is not None:
        overrides["deep_supervision"] = deep_supervision
        problem = check_deep_supervision(arch, deep_supervision)
        if problem:
            raise ValueError(problem)
    config = ModelConfig.from_preset(arch, preset, dims=dims, in_channels=in_channels,
                                     classes=classes, **overrides)
    return build_model(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODES", "PRESETS", "ArchSpec", "Mode", "combine_heads", "resolve_mode", "ModelConfig", "UNet", "UNetPlusPlus", "arch_names", "arch_spec",
           "build_model", "check_deep_supervision", "count_parameters", "create_model", "list_models",
           "register_arch"]
