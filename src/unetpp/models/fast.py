"""Speed and memory helpers: what training and inference should call, measured by
``benchmarks/run.py`` (results in ``docs/benchmarks.md``).

Training::

    from unetpp.models.fast import training_setup
    setup = training_setup(model, device, amp=args.amp)   # model moved/converted in place
    for image, label in loader:
        image = setup.prepare(image.to(device))           # memory format
        with setup.autocast():                            # bf16/fp16, or a no-op
            out = model(image)
        loss = loss_fn(out, label)                        # loss in fp32 (cast logits up)

Inference::

    from unetpp.models.fast import optimize_for_inference
    fast = optimize_for_inference(model)                  # a copy; BN folded, channels_last
    with torch.inference_mode():
        logits = fast(fast_input)

Every helper keeps outputs equal to the plain computation within the tolerances stated in
``tests/test_perf_equivalence.py``; none changes parameter names, shapes or counts.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .blocks import ConvBlock


# --------------------------------------------------------------------------- capabilities
@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bf16 convs/matmuls natively (AVX-512 BF16 or AMX).

    Without them oneDNN emulates bf16 and autocast is several times *slower* than fp32
    (measured: 7x slower convs on an AVX2-only EPYC), so ``training_setup`` leaves it off.
    """
    flags = _cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def autocast_dtype(device: torch.device | str, amp: bool = True) -> torch.dtype | None:
    """The autocast dtype that pays on ``device``, or None (stay in fp32).

    CUDA: bf16 where supported, else fp16. CPU: bf16 only with native bf16 instructions.
    MPS: fp16.
    """
    if not amp:
        return None
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    if kind == "mps":
        return torch.float16
    return None


def channels_last_pays(device: torch.device | str, training: bool) -> bool:
    """Whether channels_last is the faster layout, as measured by the benchmark.

    CPU (oneDNN): 1.2-1.3x faster at inference, 5-10% slower in training (the transposed
    convs' and pooling's backward). CUDA: faster for both with bf16/fp16 tensor cores.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    if kind == "cpu":
        return not training
    return False


def memory_format(dims: int) -> torch.memory_format:
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
    the forward pass (and the loss, which should be computed on ``logits.float()``)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def grad_scaler_needed(self) -> bool:
        """fp16 needs a GradScaler (``torch.amp.GradScaler(device.type)``); bf16 does not."""
        return self.amp_dtype == torch.float16


def training_setup(model: nn.Module, device: torch.device | str = "cpu", amp: bool = False,
                   channels_last: bool | None = None, checkpointing: bool = False) -> TrainingSetup:
    """Move ``model`` to ``device`` in the layout that trains fastest there and say how to
    run each step. ``amp`` asks for mixed precision; it is used only where it pays (see
    :func:`autocast_dtype`). ``channels_last=None`` picks by :func:`channels_last_pays`.
    """
    device = torch.device(device)
    dims = getattr(getattr(model, "config", None), "dims", 2)
    if channels_last is None:
        channels_last = channels_last_pays(device, training=True)
    fmt = memory_format(dims) if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=fmt)
    set_split_concat(model, True)
    set_checkpointing(model, checkpointing)
    return TrainingSetup(device=device, amp_dtype=autocast_dtype(device, amp), memory_format=fmt)


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
    ``torch.inference_mode()``. The original model is untouched.
    """
    if device is None:
        device = next(model.parameters()).device
    fast = copy.deepcopy(model).eval()
    fold_batchnorm(fast)
    set_checkpointing(fast, False)
    set_split_concat(fast, True)
    dims = getattr(getattr(fast, "config", None), "dims", 2)
    if channels_last is None:
        channels_last = channels_last_pays(device, training=False)
    fmt = memory_format(dims) if channels_last else torch.contiguous_format
    fast.to(device=device, memory_format=fmt)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast


@contextlib.contextmanager
def inference_context(device: torch.device | str, amp: bool = False) -> Iterator[None]:
    """``torch.inference_mode()`` plus autocast where it pays (see :func:`autocast_dtype`)."""
    dtype = autocast_dtype(device, amp)
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


__all__ = ["TrainingSetup", "autocast_dtype", "channels_last_pays", "compiled", "cpu_has_fast_bf16",
           "fold_batchnorm", "inference_context", "memory_format", "optimize_for_inference",
           "set_checkpointing", "set_split_concat", "training_setup"]
