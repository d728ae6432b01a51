"""Validation during training: per-case scores on whole images/volumes, and the score that
picks the best checkpoint and drives early stopping.

Every validation case is predicted whole through the sliding-window engine
(:func:`unetpp.inference.engine.predict_probabilities`), in the training run's precision, so
validation computes what ``evaluate`` and ``predict`` will. Scores: Dice and IoU of every
head and of the *accurate* mode (:func:`unetpp.models.combine_heads`).

**How often** (:func:`validation_every`): every epoch, unless whole-case validation would cost
more than :data:`VAL_SHARE` of an epoch's training on a large validation set; then every
N epochs so that it stays near that share, and always after the last epoch. The cost is
counted in voxels run through the network (sliding-window windows for validation, 3x the
patches for training's forward and backward), so the choice is the same on every machine and
a seeded run stays reproducible. ``--val-every N`` sets it.

**Monitor**: ``accurate`` (default) is the accurate mode's mean per-case IoU; ``mean`` the
mean of the heads' IoUs; ``L2`` one head's IoU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import UnetppError
from ..metrics import case_scores
from ..models.mode import Mode, combine_heads
from . import distributed


#: validation may cost this share of an epoch's training before it is spaced out
VAL_SHARE = 0.1
#: ... and only when it runs at least this many voxels (small sets are validated every epoch)
LARGE_VALIDATION = 32 * 2**20


def validation_every(shapes: list[tuple[int, ...]], patch: tuple[int, ...], overlap: float,
                     train_patches: int) -> int:
    """Epochs between whole-case validations (see the module doc).

    Args:
        shapes: the validation cases' spatial shapes on the training grid.
        patch: the training patch (the sliding window), ``dims`` values.
        overlap: the sliding window's overlap.
        train_patches: patches per training epoch.
    """
    dims = len(patch)
    window = int(np.prod(patch))
    val = 0
    for shape in shapes:
        slices = int(np.prod(shape[: len(shape) - dims]))  # a 2D model on volumes: per slice
        count = 1
        for s, p in zip(shape[len(shape) - dims:], patch):
            step = max(1, int(p * (1 - overlap)))
            count *= 1 if s <= p else -(-(s - p) // step) + 1
        val += slices * count * window
    train = 3 * train_patches * window
    if val < LARGE_VALIDATION or val <= VAL_SHARE * train:
        return 1
    return int(np.ceil(val / (VAL_SHARE * train)))


def monitor_score(scores: dict[str, float], monitor: str, levels: tuple[int, ...]) -> float:
    """The one number that decides "best" and early stopping (see the module doc)."""
    if monitor == "accurate":
        return scores["val_iou"]
    if monitor == "mean":
        return float(np.mean([scores[f"val_iou_{lv}"] for lv in levels]))
    level = int(monitor[1:])
    if level not in levels:
        raise UnetppError(f"monitor {monitor}: the model has heads {', '.join(f'L{lv}' for lv in levels)}")
    return scores[f"val_iou_{level}"]


class Validator:
    """Per-case Dice/IoU of every head and of the accurate mode, on whole images/volumes.

    Under torchrun each rank scores cases ``rank, rank + N, ...`` and the sums are
    all-reduced, so every rank gets the same scores.

    Args:
        ds: the dataset (``load_case``).
        names: the validation cases.
        patch_size: the sliding window (the training patch).
        overlap, batch_size: the sliding window's overlap and windows per pass.
        info: the torchrun group (or none).
        device: where to compute.
        dtype: autocast dtype (the training step's, :class:`unetpp.runtime.Precision`), or None.
    """

    def __init__(self, ds: Any, names: list[str], patch_size: tuple[int, ...], overlap: float,
                 batch_size: int, info: distributed.DistInfo, device: torch.device,
                 dtype: torch.dtype | None = None):
        self.ds, self.names, self.patch_size = ds, list(names), patch_size
        self.overlap, self.batch_size, self.info, self.device, self.dtype = overlap, batch_size, info, device, dtype
        self.mine = [n for i, n in enumerate(self.names) if i % info.world_size == info.rank]

    @staticmethod
    def keys(levels: tuple[int, ...]) -> list[str]:
        """The scores' names: Dice and IoU of every head, then of the accurate mode."""
        return [f"val_{m}_{lv}" for lv in levels for m in ("dice", "iou")] + ["val_dice", "val_iou"]

    def _case(self, name: str) -> tuple[torch.Tensor, np.ndarray]:
        case = self.ds.load_case(name)  # the dataset keeps decoded cases in its own cache
        if case.label is None:
            raise UnetppError(f"{name}: validation case without a label")
        return torch.from_numpy(np.ascontiguousarray(case.image, dtype=np.float32)), np.asarray(case.label)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """``{"val_dice_1", "val_iou_1", ..., "val_dice", "val_iou"}``: means over cases."""
        from ..inference.engine import predict_probabilities, probabilities_to_labels

        classes, levels = model.config.classes, tuple(model.levels)
        keys = self.keys(levels)
        sums = torch.zeros(len(keys), dtype=torch.float64)
        was_training = model.training
        model.eval()
        try:
            for name in self.mine:
                image, label = self._case(name)
                probs = predict_probabilities(model, image, levels=levels, patch_size=self.patch_size,
                                              overlap=self.overlap, batch_size=self.batch_size,
                                              device=self.device, dtype=self.dtype)
                row = []
                ignore = getattr(self.ds, "ignore_label", None)
                for probs_of_mode in [probs[lv] for lv in levels] + [combine_heads(probs, Mode.accurate())]:
                    s = case_scores(probabilities_to_labels(probs_of_mode, classes), label, classes, ignore=ignore)
                    row += [s["dice"], s["iou"]]
                sums += torch.tensor(row, dtype=torch.float64)
        finally:
            model.train(was_training)
        if self.info.enabled:  # NCCL reduces CUDA tensors only
            reduce_device = self.device if self.device.type == "cuda" else torch.device("cpu")
            sums = distributed.all_reduce_sum(sums.to(reduce_device), self.info).cpu()
        return {k: float(v) / len(self.names) for k, v in zip(keys, sums.tolist())}


__all__ = ["VAL_SHARE", "Validator", "monitor_score", "validation_every"]
