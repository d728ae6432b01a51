"""The native-resolution path on a known shape: probabilities are resampled, then the argmax."""

from __future__ import annotations

import numpy as np
import torch

from unetpp.data.io import read_input, to_input_grid, write_mask
from unetpp.data.files.formats import read_file, write_file
from unetpp.inference.engine import probabilities_to_labels
from unetpp.metrics import dice_iou


def sphere(shape, spacing, radius_mm, centre_mm):
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm**2


def test_a_sphere_on_an_anisotropic_grid_comes_back_as_the_analytic_sphere(tmp_path):
    spacing, shape = (4.0, 1.0, 1.0), (12, 40, 40)  # (z, y, x): 4 mm slices
    native = sphere(shape, spacing, radius_mm=13.0, centre_mm=(24.0, 20.0, 20.0))
    path = write_file(tmp_path / "scan.nii.gz", native.astype(np.float32),
                      {"affine": np.diag([1.0, 1.0, 4.0, 1.0]).tolist()})
    config = {"channels": 1, "spatial_dims": 3, "classes": 1, "target_spacing": [1.0, 1.0, 1.0],
              "normalization": [{"scheme": "none"}]}
    image, meta = read_input(path, config)
    assert tuple(meta["grid_shape"]) == (48, 40, 40)  # resampled to 1 mm
    # a perfect network on the 1 mm grid: the analytic sphere's probability there
    grid_probs = sphere((48, 40, 40), (1.0, 1.0, 1.0), 13.0, (24.0, 20.0, 20.0)).astype(np.float32)[None]
    probs = to_input_grid(grid_probs, meta)
    assert probs.shape == (1, *shape)
    labels = probabilities_to_labels(torch.from_numpy(probs), 1).numpy()
    dice = dice_iou(labels, native)[0]
    assert dice > 0.97, dice  # the analytic mask, up to the partial voxels at the border
    # the mask written is the argmax of the written probabilities, at the input's geometry
    out = write_mask(tmp_path / "mask.nii.gz", labels, meta)
    back, back_meta = read_file(out)
    assert np.array_equal(back[0], labels) and np.allclose(back_meta["affine"], np.diag([1.0, 1.0, 4.0, 1.0]))
