"""Per-axis pooling and kernel sizes for anisotropic images (nnU-Net's rule, our code).

A chest CT of 512x512x61 voxels at 0.6x0.6x5 mm (array order z, y, x: spacing
``[5, 0.6, 0.6]``) is eight times coarser across slices than in-plane. Pooling every axis at
every level, as the isotropic network does, would halve 61 slices four times (the deep rows
would see 3-4 slices, each pooled voxel 80 mm thick) and make a 64³ patch span 320 mm across
slices but 38 mm in-plane. nnU-Net's answer, which :func:`plan_topology` implements:

- **pooling**: at each level an axis is halved only while its current spacing is at most
  2x the finest current spacing (among the axes that can still be halved) and while its
  size after halving stays at least ``min_size`` voxels; otherwise its stride is 1. The
  in-plane axes are pooled first until their spacing catches up with the slice axis; from
  then on all axes are pooled together, so the deep rows see a roughly isotropic voxel;
- **kernels**: the conv kernel is 1 along an axis (``1x3x3``) while that axis's spacing is
  more than 2x the finest spacing of the row: a 3-wide kernel across 5 mm slices would mix
  tissue 15 mm apart with in-plane neighbours 1.8 mm apart. Once an axis's kernel is 3 it
  stays 3 on the deeper rows.

For isotropic data (or anything within 2x) the plan is all-2 strides and all-3 kernels,
:func:`is_isotropic_topology`, which a :class:`~unetpp.models.config.ModelConfig` stores as
``None`` (today's network, unchanged).

Example:
    >>> strides, kernels = plan_topology([5, 0.6, 0.6], [24, 160, 160], depth=4)
    >>> strides
    [[1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    >>> kernels
    [[1, 3, 3], [1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]
    >>> patch_multiple(strides)        # round patch sizes up to these per axis
    (2, 16, 16)
    >>> is_isotropic_topology(*plan_topology([1, 1, 1], [64, 64, 64], depth=4))
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: An axis whose spacing is within this factor of the finest is "fine": pooled, 3-wide kernel.
ANISOTROPY_RATIO = 2.0


def _check_plan_args(spacing: Sequence[float], patch_size: Sequence[int], depth: int, min_size: int) -> None:
    if not isinstance(spacing, Sequence) or isinstance(spacing, str) or len(spacing) not in (2, 3):
        raise ValueError(f"spacing must be 2 or 3 numbers (one per spatial axis), got {spacing!r}")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0
               for s in spacing):
        raise ValueError(f"spacing must be positive finite numbers, got {list(spacing)!r}")
    if (not isinstance(patch_size, Sequence) or isinstance(patch_size, str) or len(patch_size) != len(spacing)
            or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in patch_size)):
        raise ValueError(f"patch_size must be {len(spacing)} positive integers (one per axis of spacing), "
                         f"got {patch_size!r}")
    for name, value in (("depth", depth), ("min_size", min_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def plan_topology(spacing: Sequence[float], patch_size: Sequence[int], depth: int,
                  min_size: int = 4) -> tuple[list[list[int]], list[list[int]]]:
    """Pooling strides per level and conv kernel sizes per row for voxels of ``spacing``.

    Args:
        spacing: voxel size per spatial axis, in the array's axis order (``[z, y, x]`` for 3D,
            ``[y, x]`` for 2D), any unit.
        patch_size: the training patch per axis (voxels); bounds how often an axis is halved.
        depth: poolings of the network (levels 1..depth); given by the caller, never changed.
        min_size: an axis is halved at a level only if its size afterwards is at least this.

    Returns:
        ``(strides, kernels)``: ``strides`` has ``depth`` lists (level i = 1..depth: the
        pooling factor per axis, 1 or 2), ``kernels`` has ``depth + 1`` lists (row i = 0..depth:
        the conv kernel per axis, 1 or 3). The rule is in the module docstring; isotropic
        spacing gives all 2s and all 3s. Sizes are tracked as ``ceil(size / 2)``, the caller
        rounds patches up to :func:`patch_multiple` of ``strides``.

    Raises:
        ValueError: spacing/patch_size of different or unsupported lengths, non-positive
        values, or a depth/min_size below 1.

    Example:
        >>> plan_topology([3.0, 1.0, 1.0], [32, 128, 128], depth=3)
        ([[1, 2, 2], [2, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]])
    """
    _check_plan_args(spacing, patch_size, depth, min_size)
    current = [float(s) for s in spacing]
    size = [int(p) for p in patch_size]
    kernel = [1] * len(current)
    strides: list[list[int]] = []
    kernels: list[list[int]] = []
    for _ in range(depth + 1):
        # Row kernels first: row i convolves at the spacing reached after i poolings.
        finest = min(current)
        kernel = [3 if k == 3 or s <= ANISOTROPY_RATIO * finest else 1 for k, s in zip(kernel, current)]
        kernels.append(kernel)
        if len(kernels) > depth:
            break
        # The pooling into the next row: among axes still large enough to halve, those
        # within 2x of the finest of them.
        sizable = [a for a, n in enumerate(size) if (n + 1) // 2 >= min_size]
        finest_sizable = min((current[a] for a in sizable), default=math.inf)
        stride = [2 if a in sizable and current[a] <= ANISOTROPY_RATIO * finest_sizable else 1
                  for a in range(len(current))]
        for a, f in enumerate(stride):
            current[a] *= f
            size[a] = -(-size[a] // f)
        strides.append(stride)
    return strides, kernels


def is_isotropic_topology(strides: Sequence[Sequence[int]] | None,
                          kernels: Sequence[Sequence[int]] | None) -> bool:
    """True when ``strides`` are all 2 and ``kernels`` all 3 (or ``None``): the default network,
    which a config should store as ``None``."""
    return (strides is None or all(f == 2 for level in strides for f in level)) and \
        (kernels is None or all(k == 3 for row in kernels for k in row))


def patch_multiple(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The product of ``strides`` per axis: every input size the network sees unpadded is a
    multiple of it (``(2, 16, 16)`` for ``[[1, 2, 2]] * 3 + [[2, 2, 2]]``).

    Raises ValueError for an empty list (its number of axes is unknown).
    """
    if not strides:
        raise ValueError("strides must have at least one level")
    return tuple(math.prod(level[a] for level in strides) for a in range(len(strides[0])))


__all__ = ["ANISOTROPY_RATIO", "is_isotropic_topology", "patch_multiple", "plan_topology"]


def plan_patch(spacing: Sequence[float], shape: Sequence[int], depth: int, voxels: int,
               min_size: int = 4) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """A patch of about ``voxels`` voxels that is cubic **in millimetres**, no larger than the
    data (``shape``, the largest case on the training grid), rounded up to the multiple its
    pooling needs; with the strides and kernels (:func:`plan_topology`) that go with it.

    The memory budget is the voxel count (a network's activations grow with it); the shape
    in millimetres follows the spacing, so a 0.6x0.6x5 mm CT gets a flat 16x144x144 patch
    (80x86x86 mm) rather than a 64^3 cube spanning 320 mm across slices and 38 mm in-plane.

    Example:
        >>> patch, strides, kernels = plan_patch([5, 0.6, 0.6], [61, 512, 512], depth=4, voxels=64**3)
        >>> patch, patch_multiple(strides)
        ([16, 144, 144], (2, 16, 16))
    """
    dims = len(spacing)
    side = (voxels * math.prod(spacing)) ** (1 / dims)  # mm, equal on every axis
    patch = [max(1, min(int(n), round(side / s))) for s, n in zip(spacing, shape)]
    for _ in range(3):  # the multiple depends on the patch through min_size: settle it
        strides, kernels = plan_topology(spacing, patch, depth, min_size)
        mult = patch_multiple(strides)
        patch = [max(m, -(-p // m) * m) for p, m in zip(patch, mult)]
    return patch, strides, kernels
