"""Open every case of a dataset once, validate it, and record what the pipeline needs.

:func:`inspect` is the one pass over the data that both ``unetpp data check`` and
:func:`unetpp.data.open_dataset` make. It reads each case, reports every problem as one line
naming the file, and keeps a small *fingerprint* per case (shape, spacing, channels, a
sample of foreground intensities for CT statistics) so that normalisation and resampling can
be planned without reading the data again.

Problems caught (a test for each in ``tests/test_data_check.py``): image without mask and
mask without image, shape or geometry (spacing/affine) mismatch between image and mask or
between channels, mask values outside the declared labels, unreadable or truncated files,
NaN/Inf in an image, an empty folder, an unknown layout, a channel count or dimensionality
that differs across cases.

Example::

    >>> check_dataset("does/not/exist")
    ['does/not/exist: no such folder']
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ..files.formats import read_file
from .layouts import CaseFiles, Scan, scan
from .orientation import canonical_shape, canonical_spacing, reorientation

#: Foreground intensities kept per case and channel for the CT statistics.
FG_SAMPLES_PER_CASE = 10_000


@dataclass
class Inspection:
    """The result of :func:`inspect`: declared labels, per-case fingerprints, problems."""

    scan: Scan
    labels: dict[int, str]
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def declared_labels(sc: Scan, problems: list[str]) -> dict[int, str]:
    """``{value: name}`` from dataset.json (nnU-Net v2, MSD or ours); binary by default.

    nnU-Net v2 writes ``{"background": 0, "liver": 1}``, MSD ``{"0": "background", ...}``.
    Labels must be 0..K-1; region-based (list-valued) nnU-Net labels are refused.
    """
    raw = sc.info.get("labels")
    where = sc.root / "dataset.json"
    if raw is None:
        if sc.layout == "nnunet" and sc.info:
            problems.append(f"{where}: no \"labels\"")
        name = "nucleus" if sc.layout == "dsb2018" else "foreground"
        return {0: "background", 1: name}
    labels: dict[int, str] = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: \"labels\" must be an object")
        return {0: "background", 1: "foreground"}
    for k, v in raw.items():
        try:
            if isinstance(v, (list, tuple)):
                raise TypeError("region-based labels (lists) are not supported")
            if str(k).lstrip("-").isdigit():   # MSD / ours: {"1": "liver"}
                labels[int(k)] = str(v)
            else:                            # nnU-Net v2: {"liver": 1}
                labels[int(v)] = str(k)
        except (TypeError, ValueError) as e:
            problems.append(f"{where}: label {k!r}: {v!r} is not usable ({e})")
    if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
        problems.append(f"{where}: labels {sorted(labels)} must be 0..K-1 with K >= 2 "
                        "(0 = background)")
    ignore = ignore_label(labels)
    if ignore is not None and (ignore != max(labels) or len(labels) < 3):
        problems.append(f"{where}: the \"ignore\" label must have the highest value, after background and "
                        f"at least one class (nnU-Net v2's rule), got {ignore}")
    return labels


def ignore_label(labels: dict[int, str]) -> int | None:
    """The value of nnU-Net v2's ``ignore`` label (voxels left out of the loss and the
    scores), or None."""
    found = [k for k, v in labels.items() if str(v).strip().lower() == "ignore"]
    return found[0] if found else None


def trained_labels(labels: dict[int, str]) -> dict[int, str]:
    """The declared labels without ``ignore``: the classes a network predicts."""
    ignore = ignore_label(labels)
    return {k: v for k, v in labels.items() if k != ignore}


def _mask_to_labels(mask: np.ndarray, path: Path, labels: dict[int, str], lossy: bool,
                    problems: list[str]) -> np.ndarray | None:
    """A mask file's array (C, *S) -> int64 label map (*S), or None with a problem recorded.

    Binary datasets accept 0/1 and 0/255 masks (Kvasir-SEG, CVC-ClinicDB); JPG masks are
    thresholded at 128 because JPG compression smears the 0/255 edges.
    """
    binary = len(labels) == 2
    if mask.ndim == 4 and mask.shape[0] > 1:  # a 4D NIfTI/NRRD: frames or channels, not labels
        problems.append(f"{path}: a 4D mask ({mask.shape[0]} volumes of {tuple(mask.shape[1:])}); a mask "
                        "must be one 3D label map")
        return None
    if mask.shape[0] > 1:
        if not binary and not all(np.array_equal(mask[0], m) for m in mask[1:]):
            problems.append(f"{path}: colour mask with different channels; multi-class masks must "
                            "hold the label values in a single channel")
            return None
        mask = mask.max(axis=0, keepdims=True)
    m = mask[0]
    if m.dtype.kind == "f":
        if not np.all(np.isfinite(m)) or not np.all(m == np.round(m)):
            problems.append(f"{path}: mask has non-integer values")
            return None
    if binary and lossy:
        return (m > 127).astype(np.int64) if m.max(initial=0) > 1 else (m > 0).astype(np.int64)
    values = np.unique(m)
    allowed = set(labels)
    if binary and set(values.tolist()) <= {0, 255}:
        return (m > 0).astype(np.int64)
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        shown = ", ".join(str(int(v) if float(v).is_integer() else v) for v in bad[:8])
        more = f" (and {len(bad) - 8} more)" if len(bad) > 8 else ""
        hint = " (binary masks are 0/1 or 0/255; declare more labels in dataset.json)" if binary else ""
        problems.append(f"{path}: mask values {shown}{more} outside the declared labels "
                        f"{sorted(allowed)}{hint}")
        return None
    return m.astype(np.int64)


def _same_geometry(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why two files' grids differ, or None when they match."""
    if a["shape"] != b["shape"]:
        return f"shape {tuple(b['shape'])} differs from {tuple(a['shape'])}"
    if not np.allclose(a["spacing"], b["spacing"], rtol=1e-4, atol=1e-5):
        return f"spacing {b['spacing']} differs from {a['spacing']}"
    if a.get("affine") is not None and b.get("affine") is not None:
        if not np.allclose(a["affine"], b["affine"], rtol=1e-4, atol=1e-3):
            return "affine (origin/direction) differs"
    return None


def read_case(case: CaseFiles, labels: dict[int, str]) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read one case as stored: image (C, *S) in its file dtype, label int64 (*S), meta.

    Raises :class:`DataError` with every problem of the case, one line each.
    """
    problems: list[str] = []
    parts, meta = [], None
    for path in case.images:
        try:
            arr, m = read_file(path)
        except DataError as e:
            problems += e.problems
            continue
        if meta is None:
            meta = m
        else:
            why = _same_geometry(meta, m)
            if why:
                problems.append(f"{path}: channel file {why} of {case.images[0].name}")
                continue
            meta["source"] += m["source"]
        parts.append(arr)
    if problems or meta is None:
        raise DataError(problems or [f"{case.name}: no image file"])
    image = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        n = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        problems.append(f"{case.images[0]}: {n} NaN/Inf values in the image")
    blank = image.size > 0 and not problems and bool(np.all(image == image.flat[0]))
    label = None
    label_files = [case.label] if case.label is not None else list(case.instance_masks)
    if label_files:
        merged = None
        for path in label_files:
            try:
                arr, m = read_file(path, mask=True)
            except DataError as e:
                problems += e.problems
                continue
            why = _same_geometry(meta, m)
            if why:
                problems.append(f"{path}: mask {why} of image {case.images[0].name}")
                continue
            lab = _mask_to_labels(arr, path, labels, m["format"] == "jpg", problems)
            if lab is None:
                continue
            # DSB 2018: one file per nucleus, merged into one binary mask
            merged = lab if merged is None else np.maximum(merged, lab)
        label = merged
    if blank and label is not None and np.any(label > 0):
        value = image.flat[0].item()
        problems.append(f"{case.images[0]}: blank image (every pixel is {value:g}) but its mask "
                        f"marks {int(np.count_nonzero(label))} foreground pixel(s); a wrong or "
                        "empty image file?")
    if problems:
        raise DataError(problems)
    meta["label_source"] = [str(p) for p in label_files]
    return image, label, meta


def fingerprint(image: np.ndarray, label: np.ndarray | None, meta: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """What planning needs from one case: shape, spacing, channels, dtype range and a sample
    of foreground intensities per channel (for CT statistics)."""
    # shape and spacing in the canonical (S, A, R) order that training uses (see orientation)
    r = reorientation(meta) if image.ndim == 4 else None
    fp: dict[str, Any] = {"shape": canonical_shape(image.shape[1:], r),
                          "spacing": canonical_spacing(meta["spacing"], r),
                          "channels": int(image.shape[0]), "spatial_dims": image.ndim - 1,
                          "dtype": str(image.dtype), "source": meta["source"][0]}
    fg = label > 0 if label is not None else np.zeros(image.shape[1:], bool)
    rng = np.random.default_rng(seed)
    samples = []
    for c in range(image.shape[0]):
        values = image[c][fg]
        if values.size > FG_SAMPLES_PER_CASE:
            values = rng.choice(values, FG_SAMPLES_PER_CASE, replace=False)
        samples.append(values.astype(np.float32))
    fp["foreground"] = samples
    fp["nonzero_fraction"] = float(np.count_nonzero(np.any(image != 0, axis=0))) / max(1, int(np.prod(image.shape[1:])))
    fp["label_values"] = sorted(np.unique(label).tolist()) if label is not None else []
    return fp


def inspect(path: str | Path, read: bool = True) -> Inspection:
    """Scan ``path``, read every case (unless ``read=False``) and collect all problems."""
    sc = scan(path)
    problems = list(sc.problems)
    labels = declared_labels(sc, problems) if sc.layout else {}
    result = Inspection(sc, labels, {}, problems)
    if not sc.layout or not read:
        return result
    for case in sc.cases:
        try:
            image, label, meta = read_case(case, labels)
        except DataError as e:
            problems += e.problems
            continue
        result.fingerprints[case.name] = fingerprint(image, label, meta)
    _check_declared_channels(result)
    _check_consistency(result)
    return result


def _check_declared_channels(result: Inspection) -> None:
    """nnU-Net ``channel_names`` / MSD ``modality``: every case must have that many channels
    (a 4D file where a 3D one is expected shows up here)."""
    declared = result.scan.info.get("channel_names") or result.scan.info.get("modality")
    if not isinstance(declared, dict) or not declared:
        return
    for name in list(result.fingerprints):
        fp = result.fingerprints[name]
        if fp["channels"] != len(declared):
            result.problems.append(f"{fp['source']}: {fp['channels']} channel(s), but dataset.json declares "
                                   f"{len(declared)} ({', '.join(map(str, declared.values()))}); a 4D file "
                                   "where a 3D volume is expected?")
            del result.fingerprints[name]


def _check_consistency(result: Inspection) -> None:
    """Channel count and dimensionality must agree across cases; name the odd ones out."""
    fps = result.fingerprints
    for key, what in (("spatial_dims", "spatial dimensions"), ("channels", "channels")):
        counts = Counter(fp[key] for fp in fps.values())
        if len(counts) > 1:
            usual = counts.most_common(1)[0][0]
            for name, fp in fps.items():
                if fp[key] != usual:
                    result.problems.append(f"{fp['source']}: {fp[key]} {what}, while "
                                           f"{counts[usual]} other case(s) have {usual}")


def check_dataset(path: str | Path) -> list[str]:
    """Every problem of the dataset at ``path``, one line each naming the file; [] when fine."""
    return inspect(path).problems
