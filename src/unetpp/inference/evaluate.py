"""Per-case Dice and IoU of a run on a dataset, in any mode, and which cases to score.

Scores follow :mod:`unetpp.metrics`: computed per case on the whole image or volume (the
sliding-window engine, tiled as the run's window policy says), then averaged over cases; per class
1..K-1 for K classes (background is not scored), the foreground for binary tasks.
**Empty vs empty**: a class absent from both the prediction and the reference scores
Dice = IoU = 1.0 (a correct "nothing here"); absent from only one of them, 0.0.

**Which cases.** ``evaluate`` scores the run's held-out *test* cases when its split
(``config.json["split"]``) lists some that the dataset has, else its *validation* cases, else
every case of the dataset (e.g. a separate test set the run never saw). ``prune`` chooses a
level on the *validation* cases (never the test cases), else every case. Names in the split
that the dataset does not have are ignored; if none is there, every case is used.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..io import atomic_write_json, atomic_write_text
from ..metrics import case_scores, mean_scores
from ..models.mode import Mode, combine_heads
from .engine import probabilities_to_labels
from .postprocess import apply as apply_postprocess
from .window import window_policies

#: ``progress(done, total, case_name)`` after each case.
Progress = Callable[[int, int, str], None]

PURPOSE_SPLITS = {"evaluate": ("test", "val"), "prune": ("val",)}


def select_cases(ds: Any, config: dict[str, Any], purpose: str = "evaluate") -> tuple[list[str], str]:
    """``(case names, source)`` for ``purpose`` ``"evaluate"`` or ``"prune"``.

    ``source`` is the split key used (``"test"``, ``"val"``) or ``"all"``.
    """
    available = list(ds.case_names)
    have = set(available)
    split = config.get("split") if isinstance(config.get("split"), dict) else None
    for key in PURPOSE_SPLITS[purpose]:
        names = split.get(key) if split else None
        if isinstance(names, (list, tuple)):
            chosen = [str(n) for n in names if str(n) in have]
            if chosen:
                return chosen, key
    if not available:
        raise DataError(f"{getattr(ds, 'root', 'dataset')}: no cases to evaluate")
    return available, "all"


def check_compatible(ds: Any, predictor: Any) -> None:
    """Refuse a dataset whose channels, classes or dimensionality the run was not trained for."""
    problems = []
    root = getattr(ds, "root", "dataset")
    if getattr(ds, "channels", predictor.in_channels) != predictor.in_channels:
        problems.append(f"{root}: images have {ds.channels} channel(s); the run was trained on "
                        f"{predictor.in_channels}")
    if getattr(ds, "classes", predictor.classes) != predictor.classes:
        problems.append(f"{root}: labels have {ds.classes} class(es); the run was trained for "
                        f"{predictor.classes}")
    sd = getattr(ds, "spatial_dims", None)
    if sd is not None and sd < predictor.dims:
        problems.append(f"{root}: {sd}D images; the run is a {predictor.dims}D model")
    if problems:
        raise DataError(problems)


def score_modes(predictor: Any, ds: Any, names: Sequence[str], modes: Sequence[Mode | tuple[str, int | None]],
                tta: bool = False, progress: Progress | None = None, native: bool = False, surface: bool = False,
                empty: str = "one", tolerance: float | None = None,
                on_case: Callable[[str, Mode, np.ndarray, np.ndarray], None] | None = None
                ) -> dict[Mode, list[dict[str, Any]]]:
    """Per-case scores of several modes at once (:class:`~unetpp.models.Mode`, or
    ``(mode, level)`` tuples, which compare equal to them and key the result alike).

    All the levels the modes need come from one pass of the network per case (a fast-mode
    head read from the full network equals the pruned network's output; the engine's tests
    check it), so scoring L1..L4 and accurate costs one inference per case.

    ``native``: score on each case's own grid (probabilities resampled to it, then the
    argmax, against the label as stored), at its own spacing; otherwise on the network's
    grid. ``surface``: add HD95 and NSD (mm); ``empty``/``tolerance``: see
    :func:`unetpp.metrics.case_scores`. ``on_case(name, mode, labels, reference)`` sees each
    predicted mask and its reference, as scored (cross-validation keeps them).
    """
    from ..data.io import to_input_grid

    modes = [None if m is None else predictor.resolve(Mode(*m)) for m in modes]  # None: an ensemble's own
    reads = {m: m.levels(predictor.levels) if m is not None else () for m in modes}
    needed = sorted({lv for levels in reads.values() for lv in levels})
    results: dict[Mode, list[dict[str, Any]]] = {m: [] for m in modes}
    classes = predictor.classes
    for done, name in enumerate(names, 1):
        case = ds.load_case(name)
        if case.label is None:
            raise DataError(f"{getattr(ds, 'root', 'dataset')}: case {name} has no label to score against")
        image = torch.as_tensor(case.image, dtype=torch.float32)
        probs = predictor.level_probabilities(image, needed, tta=tta) if needed else {}
        # on the case's own grid when that differs from the network's; otherwise the network's
        # grid is the case's (same voxels, in the canonical order, at the grid spacing)
        resampled = native and tuple(case.meta["shape"]) != tuple(case.label.shape)
        reference = ds.native_label(name) if resampled else np.asarray(case.label)
        spacing = case.meta.get("spacing") if resampled else case.meta.get("grid_spacing", case.meta.get("spacing"))
        for mode in modes:
            p = combine_heads({lv: probs[lv] for lv in reads[mode]}, mode) if mode is not None else \
                predictor.predict_tensor(image, None, tta=tta)
            if resampled:
                p = torch.from_numpy(to_input_grid(p, case.meta))
            labels = probabilities_to_labels(p, classes).numpy()
            if native and getattr(predictor, "postprocess", None):  # chosen on native out-of-fold masks
                labels = apply_postprocess(labels, predictor.postprocess)
            if on_case is not None:
                on_case(name, mode, labels, reference)
            extra = dict(spacing=spacing, surface=True, empty=empty, tolerance=tolerance) if surface else {}
            scores = case_scores(labels, reference, classes, ignore=getattr(ds, "ignore_label", None), **extra)
            results[mode].append({"case": name, "dice": scores.pop("dice"), "iou": scores.pop("iou"), **scores})
        if progress is not None:
            progress(done, len(names), name)
    return results


def summarise(mode: str, level: int | None, cases: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The contract's JSON: ``{"mode", "level", "dice", "iou", "cases": [...]}`` (+ per class)."""
    means = mean_scores([{k: v for k, v in c.items() if k not in ("case", "fold")} for c in cases])
    out: dict[str, Any] = {"mode": mode, "level": level, "dice": means.get("dice"), "iou": means.get("iou")}
    out.update({k: means[k] for k in ("hd95", "nsd") if k in means})
    per_class = {k: v for k, v in means.items() if k not in ("dice", "iou", "hd95", "nsd")}
    if per_class:
        out["classes"] = per_class
    out.update(extra)
    out["cases"] = cases
    return out


def evaluate(predictor: Any, ds: Any, mode: str | Mode | None = None, level: int | None = None, tta: bool = False,
             cases: Sequence[str] | None = None, progress: Progress | None = None, native: bool = True,
             surface: bool = True, empty: str = "one", tolerance: float | None = None) -> dict[str, Any]:
    """Score ``predictor`` on ``ds`` (a dataset of :func:`unetpp.data.open_dataset`).

    By default each case is scored on its own grid at its own spacing (``native``), with
    Dice, IoU, HD95 and NSD per class (``surface``; see :func:`unetpp.metrics.case_scores` for
    ``empty`` and ``tolerance``).

    Returns ``{"mode", "level", "dice", "iou", ["hd95", "nsd"], ["classes": {"dice_1", ...}],
    "split", "tta", "window", "grid", "cases": [{"case", "dice", "iou", ...}, ...]}``; ``level`` is None
    in accurate mode.
    """
    check_compatible(ds, predictor)
    mode = predictor.resolve(mode, level)
    if cases is None:
        names, source = select_cases(ds, predictor.config, "evaluate")
    else:
        names, source = list(cases), "given"
    scored = score_modes(predictor, ds, names, [mode], tta=tta, progress=progress, native=native,
                         surface=surface, empty=empty, tolerance=tolerance)
    name, lv = (mode.name, mode.level) if mode is not None else ("ensemble", None)
    return summarise(name, lv, scored[mode], split=source, tta=tta, window=window_policies(predictor),
                     grid="native" if native else "network", **({"empty": empty} if surface else {}))


def cases_csv(result: dict[str, Any]) -> str:
    """One row per case (case, dice, iou, [hd95, nsd], per-class columns), then a ``mean``
    row (the result's own means). An undefined value (HD95 against an empty mask) is
    ``nan``; a missing one is empty."""
    rows = result["cases"]
    keys = ["case"] + [k for k in (rows[0] if rows else {"dice": 0, "iou": 0}) if k != "case"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)

    def cell(v: Any) -> str:
        return "" if v is None else "nan" if v != v else f"{v:.6f}"

    for r in rows:
        writer.writerow([r[k] if k == "case" else cell(r.get(k)) for k in keys])
    means = {**{k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
             **(result.get("classes") or {})}
    writer.writerow(["mean"] + [cell(means.get(k)) for k in keys[1:]])
    return buf.getvalue()


def json_ready(value: Any) -> Any:
    """``value`` with every NaN float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def write_evaluation(result: dict[str, Any], json_path: str | os.PathLike | None,
                     csv_path: str | os.PathLike | None) -> None:
    """Write the JSON and the per-case CSV (each atomically; None skips one)."""
    if json_path is not None:
        atomic_write_json(json_path, json_ready(result))
    if csv_path is not None:
        atomic_write_text(csv_path, cases_csv(result))


def output_paths(run: str | os.PathLike, json_file: str | None) -> tuple[Path | None, Path]:
    """``--json FILE``: FILE and FILE.csv beside it; none: ``RUN/evaluation.json`` and ``.csv``
    (a ``MODEL.zip``, which is read only: ``MODEL.evaluation.json`` beside it).

    ``--json -`` prints the JSON (the caller does) and writes the CSV in RUN.
    """
    if Path(run).suffix.lower() == ".zip" and Path(run).is_file():
        stem = Path(run).with_suffix("")
        csv = Path(f"{stem}.evaluation.csv")
        if json_file is None:
            return Path(f"{stem}.evaluation.json"), csv
        if json_file == "-":
            return None, csv
    if json_file is None:
        return Path(run) / "evaluation.json", Path(run) / "evaluation.csv"
    if json_file == "-":
        return None, Path(run) / "evaluation.csv"
    path = Path(json_file)
    return path, path.with_suffix(".csv")
