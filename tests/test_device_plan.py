"""Plans for the device (training/plan.py, training/memory.py, `unetpp data plan`): the CPU plan
as before, GPU plans sized by a memory model that counts what autograd really saves."""

from __future__ import annotations

import json
import math

import pytest
import torch

from unetpp.models import ModelConfig, build_model
from unetpp.runtime import DeviceTarget
from unetpp.training import TrainConfig
from unetpp.training.loss import DeepSupervisionLoss
from unetpp.training.memory import saved_bytes_per_voxel, step_memory
from unetpp.training.plan import MEMORY_SHARE, compile_pays, gpu_loader_workers, settle
from helpers import cli


class CTLike:
    """What the planner reads of a data set: 20 CT volumes of 64x512x512 at 2.5x0.8x0.8 mm."""

    spatial_dims, channels, classes = 3, 1, 1
    target_spacing = [2.5, 0.8, 0.8]

    def __init__(self, n: int = 20, shape: tuple[int, ...] = (64, 512, 512)):
        self.case_names = [f"ct_{i:02d}" for i in range(n)]
        self.shape = shape

    def case_shape(self, name: str) -> tuple[int, ...]:
        return self.shape


def _plan(memory_gib: float | None, dims: int = 3, **given) -> TrainConfig:
    ds = CTLike()
    target = DeviceTarget("cuda", memory_gib) if memory_gib else DeviceTarget("cpu")
    return settle(TrainConfig(data="ct", dims=dims, **given), ds, ds.case_names[:16], target, ds.case_names[16:])


def _need_gib(cfg: TrainConfig) -> float:
    mc = ModelConfig.from_preset("unetpp", "paper", dims=cfg.dims, in_channels=1, classes=1, depth=cfg.depth,
                                 base_filters=cfg.base_filters, strides=cfg.strides, kernel_sizes=cfg.kernel_sizes)
    return step_memory(mc, cfg.batch_size, cfg.patch_size, 2 if cfg.amp else 4) / 2**30


def test_gpu_plans_grow_with_memory_and_fit_it():
    big, small = _plan(80), _plan(8)
    big_voxels, small_voxels = (c.batch_size * math.prod(c.patch_size) for c in (big, small))
    assert big_voxels >= 128**3 * 2 and big.batch_size >= 2  # >= 2 x 128^3 = 8x the CPU's 2 x 64^3
    assert small_voxels <= big_voxels and small.batch_size >= 2
    assert _need_gib(big) <= MEMORY_SHARE * 80 and _need_gib(small) <= MEMORY_SHARE * 8
    for c in (big, small):  # the anisotropic rule kept: thin slices get no 3-wide kernel at first
        assert c.patch_size[0] <= 64 and c.kernel_sizes[0] == [1, 3, 3] and c.strides[0] == [1, 2, 2]
        assert (c.steps_per_epoch, c.amp) == (250, True)
    # a batch may hold at most 5 % of the training voxels: 16 small volumes cap it at 2
    ds = CTLike(shape=(64, 128, 128))
    tiny = settle(TrainConfig(data="ct", dims=3), ds, ds.case_names[:16], DeviceTarget("cuda", 80), ds.case_names[16:])
    assert tiny.batch_size == 2 and tiny.patch_size[1:] == [128, 128]


def test_gpu_plan_in_2d_takes_whole_slices_and_keeps_given_values():
    plan = _plan(80, dims=2)
    assert plan.patch_size == [512, 512] and plan.batch_size >= 2
    kept = _plan(80, dims=2, patch_size=[256], batch_size=32, steps_per_epoch=10, compile=False, num_workers=3)
    assert (kept.patch_size, kept.batch_size, kept.steps_per_epoch, kept.compile, kept.num_workers) == \
        ([256, 256], 32, 10, False, 3)


def test_cpu_plan_is_as_measured_before():
    cpu = _plan(None)
    assert cpu.batch_size == 2 and math.prod(cpu.patch_size) <= 64**3 * 1.5  # today's voxel budget, in mm
    assert (cpu.amp, cpu.compile, cpu.num_workers) == (False, False, 0)
    tiles = math.ceil(math.prod(CTLike().shape) / math.prod(cpu.patch_size))  # the loader's epoch, as before
    assert cpu.steps_per_epoch == math.ceil(16 * tiles / cpu.batch_size)
    assert settle(cpu, CTLike(), CTLike().case_names[:16], DeviceTarget("cpu")) == cpu  # idempotent
    flat2d = _plan(None, dims=2)
    assert flat2d.patch_size == [96, 96] and flat2d.batch_size == 8


def test_memory_model_counts_what_autograd_saves_on_a_real_step():
    """The meta-device count equals the bytes a real CPU step saves, and grows with voxels."""
    mc = ModelConfig.from_preset("unetpp", "paper", dims=3, in_channels=1, classes=1, depth=2, base_filters=4)
    per_voxel = saved_bytes_per_voxel(mc, 4)
    model = build_model(mc)
    crit = DeepSupervisionLoss(tuple(model.levels), 1, None, 0.5, 1.0)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_activations(side: int) -> int:
        total, seen = 0, set(params)  # the weights are the model state, not activations

        def count(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            if t.untyped_storage().data_ptr() not in seen:  # a tensor saved twice is held once
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            crit(model(torch.randn(1, 1, side, side, side)), torch.zeros(1, side, side, side, dtype=torch.long))
        return total

    # what grows with the voxels (a few constant bytes, e.g. the loss's scalars, are not activations)
    small, large = saved_activations(8), saved_activations(16)
    assert large - small == pytest.approx(per_voxel * (16**3 - 8**3), rel=0.01)
    assert large == pytest.approx(per_voxel * 16**3, rel=0.05)
    bf16 = saved_bytes_per_voxel(mc, 2)
    assert 0.45 * per_voxel <= bf16 <= 0.6 * per_voxel
    one, two = step_memory(mc, 1, (32, 32, 32), 2), step_memory(mc, 2, (32, 32, 32), 2)
    assert two - one == pytest.approx(step_memory(mc, 3, (32, 32, 32), 2) - two)  # linear in the batch


def test_compile_pays_only_on_a_long_enough_run_and_workers_fit_the_cores():
    long2d = TrainConfig(data="x", dims=2, patch_size=[256, 256], batch_size=32, epochs=100)
    assert compile_pays(long2d, 250)
    assert not compile_pays(long2d.replace(max_minutes=1.0), 250)
    long3d = TrainConfig(data="x", dims=3, patch_size=[128] * 3, batch_size=2, epochs=100)
    assert compile_pays(long3d, 250) and not compile_pays(long3d.replace(epochs=5), 250)
    assert gpu_loader_workers(3, True, cores=16) >= 2
    assert gpu_loader_workers(3, True, cores=2) == 1


def test_data_plan_cli_prints_the_train_section_without_a_gpu(tmp_path, capsys):
    from unetpp.data.samples.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "vol", layout="nnunet", n_cases=5, size=(16, 48, 48), dims=3,
                                   seed=0, spacing=(1.0, 1.0, 1.0))
    code, stdout, _ = cli(["data", "plan", str(data), "--gpu-memory", "24", "--json"], capsys)
    assert code == 0
    plan = json.loads(stdout)
    train = plan["train"]
    assert train["dims"] == 3 and train["steps_per_epoch"] == 250 and train["amp"] is True
    assert train["patch_size"] == [16, 48, 48]  # no larger than the (median) case
    assert plan["plan"]["memory_gib"] <= 24 and plan["plan"]["device"] == "CUDA GPU (24 GiB)"
    code, stdout, _ = cli(["data", "plan", str(data), "--device", "cpu", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["train"]["num_workers"] == 0
    code, _, err = cli(["data", "plan", str(data), "--gpu-memory", "-1"], capsys)
    assert code == 1 and "--gpu-memory" in err and "Traceback" not in err
