"""plan_topology: nnU-Net's per-axis pooling and kernel rule for anisotropic voxels."""

from __future__ import annotations

import doctest

import pytest

from unetpp.models import ModelConfig, topology
from unetpp.models.topology import is_isotropic_topology, patch_multiple, plan_topology


def test_chest_ct_pools_in_plane_first_and_uses_flat_kernels():
    # 0.6 x 0.6 x 5 mm, array order (z, y, x)
    strides, kernels = plan_topology([5, 0.6, 0.6], [24, 160, 160], depth=4)
    assert strides == [[1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    assert kernels == [[1, 3, 3], [1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert patch_multiple(strides) == (2, 16, 16)
    assert not is_isotropic_topology(strides, kernels)
    # the plan is a valid model config as it comes
    cfg = ModelConfig(arch="unetpp", dims=3, depth=4, strides=strides, kernel_sizes=kernels)
    assert cfg.pad_multiple == (2, 16, 16)


@pytest.mark.parametrize("spacing,patch", [([1, 1, 1], [64, 64, 64]), ([0.8, 0.8], [256, 256]),
                                           ([2.0, 1.0, 1.0], [64, 64, 64]), ([1.5, 1, 1.2], [96, 96, 96])])
def test_isotropic_or_within_2x_gives_default(spacing, patch):
    strides, kernels = plan_topology(spacing, patch, depth=4)
    assert strides == [[2] * len(spacing)] * 4
    assert kernels == [[3] * len(spacing)] * 5
    assert is_isotropic_topology(strides, kernels)
    assert patch_multiple(strides) == (16,) * len(spacing)


def test_moderate_anisotropy_catches_up_after_one_level():
    assert plan_topology([3.0, 1.0, 1.0], [32, 128, 128], depth=3) == (
        [[1, 2, 2], [2, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]])


def test_axis_too_small_is_not_pooled_and_depth_is_kept():
    # isotropic, but only 8 slices: z is halved once (8 -> 4), then stays
    strides, _ = plan_topology([1, 1, 1], [8, 64, 64], depth=4)
    assert strides == [[2, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert len(strides) == 4
    assert plan_topology([1, 1, 1], [8, 64, 64], depth=4, min_size=2)[0][1] == [2, 2, 2]
    # in-plane exhausted: the coarse axis is then the finest one that can still be pooled
    strides, _ = plan_topology([5, 0.6, 0.6], [64, 16, 16], depth=4)
    assert strides == [[1, 2, 2], [1, 2, 2], [2, 1, 1], [2, 1, 1]]
    # nothing can be pooled: strides 1, the depth still as asked
    assert plan_topology([1, 1], [4, 4], depth=2)[0] == [[1, 1], [1, 1]]


def test_kernel_once_three_stays_three():
    # z becomes fine at row 1, then x, y stop pooling (size) and z's spacing grows again
    _, kernels = plan_topology([2.5, 1, 1], [256, 8, 8], depth=4)
    assert kernels[0] == [1, 3, 3]
    assert all(row[0] == 3 for row in kernels[1:])


def test_patch_multiple_and_isotropic_helper():
    assert patch_multiple([[1, 2, 2], [1, 2, 2], [2, 2, 2]]) == (2, 8, 8)
    assert patch_multiple([[2, 2]]) == (2, 2)
    with pytest.raises(ValueError, match="at least one level"):
        patch_multiple([])
    assert is_isotropic_topology(None, None)
    assert is_isotropic_topology([[2, 2]], None)
    assert not is_isotropic_topology(None, [[3, 1]])


@pytest.mark.parametrize("args,message", [
    (([1, 1, 1, 1], [8, 8, 8, 8], 2), "spacing must be 2 or 3 numbers"),
    (([1, 0, 1], [8, 8, 8], 2), "spacing must be positive finite numbers"),
    (([1, float("nan")], [8, 8], 2), "spacing must be positive finite numbers"),
    (([1, 1], [8, 8, 8], 2), "patch_size must be 2 positive integers"),
    (([1, 1], [8, 0], 2), "patch_size must be 2 positive integers"),
    (([1, 1], [8, 8], 0), "depth must be a positive integer"),
])
def test_plan_topology_errors(args, message):
    with pytest.raises(ValueError, match=message):
        plan_topology(*args)


def test_docstring_examples():
    result = doctest.testmod(topology)
    assert result.attempted >= 4 and result.failed == 0
