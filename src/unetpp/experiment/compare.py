"""``unetpp compare``: the paper's experiment on any dataset, over several seeds.

U-Net, wide U-Net, UNet++ without and with deep supervision (the variants of the model
registry's architectures: :func:`variants`) are trained under one budget (the same epochs,
steps per epoch, early stopping, augmentation, split, patch and batch size, learning rate;
only the architecture changes), each with seeds ``0..N-1``, through the training API
(:func:`unetpp.training.train`). Every run is then scored per case on the
held-out cases (the dataset's *test* cases when it has some, else its validation cases,
as ``unetpp evaluate``), and each deep-supervised run is pruned
(:func:`unetpp.inference.prune.prune`: params, FLOPs, latency and validation IoU per
level) and its levels are also scored on the held-out cases.

``--width`` scales the filters of every network (first row ``round(32 x width)``, wide
U-Net ``round(35 x width)``; 1.0 is the paper's size) so that the comparison can be run on
a CPU at reduced cost; it is stated in the results.

Output folder ``DIR``::

    compare.json          the settings (a re-run with other budget settings is refused)
    runs/<arch>-seed<S>/  one run folder per architecture and seed (train's RUN), with
                          compare.json (its scores) once finished
    results.json          everything below, machine-readable (schema below; written by :mod:`.report`)
    results.md            the table, the paper's numbers, the ordering, the pruning table
    iou_boxplot.png       per-case IoU per architecture (all seeds pooled)

**Resumable**: a run with ``runs/.../compare.json`` is not trained again; a run folder with
a training checkpoint is resumed and one that stopped before its first checkpoint is
started again (``train(..., resume="auto")``). So an interrupted ``unetpp compare`` goes on
where it stopped when given the same command, and more seeds or architectures can be added
later (``--seeds 5`` after ``--seeds 3`` trains seeds 3 and 4 only).

``results.json`` (IoU and Dice on a 0-1 scale, as ``unetpp evaluate``)::

    {"format": "unetpp-compare", "format_version": 1, "created", "command",
     "versions": {"unetpp", "torch", "python", "numpy"}, "machine": {"platform", "cpu",
     "cpu_count", "threads", "jobs", "device"},
     "data": {"data", "root", "layout", "spatial_dims", "dims", "channels", "classes",
              "labels", "split": {"train": n, "val": n, "test": n}, "eval_split"},
     "settings": {... CompareConfig, "seeds": [0, 1, ...], "filters": {arch: f}},
     "archs": {"unet": {"label", "arch", "deep_supervision", "filters", "params",
                        "iou": {"mean", "sd", "values"}, "dice": {...},
                        "train_seconds": {...}, "epochs": {...},
                        "runs": [{"seed", "run", "mode", "level", "iou", "dice", "epochs",
                                  "best_epoch", "best_val_score", "train_seconds",
                                  "eval_seconds", "jobs", "cases": [{"case", "iou", "dice"}, ...]}]},
               "wide-unet": ..., "unetpp": ..., "unetpp-ds": ...},
     "pruning": null | {"arch": "unetpp-ds", "tolerance", "input_shape", "device",
                "levels": {"1": {"params", "flops", "latency_ms", "val_iou": {...},
                                 "test_iou": {...}, "test_dice": {...}}, ..., "accurate": ...},
                "chosen": [{"seed", "mode", "level"}]},
     "ordering": {"ours": [archs by mean IoU, best first], "claims": [{"claim", "holds",
                  "difference", "sd"}]},
     "paper": {"nuclei_iou": {...}, "params": {...}},
     "failed": [{"arch", "seed", "error"}], "wall_seconds", "runs_seconds"}

``jobs`` (per run, and the largest in ``machine``) is how many runs trained at once
(``--jobs``, one process each: :mod:`.jobs`): with more than one, latencies were measured
while other runs trained.
``wall_seconds`` is this invocation's (runs finished earlier are not redone);
``runs_seconds`` sums every run's training, scoring and pruning time, whenever it ran.

``sd`` is the sample standard deviation over seeds (null for one seed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..console import log as console_log
from ..errors import UnetppError
from ..models.mode import Mode

from .settings import BUDGET_KEYS, ORDER, RUN_DONE, SETTINGS_FILE, CompareConfig, Variant, run_name, variants  # noqa: F401


# ------------------------------------------------------------------------------ one run
def metrics_rows(run: Path) -> list[dict[str, float]]:
    """The rows of ``RUN/metrics.csv`` (one per epoch; unreadable rows skipped), [] without one."""
    import csv

    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = []
        for row in csv.DictReader(f):
            try:
                rows.append({k: float(v) for k, v in row.items()})
            except (TypeError, ValueError):
                continue
        return rows


def _eval_modes(predictor: Any, eval_mode: str) -> tuple[Mode, list[Mode]]:
    """``(main mode, every mode to score)``: one head alone; deep supervision: the main mode
    (accurate, or fast at one level: ``--eval-mode L<k>``) plus every level, from one pass per
    case."""
    levels = tuple(predictor.levels)
    if len(levels) == 1:
        return Mode.fast(levels[0]), [Mode.fast(levels[0])]
    if eval_mode == "accurate":
        main = Mode.accurate()
    else:
        level = int(eval_mode[1:])
        if level not in levels:
            raise UnetppError(f"--eval-mode {eval_mode}: the network has levels {', '.join(map(str, levels))}")
        main = Mode.fast(level)
    return main, [Mode.fast(lv) for lv in levels] + [Mode.accurate()]


def finish_run(cfg: CompareConfig, key: str, seed: int, run: Path, ds: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Score a trained run on the held-out cases (and prune it if deep-supervised); the
    ``runs/<name>/compare.json`` entry."""
    from ..inference.evaluate import score_modes, select_cases, summarise
    from ..inference.predictor import load
    from ..models import count_parameters

    t0 = time.perf_counter()
    predictor = load(run, device=cfg.device)
    main, modes = _eval_modes(predictor, cfg.eval_mode)
    names, split = select_cases(ds, predictor.config, "evaluate")
    scored = score_modes(predictor, ds, names, modes)
    summary = summarise(main.name, main.level, scored[main])
    eval_seconds = time.perf_counter() - t0
    rows = metrics_rows(run)
    validated = [r for r in rows if r.get("val_score") == r.get("val_score")]  # NaN: an epoch not validated
    best = max(validated, key=lambda r: r["val_score"]) if validated else {}
    entry: dict[str, Any] = {
        "arch": key, "seed": seed, "run": str(run), "params": count_parameters(predictor.model),
        "filters": getattr(predictor.model.config, "base_filters", None),
        "mode": main.name, "level": main.level, "split": split,
        "iou": summary["iou"], "dice": summary["dice"],
        "epochs": int(rows[-1]["epoch"]) if rows else None,
        "best_epoch": int(best["epoch"]) if best else None,
        "best_val_score": best.get("val_score"),
        "train_seconds": float(sum(r.get("seconds", 0.0) for r in rows)),
        "eval_seconds": eval_seconds,
        "cases": [{"case": c["case"], "iou": c["iou"], "dice": c["dice"]} for c in summary["cases"]],
    }
    if summary.get("classes"):
        entry["classes"] = summary["classes"]
    if len(modes) > 1:
        entry["levels"] = {("accurate" if m == "accurate" else str(lv)): {
            "iou": summarise(m, lv, scored[(m, lv)])["iou"], "dice": summarise(m, lv, scored[(m, lv)])["dice"]}
            for m, lv in modes}
        from ..inference.prune import prune

        log(f"{run.name}: pruning (levels {', '.join(map(str, predictor.levels))}, "
            f"{cfg.prune_repeats} timed passes each)")
        t1 = time.perf_counter()
        result = prune(predictor, ds, tolerance=cfg.tolerance, repeats=cfg.prune_repeats, write_to=run)
        entry["prune"] = {"levels": result["levels"], "accurate": result["accurate"], "chosen": result["chosen"],
                          "window": result["window"],
                          "input_shape": result["input_shape"], "device": result["device"],
                          "cases": result["cases"], "split": result["split"]}
        entry["prune_seconds"] = time.perf_counter() - t1
    return entry


def run_one(cfg: CompareConfig, key: str, seed: int, ds: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Train one run (resuming it, or starting it again if it never checkpointed: ``train``'s
    ``resume="auto"``), score it, and write its ``compare.json`` marker."""
    from ..io import atomic_write_json
    from ..training import train

    run = train(cfg.train_config(key, seed).replace(resume="auto"))
    entry = finish_run(cfg, key, seed, run, ds, log)
    entry["jobs"] = cfg.jobs  # runs trained at once: the latencies above were measured beside the others
    atomic_write_json(run / RUN_DONE, entry)
    return entry


def run_job(cfg: CompareConfig, key: str, seed: int, *, device: str) -> dict[str, Any]:
    """:func:`run_one` as a :class:`~.jobs.Job` of ``--jobs`` (in a worker process, on
    ``device``): a stopped run raises :class:`~.jobs.JobStopped`, a failed one
    :class:`~.jobs.JobFailed`."""
    from ..data import open_dataset
    from ..training import TrainingInterrupted
    from .jobs import JobFailed, JobStopped

    saved = "(a resumable state was saved; run the same command to continue)"
    try:
        return run_one(replace(cfg, device=device), key, seed, open_dataset(cfg.data), console_log)
    except TrainingInterrupted as e:
        raise JobStopped(f"stopped by signal {e.signum} {saved}", e.signum) from None
    except KeyboardInterrupt:  # a second signal (or one while scoring): nothing to save
        raise JobStopped(f"stopped by signal 2 {saved}", 2) from None
    except UnetppError as e:
        raise JobFailed("; ".join(e.problems)) from None


# ------------------------------------------------------------------------------ the folder
def _check_settings(out: Path, cfg: CompareConfig) -> None:
    """Write ``DIR/compare.json``, or refuse a folder made with another budget."""
    from ..io import atomic_write_json, read_json

    path = out / SETTINGS_FILE
    mine = cfg.to_dict()
    if path.is_file():
        try:
            saved = read_json(path).get("settings", {})
        except Exception:  # noqa: BLE001 - unreadable: treat as foreign
            raise UnetppError(f"{path}: unreadable; is {out} a folder of 'unetpp compare'?") from None
        problems = [f"--{k.replace('_', '-')}: {out} holds runs made with {saved.get(k)!r}, not {mine[k]!r}; "
                    f"use the same settings to continue, or another --out"
                    for k in BUDGET_KEYS if k in saved and saved.get(k) != mine[k]]
        if problems:
            raise UnetppError(problems)
    elif out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise UnetppError(f"--out {out}: exists and is not a folder of 'unetpp compare'; choose an empty "
                          "or new folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"format": "unetpp-compare-settings", "settings": mine})


# ------------------------------------------------------------------------------ the comparison
def compare(config: CompareConfig | None = None, command: str | None = None,
            log: Callable[[str], None] | None = None, **overrides: Any) -> dict[str, Any]:
    """Run (or continue) the comparison; write results.json/md and the box plot; return the
    results dict (see the module docstring).

    Raises :class:`UnetppError` for bad settings or data before anything is trained, and
    after writing the results when some runs failed (one line each);
    :class:`~unetpp.training.TrainingInterrupted` after SIGINT/SIGTERM.
    """
    from ..data import open_dataset
    from ..inference.evaluate import select_cases
    from ..io import read_json
    from ..training import TrainingError
    from ..runtime import set_threads
    from .report import build_results, write_results

    cfg = CompareConfig(**{**(config.to_dict() if config else {}), **overrides})
    cfg.validate()
    log = log or console_log  # stderr: plain lines in a pipe, rich on a terminal
    out = Path(cfg.out)
    ds = open_dataset(cfg.data)
    _check_settings(out, cfg)
    t_start = time.perf_counter()
    entries: dict[str, list[dict[str, Any]]] = {k: [] for k in cfg.archs}
    failed: list[dict[str, Any]] = []
    total = len(cfg.archs) * cfg.seeds
    # seed-major order: after the first pass every architecture has one finished run
    todo = [(seed, key) for seed in cfg.seed_list() for key in cfg.archs]
    pending: list[tuple[int, str]] = []
    finished: dict[tuple[int, str], dict[str, Any]] = {}
    for seed, key in todo:
        marker = out / "runs" / run_name(key, seed) / RUN_DONE
        if marker.is_file():
            try:
                finished[(seed, key)] = read_json(marker)
                continue
            except Exception:  # noqa: BLE001 - a damaged marker: score again
                pass
        pending.append((seed, key))
    if finished:
        log(f"{len(finished)} of {total} runs already finished in {out / 'runs'}")
    done = len(finished)

    def record(seed: int, key: str, entry: dict[str, Any] | None, error: str | None) -> None:
        nonlocal done
        done += 1
        name = run_name(key, seed)
        if error is not None:
            failed.append({"arch": key, "seed": seed, "error": error})
            log(f"[{done}/{total}] {name}: failed: {error}")
            return
        assert entry is not None
        finished[(seed, key)] = entry
        log(f"[{done}/{total}] {name}: IoU {entry['iou'] * 100:.2f}, Dice {entry['dice'] * 100:.2f} "
            f"on {len(entry['cases'])} {entry['split']} case(s); {entry['train_seconds']:.0f}s training")

    jobs = max(1, min(cfg.jobs, len(pending)))
    cfg = replace(cfg, jobs=jobs)
    threads = set_threads(cfg.threads, log, jobs)
    if jobs > 1:
        _run_parallel(cfg, pending, threads, record, log)
    else:
        for seed, key in pending:
            log(f"[{done + 1}/{total}] {run_name(key, seed)}: training {variants()[key].label} "
                f"(seed {seed}, width {cfg.width:g})")
            try:
                record(seed, key, run_one(cfg, key, seed, ds, log), None)
            except TrainingError as e:
                record(seed, key, None, "; ".join(e.problems))
    for seed, key in todo:
        if (seed, key) in finished:
            entries[key].append(finished[(seed, key)])
    first = next((e for es in entries.values() for e in es), None)
    names, eval_split = select_cases(ds, read_json(Path(first["run"]) / "config.json") if first else {}, "evaluate")
    results = build_results(cfg, ds, entries, failed, command=command, eval_split=eval_split,
                            wall_seconds=time.perf_counter() - t_start)
    write_results(out, results)
    log(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'iou_boxplot.png'}")
    if failed:
        raise UnetppError([f"{run_name(f['arch'], f['seed'])}: {f['error']}" for f in failed])
    return results


def _run_parallel(cfg: CompareConfig, pending: list[tuple[int, str]], threads: int,
                  record: Callable[[int, str, dict[str, Any] | None, str | None], None],
                  log: Callable[[str], None]) -> None:
    """Train ``pending`` runs ``cfg.jobs`` at a time, one process each (:func:`.jobs.run_jobs`).
    The runs are seeded and independent, so they give the same results as one after the
    other. Raises :class:`~unetpp.training.TrainingInterrupted` after SIGINT/SIGTERM, once
    every running worker has saved its state."""
    import signal

    from ..training import TrainingInterrupted
    from .jobs import Job, JobsInterrupted, run_jobs

    def on_signal(signum: int, running: int) -> None:
        log(f"received {signal.Signals(signum).name}: the {running} running run(s) finish their step "
            "and save a resumable state (send it again to abort without saving)")

    log(f"training {len(pending)} runs, {cfg.jobs} at a time ({threads} torch thread(s) each; "
        "their log lines start with the run's name)")
    try:
        run_jobs([Job((seed, key), run_name(key, seed), run_job, (cfg, key, seed)) for seed, key in pending],
                 cfg.jobs, lambda job, entry, error: record(*job.key, entry, error), device=cfg.device,
                 threads=threads, log=log, on_signal=on_signal)
    except JobsInterrupted as e:
        what = ("saved a resumable state" if len(e.signals) == 1 else
                "stopped without saving (they go on from their last checkpoint)")
        raise TrainingInterrupted(f"stopped by {signal.Signals(e.signum).name}: the runs in progress {what}",
                                  e.signum) from None


__all__ = ["CompareConfig", "ORDER", "Variant", "compare", "finish_run", "metrics_rows", "run_job", "run_name",
           "run_one", "variants"]
