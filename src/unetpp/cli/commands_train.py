"""``unetpp train``: flags over a ``--config`` file over the defaults of :class:`TrainConfig`.

Under ``torchrun --nproc_per_node N -m unetpp train ...`` the same command trains with
DistributedDataParallel (see :mod:`unetpp.training.distributed`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import UnetppError

H_MODEL = "Model"
H_OPT = "Optimisation"
H_DATA = "Data"
H_RUN = "Runtime"


def train(
    data: str = typer.Argument(..., help="Dataset folder (any supported layout) or a fetched sample's name."),
    out: Path = typer.Option(..., "--out", help="Run folder to create (or to continue with --resume)."),
    arch: Optional[str] = typer.Option(None, help="unetpp, unet or wide-unet. [default: unetpp]",
                                       rich_help_panel=H_MODEL),
    preset: Optional[str] = typer.Option(None, help="modern (instance norm, leaky ReLU: "
                                         "better on user data, docs/results.md section 5) or paper (the DLMIA 2018 "
                                         "network). [default: modern]", rich_help_panel=H_MODEL),
    deep_supervision: Optional[bool] = typer.Option(None, "--deep-supervision/--no-deep-supervision",
                                                    help="A loss on every head (UNet++). [default: on for unetpp]",
                                                    rich_help_panel=H_MODEL),
    dims: Optional[int] = typer.Option(None, help="2 or 3; 2 on volumes trains on slices. [default: the data's]",
                                       rich_help_panel=H_MODEL),
    width: Optional[float] = typer.Option(None, help="Filter scale: base filters = round(32 x width) "
                                          "(35 for wide-unet). [default: 1]", rich_help_panel=H_MODEL),
    base_filters: Optional[int] = typer.Option(None, "--base-filters", help="Filters of the first row "
                                               "(overrides --width).", rich_help_panel=H_MODEL),
    depth: Optional[int] = typer.Option(None, help="Poolings (levels). [default: 4]", rich_help_panel=H_MODEL),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs. [default: 100]", rich_help_panel=H_OPT),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better "
                                           "validation score. [default: 20]", rich_help_panel=H_OPT),
    min_patience_steps: Optional[int] = typer.Option(None, "--min-patience-steps",
                                                     help="... and at least this many training steps in them "
                                                          "(epochs of a few steps on a small data set would stop "
                                                          "a run after seconds); 0: epochs only. [default: 1000]",
                                                     rich_help_panel=H_OPT),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Patches per step (per process). "
                                             "[default: CPU 8 in 2D, 2 in 3D; CUDA from its memory: 'unetpp data plan']", rich_help_panel=H_OPT),
    patch_size: Optional[str] = typer.Option(None, "--patch-size", help="S, or S,S[,S] per axis. "
                                             "[default: CPU 96 in 2D, 64 in 3D; CUDA from its memory]", rich_help_panel=H_OPT),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate. [default: 3e-4]", rich_help_panel=H_OPT),
    schedule: Optional[str] = typer.Option(None, "--schedule", metavar="poly|constant",
                                           help="Learning rate over the run: poly decays it to 0 at the last "
                                                "epoch (or where --max-minutes ends); constant is the paper's. "
                                                "[default: poly]", rich_help_panel=H_OPT),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", help="Steps per epoch. "
                                                  "[default: CPU every training voxel about once; CUDA 250]", rich_help_panel=H_OPT),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-time budget of the "
                                                "epochs (steps and validation): stops, resumable, before an epoch "
                                                "that would not fit.", rich_help_panel=H_OPT),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="Validate every N epochs (and after "
                                            "the last). [default: every epoch, unless validation would cost "
                                            "over 10 % of training]", rich_help_panel=H_DATA),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Share of cases held out for "
                                                 "validation (when the data has no split). [default: 0.2]",
                                                 rich_help_panel=H_DATA),
    fold: Optional[str] = typer.Option(None, help="Cross-validation fold 0..folds-1 instead of a random "
                                       "hold-out; 'all': every fold into OUT/fold_k, then out-of-fold scores "
                                       "(OUT/cv.json) and post-processing.", rich_help_panel=H_DATA),
    jobs: int = typer.Option(1, "--jobs", help="With --fold all: folds trained at once, one process each.",
                             rich_help_panel=H_RUN),
    folds: Optional[int] = typer.Option(None, help="Number of folds with --fold. [default: 5]",
                                        rich_help_panel=H_DATA),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Training augmentation. "
                                           "[default: on]", rich_help_panel=H_DATA),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Loader worker processes. "
                                              "[default: CUDA: enough for 2x what the GPU consumes; CPU: 0]", rich_help_panel=H_DATA),
    seed: Optional[int] = typer.Option(None, help="Seed of everything (init, split, patches). [default: 0]",
                                       rich_help_panel=H_RUN),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps. [default: auto]",
                                         rich_help_panel=H_RUN),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision: bf16 (fp16 on GPUs "
                                       "without bf16). CPU: only with native bf16 and when measured faster, "
                                       "else says why and stays fp32. [default: on for CUDA, off on CPU]",
                                       rich_help_panel=H_RUN),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="channels_last memory format. [default: "
                                                 "where it pays: CUDA]", rich_help_panel=H_RUN),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model. [default: on CUDA "
                                           "when the run is long enough to earn its first step back]",
                                           rich_help_panel=H_RUN),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic",
                                                 help="Deterministic algorithms (slower on GPU).",
                                                 rich_help_panel=H_RUN),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped.",
                                rich_help_panel=H_RUN),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML or JSON file of settings "
                                          "(TrainConfig field names); flags override it.", rich_help_panel=H_RUN),
) -> None:
    """Train a model: best weights, resume state, metrics and curves go to the run folder.

    Under torchrun (torchrun --nproc_per_node N -m unetpp train ...) it trains on N processes
    with DistributedDataParallel.
    """
    from ..training import TrainingInterrupted, resolve_config, train as run_training
    from ..training.config import parse_patch_size

    flags = dict(arch=arch, preset=preset, deep_supervision=deep_supervision, dims=dims, width=width,
                 base_filters=base_filters, depth=depth, epochs=epochs, patience=patience, min_patience_steps=min_patience_steps,
                 batch_size=batch_size, lr=lr, schedule=schedule, steps_per_epoch=steps_per_epoch, max_minutes=max_minutes,
                 val_fraction=val_fraction, val_every=val_every, fold=fold, folds=folds, augment=augment,
                 num_workers=num_workers,
                 seed=seed, device=device, amp=amp, channels_last=channels_last, compile=compile,
                 deterministic=deterministic)
    every_fold = fold is not None and fold.strip().lower() == "all"
    if fold is not None and not every_fold:
        try:
            flags["fold"] = int(fold)
        except ValueError:
            raise UnetppError(f"--fold must be an integer or 'all', got {fold!r}") from None
    elif every_fold:
        flags["fold"] = None
    overrides = {k: v for k, v in flags.items() if v is not None}
    if patch_size is not None:
        overrides["patch_size"] = parse_patch_size(patch_size)
    overrides.update(data=data, out=str(out), resume=resume)
    if resume:
        # a resumed run keeps its stored settings: only explicit flags count, so pass them alone
        from ..training import TrainConfig
        from ..training.config import normalise_keys, read_config_file

        values = TrainConfig().to_dict()
        if config is not None:
            values.update(read_config_file(config))
        values.update(normalise_keys(overrides, "option"))
        cfg = TrainConfig(**values)
    else:
        cfg = resolve_config(overrides, config)
    try:
        if every_fold:
            from ..experiment.crossval import cross_validate

            cross_validate(cfg, jobs=jobs)
        else:
            run_training(cfg)
    except TrainingInterrupted as e:
        print(e.message, file=sys.stderr)
        raise SystemExit(e.exit_code) from None


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("train")(train)
