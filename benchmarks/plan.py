"""The device planner against issue 21's goals, and its memory model against measured peaks.

    python benchmarks/plan.py              # ~1 min on 2 cores

1. **Plans** (training/plan.py) for 20 CT-like volumes of 64x512x512 at 2.5x0.8x0.8 mm (the
   planner reads shapes and spacing only), 3D and 2D, on the CPU and on GPUs of 8, 24, 80 and
   141 GB: patch, batch, voxels per batch, the memory model's estimate. Goal: >= 128^3
   voxels a batch (8x the CPU's 2 x 64^3) at 80 GB; at 8 GB a plan no larger that fits.
2. **Memory model against a measured peak** (training/memory.py): one training step of the
   paper network in fp32 on the CPU, in a fresh process, peak RSS over the RSS before it
   (``/proc/self/clear_refs``, glibc told to return freed memory at once, as benchmarks/run.py
   does), against the model's activations x PEAK_FACTOR (no GPU workspace on the CPU).
   ``benchmarks/gpu.py`` does the same on a GPU with ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CHILD = r'''
import json, sys
import torch
from unetpp.models import ModelConfig, build_model
from unetpp.training.loss import DeepSupervisionLoss
spec = json.loads(sys.argv[1])
torch.set_num_threads(2)
mc = ModelConfig.from_preset("unetpp", "paper", dims=spec["dims"], in_channels=1, classes=1,
                             base_filters=spec["filters"])
model = build_model(mc)
opt = torch.optim.Adam(model.parameters())
crit = DeepSupervisionLoss(tuple(model.levels), 1)
def step(batch, side):
    x = torch.randn(batch, 1, *[side] * spec["dims"])
    y = (torch.rand(batch, *[side] * spec["dims"]) > 0.5).long()
    loss = crit(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
step(1, 2 ** 4 * 2)          # Adam's state allocated, kernels warm
import gc; gc.collect()
before = kb("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
step(spec["batch"], spec["side"])
print(json.dumps({"peak_mb": (kb("VmHWM:") - before) / 1024}))
'''


class CTLike:
    spatial_dims, channels, classes = 3, 1, 1
    target_spacing = [2.5, 0.8, 0.8]
    case_names = [f"ct_{i:02d}" for i in range(20)]

    def case_shape(self, name: str) -> tuple[int, ...]:
        return (64, 512, 512)


def plans() -> list[dict]:
    from unetpp.runtime import DeviceTarget
    from unetpp.training import TrainConfig
    from unetpp.training.plan import describe, settle

    ds, rows = CTLike(), []
    for dims in (3, 2):
        for memory in (None, 8, 24, 80, 141):
            target = DeviceTarget("cuda", float(memory)) if memory else DeviceTarget("cpu")
            cfg = settle(TrainConfig(data="ct", dims=dims), ds, ds.case_names[:16], target, ds.case_names[16:])
            facts = describe(cfg, ds, target)
            rows.append({"dims": dims, "device": str(target), "patch": cfg.patch_size, "batch": cfg.batch_size,
                         "voxels_per_batch": facts["voxels_per_batch"],
                         "x_cpu_voxels": None, "memory_gib": facts.get("memory_gib"),
                         "steps": cfg.steps_per_epoch, "compile": cfg.compile})
    for r in rows:
        cpu = next(c for c in rows if c["dims"] == r["dims"] and c["device"] == "CPU")
        r["x_cpu_voxels"] = round(r["voxels_per_batch"] / cpu["voxels_per_batch"], 1)
    return rows


def peaks() -> list[dict]:
    from unetpp.models import ModelConfig
    from unetpp.training.memory import PEAK_FACTOR, saved_bytes_per_voxel

    rows = []
    for spec in ({"dims": 2, "filters": 32, "batch": 4, "side": 256}, {"dims": 2, "filters": 32, "batch": 8, "side": 256},
                 {"dims": 3, "filters": 32, "batch": 1, "side": 64}, {"dims": 3, "filters": 16, "batch": 2, "side": 64}):
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT / "src"))
        r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=env, capture_output=True, text=True,
                           check=True)
        measured = json.loads(r.stdout.strip().splitlines()[-1])["peak_mb"]
        mc = ModelConfig.from_preset("unetpp", "paper", dims=spec["dims"], in_channels=1, classes=1,
                                     base_filters=spec["filters"])
        saved = saved_bytes_per_voxel(mc, 4) * spec["batch"] * spec["side"] ** spec["dims"] / 2**20
        rows.append({**spec, "measured_mb": round(measured), "saved_mb": round(saved),
                     "model_mb": round(PEAK_FACTOR * saved), "measured_over_saved": round(measured / saved, 2)})
    return rows


def main() -> int:
    result = {"plans": plans(), "peaks": peaks()}
    print("| dims | device | patch | batch | voxels/batch | x CPU | model GiB | steps | compile |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["plans"]:
        print(f"| {r['dims']}D | {r['device']} | {'x'.join(map(str, r['patch']))} | {r['batch']} | "
              f"{r['voxels_per_batch']:,} | {r['x_cpu_voxels']} | {r['memory_gib'] or '-'} | {r['steps']} | "
              f"{r['compile']} |")
    print("\n| dims | filters | batch x side | saved MB (counted) | model MB (x PEAK_FACTOR) | measured peak MB | measured / saved |")
    print("|---|---|---|---|---|---|---|")
    for r in result["peaks"]:
        print(f"| {r['dims']}D | {r['filters']} | {r['batch']} x {r['side']} | {r['saved_mb']} | {r['model_mb']} | "
              f"{r['measured_mb']} | {r['measured_over_saved']} |")
    print("\n" + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
