"""Intensity normalisation by modality, as a JSON spec fitted once and applied everywhere.

One spec per input channel (``data_config()["normalization"]`` is a list of them)::

    {"scheme": "ct", "clip": [lo, hi], "mean": m, "std": s}   # dataset statistics
    {"scheme": "zscore"}                                       # per case: (x - mean) / std
    {"scheme": "zscore", "nonzero": true}                      # ... inside the non-zero mask
    {"scheme": "scale", "divide": 255.0}                       # RGB: x / 255
    {"scheme": "none"}

- **CT** (Hounsfield units mean the same in every scan): clip to a window, then z-score with
  the *dataset's* statistics. The window is the 0.5th-99.5th percentile of the foreground
  (labelled) voxels of the training cases, as nnU-Net does, unless one is given (e.g.
  ``(-160, 240)`` for an abdominal window). The mean/std are those of the clipped foreground.
- **MRI, microscopy, other** (arbitrary units that vary from scan to scan): z-score each case
  on its own, as nnU-Net does. When the images have a zero background (skull-stripped brain
  MRI: the median case is less than 3/4 non-zero, nnU-Net's rule), the mean and std are those
  of the non-zero voxels and the background stays 0 (``"nonzero": true``, planned once from
  the fingerprints: :func:`use_nonzero_mask`).
- **RGB** (endoscopy, histology): divide by the maximum of the storage type (255 for 8 bits).

Example::

    >>> spec = fit_channel("ct", foreground=np.array([-100., 0., 50., 200.]))
    >>> spec["scheme"], spec["clip"][0] < spec["clip"][1]
    ('ct', True)
    >>> apply_normalization(np.zeros((1, 4, 4), np.float32), [{"scheme": "zscore"}]).shape
    (1, 4, 4)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MODALITIES = ("ct", "mri", "microscopy", "rgb", "other")

_MRI_NAMES = {"mri", "mr", "t1", "t2", "t1w", "t2w", "t1gd", "t1c", "t1ce", "flair", "adc", "dwi",
              "pd", "pdw", "cine", "lge", "hbv", "perfusion", "t2star", "swi"}
_MICROSCOPY_NAMES = {"microscopy", "fluorescence", "em", "brightfield", "confocal", "dapi", "nuclei"}


def modality_of(name: str) -> str:
    """Map a dataset.json channel name (nnU-Net / MSD) to one of :data:`MODALITIES`.

    >>> modality_of("CT"), modality_of("FLAIR"), modality_of("rgb_to_0_1"), modality_of("noNorm")
    ('ct', 'mri', 'rgb', 'other')
    """
    n = str(name).strip().lower().replace("-", "").replace(" ", "")
    if n in ("ct", "computedtomography", "cect", "ncct"):
        return "ct"
    if n in _MRI_NAMES or n.startswith("mri") or n.startswith("t1") or n.startswith("t2"):
        return "mri"
    if n in _MICROSCOPY_NAMES:
        return "microscopy"
    if n in ("rgb", "rgb_to_0_1", "rgbto01", "rgb_to_01", "endoscopy", "histology", "color", "colour"):
        return "rgb"
    return "other"


def scheme_for(modality: str, channel_name: str | None = None) -> str:
    """The normalisation scheme of a channel: ``ct``, ``zscore``, ``scale`` or ``none``."""
    if channel_name is not None and str(channel_name).lower() in ("nonorm", "none"):
        return "none"
    return {"ct": "ct", "rgb": "scale"}.get(modality, "zscore")


def fit_channel(scheme: str, foreground: np.ndarray | None = None,
                window: Sequence[float] | None = None, dtype_max: float = 255.0) -> dict[str, Any]:
    """Fit the spec of one channel.

    Args:
        scheme: ``ct``, ``zscore``, ``scale`` or ``none``.
        foreground: for CT, a sample of foreground intensities over the training cases (1D).
        window: for CT, a fixed ``(lo, hi)`` clip window instead of the percentiles.
        dtype_max: for ``scale``, the divisor (255 for 8-bit images).
    """
    if scheme == "ct":
        fg = np.asarray(foreground if foreground is not None else [], dtype=np.float64).ravel()
        fg = fg[np.isfinite(fg)]
        if window is not None:
            lo, hi = float(window[0]), float(window[1])
        elif fg.size:
            lo, hi = (float(v) for v in np.percentile(fg, [0.5, 99.5]))
        else:  # no labelled voxels at all: fall back to a soft-tissue window
            lo, hi = -1000.0, 1000.0
        clipped = np.clip(fg, lo, hi) if fg.size else np.asarray([lo, hi])
        std = float(clipped.std())
        return {"scheme": "ct", "clip": [lo, hi], "mean": float(clipped.mean()),
                "std": std if std > 1e-8 else 1.0}
    if scheme == "scale":
        return {"scheme": "scale", "divide": float(dtype_max)}
    if scheme in ("zscore", "none"):
        return {"scheme": scheme}
    raise ValueError(f"unknown normalisation scheme {scheme!r}")


#: z-score inside the non-zero mask when the median case is less non-zero than this
NONZERO_FRACTION = 0.75


def use_nonzero_mask(nonzero_fractions: Sequence[float]) -> bool:
    """nnU-Net's rule: normalise inside the non-zero mask when cropping to it would shrink the
    median case by a quarter or more (a zero background, e.g. skull-stripped MRI)."""
    return bool(len(nonzero_fractions)) and float(np.median(nonzero_fractions)) < NONZERO_FRACTION


def apply_normalization(image: np.ndarray, specs: list[dict[str, Any]]) -> np.ndarray:
    """Normalise ``image`` (C, *spatial) channel by channel; returns float32 of the same shape."""
    image = np.asarray(image)
    if image.shape[0] != len(specs):
        raise ValueError(f"image has {image.shape[0]} channels, the normalisation spec {len(specs)}")
    out = np.empty(image.shape, np.float32)
    nonzero = np.any(image != 0, axis=0) if any(s.get("nonzero") for s in specs) else None
    for c, spec in enumerate(specs):
        x = image[c].astype(np.float32, copy=False)
        scheme = spec["scheme"]
        if scheme == "ct":
            x = (np.clip(x, *spec["clip"]) - spec["mean"]) / spec["std"]
        elif scheme == "zscore" and spec.get("nonzero") and nonzero is not None and nonzero.any():
            inside = x[nonzero]
            mean, std = float(inside.mean(dtype=np.float64)), float(inside.std(dtype=np.float64))
            x = np.where(nonzero, (x - mean) / max(std, 1e-8), 0.0).astype(np.float32)
        elif scheme == "zscore":
            mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
            x = (x - mean) / max(std, 1e-8)
        elif scheme == "scale":
            x = x / spec["divide"]
        elif scheme != "none":
            raise ValueError(f"unknown normalisation scheme {scheme!r}")
        out[c] = x
    return out
