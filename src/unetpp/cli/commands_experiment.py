"""``unetpp compare`` (the paper's experiment) and ``unetpp demo`` (what ``make demo`` runs)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import UnetppError
from .common import log

H_BUDGET = "Budget (the same for every network)"
H_RUN = "Runtime"


def _command_line() -> str:
    return "unetpp " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def compare(
    data: str = typer.Argument(..., help="Dataset folder (any supported layout) or a fetched sample's name."),
    out: Path = typer.Option(..., "--out", help="Output folder (created; an existing comparison is continued)."),
    archs: str = typer.Option("unet,wide-unet,unetpp,unetpp-ds", "--archs",
                              help="Comma-separated: unet, wide-unet, unetpp (no deep supervision), unetpp-ds."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds 0..N-1 per network (mean ± sd over them)."),
    width: float = typer.Option(1.0, "--width", help="Filter scale, 1.0 = the paper (first row round(32 x W), "
                                "wide U-Net round(35 x W)); e.g. 0.25 on a CPU."),
    preset: str = typer.Option("paper", "--preset", help="paper or modern.", rich_help_panel=H_BUDGET),
    dims: Optional[int] = typer.Option(None, "--dims", help="2 or 3; 2 on volumes trains on slices. "
                                       "[default: the dataset's]", rich_help_panel=H_BUDGET),
    depth: int = typer.Option(4, "--depth", help="Poolings (levels) of every network.", rich_help_panel=H_BUDGET),
    epochs: int = typer.Option(50, "--epochs", help="Maximum epochs.", rich_help_panel=H_BUDGET),
    patience: Optional[int] = typer.Option(20, "--patience", help="Early stopping: epochs without a better "
                                           "validation score (0: never stop early).", rich_help_panel=H_BUDGET),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Patches per step. [default: 8 (2D), "
                                             "2 (3D)]", rich_help_panel=H_BUDGET),
    patch_size: Optional[str] = typer.Option(None, "--patch-size", help="S, or S,S[,S]. [default: 96 (2D), "
                                             "64 (3D)]", rich_help_panel=H_BUDGET),
    lr: float = typer.Option(3e-4, "--lr", help="Adam learning rate.", rich_help_panel=H_BUDGET),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", help="Steps per epoch.",
                                                  rich_help_panel=H_BUDGET),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Training time limit per run.",
                                                rich_help_panel=H_BUDGET),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Training augmentation.",
                                 rich_help_panel=H_BUDGET),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Validation share when the data has no "
                                       "split.", rich_help_panel=H_BUDGET),
    eval_mode: str = typer.Option("accurate", "--eval-mode", help="How the deep-supervised UNet++ is scored: "
                                  "accurate (mean of heads) or L<k> (fast mode at level k).",
                                  rich_help_panel=H_BUDGET),
    tolerance: float = typer.Option(0.5, "--tolerance", help="Pruning: smallest level within this many IoU "
                                    "points of the best.", rich_help_panel=H_BUDGET),
    prune_repeats: int = typer.Option(10, "--prune-repeats", help="Timed forward passes per level.",
                                      rich_help_panel=H_RUN),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision (see 'unetpp train "
                                       "--help'). [default: on for CUDA, off on CPU]", rich_help_panel=H_RUN),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps.", rich_help_panel=H_RUN),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: the idle "
                                          "cores: fewer threads than cores on a busy CPU).", rich_help_panel=H_RUN),
    jobs: int = typer.Option(1, "--jobs", help="Runs trained at once, one process each. On a CPU, one job "
                             "per core is the fastest (the idle cores are shared out between the jobs); with "
                             "several GPUs, job k uses cuda:k. Same results as one at a time.",
                             rich_help_panel=H_RUN),
) -> None:
    """Train U-Net, wide U-Net, UNet++ and UNet++ with deep supervision under one budget over
    several seeds; write results.md, results.json, iou_boxplot.png and the pruning table.

    Runs already finished in --out are not trained again (run the same command to continue).
    """
    from ..experiment.compare import CompareConfig, compare as run_compare
    from ..training import TrainingInterrupted
    from ..training.config import parse_patch_size

    cfg = CompareConfig(
        data=data, out=str(out), archs=[a.strip() for a in archs.split(",") if a.strip()], seeds=seeds,
        width=width, preset=preset, dims=dims, depth=depth, epochs=epochs, patience=None if patience == 0 else patience,
        batch_size=batch_size, patch_size=parse_patch_size(patch_size) if patch_size else None, lr=lr,
        steps_per_epoch=steps_per_epoch, max_minutes=max_minutes, augment=augment, val_fraction=val_fraction,
        eval_mode=eval_mode, tolerance=tolerance, prune_repeats=prune_repeats, amp=amp, device=device,
        threads=threads, jobs=jobs)
    try:
        results = run_compare(cfg, command=_command_line())
    except TrainingInterrupted as e:
        print(e.message + f"; run the same 'unetpp compare' command to continue", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    for key, a in results["archs"].items():
        iou = a["iou"]
        if iou["mean"] is not None:
            sd = f" ± {iou['sd'] * 100:.2f}" if iou["sd"] is not None else ""
            log(f"{a['label']}: IoU {iou['mean'] * 100:.2f}{sd} over {len(iou['values'])} seed(s), "
                f"{a['params']:,} parameters")
    print(out / "results.md")


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Demo folder (an unfinished demo there is "
                             "continued; a finished one is reported)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset instead of the nuclei-2d sample "
                                       "(folder or sample name)."),
    minutes: float = typer.Option(6.0, "--minutes", help="Training time budget (minutes)."),
    width: float = typer.Option(0.25, "--width", help="Filter scale (1.0 = the paper)."),
    patch_size: int = typer.Option(128, "--patch-size", help="Training patch (and sliding window) side."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete an earlier demo in --out and start again."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: the idle "
                                          "cores)."),
) -> None:
    """Fetch the nuclei-2d sample, train a deep-supervised UNet++ (reduced width, time budget),
    prune it, predict the held-out tiles with overlays and write OUT/report.md."""
    from ..experiment.demo import DemoConfig, run_demo
    from ..training import TrainingInterrupted

    if minutes <= 0:
        raise UnetppError(f"--minutes must be > 0, got {minutes}")
    cfg = DemoConfig(out=str(out), data=data, minutes=minutes, width=width, patch_size=patch_size,
                     device=device, threads=threads)
    try:
        report = run_demo(cfg, fresh=fresh)
    except TrainingInterrupted as e:
        print(e.message.split("; a resumable")[0] + f"; run 'unetpp demo --out {out}' again to continue",
              file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    print(f"report: {report}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("compare")(compare)
    app.command("demo")(demo)
