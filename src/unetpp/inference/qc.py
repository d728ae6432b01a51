"""Per-case quality control: which masks to check, with thresholds calibrated on the run.

``unetpp prune`` calls :func:`calibrate_trust` on the cases it scored (the run's validation
cases; a cross-validation's out-of-fold cases, each predicted by the fold that did not train
on it) and writes ``RUN/trust.json``; ``unetpp predict --uncertainty`` reads it
(:func:`read_trust`) and writes ``OUT/qc.csv`` and ``OUT/qc.json``, one row per input:

=========================  ===================================================================
column                     meaning
=========================  ===================================================================
``case``                   the input's output name
``volume_<label>``         predicted size of each label: voxels x voxel volume in mm^3 (2D:
                           pixels x pixel area, mm^2; 1 per pixel without a spacing)
``uncertainty_inside``     mean of the uncertainty map (:mod:`.uncertainty`) over the
                           predicted structure (every non-background voxel)
``confidence``             ``1 - uncertainty_inside``: the per-case QC score (higher is better;
                           ``trust.json`` reports its rank correlation with Dice)
``intensity_distance``     how far the input's intensity quantiles are from the training
                           cases' (:func:`intensity_distance`, in training standard deviations)
``flag``                   ``ok`` or ``review`` (``unknown`` for a run never pruned)
``reasons``                why, ``; ``-separated
=========================  ===================================================================

**Reasons** for ``review``, each against a threshold stored in ``trust.json``:

- uncertainty inside the structure above the validation cases' (their maximum x
  :data:`UNCERTAINTY_MARGIN`; Tukey's upper fence, Q3 + 1.5 IQR, from
  :data:`MIN_CASES_FOR_FENCE` cases on);
- intensities further from the training fingerprint than any training (leave-one-out) or
  validation case, x :data:`INTENSITY_MARGIN`, at least :data:`MIN_INTENSITY_THRESHOLD`:
  noise, inverted contrast, a blank image, another modality;
- nothing segmented, when every training case has the structure;
- a predicted size outside [min / 2, 2 x max] of the training labels' sizes.

The fingerprint is the quantiles :data:`QUANTILES` of each channel of the *normalised*
image (what the network sees), per training case; the distance of an input is the root mean
square over quantiles and channels of ``(q - mean) / sd`` across training cases.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunError
from ..io import atomic_write_json, atomic_write_text, read_json
from ..models.mode import Mode
from .engine import probabilities_to_labels
from .uncertainty import (FIT_VOXELS, calibrate, calibrate_samples, expected_calibration_error, fit_temperature,
                          sample_voxels, uncertainty_map)

TRUST = "trust.json"
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: training cases read for the fingerprint and the label sizes (evenly spaced when more)
MAX_FINGERPRINT_CASES = 50
UNCERTAINTY_MARGIN = 1.25
MIN_CASES_FOR_FENCE = 8
INTENSITY_MARGIN = 1.5
MIN_INTENSITY_THRESHOLD = 3.0
#: the spread of a quantile across training cases is at least this (normalised units), so a
#: quantile every training case shares exactly (a clipped background) does not divide by 0
MIN_SD = 0.05
#: voxels kept over all validation cases (for the temperature fit, and inside the structures)
MAX_KEPT_VOXELS = 2_000_000


# ------------------------------------------------------------------------------ features
def channel_quantiles(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(C, len(QUANTILES))`` quantiles of each channel of a ``(C, *S)`` image."""
    a = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    flat = a.reshape(a.shape[0], -1)
    if flat.shape[1] > 2_000_000:  # a large volume: a fixed stride is plenty for 7 quantiles
        flat = flat[:, :: flat.shape[1] // 1_000_000]
    return np.quantile(flat.astype(np.float64), QUANTILES, axis=1).T


def intensity_distance(quantiles: np.ndarray, fingerprint: dict[str, Any]) -> float:
    """RMS over channels and quantiles of ``(q - mean) / sd`` against the fingerprint."""
    mean, sd = np.asarray(fingerprint["mean"]), np.asarray(fingerprint["sd"])
    if quantiles.shape != mean.shape:
        return float("inf")  # another channel count: as far as it gets
    return float(np.sqrt(np.mean(((quantiles - mean) / sd) ** 2)))


def _fingerprint(rows: np.ndarray) -> dict[str, Any]:
    """Mean and spread ``(C, Q)`` of per-case quantiles ``(N, C, Q)``."""
    sd = rows.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(rows.shape[1:])
    return {"mean": rows.mean(axis=0).tolist(), "sd": np.maximum(sd, MIN_SD).tolist()}


def structure_sizes(labels: np.ndarray, spacing: Sequence[float] | None, classes: int) -> dict[int, float]:
    """``{label: voxels x voxel size}`` for every foreground label (binary: label 1)."""
    unit = float(np.prod(spacing)) if spacing else 1.0
    counts = np.bincount(np.asarray(labels).reshape(-1).astype(np.int64), minlength=max(classes, 2))
    return {k: float(counts[k]) * unit for k in range(1, max(classes, 2))}


def case_features(labels: np.ndarray, uncertainty: np.ndarray, quantiles: np.ndarray,
                  spacing: Sequence[float] | None, classes: int, trust: dict[str, Any] | None) -> dict[str, Any]:
    """The QC values of one case (see the module doc), without the flag."""
    inside = np.asarray(labels) > 0
    u_in = float(np.asarray(uncertainty)[inside].mean()) if inside.any() else 0.0
    fp = (trust or {}).get("fingerprint")
    return {"sizes": structure_sizes(labels, spacing, classes), "uncertainty_inside": u_in,
            "confidence": 1.0 - u_in, "empty": not inside.any(),
            "intensity_distance": intensity_distance(quantiles, fp) if fp else float("nan")}


def flag(features: dict[str, Any], trust: dict[str, Any] | None) -> tuple[str, list[str]]:
    """``("ok" | "review" | "unknown", reasons)`` of a case's features against ``trust``."""
    if not trust or "thresholds" not in trust:
        return "unknown", ["the run has no trust.json: run 'unetpp prune' to calibrate the thresholds"]
    t = trust["thresholds"]
    reasons = []
    if features["uncertainty_inside"] > t["uncertainty_inside"]:
        reasons.append(f"uncertain: {features['uncertainty_inside']:.3f} inside the structure "
                       f"(validation cases up to {t['uncertainty_inside']:.3f})")
    if not features["intensity_distance"] <= t["intensity_distance"]:  # NaN/inf too
        reasons.append(f"intensities unlike the training cases: distance {features['intensity_distance']:.1f} "
                       f"(threshold {t['intensity_distance']:.1f})")
    if features["empty"] and t.get("always_structure"):
        reasons.append("nothing segmented, but every training case has the structure")
    for k, (lo, hi) in (t.get("sizes") or {}).items():
        size = features["sizes"].get(int(k), 0.0)
        if size > 0 and not lo <= size <= hi:
            reasons.append(f"label {k} size {size:.0f} outside the training range [{lo:.0f}, {hi:.0f}]")
    return ("review" if reasons else "ok"), reasons


# ------------------------------------------------------------------------------ calibration
def calibrate_trust(predictor: Any, ds: Any, cases: Sequence[tuple[Any, str]], mode: Mode,
                    train_cases: Sequence[str], tta: bool = False, postprocess: Any = None,
                    progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Fit the temperature and the QC thresholds; return ``trust.json``'s content.

    Args:
        predictor: the run (an ensemble's first member) whose classes are predicted.
        ds: the opened dataset.
        cases: ``(run, case name)`` of the validation (or out-of-fold) cases, each predicted by
            its run in ``mode`` (with ``tta``) on the network's grid, as ``prune`` scored them.
        mode: the mode ``prune`` chose.
        train_cases: the cases the fingerprint and label sizes come from.
        postprocess: what ``predict`` applies to the masks (the uncertainty inside is measured
            inside the mask a user gets).

    Memory: at most :data:`~.uncertainty.FIT_VOXELS` voxels a case are kept for the fit and
    as many inside the predicted structure, in all at most :data:`MAX_KEPT_VOXELS`.
    """
    from .postprocess import apply as apply_postprocess

    rng = np.random.default_rng(0)
    per_case = max(10_000, min(FIT_VOXELS, MAX_KEPT_VOXELS // max(1, len(cases))))
    ignore = getattr(ds, "ignore_label", None)
    samples: list[tuple[np.ndarray, np.ndarray]] = []
    kept: list[dict[str, Any]] = []
    for done, (member, name) in enumerate(cases, 1):
        case = ds.load_case(name)
        image = torch.as_tensor(case.image, dtype=torch.float32)
        probs = member.predict_tensor(image, mode, tta=tta)
        samples.append(sample_voxels(probs, case.label, rng, per_case, ignore))
        labels = apply_postprocess(probabilities_to_labels(probs, member.classes).numpy(), postprocess)
        inside = np.flatnonzero(labels.reshape(-1) > 0)
        if len(inside) > per_case:
            inside = rng.choice(inside, size=per_case, replace=False)
        kept.append({"name": name, "inside": probs.reshape(probs.shape[0], -1)[:, torch.from_numpy(inside)].clone(),
                     "dice": _dice(labels, np.asarray(case.label), ignore), "quantiles": channel_quantiles(case.image)})
        if progress is not None:
            progress(done, len(cases), name)
    p = np.concatenate([s[0] for s in samples])
    y = np.concatenate([s[1] for s in samples])
    temperature = fit_temperature(p, y)
    u_inside = [float(uncertainty_map(calibrate(k["inside"], temperature)).mean()) if k["inside"].numel() else 0.0
                for k in kept]
    fingerprint, train_distances = _training_fingerprint(ds, train_cases)
    val_distances = [intensity_distance(k["quantiles"], fingerprint) for k in kept]
    thresholds = {"uncertainty_inside": _upper_threshold(u_inside),
                  "intensity_distance": max(MIN_INTENSITY_THRESHOLD,
                                            INTENSITY_MARGIN * max(train_distances + val_distances)),
                  **_size_limits(ds, train_cases, predictor.classes)}
    confidence = [1.0 - u for u in u_inside]
    dices = [k["dice"] for k in kept]
    return {"temperature": temperature,
            "ece": {"before": expected_calibration_error(p, y),
                    "after": expected_calibration_error(calibrate_samples(p, temperature), y),
                    "voxels": int(len(y))},
            "fingerprint": {**fingerprint, "quantiles": list(QUANTILES)},
            "thresholds": thresholds,
            "cases": {k["name"]: {"dice": k["dice"], "confidence": c, "intensity_distance": d}
                      for k, c, d in zip(kept, confidence, val_distances)},
            "spearman_confidence_dice": spearman(confidence, dices),
            "mode": mode.to_json(),
            "tta": tta}


def _dice(labels: np.ndarray, reference: np.ndarray, ignore: int | None = None) -> float:
    """Foreground Dice (every non-background label together, the ``ignore`` label left out);
    1.0 when both are empty."""
    a, b = labels > 0, reference > 0
    if ignore is not None:
        a, b = a & (reference != ignore), b & (reference != ignore)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _upper_threshold(values: Sequence[float]) -> float:
    """Tukey's upper fence from :data:`MIN_CASES_FOR_FENCE` values, else max x margin."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) >= MIN_CASES_FOR_FENCE:
        q1, q3 = np.quantile(v, [0.25, 0.75])
        return float(max(q3 + 1.5 * (q3 - q1), v.max()))
    return float(v.max() * UNCERTAINTY_MARGIN)


def _evenly(names: Sequence[str], limit: int) -> list[str]:
    names = list(names)
    if len(names) <= limit:
        return names
    return [names[round(i * (len(names) - 1) / (limit - 1))] for i in range(limit)]


def _training_fingerprint(ds: Any, train_cases: Sequence[str]) -> tuple[dict[str, Any], list[float]]:
    """The fingerprint of the training cases and each one's leave-one-out distance to it."""
    rows = np.stack([channel_quantiles(ds.load_case(n).image) for n in _evenly(train_cases, MAX_FINGERPRINT_CASES)])
    fingerprint = {**_fingerprint(rows), "cases": len(rows)}
    loo = [intensity_distance(rows[i], _fingerprint(np.delete(rows, i, axis=0))) for i in range(len(rows))] \
        if len(rows) > 2 else [0.0]
    return fingerprint, loo


def _size_limits(ds: Any, train_cases: Sequence[str], classes: int) -> dict[str, Any]:
    """Label sizes of the training cases: [min / 2, 2 x max] per label, and whether every
    case has a structure (an empty prediction is then worth a look)."""
    sizes: dict[int, list[float]] = {}
    always = True
    for name in _evenly(train_cases, MAX_FINGERPRINT_CASES):
        case = ds.load_case(name)
        if case.label is None:
            continue
        spacing = case.meta.get("grid_spacing", case.meta.get("spacing"))
        per = structure_sizes(case.label, spacing, classes)
        always = always and any(v > 0 for v in per.values())
        for k, v in per.items():
            if v > 0:
                sizes.setdefault(k, []).append(v)
    return {"always_structure": bool(always and sizes),
            "sizes": {str(k): [min(v) / 2, max(v) * 2] for k, v in sizes.items() if len(v) >= 2}}


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 pairs or no spread."""
    if len(a) < 3:
        return None

    def ranks(x: Sequence[float]) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for value in np.unique(x):  # ties share their mean rank
            same = x == value
            r[same] = r[same].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


# ------------------------------------------------------------------------------ files
def write_trust(folder: str | os.PathLike, trust: dict[str, Any]) -> Path:
    return atomic_write_json(Path(folder) / TRUST, trust)


def read_trust(run: str | os.PathLike | None) -> dict[str, Any] | None:
    """``RUN/trust.json``, or None for a run never pruned; a damaged one is one line."""
    if run is None or not (Path(run) / TRUST).is_file():
        return None
    path = Path(run) / TRUST
    data = read_json(path)
    t = data.get("temperature") if isinstance(data, dict) else None
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0 or \
            not isinstance(data.get("thresholds"), dict):
        raise RunError(f"{path}: not a valid trust file (a positive \"temperature\" and \"thresholds\" are "
                       "needed); run 'unetpp prune' again")
    return data


class LazyTrust:
    """The ``trust`` attribute of a predictor or ensemble: ``read_trust(obj.run)`` on first use
    (a damaged file stops ``--uncertainty`` only, not a plain prediction); assignable."""

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if "_trust" not in obj.__dict__:
            obj.__dict__["_trust"] = read_trust(getattr(obj, "run", None))
        return obj.__dict__["_trust"]

    def __set__(self, obj: Any, value: dict[str, Any] | None) -> None:
        obj.__dict__["_trust"] = value


QC_COLUMNS = ("case", "uncertainty_inside", "confidence", "intensity_distance", "flag", "reasons")


def write_qc(out: Path, rows: list[dict[str, Any]], label_names: dict[int, str], extra: dict[str, Any]) -> None:
    """``OUT/qc.csv`` and ``OUT/qc.json`` (``rows``: one per input, from :func:`qc_row`)."""
    import csv
    import io

    sizes = [k for k in sorted(label_names) if k > 0]
    header = ["case", *[f"volume_{label_names[k]}" for k in sizes], *QC_COLUMNS[1:]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([r["case"], *[f"{r['sizes'].get(k, 0.0):.6g}" for k in sizes],
                    f"{r['uncertainty_inside']:.6f}", f"{r['confidence']:.6f}", f"{r['intensity_distance']:.4f}",
                    r["flag"], "; ".join(r["reasons"])])
    atomic_write_text(out / "qc.csv", buf.getvalue())
    atomic_write_json(out / "qc.json", {**extra, "cases": [
        {**{k: v for k, v in r.items() if k != "sizes"},
         "volumes": {label_names[k]: r["sizes"].get(k, 0.0) for k in sizes}} for r in rows]})


def qc_row(name: str, labels: np.ndarray, uncertainty: np.ndarray, image: torch.Tensor,
           spacing: Sequence[float] | None, classes: int, trust: dict[str, Any] | None) -> dict[str, Any]:
    """One row of qc.csv: the case's features and its flag."""
    features = case_features(labels, uncertainty, channel_quantiles(image), spacing, classes, trust)
    verdict, reasons = flag(features, trust)
    return {"case": name, **features, "flag": verdict, "reasons": reasons}


__all__ = ["QUANTILES", "TRUST", "LazyTrust", "calibrate_trust", "case_features", "channel_quantiles", "flag",
           "intensity_distance", "qc_row", "read_trust", "spearman", "write_qc", "write_trust"]
