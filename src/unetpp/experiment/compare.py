"""``unetpp compare``: the paper's experiment on any dataset, over several seeds.

U-Net, wide U-Net, UNet++ without and with deep supervision are trained under one budget
(the same epochs, steps per epoch, early stopping, augmentation, split, patch and batch
size, learning rate; only the architecture changes), each with seeds ``0..N-1``, through
the training API (:func:`unetpp.training.train`). Every run is then scored per case on the
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
    results.json          everything below, machine-readable (schema: :data:`RESULTS_FORMAT`)
    results.md            the table, the paper's numbers, the ordering, the pruning table
    iou_boxplot.png       per-case IoU per architecture (all seeds pooled)

**Resumable**: a run with ``runs/.../compare.json`` is not trained again; a run folder with
a training checkpoint is resumed (``train(..., resume=True)``); a run folder that stopped
before its first checkpoint is started again. So an interrupted ``unetpp compare`` goes on
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
(``--jobs``): with more than one, latencies were measured while other runs trained.
``wall_seconds`` is this invocation's (runs finished earlier are not redone);
``runs_seconds`` sums every run's training, scoring and pruning time, whenever it ran.

``sd`` is the sample standard deviation over seeds (null for one seed).
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnetppError

RESULTS_FORMAT = "unetpp-compare"
RESULTS_FORMAT_VERSION = 1
SETTINGS_FILE = "compare.json"
RUN_DONE = "compare.json"

#: ``--archs`` names -> (train arch, deep supervision, label).
ARCH_SPECS: dict[str, tuple[str, bool, str]] = {
    "unet": ("unet", False, "U-Net"),
    "wide-unet": ("wide-unet", False, "wide U-Net"),
    "unetpp": ("unetpp", False, "UNet++"),
    "unetpp-ds": ("unetpp", True, "UNet++ DS"),
}
DEFAULT_ARCHS = tuple(ARCH_SPECS)

#: The paper's own numbers (Zhou et al., DLMIA 2018, Table 3 and Table 2): IoU (%) on the
#: cell nuclei data (Data Science Bowl 2018), and parameters of the 2D networks.
PAPER = {
    "source": "Zhou et al., UNet++: A Nested U-Net Architecture for Medical Image Segmentation, "
              "DLMIA 2018 (Tables 2 and 3)",
    "nuclei_iou": {"unet": 90.77, "wide-unet": 90.92, "unetpp": 92.63, "unetpp-ds": 92.52},
    "params": {"unet": 7.76e6, "wide-unet": 9.13e6, "unetpp": 9.04e6, "unetpp-ds": 9.04e6},
}

#: Settings that define the budget: a folder holding runs made with other values is refused.
BUDGET_KEYS = ("data", "preset", "dims", "width", "depth", "epochs", "patience", "batch_size",
               "patch_size", "lr", "steps_per_epoch", "max_minutes", "augment", "val_fraction", "amp",
               "eval_mode")


@dataclass
class CompareConfig:
    """The settings of one comparison; every architecture gets the same budget."""

    data: str = ""
    out: str = ""
    archs: list[str] = field(default_factory=lambda: list(DEFAULT_ARCHS))
    seeds: int = 3                      # seeds 0..seeds-1
    width: float = 1.0                  # filter scale (1.0 = the paper)
    preset: str = "paper"
    dims: int | None = None             # default: the dataset's
    depth: int = 4
    epochs: int = 50
    patience: int | None = 20
    batch_size: int | None = None
    patch_size: list[int] | None = None
    lr: float = 3e-4
    steps_per_epoch: int | None = None
    max_minutes: float | None = None    # per run (training time)
    augment: bool = True
    val_fraction: float = 0.2
    amp: bool = False
    eval_mode: str = "accurate"         # deep-supervised runs: accurate | L<k> (fast at level k)
    tolerance: float = 0.5              # prune: IoU points
    prune_repeats: int = 10
    device: str = "auto"
    threads: int | None = None          # torch threads (None: the idle cores, see set_threads)
    jobs: int = 1                       # runs trained at once, one process each
    num_workers: int = 0
    progress: str = "log"               # training progress: auto | bar | log | none

    def validate(self) -> "CompareConfig":
        p: list[str] = []
        if not self.data:
            p.append("DATA: no dataset given")
        if not self.out:
            p.append("--out: no output folder given")
        unknown = [a for a in self.archs if a not in ARCH_SPECS]
        if unknown:
            p.append(f"--archs: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(ARCH_SPECS)}")
        if not self.archs:
            p.append("--archs: no architecture given")
        if len(set(self.archs)) != len(self.archs):
            p.append(f"--archs: listed twice: {', '.join(self.archs)}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            p.append(f"--seeds must be an integer >= 1, got {self.seeds!r}")
        if not isinstance(self.width, (int, float)) or not math.isfinite(self.width) or not 0 < self.width <= 16:
            p.append(f"--width must be a number > 0 and <= 16, got {self.width!r}")
        if not 0 <= self.tolerance <= 100:
            p.append(f"--tolerance must be between 0 and 100 IoU points, got {self.tolerance}")
        if isinstance(self.prune_repeats, bool) or not isinstance(self.prune_repeats, int) or self.prune_repeats < 1:
            p.append(f"--prune-repeats must be an integer >= 1, got {self.prune_repeats!r}")
        if not (self.eval_mode == "accurate" or (self.eval_mode[:1] == "L" and self.eval_mode[1:].isdigit())):
            p.append(f"--eval-mode must be accurate or L<level>, got {self.eval_mode!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            p.append(f"--threads must be an integer >= 1, got {self.threads!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            p.append(f"--jobs must be an integer >= 1, got {self.jobs!r}")
        if p:
            raise UnetppError(p)
        # the training settings are checked by TrainConfig (one line per bad one)
        self.train_config("unetpp-ds", 0).validate()
        return self

    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    def train_config(self, key: str, seed: int) -> Any:
        from ..training import TrainConfig

        arch, deep, _ = ARCH_SPECS.get(key, ("unetpp", True, ""))
        return TrainConfig(
            data=self.data, out=str(Path(self.out) / "runs" / run_name(key, seed)), arch=arch,
            preset=self.preset, deep_supervision=deep, dims=self.dims, depth=self.depth, width=self.width,
            epochs=self.epochs, patience=self.patience, batch_size=self.batch_size,
            patch_size=list(self.patch_size) if self.patch_size else None, lr=self.lr,
            steps_per_epoch=self.steps_per_epoch, max_minutes=self.max_minutes, augment=self.augment,
            val_fraction=self.val_fraction, amp=self.amp, seed=seed, device=self.device,
            num_workers=self.num_workers, progress=self.progress, tensorboard=False,
            extra={"compare": key})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(all jiffies, idle jiffies) summed over the CPUs, from the first line of /proc/stat;
    None where there is no such file (macOS, Windows)."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 6:
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(values), values[3] + values[4]


def busy_cores(interval: float = 0.5, stat: Path = Path("/proc/stat")) -> float:
    """How many cores other processes keep busy *now*: the CPU time that was not idle over
    ``interval`` seconds (this process sleeps meanwhile). Falls back to the 1-minute load
    average where /proc/stat is missing; that lags by a minute, so right after a heavy job
    (e.g. ``pip install`` before ``make demo``) it would still count cores that are free."""
    before = _cpu_times(stat)
    if before is not None:
        time.sleep(interval)
        after = _cpu_times(stat)
        if after is not None and after[0] > before[0]:
            idle_share = (after[1] - before[1]) / (after[0] - before[0])
            return max(0.0, (1.0 - idle_share) * (os.cpu_count() or 1))
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0


def set_threads(threads: int | None, log: Callable[[str], None], jobs: int = 1) -> int:
    """``torch.set_num_threads``: ``threads``, or (None) the idle cores shared out between
    ``jobs`` processes.

    On a CPU busy with other work, more compute threads than idle cores make every step
    several times slower (the threads wait for each other), so with no explicit number we
    take ``(cpu_count - round(busy_cores())) // jobs`` (at least 1, at most torch's default).
    """
    import torch

    if threads is None:
        default = torch.get_num_threads()
        busy = busy_cores()
        idle = max(1, min(default, (os.cpu_count() or 1) - int(round(busy))))
        threads, unbusy = max(1, idle // jobs), max(1, default // jobs)
        if threads < unbusy:
            log(f"the CPU is busy (other processes use {busy:.1f} of {os.cpu_count()} cores): using {threads} "
                f"torch thread(s){' per job' if jobs > 1 else ''} instead of {unbusy} (--threads to choose)")
    torch.set_num_threads(threads)
    return threads


def run_name(key: str, seed: int) -> str:
    return f"{key}-seed{seed}"


# ------------------------------------------------------------------------------ statistics
def stats(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "sd", "values"}``; ``sd`` is the sample sd over seeds (None for one value)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "values": []}
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return {"mean": float(np.mean(vals)), "sd": sd, "values": vals}


def pct(s: dict[str, Any] | None, digits: int = 2) -> str:
    """``"91.23 ± 0.45"`` from a stats dict on a 0-1 scale."""
    if not s or s.get("mean") is None:
        return "n/a"
    text = f"{s['mean'] * 100:.{digits}f}"
    return text + (f" ± {s['sd'] * 100:.{digits}f}" if s.get("sd") is not None else "")


# ------------------------------------------------------------------------------ one run
def _metrics_rows(run: Path) -> list[dict[str, float]]:
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


def _eval_modes(predictor: Any, eval_mode: str) -> tuple[tuple[str, int | None], list[tuple[str, int | None]]]:
    """``(main mode, every mode to score)``: one head alone; deep supervision: the main mode
    (accurate, or fast at one level) plus every level, from one pass per case."""
    levels = tuple(predictor.levels)
    if len(levels) == 1:
        main = ("fast", levels[0])
        return main, [main]
    if eval_mode == "accurate":
        main = ("accurate", None)
    else:
        level = int(eval_mode[1:])
        if level not in levels:
            raise UnetppError(f"--eval-mode {eval_mode}: the network has levels {', '.join(map(str, levels))}")
        main = ("fast", level)
    modes = [("fast", lv) for lv in levels] + [("accurate", None)]
    return main, modes


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
    summary = summarise(main[0], main[1], scored[main])
    eval_seconds = time.perf_counter() - t0
    rows = _metrics_rows(run)
    best = max(rows, key=lambda r: r.get("val_score", -1)) if rows else {}
    entry: dict[str, Any] = {
        "arch": key, "seed": seed, "run": str(run), "params": count_parameters(predictor.model),
        "filters": getattr(predictor.model.config, "base_filters", None),
        "mode": main[0], "level": main[1], "split": split,
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
                          "input_shape": result["input_shape"], "device": result["device"],
                          "cases": result["cases"], "split": result["split"]}
        entry["prune_seconds"] = time.perf_counter() - t1
    return entry


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


def resume_config(tc: Any) -> Any:
    """The settings to resume the run of ``tc``: only what a resumed run may change; the rest
    comes from the run folder (so that e.g. a patch size stored as [S, S] is not refused)."""
    from ..training import TrainConfig
    from ..training.config import RESUMABLE_CHANGES

    return TrainConfig(out=tc.out, resume=True, **{k: getattr(tc, k) for k in RESUMABLE_CHANGES})


def _train_one(cfg: CompareConfig, key: str, seed: int, log: Callable[[str], None]) -> Path:
    from ..training import train
    from ..training.checkpoint import has_checkpoint

    tc = cfg.train_config(key, seed)
    run = Path(tc.out)
    if run.exists() and (run / "config.json").is_file() and has_checkpoint(run):
        log(f"{run.name}: resuming")
        return train(resume_config(tc))
    if run.exists():
        shutil.rmtree(run)  # stopped before its first checkpoint: nothing to keep
    return train(tc)


def run_one(cfg: CompareConfig, key: str, seed: int, ds: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Train (or resume) one run, score it, and write its ``compare.json`` marker."""
    from ..io import atomic_write_json

    run = _train_one(cfg, key, seed, log)
    entry = finish_run(cfg, key, seed, run, ds, log)
    entry["jobs"] = cfg.jobs  # runs trained at once: the latencies above were measured beside the others
    atomic_write_json(run / RUN_DONE, entry)
    return entry


def job_devices(device: str, jobs: int) -> list[str]:
    """The device of each worker: with several GPUs, worker k gets ``cuda:(k mod count)``;
    otherwise every worker gets ``device``."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{k % torch.cuda.device_count()}" for k in range(jobs)]
    return [device] * jobs


# ------------------------------------------------------------------- --jobs: one process per run
# The parent starts up to N runs at once, each in a spawned process (a forked child of a
# process that has used torch's thread pool can hang), and collects one message from each.
# Workers sit in their own process group: Ctrl-C reaches the parent only, which passes each
# signal on exactly once, so the single-process semantics hold (first signal: finish the
# step and save; second: abort).
_WORKER: dict[str, Any] = {}


def _worker_log(message: str) -> None:
    import sys

    run = _WORKER.get("run", "worker")
    if not message.startswith(f"{run}: "):
        message = f"[{run}] {message}"
    print(message, file=sys.stderr, flush=True)


def _stop_with_parent(parent: int) -> None:
    """If the parent dies (killed), stop like a SIGTERM: save and exit, instead of training on."""
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(cfg: CompareConfig, key: str, seed: int, threads: int, parent: int, messages: Any) -> None:
    import traceback

    import torch

    from ..cli import common
    from ..data import open_dataset
    from ..training import TrainingInterrupted

    if hasattr(os, "setpgrp"):  # POSIX
        os.setpgrp()
    _stop_with_parent(parent)
    _WORKER["run"] = run_name(key, seed)
    common.log = _worker_log  # the training loop logs through cli.common.log
    torch.set_num_threads(threads)
    try:
        entry = run_one(cfg, key, seed, open_dataset(cfg.data), _worker_log)
        messages.put((seed, key, "done", entry))
    except TrainingInterrupted as e:
        messages.put((seed, key, "interrupted", e.signum))
    except KeyboardInterrupt:  # a second signal (or one while scoring): nothing to save
        messages.put((seed, key, "interrupted", 2))
    except UnetppError as e:
        messages.put((seed, key, "failed", "; ".join(e.problems)))
    except Exception as e:  # noqa: BLE001 - reported as this run's failure; the others go on
        traceback.print_exc()
        messages.put((seed, key, "failed", f"{type(e).__name__}: {e}"))


def _run_parallel(cfg: CompareConfig, pending: list[tuple[int, str]], jobs: int,
                  record: Callable[[int, str, dict[str, Any] | None, str | None], None],
                  log: Callable[[str], None]) -> None:
    """Train ``pending`` runs ``jobs`` at a time, one process each. The runs are seeded and
    independent, so they give the same results as one after the other. Raises
    :class:`~unetpp.training.TrainingInterrupted` after SIGINT/SIGTERM, once every running
    worker has saved its state."""
    import multiprocessing
    import queue as queue_module
    import signal
    import threading

    import torch

    from ..training import TrainingInterrupted

    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    threads = torch.get_num_threads()
    slots = job_devices(cfg.device, jobs)
    free = list(range(jobs))
    todo = list(pending)
    running: dict[tuple[int, str], tuple[Any, int]] = {}
    outcome: dict[tuple[int, str], tuple[str, Any]] = {}
    signals: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        signals.append(signum)
        if len(signals) == 1:
            log(f"received {signal.Signals(signum).name}: the {len(running)} running run(s) finish their step "
                "and save a resumable state (send it again to abort without saving)")
        for process, _ in running.values():
            if process.exitcode is None:
                os.kill(process.pid, signum)

    def collect(wait: float) -> None:
        """Every message in the queue, waiting up to ``wait`` seconds for the first."""
        try:
            while True:
                seed, key, status, payload = messages.get(timeout=wait)
                outcome[(seed, key)] = (status, payload)
                wait = 0.0
        except queue_module.Empty:
            pass

    log(f"training {len(pending)} runs, {jobs} at a time ({threads} torch thread(s) each; "
        "their log lines start with the run's name)")
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running or (todo and not signals):
            while todo and free and not signals:
                seed, key = todo.pop(0)
                slot = free.pop(0)
                process = ctx.Process(target=_worker_main, name=run_name(key, seed),
                                      args=(replace(cfg, device=slots[slot]), key, seed, threads, os.getpid(),
                                            messages))
                process.start()
                running[(seed, key)] = (process, slot)
            collect(wait=0.5)
            ended = [k for k, (process, _) in running.items() if process.exitcode is not None]
            collect(wait=0.0)  # a worker's message is in the pipe before its exit code is set
            for k in ended:
                process, slot = running.pop(k)
                process.join()
                free.append(slot)
                status, payload = outcome.get(k, ("ended", process.exitcode))
                if status == "done":
                    record(*k, payload, None)
                elif status == "failed":
                    record(*k, None, payload)
                elif signals:
                    pass  # stopped on our request: continued by the next call
                elif status == "interrupted":
                    record(*k, None, f"stopped by signal {payload} (a resumable state was saved; run the same "
                                     "command to continue)")
                else:
                    record(*k, None, f"its process ended with exit code {payload} before reporting "
                                     "(killed? out of memory?)")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for process, _ in running.values():  # only after an error in this loop
            process.kill()
    if signals:
        what = ("saved a resumable state" if len(signals) == 1 else
                "stopped without saving (they go on from their last checkpoint)")
        raise TrainingInterrupted(f"stopped by {signal.Signals(signals[0]).name}: the runs in progress {what}",
                                  signals[0])


def compare(config: CompareConfig | None = None, command: str | None = None,
            log: Callable[[str], None] | None = None, **overrides: Any) -> dict[str, Any]:
    """Run (or continue) the comparison; write results.json/md and the box plot; return the
    results dict (see the module docstring).

    Raises :class:`UnetppError` for bad settings or data before anything is trained, and
    after writing the results when some runs failed (one line each).
    """
    from ..data import open_dataset
    from ..inference.evaluate import select_cases
    from ..io import read_json
    from ..training import TrainingError

    cfg = CompareConfig(**{**(config.to_dict() if config else {}), **overrides})
    cfg.validate()
    if log is None:
        from ..cli.common import log  # stderr: plain lines in a pipe, rich on a terminal
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
    set_threads(cfg.threads, log, jobs)
    if jobs > 1:
        _run_parallel(cfg, pending, jobs, record, log)
    else:
        for seed, key in pending:
            log(f"[{done + 1}/{total}] {run_name(key, seed)}: training {ARCH_SPECS[key][2]} "
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


# ------------------------------------------------------------------------------ results
def _machine(cfg: CompareConfig) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "device": device, "gpu": gpu}


def _versions() -> dict[str, str]:
    import torch

    from .. import __version__

    return {"unetpp": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _claims(archs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's claims, checked on our means (with the larger of the two seed sds)."""
    def mean(k: str) -> float | None:
        return archs[k]["iou"]["mean"] if k in archs and archs[k]["iou"]["mean"] is not None else None

    def sd(a: str, b: str) -> float | None:
        sds = [archs[k]["iou"]["sd"] for k in (a, b) if archs[k]["iou"]["sd"] is not None]
        return max(sds) if sds else None

    out = []
    for a, b, text in (("unetpp", "unet", "UNet++ beats U-Net"),
                       ("unetpp", "wide-unet", "UNet++ beats wide U-Net"),
                       ("unetpp-ds", "unet", "UNet++ DS beats U-Net"),
                       ("unetpp-ds", "wide-unet", "UNet++ DS beats wide U-Net"),
                       ("wide-unet", "unet", "wide U-Net beats U-Net"),
                       ("unetpp-ds", "unetpp", "deep supervision helps UNet++")):
        ma, mb = mean(a), mean(b)
        if ma is None or mb is None:
            continue
        diff = ma - mb
        s = sd(a, b)
        paper = PAPER["nuclei_iou"][a] - PAPER["nuclei_iou"][b]
        out.append({"claim": text, "a": a, "b": b, "holds": diff > 0, "difference": diff, "sd": s,
                    "within_sd": s is not None and abs(diff) <= s,
                    "paper_nuclei_difference": paper / 100.0, "paper_holds_on_nuclei": paper > 0})
    return out


def build_results(cfg: CompareConfig, ds: Any, entries: dict[str, list[dict[str, Any]]],
                  failed: list[dict[str, Any]], command: str | None, eval_split: str,
                  wall_seconds: float) -> dict[str, Any]:
    from ..training import TrainConfig

    archs: dict[str, dict[str, Any]] = {}
    for key in cfg.archs:
        runs = sorted(entries.get(key, []), key=lambda e: e["seed"])
        arch, deep, label = ARCH_SPECS[key]
        archs[key] = {
            "label": label, "arch": arch, "deep_supervision": deep,
            "filters": TrainConfig(arch=arch, width=cfg.width).filters(),
            "params": runs[0]["params"] if runs else None,
            "iou": stats([r["iou"] for r in runs]), "dice": stats([r["dice"] for r in runs]),
            "train_seconds": stats([r["train_seconds"] for r in runs]),
            "epochs": stats([r["epochs"] for r in runs if r.get("epochs") is not None]),
            "runs": [{k: v for k, v in r.items() if k not in ("prune", "arch")} for r in runs],
        }
    pruning = None
    ds_runs = [r for r in entries.get("unetpp-ds", []) if "prune" in r]
    if ds_runs:
        first = ds_runs[0]["prune"]
        keys = sorted(first["levels"], key=int) + ["accurate"]
        levels = {}
        for k in keys:
            get = (lambda r, k=k: r["prune"]["accurate"] if k == "accurate" else r["prune"]["levels"][k])
            levels[k] = {"params": get(ds_runs[0])["params"], "flops": get(ds_runs[0]).get("flops"),
                         "latency_ms": float(np.median([get(r)["latency_ms"] for r in ds_runs])),
                         "val_iou": stats([get(r)["iou"] for r in ds_runs]),
                         "test_iou": stats([r["levels"][k]["iou"] for r in ds_runs if k in r.get("levels", {})]),
                         "test_dice": stats([r["levels"][k]["dice"] for r in ds_runs if k in r.get("levels", {})])}
        pruning = {"arch": "unetpp-ds", "tolerance": cfg.tolerance, "input_shape": first["input_shape"],
                   "device": first["device"], "val_cases": first["cases"], "val_split": first["split"],
                   "levels": levels,
                   "chosen": [{"seed": r["seed"], **r["prune"]["chosen"]} for r in ds_runs]}
    ranked = sorted((k for k in archs if archs[k]["iou"]["mean"] is not None),
                    key=lambda k: archs[k]["iou"]["mean"], reverse=True)
    split = getattr(ds, "default_split", None)
    first_run = next((r for rs in entries.values() for r in rs), None)
    run_split = None
    if first_run is not None:
        try:
            from ..io import read_json

            run_split = read_json(Path(first_run["run"]) / "config.json").get("split")
        except Exception:  # noqa: BLE001
            run_split = None
    split = run_split or split or {}
    settings = cfg.to_dict()
    settings["seeds_list"] = cfg.seed_list()
    return {
        "format": RESULTS_FORMAT, "format_version": RESULTS_FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "versions": _versions(), "machine": {**_machine(cfg), "jobs": max(
            (r.get("jobs", 1) for rs in entries.values() for r in rs), default=1)},
        "data": {"data": cfg.data, "root": str(getattr(ds, "root", "")), "layout": getattr(ds, "layout", None),
                 "spatial_dims": getattr(ds, "spatial_dims", None), "dims": cfg.dims or getattr(ds, "spatial_dims", None),
                 "channels": getattr(ds, "channels", None), "classes": getattr(ds, "classes", None),
                 "labels": {str(k): v for k, v in (getattr(ds, "labels", {}) or {}).items()},
                 "split": {k: len(v) for k, v in split.items()}, "eval_split": eval_split},
        "settings": settings, "archs": archs, "pruning": pruning,
        "ordering": {"ours": ranked, "paper_nuclei": sorted(PAPER["nuclei_iou"], key=PAPER["nuclei_iou"].get,
                                                             reverse=True),
                     "claims": _claims({k: v for k, v in archs.items()})},
        "paper": PAPER, "failed": failed, "wall_seconds": wall_seconds,
        "runs_seconds": float(sum(r.get("train_seconds", 0.0) + r.get("eval_seconds", 0.0) + r.get("prune_seconds", 0.0)
                                  for rs in entries.values() for r in rs)),
    }


def boxplot_png(results: dict[str, Any]) -> bytes:
    """Per-case IoU (%) per architecture, all seeds pooled; each case a dot."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    keys = [k for k in results["archs"] if results["archs"][k]["runs"]]
    data = [[c["iou"] * 100 for r in results["archs"][k]["runs"] for c in r["cases"]] for k in keys]
    fig, ax = plt.subplots(figsize=(1.6 * max(2, len(keys)) + 2, 4.2), dpi=100)
    if keys:
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(keys) + 1))
        ax.set_xticklabels([results["archs"][k]["label"] for k in keys])
        rng = np.random.default_rng(0)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=12, alpha=0.6, color="tab:blue", zorder=3)
    s = results["settings"]
    ax.set_ylabel("IoU per case (%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"{Path(str(results['data']['data'])).name}: per-case IoU on {results['data']['eval_split']} "
                 f"cases, {s['seeds']} seed(s), width {s['width']:g}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _fmt_seconds(s: dict[str, Any]) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    m = s["mean"]
    return f"{m / 60:.1f} min" if m >= 120 else f"{m:.0f} s"


def results_markdown(results: dict[str, Any]) -> str:
    """``results.md``: what was run, the table, the paper's numbers, the ordering, pruning."""
    s, d, archs = results["settings"], results["data"], results["archs"]
    v, m = results["versions"], results["machine"]
    filters = ", ".join(f"{a['label']} {a['filters']}" for a in archs.values())
    lines = [
        f"# unetpp compare: {Path(str(d['data'])).name}", "",
        f"- data: `{d['data']}` ({d['layout']}, {d['spatial_dims']}D images, trained in {d['dims']}D; "
        f"{d['classes']} class(es) {d['labels']}); split {d['split']}; scored per case on the "
        f"**{d['eval_split']}** cases",
        f"- width factor **{s['width']:g}** (1.0 = the paper): first-row filters {filters}; preset {s['preset']}",
        f"- same budget for every network: epochs {s['epochs']}, early stopping "
        + (f"after {s['patience']} epochs without improvement" if s['patience'] else "off (best epoch kept)") + ", "
        f"steps per epoch {s['steps_per_epoch'] or 'default'}, batch size {s['batch_size'] or 'default'}, "
        f"patch {s['patch_size'] or 'default'}, lr {s['lr']:g}, augmentation {'on' if s['augment'] else 'off'}, "
        f"amp {'on' if s['amp'] else 'off'}"
        + (f", at most {s['max_minutes']:g} min of training per run" if s.get("max_minutes") else ""),
        f"- seeds {s['seeds_list']}; mean ± sample sd over seeds; deep-supervised UNet++ scored in "
        f"{s['eval_mode']} mode",
        f"- unetpp {v['unetpp']}, torch {v['torch']}, Python {v['python']}; {m['cpu']} "
        f"({m['cpu_count']} cores, {m['threads']} torch threads), device {m['device']}"
        + (f" ({m['gpu']})" if m.get("gpu") else "")
        + (f"; {m['jobs']} runs trained at a time, one process each (so the pruning latencies were "
           "measured while other runs trained)" if m.get("jobs", 1) > 1 else ""),
    ]
    if results.get("command"):
        lines += [f"- command: `{results['command']}`"]
    lines += ["", "| network | params | IoU % | Dice % | epochs | training time / run | paper IoU % (nuclei) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for key, a in archs.items():
        ep = a["epochs"]["mean"]
        lines.append(f"| {a['label']} | {a['params']:,} | {pct(a['iou'])} | {pct(a['dice'])} | "
                     f"{'n/a' if ep is None else f'{ep:.0f}'} | {_fmt_seconds(a['train_seconds'])} | "
                     f"{PAPER['nuclei_iou'][key]:.2f} |" if a["params"] is not None else
                     f"| {a['label']} | n/a | n/a | n/a | n/a | n/a | {PAPER['nuclei_iou'][key]:.2f} |")
    lines += ["", f"The paper's IoU column is its cell-nuclei result at full width (parameters "
              f"{PAPER['params']['unet'] / 1e6:.2f}M / {PAPER['params']['wide-unet'] / 1e6:.2f}M / "
              f"{PAPER['params']['unetpp'] / 1e6:.2f}M for U-Net / wide U-Net / UNet++), for reference "
              "only: it was measured on other data, at full width and with a much longer budget.", ""]
    order = results["ordering"]
    if order["ours"]:
        lines += ["## Ordering", "",
                  "- ours (mean IoU): " + " > ".join(archs[k]["label"] for k in order["ours"]),
                  "- the paper (nuclei): " + " > ".join(ARCH_SPECS[k][2] for k in order["paper_nuclei"]), ""]
        for c in order["claims"]:
            sd = f", larger seed sd {c['sd'] * 100:.2f}" if c["sd"] is not None else ""
            note = " (within the seed-to-seed spread)" if c["within_sd"] else ""
            agree = "agrees" if c["holds"] == c["paper_holds_on_nuclei"] else "disagrees"
            lines.append(f"- {c['claim']}: {'yes' if c['holds'] else 'no'}, {c['difference'] * 100:+.2f} IoU points"
                         f"{sd}{note}; the paper: {c['paper_nuclei_difference'] * 100:+.2f} on nuclei; {agree} "
                         "with the paper's sign")
        lines.append("")
    p = results.get("pruning")
    if p:
        shape = "x".join(map(str, p["input_shape"][2:]))
        lines += ["## Pruning the deep-supervised UNet++", "",
                  f"Fast mode at level L runs only UNet++ L<L> (the nodes X^(i,j) with i+j <= L); accurate mode "
                  f"averages every head. Latency: median forward pass on one {shape} input on {p['device']} "
                  f"(median over seeds); validation IoU on {p['val_cases']} {p['val_split']} case(s) (what "
                  f"`unetpp prune` chooses on, tolerance {p['tolerance']:g} IoU points); held-out IoU on the "
                  f"{d['eval_split']} cases.", "",
                  "| level | params | MFLOPs | latency ms | val IoU % | held-out IoU % | held-out Dice % |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for k, e in p["levels"].items():
            name = "accurate" if k == "accurate" else f"L{k}"
            fl = f"{e['flops'] / 1e6:.1f}" if e.get("flops") is not None else "n/a"
            lines.append(f"| {name} | {e['params']:,} | {fl} | {e['latency_ms']:.2f} | {pct(e['val_iou'])} | "
                         f"{pct(e['test_iou'])} | {pct(e['test_dice'])} |")
        chosen = ", ".join(f"seed {c['seed']}: " + ("accurate" if c["mode"] == "accurate" else f"L{c['level']}")
                           for c in p["chosen"])
        lines += ["", f"Chosen by `prune`: {chosen}.", ""]
    lines += ["## Per case", "", "![per-case IoU](iou_boxplot.png)", "",
              "| network | seed | " + "case | IoU % | Dice % |", "|---|---:|---|---:|---:|"]
    for a in archs.values():
        for r in a["runs"]:
            for c in r["cases"]:
                lines.append(f"| {a['label']} | {r['seed']} | {c['case']} | {c['iou'] * 100:.2f} | {c['dice'] * 100:.2f} |")
    if results.get("failed"):
        lines += ["", "## Failed runs", ""] + [f"- {run_name(f['arch'], f['seed'])}: {f['error']}"
                                              for f in results["failed"]]
    lines += ["", f"Time: {results['runs_seconds'] / 60:.1f} min of training, scoring and pruning over all runs; "
              f"{results['wall_seconds'] / 60:.1f} min for this invocation "
              "(runs finished earlier in the folder are not retrained).", ""]
    return "\n".join(lines)


def write_results(out: Path, results: dict[str, Any]) -> None:
    from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text

    atomic_write_bytes(out / "iou_boxplot.png", boxplot_png(results))
    atomic_write_text(out / "results.md", results_markdown(results))
    atomic_write_json(out / "results.json", results)


__all__ = ["ARCH_SPECS", "CompareConfig", "PAPER", "RESULTS_FORMAT", "build_results", "compare",
           "finish_run", "job_devices", "results_markdown", "run_one", "stats", "write_results"]
