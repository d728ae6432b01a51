"""Does the QC flag the masks worth checking? Measured on a cross-validation (issue 23).

    python benchmarks/qc.py nuclei-2d --folds 5 --minutes 2 --out docs/results/qc/nuclei-2d
    python benchmarks/qc.py nuclei-2d --folds 3 --minutes 0.3 --out /tmp/qc    # a quick pass

1. ``unetpp train DATA --fold all --folds K --max-minutes M``: a cross-validation over the
   data set's non-test cases; ``unetpp prune`` on it scores every level out of fold and
   writes ``trust.json``: the temperature, the expected calibration error before and after,
   the QC thresholds, and per out-of-fold case its Dice and QC confidence, with their Spearman
   rank correlation (goal: >= 0.5).
2. The held-out **test** images (never in any fold) are predicted with ``--uncertainty``
   (goal: all ``ok``), and so are **broken** copies of the first test image: uniform noise,
   inverted intensities, a blank image, and another modality (a CT slice of the ct-abdomen
   sample, windowed to 8 bits and cut to the tile's size; fetched if missing) (goal: >= 3 of 4
   flagged ``review``).
3. The cost: the same test images predicted with and without ``--uncertainty``, median of 3
   runs each (goal: < 1.3x).

Writes ``OUT/results.json`` and ``OUT/results.md``. Binary 2D image data sets with their own
train/val/test split (``splits.json``), as ``vs_nnunet.py``. Never a timed test.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
UNETPP = [sys.executable, "-m", "unetpp"]


def sh(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (output to ``log``); its wall seconds; stop on failure."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=f)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def read_gray(path: Path) -> np.ndarray:
    from unetpp.data.files.formats import read_file

    array, _ = read_file(path)
    a = np.asarray(array, dtype=np.float64)
    return a[0] if a.ndim == 3 else a


def write_like(path: Path, array: np.ndarray, dtype: np.dtype) -> None:
    from unetpp.data.files.formats import write_file

    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    a = np.clip(array, info.min, info.max) if info else array
    write_file(path, a.astype(dtype), {"spacing": [1.0, 1.0]})


def ct_slice(shape: tuple[int, ...], top: float) -> np.ndarray:
    """The middle axial slice of the ct-abdomen sample, soft-tissue window, scaled to [0, top]."""
    from unetpp.data.files.formats import read_file
    from unetpp.data.cases.layouts import scan
    from unetpp.data.samples.catalog import fetch, fetched_location

    case = scan(fetched_location("ct-abdomen") or fetch("ct-abdomen")).cases[0]
    volume, _ = read_file(case.images[0])
    v = np.asarray(volume, dtype=np.float64)
    v = v[0] if v.ndim == 4 else v
    s = np.clip((v[v.shape[0] // 2] + 160) / 400, 0, 1) * top
    out = np.zeros(shape)
    h, w = min(shape[0], s.shape[0]), min(shape[1], s.shape[1])
    y0, x0 = (s.shape[0] - h) // 2, (s.shape[1] - w) // 2
    out[:h, :w] = s[y0:y0 + h, x0:x0 + w]
    return out


def qc_rows(folder: Path) -> dict[str, dict[str, str]]:
    return {r["case"]: r for r in csv.DictReader((folder / "qc.csv").open())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=2.0, help="training budget per fold")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep-work", action="store_true", help="keep OUT/work (the fold runs: hundreds of MB)")
    args = ap.parse_args(argv)

    from unetpp.data import open_dataset
    from unetpp.data.cases.layouts import scan

    ds = open_dataset(args.data)
    split = ds.default_split or {}
    if not split.get("test"):
        raise SystemExit(f"{args.data}: needs its own test split (splits.json)")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "log.txt"
    cv = args.out / "work" / "cv"
    seconds = {"train": sh([*UNETPP, "train", args.data, "--out", str(cv), "--fold", "all", "--folds",
                            str(args.folds), "--max-minutes", str(args.minutes), "--device", args.device,
                            "--epochs", "100000"], log)}
    seconds["prune"] = sh([*UNETPP, "prune", str(cv), args.data, "--device", args.device], log)
    trust = json.loads((cv / "trust.json").read_text())

    # the inputs: held-out test images, and broken copies of the first
    files = {c.name: Path(c.images[0]) for c in scan(ds.root).cases}
    inputs = args.out / "work" / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir(parents=True)
    test = [files[n] for n in split["test"]]
    for f in test:
        shutil.copy(f, inputs / f"clean_{f.name}")
    first = test[0]
    from unetpp.data.files.formats import read_file

    raw, _ = read_file(first)
    dtype = np.asarray(raw).dtype
    image = read_gray(first)
    lo, hi = float(image.min()), float(image.max())
    rng = np.random.default_rng(0)
    broken = {"noise": rng.uniform(lo, hi, image.shape), "inverted": hi + lo - image,
              "blank": np.full(image.shape, float(np.median(image)))}
    try:
        broken["other_modality_ct"] = ct_slice(image.shape, hi)
    except Exception as e:  # noqa: BLE001 - the other three still measure
        print(f"another modality left out: {e}", file=sys.stderr)
    suffix = "".join(first.suffixes)
    for name, a in broken.items():
        write_like(inputs / f"broken_{name}{suffix}", a, dtype)

    pred = args.out / "work" / "pred"
    sh([*UNETPP, "predict", str(cv), str(inputs), "--out", str(pred), "--uncertainty", "--device", args.device], log)
    rows = qc_rows(pred)
    clean_rows = {k: v for k, v in rows.items() if k.startswith("clean_")}
    broken_rows = {k: v for k, v in rows.items() if k.startswith("broken_")}

    # the cost of --uncertainty: the clean test images, median of 3 runs each way
    timing = args.out / "work" / "timing"
    clean_only = args.out / "work" / "clean"
    shutil.rmtree(clean_only, ignore_errors=True)
    clean_only.mkdir()
    for f in test:
        shutil.copy(f, clean_only / f.name)
    runs: dict[str, list[float]] = {"plain": [], "uncertainty": []}
    for _ in range(3):
        for kind, extra in (("plain", []), ("uncertainty", ["--uncertainty"])):
            shutil.rmtree(timing, ignore_errors=True)
            runs[kind].append(sh([*UNETPP, "predict", str(cv), str(clean_only), "--out", str(timing),
                                  "--device", args.device, *extra], log))
    plain, unc = statistics.median(runs["plain"]), statistics.median(runs["uncertainty"])

    result = {"data": args.data, "folds": args.folds, "minutes_per_fold": args.minutes,
              "out_of_fold_cases": len(trust["cases"]),
              "spearman_confidence_dice": trust["spearman_confidence_dice"],
              "temperature": trust["temperature"], "ece": trust["ece"], "thresholds": trust["thresholds"],
              "oof": trust["cases"],
              "clean_test": {k: {"flag": v["flag"], "reasons": v["reasons"], "confidence": float(v["confidence"]),
                                 "intensity_distance": float(v["intensity_distance"])} for k, v in clean_rows.items()},
              "broken": {k: {"flag": v["flag"], "reasons": v["reasons"],
                             "intensity_distance": float(v["intensity_distance"])} for k, v in broken_rows.items()},
              "clean_ok": sum(v["flag"] == "ok" for v in clean_rows.values()),
              "broken_flagged": sum(v["flag"] == "review" for v in broken_rows.values()),
              "predict_seconds": {"plain": plain, "uncertainty": unc, "ratio": unc / plain},
              "seconds": seconds}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(result, args))
    if not args.keep_work:
        shutil.rmtree(args.out / "work", ignore_errors=True)
    print(markdown(result, args))
    return 0


def markdown(r: dict[str, Any], args: argparse.Namespace) -> str:
    rho = r["spearman_confidence_dice"]
    lines = [f"# QC on {r['data']}: {r['folds']}-fold cross-validation, {r['minutes_per_fold']:g} min per fold",
             "",
             "| measure | value | goal |", "|---|---:|---|",
             f"| Spearman rho, QC confidence vs out-of-fold Dice ({r['out_of_fold_cases']} cases) | "
             f"{'n/a' if rho is None else f'{rho:.2f}'} | >= 0.5 |",
             f"| clean held-out test images flagged ok | {r['clean_ok']} of {len(r['clean_test'])} | all |",
             f"| broken inputs flagged review | {r['broken_flagged']} of {len(r['broken'])} | >= 3 of 4 |",
             f"| expected calibration error (validation voxels) | {r['ece']['before']:.4f} -> "
             f"{r['ece']['after']:.4f} (T = {r['temperature']:.2f}) | lower |",
             f"| predict time with --uncertainty / without | {r['predict_seconds']['ratio']:.2f}x "
             f"({r['predict_seconds']['uncertainty']:.1f} s / {r['predict_seconds']['plain']:.1f} s, median of 3) "
             f"| < 1.3x |", "",
             "| input | flag | reasons |", "|---|---|---|"]
    for k, v in {**r["clean_test"], **r["broken"]}.items():
        lines.append(f"| {k} | {v['flag']} | {v['reasons'] or '-'} |")
    lines += ["", "| out-of-fold case | Dice | QC confidence | intensity distance |", "|---|---:|---:|---:|"]
    for k, v in sorted(r["oof"].items(), key=lambda kv: kv[1]["dice"]):
        lines.append(f"| {k} | {v['dice']:.4f} | {v['confidence']:.4f} | {v['intensity_distance']:.2f} |")
    lines += ["", "Re-run: `python benchmarks/qc.py " + " ".join(
        [r["data"], "--folds", str(r["folds"]), "--minutes", f"{r['minutes_per_fold']:g}", "--out", str(args.out)])
        + "` (commands and their output: `log.txt`). The ECE is measured on the validation voxels the "
        "temperature was fitted on.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
