"""Seeded training augmentation for 2D and 3D patches.

The recipe follows nnU-Net's defaults:

=====================  ==========  ============================================
transform              prob.       parameters
=====================  ==========  ============================================
rotation               0.2         +-180 deg in-plane (2D); +-30 deg per axis (3D)
scaling                0.2         zoom 0.7-1.4 (one affine resampling with rotation)
flip                   0.5 / axis  every spatial axis
rot90 (in plane)       0.5         square in-plane patches only
Gaussian noise         0.1         std 0-0.1 (images are normalised)
Gaussian blur          0.1         sigma 0.5-1.0 (in-plane)
brightness (multiply)  0.15        0.75-1.25
contrast / gamma       0.15        gamma 0.7-1.5 (nnU-Net: on the [0, 1]-rescaled patch)
=====================  ==========  ============================================

Elastic deformation is off, as in nnU-Net's default configuration: it costs a dense
displacement field per sample (slow in 3D on a CPU) and the affine transform covers shape
variation.

Implementation: MONAI's dictionary transforms were the first choice, but their per-call
overhead (MetaTensor bookkeeping, ~85 ms for a 128x128 patch on a shared CPU, most of it not
arithmetic) would make the loader the bottleneck of a small 2D model. The affine warp uses
``torch.nn.functional.grid_sample`` (what MONAI's ``Affine`` calls), the rest is numpy/scipy.
All parameters are drawn from one ``numpy.random.default_rng(seed)``, so the same
(patch, seed) always gives the same result, in any process.

The affine warp needs context around the patch to avoid empty corners after rotation, so the
loader extracts a larger window (:func:`context_size`) and :func:`augment` crops the centre.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

P_ROTATE, P_SCALE, P_FLIP, P_ROT90 = 0.2, 0.2, 0.5, 0.5
P_NOISE, P_BLUR, P_BRIGHTNESS, P_GAMMA = 0.1, 0.1, 0.15, 0.15


def context_size(patch_size: Sequence[int]) -> tuple[int, ...]:
    """Window to extract so that a rotated/scaled patch has no empty corners (~sqrt(2)x),
    with the same parity as the patch so the centre crop is symmetric."""
    return tuple(p + 2 * int(math.ceil(p * 0.21)) for p in patch_size)


def _rotation(dims: int, rng: np.random.Generator) -> np.ndarray:
    if dims == 2:
        a = rng.uniform(-math.pi, math.pi)
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    r = np.eye(3)
    for axis in range(3):
        a = rng.uniform(-math.pi / 6, math.pi / 6)
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        r = m @ r
    return r


def _warp(image: np.ndarray, label: np.ndarray, matrix: np.ndarray,
          patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Sample the centre ``patch_size`` of (image, label) through ``matrix`` (output -> input
    coordinates, about the centre); bilinear for the image, nearest for the label."""
    dims = len(patch_size)
    window = image.shape[1:]
    # grid_sample works in normalised coordinates ([-1, 1] over each axis). Output pixel
    # offsets from the centre are u * patch / 2, input offsets matrix @ that, normalised by
    # window / 2; then (z, y, x) is reversed to grid_sample's (x, y, z).
    m = np.diag(1.0 / np.asarray(window, float)) @ matrix @ np.diag(np.asarray(patch_size, float))
    theta = np.zeros((dims, dims + 1))
    theta[:, :dims] = m[::-1, ::-1]
    t = torch.as_tensor(theta, dtype=torch.float32)[None]
    grid = F.affine_grid(t, [1, 1, *patch_size], align_corners=False)
    img = F.grid_sample(torch.from_numpy(np.ascontiguousarray(image))[None], grid, mode="bilinear",
                        padding_mode="zeros", align_corners=False)[0]
    lab = F.grid_sample(torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None], grid,
                        mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
    return img.numpy(), lab.numpy().astype(np.int64)


def _centre(array: np.ndarray, patch_size: Sequence[int]) -> np.ndarray:
    lead = array.ndim - len(patch_size)
    starts = [(w - p) // 2 for w, p in zip(array.shape[lead:], patch_size)]
    return array[(slice(None),) * lead + tuple(slice(s, s + p) for s, p in zip(starts, patch_size))]


def augment(image: np.ndarray, label: np.ndarray, patch_size: Sequence[int],
            seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Augment one window and crop its centre to ``patch_size``.

    Args:
        image: float32 (C, *window), window >= patch_size (see :func:`context_size`).
        label: int64 (*window).
        patch_size: output spatial size (2 or 3 numbers).
        seed: all random choices follow from it.

    Returns:
        ``image`` float32 (C, *patch_size), ``label`` int64 (*patch_size).

    Example::

        >>> img, lab = augment(np.zeros((1, 92, 92), np.float32), np.zeros((92, 92), np.int64), (64, 64), 0)
        >>> img.shape, lab.shape
        ((1, 64, 64), (64, 64))
    """
    rng = np.random.default_rng(seed)
    dims = len(patch_size)
    rotate, scale = rng.random() < P_ROTATE, rng.random() < P_SCALE
    if rotate or scale:
        m = _rotation(dims, rng) if rotate else np.eye(dims)
        if scale:
            m = m / rng.uniform(0.7, 1.4)  # output->input: zoom z shows 1/z of the window
        image, label = _warp(image.astype(np.float32, copy=False), label, m, patch_size)
    else:
        image, label = _centre(image, patch_size), _centre(label, patch_size)
    for axis in range(dims):
        if rng.random() < P_FLIP:
            image, label = np.flip(image, axis + 1), np.flip(label, axis)
    if patch_size[-1] == patch_size[-2] and rng.random() < P_ROT90:
        k = int(rng.integers(1, 4))
        image, label = np.rot90(image, k, axes=(dims - 1, dims)), np.rot90(label, k, axes=(dims - 2, dims - 1))
    image = np.array(image, dtype=np.float32)  # a fresh contiguous copy we may modify
    if rng.random() < P_NOISE:
        image += rng.normal(0.0, rng.uniform(0.0, 0.1), image.shape).astype(np.float32)
    if rng.random() < P_BLUR:
        sigma = [0.0] + [0.0] * (dims - 2) + [rng.uniform(0.5, 1.0)] * 2
        image = ndimage.gaussian_filter(image, sigma=sigma).astype(np.float32)
    if rng.random() < P_BRIGHTNESS:
        image *= np.float32(rng.uniform(0.75, 1.25))
    if rng.random() < P_GAMMA:
        gamma = rng.uniform(0.7, 1.5)
        for c in range(image.shape[0]):
            lo, hi = float(image[c].min()), float(image[c].max())
            if hi > lo:
                image[c] = ((image[c] - lo) / (hi - lo)) ** gamma * (hi - lo) + lo
    return image, np.ascontiguousarray(label, dtype=np.int64)
