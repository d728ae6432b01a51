"""nnU-Net's ignore label and MRI z-scores inside the non-zero mask."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch

from unetpp.data import open_dataset
from unetpp.data.cases.normalize import apply_normalization
from unetpp.metrics import case_scores
from unetpp.training.loss import segmentation_loss


def _volumes(root, labels, make):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        image, label = make(rng)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"c{i}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"c{i}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": labels,
                                                   "file_ending": ".nii.gz"}))
    return root


def test_the_ignore_label_is_not_a_class_and_counts_for_nothing(tmp_path):
    def make(rng):
        image = rng.normal(size=(16, 16, 8)).astype(np.float32)
        label = np.zeros((16, 16, 8), np.uint8)
        label[4:10, 4:10, 2:6] = 1
        label[12:, :, :] = 2  # unannotated region
        return image, label

    root = _volumes(tmp_path / "ign", {"background": 0, "lesion": 1, "ignore": 2}, make)
    for prepared in (True, False):
        ds = open_dataset(root, prepared=prepared)
        assert ds.classes == 1 and ds.ignore_label == 2 and ds.labels == {0: "background", 1: "lesion"}
        assert ds.data_config()["ignore_label"] == 2
        assert 2 in np.unique(ds.load_case("c0").label)  # kept in the maps, left out downstream
    # the loss does not see ignored voxels: any logits there give the same loss
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :4] = 1
    target[0, 6:] = 2
    a, b = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    b[..., :6, :] = a[..., :6, :]
    assert torch.allclose(segmentation_loss(a, target, 1, ignore=2), segmentation_loss(b, target, 1, ignore=2))
    # nor do the scores
    ref = np.zeros((8, 8), np.int64)
    ref[:4] = 1
    ref[6:] = 2
    pred = (ref == 1).astype(np.int64)
    pred[6:] = 1  # "wrong" only where nothing is known
    assert case_scores(pred, ref, 1, ignore=2)["dice"] == 1.0


def test_mri_with_a_zero_background_is_normalised_inside_the_non_zero_mask(tmp_path):
    def make(rng):
        image = np.zeros((16, 16, 8), np.float32)
        image[4:12, 4:12, 2:6] = rng.normal(500, 50, size=(8, 8, 4))  # a skull-stripped brain
        return image, (image > 520).astype(np.uint8)

    root = _volumes(tmp_path / "mri", {"background": 0, "tumour": 1}, make)
    ds = open_dataset(root)
    assert ds.normalization[0] == {"scheme": "zscore", "nonzero": True}
    image = ds.load_case("c0").image[0]
    raw = np.asanyarray(nib.load(str(root / "imagesTr" / "c0_0000.nii.gz")).dataobj).transpose(2, 1, 0)
    inside = raw != 0
    assert np.all(image[~inside] == 0)
    assert abs(float(image[inside].mean())) < 1e-5 and abs(float(image[inside].std()) - 1) < 1e-4
    # a full-field image keeps the plain per-case z-score
    full = np.random.default_rng(1).normal(size=(1, 6, 6)).astype(np.float32)
    assert np.allclose(apply_normalization(full, [{"scheme": "zscore"}]).std(), 1, atol=1e-4)


def test_label_names_travel_with_the_masks(tmp_path):
    import unetpp
    from unetpp.data.samples.synthetic import write_synthetic_dataset
    from unetpp.inference.predict import predict_inputs
    from unetpp.run import make_run_config, save_weights, write_run_config

    data = write_synthetic_dataset(tmp_path / "d", n_cases=2, size=32, seed=0)
    ds = open_dataset(data)
    model = unetpp.create_model("unetpp", depth=2, base_filters=4)
    run = tmp_path / "run"
    run.mkdir()
    write_run_config(run, make_run_config(model.config, data=ds.data_config(), train={"patch_size": [32]}))
    save_weights(run / "model.safetensors", model)
    image = sorted((data / "images").iterdir())[0]
    predict_inputs(unetpp.load(run), [str(image)], tmp_path / "out")
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == {"0": "background", "1": "foreground"}
    lines = (tmp_path / "out" / "labels.txt").read_text().splitlines()
    assert lines[0].startswith("# ITK-SNAP Label Description File") and lines[-1].endswith('"foreground"')
    assert (tmp_path / "out" / "labels.csv").read_text().splitlines() == [
        "value,name,colour,code", "0,background,#000000,", "1,foreground,#ff0000,"]
