"""One CT stored in any axis order or direction trains and predicts the same, in world space."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

import unetpp
from unetpp.data import open_dataset
from unetpp.data.cases.orientation import from_canonical, reorientation, to_canonical
from unetpp.errors import DataError
from unetpp.inference.predict import predict_inputs
from unetpp.run import make_run_config, save_weights, write_run_config

RAS = np.diag([0.8, 0.9, 2.5, 1.0])  # x: R, y: A, z: S


def variants(data: np.ndarray):
    """The same volume (x, y, z as stored in RAS) stored three other ways, with matching affines."""
    yield "ras", data, RAS
    # z first, then y, then x (axes reversed in the file)
    yield "zyx", np.transpose(data, (2, 1, 0)), RAS[:, [2, 1, 0, 3]]
    # x flipped (stored L to R reversed) and y, z swapped
    flip = data[::-1].transpose(0, 2, 1)
    aff = RAS[:, [0, 2, 1, 3]].copy()
    aff[:, 0] *= -1
    aff[:3, 3] = RAS[:3, :3] @ [data.shape[0] - 1, 0, 0]
    yield "lsa", flip, aff


def canonical_world(path) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)


def test_reorientation_is_exact_and_undone():
    rng = np.random.default_rng(0)
    data = rng.random((6, 7, 5)).astype(np.float32)
    arrays = {}
    for name, stored, aff in variants(data):
        array = np.ascontiguousarray(stored.transpose(2, 1, 0))[None]  # the readers' (C, Z, Y, X)
        r = reorientation({"affine": aff.tolist(), "format": "nifti"})
        canon = to_canonical(array, r)
        arrays[name] = canon
        assert np.array_equal(from_canonical(canon, r), array)
    assert all(np.array_equal(a, arrays["ras"]) for a in arrays.values())
    assert arrays["ras"].shape == (1, 5, 7, 6)  # (S, A, R): axial slices along axis 0


def test_an_oblique_volume_without_a_clear_axis_is_refused():
    c, s = np.cos(np.radians(45)), np.sin(np.radians(45))
    aff = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    with pytest.raises(DataError, match="scan.nii.gz: an oblique volume"):
        reorientation({"affine": aff.tolist(), "format": "nifti", "source": ["scan.nii.gz"]})


@pytest.mark.parametrize("dims", [2, 3])
def test_three_storage_orders_give_the_same_mask_in_world_space(tmp_path, dims):
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(20, 18, 8)) * 50 + 40).astype(np.float32)
    torch.manual_seed(0)
    model = unetpp.create_model("unetpp", dims=dims, depth=2, base_filters=4)
    config = {"channels": 1, "spatial_dims": 3, "classes": 1, "target_spacing": [2.5, 0.9, 0.8],
              "normalization": [{"scheme": "zscore"}], "labels": {"0": "background", "1": "liver"}}
    run = tmp_path / "run"
    run.mkdir()
    write_run_config(run, make_run_config(model.config, data=config,
                                          train={"patch_size": [16] * dims}))
    save_weights(run / "model.safetensors", model)
    predictor = unetpp.load(run)
    masks, probs = {}, {}
    for name, stored, aff in variants(data):
        nib.save(nib.Nifti1Image(stored, aff), str(tmp_path / f"{name}.nii.gz"))
        outcomes = predict_inputs(predictor, [str(tmp_path / f"{name}.nii.gz")], tmp_path / "out", probabilities=True)
        assert [o.error for o in outcomes] == [None]
        written = nib.load(str(tmp_path / "out" / f"{name}.nii.gz"))
        assert written.shape == stored.shape and np.allclose(written.affine, aff)
        masks[name] = canonical_world(tmp_path / "out" / f"{name}.nii.gz")
        probs[name] = canonical_world(tmp_path / "out" / f"{name}_probs.nii.gz")
    assert probs["ras"].std() > 1e-4  # the outputs vary over the volume: equality below is not trivial
    for name in masks:
        assert np.array_equal(masks[name], masks["ras"]), name
        assert np.allclose(probs[name], probs["ras"], atol=1e-6), name


def test_a_dataset_of_mixed_orientations_trains_on_axial_slices(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    data = rng.normal(size=(12, 10, 6)).astype(np.float32)
    label = np.zeros((12, 10, 6), np.uint8)
    label[3:9, 2:7, 1:5] = 1
    for (name, stored, aff), (_, lab, _) in zip(variants(data), variants(label)):
        nib.save(nib.Nifti1Image(stored, aff), str(tmp_path / "imagesTr" / f"{name}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "labelsTr" / f"{name}.nii.gz"))
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}))
    for prepared in (True, False):
        ds = open_dataset(tmp_path, prepared=prepared)
        assert ds.target_spacing == [2.5, 0.9, 0.8]
        cases = [ds.load_case(n) for n in ds.case_names]
        assert all(c.image.shape == (1, 6, 10, 12) for c in cases)
        assert all(np.array_equal(c.image, cases[0].image) and np.array_equal(c.label, cases[0].label)
                   for c in cases)
