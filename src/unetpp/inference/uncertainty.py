"""Per-voxel uncertainty from what a UNet++ computes anyway, and calibrated probabilities.

**Members.** A prediction is already the mean of *members*' probabilities, and where the
members disagree the mean is unsure:

- the **heads** X^{0,1..L} of a deep-supervised UNet++ in accurate mode (fast mode reads one
  head: one member);
- the **folds** of a cross-validation ensemble (each fold with its own heads);
- the **flips** of the input with ``tta`` (each spatial axis mirrored and back, inside every
  sliding window: 4 in 2D, 8 in 3D).

**The map** is the normalised entropy of the calibrated mean, ``H(p) / log K`` in [0, 1]
(``K = 2`` for a binary model): 0 where every member is sure and agrees, 1 where the mean is
50/50. It is computed from the very probabilities the mask comes from, so ``--uncertainty``
never changes a mask and costs no extra forward pass. The entropy of the *mean* is used rather
than the members' disagreement alone (their mutual information, which would need every member
kept apart): a boundary on which every head agrees at 0.6 is as worth checking as one on which
they split, and with one member (fast mode) the map is still defined. The heads of one network
are correlated, so alone they understate disagreement; folds and flips add independent members.

**Calibration** (:func:`fit_temperature`): one temperature T, fitted on the validation (or
out-of-fold) voxels by minimising the negative log-likelihood, scales the logits of the mean
(``sigmoid(logit / T)``; for K classes ``p_k^(1/T)`` renormalised, which is softmax(z / T)).
One T rather than one per class: a per-class temperature can change the argmax, so the masks
would no longer be the ones ``prune`` validated; one T never changes a mask. Expected
calibration error (:func:`expected_calibration_error`) is reported before and after.

Example::

    >>> import unetpp                                              # doctest: +SKIP
    >>> predictor = unetpp.load("runs/nuclei")                     # doctest: +SKIP
    >>> image, meta = predictor.read("tile.png")                   # doctest: +SKIP
    >>> probs = predictor.predict_tensor(image)                    # doctest: +SKIP
    >>> u = calibrated_uncertainty(probs, predictor.trust["temperature"])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..models.mode import Mode

#: probabilities are clamped to [EPS, 1 - EPS] before logits and logs
EPS = 1e-6
#: temperatures searched (log-spaced), then refined by golden section
T_RANGE = (0.05, 20.0)
#: voxels per case used to fit the temperature (a seeded random sample)
FIT_VOXELS = 200_000
ECE_BINS = 15


def _logits(probs: torch.Tensor) -> torch.Tensor:
    """Binary ``(1, *S)``: the logit; K classes: the log-probabilities (logits up to a constant)."""
    p = probs.clamp(EPS, 1 - EPS)
    return torch.log(p) - torch.log1p(-p) if probs.shape[0] == 1 else torch.log(p)


def calibrate(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities ``(K', *S)`` with their logits divided by ``temperature`` (argmax kept)."""
    if temperature == 1.0:
        return probs
    z = _logits(probs.float()) / temperature
    return torch.sigmoid(z) if probs.shape[0] == 1 else torch.softmax(z, dim=0)


def uncertainty_map(probs: torch.Tensor) -> torch.Tensor:
    """Normalised entropy ``(*S)`` in [0, 1] of probabilities ``(K', *S)`` (binary: ``K' = 1``)."""
    p = probs.float().clamp(EPS, 1 - EPS)
    if p.shape[0] == 1:
        q = p[0]
        h = -(q * torch.log(q) + (1 - q) * torch.log1p(-q))
        return (h / math.log(2)).clamp_(0, 1)
    h = -(p * torch.log(p)).sum(0)
    return (h / math.log(p.shape[0])).clamp_(0, 1)


def calibrated_uncertainty(probs: torch.Tensor, temperature: float, chunk: int = 8) -> torch.Tensor:
    """:func:`uncertainty_map` of :func:`calibrate`, a few slices of the first spatial axis at a
    time (a whole CT's temporaries would be several copies of the probabilities)."""
    if probs.dim() < 3:
        return uncertainty_map(calibrate(probs, temperature))
    return torch.cat([uncertainty_map(calibrate(probs[:, i:i + chunk], temperature))
                      for i in range(0, probs.shape[1], chunk)])


def sample_voxels(probs: torch.Tensor, label: np.ndarray, rng: np.random.Generator,
                  limit: int = FIT_VOXELS, ignore: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(probs (n, K'), labels (n,))`` of at most ``limit`` random voxels of one case,
    leaving out voxels of the ``ignore`` label."""
    flat = probs.reshape(probs.shape[0], -1).T.numpy()
    lab = np.asarray(label).reshape(-1)
    if lab.shape[0] != flat.shape[0]:
        raise ValueError(f"probabilities of {flat.shape[0]} voxels against a label of {lab.shape[0]}")
    if ignore is not None:
        keep = lab != ignore
        flat, lab = flat[keep], lab[keep]
    if flat.shape[0] > limit:
        pick = rng.choice(flat.shape[0], size=limit, replace=False)
        flat, lab = flat[pick], lab[pick]
    return flat.astype(np.float32), lab.astype(np.int64)


def _nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean negative log-likelihood of labels ``y`` under logits ``z / t``."""
    if z.shape[1] == 1:
        s = z[:, 0] / t
        # -log sigmoid(s) for y=1, -log(1 - sigmoid(s)) for y=0, stably
        return float(np.mean(np.logaddexp(0.0, np.where(y > 0, -s, s))))
    s = z / t
    log_norm = np.logaddexp.reduce(s, axis=1)
    return float(np.mean(log_norm - s[np.arange(len(y)), y]))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of ``labels`` (n,) under ``probs`` (n, K') with
    their logits scaled by 1/T: a log-spaced search over :data:`T_RANGE`, then golden section."""
    p = np.clip(probs.astype(np.float64), EPS, 1 - EPS)
    z = np.log(p) - np.log1p(-p) if p.shape[1] == 1 else np.log(p)
    grid = np.geomspace(*T_RANGE, 41)
    losses = [_nll(z, labels, t) for t in grid]
    i = int(np.argmin(losses))
    lo, hi = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, len(grid) - 1)])
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(30):
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if _nll(z, labels, math.exp(a)) < _nll(z, labels, math.exp(b)):
            hi = b
        else:
            lo = a
    t = math.exp((lo + hi) / 2)
    return t if _nll(z, labels, t) <= _nll(z, labels, 1.0) else 1.0  # never worse than none


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the predicted class's confidence (n voxels): the mean over ``bins`` equal-width
    confidence bins of |accuracy - confidence|, weighted by the voxels in each bin."""
    if probs.shape[1] == 1:
        fg = probs[:, 0]
        pred = (fg > 0.5).astype(np.int64)
        conf = np.where(pred == 1, fg, 1 - fg)
    else:
        pred = probs.argmax(1)
        conf = probs.max(1)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


def calibrate_samples(probs: np.ndarray, temperature: float) -> np.ndarray:
    """:func:`calibrate` on sampled voxels ``(n, K')``."""
    return calibrate(torch.from_numpy(probs.T.copy()), temperature).T.numpy()


def describe_members(predictor: Any, mode: str | Mode | None, level: int | None, tta: bool) -> str:
    """What the mean's members are, in words, e.g. ``"4 heads x 5 folds x 4 flips"``."""
    runs = getattr(predictor, "members", None) or [predictor]
    first = runs[0]
    resolved = first.resolve(mode, level)
    exported = getattr(first, "network_file", None) is not None  # one output: the heads averaged inside
    heads = len(resolved.levels(first.levels)) if resolved.name == "accurate" and not exported else 1
    parts = [f"{heads} head{'s' if heads > 1 else ''}"]
    if len(runs) > 1:
        parts.append(f"{len(runs)} folds")
    if tta:
        parts.append(f"{2 ** first.dims} flips")
    return " x ".join(parts)


__all__ = ["calibrate", "calibrate_samples", "calibrated_uncertainty", "describe_members", "expected_calibration_error",
           "fit_temperature", "sample_voxels", "uncertainty_map"]
