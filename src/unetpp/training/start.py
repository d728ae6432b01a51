"""How a run starts: a new run folder, a resumed one, or one killed before its first
checkpoint (started again); and the dataset, refused with its check's report when bad."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..console import log
from ..errors import RunError, UnetppError
from ..run import read_run_config
from .checkpoint import has_checkpoint
from .config import TrainConfig, merge_for_resume
from .runlock import LOCK


#: what a run writes before its first checkpoint: all that may be deleted to start it again
BEFORE_FIRST_CHECKPOINT = ("config.json", "model.safetensors", "tensorboard", LOCK)


def start_or_resume(cfg: TrainConfig, run: Path, main: bool = True) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The config to train with and, when resuming, the run's stored config.json.

    A run folder without a checkpoint yet (killed before its first epoch ended) has nothing
    to resume: ``--resume`` (and ``resume="auto"``) start it, with the settings it was
    started with (``--resume``) or those given (``"auto"``). Only what a run writes before
    its first checkpoint is deleted for that (:data:`BEFORE_FIRST_CHECKPOINT`); a folder that
    holds more (a finished run whose ``last/`` was removed) is refused. ``main``: this is the
    process that writes (rank 0 under torchrun); the others only read.
    """
    if cfg.resume and cfg.out and not has_checkpoint(run):
        if (run / "config.json").is_file():  # ours, stopped before its first checkpoint?
            other = sorted(p.name for p in run.iterdir()
                           if p.name not in BEFORE_FIRST_CHECKPOINT and not p.name.endswith(".tmp"))
            if other:
                raise RunError(f"{run}/last: missing, but the folder holds {', '.join(other)}: it is not a run "
                               "stopped before its first checkpoint, so nothing is deleted; start a new run "
                               "in another folder")
            if cfg.resume is True:
                stored = read_run_config(run).get("train", {})
                cfg = merge_for_resume(stored, cfg, run)
            if main:
                for item in run.iterdir():
                    if item.name != LOCK:
                        shutil.rmtree(item) if item.is_dir() else item.unlink()
            log(f"{run}: no checkpoint yet (stopped before its first epoch ended); starting the run")
        elif cfg.resume is True:
            log(f"{run}: no run here yet; starting it")
        cfg = cfg.replace(resume=False)
    if not cfg.resume:
        cfg.validate()
        if main and run.exists() and (not run.is_dir() or any(p.name != LOCK for p in run.iterdir())):
            what = "a run" if (run / "config.json").is_file() else "not empty"
            raise UnetppError(f"--out {run}: already exists ({what}); add --resume to continue it, "
                              "or choose another folder")
        return cfg, None
    if not cfg.out:
        raise UnetppError("--out: no run folder given to resume")
    saved = read_run_config(run)
    cfg = merge_for_resume(saved.get("train", {}), cfg, run)
    split = saved.get("split")
    if not split or not split.get("train") or not split.get("val"):
        raise RunError(f"{run}/config.json: no train/val split stored; cannot resume")
    return cfg, saved


def open_checked(data: str) -> Any:
    """Opening checks every case; a bad dataset is refused with its report before anything
    is written (one line per problem)."""
    from ..data import DataError, open_dataset

    try:
        return open_dataset(data)
    except DataError as e:
        raise DataError([f"{data}: the dataset check failed with {len(e.problems)} problem(s); "
                         "nothing was trained"] + e.problems) from None


__all__ = ["open_checked", "start_or_resume"]
