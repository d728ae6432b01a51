"""Model registry: one entry point, :func:`create_model`, for every architecture.

Every model exposes the same small interface: ``config`` (a :class:`ModelConfig`),
``levels`` (the levels it can output), ``forward`` (logits; a ``{level: logits}`` dict for a
deep-supervised UNet++) and ``prune(level)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import ARCHS, PRESETS, ModelConfig
from .unet import UNet
from .unetpp import UNetPlusPlus

_REGISTRY: dict[str, tuple[type[nn.Module], str]] = {
    "unetpp": (UNetPlusPlus, "UNet++ with nested dense skips; deep supervision and pruning"),
    "unet": (UNet, "U-Net baseline, filters 32·2^i"),
    "wide-unet": (UNet, "wide U-Net baseline, filters 35·2^i (more parameters than UNet++)"),
}


def list_models() -> dict[str, str]:
    """``{arch: one-line description}`` for every registered architecture."""
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def build_model(config: ModelConfig) -> nn.Module:
    """The network a :class:`ModelConfig` describes (fresh weights)."""
    cls, _ = _REGISTRY[config.arch]
    return cls(config)


def create_model(arch: str = "unetpp", preset: str = "paper", dims: int = 2, in_channels: int = 1,
                 classes: int = 1, deep_supervision: bool | None = None, **overrides: Any) -> nn.Module:
    """Create a model by name.

    Args:
        arch: ``"unetpp"``, ``"unet"`` or ``"wide-unet"``.
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
    if arch not in _REGISTRY:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(_REGISTRY)}")
    if deep_supervision is not None:
        overrides["deep_supervision"] = deep_supervision
        if deep_supervision and arch != "unetpp":
            raise ValueError(f"deep supervision needs arch 'unetpp', got {arch!r}")
    config = ModelConfig.from_preset(arch, preset, dims=dims, in_channels=in_channels,
                                     classes=classes, **overrides)
    return build_model(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHS", "PRESETS", "ModelConfig", "UNet", "UNetPlusPlus", "build_model",
           "count_parameters", "create_model", "list_models"]
