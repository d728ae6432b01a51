"""``unetpp predict``: segment files, folders and globs; write masks in the inputs' geometry.

For each input file:

- ``OUT/<name><ext>``: the mask, in the input's format and geometry (same shape, spacing,
  affine / NRRD space / MHA transform; :func:`unetpp.data.io.write_mask`); label values as
  trained (binary 2D masks as 0/255, as the 2D datasets store them; 0..K-1 otherwise).
  A JPG input gets a PNG mask (JPG would blur the labels).
- ``OUT/<name>_probs<ext>`` with ``probabilities=True``: float32 probability maps
  ``(K', *S)`` on the input's own grid (``K' = 1``: the foreground probability of a binary
  model); volumes in the input's format, 2D images as a float32 TIF.
- ``OUT/<name>_overlay.png`` with ``overlay=True`` (:mod:`.overlay`).
- ``OUT/<name>_uncertainty<ext>`` with ``uncertainty=True``: the per-voxel uncertainty map in
  [0, 1] (:mod:`.uncertainty`: the normalised entropy of the calibrated probabilities the
  mask comes from, the mean over heads, folds and, with ``tta``, flips), float32 on the mask's
  grid and geometry (volumes in the input's
  format, NIfTI for a DICOM series; 2D images as a float32 TIF); and ``OUT/qc.csv`` /
  ``OUT/qc.json``, one row per input with its flag (:mod:`.qc`).

``<name>`` is the file name without its format suffix and without nnU-Net's ``_0000``
channel suffix (case ``c0``: image ``c0_0000.nii.gz``, mask ``c0.nii.gz``), so predicting
``imagesTr`` and evaluating against ``labelsTr`` matches by name. Masks are the argmax of the
probabilities *resampled to the input's grid* (:func:`unetpp.data.io.to_input_grid`).

Inputs: a file, a folder (its image files, not recursive; for a multi-channel run only the
``_0000`` files) or a glob pattern (``"scans/*.nii.gz"``). A folder of DICOM files is one
series (:mod:`unetpp.data.files.dicom`), and a folder whose subfolders are DICOM series (an
``imagesTs/`` of ``<case>_0000/`` folders) gives each of them; reading DICOM needs
``pydicom`` (``pip install 'unetpp[dicom]'``), and without it that input fails with a
one-line error. A failure on one input (unreadable file, wrong channel count or
dimensionality, a bad series) is recorded with the file's name and the other inputs still
complete.

Mask format (``mask_format``, the CLI's ``--format``): by default the input's own (above);
a DICOM series gets a NIfTI mask ``OUT/<name>.nii.gz`` in the series' world geometry (the
affine :func:`unetpp.data.files.dicom.read_series` gives: the mask lies on the series in any
viewer). ``"nifti"`` asks for NIfTI for any volume; ``"dicom-seg"`` writes
``OUT/<name>.dcm``, a DICOM-SEG that references the source series, one segment per label
named from the run's ``data.labels`` (:mod:`unetpp.data.files.dicom_seg`, highdicom), and is an
error for inputs that are not DICOM series. Probability maps of a DICOM input are NIfTI.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, UnetppError
from ..io import atomic_write_bytes
from ..models.mode import Mode
from .engine import probabilities_to_labels
from .postprocess import apply as apply_postprocess
from .overlay import overlay_png
from .qc import qc_row, write_qc
from .uncertainty import calibrated_uncertainty, describe_members

GLOB_CHARS = set("*?[")
#: ``mask_format`` values (``--format``); None: the input's own format (NIfTI for DICOM).
MASK_FORMATS = ("nifti", "dicom-seg")


@dataclass
class Outcome:
    """What happened to one input."""

    input: str
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


def expand_inputs(inputs: Sequence[str], channels: int = 1) -> tuple[list[Path], list[str]]:
    """``(files and DICOM folders, problems)`` for the command line's INPUT arguments."""
    from ..data.files.dicom import is_series_folder
    from ..data.files.formats import SUFFIXES, suffix_of, strip_suffix

    found: list[Path] = []
    problems: list[str] = []

    def from_folder(folder: Path) -> list[Path]:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        images = [p for p in entries if p.is_file() and suffix_of(p) in SUFFIXES]
        if not images and is_series_folder(folder):
            return [folder]  # one DICOM series
        series = [p for p in entries if p.is_dir() and is_series_folder(p)]  # imagesTs/<case>_0000/
        if channels > 1:
            images = [p for p in images if not re.search(r"_\d{4}$", strip_suffix(p))
                      or strip_suffix(p).endswith("_0000")]
            series = [p for p in series if not re.search(r"_\d{4}$", p.name) or p.name.endswith("_0000")]
        return sorted(images + series)

    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            items = from_folder(p)
            if not items:
                problems.append(f"{p}: no image files in this folder (expected {', '.join(SUFFIXES)} "
                                "or DICOM series)")
            found += items
        elif p.is_file():
            found.append(p)
        elif GLOB_CHARS & set(raw):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(raw), recursive=True))
            if not matches:
                problems.append(f"{raw}: no files match this pattern")
            for m in matches:
                found += from_folder(m) if m.is_dir() else [m]
        else:
            problems.append(f"{raw}: no such file or folder")
    unique: list[Path] = []
    seen: set[Path] = set()
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def output_name(path: Path, channels: int, mask_format: str | None = None) -> tuple[str, str]:
    """``(name, ext)`` of an input's mask (see the module docstring)."""
    from ..data.files.formats import strip_suffix, suffix_of

    if path.is_dir():  # a DICOM series folder
        name, ext = path.name, ".nii.gz"
    else:
        name, ext = strip_suffix(path), suffix_of(path)
    if re.search(r"_\d{4}$", name):  # nnU-Net's channel suffix: case c0, image c0_0000, mask c0
        name = name[:-5]
    if ext in (".jpg", ".jpeg"):
        ext = ".png"
    if ext == ".mhd":
        ext = ".mha"
    if mask_format is not None:
        ext = {"nifti": ".nii.gz", "dicom-seg": ".dcm"}[mask_format]
    return name, ext


def _check_format(path: Path, meta: dict[str, Any], mask_format: str | None) -> None:
    """Refuse (for this input) a ``mask_format`` that does not fit it, before predicting."""
    if mask_format == "dicom-seg" and meta.get("format") != "dicom":
        raise DataError(f"{path}: --format dicom-seg needs a DICOM series folder as input, not a "
                        f"{meta.get('format', '?')} file")
    if mask_format == "nifti" and len(meta["shape"]) != 3:
        raise DataError(f"{path}: a 2D image; --format nifti is for volumes (the mask keeps the input's format)")


def label_names(predictor: Any) -> dict[int, str]:
    """``{value: name}`` of the run's labels (``data.labels``), background included."""
    stored = (getattr(predictor, "data_config", None) or {}).get("labels") or {}
    names = {int(k): str(v) for k, v in stored.items()}
    for value in range(1, max(int(predictor.classes), 2)):
        names.setdefault(value, f"label{value}")
    return names


def write_probabilities(path: Path, probs: np.ndarray, meta: dict[str, Any]) -> Path:
    """float32 ``(K', *S)`` on the input's own grid (:func:`unetpp.data.io.to_input_grid`),
    written as the input's format (volumes) or as a float32 TIF (2D)."""
    from ..data.files.formats import write_file

    return write_file(path, np.ascontiguousarray(probs, dtype=np.float32), meta)


def predict_inputs(predictor: Any, inputs: Sequence[str], out: str | os.PathLike, mode: str | None = None,
                   level: int | None = None, tta: bool = False, probabilities: bool = False,
                   overlay: bool = False, onnx: str | os.PathLike | None = None,
                   progress: Callable[[int, int, Outcome], None] | None = None,
                   on_start: Callable[[int, Mode], None] | None = None,
                   mask_format: str | None = None, uncertainty: bool = False) -> list[Outcome]:
    """Predict every input; one :class:`Outcome` each (``error`` set for a failed input).

    ``mask_format``: None (the input's format; NIfTI for a DICOM series), ``"nifti"`` or
    ``"dicom-seg"`` (see the module docstring).

    ``on_start(total, mode)`` is called once the inputs are known (mode: the settled
    :class:`~unetpp.models.Mode`),
    ``progress(done, total, outcome)`` after each input.
    Raises :class:`UnetppError` before any work for problems that concern every input (bad
    mode/level, an ONNX file that does not fit the run, no input found at all).
    """
    from ..data.io import to_input_grid, write_mask

    if mask_format is not None and mask_format not in MASK_FORMATS:
        raise UnetppError(f"--format must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
    if uncertainty and onnx is not None:
        raise UnetppError("--uncertainty needs the run's heads (or folds): predict from the run folder, not --onnx")
    if uncertainty and getattr(predictor, "_same_input", True) is False:
        raise UnetppError("--uncertainty: the runs of this ensemble normalise inputs differently; "
                          "predict with each run alone")
    out = Path(out)
    network = None
    if onnx is not None:
        from .export import OnnxNetwork

        network = OnnxNetwork(onnx)
        network.check(predictor, mode, level)
        mode = network.mode
        levels = network.levels()
    else:
        mode = predictor.resolve(mode, level)  # None for an ensemble without flags
        levels = mode.levels(predictor.levels) if mode is not None else ()
    files, problems = expand_inputs(inputs, predictor.in_channels)
    if not files:
        raise UnetppError(problems or ["no inputs"])
    # an INPUT that matched nothing is a failed input too (reported, the others still run)
    outcomes = [Outcome(problem.split(":", 1)[0], error=problem) for problem in problems]
    if on_start is not None:
        on_start(len(files), mode)
    out.mkdir(parents=True, exist_ok=True)
    write_label_names(out, (getattr(predictor, "data_config", None) or {}).get("labels"))
    used: set[str] = set()
    trust = getattr(predictor, "trust", None) if uncertainty else None
    temperature = float(trust["temperature"]) if trust else 1.0
    qc_rows: list[dict[str, Any]] = []
    for done, path in enumerate(files, 1):
        outcome = Outcome(str(path))
        try:
            image, meta = predictor.read(path)  # a DICOM series folder too (unetpp.data.files.dicom)
            _check_format(path, meta, mask_format)
            if network is not None:
                probs = predictor.level_probabilities(image, levels, tta=tta, network=network)[levels[0]]
            else:  # a run, or an ensemble's mean (mode None: each run's own choice)
                probs = predictor.predict_tensor(image, mode, tta=tta)
            probs = to_input_grid(probs, meta)  # resample probabilities first, then the argmax
            labels = probabilities_to_labels(torch.from_numpy(probs), predictor.classes).numpy()
            labels = apply_postprocess(labels, getattr(predictor, "postprocess", None) if network is None else None)
            name, ext = output_name(path, predictor.in_channels, mask_format)
            base, k = name, 1
            while name in used:  # two inputs with the same name from different folders
                name, k = f"{base}_{k}", k + 1
            used.add(name)
            if mask_format == "dicom-seg":
                from .. import __version__
                from ..data.files.dicom_seg import write_dicom_seg

                written = write_dicom_seg(out / f"{name}{ext}", labels, meta, label_names(predictor), __version__)
            else:
                written = write_mask(out / f"{name}{ext}", labels, meta)
            outcome.outputs.append(str(written))
            if probabilities:
                pext = ".nii.gz" if ext == ".dcm" else ext if len(meta["shape"]) == 3 else ".tif"
                outcome.outputs.append(str(write_probabilities(out / f"{name}_probs{pext}", probs, meta)))
            if overlay:
                outcome.outputs.append(str(atomic_write_bytes(out / f"{name}_overlay.png",
                                                              overlay_png(image.numpy(), _on_grid(labels, image)))))
            if uncertainty:
                umap = calibrated_uncertainty(torch.from_numpy(probs), temperature).numpy()
                uext = ".nii.gz" if ext == ".dcm" else ext if len(meta["shape"]) == 3 else ".tif"
                outcome.outputs.append(str(write_probabilities(out / f"{name}_uncertainty{uext}", umap, meta)))
                qc_rows.append(qc_row(name, labels, umap, image, meta.get("spacing"), predictor.classes, trust))
        except UnetppError as e:
            outcome.error = _name_file(path, "; ".join(e.problems))
        except (ValueError, OSError, MemoryError) as e:
            outcome.error = _name_file(path, str(e) or type(e).__name__)
        except Exception as e:  # noqa: BLE001 - one input's failure must not stop the others
            outcome.error = _name_file(path, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
        outcomes.append(outcome)
        if progress is not None:
            progress(done, len(files), outcome)
    if uncertainty:
        write_qc(out, qc_rows, label_names(predictor), {
            "members": describe_members(predictor, mode, None, tta), "temperature": temperature,
            "thresholds": (trust or {}).get("thresholds"), "run": str(getattr(predictor, "run", None)),
            "warning": _calibration_mismatch(trust, mode, tta)})
    return outcomes


def _calibration_mismatch(trust: dict[str, Any] | None, mode: Mode | None, tta: bool) -> str | None:
    """One line when the prediction is not in the mode and TTA the thresholds were calibrated
    in (prune's choice): the flags then compare unlike with unlike."""
    if not trust:
        return None
    asked = {"mode": mode.to_json() if mode is not None else trust.get("mode"), "tta": bool(tta)}
    stored = {"mode": trust.get("mode"), "tta": bool(trust.get("tta"))}
    if asked == stored:
        return None
    return (f"thresholds calibrated for {stored['mode']}{' with tta' if stored['tta'] else ''}, predicting "
            f"{asked['mode']}{' with tta' if asked['tta'] else ''}: the flags are approximate (prune again with "
            "--tta to calibrate that)")


def write_label_names(out: Path, labels: dict[str, str] | None) -> None:
    """The label names beside the masks, so a viewer shows "liver", not "5":

    - ``labels.json``: ``{"0": "background", "5": "liver", ...}`` (nnU-Net/MSD's form), read by
      any tool and by ``evaluate --pred/--ref``;
    - ``labels.txt``: ITK-SNAP's label description file (colours from a fixed palette), which
      ITK-SNAP and 3D Slicer load beside a NIfTI mask;
    - ``labels.csv``: ``value,name,colour,code`` (:func:`labels_csv`), the table a Slicer
      extension renames segments from.

    A JSON beside the mask works for every format we write (NIfTI, NRRD, MHA, PNG, TIF) and
    needs no format-specific fields; NRRD's segment metadata would cover one format only.
    """
    if not labels:
        return
    from ..io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "labels.json", {str(k): v for k, v in labels.items()})
    lines = ["# ITK-SNAP Label Description File (written by unetpp)",
             "# IDX  -R-  -G-  -B-  -A--  VIS MSH  LABEL"]
    for k, name in sorted(labels.items(), key=lambda kv: int(kv[0])):
        i = int(k)
        r, g, b = (0, 0, 0) if i == 0 else _PALETTE[(i - 1) % len(_PALETTE)]
        lines.append(f'{i:5d} {r:5d} {g:4d} {b:4d} {0 if i == 0 else 1:8.2f} {0 if i == 0 else 1:2d} '
                     f'{0 if i == 0 else 1:2d}    "{name}"')
    atomic_write_text(out / "labels.txt", "\n".join(lines) + "\n")
    atomic_write_text(out / "labels.csv", labels_csv({int(k): v for k, v in labels.items()}))


def labels_csv(names: dict[int, str]) -> str:
    """``value,name,colour,code`` (background included; colours as in labels.txt; ``code``
    left for a SNOMED CT code): what 3D Slicer's and napari's label tables read."""
    rows = ["value,name,colour,code"]
    for value, name in sorted(names.items()):
        r, g, b = (0, 0, 0) if value == 0 else _PALETTE[(value - 1) % len(_PALETTE)]
        rows.append(f"{value},{name},#{r:02x}{g:02x}{b:02x},")
    return "\n".join(rows) + "\n"


_PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
            (255, 239, 213), (0, 0, 205), (205, 133, 63), (210, 180, 140), (102, 205, 170), (0, 0, 128)]


def _on_grid(labels: np.ndarray, image: Any) -> np.ndarray:
    """The mask on the network's grid (the overlay is drawn on the prepared image)."""
    from ..data.cases.resample import resize

    grid = tuple(image.shape[1:])
    return labels if labels.shape == grid else resize(labels, grid, order=0)


def _name_file(path: Path, message: str) -> str:
    """One line that starts with the input; a file inside an input folder (a DICOM series)
    is named relative to it: ``series: slice7.dcm: ...``."""
    message = message.splitlines()[0] if message else "failed"
    inside = f"{path}{os.sep}"
    if path.is_dir() and message.startswith(inside):
        return f"{path}: {message[len(inside):]}"
    return message if str(path) in message else f"{path}: {message}"


__all__ = ["MASK_FORMATS", "Outcome", "expand_inputs", "label_names", "labels_csv", "output_name", "predict_inputs",
           "write_probabilities"]
