"""PNG overlays of a predicted mask on its image, for a quick look at a prediction.

2D: the image (gray, or RGB for 3 channels; contrast stretched to its 1st-99th
percentiles) with each class in its own colour, half transparent. Volumes: a few slices
along the first (slice) axis through the segmented region (at 25, 50 and 75 % of its
extent; the middle slice when nothing was segmented), side by side, each labelled with its
slice index (``z=12``: index along the array's first spatial axis).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

#: class colours (RGB) for labels 1, 2, ...; cycled for more classes.
PALETTE = np.asarray([(255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255),
                      (0, 220, 220), (255, 128, 0), (160, 160, 160)], dtype=np.float32)


def _display(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> uint8 RGB ``(H, W, 3)``, contrast stretched per channel."""
    chans = image[:3] if image.shape[0] >= 3 else image[:1]
    out = []
    for c in chans:
        c = c.astype(np.float32)
        lo, hi = np.percentile(c, (1, 99)) if c.size else (0.0, 1.0)
        if hi <= lo:
            lo, hi = float(c.min(initial=0)), float(c.max(initial=0))
        scaled = np.clip((c - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(c)
        out.append(scaled * 255)
    rgb = np.stack(out if len(out) == 3 else out * 3, axis=-1)
    return rgb


def blend(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)``: ``image`` ``(C, H, W)`` with ``labels`` ``(H, W)`` coloured."""
    rgb = _display(image)
    labels = np.asarray(labels)
    for value in np.unique(labels):
        if value == 0:
            continue
        colour = PALETTE[(int(value) - 1) % len(PALETTE)]
        m = labels == value
        rgb[m] = (1 - alpha) * rgb[m] + alpha * colour
    return np.clip(rgb, 0, 255).astype(np.uint8)


def volume_slices(labels: np.ndarray, count: int = 3) -> list[int]:
    """Slice indices (first axis) through the segmented region; the middle one if empty."""
    fg = np.flatnonzero(np.asarray(labels).reshape(labels.shape[0], -1).any(axis=1))
    if fg.size == 0:
        return [labels.shape[0] // 2]
    lo, hi = int(fg[0]), int(fg[-1])
    picks = sorted({int(round(lo + q * (hi - lo))) for q in np.linspace(0.25, 0.75, count)} if count > 1
                   else {int(round((lo + hi) / 2))})
    return [p for p in picks if labels[p].any()] or [int(fg[len(fg) // 2])]


def overlay(image: np.ndarray, labels: np.ndarray, slices: Sequence[int] | None = None) -> np.ndarray:
    """uint8 RGB overlay: 2D ``image (C, H, W)`` / ``labels (H, W)``, or volumes
    ``(C, D, H, W)`` / ``(D, H, W)`` as slices side by side (4-pixel white gaps)."""
    image, labels = np.asarray(image), np.asarray(labels)
    if labels.ndim == 2:
        return blend(image, labels)
    picks = list(slices) if slices is not None else volume_slices(labels)
    tiles = [blend(image[:, z], labels[z]) for z in picks]
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    row: list[np.ndarray] = []
    for t in tiles:
        row += [t, gap]
    return np.concatenate(row[:-1], axis=1)


def overlay_png(image: np.ndarray, labels: np.ndarray) -> bytes:
    """The overlay as PNG bytes (write them with :func:`unetpp.io.atomic_write_bytes`);
    volume tiles carry their slice index (``z=12``) in the top-left corner."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(overlay(image, labels))
    if np.asarray(labels).ndim == 3:
        draw = ImageDraw.Draw(im)
        width = np.asarray(labels).shape[2]
        for i, z in enumerate(volume_slices(np.asarray(labels))):
            draw.text((i * (width + 4) + 2, 1), f"z={z}", fill=(255, 255, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
