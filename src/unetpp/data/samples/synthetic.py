"""Seeded synthetic nuclei: blobs with blur and noise, 2D or 3D, for fast tests.

The images look like fluorescence microscopy: bright ellipsoidal nuclei of varying size and
brightness on a dark, slowly varying background, blurred by a point-spread function and with
shot (Poisson) plus read (Gaussian) noise. With ``classes=K > 1`` each blob gets a class
1..K-1 and a class-dependent brightness and size, so the classes are learnable.

Examples::

    >>> image, label = make_blobs((64, 64), seed=0)
    >>> image.shape, image.dtype, label.shape, sorted(set(label.ravel().tolist()))
    ((1, 64, 64), dtype('float32'), (64, 64), [0, 1])
    >>> root = write_synthetic_dataset(tmp_path / "ds", n_cases=4, size=48)   # doctest: +SKIP
    >>> open_dataset(root).case_names                                         # doctest: +SKIP
    ['case_000', 'case_001', 'case_002', 'case_003']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ...io import atomic_write_json
from ..files.formats import write_file

LAYOUTS = ("image-folders", "nnunet", "dsb2018")


def make_blobs(shape: Sequence[int], seed: int = 0, n_blobs: int | None = None, channels: int = 1,
               classes: int = 1, radius: tuple[float, float] = (0.06, 0.12),
               noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its label map.

    Args:
        shape: spatial shape, (H, W) or (Z, Y, X).
        seed: everything follows from it (same seed, same arrays).
        n_blobs: number of nuclei (default: about one per (1/4 of the side)^dims).
        channels: image channels; channel c is the same scene with a different contrast.
        classes: 1 for a binary mask (0/1), K for labels 0..K-1.
        radius: blob radii as a fraction of the smallest side (min, max).
        noise: standard deviation of the Gaussian read noise, relative to the nucleus brightness.

    Returns:
        ``image`` float32 (channels, *shape) with values roughly in [0, 1];
        ``label`` int64 (*shape) with values 0..max(1, classes - 1).
    """
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(seed)
    dims = len(shape)
    if n_blobs is None:
        n_blobs = max(2, int(round(0.6 * 4 ** dims * np.prod(shape) / max(shape) ** dims)))
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    label = np.zeros(shape, np.int64)
    signal = np.zeros(shape, np.float32)
    side = min(shape)
    n_fg = max(1, classes - 1)
    for _ in range(n_blobs):
        cls = int(rng.integers(1, n_fg + 1))
        centre = rng.uniform(0, 1, dims) * np.asarray(shape)
        # class-dependent size so that a multi-class task is learnable from shape as well
        r = rng.uniform(*radius, size=dims) * side * (1.0 + 0.35 * (cls - 1))
        r = np.maximum(r, 1.5)
        d2 = sum(((grid[i] - centre[i]) / r[i]) ** 2 for i in range(dims))
        inside = d2 <= 1.0
        label[inside] = cls
        brightness = rng.uniform(0.6, 1.0) * (1.0 - 0.25 * (cls - 1) / max(1, n_fg))
        # nuclei are brighter in the middle (chromatin texture, smooth falloff)
        signal = np.maximum(signal, np.where(inside, brightness * (1.0 - 0.3 * d2), 0.0).astype(np.float32))
    # slowly varying background (uneven illumination)
    background = ndimage.gaussian_filter(rng.uniform(0, 1, shape).astype(np.float32), sigma=side / 6)
    background = 0.05 + 0.1 * (background - background.min()) / (np.ptp(background) + 1e-6)
    images = []
    for c in range(channels):
        gain = 1.0 if c == 0 else rng.uniform(0.4, 0.9)
        clean = ndimage.gaussian_filter(signal * gain + background, sigma=1.0)  # optics blur
        photons = 200.0
        shot = rng.poisson(np.clip(clean, 0, None) * photons) / photons
        img = shot + rng.normal(0.0, noise, shape)
        images.append(img.astype(np.float32))
    return np.stack(images), label


def write_synthetic_dataset(dest: str | os.PathLike, layout: str = "image-folders", n_cases: int = 4,
                            size: int | Sequence[int] = 64, dims: int = 2, seed: int = 0,
                            channels: int = 1, classes: int = 1,
                            spacing: Sequence[float] | None = None, modality: str | None = None,
                            file_ending: str | None = None) -> Path:
    """Write a small synthetic dataset in one of the readable layouts; returns ``dest``.

    Args:
        dest: folder to create (parents too); existing files with the same names are replaced.
        layout: ``"image-folders"`` (``images/`` + ``masks/`` PNG, TIF for 3D),
            ``"nnunet"`` (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/``, ``dataset.json``;
            PNG for 2D) or ``"dsb2018"`` (``<id>/images/<id>.png``, one PNG per nucleus in
            ``<id>/masks/``; 2D, binary).
        n_cases: number of cases (case names ``case_000``, ``case_001``, ...).
        size: side (int) or full spatial shape.
        dims: 2 or 3.
        seed: case i uses seed ``seed * 1000 + i``.
        channels: 1 (gray) or 3 (RGB) for image folders; any number for nnU-Net.
        classes: 1 (binary) or K (labels 0..K-1); 2 also gives a binary dataset (labels 0/1
            are one foreground class, ``ds.classes == 1``).
        spacing: voxel spacing in array order (Z, Y, X) for nnU-Net volumes (default 1s).
        modality: written to ``dataset.json`` (nnU-Net: channel names; default ``"MRI"``
            for volumes, ``"microscopy"`` for 2D).
        file_ending: nnU-Net file ending (default ``.nii.gz`` in 3D, ``.png`` in 2D).

    Images are stored as 8-bit (PNG/TIF, 0..255) or float32 (NIfTI); binary masks in image
    folders are 0/255 as Kvasir-SEG ships them, multi-class masks hold the label values.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    shape = (int(size),) * dims if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != dims:
        raise ValueError(f"size {size} does not have {dims} dimensions")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = [f"case_{i:03d}" for i in range(n_cases)]
    label_names = {"0": "background", **{str(k): f"class{k}" for k in range(1, max(2, classes))}}
    if classes <= 1:
        label_names["1"] = "nucleus"
    cases = [make_blobs(shape, seed=seed * 1000 + i, channels=channels, classes=classes)
             for i in range(n_cases)]

    def as_u8(img: np.ndarray) -> np.ndarray:
        return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)

    if layout == "image-folders":
        if channels not in (1, 3):
            raise ValueError("image folders hold gray (channels=1) or RGB (channels=3) images")
        ext = ".png" if dims == 2 else ".tif"
        for name, (img, lab) in zip(names, cases):
            write_file(dest / "images" / f"{name}{ext}", as_u8(img), {})
            mask = (lab * 255 if classes <= 1 else lab).astype(np.uint8)
            write_file(dest / "masks" / f"{name}{ext}", mask, {})
        if classes > 1 or modality:
            atomic_write_json(dest / "dataset.json",
                              {"name": "synthetic", "modality": modality or "microscopy",
                               "labels": label_names})
    elif layout == "dsb2018":
        if dims != 2 or classes > 1:
            raise ValueError("the dsb2018 layout is 2D and binary")
        for name, (img, lab) in zip(names, cases):
            # DSB 2018 ships RGBA PNGs (gray content repeated in RGB, opaque alpha)
            rgba = np.concatenate([np.repeat(as_u8(img[:1]), 3, 0), np.full((1, *shape), 255, np.uint8)])
            write_file(dest / name / "images" / f"{name}.png", rgba, {})
            instances, n = ndimage.label(lab > 0)
            for k in range(1, n + 1):
                write_file(dest / name / "masks" / f"{name}_nucleus{k:03d}.png",
                           ((instances == k) * 255).astype(np.uint8), {})
    else:
        ending = file_ending or (".nii.gz" if dims == 3 else ".png")
        sp = list(spacing) if spacing is not None else [1.0] * dims
        for name, (img, lab) in zip(names, cases):
            meta = {"spacing": sp}
            for c in range(channels):
                # volumes as float32 NIfTI; 2D nnU-Net datasets as 8-bit PNG (one file per channel)
                data = img[c].astype(np.float32) if dims == 3 else as_u8(img[c])
                write_file(dest / "imagesTr" / f"{name}_{c:04d}{ending}", data, meta)
            write_file(dest / "labelsTr" / f"{name}{ending}", lab.astype(np.uint8), meta)
        mod = modality or ("MRI" if dims == 3 else "microscopy")
        atomic_write_json(dest / "dataset.json", {
            "name": "synthetic",
            "channel_names": {str(c): mod for c in range(channels)},
            "labels": {v: int(k) for k, v in label_names.items()},
            "numTraining": n_cases,
            "file_ending": ending,
        })
    return dest
