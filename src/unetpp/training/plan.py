"""The plan: every value a run leaves open, decided once from the data, the model and the
device, stored whole in ``RUN/config.json["train"]`` and read as stored afterwards (a resumed
run is not planned again; prediction's sliding window is the planned patch).

``unetpp data plan DATA [--device cuda --gpu-memory 80]`` prints what :func:`settle` decides,
without training and without a GPU.

**On the CPU** (as measured on 2-core machines, unchanged): a 96^2 (2D) / 64^3 (3D) patch,
no larger than the largest training case; 8 (2D) / 2 (3D) patches a batch; one patch per
training case an epoch; fp32; no compile; no loader workers. A small data set then has
epochs of a few steps (nuclei-2d: 12 tiles, 3 steps), and early stopping counts steps too
(``min_patience_steps``, issue 22): patience in epochs alone stopped such a run after ~60
steps (test Dice 0.853 against 0.953 trained to the budget). Epochs of at least 50 steps were
tried instead and did worse (0.940-0.941 against 0.953-0.956 at 3 steps, the same budget):
fewer whole-case validations to pick the best checkpoint from.

**On a CUDA GPU** the patch and the batch come from the GPU's memory, through the memory model
of the network (:mod:`unetpp.training.memory`). nnU-Net v2's planner is the reference:

1. start from a patch of 256^3 voxels (2048^2 in 2D) that is cubic in millimetres, no larger
   than the median training case (rounded up to the pooling multiple);
2. while a batch of 2 does not fit :data:`MEMORY_SHARE` of the GPU, shrink the axis that is
   largest relative to the median case by one pooling multiple (the anisotropic rule kept:
   pooling and kernels per axis are planned again for every patch);
3. the batch is the most that fits, at least 2, and its voxels at most
   :data:`MAX_DATASET_SHARE` of the training set's (so small data sets are not seen whole in
   one step);
4. epochs of :data:`GPU_STEPS_PER_EPOCH` steps (nnU-Net's 250), so per-epoch costs (the
   checkpoint, validation) amortise; bf16 (fp16 where the GPU lacks it);
5. ``torch.compile`` when the run is long enough to earn its first step back
   (:func:`compile_pays`), loader workers enough to give twice what the GPU consumes
   (:func:`gpu_loader_workers`).

Whole-case validation is scheduled by its cost on every device
(:func:`unetpp.training.validate.validation_every`); the last epoch is always validated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from ..errors import UnetppError
from ..models import ModelConfig, arch_spec
from ..models.topology import ANISOTROPY_RATIO, is_isotropic_topology, patch_multiple, plan_patch, plan_topology
from ..runtime import DeviceTarget
from .config import TrainConfig
from .memory import step_memory

#: the patch side per dims on the CPU before it is fitted to the data
PATCH_SIDE = {2: 96, 3: 64}
BATCH_SIZE = {2: 8, 3: 2}
#: a GPU plan may fill this share of the GPU's memory (the model already has its margins)
MEMORY_SHARE = 0.9
#: nnU-Net's cap: a batch holds at most this share of the training set's voxels
MAX_DATASET_SHARE = 0.05
#: the largest patch a GPU plan starts from: 256^3 (3D) / 2048^2 (2D) voxels, cubic in mm
START_VOXELS = {2: 2048**2, 3: 256**3}
GPU_STEPS_PER_EPOCH = 250
#: measured on one H200 (torch 2.11, bf16, the paper network, issue 21): training voxels/s
#: without compile, torch.compile's first step in seconds, and its speed-up afterwards
GPU_VOXELS_PER_S = {2: 798 * 256**2, 3: 18.6 * 128**3}
COMPILE_SECONDS = {2: 29.0, 3: 64.0}
COMPILE_SPEEDUP = {2: 1.34, 3: 1.08}
#: measured here (benchmarks/data.py, 2-core Xeon): one loader worker's voxels/s with
#: augmentation, at a 128^3 (3D) and 512^2 (2D) patch
WORKER_VOXELS_PER_S = {2: 56e6, 3: 28e6}


def settle(cfg: TrainConfig, ds: Any, train_cases: Sequence[str], target: DeviceTarget | None = None,
           val_cases: Sequence[str] = ()) -> TrainConfig:
    """Decide once every value ``cfg`` leaves to the data, the model and the device (see the
    module doc), and return the config stored whole in ``RUN/config.json``.

    Args:
        cfg: the run's settings; values given are kept.
        ds: the opened dataset.
        train_cases, val_cases: the split.
        target: the device to plan for (default: the CPU).

    Idempotent: settling a settled config changes nothing.

    Example:
        >>> from unetpp.runtime import DeviceTarget
        >>> cfg = settle(TrainConfig(data="ct"), ds, split["train"], DeviceTarget("cuda", 80.0))  # doctest: +SKIP
        >>> cfg.patch_size, cfg.batch_size, cfg.steps_per_epoch                                  # doctest: +SKIP
        ([64, 320, 320], 4, 250)
    """
    target = target or DeviceTarget("cpu")
    dims = cfg.dims or ds.spatial_dims
    if dims == 3 and ds.spatial_dims == 2:
        raise UnetppError(f"--dims 3: {cfg.data} holds 2D images; use --dims 2")
    deep = cfg.deep_supervision if cfg.deep_supervision is not None else arch_spec(cfg.arch).deep_supervision
    cfg = cfg.replace(dims=dims, deep_supervision=deep, base_filters=cfg.filters())
    strides, kernels = cfg.strides, cfg.kernel_sizes
    batch = cfg.batch_size
    gpu = target.kind == "cuda" and target.memory_gib
    if cfg.patch_size:
        patch = list(cfg.patch_size) * dims if len(cfg.patch_size) == 1 else list(cfg.patch_size)
    elif gpu and strides is None:
        patch, strides, kernels = _gpu_patch(cfg, ds, train_cases, target)
    elif dims == 3 and _anisotropic(ds.target_spacing) and strides is None:
        # in millimetres and by memory (today's 64^3 voxels), pooling per axis (nnU-Net's rule)
        shape = [max(ds.case_shape(n)[d] for n in train_cases) for d in range(3)]
        patch, strides, kernels = plan_patch(ds.target_spacing, shape, cfg.depth, PATCH_SIDE[3] ** 3)
        if is_isotropic_topology(strides, kernels):
            strides = kernels = None
    else:
        patch = _default_patch(ds, train_cases, dims, cfg.depth)
    if gpu and not batch:
        batch = _gpu_batch(cfg.replace(patch_size=patch, strides=strides, kernel_sizes=kernels), ds, train_cases,
                           target)
    cfg = cfg.replace(patch_size=patch, batch_size=batch or BATCH_SIZE[dims], strides=strides, kernel_sizes=kernels)
    if gpu:
        steps = cfg.steps_per_epoch or GPU_STEPS_PER_EPOCH
        amp = True if cfg.amp is None else cfg.amp
        compile_ = compile_pays(cfg, steps) if cfg.compile is None else cfg.compile
        workers = gpu_loader_workers(dims, compile_) if cfg.num_workers is None else cfg.num_workers
    else:
        steps = cfg.steps_per_epoch or _cpu_steps(ds, train_cases, patch, cfg.batch_size)
        amp = bool(cfg.amp)
        compile_ = bool(cfg.compile)
        workers = 0 if cfg.num_workers is None else cfg.num_workers
    val_every = cfg.val_every
    if val_every is None and val_cases:
        from .validate import validation_every

        val_every = validation_every([tuple(ds.case_shape(n)) for n in val_cases], tuple(patch), cfg.val_overlap,
                                     steps * cfg.batch_size)
    return cfg.replace(steps_per_epoch=steps, amp=amp, compile=compile_, num_workers=workers, val_every=val_every)


# ------------------------------------------------------------------------------ the CPU plan
def _anisotropic(spacing: Sequence[float] | None) -> bool:
    """Spacings further apart than 2x (nnU-Net's threshold): plan the patch in millimetres."""
    return bool(spacing) and max(spacing) > ANISOTROPY_RATIO * min(spacing)


def _default_patch(ds: Any, cases: Sequence[str], dims: int, depth: int) -> list[int]:
    side = PATCH_SIDE[dims]
    try:
        shapes = [tuple(ds.case_shape(n))[-dims:] for n in cases]
    except Exception:  # noqa: BLE001 - a dataset without cheap shapes: the plain default
        return [side] * dims
    m = 2 ** depth
    return [min(side, -(-max(s[d] for s in shapes) // m) * m) for d in range(dims)]


def _cpu_steps(ds: Any, cases: Sequence[str], patch: Sequence[int], batch: int) -> int:
    """The loader's own default (about every training voxel once an epoch), as steps."""
    from ..data.loading.pipeline import default_samples_per_epoch

    samples = default_samples_per_epoch(ds, cases, patch)
    return max(1, math.ceil(samples / batch))


# ------------------------------------------------------------------------------ the GPU plan
def _shapes(ds: Any, cases: Sequence[str], dims: int) -> list[tuple[int, ...]]:
    """The training cases' shapes on the network's grid, as the network sees them (a 2D
    network on volumes: the in-plane shape; the slices count as samples)."""
    return [tuple(ds.case_shape(n))[-dims:] for n in cases]


def _dataset_voxels(ds: Any, cases: Sequence[str]) -> int:
    return sum(math.prod(ds.case_shape(n)) for n in cases)


def _spacing(ds: Any, dims: int) -> list[float]:
    spacing = list(ds.target_spacing or [])[-dims:]
    return spacing if len(spacing) == dims and all(s > 0 for s in spacing) else [1.0] * dims


def model_config(cfg: TrainConfig, ds: Any, strides: Any = None, kernels: Any = None) -> ModelConfig:
    """The network ``cfg`` trains on ``ds`` (``strides``/``kernels``: a candidate topology
    while planning; default: the config's own). The training loop builds its model from this."""
    return ModelConfig.from_preset(cfg.arch, cfg.preset, dims=cfg.dims, in_channels=ds.channels, classes=ds.classes,
                                   depth=cfg.depth, base_filters=cfg.filters(), deep_supervision=cfg.deep_supervision,
                                   strides=cfg.strides if strides is None else strides,
                                   kernel_sizes=cfg.kernel_sizes if kernels is None else kernels)


def _budget(target: DeviceTarget) -> float:
    """Bytes a GPU plan may fill."""
    return MEMORY_SHARE * target.memory_gib * 2**30


def _bytes_per_value(cfg: TrainConfig) -> int:
    """Activations in bf16/fp16 unless mixed precision is off (``amp`` unset means on, on CUDA)."""
    return 4 if cfg.amp is False else 2


def _topology(spacing: list[float], patch: list[int], depth: int) -> tuple[Any, Any, tuple[int, ...]]:
    """Strides and kernels for ``patch`` (None when isotropic), and the pooling multiple."""
    strides, kernels = plan_topology(spacing, patch, depth)
    multiple = patch_multiple(strides)
    if is_isotropic_topology(strides, kernels):
        return None, None, multiple
    return strides, kernels, multiple


def _gpu_patch(cfg: TrainConfig, ds: Any, cases: Sequence[str], target: DeviceTarget) -> tuple[list[int], Any, Any]:
    """The largest patch (up to the median case) of which a batch of 2 (or the given batch) fits."""
    dims, depth = cfg.dims, cfg.depth
    spacing = _spacing(ds, dims)
    median = [int(sorted(s[d] for s in _shapes(ds, cases, dims))[len(cases) // 2]) for d in range(dims)]
    budget, bytes_per_value = _budget(target), _bytes_per_value(cfg)
    side_mm = (START_VOXELS[dims] * math.prod(spacing)) ** (1 / dims)
    patch = [max(1, min(m, round(side_mm / s))) for s, m in zip(spacing, median)]
    strides, kernels, multiple = _topology(spacing, patch, depth)
    patch = [-(-p // k) * k for p, k in zip(patch, multiple)]
    pair = cfg.batch_size or 2
    while step_memory(model_config(cfg, ds, strides, kernels), pair, patch, bytes_per_value) > budget:
        # the axis largest against the median case gives up one pooling multiple
        ratios = [p / max(1, m) if p > k else -1.0 for p, m, k in zip(patch, median, multiple)]
        axis = max(range(dims), key=lambda a: ratios[a])
        if ratios[axis] < 0:
            raise UnetppError(f"--gpu-memory {target.memory_gib:g}: even a batch of {pair} patches of "
                              f"{'x'.join(map(str, patch))} does not fit the GPU's memory; give a smaller --width "
                              "or --patch-size and --batch-size")
        patch[axis] -= multiple[axis]
        strides, kernels, multiple = _topology(spacing, patch, depth)
        patch = [max(k, p // k * k) for p, k in zip(patch, multiple)]
    return patch, strides, kernels


def _gpu_batch(cfg: TrainConfig, ds: Any, cases: Sequence[str], target: DeviceTarget) -> int:
    """The most patches that fit the memory budget, at least 2, at most 5 % of the data."""
    budget, bytes_per_value = _budget(target), _bytes_per_value(cfg)
    model = model_config(cfg, ds)
    one = step_memory(model, 1, cfg.patch_size, bytes_per_value)
    two = step_memory(model, 2, cfg.patch_size, bytes_per_value)
    per_sample = two - one
    fits = int((budget - (one - per_sample)) // per_sample) if per_sample > 0 else 2
    if fits < 2:
        raise UnetppError(f"--patch-size {'x'.join(map(str, cfg.patch_size))}: a batch of 2 needs "
                          f"{(one + per_sample) / 2**30:.1f} GiB, more than {MEMORY_SHARE:.0%} of the GPU's "
                          f"{target.memory_gib:g} GiB; give a smaller patch, or --batch-size 1")
    cap = int(MAX_DATASET_SHARE * _dataset_voxels(ds, cases) // math.prod(cfg.patch_size))
    return max(2, min(fits, cap))


def compile_pays(cfg: TrainConfig, steps_per_epoch: int) -> bool:
    """``torch.compile`` on a GPU when the run saves at least twice its first step's cost.

    The run's length: ``epochs x steps x batch x patch`` voxels at the measured uncompiled
    rate (:data:`GPU_VOXELS_PER_S`), at most ``--max-minutes``; the saving: that time times
    ``1 - 1/speed-up`` (:data:`COMPILE_SPEEDUP`); the cost: :data:`COMPILE_SECONDS`. Measured
    on the paper network: it pays in 2D after ~4 minutes, in 3D after ~30.
    """
    dims = cfg.dims or 2
    voxels = cfg.epochs * steps_per_epoch * (cfg.batch_size or BATCH_SIZE[dims]) * math.prod(cfg.patch_size or [1])
    seconds = voxels / GPU_VOXELS_PER_S[dims]
    if cfg.max_minutes is not None:
        seconds = min(seconds, cfg.max_minutes * 60)
    return seconds * (1 - 1 / COMPILE_SPEEDUP[dims]) >= 2 * COMPILE_SECONDS[dims]


def gpu_loader_workers(dims: int, compiled: bool, cores: int | None = None) -> int:
    """Loader processes that give at least twice the patches the GPU consumes (measured rates:
    :data:`GPU_VOXELS_PER_S`, :data:`WORKER_VOXELS_PER_S`), at least 2, leaving one core for
    the training process."""
    need = 2 * GPU_VOXELS_PER_S[dims] * (COMPILE_SPEEDUP[dims] if compiled else 1.0) / WORKER_VOXELS_PER_S[dims]
    cores = cores or os.cpu_count() or 2
    return max(1, min(max(2, math.ceil(need)), cores - 1))


def describe(cfg: TrainConfig, ds: Any, target: DeviceTarget) -> dict[str, Any]:
    """What the plan means in numbers, beside the train section (``unetpp data plan``)."""
    out: dict[str, Any] = {"device": str(target), "voxels_per_batch": cfg.batch_size * math.prod(cfg.patch_size)}
    if target.kind == "cuda" and target.memory_gib:
        need = step_memory(model_config(cfg, ds), cfg.batch_size, cfg.patch_size, _bytes_per_value(cfg))
        out.update(memory_gib=round(need / 2**30, 2), memory_share=round(need / (target.memory_gib * 2**30), 3))
        out["precision"] = ("bf16" if target.bf16 else "fp16") if cfg.amp else "fp32"
    else:
        out["precision"] = "bf16 where the CPU has it natively" if cfg.amp else "fp32"
    return out


def plan_run(cfg: TrainConfig, gpu_memory_gib: float | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """The train section ``unetpp train`` would store for ``cfg``, and what it means in numbers,
    without training (``unetpp data plan``); ``gpu_memory_gib`` plans for a CUDA GPU of that
    size without one.

    Example:
        >>> planned, facts = plan_run(TrainConfig(data="ct-abdomen", dims=3, device="cuda"), 80)  # doctest: +SKIP
        >>> planned.patch_size, planned.batch_size, facts["memory_gib"]                           # doctest: +SKIP
    """
    from ..data import open_dataset
    from ..data.loading.pipeline import make_split
    from ..runtime import device_target

    if gpu_memory_gib is not None and not (isinstance(gpu_memory_gib, (int, float)) and 0 < gpu_memory_gib < 10_000):
        raise UnetppError(f"--gpu-memory must be a number of GiB above 0, got {gpu_memory_gib!r}")
    if gpu_memory_gib is not None and cfg.device == "auto":
        cfg = cfg.replace(device="cuda")
    if gpu_memory_gib is not None and not cfg.device.startswith("cuda"):
        raise UnetppError(f"--gpu-memory plans for a CUDA GPU; --device is {cfg.device}")
    target = device_target(cfg.device, gpu_memory_gib)
    ds = open_dataset(cfg.data)
    folds = cfg.folds if cfg.fold is not None else None
    split = make_split(ds, val_fraction=cfg.val_fraction, folds=folds, fold=cfg.fold, seed=cfg.seed)
    if not split.get("train") or not split.get("val"):
        raise UnetppError(f"{cfg.data}: {len(ds.case_names)} labelled case(s) cannot be split into training and "
                          "validation cases; add cases or change --val-fraction")
    planned = settle(cfg, ds, split["train"], target, split["val"])
    return planned, describe(planned, ds, target)


__all__ = ["BATCH_SIZE", "GPU_STEPS_PER_EPOCH", "PATCH_SIDE", "compile_pays", "describe", "gpu_loader_workers",
           "model_config", "plan_run", "settle"]
