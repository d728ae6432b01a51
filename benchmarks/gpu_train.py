"""The ``train`` section of benchmarks/gpu.py (issue 21 item 7): the real ``unetpp train``, as a
user runs it, on CT-like volumes, 3D then 2D, about a minute each.

Measured from outside, as a user would see it: a generated dataset (nnU-Net layout, int16
NIfTI ``.nii.gz``, 1.5 x 0.8 x 0.8 mm, 20 volumes of 100 x 512 x 512) is trained with
``--device cuda --max-minutes 1 --epochs 1000`` and everything else left at its default
(prepare, AMP, channels_last, loader workers, steps per epoch, validation, TensorBoard); the
3D run pays the one-off ``prepare``, the 2D run on the same volumes reuses it. Per run: the
subprocess's wall seconds; start-up, the time to the log's "training ..." line (imports,
prepare, model, precision check, loader); the sum of RUN/metrics.csv's ``train_seconds`` (the
steps, loader waits included; validation and writes not) and its share of the wall; samples/s
from RUN/config.json (batch x steps per epoch x epochs); and MFU: samples/s x 3 x the forward
FLOPs of one patch (:func:`unetpp.models.summary.count_flops`, every head) over the GPU's dense
bf16 peak (:data:`PEAK_BF16`; None for a GPU not in it, and on the CPU). A dry run trains on
the CPU, 8 volumes of 16 x 48 x 48, with a 4-filter, depth-2 network for 2 epochs.

Time: ``--max-minutes`` is 1 unless the section's share of gpu.py's budget is shorter, then
what fits (at least :data:`FULL` ``min_minutes``, else the run is skipped with a note); a
run still going at the section's end is killed (its finished epochs are still counted).

On the GPU machine nibabel (which reads and writes NIfTI) is missing like MONAI; both are
pure Python and travel from this repo's ``.venv``, appended to the *end* of sys.path so the
machine's own packages win (scipy, tifffile, pillow, typer, rich, matplotlib are there)::

    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --out $OUT/gpu",
        carry=[".venv/lib/python3.11/site-packages/monai",
               ".venv/lib/python3.11/site-packages/nibabel"], timeout_s=420)

The subprocesses (data, and each ``unetpp train``) run this file, which sets sys.path that
way first: ``python benchmarks/gpu_train.py data DEST N D,H,W`` or ``... unetpp train ...``.
It imports only numpy at the top: spawned worker processes (prepare's) import it again.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPACING = [1.5, 0.8, 0.8]  # mm, (Z, Y, X): under 2x apart, so 3D keeps the default 64^3 patch
LABELS = {"background": 0, "liver": 1, "tumour": 2}
# overhead: seconds of a run besides its minutes (start-up, prepare, the epoch past them, validations)
FULL = dict(cases=20, shape=(100, 512, 512), minutes=1.0, min_minutes=0.25, overhead={3: 45.0, 2: 35.0},
            data_s=40.0, args=["--device", "cuda", "--epochs", "1000"])
# dry: 8 cases, so that prepare runs in worker processes as it does on 20; 5 steps an epoch,
# so that both epochs fit the minute (a CPU epoch is 50 steps at least by default)
DRY = dict(cases=8, shape=(16, 48, 48), minutes=1.0, min_minutes=0.05, overhead={3: 15.0, 2: 15.0}, data_s=15.0,
           args=["--device", "cpu", "--epochs", "2", "--base-filters", "4", "--depth", "2", "--steps-per-epoch", "5"])
#: dense bf16 tensor-core peak, FLOP/s, by the first name contained in the GPU's name
PEAK_BF16 = (("H100 PCIe", 756e12), ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12))


def add_paths() -> None:
    """src/ first; this repo's .venv site-packages last (what the interpreter lacks: MONAI, nibabel)."""
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    for site in sorted(ROOT.glob(".venv/lib/python3*/site-packages")):
        if str(site) not in sys.path:
            sys.path.append(str(site))


def peak_bf16(gpu: str | None) -> float | None:
    return next((peak for name, peak in PEAK_BF16 if gpu and name in gpu), None)


# ----------------------------------------------------------------------------- data
def ct_case(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume, int16 HU (Z, Y, X), and its labels (uint8: liver 1, tumour 2): air,
    a body of fat and soft tissue, a spine, a liver with 1-3 tumours, noise of 15 HU."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if i == a else 1 for i in range(3)])
               for a, n in enumerate(shape))

    def inside(centre: Any, radii: Any) -> np.ndarray:  # broadcast (Z, Y, X) ellipsoid
        return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + \
            ((x - centre[2]) / radii[2]) ** 2 <= 1

    ry, rx = 0.62 + 0.06 * np.cos(2.0 * z), 0.85 + 0.05 * np.cos(1.5 * z)  # the body narrows along Z
    body = (y / ry) ** 2 + (x / rx) ** 2
    hu = np.where(body <= 1, np.float32(-100), np.float32(-1000))  # fat under the skin, air around
    hu[body <= 0.8] = 40                                             # soft tissue
    hu[:, (((y - 0.45) / 0.09) ** 2 + (x / 0.09) ** 2 <= 1)[0]] = 700  # the spine, on every slice
    centre, radii = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.15, 0), rng.uniform(-0.45, -0.3)]), (0.6, 0.3, 0.3)
    liver = inside(centre, radii)
    hu[liver] = 60
    label = liver.astype(np.uint8)
    for _ in range(int(rng.integers(1, 4))):  # hypodense tumours, centred in the liver's inner half
        at = centre + rng.uniform(-0.5, 0.5, 3) * radii
        tumour = inside(at, (rng.uniform(0.05, 0.12),) * 3) & liver
        hu[tumour], label[tumour] = 15, 2
    hu += rng.standard_normal(shape, dtype=np.float32) * 15
    return np.rint(hu).astype(np.int16), label


def write_case(dest: Path, i: int, shape: tuple[int, int, int]) -> None:
    from unetpp.data.files.formats import write_file  # the writer `unetpp` itself uses (gzip level 6)

    image, label = ct_case(shape, seed=i)
    write_file(dest / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image, {"spacing": SPACING})
    write_file(dest / "labelsTr" / f"case_{i:03d}.nii.gz", label, {"spacing": SPACING})


def make_dataset(dest: Path, cases: int, shape: tuple[int, int, int]) -> None:
    """nnU-Net layout, one process per core (forked: this process never touches CUDA)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from unetpp.io import atomic_write_json

    workers = min(cases, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(write_case, [dest] * cases, range(cases), [shape] * cases))  # list(): raise errors here
    atomic_write_json(dest / "dataset.json", {"name": "ct-like", "channel_names": {"0": "CT"}, "labels": LABELS,
                                              "numTraining": cases, "file_ending": ".nii.gz"})


def child(argv: list[str]) -> int:
    """``data DEST N D,H,W`` or ``unetpp ARGS...``, with sys.path as gpu.py has it."""
    add_paths()
    if argv[0] == "data":
        make_dataset(Path(argv[1]), int(argv[2]), tuple(int(s) for s in argv[3].split(",")))
        return 0
    from unetpp.cli.app import main

    main(argv[1:])  # raises SystemExit with the command's exit status
    return 0


# ----------------------------------------------------------------------------- the parent
def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run this file with ``args`` in its own session; its output lines with their times
    from its start; killed with its worker processes after ``timeout`` seconds."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic() - t0, ln.rstrip()) for ln in proc.stdout))
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    reader.join(timeout=10)  # a worker that left the process group would hold the pipe open
    return {"rc": rc, "wall_s": time.monotonic() - t0, "lines": lines}


def when(lines: list[tuple[float, str]], pattern: str) -> tuple[float, re.Match[str]] | None:
    return next(((t, m) for t, ln in lines if (m := re.search(pattern, ln))), None)


def forward_flops(model_config: dict[str, Any], patch: list[int]) -> int:
    """Forward FLOPs of one patch through the whole network (every head), on the meta device."""
    import torch

    from unetpp.models import ModelConfig, build_model
    from unetpp.models.summary import count_flops

    config = ModelConfig.from_dict(model_config)
    with torch.device("meta"):
        model = build_model(config)
    return count_flops(model, (1, config.in_channels, *patch))


def summarise(run: Path, data: Path, done: dict[str, Any], gpu: str | None) -> dict[str, Any]:
    """One row from the run folder and the log (see the module docstring)."""
    row: dict[str, Any] = {"wall_s": round(done["wall_s"], 1)}
    if (hit := when(done["lines"], r"^training \S+ \(")) is not None:  # the loop's first line
        row["startup_s"] = round(hit[0], 1)
    if (hit := when(done["lines"], r"prepared once in ([0-9.]+) s")) is not None:
        row["prepare_s"] = float(hit[1][1])
    if not (run / "config.json").is_file() or not (run / "metrics.csv").is_file():
        return row
    config = json.loads((run / "config.json").read_text())
    train = config["train"]
    with (run / "metrics.csv").open(newline="") as f:
        epochs = list(csv.DictReader(f))
    column = "train_seconds" if epochs and "train_seconds" in epochs[0] else "seconds"
    if column != "train_seconds":
        row["note"] = "metrics.csv has no train_seconds: its seconds (validation included) instead"
    seconds = [float(r[column]) for r in epochs]
    steps = train["steps_per_epoch"]
    if steps is None:  # the loader's default: patches that tile every training case once
        from unetpp.data import open_dataset
        from unetpp.data.loading.pipeline import default_samples_per_epoch

        samples = default_samples_per_epoch(open_dataset(data), config["split"]["train"], train["patch_size"])
        steps = max(1, math.ceil(samples / train["batch_size"]))
    per_epoch = steps * train["batch_size"]
    flops = 3 * forward_flops(config["model"], train["patch_size"])  # backward ~ 2x forward
    row.update(batch=train["batch_size"], patch=train["patch_size"], steps_per_epoch=steps, epochs=len(epochs),
               train_s=round(sum(seconds), 2), epoch_train_s=[round(s, 2) for s in seconds],
               train_share=sum(seconds) / done["wall_s"], train_flops_per_sample=flops)
    if sum(seconds) > 0:
        row["samples_per_s"] = per_epoch * len(epochs) / sum(seconds)
        row["mfu"] = row["samples_per_s"] * flops / peak if (peak := peak_bf16(gpu)) else None
    if len(epochs) > 1:  # without the first epoch's warm-up (cuDNN autotuning, workers starting)
        row["samples_per_s_after_epoch_1"] = per_epoch * (len(epochs) - 1) / sum(seconds[1:])
    return row


def section(dry_run: bool, deadline: float, gpu: str | None) -> dict[str, Any]:
    """Generate the data, then train 3D and 2D on it until ``deadline`` (time.monotonic())."""
    S = DRY if dry_run else FULL
    shape = tuple(S["shape"])
    result: dict[str, Any] = {"data": {"cases": S["cases"], "shape": list(shape), "spacing": SPACING,
                                       "format": "nnU-Net layout, int16 .nii.gz"}, "runs": []}
    heads = [{"dims": d} for d in (3, 2)]

    def skip(why: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        result["runs"] += [{**r, "skipped": why} for r in rows]
        return result

    need = S["data_s"] + sum(S["overhead"][d] + 60 * S["min_minutes"] for d in (3, 2))
    if deadline - time.monotonic() < need:
        return skip(f"{max(0.0, deadline - time.monotonic()):.0f} s left, {need:.0f} s needed", heads)
    tmp = Path(tempfile.mkdtemp(prefix="unetpp-gpu-train-"))
    try:
        data = tmp / "ct"
        made = run_child(["data", str(data), str(S["cases"]), ",".join(map(str, shape))],
                         deadline - time.monotonic() - need + S["data_s"])
        result["data"]["seconds"] = round(made["wall_s"], 1)
        if made["rc"] != 0:
            last = made["lines"][-1][1] if made["lines"] else "no output"
            return skip(f"data not written ({'killed' if made['rc'] is None else 'exit ' + str(made['rc'])}: {last})", heads)
        for k, head in enumerate(heads):  # the time left is shared by the runs still to come
            rest = heads[k:]
            minutes = min(S["minutes"], (deadline - time.monotonic() - sum(S["overhead"][h["dims"]] for h in rest))
                          / len(rest) / 60)
            limit = deadline - time.monotonic() - sum(S["overhead"][h["dims"]] + 60 * S["min_minutes"] for h in rest[1:])
            if minutes < S["min_minutes"]:
                result["runs"].append({**head, "skipped": f"{max(0.0, limit):.0f} s left, too little for a run"})
                continue
            run = tmp / f"run{head['dims']}d"
            cli = ["unetpp", "train", str(data), "--out", str(run), "--dims", str(head["dims"]),
                   "--max-minutes", f"{minutes:.2f}", *S["args"]]
            done = run_child(cli, limit)
            row = {**head, "max_minutes": round(minutes, 2), "command": " ".join(cli).replace(str(tmp), "TMP")}
            try:
                row.update(summarise(run, data, done, gpu))
            except Exception as e:  # noqa: BLE001 - a row that cannot be read is a result too
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            if done["rc"] != 0:
                last = [ln for _, ln in done["lines"]][-3:] or ["no output"]
                row["error"] = (f"killed after {done['wall_s']:.0f} s (the section's time)" if done["rc"] is None
                                else f"exit {done['rc']}: {' | '.join(last)}")[:500]
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def markdown(train: dict[str, Any]) -> list[str]:
    d = train["data"]
    lines = ["## `unetpp train` (the CLI, default settings): where the wall time goes", "",
             f"{d['cases']} CT-like volumes {'x'.join(map(str, d['shape']))} ({d['format']}, spacing "
             f"{'x'.join(map(str, d['spacing']))} mm), written in {d.get('seconds', '-')} s; 3D first (it prepares "
             "the data), then 2D on the same volumes. train s: the steps (loader waits included, validation and "
             "writes not); MFU: samples/s x 3 x forward FLOPs per patch over the dense bf16 peak.", "",
             "| dims | batch x patch | --max-minutes | epochs x steps | wall s | start-up s | prepare s | train s | "
             "train share | samples/s | after epoch 1 | MFU |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(r: dict[str, Any], key: str, fmt: str) -> str:
        return fmt.format(r[key]) if r.get(key) is not None else "-"

    for r in train["runs"]:
        if "skipped" in r:
            lines.append(f"| {r['dims']}D | skipped: {r['skipped']} |" + " |" * 10)
            continue
        bp = f"{r['batch']} x {'x'.join(map(str, r['patch']))}" if "batch" in r else "-"
        lines.append(f"| {r['dims']}D | {bp} | {f(r, 'max_minutes', '{:g}')} | "
                     f"{r.get('epochs', '-')} x {r.get('steps_per_epoch', '-')} | {f(r, 'wall_s', '{:.1f}')} | "
                     f"{f(r, 'startup_s', '{:.1f}')} | {f(r, 'prepare_s', '{:.1f}')} | {f(r, 'train_s', '{:.1f}')} | "
                     f"{f(r, 'train_share', '{:.0%}')} | {f(r, 'samples_per_s', '{:.1f}')} | "
                     f"{f(r, 'samples_per_s_after_epoch_1', '{:.1f}')} | {f(r, 'mfu', '{:.1%}')} |")
    notes = [f"- {r['dims']}D: {r.get('error') or r.get('note')}" for r in train["runs"] if r.get("error") or r.get("note")]
    return lines + [""] + (notes + [""] if notes else [])


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
