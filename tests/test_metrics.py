"""Dice and IoU against hand-computed cases, empty masks, and properties (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
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
