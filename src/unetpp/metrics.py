"""Dice and IoU per case, per class.

Conventions (stated once, used everywhere):
- A case's score is computed on the whole image or volume, then averaged over cases
  (the paper's and nnU-Net's practice), never pooled over pixels of all cases.
- Binary tasks score the foreground (label 1). K-class tasks score each class 1..K-1
  separately; background is not scored.
- **Empty vs empty**: when a class is absent from both the prediction and the reference,
  Dice and IoU are 1.0 (a correct "nothing here"); when it is absent from one only, 0.0.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _as_bool(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(bool, copy=False)


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


def case_scores(pred_labels: ArrayLike, target_labels: ArrayLike, classes: int) -> dict[str, float]:
    """Scores of one case from label maps (values 0..K-1; binary: 0/1).

    Returns ``{"dice": mean over classes, "iou": ..., "dice_1": ..., "iou_1": ..., ...}``;
    for a binary task only ``dice`` and ``iou``.
    """
    pred = pred_labels.detach().cpu().numpy() if isinstance(pred_labels, torch.Tensor) else np.asarray(pred_labels)
    target = target_labels.detach().cpu().numpy() if isinstance(target_labels, torch.Tensor) else np.asarray(target_labels)
    fg = range(1, max(classes, 2))
    out: dict[str, float] = {}
    dices, ious = [], []
    for c in fg:
        d, i = dice_iou(pred == c, target == c)
        dices.append(d)
        ious.append(i)
        if classes > 2:
            out[f"dice_{c}"], out[f"iou_{c}"] = d, i
    out["dice"], out["iou"] = float(np.mean(dices)), float(np.mean(ious))
    return out


def mean_scores(cases: list[dict[str, float]]) -> dict[str, float]:
    """Average each key over cases."""
    if not cases:
        return {}
    keys = [k for k in cases[0] if isinstance(cases[0][k], (int, float))]
    return {k: float(np.mean([c[k] for c in cases])) for k in keys}
