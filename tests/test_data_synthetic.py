"""The synthetic generator other tests rely on: seeded, shaped as asked, in every layout."""

from __future__ import annotations

import numpy as np
import pytest

from unetpp.data import open_dataset
from unetpp.data.samples.synthetic import make_blobs, write_synthetic_dataset


def test_make_blobs_is_seeded_and_shaped():
    a_img, a_lab = make_blobs((40, 48), seed=1)
    b_img, b_lab = make_blobs((40, 48), seed=1)
    c_img, _ = make_blobs((40, 48), seed=2)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab) and not np.array_equal(a_img, c_img)
    assert a_img.shape == (1, 40, 48) and a_img.dtype == np.float32 and a_lab.dtype == np.int64
    assert 0.02 < (a_lab > 0).mean() < 0.6  # some nuclei, mostly background
    # nuclei are brighter than the background, despite noise and blur
    assert a_img[0][a_lab > 0].mean() > a_img[0][a_lab == 0].mean() + 0.3


def test_make_blobs_3d_multichannel_multiclass():
    img, lab = make_blobs((12, 20, 20), seed=0, channels=2, classes=3, n_blobs=12)
    assert img.shape == (2, 12, 20, 20) and lab.shape == (12, 20, 20)
    assert set(np.unique(lab)) == {0, 1, 2}


@pytest.mark.parametrize("layout,dims,channels,classes", [
    ("image-folders", 2, 3, 1), ("image-folders", 3, 1, 2), ("nnunet", 2, 1, 1),
    ("nnunet", 3, 2, 3), ("dsb2018", 2, 1, 1)])
def test_every_layout_reads_back(tmp_path, layout, dims, channels, classes):
    size = 24 if dims == 2 else (6, 16, 16)
    root = write_synthetic_dataset(tmp_path, layout=layout, n_cases=2, size=size, dims=dims,
                                   channels=channels, classes=classes)
    ds = open_dataset(root)
    assert ds.layout == layout and ds.spatial_dims == dims and len(ds) == 2
    assert ds.classes == (1 if classes <= 2 else classes)  # labels {0, 1}: binary, one logit
    assert ds.channels == (3 if layout == "dsb2018" else channels)
    case = ds.load_case("case_000")
    assert case.image.shape[1:] == case.label.shape == ((24, 24) if dims == 2 else (6, 16, 16))
    # the label read back is the generated one
    _, expected = make_blobs(case.label.shape, seed=0, channels=channels, classes=classes)
    assert np.array_equal(case.label, expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="layout must be one of"):
        write_synthetic_dataset("/tmp/never", layout="voc")
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        write_synthetic_dataset("/tmp/never", dims=4)
