"""``unetpp prune``: the paper's trade-off of accuracy against cost, level by level.

For every level L of a deep-supervised run, fast mode (the network ``model.prune(L)``, which
holds and runs only the nodes X^{i,j} with i + j <= L) and accurate mode (every head,
averaged) are scored on the validation cases (:func:`unetpp.inference.evaluate.select_cases`,
per case on whole images/volumes through the engine) and measured: parameters
(``count_parameters``), forward FLOPs (:func:`unetpp.models.summary.count_flops`, counted on
the meta device) and latency (median of ``repeats`` timed forward passes of the pruned
network on one patch-sized input, after ``warmup`` untimed passes; at most ``repeats`` passes,
at least 3, fewer than ``repeats`` once 30 s have been spent timing).

**Choice.** Among all candidates (levels and accurate), the best IoU sets the bar; the
smallest level whose IoU is within ``tolerance`` IoU points (0-100 scale) of it is chosen.
If only accurate mode is within tolerance, accurate is chosen. A run without deep
supervision has one head: it is measured, and chosen.

``RUN/prune.json``::

    {"levels": {"1": {"iou", "dice", "params", "flops", "latency_ms"}, ...},
     "accurate": {"iou", "dice", "params", "flops", "latency_ms"},
     "chosen": {"mode": "fast" | "accurate", "level": L | null},
     "tolerance": 0.5, "cases": N, "split": "val" | "all", "input_shape": [1, C, *patch],
     "device": "cpu", "repeats": 10}

**Window** (:mod:`unetpp.inference.window`). The levels are scored with patch windows
(nnU-Net's tiling). The chosen mode is then scored again on the same cases with large windows
(the whole image, or as few windows as memory allows): ``"large"`` is chosen when its IoU is
within ``tolerance`` of the same mode's with patch windows (each decision gets the tolerance:
the level against the best, the tiling against the level's), and when at least one case is
larger than the patch (otherwise the two tilings never differed on the evidence). ``predict``,
``evaluate`` and the exported file then tile as chosen::

    "window": {"chosen": "large" | "patch", "patch": {"iou", "dice", "ms"},
               "large": {"iou", "dice", "ms"}, "cases_larger": K, "case": NAME}

(``ms``: median time of the chosen mode on the largest validation case ``case``.)

IoU and Dice are means over cases on a 0-1 scale (as ``evaluate``); ``tolerance`` is in IoU
points (0-100). ``chosen.level`` is null in accurate mode. ``prune.png`` plots IoU (%)
against latency and against parameters, one labelled point per level plus accurate.
"""

from __future__ import annotations

import io
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RunError
from ..io import atomic_write_bytes, atomic_write_json
from ..models import build_model, count_parameters
from ..models.mode import Mode
from ..models.summary import count_flops
from ..run import PRUNE
from .evaluate import Progress, check_compatible, score_modes, select_cases, summarise
from .qc import calibrate_trust, write_trust

def measure_latency(nets: dict[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, repeats: int = 10,
                    warmup: int = 2, budget_s: float = 30.0, min_repeats: int = 3) -> dict[str, float]:
    """Median wall time in ms of ``net(x)`` for each of ``nets``, after ``warmup`` runs each.

    The timed passes go round-robin over the networks (pass r of every network, then pass
    r + 1), so a change in machine load during the measurement hits every network alike
    instead of biasing the ones measured last. ``repeats`` rounds at most; after
    ``min_repeats`` rounds, no new round starts once ``budget_s`` seconds have been spent
    timing (a full-size network on a CPU takes seconds per pass).
    """
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in nets}
    spent = 0.0
    with torch.inference_mode():
        for net in nets.values():
            for _ in range(max(0, warmup)):
                net(x)
        sync()
        for r in range(max(1, repeats)):
            if r >= max(1, min_repeats) and spent > budget_s:
                break
            for key, net in nets.items():
                t0 = time.perf_counter()
                net(x)
                sync()
                dt = time.perf_counter() - t0
                spent += dt
                times[key].append(dt * 1000.0)
    return {k: float(statistics.median(v)) for k, v in times.items()}


def measure_costs(model: nn.Module, input_shape: Sequence[int], device: torch.device,
                  repeats: int = 10, warmup: int = 2) -> dict[str, dict[str, float]]:
    """``{"1": {"params", "flops", "latency_ms"}, ..., "accurate": {...}}`` for ``model``."""
    shape = tuple(int(s) for s in input_shape)
    with torch.device("meta"):
        meta = build_model(model.config)
    x = torch.randn(shape, device=device)
    nets: dict[str, nn.Module] = {str(level): model.prune(level) for level in model.levels}
    nets["accurate"] = model
    out = {key: {"params": count_parameters(net),
                 "flops": count_flops(meta if key == "accurate" else meta.prune(int(key)), shape)}
           for key, net in nets.items()}
    for key, ms in measure_latency(nets, x, repeats, warmup).items():
        out[key]["latency_ms"] = ms
    return out


def choose(scores: dict[str, dict[str, float]], tolerance: float) -> dict[str, Any]:
    """Smallest level within ``tolerance`` IoU points of the best candidate (else accurate)."""
    best = max(s["iou"] for s in scores.values()) * 100.0
    eps = 1e-9
    levels = sorted(int(k) for k in scores if k != "accurate")
    for level in levels:
        if best - scores[str(level)]["iou"] * 100.0 <= tolerance + eps:
            return Mode.fast(level).to_json()
    return Mode.accurate().to_json()


def prune(predictor: Any, ds: Any, tolerance: float = 0.5, repeats: int = 10, warmup: int = 2,
          tta: bool = False, progress: Progress | None = None,
          write_to: str | os.PathLike | None = None, trust: bool = True) -> dict[str, Any]:
    """Score and measure every level and accurate mode; choose; write prune.json/png.

    ``predictor`` may be a cross-validation :class:`~.ensemble.Ensemble`: every level is then
    scored on all out-of-fold predictions (each case by the fold that did not train on it),
    with a 95 % interval over cases, and the choice is written to the CV folder and to every
    fold (so the ensemble predicts with it).

    ``write_to``: the run folder to write ``prune.json`` and ``prune.png`` into (default the
    predictor's run; None and no run: nothing written).

    ``trust``: also calibrate the probabilities' temperature and the QC thresholds of
    ``predict --uncertainty`` on the same cases in the chosen mode and window
    (:func:`.qc.calibrate_trust`, one more inference per case) and write ``trust.json`` beside
    ``prune.json`` (``result["trust"]``).
    """
    if not 0 <= tolerance <= 100:
        raise ValueError(f"--tolerance must be between 0 and 100 IoU points, got {tolerance}")
    cv_folder = getattr(predictor, "run", None)
    given = predictor  # an ensemble: predictor becomes its first member below
    check_compatible(ds, predictor)
    multi = len(predictor.levels) > 1
    modes = [Mode.fast(lv) for lv in predictor.levels] + ([Mode.accurate()] if multi else [])
    members = getattr(predictor, "members", None)
    _set_window(members or [predictor], "patch")  # levels are scored as nnU-Net tiles; large windows after
    if members is not None:  # a cross-validation: every case scored by the fold that did not train on it
        names, source, scored = _out_of_fold(predictor, ds, modes, tta, progress)
        predictor = members[0]
    else:
        names, source = select_cases(ds, predictor.config, "prune")
        scored = score_modes(predictor, ds, names, modes, tta=tta, progress=progress)
    model = predictor.fast_model  # the network predict runs: its latency is what a user gets
    input_shape = (1, predictor.in_channels, *predictor.patch_size)  # latency of one training patch
    costs = measure_costs(model, input_shape, predictor.device, repeats, warmup)

    def entry(mode: Mode, key: str) -> dict[str, Any]:
        s = summarise(mode.name, mode.level, scored[mode])
        e = {"iou": s["iou"], "dice": s["dice"], "iou_ci95": _ci95([c["iou"] for c in scored[mode]]), **costs[key]}
        if s.get("classes"):
            e["classes"] = s["classes"]
        return e

    levels = {str(lv): entry(Mode.fast(lv), str(lv)) for lv in predictor.levels}
    accurate = entry(Mode.accurate(), "accurate") if multi else dict(levels[str(predictor.levels[-1])])
    candidates = {**levels, "accurate": accurate} if multi else dict(levels)
    chosen = choose(candidates, tolerance)
    window = choose_window(members or [predictor], ds, names, Mode.from_json(chosen), candidates,
                           tolerance, tta, progress, splits=_splits(cv_folder) if members else None)
    _set_window(members or [predictor], window["chosen"])
    result = {"levels": levels, "accurate": accurate, "chosen": chosen, "window": window,
              "tolerance": tolerance, "cases": len(names), "split": source, "input_shape": list(input_shape),
              "device": str(predictor.device), "repeats": repeats, "tta": tta}
    trust = _trust(members, predictor, ds, names, Mode.from_json(chosen), cv_folder, tta,
                   getattr(given, "postprocess", None), progress) if trust else None
    folder = write_to if write_to is not None else (cv_folder if members is not None else predictor.run)
    if folder is not None:
        write_prune(folder, result, title=Path(folder).name)
        if trust is not None:
            write_trust(folder, trust)
    for member in members or []:  # each fold predicts in the mode chosen across folds
        write_prune(member.run, result, title=Path(member.run).name)
        member.choice = Mode.from_json(chosen)
        if trust is not None:
            write_trust(member.run, trust)
            member.trust = trust
    if trust is not None:
        result["trust"] = trust
        given.trust = trust
    return result


def _trust(members: list[Any] | None, predictor: Any, ds: Any, names: Sequence[str], mode: Mode, cv_folder: Any,
           tta: bool, postprocess: Any, progress: Progress | None) -> dict[str, Any]:
    """The temperature and QC thresholds (:func:`.qc.calibrate_trust`) on the cases the levels
    were scored on, each by the run that did not train on it; the fingerprint from the cases
    the run trained on (a cross-validation: every case)."""
    if members is not None:
        cases = [(m, n) for m, split in zip(members, _splits(cv_folder)) for n in split["val"]]
        train = list(ds.case_names)
    else:
        cases = [(predictor, n) for n in names]
        split = predictor.config.get("split") if isinstance(predictor.config.get("split"), dict) else {}
        have = set(ds.case_names)
        train = [n for n in split.get("train") or [] if n in have] or [n for n in ds.case_names if n not in names]
    return calibrate_trust(predictor, ds, cases, mode, train or list(names), tta=tta, postprocess=postprocess,
                           progress=progress)


def _set_window(predictors: list[Any], policy: str) -> None:
    """Every predictor (an ensemble's members) tiles with ``policy`` from now on."""
    for p in predictors:
        p.window = p.window_for(policy)


def window_reason(window: dict[str, Any], tolerance: float) -> str:
    """Why ``prune.json["window"]`` chose what it chose, with its IoUs and times, in one line."""
    if window["chosen"] == "large":
        why = f"within {tolerance:g} IoU points of patch windows"
    elif not window["cases_larger"]:
        why = "no validation case is larger than the patch"
    else:
        why = f"large windows lost more than {tolerance:g} IoU points"
    return (f"{why}: IoU {window['large']['iou'] * 100:.2f} with large windows against "
            f"{window['patch']['iou'] * 100:.2f} with patch windows, {window['large']['ms']:.0f} against "
            f"{window['patch']['ms']:.0f} ms on {window['case']}")


def _splits(cv_folder: Any) -> list[dict[str, Any]]:
    from ..io import read_json

    return read_json(Path(cv_folder) / "splits_final.json")


def choose_window(predictors: list[Any], ds: Any, names: Sequence[str], mode: Mode,
                  candidates: dict[str, dict[str, Any]], tolerance: float, tta: bool,
                  progress: Progress | None, splits: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Score ``mode`` with large windows on the cases the levels were scored on (each fold's
    validation cases with its own member when ``splits`` is given) and choose the tiling."""
    key = "accurate" if mode.name == "accurate" else str(mode.level)
    patch = {"iou": candidates[key]["iou"], "dice": candidates[key]["dice"]}
    first = predictors[0]
    shape_of = getattr(ds, "case_shape", None) or (lambda n: tuple(ds.load_case(n).image.shape[1:]))
    shapes = {n: tuple(shape_of(n)) for n in names}  # on the network's grid, without decoding the case
    patch_size = first.window.patch  # a 2D model on a volume tiles each slice: its last two axes
    larger = sum(any(d > p for d, p in zip(shape[-len(patch_size):], patch_size)) for shape in shapes.values())
    scored: list[dict[str, Any]] = []
    _set_window(predictors, "large")
    try:
        for member, split in zip(predictors, splits or [{"val": list(names)}]):
            scored += score_modes(member, ds, split["val"], [mode], tta=tta, progress=progress)[mode]
    finally:  # the caller sets the chosen tiling; until then, nnU-Net's
        _set_window(predictors, "patch")
    s = summarise(mode.name, mode.level, scored)
    large = {"iou": s["iou"], "dice": s["dice"]}
    largest = max(names, key=lambda n: math.prod(shapes[n]))
    image = torch.as_tensor(ds.load_case(largest).image, dtype=torch.float32)
    levels = mode.levels(first.levels)
    timings = {}
    for policy in ("patch", "large"):
        window = first.window_for(policy)
        timings[policy] = measure_latency(
            {policy: lambda x, w=window: first.level_probabilities(x, levels, tta=tta, window=w)},
            image, repeats=3, warmup=1, budget_s=20.0, min_repeats=1)[policy]  # a 3D case may take seconds
    patch["ms"], large["ms"] = timings["patch"], timings["large"]
    within = (patch["iou"] - large["iou"]) * 100.0 <= tolerance + 1e-9
    chosen = "large" if within and larger else "patch"
    return {"chosen": chosen, "patch": patch, "large": large, "cases_larger": larger, "case": largest}


def _ci95(values: Sequence[float]) -> list[float] | None:
    """Normal-approximation 95 % interval of the mean over cases (None for fewer than 2)."""
    v = [x for x in values if x == x]
    if len(v) < 2:
        return None
    half = 1.96 * statistics.stdev(v) / len(v) ** 0.5
    return [statistics.fmean(v) - half, statistics.fmean(v) + half]


def _out_of_fold(ensemble: Any, ds: Any, modes: list[Mode], tta: bool,
                 progress: Progress | None) -> tuple[list[str], str, dict[Mode, list[dict[str, Any]]]]:
    """Every mode scored on every fold's validation cases with that fold's model, pooled."""
    from ..io import read_json

    splits_path = Path(ensemble.run or ".") / "splits_final.json"
    if ensemble.run is None or not splits_path.is_file():
        raise RunError(f"{splits_path}: missing; prune an ensemble only as a cross-validation folder")
    splits = read_json(splits_path)
    if len(splits) != len(ensemble.members):
        raise RunError(f"{splits_path}: {len(splits)} folds, but {len(ensemble.members)} fold runs")
    pooled: dict[Mode, list[dict[str, Any]]] = {m: [] for m in modes}
    names: list[str] = []
    for member, split in zip(ensemble.members, splits):
        scored = score_modes(member, ds, split["val"], modes, tta=tta, progress=progress)
        for m in modes:
            pooled[m] += scored[m]
        names += split["val"]
    return names, "out-of-fold", pooled


def plot(result: dict[str, Any], title: str = "") -> bytes:
    """``prune.png``: IoU (%) vs latency (ms) and vs parameters, one labelled point per level."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    levels = sorted(result["levels"], key=int)
    points = [(f"L{k}", result["levels"][k]) for k in levels]
    if len(levels) > 1:
        points.append(("accurate", result["accurate"]))
    chosen = result["chosen"]
    chosen_label = "accurate" if chosen["mode"] == "accurate" else f"L{chosen['level']}"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, key, xlabel in ((axes[0], "latency_ms", "latency (ms, median)"),
                            (axes[1], "params", "parameters")):
        xs = [p[key] for _, p in points[: len(levels)]]
        ys = [p["iou"] * 100 for _, p in points[: len(levels)]]
        ax.plot(xs, ys, "-", color="tab:blue", alpha=0.5, zorder=1)
        for label, p in points:
            mine = label == chosen_label
            ax.scatter([p[key]], [p["iou"] * 100], s=80 if mine else 40, zorder=2,
                       color="tab:red" if mine else ("tab:gray" if label == "accurate" else "tab:blue"),
                       marker="*" if mine else ("s" if label == "accurate" else "o"))
            ax.annotate(label + (" (chosen)" if mine else ""), (p[key], p["iou"] * 100),
                        textcoords="offset points", xytext=(5, 5), fontsize=9)
        if key == "params":
            ax.set_xscale("log")
        ax.margins(x=0.2, y=0.1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("IoU (%)")
        ax.grid(True, alpha=0.3)
    shape = "x".join(map(str, result.get("input_shape", [])[2:]))
    fig.suptitle(f"{title}: IoU on {result['cases']} {result.get('split', '')} case(s) vs cost "
                 f"(input {shape}, {result.get('device', '')}); tolerance {result['tolerance']} IoU points")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_prune(run: str | os.PathLike, result: dict[str, Any], title: str = "") -> None:
    """``RUN/prune.png`` then ``RUN/prune.json`` (each atomic; the JSON last, as the marker)."""
    run = Path(run)
    atomic_write_bytes(run / "prune.png", plot(result, title))
    atomic_write_json(run / PRUNE, result)
