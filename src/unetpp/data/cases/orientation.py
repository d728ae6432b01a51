"""One canonical orientation for every volume, and back.

The same CT can be stored with its axes in any order and direction; the affine says which.
Without care, "2D training on slices of axis 0" means axial slices for one file and sagittal
ones for another (nnU-Net's users have met this: issues #2897, #1956). So before anything
else every volume is brought, by axis permutation and flips only (no interpolation, exact),
to the array order (S, A, R): axis 0 runs inferior to superior (axial slices), axis 1
posterior to anterior, axis 2 left to right, in RAS+ world coordinates (NIfTI's convention;
MetaImage and LPS NRRD/DICOM worlds are converted first). Predictions are brought back to the
input's own array order and written with its own affine, so nothing changes for the user but
the correctness.

The rotation is read from the affine's direction cosines (nibabel's ``io_orientation`` rule:
each voxel axis goes to the world axis it is closest to). An oblique volume whose axes are
more than ~37 degrees from every world axis (a cosine under 0.8) has no clear slice axis and
is refused naming the file.

Example:
    >>> meta = {"affine": [[0, 0, 1, 0], [0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], "format": "nifti"}
    >>> r = reorientation(meta)          # file axes (x, y, z) run along (S, -A, R)
    >>> r["perm"], r["flip"]
    ([2, 1, 0], [False, True, False])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import DataError

#: the smallest direction cosine of an axis to its world axis (about 37 degrees off)
MIN_COSINE = 0.8


def _to_ras(meta: dict[str, Any]) -> np.ndarray:
    """The sign flips that bring the file's world axes to RAS+."""
    fmt = meta.get("format")
    space = str((meta.get("nrrd_header") or {}).get("space", "")).lower()
    if fmt == "mha" or space in ("left-posterior-superior", "lps"):
        return np.diag([-1.0, -1.0, 1.0])
    return np.eye(3)


def reorientation(meta: dict[str, Any]) -> dict[str, Any] | None:
    """How to bring a volume (array order, as the readers return it) to (S, A, R): ``{"perm":
    source array axis of each canonical axis, "flip": per canonical axis}``; None when it is
    already canonical or has no affine (2D images)."""
    affine = meta.get("affine")
    if affine is None:
        return None
    rot = _to_ras(meta) @ np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(rot, axis=0)
    if not np.all(np.isfinite(rot)) or np.any(norms == 0):
        return None
    cos = rot / norms  # column i: direction of file axis i (x, y, z) in RAS
    world = [int(np.argmax(np.abs(cos[:, i]))) for i in range(3)]
    worst = min(abs(cos[world[i], i]) for i in range(3))
    if len(set(world)) < 3 or worst < MIN_COSINE:
        source = (meta.get("source") or ["volume"])[0]
        raise DataError(f"{source}: an oblique volume (an axis {np.degrees(np.arccos(min(worst, 1.0))):.0f} "
                        "degrees from every world axis) has no clear slice axis; resample it to the "
                        "scanner axes first")
    # array axis a holds file axis 2 - a; canonical array axis b holds world axis 2 - b
    perm = [2 - world.index(2 - b) for b in range(3)]
    flip = [bool(cos[2 - b, 2 - perm[b]] < 0) for b in range(3)]
    if perm == [0, 1, 2] and not any(flip):
        return None
    return {"perm": perm, "flip": flip}


def to_canonical(array: np.ndarray, r: dict[str, Any] | None) -> np.ndarray:
    """``(..., *S)`` in the file's array order -> canonical (leading axes kept)."""
    if r is None or array is None:
        return array
    lead = array.ndim - 3
    out = np.transpose(array, list(range(lead)) + [lead + p for p in r["perm"]])
    axes = tuple(lead + b for b in range(3) if r["flip"][b])
    return np.ascontiguousarray(np.flip(out, axes) if axes else out)


def from_canonical(array: np.ndarray, r: dict[str, Any] | None) -> np.ndarray:
    """The inverse of :func:`to_canonical`."""
    if r is None:
        return array
    lead = array.ndim - 3
    axes = tuple(lead + b for b in range(3) if r["flip"][b])
    out = np.flip(array, axes) if axes else array
    inverse = [r["perm"].index(a) for a in range(3)]
    return np.ascontiguousarray(np.transpose(out, list(range(lead)) + [lead + i for i in inverse]))


def canonical_spacing(spacing: Sequence[float], r: dict[str, Any] | None) -> list[float]:
    return list(spacing) if r is None else [float(spacing[p]) for p in r["perm"]]


def canonical_shape(shape: Sequence[int], r: dict[str, Any] | None) -> list[int]:
    return list(shape) if r is None else [int(shape[p]) for p in r["perm"]]


__all__ = ["canonical_shape", "canonical_spacing", "from_canonical", "reorientation", "to_canonical"]
