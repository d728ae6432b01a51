"""What the machine can do, and the device and precision to use: see :mod:`unetpp.runtime`."""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UnetppError


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


# --------------------------------------------------------------------------- what a plan is for
@dataclass(frozen=True)
class DeviceTarget:
    """The device a training plan is sized for (:func:`unetpp.training.plan.settle`).

    ``kind``: ``cpu``, ``cuda`` or ``mps``; ``memory_gib``: the GPU's memory (None on the
    CPU); ``bf16``: whether the GPU trains in bf16 (else fp16); ``name``: for the log.
    """

    kind: str
    memory_gib: float | None = None
    bf16: bool = True
    name: str = ""

    def __str__(self) -> str:
        if self.kind == "cpu":
            return "CPU"
        return f"{self.name or self.kind} ({self.memory_gib:g} GiB)" if self.memory_gib else self.name or self.kind


def device_target(device: torch.device | str, gpu_memory_gib: float | None = None) -> DeviceTarget:
    """What a plan needs to know of ``device``; ``gpu_memory_gib`` plans for a CUDA GPU of
    that size without one (``unetpp data plan --device cuda --gpu-memory 80``).

    Raises UnetppError when CUDA is asked for without a GPU and without ``gpu_memory_gib``.
    """
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda":
        return DeviceTarget(dev.type)
    if gpu_memory_gib is not None:
        return DeviceTarget("cuda", float(gpu_memory_gib), True, "CUDA GPU")
    if not torch.cuda.is_available():
        raise UnetppError("--device cuda: no CUDA GPU is available to PyTorch; give --gpu-memory GB to plan "
                          "for one without it")
    props = torch.cuda.get_device_properties(dev.index or 0)
    return DeviceTarget("cuda", props.total_memory / 2**30, torch.cuda.is_bf16_supported(), props.name)


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
