"""The training loop: read it top to bottom.

    train(config) -> RUN
      1. settle the config (defaults <- --config file <- flags; a resumed run keeps its own)
      2. refuse an existing --out without --resume; check the dataset (its report, one line
         per problem)
      3. join the torchrun group if there is one; seed everything; build model, optimiser,
         loss, loader
      4. write RUN/config.json (model, data, train, split)
      5. resume from RUN/last/ if asked (weights, optimiser, RNG, counters, early stopping)
      6. for each epoch: loader.set_epoch(epoch); steps; validate every case on the whole
         image/volume (sliding window); save model.safetensors when the score improves;
         metrics.csv, curves.png; RUN/last/; stop early after `patience` epochs without
         improvement
      SIGINT/SIGTERM: finish the step, save RUN/last/ and raise TrainingInterrupted.
      NaN/Inf loss: raise TrainingError naming epoch and step; RUN/last/ keeps the last good
      epoch.

**Exact resume.** Batches of epoch ``e`` depend only on ``(seed, rank, e)``
(``loader.set_epoch``), the training step uses no global RNG, and ``RUN/last/`` holds the
weights, Adam's state, every RNG state, the counters and the early-stopping state. A run
interrupted mid-epoch stores the RNG state of that epoch's start and the number of steps
done; resuming replays the loader past those steps (no compute) and goes on, so on CPU it
ends with the very same weights as a run never stopped.

**Validation score** (which checkpoint is "best", and early stopping): by default the mean
over validation cases of the per-case IoU of the *accurate* mode (the mean of every head's
probabilities; for a model with one head, that head), each case predicted whole through
:func:`unetpp.inference.engine.predict_probabilities`. ``monitor="mean"`` uses the mean of
the heads' IoUs, ``monitor="L2"`` one head's IoU.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunError, UnetppError
from ..io import atomic_write_text
from ..metrics import case_scores
from ..models import ModelConfig, build_model
from ..run import WEIGHTS, check_model_size, make_run_config, read_run_config, save_weights, write_run_config
from . import distributed
from .checkpoint import has_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, merge_for_resume, normalise_keys
from .loss import DeepSupervisionLoss
from .plots import plot_curves

METRICS = "metrics.csv"
CURVES = "curves.png"
#: curves.png is redrawn at most this often during training, and always at the end
PLOT_EVERY_S = 60.0


class TrainingError(UnetppError):
    """Training cannot go on (non-finite loss, ...); RUN/last/ keeps the last good state."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM: a resumable state was saved. ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.message, self.signum, self.exit_code = message, signum, 128 + signum


# ---------------------------------------------------------------------------------- helpers
def _log(message: str, main: bool = True) -> None:
    if main:
        from ..cli.common import log

        log(message)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str, info: distributed.DistInfo) -> torch.device:
    """``auto``: CUDA (this rank's GPU under torchrun), else MPS, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnetppError("--device cuda: no CUDA GPU is available to PyTorch "
                              f"(torch {torch.__version__}); use --device cpu")
        return torch.device("cuda", info.local_rank) if name == "cuda" else torch.device(name)
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UnetppError("--device mps: Apple's MPS backend is not available; use --device cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CPU and on GPUs that support it, else fp16 (with a GradScaler)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16


def _as_config(config: TrainConfig | dict[str, Any] | None, overrides: dict[str, Any]) -> TrainConfig:
    if config is None:
        config = TrainConfig()
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    if overrides:
        config = config.replace(**normalise_keys(overrides, "train()"))
    return config


def _read_metrics(path: Path, up_to_epoch: int) -> list[dict[str, Any]]:
    """Rows of an existing metrics.csv (for a resumed run), epochs <= up_to_epoch."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                parsed = {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
            except (TypeError, ValueError):
                continue
            if parsed["epoch"] <= up_to_epoch:
                rows.append(parsed)
    return rows


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


class _StopRequest:
    """SIGINT/SIGTERM set a flag the loop reads after each step; a second one aborts."""

    def __init__(self, main: bool):
        self.signum: int | None = None
        self.main = main
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        _log(f"received {signal.Signals(signum).name}: finishing the current step, then saving a "
             "resumable state (send it again to abort without saving)", self.main)

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Progress:
    """A rich progress bar on a terminal, plain log lines otherwise (rank 0 only)."""

    def __init__(self, mode: str, main: bool):
        from ..cli.common import err, interactive

        self.bar = None
        self.quiet = not main or mode == "none"
        if not self.quiet and (mode == "bar" or (mode == "auto" and interactive())):
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                console=err, transient=False)
            self.bar.start()
        self.task = None

    def start_epoch(self, epoch: int, epochs: int, steps: int | None, done: int) -> None:
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"epoch {epoch}/{epochs}", total=steps, completed=done, info="")

    def step(self, loss: float) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=1, info=f"loss {loss:.4f}")

    def log(self, message: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False)
        else:
            _log(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _tensorboard(run: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard not installed: no log, silently
        return None
    return SummaryWriter(log_dir=str(run / "tensorboard"))


def default_patch_size(ds: Any, cases: list[str], dims: int, depth: int) -> tuple[int, ...]:
    """96 per axis in 2D, 64 in 3D, but no larger than the largest training case (rounded up
    to a multiple of ``2**depth``): small images are not padded to a big patch."""
    side = 96 if dims == 2 else 64
    try:
        shapes = [tuple(ds.case_shape(n))[-dims:] for n in cases]
    except Exception:  # noqa: BLE001 - a dataset without cheap shapes: the plain default
        return (side,) * dims
    m = 2 ** depth
    return tuple(min(side, -(-max(s[d] for s in shapes) // m) * m) for d in range(dims))


# ------------------------------------------------------------------------------ validation
def monitor_score(scores: dict[str, float], monitor: str, levels: tuple[int, ...]) -> float:
    if monitor == "accurate":
        return scores["val_iou"]
    if monitor == "mean":
        return float(np.mean([scores[f"val_iou_{lv}"] for lv in levels]))
    level = int(monitor[1:])
    if level not in levels:
        raise UnetppError(f"monitor {monitor}: the model has heads {', '.join(f'L{lv}' for lv in levels)}")
    return scores[f"val_iou_{level}"]


class Validator:
    """Per-case Dice/IoU of every head and of the accurate mode, on whole images/volumes.

    Under torchrun each rank scores cases ``rank, rank + N, ...`` and the sums are
    all-reduced, so every rank gets the same scores.
    """

    def __init__(self, ds: Any, names: list[str], patch_size: tuple[int, ...], cfg: TrainConfig,
                 info: distributed.DistInfo, device: torch.device):
        self.ds, self.names, self.patch_size, self.cfg = ds, list(names), patch_size, cfg
        self.info, self.device = info, device
        self.mine = [n for i, n in enumerate(self.names) if i % info.world_size == info.rank]

    def _case(self, name: str) -> tuple[torch.Tensor, np.ndarray]:
        case = self.ds.load_case(name)  # the dataset keeps decoded cases in its own cache
        if case.label is None:
            raise UnetppError(f"{name}: validation case without a label")
        return torch.from_numpy(np.ascontiguousarray(case.image, dtype=np.float32)), np.asarray(case.label)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        from ..inference.engine import predict_probabilities, probabilities_to_labels

        classes, levels = model.config.classes, tuple(model.levels)
        keys = [f"val_{m}_{lv}" for lv in levels for m in ("dice", "iou")] + ["val_dice", "val_iou"]
        sums = torch.zeros(len(keys), dtype=torch.float64)
        was_training = model.training
        model.eval()
        try:
            for name in self.mine:
                image, label = self._case(name)
                probs = predict_probabilities(model, image, levels=levels, patch_size=self.patch_size,
                                              overlap=self.cfg.val_overlap, batch_size=self.cfg.val_batch_size,
                                              device=self.device,
                                              amp=self.cfg.amp and self.device.type == "cuda")
                row = []
                for lv in levels:
                    s = case_scores(probabilities_to_labels(probs[lv], classes), label, classes)
                    row += [s["dice"], s["iou"]]
                accurate = torch.stack([probs[lv] for lv in levels]).mean(0)
                s = case_scores(probabilities_to_labels(accurate, classes), label, classes)
                row += [s["dice"], s["iou"]]
                sums += torch.tensor(row, dtype=torch.float64)
        finally:
            model.train(was_training)
        if self.info.enabled:  # NCCL reduces CUDA tensors only
            reduce_device = self.device if self.device.type == "cuda" else torch.device("cpu")
            sums = distributed.all_reduce_sum(sums.to(reduce_device), self.info).cpu()
        return {k: float(v) / len(self.names) for k, v in zip(keys, sums.tolist())}


# ------------------------------------------------------------------------------ the loop
def train(config: TrainConfig | dict[str, Any] | None = None, **overrides: Any) -> Path:
    """Train a model; return the run folder.

    Args:
        config: a :class:`TrainConfig` (or a dict of its fields).
        **overrides: fields of :class:`TrainConfig` that replace those of ``config``.

    Raises:
        UnetppError: bad settings, bad dataset (one line per problem), an existing ``out``
            without ``resume``.
        TrainingError: NaN/Inf loss (the message names epoch and step).
        TrainingInterrupted: SIGINT/SIGTERM; ``RUN/last/`` holds a resumable state.

    Example:
        >>> run = train(data="nuclei-2d", out="runs/a", epochs=30, batch_size=8)  # doctest: +SKIP
        >>> run = train(data="nuclei-2d", out="runs/a", resume=True)               # doctest: +SKIP
    """
    cfg = _as_config(config, overrides)
    info = distributed.from_env()
    run = Path(cfg.out) if cfg.out else Path()

    # 1. the config: a resumed run keeps its own (a few settings may change)
    saved: dict[str, Any] | None = None
    if cfg.resume:
        if not cfg.out:
            raise UnetppError("--out: no run folder given to resume")
        saved = read_run_config(run)
        cfg = merge_for_resume(saved.get("train", {}), cfg, run)
        if not has_checkpoint(run):
            raise RunError(f"{run}/last: missing; nothing to resume (the run stopped before its first "
                           "checkpoint: delete the folder and start again)")
    else:
        cfg.validate()
        if run.exists() and (not run.is_dir() or any(run.iterdir())):
            what = "a run" if (run / "config.json").is_file() else "not empty"
            raise UnetppError(f"--out {run}: already exists ({what}); add --resume to continue it, "
                              "or choose another folder")

    # 2. the dataset: opening it checks every case; refused with the report before anything is
    #    written (open_dataset raises DataError, one line per problem)
    from ..data import DataError, open_dataset

    try:
        ds = open_dataset(cfg.data)
    except DataError as e:
        raise DataError([f"{cfg.data}: the dataset check failed with {len(e.problems)} problem(s); "
                         "nothing was trained"] + e.problems) from None

    device = pick_device(cfg.device, info)
    distributed.setup(info, device)
    try:
        return _train(cfg, run, ds, saved, device, info)
    finally:
        distributed.teardown(info)


def _train(cfg: TrainConfig, run: Path, ds: Any, saved: dict[str, Any] | None, device: torch.device,
           info: distributed.DistInfo) -> Path:
    from ..data.pipeline import make_split, make_train_loader

    main = info.main
    # 3. model, split, loader: everything follows from the seed
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic and device.type == "cuda"
    seed_everything(cfg.seed)
    if saved is not None:
        model_config = ModelConfig.from_dict(saved["model"])
        split = saved.get("split")
        if not split or not split.get("train") or not split.get("val"):
            raise RunError(f"{run}/config.json: no train/val split stored; cannot resume")
    else:
        dims = cfg.dims or ds.spatial_dims
        if dims == 3 and ds.spatial_dims == 2:
            raise UnetppError(f"--dims 3: {cfg.data} holds 2D images; use --dims 2")
        deep = cfg.deep_supervision if cfg.deep_supervision is not None else cfg.arch == "unetpp"
        model_config = ModelConfig.from_preset(cfg.arch, cfg.preset, dims=dims, in_channels=ds.channels,
                                               classes=ds.classes, depth=cfg.depth,
                                               base_filters=cfg.filters(), deep_supervision=deep)
        folds = cfg.folds if cfg.fold is not None else None
        split = make_split(ds, val_fraction=cfg.val_fraction, folds=folds, fold=cfg.fold, seed=cfg.seed)
        if not split.get("train") or not split.get("val"):
            raise UnetppError(f"{cfg.data}: {len(ds.case_names)} labelled case(s) cannot be split into "
                              "training and validation cases; add cases or change --val-fraction")
    dims = model_config.dims
    patch = tuple(cfg.patch_size) if cfg.patch_size else default_patch_size(ds, split["train"], dims,
                                                                            model_config.depth)
    patch = patch * dims if len(patch) == 1 else patch
    batch_size = cfg.batch_size or (8 if dims == 2 else 2)

    check_model_size(model_config, where="--arch/--width/--depth")  # before allocating anything
    raw_model = build_model(model_config)
    levels = tuple(raw_model.levels)
    if cfg.level_weights is not None and len(cfg.level_weights) != len(levels):
        raise UnetppError(f"level_weights has {len(cfg.level_weights)} values; the model has "
                          f"{len(levels)} head(s) (levels {', '.join(map(str, levels))})")
    memory_format = (torch.channels_last if dims == 2 else torch.channels_last_3d) if cfg.channels_last \
        else torch.contiguous_format
    raw_model.to(device=device, memory_format=memory_format)
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    criterion = DeepSupervisionLoss(levels, model_config.classes, cfg.level_weights, cfg.ce_weight, cfg.dice_weight)
    amp_dtype = autocast_dtype(device)
    use_scaler = cfg.amp and device.type == "cuda" and amp_dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    net: torch.nn.Module = raw_model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    samples = cfg.steps_per_epoch * batch_size if cfg.steps_per_epoch else None
    loader = make_train_loader(ds, split["train"], dims=dims, patch_size=patch, batch_size=batch_size,
                               seed=cfg.seed + info.rank * distributed.RANK_SEED_STRIDE, augment=cfg.augment,
                               num_workers=cfg.num_workers, samples_per_epoch=samples)
    validator = Validator(ds, split["val"], patch, cfg, info, device)

    # 4. the run folder's config (rank 0 writes; the others wait so nobody sees half a folder)
    # stored with the values actually used (inference reads patch_size for its sliding window)
    stored_cfg = cfg.replace(resume=False, dims=dims, patch_size=list(patch), batch_size=batch_size,
                             deep_supervision=model_config.deep_supervision,
                             base_filters=model_config.base_filters).to_dict()
    if main:
        run.mkdir(parents=True, exist_ok=True)
        # a resumed run keeps the data config (normalisation statistics) it was trained with
        data_config = saved["data"] if saved is not None and saved.get("data") else ds.data_config()
        write_run_config(run, make_run_config(model_config, data=data_config, train=stored_cfg, split=split))
    distributed.barrier(info)

    # 5. resume
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_score": None, "best_epoch": None,
                             "bad_epochs": 0, "loss_sum": 0.0, "loss_steps": 0, "seconds": 0.0,
                             "train_seconds": 0.0}
    epoch_rng: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None
    if saved is not None:
        state.update(load_checkpoint(run, raw_model, optimizer, scaler, restore_rng=True))
        epoch_rng = rng_state() if state["step"] else None  # mid-epoch: RNG of that epoch's start
    rows = _read_metrics(run / METRICS, state["epoch"]) if main else []
    tb = _tensorboard(run, cfg.tensorboard) if main else None
    progress = _Progress(cfg.progress, main)

    def checkpoint(epoch_done: int, step: int, rng: Any = None) -> None:
        if main:
            st = dict(state, epoch=epoch_done, step=step)
            if rng is not None:  # a mid-epoch checkpoint restores the RNG of its epoch's start
                saved_rng = rng_state()
                set_rng_state(*rng)
                save_checkpoint(run, raw_model, optimizer, st, scaler)
                set_rng_state(*saved_rng)
            else:
                save_checkpoint(run, raw_model, optimizer, st, scaler)
        distributed.barrier(info)

    start_epoch = state["epoch"] + 1  # the first epoch not completed (maybe partly done)
    if saved is not None:
        if start_epoch > cfg.epochs:
            progress.log(f"{run}: already trained {state['epoch']} epoch(s) of {cfg.epochs}; "
                         "give a larger --epochs to go on")
            progress.close()
            return run
        if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
            progress.log(f"{run}: stopped early at epoch {state['epoch']} (no better validation score "
                         f"for {state['bad_epochs']} epochs); give a larger --patience to go on")
            progress.close()
            return run
        progress.log(f"resuming {run} at epoch {start_epoch}"
                     + (f", step {state['step'] + 1}" if state["step"] else ""))
    else:
        n_params = sum(p.numel() for p in raw_model.parameters())
        progress.log(f"training {model_config.arch} ({model_config.preset}, {dims}D, {n_params:,} parameters, "
                     f"heads {', '.join(f'L{lv}' for lv in levels)}) on {len(split['train'])} cases, "
                     f"validating on {len(split['val'])}; device {device}"
                     + (f" x {info.world_size} processes" if info.enabled else "") + f"; run {run}")

    def plot() -> None:
        nonlocal plotted_at
        plot_curves(rows, run / CURVES, title=f"{model_config.arch} ({model_config.preset}, {dims}D)")
        plotted_at = time.perf_counter()

    # 6. the epochs
    plotted_at = time.perf_counter()
    stop = _StopRequest(main)
    flags = torch.zeros(3, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if cfg.amp else nullcontext
    with stop:
        try:
            for epoch in range(start_epoch, cfg.epochs + 1):
                t0 = time.perf_counter()
                skip = state["step"] if epoch == start_epoch else 0
                if skip == 0:
                    epoch_rng = rng_state()
                    state["loss_sum"], state["loss_steps"], state["seconds"] = 0.0, 0, 0.0
                assert epoch_rng is not None
                loader.set_epoch(epoch)
                steps = len(loader) if hasattr(loader, "__len__") else None
                progress.start_epoch(epoch, cfg.epochs, steps, skip)
                net.train()
                step = 0
                for step, (image, label) in enumerate(loader, start=1):
                    if step <= skip:
                        continue  # replayed up to where the interrupted run stopped
                    image = image.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                    label = label.to(device, non_blocking=True)
                    with autocast():
                        outputs = net(image)
                    loss = criterion(outputs, label)
                    # one collective per step: stop requests, non-finite loss, the loss itself
                    flags[0], flags[1], flags[2] = float(stop.signum is not None), 0.0, 0.0
                    finite = bool(torch.isfinite(loss))
                    flags[1] = 0.0 if finite else 1.0
                    flags[2] = loss.detach().double() if finite else 0.0
                    distributed.all_reduce_sum(flags, info)
                    if flags[1] > 0:
                        where = f"at epoch {epoch}, step {step}"
                        what = f"loss is {loss.item()}" if not finite else "loss is not finite on another process"
                        raise TrainingError(
                            f"{what} {where}: training stopped; {run}/last keeps the last good state and "
                            f"{run}/{WEIGHTS} the best weights so far (try a lower --lr, or leave out --amp)")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    step_loss = float(flags[2]) / info.world_size
                    state["loss_sum"] += step_loss
                    state["loss_steps"] += 1
                    progress.step(step_loss)
                    if flags[0] > 0:
                        state["seconds"] += time.perf_counter() - t0
                        checkpoint(epoch - 1, step, rng=epoch_rng)
                        signum = stop.signum or signal.SIGTERM
                        raise TrainingInterrupted(
                            f"interrupted by {signal.Signals(signum).name} at epoch {epoch}, step {step}; "
                            f"a resumable state is in {run}/last: continue with "
                            f"'unetpp train {cfg.data} --out {run} --resume'", signum)
                if state["loss_steps"] == 0:
                    raise TrainingError(f"epoch {epoch}: the loader gave no batches (step {step})")
                train_seconds = time.perf_counter() - t0

                scores = validator(raw_model)
                score = monitor_score(scores, cfg.monitor, levels)
                state["seconds"] += time.perf_counter() - t0
                state["train_seconds"] += train_seconds
                improved = state["best_score"] is None or score > state["best_score"]
                if improved:
                    state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
                    if main:
                        save_weights(run / WEIGHTS, raw_model, metadata={"epoch": str(epoch), "score": repr(score),
                                                                         "monitor": cfg.monitor})
                else:
                    state["bad_epochs"] += 1
                row = {"epoch": epoch, "train_loss": state["loss_sum"] / state["loss_steps"], **scores,
                       "val_score": score, "seconds": state["seconds"], "lr": optimizer.param_groups[0]["lr"]}
                rows.append(row)
                if main:
                    write_metrics(run / METRICS, rows)
                    if time.perf_counter() - plotted_at >= PLOT_EVERY_S:  # drawing costs ~1 s
                        plot()
                    if tb is not None:
                        for k, v in row.items():
                            if k != "epoch":
                                tb.add_scalar(k, v, epoch)
                        tb.flush()
                state["step"] = 0
                checkpoint(epoch, 0)
                heads = " ".join(f"L{lv} {scores[f'val_dice_{lv}']:.3f}" for lv in levels) if len(levels) > 1 else ""
                progress.log(f"epoch {epoch}/{cfg.epochs}: loss {row['train_loss']:.4f}, val dice "
                             f"{scores['val_dice']:.4f} iou {scores['val_iou']:.4f}"
                             + (f" (heads: {heads})" if heads else "")
                             + f", score {score:.4f}{' *best*' if improved else ''}, {state['seconds']:.1f}s")

                if stop.signum is not None:  # arrived during validation: the epoch is saved whole
                    raise TrainingInterrupted(
                        f"interrupted by {signal.Signals(stop.signum).name} after epoch {epoch}; a resumable "
                        f"state is in {run}/last: continue with 'unetpp train {cfg.data} --out {run} --resume'",
                        stop.signum)
                if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
                    progress.log(f"early stop after epoch {epoch}: no better validation score for "
                                 f"{cfg.patience} epochs (best {state['best_score']:.4f} at epoch {state['best_epoch']})")
                    break
                if cfg.max_minutes is not None and state["train_seconds"] / 60 >= cfg.max_minutes:
                    progress.log(f"time budget of {cfg.max_minutes:g} min reached after epoch {epoch}; "
                                 "give --resume with a larger --epochs or --max-minutes to go on")
                    break
        finally:
            if main and rows:
                plot()
            progress.close()
            if tb is not None:
                tb.close()
    if state["best_score"] is not None:
        _log(f"done: best validation score {state['best_score']:.4f} at epoch {state['best_epoch']}; "
             f"run folder {run}", main)
    return run
