"""The training loop: read it top to bottom.

    train(config) -> RUN
      1. start or resume: a new run settles its config (``config.settle``: dims, patch and
         batch size from the data and the model) and refuses an existing --out; a resumed
         run reads its stored config whole (a few settings may change)
      2. open the dataset (the check's report, one line per problem, refuses it)
      3. join the torchrun group if there is one; pick the device (``unetpp.runtime``)
      4. seed; build the split, model, optimiser, loss, precision, loader and validator
      5. write RUN/config.json (model, data, settled train config, split)
      6. restore RUN/last/ if resuming (weights, optimiser, RNG, counters, early stopping)
      7. for each epoch: the steps; validation of every case on the whole image/volume;
         model.safetensors when the score improves; metrics.csv, curves.png; RUN/last/;
         stop early after `patience` epochs without improvement
      SIGINT/SIGTERM: finish the step, save RUN/last/ and raise TrainingInterrupted.
      NaN/Inf loss: raise TrainingError naming epoch and step; RUN/last/ keeps the last good
      epoch.

**Exact resume.** Batches of epoch ``e`` depend only on ``(seed, rank, e)``
(``loader.set_epoch``), the training step uses no global RNG, and ``RUN/last/`` holds the
weights, Adam's state, every RNG state, the counters and the early-stopping state. A run
interrupted mid-epoch stores the RNG state of that epoch's start and the number of steps
done; resuming replays the loader past those steps (no compute) and goes on, so on CPU it
ends with the very same weights as a run never stopped.

**Validation score** (which checkpoint is "best", early stopping): :mod:`.validate`.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import runtime
from ..console import Progress, log
from ..errors import UnetppError
from ..models import ModelConfig, build_model
from ..run import WEIGHTS, check_model_size, make_run_config, write_run_config
from . import distributed
from .checkpoint import checkpoint_rows, load_checkpoint, rng_state, snapshot_checkpoint
from .config import TrainConfig, as_config
from .loss import DeepSupervisionLoss
from .plan import model_config as plan_model_config
from .plan import settle
from .records import Records
from .runlock import hold_run
from .saver import EpochFiles, RunWriter
from .start import open_checked, start_or_resume
from .schedule import horizon, out_of_time_after, rate, set_rate
from .steps import count_step, read_steps, step_stats
from .stops import StopRequest, TrainingError, TrainingInterrupted, patience_spent
from .validate import PatchScore, Validator, monitor_score, validation_every

#: on a GPU, steps between reads of the loss (a read waits for the queued kernels)
SYNC_EVERY = 16


# ------------------------------------------------------------------------------ train()
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
        >>> run = train(data="nuclei-2d", out="runs/a", resume="auto")  # resume or start  # doctest: +SKIP
    """
    cfg = as_config(config, overrides)
    run = Path(cfg.out) if cfg.out else Path()
    info = distributed.from_env()
    with hold_run(run, enabled=bool(cfg.out) and info.main):  # one process per run folder
        cfg, saved = start_or_resume(cfg, run, info.main)
        ds = open_checked(cfg.data)
        device = runtime.pick_device(cfg.device, info.local_rank)
        distributed.setup(info, device)
        try:
            return _train(cfg, run, ds, saved, device, info)
        finally:
            distributed.teardown(info)


# ------------------------------------------------------------------------------ the parts
@dataclass
class _Parts:
    """Everything a run trains with, built in a fixed order from the seed."""

    cfg: TrainConfig            # settled: dims, patch_size, batch_size, ... all filled in
    model_config: ModelConfig
    split: dict[str, list[str]]
    model: torch.nn.Module      # the model whose weights are saved
    net: torch.nn.Module        # what the step calls: the model, or its DDP/compiled wrapper
    optimizer: torch.optim.Optimizer
    criterion: torch.nn.Module
    setup: runtime.TrainingSetup
    scaler: torch.amp.GradScaler
    loader: Any
    validator: Validator
    val_every: int              # epochs between whole-case validations (and after the last)
    patch_score: PatchScore | None  # every epoch, for patience, when validation is spaced out


def _build(cfg: TrainConfig, ds: Any, saved: dict[str, Any] | None, device: torch.device,
           info: distributed.DistInfo, progress: Progress) -> _Parts:
    from ..data.loading.pipeline import make_split, make_train_loader

    runtime.set_determinism(cfg.deterministic, device)
    runtime.seed_everything(cfg.seed)  # everything below follows from the seed
    if saved is not None:  # a resumed run is built as stored: nothing is settled again
        split, model_config = saved["split"], ModelConfig.from_dict(saved["model"])
    else:
        folds = cfg.folds if cfg.fold is not None else None
        split = make_split(ds, val_fraction=cfg.val_fraction, folds=folds, fold=cfg.fold, seed=cfg.seed)
        if not split.get("train") or not split.get("val"):
            raise UnetppError(f"{cfg.data}: {len(ds.case_names)} labelled case(s) cannot be split into "
                              "training and validation cases; add cases or change --val-fraction")
        target = runtime.device_target(device)
        cfg = settle(cfg, ds, split["train"], target, split["val"])
        progress.log(f"plan for {target}: patch {'x'.join(map(str, cfg.patch_size))}, batch {cfg.batch_size}, "
                     f"{cfg.steps_per_epoch} steps an epoch" + (", bf16/fp16" if cfg.amp and target.kind == "cuda" else "")
                     + (", torch.compile" if cfg.compile else "") + f", {cfg.num_workers} loader workers"
                     + (f", whole-case validation every {cfg.val_every} epochs (and after the last; --val-every 1 "
                        "for every epoch)" if (cfg.val_every or 1) > 1 else ""))
        model_config = plan_model_config(cfg, ds)
    check_model_size(model_config, where="--arch/--width/--depth")  # before allocating anything
    model = build_model(model_config)
    levels = tuple(model.levels)
    if cfg.level_weights is not None and len(cfg.level_weights) != len(levels):
        raise UnetppError(f"level_weights has {len(cfg.level_weights)} values; the model has "
                          f"{len(levels)} head(s) (levels {', '.join(map(str, levels))})")
    patch, batch_size = tuple(cfg.patch_size), cfg.batch_size
    setup = runtime.training_setup(model, device, channels_last=cfg.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    criterion = DeepSupervisionLoss(levels, model_config.classes, cfg.level_weights, cfg.ce_weight,
                                    cfg.dice_weight, ignore=getattr(ds, "ignore_label", None))

    def measure(dtype: torch.dtype) -> float:
        x = torch.randn((batch_size, model_config.in_channels, *patch), generator=torch.Generator().manual_seed(0))
        return runtime.autocast_speedup(model, setup.prepare(x.to(device)), dtype)

    precision, note = runtime.choose_precision(device, cfg.amp, measure=measure)
    if note:
        progress.log(note)
    setup.precision = precision
    net: torch.nn.Module = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    samples = cfg.steps_per_epoch * batch_size if cfg.steps_per_epoch else None
    loader = make_train_loader(ds, split["train"], dims=model_config.dims, patch_size=patch, batch_size=batch_size,
                               seed=cfg.seed + info.rank * distributed.RANK_SEED_STRIDE, augment=cfg.augment,
                               num_workers=runtime.loader_workers(device) if cfg.num_workers is None else cfg.num_workers,
                               samples_per_epoch=samples)
    validator = Validator(ds, split["val"], patch, cfg.val_overlap, cfg.val_batch_size, info, device,
                          dtype=precision.dtype)
    val_every = cfg.val_every or validation_every([tuple(ds.case_shape(n)) for n in split["val"]], patch,
                                                  cfg.val_overlap, len(loader) * batch_size)  # a run planned before
    patch_score = (PatchScore(ds, split["val"], patch, device, precision.dtype, cfg.val_batch_size, info)
                   if val_every > 1 and cfg.patience is not None else None)
    return _Parts(cfg, model_config, split, model, net, optimizer, criterion, setup, precision.grad_scaler(),
                  loader, validator, val_every, patch_score)


# ------------------------------------------------------------------------------ the loop
def _train(cfg: TrainConfig, run: Path, ds: Any, saved: dict[str, Any] | None, device: torch.device,
           info: distributed.DistInfo) -> Path:
    main = info.main
    progress = Progress(cfg.progress, enabled=main)
    p = _build(cfg, ds, saved, device, info, progress)
    cfg, model, levels = p.cfg, p.model, tuple(p.model.levels)

    # the run folder's config: rank 0 writes, the others wait so nobody sees half a folder.
    # A resumed run keeps the data config (normalisation statistics) it was trained with.
    if main:
        run.mkdir(parents=True, exist_ok=True)
        data_config = saved["data"] if saved is not None and saved.get("data") else ds.data_config()
        write_run_config(run, make_run_config(p.model_config, data=data_config,
                                              train=cfg.replace(resume=False).to_dict(), split=p.split))
    distributed.barrier(info)

    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_score": None, "best_epoch": None,
                             "bad_epochs": 0, "loss_sum": 0.0, "loss_steps": 0, "seconds": 0.0,
                             "train_seconds": 0.0, "wall_seconds": 0.0, "horizon": cfg.epochs}
    epoch_rng: Any = None
    if saved is not None:
        restored = load_checkpoint(run, model, p.optimizer, p.scaler, restore_rng=True)
        state.update(restored, wall_seconds=restored.get("wall_seconds", restored.get("train_seconds", 0.0)))
        epoch_rng = rng_state() if state["step"] else None  # mid-epoch: RNG of that epoch's start
    if not _announce(cfg, run, p, state, saved is not None, device, info, progress):
        progress.close()
        return run

    def snapshot(epoch_done: int, step: int, rng: Any = None) -> Any:
        """RUN/last/'s content now (a mid-epoch one stores the RNG of its epoch's start)."""
        return snapshot_checkpoint(model, p.optimizer, dict(state, epoch=epoch_done, step=step), p.scaler,
                                   rng=rng, rows=records.rows) if main else None

    def interrupted(signum: int, where: str) -> TrainingInterrupted:
        return TrainingInterrupted(f"interrupted by {signal.Signals(signum).name} {where}; a resumable state is "
                                   f"in {run}/last: continue with 'unetpp train {cfg.data} --out {run} --resume'",
                                   signum)

    records = Records(run, f"{p.model_config.arch} ({p.model_config.preset}, {p.model_config.dims}D)",
                      state["epoch"], enabled=main, tensorboard=cfg.tensorboard,
                      rows=checkpoint_rows(run) if saved is not None and main else None)
    writer = RunWriter(run, WEIGHTS, records.write, enabled=main)  # the files, in the background
    # The host reads the device every `sync_every` steps only (a read waits for the GPU): the
    # stop request, the non-finite count, the first non-finite step and the loss sum travel in
    # one tensor (one all-reduce under torchrun). On the CPU a read costs nothing: every step,
    # so a non-finite loss is caught before its update.
    sync_every = 1 if device.type == "cpu" else SYNC_EVERY
    stats_device = device if device.type == "cuda" else torch.device("cpu")
    start_epoch = state["epoch"] + 1  # the first epoch not completed (maybe partly done)
    if not state["step"]:  # planned again from --epochs/--max-minutes; mid-epoch: as stored, exactly
        state["horizon"] = horizon(cfg.epochs, cfg.max_minutes, state["wall_seconds"], state["epoch"])
    with StopRequest(main) as stop:
        try:
            for epoch in range(start_epoch, cfg.epochs + 1):
                t0 = time.perf_counter()
                skip = state["step"] if epoch == start_epoch else 0
                if skip == 0:
                    epoch_rng = rng_state()
                    state.update(loss_sum=0.0, loss_steps=0, seconds=0.0)
                p.loader.set_epoch(epoch)
                steps = len(p.loader)
                progress.start(f"epoch {epoch}/{cfg.epochs}", steps, skip)
                p.net.train()
                step, since_sync, stop_flag = 0, 0, 0.0
                stats = step_stats(stats_device)
                for step, (image, label) in enumerate(p.loader, start=1):
                    if step <= skip:
                        continue  # replayed up to where the interrupted run stopped
                    if cfg.schedule != "constant":  # training/schedule.py: poly decay to the run's end
                        set_rate(p.optimizer, rate(cfg.schedule, cfg.lr, (epoch - 1) * steps + step - 1,
                                                   state["horizon"] * steps))
                    # ---- the step: forward, loss, (every sync_every steps: one read), backward, update
                    image = p.setup.prepare(image.to(device, non_blocking=True))
                    label = label.to(device, non_blocking=True)
                    with p.setup.autocast():
                        outputs = p.net(image)
                    loss = p.criterion(outputs, label)
                    count_step(stats, loss.detach(), step)
                    since_sync += 1
                    if since_sync == sync_every or step == steps:
                        stop_flag, bad, first_bad, loss_sum = read_steps(stats, stop.signum is not None, info)
                        if bad is not None:
                            what = f"loss is {bad} at" if first_bad else "loss is not finite on another process at"
                            raise TrainingError(
                                f"{what} epoch {epoch}, step {first_bad or step}: training stopped; {run}/last keeps "
                                f"the last good state and {run}/{WEIGHTS} the best weights so far (try a lower --lr, "
                                "or leave out --amp)")
                        step_loss = loss_sum / info.world_size / since_sync
                        state["loss_sum"] += loss_sum / info.world_size
                        state["loss_steps"] += since_sync
                        progress.advance(f"loss {step_loss:.4f}", since_sync)
                        since_sync = 0
                    p.optimizer.zero_grad(set_to_none=True)
                    p.scaler.scale(loss).backward()
                    p.scaler.step(p.optimizer)
                    p.scaler.update()
                    if since_sync == 0 and stop_flag > 0:
                        state["seconds"] += time.perf_counter() - t0
                        writer.submit(EpochFiles(snapshot(epoch - 1, step, rng=epoch_rng)))
                        raise interrupted(stop.signum or signal.SIGTERM, f"at epoch {epoch}, step {step}")
                if state["loss_steps"] == 0:
                    raise TrainingError(f"epoch {epoch}: the loader gave no batches (step {step})")
                train_seconds = time.perf_counter() - t0

                # a resumed epoch: both parts; under torchrun the ranks' mean, so they all decide alike
                epoch_seconds = distributed.mean_over_ranks(state["seconds"] + time.perf_counter() - t0, info, stats_device)
                out_of_time = out_of_time_after(cfg.max_minutes, state["wall_seconds"], epoch, epoch_seconds)
                last = epoch == cfg.epochs or out_of_time
                if p.patch_score is not None:  # patience, between whole-case validations
                    state["patch_iou"] = p.patch_score(model)
                    better = state["patch_iou"] > state.get("best_patch_iou", -1.0)
                    state.update(best_patch_iou=max(state["patch_iou"], state.get("best_patch_iou", -1.0)),
                                 bad_epochs=0 if better else state["bad_epochs"] + 1)
                    last = last or patience_spent(cfg, state)  # stopping: validate it whole
                scores = p.validator(model) if epoch % p.val_every == 0 or last else None
                best = _end_epoch(epoch, scores, state, records, p, t0, train_seconds)
                state["wall_seconds"] = distributed.mean_over_ranks(state["wall_seconds"], info, stats_device)
                state["horizon"] = horizon(cfg.epochs, cfg.max_minutes, state["wall_seconds"], epoch)
                writer.submit(EpochFiles(snapshot(epoch, 0), best=best))
                _log_epoch(progress, epoch, cfg.epochs, records.rows[-1], scores, levels, state, best is not None)
                if stop.signum is not None:  # arrived during validation: the epoch is saved whole
                    raise interrupted(stop.signum, f"after epoch {epoch}")
                if patience_spent(cfg, state):
                    what = "validation patch score" if p.patch_score is not None else "validation score"
                    progress.log(f"early stop after epoch {epoch}: no better {what} for {cfg.patience} epochs "
                                 f"(best whole-case score {state['best_score']:.4f} at epoch {state['best_epoch']})")
                    break
                if out_of_time:
                    progress.log(f"time budget of {cfg.max_minutes:g} min reached after epoch {epoch} (the next "
                                 f"would not fit: {state['wall_seconds'] / epoch:.1f} s an epoch); "
                                 "give --resume with a larger --epochs or --max-minutes to go on")
                    break
        except BaseException as e:
            _close_quietly(writer)  # the last snapshot still lands; the first error is the one raised
            if isinstance(e, (TrainingInterrupted, TrainingError)):  # every process stops at the same step:
                distributed.barrier(info)  # none exits (and has torchrun kill rank 0) before its files are whole
            raise
        else:
            writer.close()
        finally:
            records.close()
            progress.close()
    if state["best_score"] is not None and main:
        log(f"done: best validation score {state['best_score']:.4f} at epoch {state['best_epoch']}; "
            f"run folder {run}")
    return run


def _announce(cfg: TrainConfig, run: Path, p: _Parts, state: dict[str, Any], resumed: bool,
              device: torch.device, info: distributed.DistInfo, progress: Progress) -> bool:
    """Say what is about to happen; False when a resumed run has nothing left to do."""
    if not resumed:
        n_params = sum(t.numel() for t in p.model.parameters())
        mc = p.model_config
        progress.log(f"training {mc.arch} ({mc.preset}, {mc.dims}D, {n_params:,} parameters, "
                     f"heads {', '.join(f'L{lv}' for lv in p.model.levels)}) on {len(p.split['train'])} cases, "
                     f"validating on {len(p.split['val'])}; device {device}"
                     + (f" x {info.world_size} processes" if info.enabled else "") + f"; run {run}")
        return True
    if state["epoch"] + 1 > cfg.epochs:
        progress.log(f"{run}: already trained {state['epoch']} epoch(s) of {cfg.epochs}; "
                     "give a larger --epochs to go on")
        return False
    if patience_spent(cfg, state):
        progress.log(f"{run}: stopped early at epoch {state['epoch']} (no better validation score "
                     f"for {state['bad_epochs']} epochs); give a larger --patience to go on")
        return False
    progress.log(f"resuming {run} at epoch {state['epoch'] + 1}"
                 + (f", step {state['step'] + 1}" if state["step"] else ""))
    return True


def _end_epoch(epoch: int, scores: dict[str, float] | None, state: dict[str, Any], records: Records,
               p: _Parts, t0: float, train_seconds: float) -> dict[str, str] | None:
    """Score the epoch (if validated) and record its row; when it improved, the metadata of
    the best weights to write (else None). Patience counts epochs, validated or not."""
    state["seconds"] += time.perf_counter() - t0
    state["train_seconds"] += train_seconds
    state["wall_seconds"] = state.get("wall_seconds", 0.0) + state["seconds"]
    best = None
    if scores is None:  # not validated this epoch: the row says so with NaN
        scores = {k: float("nan") for k in Validator.keys(tuple(p.model.levels))}
        score = float("nan")
    else:
        score = monitor_score(scores, p.cfg.monitor, tuple(p.model.levels))
        if state["best_score"] is None or score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch)
            best = {"epoch": str(epoch), "score": repr(score), "monitor": p.cfg.monitor}
        if p.patch_score is None:  # patience counts epochs since the best whole-case score
            state["bad_epochs"] = 0 if best else state["bad_epochs"] + epoch - state.get("validated_epoch", epoch - 1)
        state["validated_epoch"] = epoch
    patch = {"val_patch_iou": state["patch_iou"]} if p.patch_score is not None else {}
    records.add({"epoch": epoch, "train_loss": state["loss_sum"] / state["loss_steps"], **scores,
                 "val_score": score, **patch, "seconds": state["seconds"], "train_seconds": train_seconds,
                 "lr": p.optimizer.param_groups[0]["lr"]})
    state["step"] = 0
    return best


def _close_quietly(writer: RunWriter) -> None:
    try:
        writer.close()
    except Exception as e:  # noqa: BLE001 - an error is already on its way out
        log(f"warning: writing the run's files failed too: {e}")


def _log_epoch(progress: Progress, epoch: int, epochs: int, row: dict[str, Any], scores: dict[str, float] | None,
               levels: tuple[int, ...], state: dict[str, Any], improved: bool) -> None:
    if scores is None:
        progress.log(f"epoch {epoch}/{epochs}: loss {row['train_loss']:.4f} (not validated), {state['seconds']:.1f}s")
        return
    heads = " ".join(f"L{lv} {scores[f'val_dice_{lv}']:.3f}" for lv in levels) if len(levels) > 1 else ""
    progress.log(f"epoch {epoch}/{epochs}: loss {row['train_loss']:.4f}, val dice "
                 f"{scores['val_dice']:.4f} iou {scores['val_iou']:.4f}"
                 + (f" (heads: {heads})" if heads else "")
                 + f", score {row['val_score']:.4f}{' *best*' if improved else ''}, {state['seconds']:.1f}s")
