"""The paper's loss on every deep-supervision head.

UNet++ (Zhou et al. 2018, eq. 1) trains each head with binary cross-entropy plus Dice,
``L = -1/N sum_b (1/2 Y_b log P_b + 2 Y_b P_b / (Y_b + P_b))``, i.e. ``1/2 BCE + (1 - Dice)``
up to a constant, and sums the heads. Here:

- binary (``classes == 1``, one logit channel): ``ce_weight * BCE + dice_weight * (1 - soft Dice)``;
- ``K`` classes: softmax cross-entropy + soft Dice of each foreground class, averaged;
- soft Dice is computed per sample (per image / patch), smoothed by 1 so an empty patch with an
  empty prediction scores ~1, then averaged over the batch;
- voxels of nnU-Net v2's ``ignore`` label count for neither term;
- heads are combined with per-level weights (default equal), normalised to sum to 1, so the
  loss keeps the same scale with or without deep supervision.

Logits are cast to float32 first, so the loss is computed in full precision under autocast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SMOOTH = 1.0


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over samples and channels of the soft Dice of ``(B, K, *S)`` tensors; voxels
    where ``valid`` (``(B, 1, *S)``) is False count for neither."""
    if valid is not None:
        probs, onehot = probs * valid, onehot * valid
    axes = tuple(range(2, probs.dim()))
    inter = (probs * onehot).sum(axes)
    total = probs.sum(axes) + onehot.sum(axes)
    return ((2 * inter + SMOOTH) / (total + SMOOTH)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, classes: int,
                      ce_weight: float = 0.5, dice_weight: float = 1.0, ignore: int | None = None) -> torch.Tensor:
    """Loss of one head: ``logits (B, K', *S)``, ``target`` int64 ``(B, *S)`` (0..K-1, and
    ``ignore`` for voxels that count for nothing: nnU-Net v2's ignore label)."""
    logits = logits.float()
    valid = None
    if ignore is not None:
        keep = target != ignore
        valid = keep.unsqueeze(1).to(logits.dtype)
        target = torch.where(keep, target, torch.zeros_like(target))
    if classes == 1:
        t = target.unsqueeze(1).to(logits.dtype)
        if valid is None:
            ce = F.binary_cross_entropy_with_logits(logits, t)
        else:  # the mean over the voxels that count
            ce = (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * valid).sum() / valid.sum().clamp(min=1)
        dice = soft_dice(torch.sigmoid(logits), t, valid)
    else:
        if valid is None:
            ce = F.cross_entropy(logits, target)
        else:
            ce = (F.cross_entropy(logits, target, reduction="none") * valid[:, 0]).sum() / valid.sum().clamp(min=1)
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(target, classes).movedim(-1, 1).to(logits.dtype)
        dice = soft_dice(probs[:, 1:], onehot[:, 1:], valid)  # foreground classes, as scored
    return ce_weight * ce + dice_weight * (1.0 - dice)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum over heads of :func:`segmentation_loss`.

    Args:
        levels: the model's output levels (``model.levels``).
        classes: 1 (binary, sigmoid) or K (softmax).
        level_weights: one weight per level (level order), default equal.

    Example:
        >>> loss = DeepSupervisionLoss((1, 2, 3, 4), classes=1)
        >>> out = {lv: torch.zeros(2, 1, 8, 8) for lv in (1, 2, 3, 4)}
        >>> float(loss(out, torch.zeros(2, 8, 8, dtype=torch.long))) > 0
        True
    """

    def __init__(self, levels: Sequence[int], classes: int, level_weights: Sequence[float] | None = None,
                 ce_weight: float = 0.5, dice_weight: float = 1.0, ignore: int | None = None):
        super().__init__()
        self.levels = tuple(levels)
        if level_weights is None:
            level_weights = [1.0] * len(self.levels)
        if len(level_weights) != len(self.levels):
            raise ValueError(f"level_weights has {len(level_weights)} values for the "
                             f"{len(self.levels)} head(s) of levels {list(self.levels)}")
        total = float(sum(level_weights))
        self.weights = {lv: float(w) / total for lv, w in zip(self.levels, level_weights)}
        self.classes, self.ce_weight, self.dice_weight, self.ignore = classes, ce_weight, dice_weight, ignore

    def forward(self, outputs: torch.Tensor | Mapping[int, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, Mapping):
            outputs = {self.levels[-1]: outputs}
        total = None
        for lv, w in self.weights.items():
            if w == 0:
                continue
            term = w * segmentation_loss(outputs[lv], target, self.classes, self.ce_weight, self.dice_weight,
                                         self.ignore)
            total = term if total is None else total + term
        return total
