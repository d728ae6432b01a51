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

**Early stopping between whole-case validations** (:class:`PatchScore`): when validation is
spaced out, a cheap score on fixed validation patches is computed every epoch; patience
counts epochs without a better patch score, and the epoch that stops a run is validated whole.
The best weights are still those of the best whole-case score.

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


class PatchScore:
    """A cheap score for every epoch, for early stopping when whole-case validation is spaced
    out (``val_every > 1``): the accurate mode's mean IoU on fixed validation patches, one per
    case (at most :attr:`MAX_CASES`), centred on the case's foreground (a 2D network on volumes:
    in its slice with the most foreground), in the training precision. Costs one forward pass
    per patch; whole-case validation stays what picks the best weights.

    Args:
        ds: the dataset (``load_case``).
        names: the validation cases.
        patch_size: the training patch, ``dims`` values.
        device, dtype: where and in which autocast dtype to score.
        batch_size: patches per forward pass.
    """

    MAX_CASES = 32

    def __init__(self, ds: Any, names: list[str], patch_size: tuple[int, ...], device: torch.device,
                 dtype: torch.dtype | None = None, batch_size: int = 4, info: Any = None):
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.info = info or distributed.DistInfo()
        self.ignore = getattr(ds, "ignore_label", None)
        # under torchrun each process scores its share and the sums are all-reduced, so every
        # process takes the same early-stopping decision
        mine = [n for i, n in enumerate(names[: self.MAX_CASES]) if i % self.info.world_size == self.info.rank]
        crops = [_crop(ds.load_case(n), patch_size) for n in mine]
        self.images = torch.stack([torch.from_numpy(c[0]) for c in crops]) if crops else torch.zeros(0)
        self.labels = [c[1] for c in crops]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> float:
        from ..inference.engine import probabilities, probabilities_to_labels

        classes, was_training = model.config.classes, model.training
        model.eval()
        scores = []
        try:
            for start in range(0, len(self.images), self.batch_size):
                x = self.images[start:start + self.batch_size].to(self.device)
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    out = model(x)
                out = out if isinstance(out, dict) else {model.levels[-1]: out}
                probs = combine_heads({lv: probabilities(v.float(), classes) for lv, v in out.items()},
                                      Mode.accurate())
                for i, p in enumerate(probs.cpu()):
                    pred = probabilities_to_labels(p, classes).numpy()
                    scores.append(case_scores(pred, self.labels[start + i], classes, ignore=self.ignore)["iou"])
        finally:
            model.train(was_training)
        sums = torch.tensor([float(np.sum(scores)), float(len(scores))], dtype=torch.float64)
        if self.info.enabled:  # NCCL reduces CUDA tensors only
            reduce_device = self.device if self.device.type == "cuda" else torch.device("cpu")
            sums = distributed.all_reduce_sum(sums.to(reduce_device), self.info).cpu()
        return float(sums[0] / max(1.0, float(sums[1])))


def _crop(case: Any, patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The patch of ``case`` centred on its foreground's centre (zero-padded where it is
    larger than the case); a 2D patch of a volume is cut from its most-foreground slice."""
    from ..data.loading.pipeline import crop  # the loader's own crop (imported when needed, as the loop does)

    image, label = np.asarray(case.image, dtype=np.float32), np.asarray(case.label)
    if label.ndim > len(patch):  # a 2D network on volumes: the slice with the most foreground
        k = int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(axis=1)))
        image, label = image[:, k], label[k]
    fg = np.argwhere(label > 0)
    centre = fg.mean(axis=0).round().astype(int) if len(fg) else np.array(label.shape) // 2
    start = [int(min(max(c - p // 2, 0), max(n - p, 0))) for c, n, p in zip(centre, label.shape, patch)]
    return crop(image, start, patch), crop(label, start, patch)  # inside the case where it can be


__all__ = ["VAL_SHARE", "PatchScore", "Validator", "monitor_score", "validation_every"]
