"""Building blocks shared by every model family, for 2D and 3D alike.

One class per block; ``dims`` picks ``Conv2d``/``Conv3d`` (and the matching norm, pool and
transposed conv) so the 2D and 3D networks are the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

NORMS = ("none", "batch", "instance")
ACTS = ("relu", "leaky_relu")
UPS = ("transpose", "interp")


def check_dims(dims: int) -> int:
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    return dims


def conv_nd(dims: int) -> type[nn.Module]:
    return nn.Conv2d if check_dims(dims) == 2 else nn.Conv3d


def conv_transpose_nd(dims: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if check_dims(dims) == 2 else nn.ConvTranspose3d


def norm_nd(norm: str, dims: int, channels: int) -> nn.Module | None:
    if norm == "none":
        return None
    if norm == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if norm == "instance":
        # affine=True: nnU-Net's choice; statistics are per image so batch size 1-2 is fine.
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def activation(act: str) -> nn.Module:
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    raise ValueError(f"act must be one of {ACTS}, got {act!r}")


class ConvBlock(nn.Module):
    """The node function H: two (conv 3x3[x3] -> norm -> activation) layers.

    Args:
        in_channels: channels of the input (for a UNet++ node: the concatenated skips plus
            the upsampled tensor).
        out_channels: filters of the node, ``k_i``.
        kernel_size: the kernel of both convs, one int or one per axis (1 or 3, e.g.
            ``(1, 3, 3)`` along a coarse slice axis); padding ``k // 2`` per axis keeps the size.

    Shapes: ``(N, in_channels, *S) -> (N, out_channels, *S)`` with ``len(S) == dims``.

    A conv that feeds a normalisation has no bias: the norm's shift makes it redundant.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, norm: str = "none",
                 act: str = "relu", kernel_size: int | Sequence[int] = 3):
        super().__init__()
        conv = conv_nd(dims)
        padding = kernel_size // 2 if isinstance(kernel_size, int) else tuple(k // 2 for k in kernel_size)
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            n = norm_nd(norm, dims, out_channels)
            layers.append(conv(c_in, out_channels, kernel_size=kernel_size, padding=padding,
                               bias=n is None))
            if n is not None:
                layers.append(n)
            layers.append(activation(act))
        self.layers = nn.Sequential(*layers)

    #: How a list input is combined. ``False``: concatenate, then one conv (the textbook
    #: form). ``True``: the first conv as a sum of convs over the parts, with the matching
    #: slices of the same weight, so the concatenation is never materialised (the same
    #: parameters and state_dict; less activation memory in training). Set per module or
    #: with :func:`unetpp.models.fast.set_split_concat`.
    split_concat: bool = True
    #: Recompute this block in the backward pass instead of keeping its activations
    #: (:func:`torch.utils.checkpoint.checkpoint`); only while training with autograd on.
    checkpoint: bool = False

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        parts = [x] if isinstance(x, torch.Tensor) else list(x)
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, *parts, use_reentrant=False)
        return self._forward(*parts)

    def _forward(self, *parts: torch.Tensor) -> torch.Tensor:
        if len(parts) == 1:
            return self.layers(parts[0])
        if not self.split_concat:
            return self.layers(torch.cat(parts, dim=1))
        conv = self.layers[0]
        weight, bias = conv.weight, conv.bias
        y: torch.Tensor | None = None
        start = 0
        for part in parts:
            stop = start + part.shape[1]
            out = conv._conv_forward(part, weight[:, start:stop], bias if y is None else None)
            y = out if y is None else y.add_(out)
            start = stop
        if start != conv.in_channels:
            raise ValueError(f"expected {conv.in_channels} input channels in all, got {start}")
        return self.layers[1:](y)


class Up(nn.Module):
    """The upsampling U: multiplies each spatial size by ``stride`` (2 by default, or one
    factor per axis such as ``(1, 2, 2)``) and maps ``in_channels -> out_channels``.

    ``transpose``: a transposed conv with kernel = stride (2x2[x2] stride 2 in the paper).
    ``interp``: nearest upsampling then a 1x1 conv, which avoids the transposed conv's
    checkerboard artefacts.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, mode: str = "transpose",
                 stride: int | Sequence[int] = 2):
        super().__init__()
        if mode == "transpose":
            self.up = conv_transpose_nd(dims)(in_channels, out_channels, kernel_size=stride, stride=stride)
        elif mode == "interp":
            scale = stride if isinstance(stride, int) else tuple(float(f) for f in stride)
            self.up = nn.Sequential(nn.Upsample(scale_factor=scale, mode="nearest"),
                                    conv_nd(dims)(in_channels, out_channels, kernel_size=1))
        else:
            raise ValueError(f"up must be one of {UPS}, got {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def max_pool(x: torch.Tensor, stride: int | Sequence[int] = 2) -> torch.Tensor:
    """Max pooling with kernel = ``stride`` (one int, or one factor per axis; 1 keeps the axis)."""
    if not isinstance(stride, int):
        stride = tuple(stride)
        if all(f == 1 for f in stride):
            return x
    return F.max_pool2d(x, stride) if x.dim() == 4 else F.max_pool3d(x, stride)


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the spatial dims of ``x`` up to a multiple of ``multiple`` (at the end):
    one int for every axis, or one per spatial axis (e.g. ``(2, 16, 16)``).

    Returns the padded tensor and the original spatial shape, for :func:`crop_to`.
    """
    spatial = tuple(x.shape[2:])
    multiples = (multiple,) * len(spatial) if isinstance(multiple, int) else tuple(multiple)
    if len(multiples) != len(spatial):
        raise ValueError(f"multiple must be one int or {len(spatial)} ints (one per spatial axis), "
                         f"got {multiple!r}")
    pads: list[int] = []
    for s, m in zip(reversed(spatial), reversed(multiples)):  # F.pad takes the last dim first
        pads += [0, (-s) % m]
    if any(pads):
        x = F.pad(x, pads)
    return x, spatial


def crop_to(x: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    if tuple(x.shape[2:]) == spatial:
        return x
    return x[(..., *(slice(0, s) for s in spatial))]
