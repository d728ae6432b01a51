"""The inference engine: modes, levels through pruning, sliding window, slices, TTA."""

from __future__ import annotations

import pytest
import torch

from unetpp import create_model
from unetpp.inference.engine import (mode_probabilities, predict, predict_probabilities,
                                     probabilities_to_labels, resolve_levels)


def tiny(dims=2, **kw):
    torch.manual_seed(0)
    return create_model("unetpp", dims=dims, base_filters=4, depth=3, **kw).eval()


def test_accurate_is_mean_of_heads_and_fast_is_pruned_head():
    model = tiny()
    image = torch.randn(1, 40, 56)
    with torch.no_grad():
        heads = {lv: torch.sigmoid(x)[0] for lv, x in model(image[None]).items()}
    accurate = predict(model, image, "accurate")
    torch.testing.assert_close(accurate, torch.stack(list(heads.values())).mean(0))
    for level in (1, 2, 3):
        fast = predict(model, image, "fast", level)
        torch.testing.assert_close(fast, heads[level])
        with torch.no_grad():
            torch.testing.assert_close(fast, torch.sigmoid(model.prune(level)(image[None]))[0])


def test_sliding_window_matches_whole_image_shape_and_is_close_inside():
    model = tiny()
    image = torch.randn(1, 70, 90)
    whole = predict_probabilities(model, image)
    tiled = predict_probabilities(model, image, patch_size=(32, 32), overlap=0.5)
    for lv in whole:
        assert tiled[lv].shape == whole[lv].shape == (1, 70, 90)
        assert torch.all((tiled[lv] >= 0) & (tiled[lv] <= 1))


def test_2d_model_on_volume_runs_slice_by_slice():
    model = tiny()
    volume = torch.randn(1, 5, 24, 20)
    probs = predict_probabilities(model, volume, levels=(2,), batch_size=2)
    assert tuple(probs[2].shape) == (1, 5, 24, 20)
    with torch.no_grad():
        one = torch.sigmoid(model.prune(2)(volume[:, 3][None]))[0]
    torch.testing.assert_close(probs[2][:, 3], one)


def test_multiclass_3d_and_labels():
    model = tiny(dims=3, classes=3, in_channels=2)
    probs = predict_probabilities(model, torch.randn(2, 10, 12, 14), tta=True)
    p = mode_probabilities(probs, "accurate")
    assert tuple(p.shape) == (3, 10, 12, 14)
    torch.testing.assert_close(p.sum(0), torch.ones(10, 12, 14))
    labels = probabilities_to_labels(p, 3)
    assert labels.dtype == torch.int64 and set(labels.unique().tolist()) <= {0, 1, 2}


def test_tta_is_mirror_invariant():
    model = tiny()
    image = torch.randn(1, 32, 32)
    a = predict(model, image, "fast", 3, tta=True)
    b = predict(model, torch.flip(image, (1, 2)), "fast", 3, tta=True)
    torch.testing.assert_close(a, torch.flip(b, (1, 2)), atol=1e-5, rtol=1e-5)


def test_mode_and_level_errors():
    model = tiny()
    with pytest.raises(ValueError, match="mode must be one of accurate, fast"):
        resolve_levels(model, "slow", None)
    with pytest.raises(ValueError, match="level must be one of 1, 2, 3, got 5"):
        resolve_levels(model, "fast", 5)
    no_ds = tiny(deep_supervision=False)
    assert resolve_levels(no_ds, "accurate", None) == (3,)
    with pytest.raises(ValueError, match="only level 3"):
        resolve_levels(no_ds, "fast", 1)
    with pytest.raises(ValueError, match="the model expects 1 channel"):
        predict_probabilities(model, torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="spatial dims"):
        predict_probabilities(model, torch.randn(16, 16))
