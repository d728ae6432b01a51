"""Datasets: readers for every supported layout, checks, normalisation, loaders, samples.

    from unetpp.data import open_dataset, check_dataset
    ds = open_dataset("nuclei-2d")            # or a folder in any supported layout
    case = ds.load_case(ds.case_names[0])     # Case(name, image (C, *S) float32, label, meta)

See ``DEVELOPING.md`` for the interfaces, and the modules for details:
:mod:`.layouts` (which files form a case), :mod:`.formats` (one file, any format),
:mod:`.check` (validation), :mod:`.normalize`, :mod:`.resample`, :mod:`.dataset`
(``SegDataset``), :mod:`.open` (``open_dataset``), :mod:`.prepare` (``unetpp data prepare``)
and :mod:`.prepared` (``PreparedDataset``, memory maps), :mod:`.io` (``read_input``/``write_mask``), :mod:`.pipeline` (splits and
training loaders), :mod:`.augment`, :mod:`.samples` (``unetpp data fetch``),
:mod:`.synthetic` (test data).
"""

from __future__ import annotations

from ..errors import DataError
from .check import check_dataset
from .dataset import Case, SegDataset
from .home import data_home
from .open import open_dataset

__all__ = ["Case", "DataError", "SegDataset", "check_dataset", "data_home", "open_dataset"]
