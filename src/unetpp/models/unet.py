"""U-Net (Ronneberger et al., 2015) and the paper's wide U-Net, from the same blocks as UNet++.

The decoder node of row ``i`` reads ``[x^{i,0}, U(decoder of row i+1)]``: the plain skip
connection that UNet++ replaces with a dense pathway. The wide U-Net is the same network
with 35·2^i filters (``base_filters=35``), the paper's control for UNet++'s extra parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBlock, Up, conv_nd, crop_to, max_pool, pad_to_multiple
from .config import ModelConfig
from .registry import arch_spec, register_arch
from .unetpp import _check_input


@register_arch("wide-unet", base_filters=35, label="wide U-Net",
               description="wide U-Net baseline, filters 35·2^i (more parameters than UNet++)")
@register_arch("unet", base_filters=32, label="U-Net", description="U-Net baseline, filters 32·2^i")
class UNet(nn.Module):
    """U-Net for 2D or 3D images; ``arch`` ``"unet"`` or ``"wide-unet"``.

    Input ``(N, in_channels, *S)``, any spatial size (padded to ``config.pad_multiple`` per
    axis inside and cropped back); output logits ``(N, classes, *S)``. ``config.strides`` and
    ``config.kernel_sizes`` give per-axis pooling and kernels as for UNet++.

    Example:
        >>> from unetpp import create_model
        >>> model = create_model("unet", preset="paper", dims=2)
        >>> tuple(model(torch.zeros(2, 1, 50, 70)).shape)
        (2, 1, 50, 70)
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if arch_spec(config.arch).cls is not UNet:
            raise ValueError(f"UNet needs arch 'unet' or 'wide-unet', got {config.arch!r}")
        self.config = config
        self.depth = config.depth
        self.pad_multiple: tuple[int, ...] = config.pad_multiple
        k, d, norm, act = config.filters, config.dims, config.norm, config.act
        strides, kernels = config.pool_strides, config.conv_kernels
        self.encoder = nn.ModuleList(
            ConvBlock(d, config.in_channels if i == 0 else k[i - 1], k[i], norm, act, kernel_size=kernels[i])
            for i in range(config.depth + 1))
        self.ups = nn.ModuleList(Up(d, k[i + 1], k[i], config.up, stride=strides[i])
                                 for i in range(config.depth))
        self.decoder = nn.ModuleList(ConvBlock(d, 2 * k[i], k[i], norm, act, kernel_size=kernels[i])
                                     for i in range(config.depth))
        self.head = conv_nd(d)(k[0], config.classes, kernel_size=1)
        self.output_levels = (config.depth,)

    @property
    def levels(self) -> tuple[int, ...]:
        return self.output_levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.config)
        x, spatial = pad_to_multiple(x, self.pad_multiple)
        strides = self.config.pool_strides
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else max_pool(x, strides[i - 1]))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.depth)):
            x = self.decoder[i]([skips[i], self.ups[i](x)])
        return crop_to(self.head(x), spatial)

    def prune(self, level: int) -> "UNet":
        """A U-Net has one output, at its full depth: ``prune(depth)`` returns the model."""
        if level != self.depth:
            raise ValueError(f"a {self.config.arch} has only level {self.depth}; pruning to "
                             f"level {level!r} needs a UNet++ with deep supervision")
        return self
