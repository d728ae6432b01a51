"""Shared fixtures. Data fixtures: tiny synthetic datasets written once per test session."""

from __future__ import annotations

import os

import pytest

# Qt (the napari plugin's tests) without a screen
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from unetpp.data.samples.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_2d(tmp_path_factory):
    """Image folders: 6 gray 48x48 PNG cases with 0/255 masks (binary)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn2d"), layout="image-folders",
                                   n_cases=6, size=48, dims=2, seed=0)


@pytest.fixture(scope="session")
def synthetic_3d(tmp_path_factory):
    """nnU-Net layout: 3 one-channel 16x32x32 NIfTI volumes (binary), spacing 2x1x1 mm."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn3d"), layout="nnunet",
                                   n_cases=3, size=(16, 32, 32), dims=3, seed=0,
                                   spacing=(2.0, 1.0, 1.0))
