"""The one place that decides how the hardware is used: device, precision, memory format,
the inference copy of a model, threads and seeding.

Training (:mod:`unetpp.training.loop`), the inference engine, the Predictor, export and the
benchmarks all call this module; none decides these things on its own. Each policy comes
from what the machine reports (CPU flags, CUDA capabilities), or from a measurement on the
model and batch at hand, never from one machine's numbers:

- **Device**: ``auto`` is CUDA (this rank's GPU under torchrun), else MPS, else the CPU.
- **Mixed precision** (:func:`choose_precision`): on CUDA on by default (bf16 where the GPU
  supports it, else fp16 with a GradScaler, the same in training and validation);
  ``--no-amp`` turns it off. On the CPU off by default; ``--amp`` uses bf16 only on a CPU
  with native bf16 (AVX512-BF16 or AMX-BF16) *and* when a few timed training steps of the
  model and batch at hand are faster in bf16 than in fp32. Elsewhere it says why in one line
  and stays fp32: emulated bf16 was measured ~30x slower on an AVX2 CPU.
- **Memory format**: channels_last where it pays (CUDA; CPU inference in 2D), measured in
  ``benchmarks/run.py``.
- **Inference copy** (:func:`optimize_for_inference`): eval mode, BatchNorm folded, no
  autograd, the memory format above.

Training::

    from unetpp import runtime
    device = runtime.pick_device("auto")
    precision, note = runtime.choose_precision(device, amp=None)
    setup = runtime.training_setup(model, device, precision=precision)
    with setup.autocast():
        out = model(setup.prepare(image.to(device)))

Inference::

    fast = runtime.optimize_for_inference(model)         # a copy; the model is untouched
    with runtime.inference_context(device, precision.dtype):
        logits = fast(x)

Every helper keeps outputs equal to the plain computation within the tolerances stated in
``tests/test_perf_equivalence.py``; none changes parameter names, shapes or counts.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UnetppError
from .models.blocks import ConvBlock


# --------------------------------------------------------------------------- capabilities
@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
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
    (measured: 7x slower convs, 30x slower training on an AVX2-only EPYC).
    """
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (or None): CUDA (GPU ``local_rank`` under torchrun), else MPS, else the CPU.

    Raises UnetppError naming ``--device`` when the requested device is not available.
    """
    name = "auto" if name is None else str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnetppError(f"--device {name}: no CUDA GPU is available to PyTorch "
                              f"(torch {torch.__version__}); use --device cpu")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name == "mps" and not _mps_available():
        raise UnetppError("--device mps: Apple's MPS backend is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UnetppError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from None


# --------------------------------------------------------------------------- precision
def autocast_dtype(device: torch.device | str, amp: bool = True) -> torch.dtype | None:
    """The autocast dtype the hardware supports well on ``device``, or None (stay in fp32).

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


@dataclass(frozen=True)
class Precision:
    """fp32 (``dtype`` None) or autocast to ``dtype`` on ``device``; the same object is used
    for the training step and for validation, so both compute alike."""

    device: torch.device
    dtype: torch.dtype | None = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 needs a GradScaler; bf16 (fp32's exponent range) does not."""
        return self.dtype == torch.float16

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type if self.needs_grad_scaler else "cpu",
                                    enabled=self.needs_grad_scaler)

    def __str__(self) -> str:
        return "fp32" if self.dtype is None else f"{str(self.dtype).replace('torch.', '')} autocast"


def choose_precision(device: torch.device, amp: bool | None = None,
                     measure: Callable[[torch.dtype], float] | None = None) -> tuple[Precision, str | None]:
    """The precision to train (and validate) with, and a one-line note when ``--amp`` was
    asked for but is not used.

    Args:
        device: where training runs.
        amp: None (the default: on for CUDA, off elsewhere), True (``--amp``) or False
            (``--no-amp``).
        measure: ``measure(dtype) -> speed-up`` of a few training steps in ``dtype`` over fp32
            (:func:`autocast_speedup`); on the CPU, bf16 is used only when it is above 1.
    """
    device = torch.device(device)
    wanted = device.type == "cuda" if amp is None else bool(amp)
    if not wanted:
        return Precision(device), None
    dtype = autocast_dtype(device, True)
    if dtype is None:
        if device.type == "cpu":
            return Precision(device), ("--amp: this CPU has no native bf16 (AVX512-BF16 or AMX-BF16), so bf16 "
                                       "would be emulated and many times slower; training stays fp32")
        return Precision(device), f"--amp: no mixed precision on {device.type}; training stays fp32"
    if device.type == "cpu" and measure is not None:
        speedup = measure(dtype)
        if not speedup > 1.0:
            return Precision(device), (f"--amp: bf16 ran at {speedup:.2f}x the speed of fp32 for this model "
                                       "and batch on this CPU; training stays fp32")
    return Precision(device, dtype), None


def autocast_speedup(model: nn.Module, step_input: torch.Tensor, dtype: torch.dtype, steps: int = 3) -> float:
    """fp32 time / ``dtype``-autocast time of ``steps`` forward+backward passes of a copy of
    ``model`` on ``step_input`` (after one warm-up each). Leaves ``model`` and every RNG as
    they were, so a seeded run stays bit-identical whether or not it measured."""
    probe = copy.deepcopy(model).train()
    x = step_input.detach().clone()

    def timed(amp_dtype: torch.dtype | None) -> float:
        ctx = (lambda: torch.autocast(x.device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
        best = float("inf")
        for i in range(steps + 1):
            t0 = time.perf_counter()
            with ctx():
                out = probe(x)
            loss = sum(o.float().mean() for o in (out.values() if isinstance(out, dict) else [out]))
            loss.backward()
            probe.zero_grad(set_to_none=True)
            if i:  # the first is a warm-up (oneDNN picks its kernels)
                best = min(best, time.perf_counter() - t0)
        return best

    with torch.random.fork_rng(devices=[]):
        return timed(None) / timed(dtype)


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


# --------------------------------------------------------------------------- threads, seeds
def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (None: leave PyTorch's choice); returns the count."""
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """``deterministic``: deterministic algorithms (warn where none exists); otherwise let
    cuDNN benchmark its convolutions on CUDA (fixed patch sizes make that pay)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic and torch.device(device).type == "cuda"


__all__ = ["Precision", "TrainingSetup", "autocast_dtype", "autocast_speedup", "channels_last_pays",
           "choose_precision", "compiled", "cpu_flags", "cpu_has_fast_bf16", "fold_batchnorm",
           "inference_context", "memory_format", "optimize_for_inference", "pick_device", "seed_everything",
           "set_checkpointing", "set_determinism", "set_split_concat", "set_threads", "training_setup"]
