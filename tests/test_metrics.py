"""Dice and IoU against hand-computed cases, empty masks, and properties (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from unetpp.metrics import case_scores, dice_iou, mean_scores


def test_hand_computed():
    pred = np.array([[1, 1, 0, 0]])
    ref = np.array([[1, 0, 1, 0]])
    # |P|=2, |R|=2, |P∩R|=1, |P∪R|=3
    assert dice_iou(pred, ref) == pytest.approx((2 * 1 / 4, 1 / 3))


def test_perfect_and_disjoint():
    m = np.zeros((4, 4), bool)
    m[1:3, 1:3] = True
    assert dice_iou(m, m) == (1.0, 1.0)
    assert dice_iou(m, ~m) == (0.0, 0.0)


def test_empty_conventions():
    empty = np.zeros((3, 3), bool)
    full = np.ones((3, 3), bool)
    assert dice_iou(empty, empty) == (1.0, 1.0)   # correct "nothing here"
    assert dice_iou(empty, full) == (0.0, 0.0)
    assert dice_iou(full, empty) == (0.0, 0.0)


def test_multiclass_per_class_then_mean():
    ref = np.array([0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 2, 2, 2, 0])
    s = case_scores(pred, ref, classes=3)
    # class 1: P={1}, R={1,2} -> dice 2/3, iou 1/2; class 2: P={2,3,4}, R={3,4,5} -> dice 2/3, iou 2/4
    assert s["dice_1"] == pytest.approx(2 / 3) and s["iou_1"] == pytest.approx(1 / 2)
    assert s["dice_2"] == pytest.approx(2 / 3) and s["iou_2"] == pytest.approx(1 / 2)
    assert s["dice"] == pytest.approx(2 / 3) and s["iou"] == pytest.approx(1 / 2)


def test_binary_scores_have_only_means():
    s = case_scores(np.array([0, 1]), np.array([0, 1]), classes=1)
    assert s == {"dice": 1.0, "iou": 1.0}


def test_mean_is_per_case_not_pooled():
    # a big perfect case and a small missed one: per-case mean 0.5, pooled would be ~0.99
    cases = [case_scores(np.ones(1000), np.ones(1000), 1), case_scores(np.zeros(4), np.ones(4), 1)]
    assert mean_scores(cases)["dice"] == pytest.approx(0.5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"prediction shape \(2,\) differs from reference shape \(3,\)"):
        dice_iou(np.zeros(2), np.zeros(3))


masks = arrays(bool, st.tuples(st.integers(1, 6), st.integers(1, 6)))


@settings(max_examples=200, deadline=None)
@given(masks, st.data())
def test_properties(a, data):
    b = data.draw(arrays(bool, a.shape))
    d, i = dice_iou(a, b)
    assert 0.0 <= i <= d <= 1.0                      # IoU never exceeds Dice
    assert dice_iou(b, a) == (d, i)                  # symmetric
    assert d == pytest.approx(2 * i / (1 + i))       # Dice = 2 IoU / (1 + IoU)
    assert (d == 1.0) == bool(np.array_equal(a, b))  # perfect only when equal


def test_class_absent_from_both_scores_one_and_tensors_are_accepted():
    import torch

    ref = torch.tensor([[0, 1], [1, 0]])
    pred = torch.tensor([[0, 1], [0, 0]])
    s = case_scores(pred, ref, classes=3)  # class 2 in neither: a correct "nothing here"
    assert s["dice_2"] == 1.0 and s["iou_2"] == 1.0
    # class 1: P={1}, R={1,2}: dice 2/3, iou 1/2; means over classes 1 and 2
    assert s["dice_1"] == pytest.approx(2 / 3) and s["iou_1"] == pytest.approx(1 / 2)
    assert s["dice"] == pytest.approx((2 / 3 + 1) / 2) and s["iou"] == pytest.approx(3 / 4)
    assert case_scores(torch.zeros(3, 3), torch.zeros(3, 3), classes=1) == {"dice": 1.0, "iou": 1.0}


# ------------------------------------------------------------------ surface metrics (HD95, NSD)

def _legacy_case_scores(pred, target, classes):
    """case_scores as it was before surface metrics: the defaults must still give exactly this."""
    fg = range(1, max(classes, 2))
    out, dices, ious = {}, [], []
    for c in fg:
        d, i = dice_iou(pred == c, target == c)
        dices.append(d)
        ious.append(i)
        if classes > 2:
            out[f"dice_{c}"], out[f"iou_{c}"] = d, i
    out["dice"], out["iou"] = float(np.mean(dices)), float(np.mean(ious))
    return out


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.data())
def test_defaults_are_unchanged(classes, data):
    shape = data.draw(st.tuples(st.integers(1, 5), st.integers(1, 5)))
    labels = st.integers(0, max(classes, 2) - 1)
    pred, ref = data.draw(arrays(np.int64, shape, elements=labels)), data.draw(arrays(np.int64, shape, elements=labels))
    got, want = case_scores(pred, ref, classes), _legacy_case_scores(pred, ref, classes)
    assert got == want and list(got) == list(want)


def _ball(shape, centre, radius, spacing):
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def _monai(pred, ref, spacing, tolerance):
    """HD95 and NSD straight from MONAI on whole one-hot (1, 2, *S) tensors."""
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    def onehot(m):
        return torch.from_numpy(np.stack([~m, m]).astype(np.float32))[None]

    hd = compute_hausdorff_distance(onehot(pred), onehot(ref), percentile=95, spacing=list(spacing))
    nsd = compute_surface_dice(onehot(pred), onehot(ref), class_thresholds=[tolerance], spacing=list(spacing))
    return float(hd[0, 0]), float(nsd[0, 0])


@pytest.mark.parametrize("tolerance", [None, 4.0])
def test_surface_metrics_equal_monai_on_offset_spheres(tolerance):
    spacing = (2.5, 0.8, 1.2)  # anisotropic, array order
    shape = (14, 40, 30)
    ref = _ball(shape, (16.0, 15.0, 17.0), 9.0, spacing)
    pred = _ball(shape, (18.5, 17.4, 15.8), 8.0, spacing)
    s = case_scores(pred.astype(np.int64), ref.astype(np.int64), 1, spacing=spacing, surface=True,
                    tolerance=tolerance)
    hd, nsd = _monai(pred, ref, spacing, 2.5 if tolerance is None else tolerance)  # default: largest spacing
    assert s["hd95"] == pytest.approx(hd, abs=1e-6) and s["nsd"] == pytest.approx(nsd, abs=1e-6)
    assert 0 < s["nsd"] < 1 and s["hd95"] > 0
    assert set(s) == {"dice", "iou", "hd95", "nsd"}


def test_surface_metrics_analytic_shifted_square_and_cube():
    square = np.zeros((30, 30), np.int64)
    square[5:25, 5:25] = 1
    shifted = np.roll(square, 2, axis=0)  # 2 voxels along the axis of spacing 3 mm
    s = case_scores(shifted, square, 1, spacing=(3.0, 1.0), surface=True)
    assert s["hd95"] == pytest.approx(6.0)
    # tolerance 3 mm (largest spacing): of each 76-voxel boundary, 8 voxels of the far edge
    # (within 3 mm of a corner), 34 of the sides and 2 one row past the other's edge are right
    assert s["nsd"] == pytest.approx(44 / 76, abs=1e-6)
    assert case_scores(shifted, square, 1, spacing=(3.0, 1.0), surface=True, tolerance=6.0)["nsd"] == 1.0
    assert case_scores(shifted, square, 1, surface=True)["hd95"] == pytest.approx(2.0)  # spacing None: 1 mm
    cube = np.zeros((12, 16, 16), np.int64)
    cube[2:8, 3:13, 3:13] = 1
    s3 = case_scores(np.roll(cube, 2, axis=0), cube, 1, spacing=(3.0, 0.7, 0.7), surface=True)
    assert s3["hd95"] == pytest.approx(6.0)
    same = case_scores(cube, cube, 1, spacing=(3.0, 0.7, 0.7), surface=True)
    assert same == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0}


def test_surface_empty_conventions():
    empty = np.zeros((8, 8), np.int64)
    blob = empty.copy()
    blob[2:5, 2:5] = 1
    assert case_scores(empty, empty, 1, surface=True) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0}
    both_nan = case_scores(empty, empty, 1, surface=True, empty="nan")
    assert all(np.isnan(v) for v in both_nan.values()) and set(both_nan) == {"dice", "iou", "hd95", "nsd"}
    assert all(np.isnan(v) for v in case_scores(empty, empty, 1, empty="nan").values())
    for mode in ("one", "nan"):  # present in exactly one: 0, and HD95 undefined
        for pred, ref in ((blob, empty), (empty, blob)):
            s = case_scores(pred, ref, 1, surface=True, empty=mode)
            assert s["dice"] == s["iou"] == s["nsd"] == 0.0 and np.isnan(s["hd95"])


def test_surface_multiclass_keys_and_nan_means():
    ref = np.zeros((10, 10), np.int64)
    ref[1:4, 1:4] = 1
    pred = ref.copy()
    pred[6:8, 6:8] = 3  # class 3 predicted but absent from the reference; class 2 in neither
    s = case_scores(pred, ref, 4, spacing=(1.0, 2.0), surface=True)
    assert list(s) == [f"{m}_{c}" for c in (1, 2, 3) for m in ("dice", "iou", "hd95", "nsd")] + \
        ["dice", "iou", "hd95", "nsd"]
    assert (s["dice_1"], s["hd95_1"], s["nsd_1"]) == (1.0, 0.0, 1.0)
    assert (s["dice_2"], s["hd95_2"], s["nsd_2"]) == (1.0, 0.0, 1.0)
    assert s["dice_3"] == 0.0 and np.isnan(s["hd95_3"])
    assert s["dice"] == pytest.approx(2 / 3) and s["hd95"] == 0.0  # HD95 mean over defined classes
    n = case_scores(pred, ref, 4, spacing=(1.0, 2.0), surface=True, empty="nan")
    assert np.isnan(n["dice_2"]) and n["dice"] == pytest.approx(1 / 2) and n["nsd"] == pytest.approx(1 / 2)


def test_mean_scores_ignore_nan():
    cases = [{"dice": 0.5, "hd95": float("nan")}, {"dice": 1.0, "hd95": 4.0}, {"dice": 0.0, "hd95": 2.0}]
    assert mean_scores(cases) == {"dice": pytest.approx(0.5), "hd95": pytest.approx(3.0)}
    assert np.isnan(mean_scores([{"hd95": float("nan")}])["hd95"])


def test_surface_argument_errors():
    m = np.zeros((4, 4), np.int64)
    with pytest.raises(ValueError, match="empty must be one of one, nan"):
        case_scores(m, m, 1, empty="zero")
    with pytest.raises(ValueError, match="spacing .* must be 2 positive numbers"):
        case_scores(m, m, 1, spacing=(1.0, 1.0, 1.0), surface=True)
    with pytest.raises(ValueError, match="surface metrics need a 2D or 3D"):
        case_scores(np.zeros(4), np.zeros(4), 1, surface=True)
