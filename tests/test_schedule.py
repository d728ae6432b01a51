"""The learning-rate schedule (issue 22): poly decay to the end of the run, or the paper's constant."""

from __future__ import annotations

import csv

import pytest

from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.errors import UnetppError
from unetpp.training import TrainConfig, train
from unetpp.training.config import merge_for_resume
from unetpp.training.schedule import horizon, rate


def test_rate_poly_and_constant():
    assert rate("constant", 3e-4, 50, 100) == 3e-4
    assert rate("poly", 3e-4, 0, 100) == 3e-4
    assert rate("poly", 3e-4, 50, 100) == pytest.approx(3e-4 * 0.5 ** 0.9)
    assert rate("poly", 3e-4, 100, 100) == 0.0 and rate("poly", 3e-4, 120, 100) == 0.0


def test_horizon_fits_the_budget():
    assert horizon(100, None, 500.0, 10) == 100
    assert horizon(100, 10.0, 0.0, 0) == 100  # nothing measured yet
    assert horizon(100, 10.0, 120.0, 2) == 10  # 60 s an epoch: 8 more fit in the 480 s left
    assert horizon(5, 10.0, 120.0, 2) == 5  # --epochs caps it
    assert horizon(100, 1.0, 120.0, 2) == 3  # over budget: the loop stops; an epoch that runs still steps


def test_poly_decays_over_the_epochs_and_is_stored(tmp_path):
    data = write_synthetic_dataset(tmp_path / "d", n_cases=4, size=32, seed=0)
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "r"), base_filters=4, depth=2, patch_size=[32],
                            batch_size=2, epochs=3, steps_per_epoch=2, augment=False, progress="none",
                            device="cpu", tensorboard=False))
    with (run / "metrics.csv").open() as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    # the lr of each epoch's last step: 6 steps in all, the k-th (0-based) at 3e-4 (1 - k/6)^0.9
    assert lrs == pytest.approx([3e-4 * (1 - k / 6) ** 0.9 for k in (1, 3, 5)])
    constant = train(TrainConfig(data=str(data), out=str(tmp_path / "c"), base_filters=4, depth=2, patch_size=[32],
                                 batch_size=2, epochs=2, steps_per_epoch=2, augment=False, progress="none",
                                 device="cpu", tensorboard=False, schedule="constant"))
    with (constant / "metrics.csv").open() as f:
        assert [float(r["lr"]) for r in csv.DictReader(f)] == [3e-4, 3e-4]


def test_a_run_stored_before_the_schedule_resumes_with_a_constant_rate(tmp_path):
    saved = TrainConfig(data="d", out=str(tmp_path)).to_dict()
    del saved["schedule"]
    merged = merge_for_resume(saved, TrainConfig(data="d", out=str(tmp_path), resume=True), tmp_path)
    assert merged.schedule == "constant"
    with pytest.raises(UnetppError, match="--schedule must be one of poly, constant"):
        TrainConfig(data="d", out="o", schedule="cosine").validate()


def test_early_stopping_waits_for_min_patience_steps(tmp_path):
    data = write_synthetic_dataset(tmp_path / "d", n_cases=4, size=32, seed=0)
    common = dict(data=str(data), base_filters=4, depth=2, patch_size=[32], batch_size=2, epochs=20,
                  steps_per_epoch=2, lr=1e-12, augment=False, progress="none", device="cpu", tensorboard=False,
                  patience=1)
    # lr ~0: the score never improves after epoch 1; patience 1 alone stops at epoch 2, but 1 bad
    # epoch is 2 steps, so 5 steps need 3 bad epochs: epoch 4
    waited = train(TrainConfig(out=str(tmp_path / "w"), min_patience_steps=5, **common))
    alone = train(TrainConfig(out=str(tmp_path / "a"), min_patience_steps=0, **common))
    for run, epochs in ((waited, 4), (alone, 2)):
        with (run / "metrics.csv").open() as f:
            assert len(list(csv.DictReader(f))) == epochs
