"""Splits (per case, deterministic), training loaders (2D, 2D slices of volumes, 3D patches;
same batches for an epoch whether resumed or not), augmentation (seeded, image and label
transformed together), foreground oversampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unetpp.data import open_dataset
from unetpp.data.loading.augment import augment, context_size
from unetpp.data.loading.pipeline import crop, make_split, make_train_loader


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_split_fraction_is_per_case_and_deterministic(synthetic_2d):
    ds = open_dataset(synthetic_2d)
    split = make_split(ds, val_fraction=0.34, seed=3)
    assert split == make_split(ds, val_fraction=0.34, seed=3)
    assert len(split["val"]) == 2 and split["test"] == []
    assert sorted(split["train"] + split["val"]) == ds.case_names
    assert not set(split["train"]) & set(split["val"])
    assert any(make_split(ds, val_fraction=0.34, seed=s)["val"] != split["val"] for s in range(4, 10))
    json.dumps(split)  # stored in the run folder


def test_k_folds_cover_every_case_once(synthetic_2d):
    ds = open_dataset(synthetic_2d)
    folds = [make_split(ds, folds=3, fold=k, seed=0) for k in range(3)]
    vals = [c for f in folds for c in f["val"]]
    assert sorted(vals) == ds.case_names and all(len(f["val"]) == 2 for f in folds)
    with pytest.raises(ValueError, match="fold must be in 0..2"):
        make_split(ds, folds=3, fold=3)


def test_default_split_is_honoured(tmp_path, synthetic_2d):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(synthetic_2d, root)
    (root / "splits.json").write_text(json.dumps(
        {"train": ["case_000", "case_001", "case_002", "case_003"], "val": ["case_004"], "test": ["case_005"]}))
    ds = open_dataset(root)
    assert make_split(ds)["val"] == ["case_004"] and ds.default_split["test"] == ["case_005"]
    # k folds re-split train+val but never touch the test cases
    for k in range(2):
        split = make_split(ds, folds=2, fold=k)
        assert split["test"] == ["case_005"] and "case_005" not in split["train"] + split["val"]


def test_loader_2d_shapes_and_resume_determinism(synthetic_2d):
    ds = open_dataset(synthetic_2d)
    kwargs = dict(dims=2, patch_size=(32, 32), batch_size=3, seed=7, samples_per_epoch=6)
    loader = make_train_loader(ds, ds.case_names, **kwargs)
    assert len(loader) == 2
    first = batches(loader, 0)
    x, y = first[0]
    assert x.shape == (3, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (3, 32, 32) and y.dtype == torch.int64 and set(y.unique().tolist()) <= {0, 1}
    epoch2 = batches(loader, 2)
    # a "resumed" run: a new loader that starts at epoch 2
    resumed = make_train_loader(ds, ds.case_names, **kwargs)
    assert same(batches(resumed, 2), epoch2)
    assert not same(epoch2, first)
    assert same(batches(loader, 0), first)  # going back gives epoch 0 again


def test_loader_same_batches_with_worker_processes(synthetic_2d):
    ds = open_dataset(synthetic_2d)
    kwargs = dict(dims=2, patch_size=(24, 24), batch_size=2, seed=1, samples_per_epoch=4)
    inline = batches(make_train_loader(ds, ds.case_names[:3], **kwargs), 1)
    workers = batches(make_train_loader(ds, ds.case_names[:3], num_workers=1, **kwargs), 1)
    assert same(inline, workers)


def test_slices_and_patches_from_volumes(synthetic_3d):
    ds = open_dataset(synthetic_3d)  # 3 cases of 16x32x32
    loader2d = make_train_loader(ds, ds.case_names, dims=2, patch_size=(32, 32), batch_size=4, seed=0,
                                 augment=False)
    x, y = next(iter(loader2d))
    assert x.shape == (4, 1, 32, 32) and y.shape == (4, 32, 32)
    # default epoch length: enough patches to cover every voxel once (16 slices x 3 cases)
    assert loader2d.samples_per_epoch == 48
    # every 2D sample is an actual slice of a case (no augmentation, patch = slice)
    cases = [ds.load_case(n) for n in ds.case_names]
    slices = {c.image[0, z].tobytes() for c in cases for z in range(16)}
    assert all(x[i, 0].numpy().tobytes() in slices for i in range(4))
    loader3d = make_train_loader(ds, ds.case_names, dims=3, patch_size=(8, 16, 16), batch_size=2, seed=0)
    x, y = next(iter(loader3d))
    assert x.shape == (2, 1, 8, 16, 16) and y.shape == (2, 8, 16, 16)
    with pytest.raises(ValueError, match="patch_size must have 3"):
        make_train_loader(ds, ds.case_names, dims=3, patch_size=(16, 16))


def test_dims3_on_2d_data_is_refused(synthetic_2d):
    ds = open_dataset(synthetic_2d)
    with pytest.raises(ValueError, match="need 3D data"):
        make_train_loader(ds, ds.case_names, dims=3, patch_size=(8, 8, 8))


def test_patches_larger_than_images_are_padded(synthetic_2d):
    ds = open_dataset(synthetic_2d)  # 48x48 images
    x, y = next(iter(make_train_loader(ds, ds.case_names, patch_size=(64, 64), batch_size=2, augment=False)))
    assert x.shape == (2, 1, 64, 64) and (y[:, :8, :] == 0).all()


def test_foreground_oversampling(tmp_path):
    """A case whose foreground is one small square: without oversampling, random patches
    rarely contain it; with it, about a third (or all, at fraction 1) do."""
    from unetpp.data.files.formats import write_file

    img = np.zeros((96, 96), np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    mask[80:84, 10:14] = 255
    img[mask > 0] = 200
    write_file(tmp_path / "images" / "a.png", img, {})
    write_file(tmp_path / "masks" / "a.png", mask, {})
    ds = open_dataset(tmp_path)

    def share(fraction):
        loader = make_train_loader(ds, ["a"], patch_size=(16, 16), batch_size=30, seed=0,
                                   augment=False, foreground_fraction=fraction, samples_per_epoch=30)
        _, y = next(iter(loader))
        return float((y.flatten(1).max(1).values > 0).float().mean())

    assert share(1.0) == 1.0
    assert share(0.0) < 0.2
    assert 0.2 < share(1 / 3) < 0.7


def test_augment_is_seeded_and_moves_image_and_label_together():
    rng = np.random.default_rng(0)
    window = context_size((32, 32))
    image = rng.normal(size=(1, *window)).astype(np.float32)
    label = np.zeros(window, np.int64)
    label[20:30, 15:35] = 1
    image[0][label > 0] += 100.0  # the labelled region is unmistakably bright
    outs = [augment(image, label, (32, 32), seed=s) for s in range(40)]
    a, b = augment(image, label, (32, 32), seed=5), outs[5]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert len({o[0].tobytes() for o in outs}) > 30  # different seeds, different samples
    for img, lab in outs:
        assert img.shape == (1, 32, 32) and lab.shape == (32, 32) and lab.dtype == np.int64
        inside, outside = img[0][lab > 0], img[0][lab == 0]
        if inside.size > 20 and outside.size > 20:  # label and image stayed aligned
            assert np.median(inside) > np.median(outside) + 30


def test_augment_3d():
    window = context_size((8, 16, 16))
    image = np.random.default_rng(0).normal(size=(2, *window)).astype(np.float32)
    label = (image[0] > 1).astype(np.int64)
    for s in range(10):
        img, lab = augment(image, label, (8, 16, 16), seed=s)
        assert img.shape == (2, 8, 16, 16) and lab.shape == (8, 16, 16) and np.isfinite(img).all()


def test_crop_pads_outside():
    a = np.arange(16).reshape(4, 4)
    c = crop(a, (-1, 2), (3, 3))
    assert c.tolist() == [[0, 0, 0], [2, 3, 0], [6, 7, 0]]
