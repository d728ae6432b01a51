"""``unetpp train DATA --out RUNS --folds K --fold all``: every fold, its out-of-fold
predictions, their scores and the post-processing they support.

Output folder ``RUNS``::

    splits_final.json    the folds, in nnU-Net's format (read from DATA when it has one)
    fold_<k>/            one run folder per fold (train's RUN), resumed when present
    oof/<case>.npz       each case's out-of-fold mask (uint8/int16, on its own grid)
    cv.json              per case and class: Dice, IoU, HD95, NSD of the out-of-fold mask
                         (every case predicted by the one model that did not train on it),
                         their means per fold and overall, and the post-processing choice
    postprocess.json     per-class operations that raised the out-of-fold Dice (if any)

``unetpp.load(RUNS)``, ``predict RUNS ...`` and ``evaluate RUNS DATA`` then use the folds as
an ensemble (:mod:`unetpp.inference.ensemble`). Interrupted: the same command goes on (each
fold resumes; finished folds are not trained again).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..console import log as console_log
from ..errors import UnetppError
from ..io import atomic_write_bytes, atomic_write_json

CV_FILE = "cv.json"
SPLITS = "splits_final.json"


def _fold_job(cfg_dict: dict[str, Any], *, device: str) -> str:
    """One fold as a :class:`~.jobs.Job` (a worker process of ``--jobs``)."""
    from ..training import TrainConfig, TrainingInterrupted, train
    from .jobs import JobFailed, JobStopped

    try:
        return str(train(TrainConfig.from_dict(cfg_dict).replace(device=device)))
    except TrainingInterrupted as e:
        raise JobStopped(f"stopped by signal {e.signum} (a resumable state was saved)", e.signum) from None
    except UnetppError as e:
        raise JobFailed("; ".join(e.problems)) from None


def cross_validate(cfg: Any, jobs: int = 1, log: Callable[[str], None] = console_log) -> Path:
    """Train every fold of ``cfg`` (a :class:`~unetpp.training.TrainConfig` with ``folds``),
    score the out-of-fold predictions and choose the post-processing; return ``RUNS``."""
    from ..data import open_dataset
    from ..data.loading.pipeline import cross_validation_splits
    from ..training import train

    if not cfg.out or not cfg.data:
        raise UnetppError("--fold all needs DATA and --out (the cross-validation folder)")
    runs = Path(cfg.out)
    ds = open_dataset(cfg.data)
    try:
        splits = cross_validation_splits(ds, cfg.folds, cfg.seed)
    except ValueError as e:
        raise UnetppError(f"--folds {cfg.folds}: {e}") from None
    runs.mkdir(parents=True, exist_ok=True)
    atomic_write_json(runs / SPLITS, splits)
    folds = [replace(cfg, out=str(runs / f"fold_{k}"), fold=k, folds=len(splits), resume="auto")
             for k in range(len(splits))]
    log(f"cross-validation: {len(folds)} folds of {len(ds.case_names)} cases into {runs}"
        + (f", {jobs} at a time" if jobs > 1 else ""))
    if jobs > 1:
        _train_parallel(folds, jobs, cfg.device, log)
    else:
        for fc in folds:
            train(fc)
    return score_out_of_fold(runs, ds, splits, log)


def _train_parallel(folds: list[Any], jobs: int, device: str, log: Callable[[str], None]) -> None:
    from ..runtime import set_threads
    from ..training import TrainingInterrupted
    from .jobs import Job, JobsInterrupted, run_jobs

    errors: list[str] = []
    threads = set_threads(None, log, jobs)  # the idle cores, shared out between the folds

    def record(job: Any, entry: Any, error: str | None) -> None:
        if error:
            errors.append(f"{job.name}: {error}")

    try:
        run_jobs([Job(k, f"fold_{k}", _fold_job, (fc.to_dict(),)) for k, fc in enumerate(folds)], jobs, record,
                 device=device, threads=threads, log=log)
    except JobsInterrupted as e:
        raise TrainingInterrupted(f"stopped by signal {e.signum}; run the same command to continue", e.signum) from None
    if errors:
        raise UnetppError(errors)


def score_out_of_fold(runs: Path, ds: Any, splits: list[dict[str, list[str]]],
                      log: Callable[[str], None] = console_log) -> Path:
    """Predict each fold's validation cases with that fold's model (its chosen mode), on
    each case's own grid; write ``oof/``, ``cv.json`` and ``postprocess.json``."""
    from ..inference.evaluate import score_modes, summarise
    from ..inference.postprocess import apply, choose, write_postprocess
    from ..inference.predictor import load
    from ..metrics import case_scores

    rows, pairs, per_fold = [], [], []
    dtype = np.uint8 if ds.classes <= 255 else np.int16

    def keep(name: str, mode: Any, labels: np.ndarray, reference: np.ndarray) -> None:
        pairs.append((labels, reference))  # for the post-processing choice below
        buf = io.BytesIO()
        np.savez_compressed(buf, labels=labels.astype(dtype))
        atomic_write_bytes(runs / "oof" / f"{name}.npz", buf.getvalue())

    for k, split in enumerate(splits):
        predictor = load(runs / f"fold_{k}")
        mode = predictor.resolve()
        scored = score_modes(predictor, ds, split["val"], [mode], native=True, surface=True, on_case=keep)
        fold_rows = [{"case": r["case"], "fold": k, **{key: v for key, v in r.items() if key != "case"}}
                     for r in scored[mode]]
        rows += fold_rows
        per_fold.append({"fold": k, "mode": str(mode), **{key: v for key, v in summarise(
            mode.name, mode.level, fold_rows).items() if key not in ("cases", "mode", "level")}})
        log(f"fold {k}: {str(mode)}, out-of-fold dice {per_fold[-1]['dice']:.4f} over {len(fold_rows)} case(s)")
    spec = choose(pairs, ds.classes)
    post_rows = []
    if spec["classes"]:
        write_postprocess(runs, spec)
        for row, (labels, reference) in zip(rows, pairs):
            s = case_scores(apply(labels, spec), reference, ds.classes)
            post_rows.append({"case": row["case"], "dice": s["dice"], "iou": s["iou"]})
    elif (runs / "postprocess.json").is_file():
        (runs / "postprocess.json").unlink()  # a re-run that no longer supports it
    summary = summarise("out-of-fold", None, rows)
    result = {"format": "unetpp-cv", "folds": len(splits), "cases": rows, "summary": {
        k: v for k, v in summary.items() if k not in ("cases", "mode", "level")}, "per_fold": per_fold,
        "postprocess": spec, "postprocessed": summarise("out-of-fold", None, post_rows) if post_rows else None}
    atomic_write_json(runs / CV_FILE, result)
    chosen = ", ".join(f"class {c}: {op['op']}" for c, op in spec["classes"].items()) or "none (it did not help)"
    log(f"cross-validation: out-of-fold dice {summary['dice']:.4f} iou {summary['iou']:.4f} over {len(rows)} "
        f"case(s); post-processing: {chosen}; wrote {runs / CV_FILE}")
    return runs


__all__ = ["CV_FILE", "SPLITS", "cross_validate", "score_out_of_fold"]
