"""The run folder: what training writes and what evaluate/prune/predict/export read.

    RUN/config.json        {"format": "unetpp-run", "format_version": 1, "unetpp_version",
                            "model": ModelConfig, "data": {...}, "train": {...}}
    RUN/model.safetensors  best weights by validation score
    RUN/last/              resume state (weights, optimiser, RNG, epoch), no pickle
    RUN/metrics.csv, curves.png, prune.json, prune.png

Loading validates ``config.json`` (known keys, sane sizes) *before* building the network, and
reads weights only through safetensors, so a file from a stranger cannot run code or make us
allocate gigabytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import RunError
from .io import atomic_write_json, load_tensors, read_json, save_tensors
from .models import ModelConfig, build_model

RUN_FORMAT = "unetpp-run"
RUN_FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PRUNE = "prune.json"
CONFIG_SECTIONS = {"format", "format_version", "unetpp_version", "model", "data", "train", "split"}


def make_run_config(model_config: ModelConfig, data: dict[str, Any] | None = None,
                    train: dict[str, Any] | None = None, split: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
                           "unetpp_version": __version__, "model": model_config.to_dict(),
                           "data": data or {}, "train": train or {}}
    if split is not None:
        cfg["split"] = split
    return cfg


def write_run_config(run: str | os.PathLike, config: dict[str, Any]) -> Path:
    return atomic_write_json(Path(run) / CONFIG, config)


def read_run_config(run: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``RUN/config.json``; raise :class:`RunError` naming the problem."""
    run = Path(run)
    if not run.is_dir():
        raise RunError(f"{run}: not a run folder (no such directory)")
    path = run / CONFIG
    if not path.is_file():
        raise RunError(f"{path}: missing; is {run} a folder written by 'unetpp train'?")
    cfg = read_json(path, max_bytes=2**20)
    if not isinstance(cfg, dict) or cfg.get("format") != RUN_FORMAT:
        raise RunError(f"{path}: not a unetpp run config (no \"format\": \"{RUN_FORMAT}\")")
    version = cfg.get("format_version")
    if version != RUN_FORMAT_VERSION:
        raise RunError(f"{path}: run format version {version!r}; this unetpp ({__version__}) "
                       f"reads version {RUN_FORMAT_VERSION}")
    unknown = sorted(set(cfg) - CONFIG_SECTIONS)
    if unknown:
        raise RunError(f"{path}: unknown keys {', '.join(unknown)}")
    try:
        ModelConfig.from_dict(cfg.get("model"))
    except (TypeError, ValueError) as e:
        raise RunError(f"{path}: invalid model config: {e}") from None
    return cfg


def save_weights(path: str | os.PathLike, model: nn.Module, metadata: dict[str, str] | None = None) -> Path:
    return save_tensors(path, dict(model.state_dict()), metadata)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load safetensors weights into ``model``, requiring the exact same keys and shapes."""
    tensors = load_tensors(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} tensor(s) e.g. {missing[0]}")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} tensor(s) e.g. {unexpected[0]}")
        raise RunError(f"{path}: weights do not fit the model in config.json ({'; '.join(detail)})")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise RunError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the model expects "
                           f"{tuple(expected[k].shape)}")
    model.load_state_dict(tensors)
    return model


def load_model(run: str | os.PathLike, weights: str = WEIGHTS,
               device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the model of ``RUN/config.json`` and load ``RUN/<weights>``; eval mode."""
    run = Path(run)
    cfg = read_run_config(run)
    model = build_model(ModelConfig.from_dict(cfg["model"]))
    path = run / weights
    if not path.is_file():
        raise RunError(f"{path}: missing; training writes it after the first validation")
    load_weights(model, path)
    return model.to(device).eval(), cfg
