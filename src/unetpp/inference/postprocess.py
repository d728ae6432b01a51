"""Post-processing per class, chosen on out-of-fold predictions (nnU-Net's step).

Two operations, per foreground class, on the label map on the input's own grid:

- ``largest``: keep the largest connected component of the class (a liver is one organ);
- ``min_size``: drop components smaller than ``voxels`` (isolated false positives).

Dropped voxels become background. Components are face-connected (``scipy.ndimage.label``'s
default structure): a diagonal touch does not join two blobs.

:func:`choose` tries each operation on every out-of-fold case of a cross-validation and
keeps, per class, the one that raises that class's mean Dice the most, by at least
:data:`MIN_GAIN`; a class keeps no operation unless one does. The choice is stored in ``postprocess.json``
(:data:`POSTPROCESS`) and :func:`apply` runs it in ``predict``.

Example:
    >>> import numpy as np
    >>> labels = np.zeros((1, 8, 8), np.int64); labels[0, :3, :3] = 1; labels[0, 6, 6] = 1
    >>> int(apply(labels, {"classes": {"1": {"op": "largest"}}}).sum())
    9
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RunError
from ..io import atomic_write_json, read_json
from ..metrics import dice_iou

POSTPROCESS = "postprocess.json"
#: an operation is kept only if it raises the class's mean Dice by at least this (0.1 point):
#: smaller gains on a few cases are noise, and every operation can also remove true voxels
MIN_GAIN = 1e-3


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a boolean mask: (labelled array, size of each, 1-based)."""
    from scipy import ndimage

    labelled, n = ndimage.label(mask)
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    return labelled, sizes


def apply_op(labels: np.ndarray, cls: int, op: dict[str, Any]) -> np.ndarray:
    """``labels`` with operation ``op`` applied to class ``cls`` (a new array)."""
    out = np.array(labels, copy=True)
    mask = out == cls
    if not mask.any():
        return out
    labelled, sizes = _components(mask)
    if op["op"] == "largest":
        keep = np.zeros(sizes.size + 1, bool)
        keep[int(np.argmax(sizes)) + 1] = True
    elif op["op"] == "min_size":
        keep = np.concatenate([[False], sizes >= int(op["voxels"])])
    else:
        raise RunError(f"postprocess: unknown operation {op['op']!r} (largest, min_size)")
    out[mask & ~keep[labelled]] = 0
    return out


def apply(labels: np.ndarray, spec: dict[str, Any] | None) -> np.ndarray:
    """Run the per-class operations of ``spec`` (``postprocess.json``) on a label map."""
    if not spec:
        return labels
    for cls, op in sorted((spec.get("classes") or {}).items(), key=lambda kv: int(kv[0])):
        labels = apply_op(labels, int(cls), op)
    return labels


def _class_dice(pred: np.ndarray, ref: np.ndarray, cls: int) -> float:
    return dice_iou(pred == cls, ref == cls)[0]


def choose(cases: Sequence[tuple[np.ndarray, np.ndarray]], classes: int) -> dict[str, Any]:
    """The operations that raise each class's mean Dice over ``cases`` (``(prediction,
    reference)`` label maps of out-of-fold predictions), with the Dice before and after."""
    foreground = range(1, max(classes, 2))
    chosen: dict[str, Any] = {}
    report: dict[str, Any] = {}
    for cls in foreground:
        before = [_class_dice(p, r, cls) for p, r in cases]
        smallest = [int(s.min()) for _, r in cases if (r == cls).any() for s in [_components(r == cls)[1]]]
        candidates: list[dict[str, Any]] = [{"op": "largest"}]
        if smallest:  # drop blobs well under the smallest true component seen
            candidates += [{"op": "min_size", "voxels": max(2, int(min(smallest) * f))} for f in (0.25, 0.5)]
        best, best_dice = None, float(np.mean(before))
        for op in candidates:
            dice = float(np.mean([_class_dice(apply_op(p, cls, op), r, cls) for p, r in cases]))
            if dice > best_dice + MIN_GAIN:
                best, best_dice = op, dice
        report[str(cls)] = {"dice_before": float(np.mean(before)), "dice_after": best_dice, "op": best}
        if best is not None:
            chosen[str(cls)] = best
    return {"classes": chosen, "evaluated": report, "cases": len(cases)}


def write_postprocess(folder: str | os.PathLike, spec: dict[str, Any]) -> Path:
    return atomic_write_json(Path(folder) / POSTPROCESS, spec)


def read_postprocess(folder: str | os.PathLike | None) -> dict[str, Any] | None:
    """``postprocess.json`` of a run or CV folder (checked), or None."""
    if folder is None or not (Path(folder) / POSTPROCESS).is_file():
        return None
    path = Path(folder) / POSTPROCESS
    spec = read_json(path)
    classes = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(classes, dict) or not all(
            str(k).isdigit() and isinstance(v, dict) and v.get("op") in ("largest", "min_size") for k, v in classes.items()):
        raise RunError(f"{path}: expected {{\"classes\": {{\"1\": {{\"op\": \"largest\"}}, ...}}}}")
    return spec


__all__ = ["POSTPROCESS", "apply", "apply_op", "choose", "read_postprocess", "write_postprocess"]
