"""Anisotropic volumes: the patch is planned in millimetres and the pooling per axis."""

from __future__ import annotations

import json

from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.run import load_model
from unetpp.training import train


def test_anisotropic_volumes_train_with_a_flat_patch_and_per_axis_pooling(tmp_path):
    data = write_synthetic_dataset(tmp_path / "ct", layout="nnunet", n_cases=3, size=(8, 48, 48), dims=3,
                                   seed=0, spacing=(5.0, 0.6, 0.6))
    run = train(data=str(data), out=str(tmp_path / "run"), dims=3, epochs=1, steps_per_epoch=1, base_filters=2,
                depth=3, batch_size=1, progress="none", tensorboard=False, device="cpu", augment=False)
    cfg = json.loads((run / "config.json").read_text())
    train_cfg, model_cfg = cfg["train"], cfg["model"]
    patch = train_cfg["patch_size"]
    assert patch[0] <= 8 and patch[1] == patch[2] and patch[1] > patch[0]  # flat: cubic in mm, not in voxels
    assert model_cfg["strides"][0] == [1, 2, 2] and model_cfg["kernel_sizes"][0] == [1, 3, 3]
    assert train_cfg["strides"] == model_cfg["strides"]
    model, _ = load_model(run)  # the stored config rebuilds the same network
    assert model.config.strides is not None


def test_isotropic_volumes_keep_the_paper_network(tmp_path):
    data = write_synthetic_dataset(tmp_path / "iso", layout="nnunet", n_cases=3, size=(16, 24, 24), dims=3,
                                   seed=0, spacing=(2.0, 1.0, 1.0))
    run = train(data=str(data), out=str(tmp_path / "run"), dims=3, epochs=1, steps_per_epoch=1, base_filters=2,
                depth=2, batch_size=1, progress="none", tensorboard=False, device="cpu", augment=False)
    cfg = json.loads((run / "config.json").read_text())
    assert "strides" not in cfg["model"] and cfg["train"]["strides"] is None
    assert cfg["train"]["patch_size"] == [16, 24, 24]


def test_validation_is_spaced_out_only_when_it_costs_more_than_a_tenth_of_training():
    from unetpp.training.validate import validation_every

    # a few small cases: every epoch, whatever the ratio
    assert validation_every([(40, 40)] * 2, (32, 32), 0.5, train_patches=1) == 1
    # 20 CT volumes of 200x512x512 (147 windows of 128^3 each) against 250 training patches:
    # validation costs ~3.9x an epoch's training, so every ~40 epochs keeps it near 10 %
    every = validation_every([(200, 512, 512)] * 20, (128, 128, 128), 0.5, train_patches=250)
    assert every == 40
    # 2D slices of volumes count slice by slice
    assert validation_every([(200, 512, 512)] * 20, (256, 256), 0.5, train_patches=10) > 1


def test_val_every_validates_every_n_epochs_and_after_the_last(tmp_path):
    import csv
    import math

    data = write_synthetic_dataset(tmp_path / "d", n_cases=6, size=32, seed=0)
    run = train(data=str(data), out=str(tmp_path / "run"), epochs=3, steps_per_epoch=2, val_every=2, base_filters=2,
                depth=2, patch_size=[32], progress="none", tensorboard=False, device="cpu")
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [math.isnan(float(r["val_score"])) for r in rows] == [True, False, False]
    assert all(0.0 <= float(r["val_patch_iou"]) <= 1.0 for r in rows)  # patience has a score every epoch


def test_spaced_validation_stops_early_on_the_patch_score_and_validates_that_epoch_whole(tmp_path):
    import csv
    import json
    import math

    data = write_synthetic_dataset(tmp_path / "d", n_cases=6, size=32, seed=0)
    run = train(data=str(data), out=str(tmp_path / "run"), epochs=20, steps_per_epoch=1, val_every=10, patience=2,
                min_patience_steps=0,
                lr=1e-9, base_filters=2, depth=2, patch_size=[32], progress="none", tensorboard=False, device="cpu")
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    # lr ~0: the patch score never improves after epoch 1, so patience 2 stops the run at epoch 3,
    # which is validated whole although the schedule says every 10 epochs
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [math.isnan(float(r["val_score"])) for r in rows] == [True, True, False]
    assert len({r["val_patch_iou"] for r in rows}) == 1
    state = json.loads((run / "last" / "state.json").read_text())["train"]
    assert state["bad_epochs"] == 2 and state["best_epoch"] == 3 and (run / "model.safetensors").is_file()
