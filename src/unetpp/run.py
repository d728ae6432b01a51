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
#: A run's network may not have more parameters than this (2 GB of float32 weights). The
#: per-field limits of ModelConfig still allow absurd combinations (3D, 256 base filters,
#: depth 6: 27 billion parameters); this is checked on the "meta" device, which allocates
#: nothing, before the real network is built.
MAX_PARAMETERS = 500_000_000
#: Largest sliding-window patch side a run may ask for.
MAX_PATCH = 4096


def make_run_config(model_config: ModelConfig, data: dict[str, Any] | None = None,
                    train: dict[str, Any] | None = None, split: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
                           "unetpp_version": __version__, "model": model_config.to_dict(),
                           "data": data or {}, "train": train or {}}
    if split is not None:
        cfg["split"] = split
    return cfg


def stored_patch_size(config: dict[str, Any], dims: int, where: str = "config.json") -> tuple[int, ...]:
    """The training patch stored in ``config["train"]["patch_size"]``, one value per spatial
    axis: the sliding window of every later prediction. Training stores it settled (one value
    per axis); a single value is the same on every axis. No default: RunError if missing."""
    patch = (config.get("train") or {}).get("patch_size")
    if isinstance(patch, int) and not isinstance(patch, bool):
        patch = [patch]
    if not isinstance(patch, list) or len(patch) not in (1, dims) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in patch):
        raise RunError(f"{where}: train.patch_size must be 1 or {dims} positive integers (the training "
                       f"patch, which prediction uses as its window), got {patch!r}")
    return tuple(patch) * dims if len(patch) == 1 else tuple(patch)


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
        model_config = ModelConfig.from_dict(cfg.get("model"))
    except (TypeError, ValueError) as e:
        raise RunError(f"{path}: invalid model config: {e}") from None
    problems = _section_problems(cfg, model_config)
    if problems:
        raise RunError([f"{path}: {p}" for p in problems])
    check_model_size(model_config, where=str(path))
    return cfg


def _section_problems(cfg: dict[str, Any], model_config: ModelConfig) -> list[str]:
    """What inference trusts in the "data", "train" and "split" sections."""
    from .data.cases.dataset import check_data_config

    problems = check_data_config(cfg.get("data"), channels=model_config.in_channels,
                                 classes=model_config.classes, dims=model_config.dims)
    train = cfg.get("train", {})
    if not isinstance(train, dict):
        problems.append(f"\"train\" must be an object, got {type(train).__name__}")
    else:
        patch = train.get("patch_size")
        if patch is not None and (not isinstance(patch, list) or not 1 <= len(patch) <= 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_PATCH for v in patch)):
            problems.append(f"train.patch_size must be null or 1-3 integers in 1..{MAX_PATCH}, got {patch!r}"[:200])
    split = cfg.get("split")
    if split is not None and (not isinstance(split, dict) or not all(
            isinstance(v, list) and all(isinstance(n, str) for n in v) for v in split.values())):
        problems.append("split must be an object of lists of case names")
    return problems


def check_model_size(model_config: ModelConfig, where: str = "model config") -> int:
    """The parameter count of ``model_config``'s network, counted without allocating it;
    :class:`RunError` when above :data:`MAX_PARAMETERS`."""
    with torch.device("meta"):
        n = sum(p.numel() for p in build_model(model_config).parameters())
    if n > MAX_PARAMETERS:
        raise RunError(f"{where}: the model would have {n:,} parameters, more than the "
                       f"{MAX_PARAMETERS:,} allowed; refused before allocating it")
    return n


def save_weights(path: str | os.PathLike, model: nn.Module, metadata: dict[str, str] | None = None) -> Path:
    return save_tensors(path, dict(model.state_dict()), metadata)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load safetensors weights into ``model``, requiring the exact same keys and shapes,
    floating-point tensors and finite values.

    The file's header is checked against the model *before* its tensors are read, so a file
    declaring other or larger tensors is refused without loading them."""
    expected = model.state_dict()
    header = read_safetensors_header(path)
    declared = {k: v for k, v in header.items() if k != "__metadata__"}
    for k, v in declared.items():
        if k in expected and (not isinstance(v, dict) or list(v.get("shape", [])) != list(expected[k].shape)):
            shape = v.get("shape") if isinstance(v, dict) else v
            raise RunError(f"{path}: tensor {k} has shape {tuple(shape) if isinstance(shape, list) else shape}, "
                           f"the model expects {tuple(expected[k].shape)}")
    if set(declared) == set(expected):
        end = max((int(v["data_offsets"][1]) for v in declared.values()), default=0)
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            header_len = 8 + int.from_bytes(f.read(8), "little")
        if size != header_len + end:  # 8-byte length, JSON header, tensors: nothing more or less
            raise RunError(f"{path}: truncated or padded safetensors file ({size:,} bytes; the header "
                           f"declares {end:,} bytes of tensors)")
    tensors = load_tensors(path)
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
    for k, v in tensors.items():
        if expected[k].is_floating_point() and not v.is_floating_point():
            raise RunError(f"{path}: tensor {k} is {v.dtype}; weights are floating point")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise RunError(f"{path}: tensor {k} holds NaN or Inf values; the weights are damaged")
    model.load_state_dict(tensors)
    return model


def read_safetensors_header(path: str | os.PathLike, max_header: int = 16 * 2**20) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, offsets), read
    without touching the tensor data; :class:`RunError` for anything malformed."""
    import json

    from .io import check_weights_path

    path = check_weights_path(path)
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise RunError(f"{path}: not a valid safetensors file (too short)")
        n = int.from_bytes(head, "little")
        if n > max_header or n > path.stat().st_size - 8:
            raise RunError(f"{path}: not a valid safetensors file (header of {n:,} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RunError(f"{path}: not a valid safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise RunError(f"{path}: not a valid safetensors file (header is not an object)")
    for k, v in header.items():
        if k == "__metadata__":
            continue
        if (not isinstance(v, dict) or not isinstance(v.get("shape"), list)
                or not isinstance(v.get("data_offsets"), list) or len(v["data_offsets"]) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in v["shape"] + v["data_offsets"])):
            raise RunError(f"{path}: not a valid safetensors file (bad entry for tensor {k!r})")
    return header


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
