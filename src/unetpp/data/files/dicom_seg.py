"""DICOM-SEG output for a mask predicted on a DICOM series (``unetpp predict --format dicom-seg``).

``write_dicom_seg(path, labels, meta, names)`` writes one DICOM Segmentation object (highdicom;
``pip install 'unetpp[dicom]'``):

- it references the source series: the same Study, Frame of Reference and patient, and each
  frame names the slice (SOP Instance UID) it was derived from, so a PACS or viewer (3D
  Slicer, OHIF) lays it over the series;
- one segment per foreground label of the run (``data.labels``: ``{"1": "liver", ...}``), its
  SegmentLabel the label's name; the segmented property type is the SNOMED code of that
  name when DICOM's code dictionary has one (``liver`` -> SCT 10200004 Liver, category
  Anatomical Structure), else the generic Tissue; algorithm type AUTOMATIC, named unetpp;
- BINARY segmentation type, frames that hold no voxel of a segment are left out (highdicom's
  default); an all-empty mask still writes one empty frame, so the file always exists.

``read_dicom_seg(path, meta)`` reads such a file back as a label map on the series' grid
(array order slice, row, column), for checks and round trips.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ...io import atomic_write_bytes
from .dicom import INSTALL, need_pydicom


def _highdicom(where: Path) -> Any:
    try:
        import highdicom
    except ImportError:
        raise DataError(f"{where}: writing DICOM-SEG needs highdicom: {INSTALL}") from None
    return highdicom


def _source_headers(meta: dict[str, Any], path: Path) -> list[Any]:
    """The series' slice headers (pixel data not read), in the order of the label map's slices."""
    info = meta.get("dicom") or {}
    if meta.get("format") != "dicom" or not info.get("files"):
        raise DataError(f"{path}: DICOM-SEG needs a DICOM series as input ({meta.get('source', ['?'])[0]} is "
                        f"{meta.get('format', '?')}); use --format nifti")
    pydicom = need_pydicom(path)
    folder = Path(info["folder"])
    headers = [pydicom.dcmread(folder / name, stop_before_pixels=True) for name in info["files"]]
    missing = sorted({k for ds in headers for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                                      "SOPClassUID", "FrameOfReferenceUID")
                      if not str(ds.get(k, "") or "")})
    if missing:
        raise DataError(f"{folder}: the series has no {', '.join(missing)} (anonymised without new UIDs?); a "
                        "DICOM-SEG must reference them: use --format nifti")
    return headers


def _codes(name: str) -> tuple[Any, Any]:
    """(category, type) codes for a segment called ``name``."""
    from pydicom.sr.codedict import codes

    key = "".join(part.capitalize() for part in str(name).replace("-", "_").replace(" ", "_").split("_"))
    try:
        found = getattr(codes.SCT, key)
    except AttributeError:
        return codes.SCT.Tissue, codes.SCT.Tissue
    return codes.SCT.AnatomicalStructure, found


def write_dicom_seg(path: str | Path, labels: np.ndarray, meta: dict[str, Any], names: dict[int, str],
                    version: str = "") -> Path:
    """Write ``labels`` (slice, row, column: the series' grid, values 0..K-1) as DICOM-SEG.

    Args:
        path: the file to write (``.dcm``).
        labels: int label map on the series' own grid (``meta["shape"]``).
        meta: from :func:`unetpp.data.files.dicom.read_series` (via ``read_input``).
        names: ``{value: name}`` of the run's labels; 0 (background) is not a segment.
        version: the software version recorded in the file.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.shape != tuple(meta.get("shape", ())):
        raise DataError(f"{path}: labels of shape {labels.shape}; the series is {tuple(meta.get('shape', ()))}")
    headers = _source_headers(meta, path)
    hd = _highdicom(path)
    values = sorted(int(k) for k in names if int(k) > 0)
    extra = sorted(set(np.unique(labels).tolist()) - {0} - set(values))
    if extra:
        raise DataError(f"{path}: label values {extra} have no name in the run's labels {names}")
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="unetpp", version=version or "unknown",
                                                   family=codes.DCM.ArtificialIntelligence)
    segments = []
    for number, value in enumerate(values, start=1):
        category, kind = _codes(names[value])
        segments.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=str(names[value])[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    lut = np.zeros(max(values + [0]) + 1, np.uint16)
    for number, value in enumerate(values, start=1):
        lut[value] = number
    pixels = lut[labels.astype(np.int64)]
    pixels = pixels.astype(np.uint8 if len(values) < 256 else np.uint16)
    empty = not pixels.any()
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="unetpp",
        manufacturer_model_name="unetpp UNet++", software_versions=version or "unknown",
        device_serial_number="none", series_description="unetpp segmentation"[:64],
        omit_empty_frames=not empty)
    buf = io.BytesIO()
    seg.save_as(buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_dicom_seg(path: str | Path, meta: dict[str, Any]) -> tuple[np.ndarray, dict[int, str]]:
    """``(label map on the series' grid, {segment number: label})`` of a DICOM-SEG that
    references the series of ``meta`` (from ``read_series``)."""
    path = Path(path)
    hd = _highdicom(path)
    seg = hd.seg.segread(str(path))
    headers = _source_headers(meta, path)
    uids = [str(ds.SOPInstanceUID) for ds in headers]
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               skip_overlap_checks=True)
    names = {int(n): seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()}
    return np.asarray(labels), names


__all__ = ["read_dicom_seg", "write_dicom_seg"]
