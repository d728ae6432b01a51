"""The resume point ``RUN/last/``: everything an exact resume needs, without pickle.

One file, ``RUN/last/checkpoint.safetensors``, written atomically, so a crash at any moment
leaves either the previous resume point or the new one, never a mix of the two:

- tensors ``model.<name>``: the weights;
- tensors ``optim.<param index>.<key>``: the optimiser's per-parameter state (Adam's step,
  ``exp_avg``, ``exp_avg_sq``);
- tensors ``rng.torch`` and ``rng.cuda.<i>``: the torch generators' states (uint8);
- metadata ``state``: JSON with everything else: the optimiser's param groups and scalar
  state, the GradScaler state, the python and numpy RNG states, the epoch/step counters,
  early-stopping state, best score, the running loss of an interrupted epoch.

``RUN/last/state.json`` repeats the JSON part for people to read; loading uses only the
checkpoint file.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RunError
from ..io import atomic_write_json, load_tensors, save_tensors

FORMAT = "unetpp-last"
FORMAT_VERSION = 1
LAST = "last"
CHECKPOINT = "checkpoint.safetensors"


# ---------------------------------------------------------------------- RNG states as JSON/tensors
def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python, numpy and torch RNG states as (JSON, tensors)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]}
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return state, tensors


def set_rng_state(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


# ---------------------------------------------------------------------- optimiser state
def _optimizer_to_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def _optimizer_from_parts(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------- save / load
@dataclass
class Snapshot:
    """A resume point taken at one instant, ready to be written by another thread.

    ``tensors`` are private CPU copies (training may go on changing the originals);
    ``state`` is the JSON part (counters, optimiser groups, RNG, scaler).
    """

    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.state["train"].get("epoch", 0))


def cpu_copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Private contiguous CPU copies of ``tensors`` (a device tensor is copied once, to the CPU)."""
    out = {}
    for k, v in tensors.items():
        v = v.detach()
        out[k] = v.to("cpu").contiguous() if v.device.type != "cpu" else v.contiguous().clone()
    return out


def snapshot_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                        scaler: Any | None = None,
                        rng: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None,
                        rows: list[dict[str, Any]] | None = None) -> Snapshot:
    """Everything :func:`write_checkpoint` needs, copied now (weights, Adam's state, RNG).

    ``rng``: the RNG state to store (a mid-epoch checkpoint stores its epoch's start);
    default: the generators' state now. ``rows``: the metrics rows of the completed epochs,
    so that a resumed run has every row even when it was killed after the checkpoint was
    written but before ``metrics.csv`` was (:func:`checkpoint_rows`).
    """
    rng_json, rng_tensors = rng if rng is not None else rng_state()
    optim_json, optim_tensors = _optimizer_to_parts(optimizer)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "train": json.loads(json.dumps(state)),
            "rng": json.loads(json.dumps(rng_json)), "optimizer": json.loads(json.dumps(optim_json)),
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
    if rows is not None:
        full["rows"] = [dict(r) for r in rows]
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(optim_tensors)
    tensors.update(rng_tensors)
    return Snapshot(cpu_copy(tensors), full)


def write_checkpoint(run: str | Path, snapshot: Snapshot) -> Path:
    """Write ``RUN/last/checkpoint.safetensors`` (atomically) and ``RUN/last/state.json``."""
    last = Path(run) / LAST
    # the readable copy first: wherever a checkpoint exists, a state.json exists too (after a
    # kill between the two writes it may be one save ahead; loading reads the checkpoint only)
    atomic_write_json(last / "state.json", {k: v for k, v in snapshot.state.items() if k not in ("rng", "rows")})
    return save_tensors(last / CHECKPOINT, snapshot.tensors, metadata={"state": json.dumps(snapshot.state)},
                        copy=False)


def save_checkpoint(run: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], scaler: Any | None = None) -> Path:
    """Write ``RUN/last/checkpoint.safetensors`` (atomically) and ``RUN/last/state.json`` now.

    ``state``: JSON-serialisable training state (epoch, step, best score, ...). Training
    writes in the background instead (:class:`unetpp.training.saver.RunWriter`).
    """
    return write_checkpoint(run, snapshot_checkpoint(model, optimizer, state, scaler))


def checkpoint_rows(run: str | Path) -> list[dict[str, Any]] | None:
    """The metrics rows stored with ``RUN/last/`` (None for a checkpoint without them)."""
    from safetensors import safe_open

    try:
        with safe_open(str(Path(run) / LAST / CHECKPOINT), framework="pt") as f:
            rows = json.loads((f.metadata() or {})["state"]).get("rows")
    except Exception:  # noqa: BLE001 - load_checkpoint has already said what is wrong with the file
        return None
    return rows if isinstance(rows, list) else None


def has_checkpoint(run: str | Path) -> bool:
    return (Path(run) / LAST / CHECKPOINT).is_file()


def load_checkpoint(run: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: Any | None = None, restore_rng: bool = True) -> dict[str, Any]:
    """Restore model, optimiser, scaler (and RNG states); return the training state dict."""
    path = Path(run) / LAST / CHECKPOINT
    if not path.is_file():
        raise RunError(f"{path}: missing; nothing to resume (the run stopped before its first "
                       "checkpoint: start it again without --resume, or delete the folder)")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        full = json.loads(meta["state"])
    except Exception as e:  # noqa: BLE001 - any problem is the file's
        raise RunError(f"{path}: not a unetpp resume checkpoint ({e})") from None
    if full.get("format") != FORMAT or full.get("format_version") != FORMAT_VERSION:
        raise RunError(f"{path}: not a unetpp resume checkpoint of version {FORMAT_VERSION}")
    tensors = load_tensors(path)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in expected):
        raise RunError(f"{path}: the weights do not fit the model in config.json")
    model.load_state_dict(weights)
    try:
        optimizer.load_state_dict(_optimizer_from_parts(full["optimizer"], tensors))
    except (KeyError, ValueError, RuntimeError) as e:
        raise RunError(f"{path}: optimiser state does not fit ({e})") from None
    if scaler is not None and full.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(full["scaler"])
    if restore_rng:
        set_rng_state(full["rng"], tensors)
    return full["train"]
