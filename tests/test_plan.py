"""Anisotropic volumes: the patch is planned in millimetres and the pooling per axis."""

from __future__ import annotations

import json

from unetpp.data.synthetic import write_synthetic_dataset
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
