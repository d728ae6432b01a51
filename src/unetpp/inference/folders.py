"""Score any folder of predicted masks against a folder of references (no run needed).

``unetpp evaluate --pred DIR --ref DIR`` calls :func:`score_folders`. Each prediction is
matched to the reference of the same case name, the file name without its format suffix
(any format :func:`unetpp.data.files.formats.read_file` reads; the two may differ). A prediction
named like nnU-Net's input, ``case_0000.nii.gz``, matches ``case.nii.gz`` when no reference
has its exact name. Files that ``unetpp predict`` writes beside a mask (``<name>_overlay``,
``<name>_probs``) are skipped, and so is anything that is not an image or volume.

Every problem is found before anything is scored and reported at once, one line each naming
both files (:class:`~unetpp.errors.DataError`): a reference without prediction, a prediction
without reference, two files for one case, unreadable files or mask values that are not
labels, and a prediction whose shape, spacing (1e-3 relative) or affine (1e-3; compared when
both files have the same format, as NIfTI and NRRD/MHA use different world axes) differs from
its reference's.

Labels, in this order: ``classes``/``labels`` given; a ``dataset.json`` in the reference
folder or its parent (nnU-Net v2 ``{"labels": {"background": 0, "liver": 1}}`` or MSD
``{"labels": {"0": "background", "1": "liver"}}``); else the largest value found, binary when
every mask holds only 0/1 or 0/255 (as datasets store binary masks).

Scores follow :mod:`unetpp.metrics`: per case, then averaged over cases ignoring NaN; HD95 and
NSD in mm from the reference's spacing (pixels for 2D images, which have none); NSD tolerance
one voxel along the coarsest axis of each case unless given. Undefined scores (HD95 when one
mask is empty; anything with ``empty="nan"``) are NaN in the result and null in the JSON file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.cases.check import _mask_to_labels
from ..data.files.formats import SUFFIXES, read_file, strip_suffix, suffix_of
from ..errors import DataError, UnetppError
from ..metrics import EMPTY_MODES, case_scores, mean_scores
from .evaluate import Progress, write_evaluation

CHANNEL_SUFFIX = "_0000"
SIDE_OUTPUTS = ("_overlay", "_probs")
MEANS = ("dice", "iou", "hd95", "nsd")
#: Largest label value accepted when the labels are inferred from the masks.
MAX_INFERRED_LABEL = 1000


def mask_files(folder: Path, problems: list[str]) -> dict[str, Path]:
    """``{case name: file}`` of the image and volume files directly in ``folder``."""
    if not folder.is_dir():
        problems.append(f"{folder}: no such folder")
        return {}
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or suffix_of(p) not in SUFFIXES:
            continue
        name = strip_suffix(p)
        if name in found:
            problems.append(f"{found[name]} and {p}: two files for case {name}")
        else:
            found[name] = p
    if not found:
        problems.append(f"{folder}: no mask files ({', '.join(SUFFIXES)})")
    return found


def match_cases(pred_dir: Path, ref_dir: Path, problems: list[str]) -> list[tuple[str, Path, Path]]:
    """``[(case, prediction, reference)]`` sorted by case; unmatched files become problems."""
    preds, refs = mask_files(pred_dir, problems), mask_files(ref_dir, problems)
    preds = {n: p for n, p in preds.items()
             if not any(n.endswith(s) and n[: -len(s)] in preds and n not in refs for s in SIDE_OUTPUTS)}
    matched: dict[str, Path] = {}
    for name, p in preds.items():
        base = name[: -len(CHANNEL_SUFFIX)] if name.endswith(CHANNEL_SUFFIX) else None
        target = name if name in refs else base if base in refs else None
        if target is None:
            problems.append(f"{p}: prediction without reference {ref_dir / (name + suffix_of(p))}")
        elif target in matched:
            problems.append(f"{matched[target]} and {p}: two predictions for reference {refs[target]}")
        else:
            matched[target] = p
    for name, r in refs.items():
        if name not in matched and preds:
            problems.append(f"{r}: reference without prediction {pred_dir / (name + suffix_of(r))}")
    return [(name, matched[name], refs[name]) for name in sorted(matched)]


def geometry_problems(pred: Path, pm: dict[str, Any], ref: Path, rm: dict[str, Any]) -> list[str]:
    """One line per way the prediction's grid differs from the reference's (the affine, which
    holds the spacing too, is compared when the spacings agree)."""
    def show(v: Any) -> str:
        return "(" + ", ".join(f"{float(x):g}" for x in v) + ")"

    out = []
    if list(pm["shape"]) != list(rm["shape"]):
        out.append(f"{pred}: shape {show(pm['shape'])} differs from reference {ref} {show(rm['shape'])}")
    if len(pm["spacing"]) != len(rm["spacing"]) or not np.allclose(pm["spacing"], rm["spacing"], rtol=1e-3, atol=0):
        out.append(f"{pred}: spacing {show(pm['spacing'])} differs from reference {ref} {show(rm['spacing'])}")
    elif pm.get("affine") is not None and rm.get("affine") is not None and pm["format"] == rm["format"]:
        if np.shape(pm["affine"]) != np.shape(rm["affine"]) or not np.allclose(pm["affine"], rm["affine"],
                                                                                rtol=0, atol=1e-3):
            out.append(f"{pred}: affine (origin/direction) differs from reference {ref}")
    return out


def parse_labels(raw: Any, where: str) -> dict[int, str]:
    """``{value: name}`` from nnU-Net v2 (``{"liver": 1}``) or MSD (``{"1": "liver"}``) labels."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: \"labels\" must be an object")
    labels: dict[int, str] = {}
    problems = []
    for k, v in raw.items():
        if isinstance(k, int) or str(k).lstrip("-").isdigit():
            labels[int(k)] = str(v)
        elif isinstance(v, int) and not isinstance(v, bool) or str(v).lstrip("-").isdigit():
            labels[int(v)] = str(k)
        else:
            problems.append(f"{where}: label {k!r}: {v!r} is not usable (region-based labels are not supported)")
    if not problems and (sorted(labels) != list(range(len(labels))) or len(labels) < 2):
        problems.append(f"{where}: labels {sorted(labels)} must be 0..K-1 with K >= 2 (0 = background)")
    if problems:
        raise DataError(problems)
    return labels


def declared(ref_dir: Path, classes: int | None, labels: Any) -> dict[int, str] | None:
    """The labels given or in a dataset.json, or None to infer them from the masks."""
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise UnetppError(f"classes must be an integer >= 1, got {classes!r}")
    if labels is not None:
        found = parse_labels(labels, "labels")
        if classes is not None and max(classes, 2) != len(found):
            raise UnetppError(f"classes {classes} disagrees with the {len(found)} labels given")
        return found
    if classes is not None:
        return {0: "background", 1: "foreground"} if classes <= 2 else \
            {c: "background" if c == 0 else f"class {c}" for c in range(classes)}
    for where in (ref_dir / "dataset.json", ref_dir.parent / "dataset.json"):
        if where.is_file():
            try:
                info = json.loads(where.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{where}: not valid JSON ({e})") from None
            if isinstance(info, dict) and "labels" in info:
                return parse_labels(info["labels"], str(where))
    return None


def _read(path: Path, problems: list[str]) -> tuple[np.ndarray, dict[str, Any]] | None:
    try:
        return read_file(path, mask=True)
    except DataError as e:
        problems += e.problems
        return None


def _inferred_top(arr: np.ndarray, path: Path, fmt: str, problems: list[str]) -> tuple[int, bool] | None:
    """``(largest label, binary stored as 0/255)`` of a mask whose labels are not declared
    (a JPG mask is binary: its compression smears the values)."""
    if fmt == "jpg":
        return 1, True
    hi = float(arr.max(initial=0))
    if not math.isfinite(hi) or hi > MAX_INFERRED_LABEL:
        problems.append(f"{path}: mask values up to {hi:g}; not a label map (pass the labels, or "
                        "a dataset.json, to score it)")
        return None
    top = int(hi)
    lab = _mask_to_labels(arr, path, {v: str(v) for v in range(max(top, 1) + 1)}, False, problems)
    if lab is None:
        return None
    return top, top == 255 and bool(np.all((lab == 0) | (lab == 255)))


def score_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, classes: int | None = None,
                  labels: Any = None, surface: bool = True, empty: str = "one",
                  tolerance: float | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Score every mask in ``pred_dir`` against the reference of the same case in ``ref_dir``.

    ``classes``: K (background included; 1 or 2 = binary); ``labels``: ``{value: name}`` or a
    dataset.json ``"labels"`` object; ``surface``: add HD95 and NSD; ``empty``: ``"one"`` or
    ``"nan"`` (:mod:`unetpp.metrics`); ``tolerance``: NSD tolerance in mm (None = the largest
    voxel spacing of each case). Returns ``{"mode": None, "level": None, "dice", "iou",
    "hd95", "nsd", ["classes": {"dice_1", ...}], "split": "folders", "empty", "tolerance_mm",
    "labels", "pred", "ref", "cases": [{"case", "dice", "iou", "hd95", "nsd", ...}]}``
    (``tolerance_mm``: one number, or ``{case: mm}`` when the cases' spacings differ).
    Raises :class:`DataError` with every problem, one line each, before scoring anything.
    """
    if empty not in EMPTY_MODES:
        raise UnetppError(f"empty must be one of {', '.join(EMPTY_MODES)}, got {empty!r}")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise UnetppError(f"the NSD tolerance must be a number of mm >= 0, got {tolerance}")
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    problems: list[str] = []
    pairs = match_cases(pred_dir, ref_dir, problems)
    names = declared(ref_dir, classes, labels)
    tops: list[tuple[int, bool]] = []
    for _, pred, ref in pairs:  # first pass: every problem before any score
        read = {path: _read(path, problems) for path in (pred, ref)}
        if read[pred] is not None and read[ref] is not None:
            problems += geometry_problems(pred, read[pred][1], ref, read[ref][1])
        for path, got in read.items():
            if got is None:
                continue
            if names is None:
                top = _inferred_top(got[0], path, got[1]["format"], problems)
                tops += [top] if top is not None else []
            else:
                _mask_to_labels(got[0], path, names, got[1]["format"] == "jpg", problems)
    if problems:
        raise DataError(problems)
    if names is None:
        binary = all(top <= 1 or is_0_255 for top, is_0_255 in tops)
        k = 2 if binary else max(top for top, _ in tops) + 1
        names = {c: "background" if c == 0 else "foreground" if binary else f"class {c}" for c in range(k)}
    k = len(names)
    rows, tolerances = [], {}
    for done, (name, pred, ref) in enumerate(pairs, 1):
        (p_arr, p_meta), (r_arr, r_meta) = read_file(pred, mask=True), read_file(ref, mask=True)
        p = _mask_to_labels(p_arr, pred, names, p_meta["format"] == "jpg", problems)
        r = _mask_to_labels(r_arr, ref, names, r_meta["format"] == "jpg", problems)
        if p is None or r is None:
            raise DataError(problems)
        spacing = [float(s) for s in r_meta["spacing"]]
        tolerances[name] = float(max(spacing)) if tolerance is None else float(tolerance)
        s = case_scores(p, r, k, spacing=spacing, surface=surface, empty=empty, tolerance=tolerances[name])
        rows.append({"case": name, **{m: s.pop(m) for m in MEANS if m in s}, **s})
        if progress is not None:
            progress(done, len(pairs), name)
    means = mean_scores([{m: v for m, v in row.items() if m != "case"} for row in rows])
    result: dict[str, Any] = {"mode": None, "level": None, **{m: means.get(m) for m in MEANS}}
    per_class = {m: v for m, v in means.items() if m not in MEANS}
    if per_class:
        result["classes"] = per_class
    distinct = set(tolerances.values())
    result.update({"split": "folders", "empty": empty,
                   "tolerance_mm": (None if not surface else distinct.pop() if len(distinct) == 1 else tolerances),
                   "labels": {str(c): n for c, n in names.items()}, "pred": str(pred_dir), "ref": str(ref_dir),
                   "cases": rows})
    return result


def write_folder_scores(result: dict[str, Any], json_path: str | os.PathLike | None,
                        csv_path: str | os.PathLike | None) -> None:
    """Write the JSON (NaN as null) and the per-case CSV (:func:`.evaluate.write_evaluation`)."""
    write_evaluation(result, json_path, csv_path)
