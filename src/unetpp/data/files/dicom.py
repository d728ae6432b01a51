"""DICOM series: a folder of single-frame slices read as one volume, in world space.

``read_series(folder)`` returns what every reader in :mod:`.formats` returns (and
``read_file(folder)`` calls it): ``array`` (1, Z, Y, X) and ``meta`` with ``format``
``"dicom"``, ``spacing`` in array order (slice, row, column), ``affine`` (4x4, NIfTI's
convention: RAS+ world, voxel index order column, row, slice, the same as a NIfTI of the
series written by dcm2niix or by :func:`.formats.write_file` gives), ``nifti`` codes (so a
mask written for the series as NIfTI lands in the same world place) and ``dicom`` (UIDs,
the slice files in order, for DICOM-SEG output: :mod:`.dicom_seg`).

How a folder becomes a volume (pydicom; ``pip install 'unetpp[dicom]'``):

- Every visible file is read; hidden files, ``DICOMDIR`` (an index) and ``series.txt`` (see
  below) are the only ones passed over. A file that is not DICOM, has no pixel data, is
  multi-frame, or lacks the geometry attributes is refused, naming the file, and so is a
  folder inside the series folder. A long list of problems is cut after five lines.
- Series are told apart by SeriesInstanceUID: a folder holding more than one is refused,
  naming each UID and its number of files, unless ``<folder>/series.txt`` names the one to read.
- Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product
  of the ImageOrientationPatient row and column directions), never by file name or
  InstanceNumber; the slice spacing comes from those positions (SliceThickness is not a
  spacing). A one-slice series takes SpacingBetweenSlices, else SliceThickness, else 1 mm.
- Refused, one line each naming the folder or file: mixed series, two slices at one position,
  missing slices (a gap that is a multiple of the spacing), non-uniform spacing (more than 1%
  off), gantry tilt (positions off the slice normal by more than 0.1 degree), orientation,
  size or pixel spacing changing between slices, a compressed transfer syntax without an
  installed decoder, colour data.
- Values are RescaleSlope * stored + RescaleIntercept per slice (Hounsfield units for CT):
  int16/int32 when every slope and intercept is a whole number, float32 otherwise.

DICOM is LPS (x to the patient's left, y to the back); NIfTI is RAS: the affine is
``diag(-1, -1, 1, 1) @ lps`` so that both name the same world point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from .limits import _check_declared

#: Files in a series folder that are not slices.
NOT_SLICES = {"dicomdir", "series.txt"}
#: Relative tolerance on slice gaps; maximum angle between the slice positions and the normal.
GAP_TOLERANCE = 0.01
TILT_DEGREES = 0.1
#: Problem lines listed per series before the rest are counted.
MAX_LINES = 5
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
INSTALL = "pip install 'unetpp[dicom]'"


def need_pydicom(where: Path | str) -> Any:
    """The pydicom module, or a one-line :class:`DataError` naming ``where``."""
    try:
        import pydicom
    except ImportError:
        raise DataError(f"{where}: reading DICOM needs pydicom: {INSTALL}") from None
    return pydicom


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` name or the ``DICM`` marker after the 128-byte preamble (no pydicom needed)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:] == b"DICM"
    except OSError:
        return False


def slice_files(folder: Path) -> list[Path]:
    """The files of a series folder that should be slices (see the module docstring)."""
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.name.lower() not in NOT_SLICES and not p.is_dir())


def is_series_folder(folder: Path, look: int = 8) -> bool:
    """A folder whose first visible files include a DICOM file (a cheap look, no decoding)."""
    try:
        return folder.is_dir() and any(is_dicom_file(p) for p in slice_files(folder)[:look])
    except OSError:
        return False


@dataclass
class Series:
    """One series' headers, slices in order along the normal, and its geometry."""

    folder: Path
    files: list[Path]            # in slice order
    headers: list[Any]           # pydicom datasets, pixel data deferred
    affine: np.ndarray           # RAS, index order (column, row, slice)
    spacing: list[float]         # array order: slice, row, column
    shape: tuple[int, int, int]  # array order: slices, rows, columns
    uid: str


# ------------------------------------------------------------------------------- headers

def _read_headers(folder: Path, pydicom: Any) -> list[tuple[Path, Any]]:
    files = slice_files(folder)
    out: list[tuple[Path, Any]] = []
    problems = [f"{p}: a folder inside the DICOM series folder {folder}; a series folder holds its slice files only"
                for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    for f in files:
        try:
            ds = pydicom.dcmread(f, defer_size="64 KB")
        except pydicom.errors.InvalidDicomError:
            try:  # DICOM without the 128-byte preamble is still DICOM when it parses as such
                ds = pydicom.dcmread(f, defer_size="64 KB", force=True)
                ok = "SOPClassUID" in ds or "PixelData" in ds
            except Exception:  # noqa: BLE001
                ok = False
            if not ok:
                problems.append(f"{f}: not a DICOM file (in the series folder {folder})")
                continue
        except Exception as e:  # noqa: BLE001 - truncated or damaged header
            problems.append(f"{f}: unreadable DICOM file ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
            continue
        out.append((f, ds))
    if problems:
        raise DataError(_capped(problems, folder))
    return out


def _capped(problems: list[str], folder: Path, keep: int = MAX_LINES) -> list[str]:
    """Every problem up to ``keep`` lines, then one line counting the rest (a 500-slice series
    compressed without a decoder says so five times, not 500)."""
    if len(problems) <= keep:
        return problems
    return problems[:keep] + [f"{folder}: ... and {len(problems) - keep} more file(s) with problems like these"]


def _pick_series(folder: Path, found: list[tuple[Path, Any]]) -> tuple[str, list[tuple[Path, Any]]]:
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for f, ds in found:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((f, ds))
    chosen = folder / "series.txt"
    if chosen.is_file():
        uid = chosen.read_text(encoding="utf-8", errors="replace").strip()
        if uid not in groups:
            raise DataError(f"{chosen}: names series {uid!r}, which is not in the folder (it holds "
                            f"{', '.join(repr(u) for u in groups)})")
        return uid, groups[uid]
    if len(groups) > 1:
        listed = ", ".join(f"{u or '(no UID)'}: {len(v)} file(s)" for u, v in groups.items())
        raise DataError(f"{folder}: {len(groups)} series mixed in one folder (SeriesInstanceUID {listed}); "
                        f"keep one series per folder or name one in {chosen}")
    uid = next(iter(groups))
    return uid, groups[uid]


def _floats(ds: Any, keyword: str, n: int, f: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        a = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        a = np.zeros(0)
    if a.shape != (n,) or not np.all(np.isfinite(a)):
        raise DataError(f"{f}: no valid {keyword} ({n} numbers); a series slice needs it for its geometry")
    return a


def _check_slice(f: Path, ds: Any) -> None:
    if "PixelData" not in ds:
        raise DataError(f"{f}: a DICOM file without pixel data (Modality {ds.get('Modality', '?')}, "
                        f"SOP class {ds.get('SOPClassUID', '?')}); a series folder holds image slices only")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        raise DataError(f"{f}: a multi-frame DICOM file ({frames} frames, e.g. enhanced CT/MR); only series "
                        "of single-frame slices are read (convert it with dcm2niix)")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DataError(f"{f}: colour DICOM ({ds.SamplesPerPixel} samples per pixel); expected grey slices")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed and not _decoder_available(syntax):
        raise DataError(f"{f}: pixel data compressed as {syntax.name} ({syntax}) and no decoder for it is "
                        "installed (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm)")


def _decoder_available(syntax: Any) -> bool:
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(syntax).is_available)
    except Exception:  # noqa: BLE001 - pydicom knows no decoder for this syntax at all
        return False


def read_headers(folder: str | Path) -> Series:
    """Read and check the headers of the series in ``folder`` (pixel data not decoded)."""
    folder = Path(folder)
    if not any(is_dicom_file(f) for f in slice_files(folder)):
        raise DataError(f"{folder}: a folder without DICOM files; expected an image file or a DICOM series folder")
    pydicom = need_pydicom(folder)
    uid, members = _pick_series(folder, _read_headers(folder, pydicom))
    problems: list[str] = []
    geo = []
    for f, ds in members:
        try:
            _check_slice(f, ds)
            geo.append((f, ds, _floats(ds, "ImagePositionPatient", 3, f), _floats(ds, "ImageOrientationPatient", 6, f),
                        _floats(ds, "PixelSpacing", 2, f), (int(ds.Rows), int(ds.Columns))))
        except DataError as e:
            problems += e.problems
        except (AttributeError, TypeError, ValueError):
            problems.append(f"{f}: no Rows/Columns")
    if problems:
        raise DataError(_capped(problems, folder))
    f0, _, _, iop, ps, size = geo[0]
    for f, _, _, o, p, s in geo[1:]:
        if s != size:
            problems.append(f"{f}: {s[0]}x{s[1]} pixels; {f0.name} of the same series has {size[0]}x{size[1]}")
        elif not np.allclose(o, iop, atol=1e-4):
            problems.append(f"{f}: ImageOrientationPatient {o.tolist()} differs from {f0.name}'s {iop.tolist()}")
        elif not np.allclose(p, ps, rtol=1e-4):
            problems.append(f"{f}: PixelSpacing {p.tolist()} differs from {f0.name}'s {ps.tolist()}")
    if problems:
        raise DataError(problems)
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise DataError(f"{f0}: ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")
    normal = np.cross(row, col)
    geo.sort(key=lambda g: float(g[2] @ normal))
    files = [g[0] for g in geo]
    positions = np.stack([g[2] for g in geo])
    spacing = _slice_spacing(folder, files, positions, normal, geo[0][1])
    lps = np.eye(4)
    lps[:3, 0] = row * ps[1]      # column index runs along the row direction, PixelSpacing[1] apart
    lps[:3, 1] = col * ps[0]      # row index runs along the column direction, PixelSpacing[0] apart
    lps[:3, 2] = normal * spacing
    lps[:3, 3] = positions[0]
    return Series(folder, files, [g[1] for g in geo], LPS_TO_RAS @ lps,
                  [float(spacing), float(ps[0]), float(ps[1])], (len(files), size[0], size[1]), uid)


def _slice_spacing(folder: Path, files: list[Path], positions: np.ndarray, normal: np.ndarray, first: Any) -> float:
    """The spacing between slices from their positions; gaps, duplicates and tilt refused."""
    if len(files) == 1:
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            try:
                value = float(first.get(keyword) or 0)
            except (TypeError, ValueError):
                value = 0.0
            if value > 0 and math.isfinite(value):
                return value
        return 1.0
    along = positions @ normal
    offsets = positions - positions[0]
    lateral = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    off = lateral > math.tan(math.radians(TILT_DEGREES)) * np.abs(along - along[0]) + 1e-3
    if off.any():
        k = int(np.flatnonzero(off)[-1])
        angle = math.degrees(math.atan2(lateral[k], abs(along[k] - along[0])))
        tilt = first.get("GantryDetectorTilt")
        raise DataError(f"{folder}: gantry tilt: the slice positions run {angle:.2f} degrees off the slice normal "
                        f"(GantryDetectorTilt {tilt if tilt is not None else 'not given'}); resample the series "
                        "to an orthogonal grid first (dcm2niix corrects tilt)")
    steps = np.diff(along)
    problems = [f"{files[i + 1]}: at the same position as {files[i].name} ({along[i]:.3f} mm along the normal); "
                "two slices in one place" for i in np.flatnonzero(steps < 1e-3)]
    if problems:
        raise DataError(problems)
    spacing = float(np.median(steps))
    for i, step in enumerate(steps):
        if abs(step - spacing) <= GAP_TOLERANCE * spacing:
            continue
        ratio = step / spacing
        between = f"between {files[i].name} and {files[i + 1].name}"
        if round(ratio) >= 2 and abs(ratio - round(ratio)) <= GAP_TOLERANCE * round(ratio):
            problems.append(f"{folder}: {round(ratio) - 1} slice(s) missing {between} (a gap of {step:.3f} mm; "
                            f"the slices are {spacing:.3f} mm apart)")
        else:
            problems.append(f"{folder}: non-uniform slice spacing: {step:.3f} mm {between}, {spacing:.3f} mm "
                            "elsewhere")
    if problems:
        raise DataError(problems)
    return float((along[-1] - along[0]) / (len(files) - 1))


# ------------------------------------------------------------------------------- pixels

def read_series(folder: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``(array (1, Z, Y, X), meta)`` of the DICOM series in ``folder`` (module docstring)."""
    series = read_headers(folder)
    folder = series.folder
    _check_declared(folder, series.shape, what="series")
    rescale = []
    for ds in series.headers:
        try:
            rescale.append((float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)))
        except (TypeError, ValueError):
            raise DataError(f"{folder}: invalid RescaleSlope/RescaleIntercept") from None
    whole = all(float(s).is_integer() and float(b).is_integer() for s, b in rescale)
    out = np.empty(series.shape, dtype=np.int32 if whole else np.float32)
    for k, (f, ds) in enumerate(zip(series.files, series.headers)):
        try:
            stored = ds.pixel_array
        except Exception as e:  # noqa: BLE001 - truncated or undecodable pixel data
            raise DataError(f"{f}: unreadable pixel data ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
        if stored.shape != series.shape[1:]:
            raise DataError(f"{f}: pixel data of shape {stored.shape}; the header declares {series.shape[1:]}")
        slope, intercept = rescale[k]
        if whole:
            values = stored.astype(np.int64) * int(slope) + int(intercept)
            if values.size and (values.min() < -2**31 or values.max() >= 2**31):
                raise DataError(f"{f}: rescaled values beyond 32-bit integers (RescaleSlope {slope:g})")
            out[k] = values
        else:
            out[k] = stored.astype(np.float64) * slope + intercept
    if whole:
        lo, hi = (int(out.min()), int(out.max())) if out.size else (0, 0)
        out = out.astype(np.int16) if -2**15 <= lo and hi < 2**15 else out
    array = out[None]
    first = series.headers[0]
    meta = {"format": "dicom", "source": [str(folder)], "affine": series.affine.tolist(),
            "spacing": series.spacing, "shape": list(series.shape),
            "nifti": {"qform_code": 1, "sform_code": 1, "xyzt_units": 2},
            "dicom": {"series_uid": series.uid, "study_uid": str(first.get("StudyInstanceUID", "") or ""),
                      "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "") or ""),
                      "modality": str(first.get("Modality", "") or ""),
                      "folder": str(folder), "files": [f.name for f in series.files],
                      "rescale": "slope/intercept applied" if any(r != (1.0, 0.0) for r in rescale) else "none"}}
    return array, meta


def world_to_index(meta: dict[str, Any], points: np.ndarray) -> np.ndarray:
    """World (RAS, mm) points ``(N, 3)`` -> voxel indices in array order ``(N, 3)``: slice, row, column."""
    inv = np.linalg.inv(np.asarray(meta["affine"], dtype=float))
    ijk = (inv[:3, :3] @ np.asarray(points, dtype=float).T).T + inv[:3, 3]
    return ijk[:, ::-1]


__all__ = ["Series", "is_dicom_file", "is_series_folder", "need_pydicom", "read_headers", "read_series",
           "slice_files", "world_to_index"]
