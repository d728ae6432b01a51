"""The inference window: how an image is cut into the passes the network runs.

Two policies, both blended by the engine with MONAI's Gaussian sliding window:

- ``"patch"`` (nnU-Net's): windows of the training patch, overlapping by ``overlap`` of a
  patch. A 512×512 image with a 96×96 patch takes 100 windows: 3.5× the image's pixels go
  through the network, in passes too small to keep a CPU's cores busy.
- ``"large"``: the network is fully convolutional, so one window may be as large as memory
  allows. The whole image when it fits in ``budget`` (in voxels × base filters, the size of
  one full-resolution feature map); otherwise as few windows per axis as fit, never smaller
  than the patch, overlapping by at least as many voxels as patch windows do (the same
  blended seam, far fewer seams). Each voxel then runs about once instead of 2^dims times.

Which policy a run predicts with is chosen on validation data by ``unetpp prune`` (the large
window must score within the tolerance of the patch window; see
:mod:`unetpp.inference.prune`), stored in ``RUN/prune.json``, and read by the predictor.

Example:
    >>> Window("large", patch=(96, 96), multiple=(16, 16)).plan((512, 512))
    ((512, 512), (0.0, 0.0))
    >>> Window("patch", patch=(96, 96), multiple=(16, 16)).plan((512, 512))
    ((96, 96), (0.5, 0.5))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: the window policies; "patch" is the default without a choice made on validation data
WINDOWS = ("patch", "large")

#: voxels × base filters of one window: 2**25 float32 values are 128 MiB per full-resolution
#: feature map (a 1024² image at 32 filters, 2048² at 8; 100³ voxels at 32 filters)
DEFAULT_BUDGET = 2 ** 25


@dataclass(frozen=True)
class Window:
    """How :func:`unetpp.inference.engine.predict_with` tiles an image.

    Args:
        policy: ``"patch"`` or ``"large"`` (see the module docstring).
        patch: the training patch (the patch policy's window; the large policy's smallest).
        overlap: fraction of a patch shared by neighbouring patch windows.
        multiple: per axis, the size the network pads its input to a multiple of.
        budget: the large policy's most voxels × ``filters`` per window.
        filters: the network's base filter count (memory grows with it).
    """

    policy: str
    patch: tuple[int, ...]
    overlap: float = 0.5
    multiple: tuple[int, ...] | None = None
    budget: int = DEFAULT_BUDGET
    filters: int = 32

    def __post_init__(self) -> None:
        if self.policy not in WINDOWS:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {self.policy!r}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")

    def plan(self, spatial: Sequence[int]) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """``(window, overlap per axis)`` for an image of ``spatial`` size, in the form MONAI's
        ``sliding_window_inference`` takes (a window equal to the image is one pass)."""
        spatial = tuple(int(s) for s in spatial)
        patch = tuple(min(int(p), s) for p, s in zip(self.patch, spatial))
        if self.policy == "patch":
            return patch, tuple(float(self.overlap) for _ in spatial)
        multiple = self.multiple or tuple(1 for _ in spatial)
        seam = tuple(int(p * self.overlap) for p in patch)  # voxels shared, as between patch windows
        limit = max(1, self.budget // max(1, self.filters))
        tiles = [1] * len(spatial)

        def sizes() -> list[int]:
            out = []
            for s, p, m, n, o in zip(spatial, patch, multiple, tiles, seam):
                w = math.ceil((s + (n - 1) * o) / n)
                # whole multiples of the padding, never below the patch; down to the patch itself
                # once that is enough (rounding up could otherwise keep it above the patch forever)
                w = min(s, p if w <= p else -(-w // m) * m)
                out.append(w)
            return out

        window = sizes()
        while math.prod(window) > limit:
            splittable = [i for i, (w, p) in enumerate(zip(window, patch)) if w > p]
            if not splittable:
                break
            axis = max(splittable, key=lambda i: window[i] / patch[i])
            tiles[axis] += 1
            window = sizes()
        # rounding to the padding multiple can leave several tile counts with one window size:
        # the fewest windows of that size that cover the axis with the seam
        tiles = [1 if w >= s else -(-(s - o) // (w - o)) for s, w, o in zip(spatial, window, seam)]
        return tuple(window), tuple(_overlap_for(s, w, n) for s, w, n in zip(spatial, window, tiles))

    def per_pass(self, window: Sequence[int], batch_size: int) -> int:
        """Windows (or whole slices) per forward pass: ``batch_size`` of patch windows; of
        large ones, as many as the budget holds (at least one, at most ``batch_size``)."""
        if self.policy == "patch":
            return max(1, batch_size)
        return max(1, min(batch_size, self.budget // max(1, self.filters) // max(1, math.prod(window))))


def window_policies(predictor: object) -> str:
    """The policy a predictor tiles with (``"large"``); an ensemble's members' joined by
    ``/`` when they differ (``"large/patch"``)."""
    members = getattr(predictor, "members", None) or [predictor]
    return "/".join(sorted({m.window.policy for m in members}))


def _overlap_for(size: int, window: int, tiles: int) -> float:
    """The overlap fraction for which MONAI's interval ``int(window * (1 - overlap))`` puts
    ``tiles`` windows of ``window`` across ``size`` (the last one flush with the end)."""
    if window >= size or tiles <= 1:
        return 0.0
    step = -(-(size - window) // (tiles - 1))  # ceil: the windows must reach the end
    step = max(1, min(step, window))
    # a hair below the exact fraction, so that float rounding cannot make the interval shorter
    return max(0.0, (window - step) / window - 0.5 / window)


__all__ = ["DEFAULT_BUDGET", "WINDOWS", "Window", "window_policies"]
