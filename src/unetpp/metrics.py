"""Dice and IoU per case, per class; optionally HD95 and normalised surface Dice (NSD).

Conventions (stated once, used everywhere):
- A case's score is computed on the whole image or volume, then averaged over cases
  (the paper's and nnU-Net's practice), never pooled over pixels of all cases.
- Binary tasks score the foreground (label 1). K-class tasks score each class 1..K-1
  separately; background is not scored. A case's ``dice`` (``iou``, ``hd95``, ``nsd``) is
  the mean over those classes, ignoring NaN; :func:`mean_scores` averages over cases,
  ignoring NaN too (NaN only when every value is NaN).
- **Surface metrics** (``surface=True``), in millimetres (the units of ``spacing``, given in
  array order; None = 1 per axis), computed by MONAI on the boundary voxels of each mask
  (``monai.metrics.compute_hausdorff_distance`` with ``percentile=95`` and
  ``compute_surface_dice``): ``hd95`` is the symmetric 95th-percentile Hausdorff distance,
  ``nsd`` the normalised surface Dice, the fraction of both boundaries lying within
  ``tolerance`` mm of the other. The default tolerance is one voxel along the coarsest axis
  (the largest spacing), so a boundary off by at most one voxel anywhere counts as right.
- **Empty masks** (``empty``):

  ========================  ==================================  =====================
  class absent from ...     ``"one"`` (default)                 ``"nan"``
  ========================  ==================================  =====================
  both (correct "nothing")  Dice = IoU = NSD = 1, HD95 = 0      all NaN (nnU-Net, MONAI)
  exactly one of the two    Dice = IoU = NSD = 0, HD95 = NaN    the same
  ========================  ==================================  =====================

  HD95 is undefined (NaN) when one mask is empty: there is no surface to measure from, and
  no finite distance stands for "missed entirely". ``"nan"`` leaves cases where a class is
  rightly absent out of that class's means, as nnU-Net and MONAI do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

#: The ``empty`` conventions of :func:`case_scores` (see the module docstring).
EMPTY_MODES = ("one", "nan")


def _as_bool(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(bool, copy=False)


def _as_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def dice_iou(pred: ArrayLike, target: ArrayLike) -> tuple[float, float]:
    """Dice and IoU of two binary masks of the same shape (empty vs empty = 1.0)."""
    p, t = _as_bool(pred), _as_bool(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {t.shape}")
    inter = int(np.logical_and(p, t).sum())
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0, 1.0
    union = total - inter
    return 2.0 * inter / total, inter / union


def _nanmean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN (without a warning) when every value is NaN or there is none."""
    a = np.asarray(values, dtype=float)
    if a.size and not np.isnan(a).any():
        return float(np.mean(a))
    return float(np.mean(a[~np.isnan(a)])) if (~np.isnan(a)).any() else math.nan


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> list[float]:
    if ndim not in (2, 3):
        raise ValueError(f"surface metrics need a 2D or 3D label map, got {ndim}D")
    if spacing is None:
        return [1.0] * ndim
    s = [float(v) for v in np.asarray(spacing, dtype=float).reshape(-1)]
    if len(s) != ndim or not all(math.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"spacing {list(spacing)} must be {ndim} positive numbers (array order, mm)")
    return s


def _crop(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus one voxel (as MONAI crops, so
    the result is the same; it only spares MONAI copying a whole volume per class)."""
    idx = np.nonzero(p | t)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    return p[box], t[box]


def surface_distances(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float],
                      tolerance: float, empty: str = "one") -> tuple[float, float]:
    """``(hd95, nsd)`` of two boolean masks, in mm (see the module docstring for empties)."""
    has_p, has_t = bool(pred.any()), bool(target.any())
    if not has_p and not has_t:
        return (0.0, 1.0) if empty == "one" else (math.nan, math.nan)
    if has_p != has_t:
        return math.nan, 0.0
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    p, t = _crop(pred, target)
    yp = torch.from_numpy(np.ascontiguousarray(p)).float()[None, None]
    yt = torch.from_numpy(np.ascontiguousarray(t)).float()[None, None]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal call
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        hd = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=list(spacing))
        nsd = compute_surface_dice(yp, yt, class_thresholds=[float(tolerance)], include_background=True,
                                   spacing=list(spacing))
    return float(hd[0, 0]), float(nsd[0, 0])


def case_scores(pred_labels: ArrayLike, target_labels: ArrayLike, classes: int,
                spacing: Sequence[float] | None = None, surface: bool = False, empty: str = "one",
                tolerance: float | None = None, ignore: int | None = None) -> dict[str, float]:
    """Scores of one case from label maps (values 0..K-1; binary: 0/1).

    Returns ``{"dice_1": ..., "iou_1": ..., ..., "dice": mean over classes, "iou": ...}``;
    for a binary task only ``dice`` and ``iou``. ``surface=True`` adds ``hd95`` and ``nsd``
    (and ``hd95_<c>``, ``nsd_<c>`` per class for K > 2) in mm, using ``spacing`` (array order;
    None = 1 per axis) and the NSD ``tolerance`` in mm (None = the largest spacing). ``empty``
    is ``"one"`` or ``"nan"`` (module docstring). The defaults give Dice/IoU as always.
    ``ignore``: voxels where the reference holds this value (nnU-Net v2's ignore label) count
    for nothing (they are background in both maps).
    """
    if empty not in EMPTY_MODES:
        raise ValueError(f"empty must be one of {', '.join(EMPTY_MODES)}, got {empty!r}")
    pred, target = _as_numpy(pred_labels), _as_numpy(target_labels)
    if ignore is not None:
        left_out = target == ignore
        if left_out.any():
            pred, target = np.where(left_out, 0, pred), np.where(left_out, 0, target)
    if surface:
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from reference shape {target.shape}")
        spacing = _check_spacing(spacing, pred.ndim)
        tolerance = max(spacing) if tolerance is None else float(tolerance)
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"NSD tolerance must be a number of mm >= 0, got {tolerance}")
    fg = range(1, max(classes, 2))
    out: dict[str, float] = {}
    per: dict[str, list[float]] = {"dice": [], "iou": [], "hd95": [], "nsd": []}
    for c in fg:
        p, t = pred == c, target == c
        d, i = dice_iou(p, t)
        if empty == "nan" and not p.any() and not t.any():
            d = i = math.nan
        scores = {"dice": d, "iou": i}
        if surface:
            scores["hd95"], scores["nsd"] = surface_distances(p, t, spacing, tolerance, empty)
        for k, v in scores.items():
            per[k].append(v)
            if classes > 2:
                out[f"{k}_{c}"] = v
    for k, values in per.items():
        if values:
            out[k] = _nanmean(values)
    return out


def mean_scores(cases: list[dict[str, float]]) -> dict[str, float]:
    """Average each numeric key over cases, ignoring NaN (NaN when every case is NaN)."""
    if not cases:
        return {}
    keys = [k for k in cases[0] if isinstance(cases[0][k], (int, float))]
    return {k: _nanmean([c[k] for c in cases]) for k in keys}
