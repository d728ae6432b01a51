"""The TotalSegmentator 2.18.0 samples (``unetpp data fetch ct-abdomen | ct-dicom``): their
writers, called by :func:`unetpp.data.samples.catalog.fetch` with the SHA-256-checked files.

- ``ct-abdomen``: NIfTI CT at 3 mm, cut into two slabs (train/val) + the whole scan in imagesTs.
- ``ct-dicom``: the 20 Siemens CT slices of ``tests/reference_files/example_ct_dicom/`` copied
  byte for byte as one DICOM series folder ``imagesTr/ctdicom_0000/``, and
  ``example_seg_dicom.nii.gz`` as ``labelsTr/ctdicom.nii.gz``. That label map is stored with
  its rows the other way round from the DICOM rows (LAS, as dcm2niix writes it); it is
  re-indexed onto the series' grid (an exact flip/transpose found from the two affines, no
  interpolation) and written with the series' affine, so image and mask share one geometry
  and every labelled voxel keeps its world position. Reading the series needs pydicom.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ...io import atomic_write_bytes, atomic_write_json

LIVER = 5  # TotalSegmentator "total" task: 5 = liver (totalsegmentator/map_to_binary.py)
REF = "tests/reference_files/"
MAP_TO_BINARY = {"totalsegmentator/map_to_binary.py": "ee19259dacd4d52d424849b8bac44a5a5d41c895426bf7c048c69203a1a3777d"}
_SLICES = """
4c5633409fa4d3edf6871e5684e9e1b10325b4d0949997582f43b23a684d0dc4 16573
9148f91127145497f4d6c6f0780f9452504cd7fe5088ec8f2bf2b21800c731ff 16574
3edaccec892e0821440cbefe3d5465923bb5146c316cbaf58f578d962f120484 16575
9b68685f0c5f9bfcfc2c397f4fadf431da288d7422ca72e7d9031d4e039418cd 16576
c8d2c0dc05e414d47d3652c658d8fecc20c3cf7ce106c10d84ad033d39700bcc 16577
0ee2c1d58e06cedd91483ca35c04da3c26fea0dbe88aaf1eaa950b57f38357d6 16578
c76cf0818d4215b92883d109b8a0b62ae0a4d81637eed98738f9c62b6f49bb72 16579
106e20514fd3ca66895e14dbfba96c01c1195e4ed890c035d4368dd71f3ee116 16580
5804e6c4a50f4d5b20040ac82a1c6d79cba5f7267d71f10b0a1b49eda1bc13ff 16581
bef219a16b22949224de4581a2d288863b2585d29556ac24021f03307378cb39 16582
9de5a49e880417d5330fe299115fdb95831a98234216a31c5c0e9a0be9a6dcd3 16583
fa00c8d81ec8aa0d0cfc4e05343782c3a75a4c60df8cccf9ff5db42ac454e61d 16584
ebba0900b0f728db0c94c769db3e5ca38a0cd916386a727541eb3e56350770e5 16585
f084ec95cfba25efb7cbe86e8b4966b051904037e8385f58fe398c5475693b89 16586
20a9b88a30ea8a824ac65cb19c1ebf80964b41ff476497706ff2a286e5f27a25 16587
2a515d3b60f3ff733aac1fc5414206c331e3ed2ccef8c2e0c30b844c538e3ed8 16588
5880669f1bc36b09cad4bdf487992ec415da0afa014e927efc282e612f467574 16589
7af4dd5b5766a87368939116b91f90d989820e7b2237fb9bcd10d47db0960875 16590
671306f4462ae881976c18c6a2d8a1567279fb0166ef0e9e8a41271fac9c1cbb 16591
fdb76ad5272f074e07cc81509604fd163f2f8a9903d34b16ba6f078250373c51 16592
"""
#: member path -> SHA-256 (computed from the real sdist): the 20 slices, the label map, the class map
CT_DICOM_FILES: dict[str, str] = {
    **{f"{REF}example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.300000221208081134280000{n}": sha
       for sha, n in (line.split() for line in _SLICES.split("\n") if line.strip())},
    REF + "example_seg_dicom.nii.gz": "98af7f6536c316ff9084054f20956cd3e28af376b81d582d269fbea2744878fc",
    **MAP_TO_BINARY,
}


def _total_class_map(path: Path) -> dict[int, str]:
    """TotalSegmentator's ``class_map["total"]`` read with ``ast`` (the file is not run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            return {int(k): str(v) for k, v in ast.literal_eval(node.value)["total"].items()}
    raise DataError(f"{path}: no class_map found")


LIVER = 5  # TotalSegmentator "total" task: 5 = liver (totalsegmentator/map_to_binary.py)


def _relabel(labels: np.ndarray, files: dict[str, Path], all_labels: bool) -> tuple[np.ndarray, dict[str, int], dict[str, int]]:
    """TotalSegmentator labels -> (label map, dataset.json labels, our value -> theirs): the
    liver alone (0/1), or with ``all_labels`` every organ present, renumbered 1..K-1 in
    TotalSegmentator's order."""
    class_map = _total_class_map(files["totalsegmentator/map_to_binary.py"])
    if all_labels:
        present = [v for v in np.unique(labels).tolist() if v != 0]
        lut = np.zeros(int(labels.max()) + 1, np.int64)
        for new, old in enumerate(present, start=1):
            lut[old] = new
        names = {"background": 0, **{class_map.get(old, f"label{old}"): new for new, old in enumerate(present, 1)}}
        return lut[labels], names, {str(new): old for new, old in enumerate(present, 1)}
    return (labels == LIVER).astype(np.int64), {"background": 0, "liver": 1}, {"1": LIVER}


def write_ct_abdomen(sample: Any, files: dict[str, Path], dest: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The 3 mm CT with its TotalSegmentator labels, cut into two slabs along z (upper two
    thirds for training, the rest for validation: one scan cannot be split by case); the
    whole scan (112 slices, no labels; the labelled 30 are its top slices) goes to
    ``imagesTs`` for trying prediction. Liver only by default;
    ``all_labels`` keeps every organ present, renumbered 1..K-1 in TotalSegmentator's order."""
    import nibabel as nib

    ref = "tests/reference_files/"
    ct = nib.load(str(files[ref + "example_ct_sm.nii.gz"]))
    seg = nib.load(str(files[ref + "example_seg.nii.gz"]))
    image = np.asanyarray(ct.dataobj)
    labels = np.asanyarray(seg.dataobj).astype(np.int64)
    if image.shape != labels.shape or not np.allclose(ct.affine, seg.affine):
        raise DataError("ct-abdomen: CT and segmentation grids differ; the sample changed?")
    out, names, source_labels = _relabel(labels, files, bool(options.get("all_labels")))
    z = image.shape[2]
    cut = (2 * z) // 3
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for part, (z0, z1) in (("train", (0, cut)), ("val", (cut, z))):
        name = f"abdomen_z{z0:03d}"
        # a slab keeps its world position: shift the origin by z0 slices along the z axis
        affine = ct.affine.copy()
        affine[:3, 3] += ct.affine[:3, 2] * z0
        for data, folder, suffix, dtype in ((image, "imagesTr", "_0000", np.int16),
                                            (out, "labelsTr", "", np.uint8)):
            img = nib.Nifti1Image(np.asarray(data[:, :, z0:z1], dtype=dtype), affine)
            img.header.set_xyzt_units("mm")
            atomic_write_bytes(dest / folder / f"{name}{suffix}.nii.gz", _gz(img.to_bytes()))
        split[part].append(name)
    full = nib.load(str(files[ref + "example_ct.nii.gz"]))
    full_img = nib.Nifti1Image(np.asanyarray(full.dataobj).astype(np.int16), full.affine)
    full_img.header.set_xyzt_units("mm")
    atomic_write_bytes(dest / "imagesTs" / "abdomen_full_0000.nii.gz", _gz(full_img.to_bytes()))
    atomic_write_json(dest / "splits.json", split)
    return {"channel_names": {"0": "CT"}, "labels": names, "numTraining": 2,
            "file_ending": ".nii.gz", "source_labels": source_labels,
            "labels_note": "made by TotalSegmentator (automatic), not manual",
            "split_rule": f"one scan: slices z<{cut} train, z>={cut} val",
            "test_input_note": "imagesTs/abdomen_full is the whole scan; its last 30 slices are "
                               "the labelled slabs, so it shows predictions, not independent scores"}


def _gz(raw: bytes) -> bytes:
    import gzip

    return gzip.compress(raw, compresslevel=6, mtime=0)


def onto_grid(data: np.ndarray, affine: np.ndarray, target: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``data`` (file order x, y, z) with ``affine`` re-indexed onto the grid ``target``/``shape``
    (file order) when the two grids are the same voxels up to axis order and flips; else DataError."""
    m = np.linalg.inv(np.asarray(target, float)) @ np.asarray(affine, float)
    perm = np.rint(m[:3, :3])
    if not np.allclose(m[:3, :3], perm, atol=1e-3) or sorted(np.abs(perm).sum(0).tolist()) != [1, 1, 1] \
            or not np.allclose(m[:3, 3], np.rint(m[:3, 3]), atol=1e-3):
        raise DataError(f"{what}: its grid is not the image's up to flips and axis order; the sample changed?")
    axes = [int(np.flatnonzero(perm[i])[0]) for i in range(3)]   # target axis i <- source axis axes[i]
    out = np.transpose(data, axes)
    for i in range(3):
        if perm[i, axes[i]] < 0:
            out = out[(slice(None),) * i + (slice(None, None, -1),)]
    offset = np.rint(m[:3, 3]).astype(int) - np.asarray([out.shape[i] - 1 if perm[i, axes[i]] < 0 else 0 for i in range(3)])
    if tuple(out.shape) != tuple(shape) or np.any(offset != 0):
        raise DataError(f"{what}: covers {tuple(out.shape)} voxels at offset {offset.tolist()}, the image "
                        f"{tuple(shape)} at 0; the sample changed?")
    return np.ascontiguousarray(out)


def write_ct_dicom(sample: Any, files: dict[str, Path], dest: Path, options: dict[str, Any]) -> dict[str, Any]:
    """One case ``ctdicom``: ``imagesTr/ctdicom_0000/`` (the DICOM series) and
    ``labelsTr/ctdicom.nii.gz`` on the series' grid (module docstring)."""
    import nibabel as nib

    from ..files.dicom import read_headers

    folder = dest / "imagesTr" / "ctdicom_0000"
    for member, path in files.items():
        if member.startswith(REF + "example_ct_dicom/"):
            atomic_write_bytes(folder / Path(member).name, path.read_bytes())
    series = read_headers(folder)
    seg = nib.load(str(files[REF + "example_seg_dicom.nii.gz"]))
    grid = series.shape[::-1]  # file order: column, row, slice
    labels = onto_grid(np.asanyarray(seg.dataobj).astype(np.int64), seg.affine, series.affine, grid,
                       "ct-dicom: example_seg_dicom.nii.gz")
    out, names, source_labels = _relabel(labels, files, bool(options.get("all_labels")))
    img = nib.Nifti1Image(out.astype(np.uint8), series.affine)
    img.header.set_xyzt_units("mm")
    img.header.set_sform(series.affine, code=1)
    img.header.set_qform(series.affine, code=1)
    atomic_write_bytes(dest / "labelsTr" / "ctdicom.nii.gz", _gz(img.to_bytes()))
    return {"channel_names": {"0": "CT"}, "labels": names, "numTraining": 1, "file_ending": ".nii.gz",
            "source_labels": source_labels, "image_format": "DICOM series folder (imagesTr/ctdicom_0000/)",
            "labels_note": "made by TotalSegmentator (automatic), not manual; re-indexed onto the "
                           "series' grid (rows flipped), same world positions",
            "series": {"slices": series.shape[0], "spacing": series.spacing}}
