"""Seconds per 512×512 image and per 256×256×64 volume, patch against large windows (issue 17).

    python benchmarks/window.py --out docs/results/window [--width 0.25] [--repeats 3]

A UNet++ of the paper preset with deep supervision (random weights: time does not depend on
them; accuracy is ``benchmarks/deploy.py``'s, on a trained run) predicts one 2D image and
one 3D volume through the Predictor (the path ``predict`` takes: BN-folded copy, tiling,
blending), per level L1..L4 and accurate mode, with nnU-Net's patch windows (the training
patch ``plan_patch`` gives for that shape, overlap 0.5) and with large windows
(:mod:`unetpp.inference.window`). Writes ``window.json`` and ``window.md``.

Never a timed test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from deploy import timed  # noqa: E402  (this folder: median after a warm-up call)
from unetpp import create_model  # noqa: E402
from unetpp.inference.predictor import Predictor  # noqa: E402
from unetpp.models import Mode  # noqa: E402

CASES = {2: ((512, 512), (96, 96)), 3: ((64, 256, 256), (64, 64, 64))}  # shape, training patch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--width", type=float, default=0.25, help="filter scale of the paper preset")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    args = ap.parse_args()
    rows, redundancy = [], {}
    for dims in args.dims:
        shape, patch = CASES[dims]
        torch.manual_seed(0)
        model = create_model("unetpp", dims=dims, base_filters=max(1, round(32 * args.width)))
        predictor = Predictor(model, {"train": {"patch_size": list(patch)}, "data": {}})
        image = torch.randn(1, *shape)
        modes = [Mode.fast(lv) for lv in predictor.levels] + [Mode.accurate()]
        for mode in modes:
            row = {"dims": dims, "shape": list(shape), "patch": list(patch), "mode": str(mode)}
            for policy in ("patch", "large"):
                predictor.window = predictor.window_for(policy)
                window, _ = predictor.window.plan(shape)
                row[f"{policy}_s"] = timed(lambda: predictor.predict_tensor(image, mode), args.repeats)
                row[f"{policy}_window"] = list(window)
            rows.append(row)
            print(f"{dims}D {str(mode):9s} patch windows {row['patch_s']:.3f} s, large {row['large_s']:.3f} s "
                  f"({row['patch_s'] / row['large_s']:.2f}x)", flush=True)
        redundancy[dims] = {p: _redundancy(predictor.window_for(p), shape) for p in ("patch", "large")}
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"width": args.width, "threads": torch.get_num_threads(), "torch": torch.__version__}
    (args.out / "window.json").write_text(json.dumps({**meta, "rows": rows, "redundancy": redundancy}, indent=2))
    lines = [f"UNet++ paper preset at width {args.width} (random weights), deep supervision, "
             f"{torch.get_num_threads()} threads, median of {args.repeats} after a warm-up.", "",
             "| input | training patch | mode | patch windows s | large windows s | large window | speed-up |",
             "|---|---|---|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {'×'.join(map(str, r['shape']))} | {'×'.join(map(str, r['patch']))} | {r['mode']} | "
                     f"{r['patch_s']:.3f} | {r['large_s']:.3f} | {'×'.join(map(str, r['large_window']))} | "
                     f"{r['patch_s'] / r['large_s']:.2f}× |")
    lines += ["", "Voxels the network runs per voxel of the input: " + ", ".join(
        f"{d}D patch windows {r['patch']:.2f}, large {r['large']:.2f}" for d, r in redundancy.items())]
    (args.out / "window.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _redundancy(window, shape) -> float:
    """How many voxels the windows of ``window`` run per voxel of an input of ``shape``."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    size, overlap = window.plan(shape)
    slices = dense_patch_slices(shape, size, _get_scan_interval(shape, size, len(shape), overlap))
    return len(slices) * math.prod(size) / math.prod(shape)


if __name__ == "__main__":
    sys.exit(main())
