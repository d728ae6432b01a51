"""unetpp beside nnU-Net v2: one split, one wall-clock budget, one device, one evaluator (issue 22).

    python benchmarks/vs_nnunet.py nuclei-2d --minutes 10 --out docs/results/vs-nnunet/nuclei-2d-cpu-10min
    python benchmarks/vs_nnunet.py nuclei-2d --quick --out /tmp/vs        # ~6 min: the protocol end to end

nnU-Net runs from its own environment, never from unetpp's (one line, ~4 min):
``python3 -m venv .venv-nnunet && .venv-nnunet/bin/pip install torch==2.13.0 && .venv-nnunet/bin/pip install -c <(echo torch==2.13.0) nnunetv2==2.8.1``
(``--nnunet-bin DIR`` points at another environment's ``bin``).

The protocol:
1. **One split.** DATA's own split (a fetched sample's ``splits.json``: train / val / test);
   the test cases are held out of both tools. nnU-Net gets it as ``splits_final.json`` (fold
   0 = our train/val), unetpp reads it from the data set.
2. **nnU-Net v2 as its users run it**: ``nnUNetv2_plan_and_preprocess`` (its default planner),
   its default configuration for the dims (``2d`` / ``3d_fullres``), its default trainer with
   one change, in a subclass (``nnUNetTrainer_UnetppBudget``): after its first epoch it sets
   ``num_epochs`` (and the poly schedule's length) so that the run fits the budget, and it
   stops there (``on_train_end`` as usual: final checkpoint, final validation). Iterations per
   epoch stay nnU-Net's (250 + 50 validation) whenever 4 such epochs fit the budget (both
   nuclei-2d budgets); where they would not (3D on 2 CPU cores: one epoch of 250 steps is
   longer than the whole budget), the first 10 steps are timed and the epochs shortened so
   that 4 fit, train:val kept at 5:1; after the first epoch the other 3 are sized from its
   wall time to fill the budget. The subclass is written at the top of
   nnU-Net's trainer folder: nnU-Net looks trainers up by importing its modules one by one,
   and a Primus trainer met before it imports timm -> torchvision, which does not load
   beside the CPU torch.
3. **unetpp with its defaults** under the same budget: ``unetpp train DATA --max-minutes M``,
   then ``unetpp prune``.
4. Both predict the test cases with their defaults (nnU-Net: mirroring TTA; unetpp: the mode,
   level and window prune chose), and **one evaluator** scores both: ``unetpp evaluate --pred
   --ref`` (Dice, HD95); nnU-Net's own evaluation scores the same masks as a cross-check.
5. ``DIR/results.json`` (schema in the issue), ``results.md`` with every command, and
   ``cases.png`` (Dice per test case). Wall seconds and peak RSS of every command.

Never a timed test. Binary 2D image data sets (PNG/TIF images and masks) and nnU-Net-layout
volume data sets are supported, and ``nuclei-3d-blocks``: the nuclei-3d sample cut into 16
blocks of 60x64x64 with a held-out test row (written once beside the sample; see
``nuclei_3d_blocks``)::

    python benchmarks/vs_nnunet.py nuclei-3d-blocks --minutes 10 --out docs/results/vs-nnunet/nuclei-3d-cpu-10min
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TRAINER = "nnUNetTrainer_UnetppBudget"
TRAINER_CODE = '''"""nnU-Net's default trainer, its length fitted to a wall-clock budget (unetpp's
benchmarks/vs_nnunet.py writes this file; the budget is the only change)."""
import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

MIN_EPOCHS = 4  # nnU-Net's 250-step epochs are kept whenever at least this many fit the budget
TIMED_STEPS = 10  # steps timed at the start of the first epoch (after one warm-up step)
VAL_STEP_COST = 1 / 3  # a validation step (forward only) against a training step


class nnUNetTrainer_UnetppBudget(nnUNetTrainer):
    def on_train_start(self):
        super().on_train_start()
        self._budget_s = float(os.environ["UNETPP_BENCH_BUDGET_S"])
        self._started = time.perf_counter()
        self._step_clock = []
        self._shortened = False

    def train_step(self, batch):
        out = super().train_step(batch)
        if self.current_epoch == 0 and len(self._step_clock) <= TIMED_STEPS:
            self._step_clock.append(time.perf_counter())
            if len(self._step_clock) == TIMED_STEPS + 1:
                per_step = (self._step_clock[-1] - self._step_clock[0]) / TIMED_STEPS
                epoch_s = per_step * (self.num_iterations_per_epoch
                                      + self.num_val_iterations_per_epoch * VAL_STEP_COST)
                self.print_to_log_file(f"budget {self._budget_s:.0f} s: {per_step:.2f} s a step, "
                                       f"{self._budget_s / epoch_s:.1f} epochs of 250 steps would fit")
                if self._budget_s / epoch_s < MIN_EPOCHS:  # shorter epochs, nnU-Net's 5:1 train:val kept
                    self._shortened = True
                    self._set_steps(int(self._budget_s / MIN_EPOCHS / per_step / (1 + VAL_STEP_COST / 5)))
        return out

    def _set_steps(self, steps):
        steps = max(TIMED_STEPS + 2, steps)
        self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = steps, max(2, steps // 5)
        self.print_to_log_file(f"epochs shortened to {steps} + {steps // 5} steps")

    def on_epoch_end(self):
        super().on_epoch_end()  # current_epoch is now the number of epochs done
        elapsed = time.perf_counter() - self._started
        if self.current_epoch == 1:  # fit the run to the budget; the poly schedule follows
            if elapsed >= self._budget_s:  # the first epoch alone spent the budget: stop there
                self.num_epochs = 1
            elif self._shortened or self._budget_s / elapsed < MIN_EPOCHS:
                # MIN_EPOCHS, the other epochs' length filling the budget (also when the first
                # epoch ran slower than its timed steps said, and fewer than MIN_EPOCHS would fit)
                self.num_epochs = MIN_EPOCHS
                per_epoch_left = (self._budget_s - elapsed) / (MIN_EPOCHS - 1)
                self._set_steps(int(self.num_iterations_per_epoch * per_epoch_left / elapsed))
            else:  # nnU-Net's 250-step epochs, as many as fit
                self.num_epochs = max(1, int(self._budget_s / elapsed))
            self.lr_scheduler.max_steps = self.num_epochs
            self.print_to_log_file(f"budget {self._budget_s:.0f} s: {self.num_epochs} epochs, the first {elapsed:.1f} s")

    def run_training(self):
        # nnU-Net's own loop, except that the lengths are read as it goes: the first epoch may
        # shorten the epochs, and the end of the first epoch sets their number
        self.on_train_start()
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            while len(outputs) < self.num_iterations_per_epoch:
                outputs.append(self.train_step(next(self.dataloader_train)))
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
        self.on_train_end()
'''
DATASET_ID = 501


# ------------------------------------------------------------------------------ helpers
def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run ``cmd`` with its output in ``log``; wall seconds and the peak RSS (MB) of its
    largest process, from a wrapper that waits for it alone."""
    wrapper = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:]); "
               "print(json.dumps({'rc': r.returncode, 'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN)"
               ".ru_maxrss / 1024}))")
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run([sys.executable, "-c", wrapper, *cmd], stdout=subprocess.PIPE, stderr=f, text=True,
                           env={**os.environ, **(env or {})}, timeout=timeout)
        f.write(r.stdout)
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if info["rc"] != 0:
        raise SystemExit(f"failed ({info['rc']}): {' '.join(cmd)}; see {log}")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_mb": round(info["peak_mb"])}


def shown(cmd: list[str]) -> str:
    """A command as results.md shows it: paths inside the repository relative to its root."""
    return " ".join(cmd).replace(f"{ROOT}/", "")


def load_split(data: str) -> tuple[Any, dict[str, list[str]]]:
    from unetpp.data import open_dataset

    ds = open_dataset(data)
    split = ds.default_split
    if not split or not split.get("test") or not split.get("train") or not split.get("val"):
        raise SystemExit(f"{data}: needs its own train/val/test split (splits.json), so both tools hold out the "
                         "same test cases")
    if ds.classes != 1:
        raise SystemExit(f"{data}: {ds.classes} classes; this benchmark compares binary tasks")
    return ds, {k: list(split[k]) for k in ("train", "val", "test")}


DERIVED = {"nuclei-3d-blocks": "the nuclei-3d sample cut into 16 blocks of 60x64x64 with a held-out test row"}


def nuclei_3d_blocks() -> Path:
    """A 3D data set with a test split, derived from the fetched ``nuclei-3d`` sample: its four
    60x128x128 quarters cut into 16 blocks of 60x64x64 (1 mm voxels as stored). The 256x256
    field's bottom row of blocks (4) is the test set, the left half of the row above it (2)
    validation, the other 10 blocks training; a nucleus cut by a block border can sit on both
    sides of it, as in nuclei-2d. Written once beside the sample, with its own splits.json.

    The sample's labels look automatic, and they leave out the nuclei cut by the volume's
    x/y edge (6 bright blobs touching it are unlabelled); the test row is on that edge, so a
    tool that segments such a nucleus loses Dice for it (docs/results.md, section 5)."""
    from unetpp.data.files.formats import read_file, write_file
    from unetpp.data.samples.catalog import fetch, tile_grid
    from unetpp.io import atomic_write_json

    sample = fetch("nuclei-3d")
    dest = sample.parent / "nuclei-3d-blocks"
    if (dest / "splits.json").is_file():
        return dest
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for q, (qy, qx) in enumerate(tile_grid(256, 256, 128)):  # the quarters, in the order the sample wrote them
        image = read_file(sample / "imagesTr" / f"nuclei_{q}_0000.nii.gz")[0][0]  # (C, z, y, x) -> (z, y, x)
        label = read_file(sample / "labelsTr" / f"nuclei_{q}.nii.gz", mask=True)[0][0]
        meta = {"spacing": [1.0, 1.0, 1.0]}  # as the sample writes them
        for by in (0, 64):
            for bx in (0, 64):
                y, x = qy + by, qx + bx
                name = f"block_y{y:03d}_x{x:03d}"
                sl = (slice(None), slice(by, by + 64), slice(bx, bx + 64))
                write_file(dest / "imagesTr" / f"{name}_0000.nii.gz", np.ascontiguousarray(image[sl]), meta)
                write_file(dest / "labelsTr" / f"{name}.nii.gz", np.ascontiguousarray(label[sl]), meta)
                split["test" if y == 192 else "val" if (y == 128 and x < 128) else "train"].append(name)
    atomic_write_json(dest / "dataset.json", {
        "name": "nuclei-3d-blocks", "channel_names": {"0": "microscopy"}, "labels": {"background": 0, "nucleus": 1},
        "numTraining": 16, "file_ending": ".nii.gz", "description": DERIVED["nuclei-3d-blocks"]})
    atomic_write_json(dest / "splits.json", {k: sorted(v) for k, v in split.items()})
    return dest


def case_files(ds: Any, name: str) -> tuple[Path, Path | None]:
    """The source image and label files of a case (the raw files, not the prepared copy)."""
    from unetpp.data.cases.layouts import scan

    case = {c.name: c for c in scan(ds.root).cases}[name]
    return Path(case.images[0]), (Path(case.label) if case.label else None)


def write_nnunet_raw(ds: Any, split: dict[str, list[str]], raw: Path, work: Path) -> tuple[int, str]:
    """nnU-Net's raw data set (and unetpp's test inputs and the references, both tools' 0/1
    masks) from DATA's files; returns (dims, file ending)."""
    from PIL import Image

    folder = raw / f"Dataset{DATASET_ID:03d}_{Path(str(ds.root)).name.replace('-', '')}"
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    for sub in ("test_images", "test_labels"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir(parents=True)
    image0, _ = case_files(ds, split["train"][0])
    volumes = ds.spatial_dims == 3
    ending = ".nii.gz" if volumes else ".png"
    for part in ("train", "val", "test"):
        for name in split[part]:
            image, label = case_files(ds, name)
            tr = part != "test"
            img_dst = folder / ("imagesTr" if tr else "imagesTs") / f"{name}_0000{ending}"
            lab_dst = folder / "labelsTr" / f"{name}{ending}" if tr else work / "test_labels" / f"{name}{ending}"
            if volumes:  # nnU-Net layout already: the files as they are
                shutil.copy(image, img_dst)
                shutil.copy(label, lab_dst)
            else:  # grey PNG images, 0/1 PNG masks (nnU-Net's natural-image reader)
                Image.open(image).convert("L").save(img_dst)
                Image.fromarray((np.asarray(Image.open(label)) > 0).astype(np.uint8)).save(lab_dst)
            if not tr:
                shutil.copy(img_dst, work / "test_images" / f"{name}{ending}")
    labels = {"background": 0, ds.labels.get(1, "foreground"): 1}
    channel = "CT" if ds.modality == "ct" else "image"
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": channel}, "labels": labels,
        "numTraining": len(split["train"]) + len(split["val"]), "file_ending": ending}, indent=2))
    return ds.spatial_dims, ending


def install_trainer(nnunet_bin: Path) -> None:
    python = nnunet_bin / "python"
    where = subprocess.run([str(python), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    target = Path(where) / "training" / "nnUNetTrainer" / f"{TRAINER}.py"
    target.write_text(TRAINER_CODE)


def scores(pred: Path, ref: Path, out: Path, log: Path) -> dict[str, dict[str, float]]:
    """The one evaluator: ``unetpp evaluate --pred --ref`` (Dice and HD95 per case)."""
    run([str(ROOT / ".venv" / "bin" / "unetpp"), "evaluate", "--pred", str(pred), "--ref", str(ref),
         "--json", str(out)], log)
    report = json.loads(out.read_text())
    cases = {}
    for row in report["cases"]:
        cases[row["case"]] = {"dice": row.get("dice"), "hd95": row.get("hd95")}
    return cases


def nnunet_cross_check(nnunet_bin: Path, pred: Path, ref: Path, dataset_json: Path, log: Path) -> dict[str, float]:
    """nnU-Net's own Dice of the same masks (its evaluator), per case."""
    out = pred / "nnunet_summary.json"
    run([str(nnunet_bin / "nnUNetv2_evaluate_simple"), str(ref), str(pred), "-l", "1", "-o", str(out), "-np", "2"], log)
    summary = json.loads(out.read_text())
    return {Path(c["prediction_file"]).name.split(".")[0]: c["metrics"]["1"]["Dice"]
            for c in summary["metric_per_case"]}


def nnunet_epochs_seconds(log_text: str) -> float | None:
    """Wall seconds of nnU-Net's epochs, from its log: its first "Epoch 0" line to "Training
    done." (after that, its train command validates the validation cases whole, with TTA)."""
    import datetime

    def stamp(line: str) -> datetime.datetime:  # str(datetime): microseconds left out when 0
        return datetime.datetime.fromisoformat(line.split(": ", 1)[0])

    lines = log_text.splitlines()
    start = next((stamp(ln) for ln in lines if ln[:4].isdigit() and ln.rstrip().endswith(": Epoch 0")), None)
    done = next((stamp(ln) for ln in lines if ln[:4].isdigit() and ln.rstrip().endswith(": Training done.")), None)
    return round((done - start).total_seconds(), 1) if start and done else None


def unetpp_epochs_seconds(run_dir: Path) -> float:
    """Wall seconds of unetpp's epochs (steps and validation), from the run's metrics.csv."""
    import csv

    with (run_dir / "metrics.csv").open() as f:
        return round(sum(float(row["seconds"]) for row in csv.DictReader(f)), 1)


# ------------------------------------------------------------------------------ the two tools
def nnunet(args: argparse.Namespace, split: dict[str, list[str]], dims: int, work: Path, log: Path) -> dict[str, Any]:
    bin_, env = args.nnunet_bin, {"nnUNet_raw": str(work / "nnUNet_raw"),
                                  "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
                                  "nnUNet_results": str(work / "nnUNet_results"), "nnUNet_n_proc_DA": "2",
                                  "nnUNet_compile": "f", "UNETPP_BENCH_BUDGET_S": str(args.minutes * 60)}
    config = "2d" if dims == 2 else "3d_fullres"
    install_trainer(bin_)
    out: dict[str, Any] = {"configuration": config, "trainer": TRAINER, "commands": []}

    def step(name: str, cmd: list[str]) -> dict[str, Any]:
        out["commands"].append(shown(cmd))
        r = run(cmd, log, env)
        out[name] = r
        return r

    step("plan_and_preprocess", [str(bin_ / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", config,
                                 "-np", "2", "--verify_dataset_integrity"])
    pre = next((work / "nnUNet_preprocessed").glob(f"Dataset{DATASET_ID:03d}_*"))
    (pre / "splits_final.json").write_text(json.dumps([{"train": split["train"], "val": split["val"]}], indent=2))
    shutil.rmtree(work / "nnUNet_results", ignore_errors=True)  # no earlier run's logs or checkpoints
    step("train", [str(bin_ / "nnUNetv2_train"), str(DATASET_ID), config, "0", "-tr", TRAINER, "-device", args.device])
    train_log = max((work / "nnUNet_results").glob(f"Dataset{DATASET_ID:03d}_*/*/fold_0/training_log_*.txt"),
                    key=lambda p: p.stat().st_mtime)
    out["epochs_seconds"] = nnunet_epochs_seconds(train_log.read_text())
    pred = work / "pred_nnunet"
    shutil.rmtree(pred, ignore_errors=True)
    raw = next((work / "nnUNet_raw").glob(f"Dataset{DATASET_ID:03d}_*"))
    step("predict", [str(bin_ / "nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(pred), "-d",
                     str(DATASET_ID), "-c", config, "-f", "0", "-tr", TRAINER, "-device", args.device,
                     "-npp", "1", "-nps", "1"])
    plans = json.loads((pre / "nnUNetPlans.json").read_text())["configurations"][config]
    out.update(pred=str(pred), train_seconds=out["train"]["seconds"], patch=plans["patch_size"],
               batch=plans["batch_size"], inference_seconds_per_case=round(out["predict"]["seconds"] / len(split["test"]), 2))
    return out


def unetpp(args: argparse.Namespace, data: str, split: dict[str, list[str]], work: Path, log: Path) -> dict[str, Any]:
    cli = str(ROOT / ".venv" / "bin" / "unetpp")
    runs = work / "unetpp_run"
    shutil.rmtree(runs, ignore_errors=True)
    out: dict[str, Any] = {"commands": []}

    def step(name: str, cmd: list[str]) -> dict[str, Any]:
        out["commands"].append(shown(cmd))
        out[name] = run(cmd, log)
        return out[name]

    step("train", [cli, "train", data, "--out", str(runs), "--max-minutes", f"{args.minutes:g}", "--device",
                   args.device, "--epochs", "100000", *args.unetpp_args.split()])
    out["epochs_seconds"] = unetpp_epochs_seconds(runs)
    step("prune", [cli, "prune", str(runs), data])
    pred = work / "pred_unetpp"
    shutil.rmtree(pred, ignore_errors=True)
    step("predict", [cli, "predict", str(runs), str(work / "test_images"), "--out", str(pred), "--device", args.device])
    cfg = json.loads((runs / "config.json").read_text())["train"]
    chosen = json.loads((runs / "prune.json").read_text()).get("chosen", {})
    out.update(pred=str(pred), train_seconds=out["train"]["seconds"], patch=cfg["patch_size"], batch=cfg["batch_size"],
               chosen=chosen, inference_seconds_per_case=round(out["predict"]["seconds"] / len(split["test"]), 2))
    return out


# ------------------------------------------------------------------------------ report
def markdown(result: dict[str, Any]) -> str:
    lines = [f"# unetpp vs nnU-Net v2 ({result['device']}, budget {result['minutes']:g} min)", ""]
    for d in result["datasets"]:
        u, n = d["unetpp"], d["nnunet"]
        lines += [f"## {d['name']} ({d['dims']}D): {len(d['split']['train'])} train, {len(d['split']['val'])} val, "
                  f"{len(d['split']['test'])} test cases", "",
                  "| | mean test Dice | mean HD95 | train s (wall: command / epochs) | inference s / case (wall, "
                  "incl. start-up) | peak RSS MB (train) | patch x batch |", "|---|---:|---:|---:|---:|---:|---|"]
        for tool, r in (("unetpp", u), ("nnU-Net v2", n)):
            dice = [c["dice"] for c in r["cases"].values()]
            hd = [c["hd95"] for c in r["cases"].values() if c["hd95"] is not None and np.isfinite(c["hd95"])]
            lines.append(f"| {tool} | {np.mean(dice):.4f} | {np.mean(hd) if hd else float('nan'):.2f} | "
                         f"{r['train_seconds']:.0f} / {r.get('epochs_seconds') or float('nan'):.0f} | "
                         f"{r['inference_seconds_per_case']:.2f} | {r['train']['peak_mb']} | "
                         f"{'x'.join(map(str, r['patch']))} x {r['batch']} |")
        lines += ["", "| case | unetpp Dice | nnU-Net Dice | nnU-Net's own evaluator on nnU-Net's mask |",
                  "|---|---:|---:|---:|"]
        for case in sorted(u["cases"]):
            lines.append(f"| {case} | {u['cases'][case]['dice']:.4f} | {n['cases'][case]['dice']:.4f} | "
                         f"{d['cross_check'].get(case, float('nan')):.4f} |")
        lines += ["", f"unetpp chose {u.get('chosen')} on its validation cases"
                  + (f"; unetpp's train had `{u['extra_args']}`" if u.get("extra_args") else "; every default")
                  + (f"; nnU-Net's side is reused from {d['nnunet_from']}" if d.get("nnunet_from") else "")
                  + (f"; unetpp's side is reused from {d['unetpp_from']}" if d.get("unetpp_from") else "") + ".",
                  "", "Commands:", "", "```"]
        lines += d["prepare_commands"] + u["commands"] + n["commands"] + d["eval_commands"] + ["```", ""]
    lines += ["The budget covers each tool's epochs (training steps and the validation during training); "
              "a train command's wall time also holds its start-up and, for nnU-Net, its validation of the "
              "validation cases whole after the last epoch.", ""]
    lines += [f"Test sets are small ({', '.join(str(len(d['split']['test'])) for d in result['datasets'])} cases): "
              "differences within a few Dice points are not evidence either way.", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    d = result["datasets"][0]
    cases = sorted(d["unetpp"]["cases"])
    fig = Figure(figsize=(max(4, 1.2 * len(cases) + 2), 3.5), dpi=100)
    ax = fig.subplots()
    x = np.arange(len(cases))
    ax.bar(x - 0.2, [d["unetpp"]["cases"][c]["dice"] for c in cases], 0.4, label="unetpp")
    ax.bar(x + 0.2, [d["nnunet"]["cases"][c]["dice"] for c in cases], 0.4, label="nnU-Net v2")
    ax.set_xticks(x, cases, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_title(f"{d['name']}: test cases, {result['minutes']:g} min each ({result['device']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def reused(path: Path, args: argparse.Namespace, split: dict[str, list[str]]) -> dict[str, Any]:
    """One tool's side of an earlier run, refused unless it had the same split, device and budget."""
    earlier = json.loads(path.read_text())
    entry = earlier["datasets"][0]
    if entry["split"] != split or earlier["device"] != args.device or earlier["minutes"] != args.minutes:
        raise SystemExit(f"{path}: another split, device or budget; run both tools again")
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="dataset folder or fetched sample name (with its own train/val/test split)")
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget of each tool, wall-clock minutes")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the same for both)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="a tiny budget (1.5 min each): proves the protocol")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default OUT/work, deleted after)")
    ap.add_argument("--nnunet-bin", type=Path, default=ROOT / ".venv-nnunet" / "bin")
    ap.add_argument("--unetpp-args", default="", help="more `unetpp train` flags: one ablation at a time, "
                    "e.g. '--preset modern'")
    ap.add_argument("--nnunet-from", type=Path, default=None, help="results.json of an earlier run with the same "
                    "data, split, device and budget: its nnU-Net side is reused (for unetpp ablations)")
    ap.add_argument("--unetpp-from", type=Path, default=None, help="likewise, its unetpp side is reused (for "
                    "running nnU-Net again)")
    args = ap.parse_args(argv)
    if args.quick:
        args.minutes = 1.5
    if args.unetpp_from and (args.nnunet_from or args.unetpp_args):
        raise SystemExit("--unetpp-from reuses unetpp's side as it was trained: it runs nnU-Net again, so it "
                         "takes neither --nnunet-from nor --unetpp-args")
    if not (args.nnunet_bin / "nnUNetv2_train").is_file():
        raise SystemExit(f"{args.nnunet_bin}: no nnU-Net v2 here; make it with the one line in this script's docstring")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    log = args.out / "log.txt"
    named = args.data  # as given: a derived data set's name stays in the commands
    if args.data in DERIVED:
        args.data = str(nuclei_3d_blocks())
    ds, split = load_split(args.data)
    dims, _ = write_nnunet_raw(ds, split, work / "nnUNet_raw", work)
    entry: dict[str, Any] = {"name": Path(str(ds.root)).name, "dims": dims, "split": split,
                             "prepare_commands": [f"python benchmarks/vs_nnunet.py {named} --minutes {args.minutes:g} "
                                                  f"--device {args.device} --out {args.out}"
                                                  + (f" --unetpp-args '{args.unetpp_args}'" if args.unetpp_args else "")
                                                  + (f" --nnunet-from {args.nnunet_from}" if args.nnunet_from else "")
                                                  + (f" --unetpp-from {args.unetpp_from}" if args.unetpp_from else "")]}
    earlier = {tool: reused(path, args, split) for tool, path in (("unetpp", args.unetpp_from),
                                                                  ("nnunet", args.nnunet_from)) if path}
    if "unetpp" in earlier:
        entry["unetpp"], entry["unetpp_from"] = earlier["unetpp"]["unetpp"], str(args.unetpp_from)
    else:
        entry["unetpp"] = unetpp(args, args.data, split, work, log)
        entry["unetpp"]["extra_args"] = args.unetpp_args
    entry["nnunet"] = earlier["nnunet"]["nnunet"] if "nnunet" in earlier else nnunet(args, split, dims, work, log)
    entry["eval_commands"] = []
    for tool in ("unetpp", "nnunet"):
        if tool in earlier:
            continue
        pred = Path(entry[tool]["pred"])
        entry[tool]["cases"] = scores(pred, work / "test_labels", args.out / f"eval_{tool}.json", log)
        entry["eval_commands"].append(f"unetpp evaluate --pred {pred.name} --ref test_labels --json eval_{tool}.json")
        shutil.copytree(pred, args.out / f"pred_{tool}", dirs_exist_ok=True)
    if "nnunet" in earlier:
        entry["cross_check"], entry["nnunet_from"] = earlier["nnunet"]["cross_check"], str(args.nnunet_from)
    else:
        dataset_json = next((work / "nnUNet_raw").glob(f"Dataset{DATASET_ID:03d}_*")) / "dataset.json"
        entry["cross_check"] = nnunet_cross_check(args.nnunet_bin, Path(entry["nnunet"]["pred"]),
                                                  work / "test_labels", dataset_json, log)
    result = {"device": args.device, "minutes": args.minutes, "datasets": [entry]}
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(markdown(result))
    plot(result, args.out / "cases.png")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
