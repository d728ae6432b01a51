"""Memory format, node switches, the training set-up and the inference copy of a model:
see :mod:`unetpp.runtime`."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.blocks import ConvBlock
from .hardware import Precision, autocast_dtype


# --------------------------------------------------------------------------- memory format
def channels_last_pays(device: torch.device | str, training: bool, dims: int = 2) -> bool:
    """Whether channels_last is the faster layout, as measured by ``benchmarks/run.py``.

    CUDA: faster for training and inference (tensor cores). CPU (oneDNN): 1.2-1.3x faster at
    2D inference, 5-10 % slower in training (the transposed convs' and pooling's backward);
    in 3D it was not measured to pay, so 3D stays contiguous.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    if kind == "cpu":
        return not training and dims == 2
    return False


def memory_format(dims: int, channels_last: bool = True) -> torch.memory_format:
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if dims == 2 else torch.channels_last_3d


# --------------------------------------------------------------------------- module switches
def set_split_concat(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Nodes compute their first conv as a sum of convs over the concatenated parts (default
    on: same result, about half the training activation memory, and faster on CPU)."""
    for m in model.modules():
        if isinstance(m, ConvBlock):
            m.split_concat = enabled
    return model


def set_checkpointing(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Activation checkpointing per node (recomputed in backward): less memory for 3D
    patches at about 30% more compute. Only acts while training with autograd on."""
    for m in model.modules():
        if isinstance(m, ConvBlock):
            m.checkpoint = enabled
    return model


# --------------------------------------------------------------------------- training
@dataclass
class TrainingSetup:
    """What the training loop applies: ``prepare(x)`` per batch and ``autocast()`` around
    the forward pass (the loss is computed on ``logits.float()``)."""

    device: torch.device
    precision: Precision
    memory_format: torch.memory_format

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.precision.dtype

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.precision.autocast()

    @property
    def grad_scaler_needed(self) -> bool:
        return self.precision.needs_grad_scaler


def training_setup(model: nn.Module, device: torch.device | str = "cpu", amp: bool = False,
                   channels_last: bool | None = None, checkpointing: bool = False,
                   precision: Precision | None = None) -> TrainingSetup:
    """Move ``model`` to ``device`` in the layout that trains fastest there and say how to
    run each step. ``precision`` (from :func:`choose_precision`) wins over ``amp``, which
    asks for the hardware's autocast dtype (:func:`autocast_dtype`) without a measurement.
    ``channels_last=None`` picks by :func:`channels_last_pays`.
    """
    device = torch.device(device)
    dims = getattr(getattr(model, "config", None), "dims", 2)
    if channels_last is None:
        channels_last = channels_last_pays(device, training=True, dims=dims)
    fmt = memory_format(dims, channels_last)
    model.to(device=device, memory_format=fmt)
    set_split_concat(model, True)
    set_checkpointing(model, checkpointing)
    if precision is None:
        precision = Precision(device, autocast_dtype(device, amp))
    return TrainingSetup(device=device, precision=precision, memory_format=fmt)


# --------------------------------------------------------------------------- inference
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that follows a conv inside a node into that conv
    (in place; BN replaced by Identity). Call on a copy: parameters change."""
    for block in model.modules():
        if not isinstance(block, ConvBlock):
            continue
        layers = list(block.layers)
        for idx in range(len(layers) - 1):
            conv, bn = layers[idx], layers[idx + 1]
            if isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                _fold(conv, bn)
                block.layers[idx + 1] = nn.Identity()
    return model


@torch.no_grad()
def _fold(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    assert bn.running_mean is not None and bn.running_var is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    conv.weight.mul_(scale.reshape(shape))
    new_bias = bias * scale + shift
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


def optimize_for_inference(model: nn.Module, channels_last: bool | None = None,
                           device: torch.device | str | None = None) -> nn.Module:
    """A copy of ``model`` ready for fast inference: eval mode, no gradients on its
    parameters, BatchNorm folded into the convs, channels_last where it pays.

    The copy keeps ``config``, ``levels`` and ``prune``; run it under
    :func:`inference_context`. The original model is untouched.
    """
    if device is None:
        device = next(model.parameters()).device
    fast = copy.deepcopy(model).eval()
    fold_batchnorm(fast)
    set_checkpointing(fast, False)
    set_split_concat(fast, True)
    dims = getattr(getattr(fast, "config", None), "dims", 2)
    if channels_last is None:
        channels_last = channels_last_pays(device, training=False, dims=dims)
    fast.to(device=device, memory_format=memory_format(dims, channels_last))
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast


@contextlib.contextmanager
def inference_context(device: torch.device | str, dtype: torch.dtype | None = None) -> Iterator[None]:
    """``torch.inference_mode()`` plus autocast to ``dtype`` (None: fp32)."""
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(torch.device(device).type, dtype=dtype):
                yield


def compiled(model: nn.Module, **kwargs: Any) -> Callable[..., Any]:
    """``torch.compile(model)``: measured 1.2x at inference on CPU after a long first call
    (see docs/benchmarks.md); worth it only for long predictions, so it is opt-in."""
    return torch.compile(model, **kwargs)
