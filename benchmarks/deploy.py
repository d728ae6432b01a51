"""Seconds per image against accuracy, per level and engine, in one run (issue 17 item 4).

    python benchmarks/deploy.py RUN DATA --image IMAGE --out docs/results/deploy

For every level L1..L4 and accurate mode of a trained run, and each inference window
(patch: nnU-Net's overlapping training-patch tiles; large: the whole image, see
``unetpp.inference.window``): eager PyTorch fp32 (the Predictor's path), ONNX Runtime fp32
and ONNX Runtime int8 (static QDQ, calibrated on the run's validation cases), and the
unoptimised eager network with patch windows (``predict`` as issue 17 found it): the median
wall time to predict IMAGE whole (tiling included) and the mean IoU on DATA's test cases. Writes ``deploy.json``, ``deploy.md`` and
``deploy.png`` (IoU against seconds, one curve per engine) into ``--out``.

Never a timed test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import unetpp  # noqa: E402
from unetpp.data import open_dataset  # noqa: E402
from unetpp.inference.deployed import export_run  # noqa: E402
from unetpp.inference.evaluate import evaluate  # noqa: E402
from unetpp.inference.engine import level_network, probabilities  # noqa: E402
from unetpp.inference.window import WINDOWS  # noqa: E402
from unetpp.models import Mode  # noqa: E402


def timed(predict, repeats: int) -> float:
    predict()  # warm-up (oneDNN / ONNX Runtime pick their kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def probabilities_of(network, classes: int):
    """A ``x -> {level: logits}`` network as the engine's ``x -> {level: probabilities}``."""
    def run(x):
        with torch.inference_mode():
            return {lv: probabilities(logits.float(), classes) for lv, logits in network(x).items()}

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("--image", required=True, help="the image timed (read and prepared once)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    base = unetpp.load(args.run)
    ds = open_dataset(args.data)
    image, _ = base.read(args.image)
    from unetpp.inference.evaluate import select_cases

    test_cases, split = select_cases(ds, base.config, "evaluate")  # the run's held-out cases, for every engine
    modes = [Mode.fast(lv) for lv in base.levels] + ([Mode.accurate()] if len(base.levels) > 1 else [])
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="unetpp-deploy-"))
    for mode in modes:
        key = "accurate" if mode.name == "accurate" else f"L{mode.level}"
        levels = mode.levels(base.levels)
        # (engine, predictor, window, network): "unoptimised" is predict as issue 17 found it
        # (eager, no BN folding or channels_last), the baseline of its 1.5x goal
        engines = [("eager unoptimised", base, "patch", level_network(base.model, levels))]
        engines += [("eager fp32", base, w, None) for w in WINDOWS]
        for precision in ("fp32", "int8"):
            path = tmp / f"{key}-{precision}.onnx"
            try:
                export_run(base, "onnx", path, mode, quantize=None if precision == "fp32" else "int8",
                           tolerance=100.0)
                engines += [(f"ORT {precision}", unetpp.load(path, window=w), w, None) for w in WINDOWS]
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                print(f"{key} {precision}: {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
        for engine, predictor, window, network in engines:
            run_mode = mode if predictor is base else None
            predictor.window = predictor.window_for(window)
            if network is not None:
                net = probabilities_of(network, base.classes)
                probe = lambda: predictor.level_probabilities(image, levels, network=net)  # noqa: E731
            else:
                probe = lambda: predictor.predict_tensor(image, run_mode)  # noqa: E731
            seconds = timed(probe, args.repeats)
            # (the unoptimised network's masks are the optimised one's: scored through the latter)
            iou = evaluate(predictor, ds, run_mode, surface=False, cases=test_cases)["iou"]
            name = f"{engine} · {window}"
            rows.append({"level": key, "engine": name, "seconds": seconds, "iou": iou})
            print(f"{key:8s} {name:26s} {seconds:7.3f} s  IoU {iou * 100:6.2f}",
                  flush=True)
        base.window = base.window_for("patch")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.json").write_text(json.dumps({"image": str(args.image), "image_shape": list(image.shape),
                                                      "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    l4 = next(r["seconds"] for r in rows if r["engine"] == "eager unoptimised · patch"
              and r["level"] == f"L{max(base.levels)}")
    lines = [f"Image {Path(args.image).name} {tuple(image.shape[1:])}, {torch.get_num_threads()} threads; IoU on "
             f"the {len(test_cases)} {split} case(s) of {args.data}, the same for every engine.", "", "| level | engine · window | s / image | × unoptimised L4 | IoU % |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['level']} | {r['engine']} | {r['seconds']:.3f} | {l4 / r['seconds']:.2f} | {r['iou'] * 100:.2f} |"
              for r in rows]
    seconds = {(r["level"], r["engine"]): r["seconds"] for r in rows}
    lines += ["", "predict's path (eager fp32, large windows) against issue 17's (unoptimised, patch windows), "
              "same level: " + ", ".join(f"{k} {seconds[k, 'eager unoptimised · patch'] / seconds[k, 'eager fp32 · large']:.2f}x"
                                         for k in dict.fromkeys(r["level"] for r in rows))]
    (args.out / "deploy.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for engine in sorted({r["engine"] for r in rows}):
        pts = [r for r in rows if r["engine"] == engine]
        ax.plot([r["seconds"] for r in pts], [r["iou"] * 100 for r in pts], "o-", label=engine)
        for r in pts:
            ax.annotate(r["level"], (r["seconds"], r["iou"] * 100), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    ax.set_xlabel("seconds per image (sliding window included)")
    ax.set_ylabel("IoU % (test cases)")
    ax.set_title("latency against accuracy, per level and engine")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "deploy.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
