"""``unetpp.load(RUN) -> Predictor``: a trained run, ready to segment arrays and files.

The predictor rebuilds the network from ``RUN/config.json`` and loads ``RUN/model.safetensors``
(:func:`unetpp.run.load_model`: no pickle, nothing from the folder runs code), prepares raw
inputs exactly as training prepared its cases (the data module's normalisation, with the
statistics stored in the run's data config) and runs the sliding-window engine
(:mod:`unetpp.inference.engine`) in the requested mode.

**Mode and level.** With no ``mode``/``level`` the predictor uses what ``unetpp prune`` chose
(``RUN/prune.json``); without prune.json, *accurate* mode (the mean of every head) for a
deep-supervised UNet++ and the single head otherwise. ``mode="fast"`` without a level takes
the level prune chose (if it chose fast), else the deepest head; a ``level`` alone means fast
mode at that level.

**Array layouts** accepted by :meth:`Predictor.predict` (raw values, as read from the file;
``C`` is the run's input channel count):

=====================  ==============================================================
model / array          layouts
=====================  ==============================================================
2D, ``C == 1``         ``(H, W)``; ``(1, H, W)`` or ``(H, W, 1)``; ``(D, H, W)`` a
                       volume run slice by slice along its first axis; ``(1, D, H, W)``
2D, ``C > 1``          ``(H, W, C)`` (e.g. RGB), ``(C, H, W)``, ``(C, D, H, W)``
3D, ``C == 1``         ``(D, H, W)`` or ``(1, D, H, W)``
3D, ``C > 1``          ``(C, D, H, W)``
=====================  ==============================================================

For a 2D model with ``C == 1``, a 3-D array whose first or last axis has size 1 is a 2D
image with a channel axis; any other 3-D array is a volume. Arrays are taken to be on the
training grid (no resampling: an array carries no spacing; files do, see
:meth:`Predictor.predict_file`). Pass ``normalised=True`` for an array already normalised
(e.g. ``Case.image`` of :func:`unetpp.data.open_dataset`).

Example::

    >>> import unetpp                                          # doctest: +SKIP
    >>> predictor = unetpp.load("runs/nuclei")                 # doctest: +SKIP
    >>> mask = predictor.predict(image, mode="fast", level=2)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RunError, UnetppError
from ..io import read_json
from ..run import PRUNE, WEIGHTS, load_model
from .engine import MODES, mode_probabilities, predict_with, probabilities, probabilities_to_labels, \
    _level_network


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None): CUDA if available, else MPS, else CPU; refuses unavailable ones."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnetppError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UnetppError(f"--device {device}: MPS is not available on this machine")
    return dev


def read_prune_choice(run: str | os.PathLike | None) -> dict[str, Any] | None:
    """``prune.json["chosen"]`` of ``run`` (``{"mode", "level"}``), or None without prune.json."""
    if run is None:
        return None
    path = Path(run) / PRUNE
    if not path.is_file():
        return None
    data = read_json(path)
    chosen = data.get("chosen") if isinstance(data, dict) else None
    if not isinstance(chosen, dict) or chosen.get("mode") not in MODES:
        raise RunError(f"{path}: no valid \"chosen\" entry; run 'unetpp prune' again")
    return {"mode": chosen["mode"], "level": chosen.get("level")}


def _normalise(array: np.ndarray, data_config: dict[str, Any]) -> np.ndarray:
    """The data module's normalisation of a raw ``(C, *S)`` array, with the run's statistics."""
    from ..data.normalize import apply_normalization

    specs = data_config.get("normalization")
    if not isinstance(specs, list):
        raise RunError("config.json has no data normalisation (\"data\": {\"normalization\": [...]}); "
                       "pass normalised=True with an image normalised as in training")
    try:
        return apply_normalization(array, specs)
    except (KeyError, TypeError) as e:
        raise RunError(f"config.json: invalid data normalisation spec ({e})") from None


class Predictor:
    """A model with its run config: segments raw arrays, normalised arrays and files.

    Args:
        model: a model of :mod:`unetpp.models` (put in eval mode here).
        config: the run config (``RUN/config.json`` as a dict; ``"data"`` is needed to
            normalise raw arrays and read files).
        run: the run folder (for ``prune.json``), optional.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        batch_size: windows (or slices) per forward pass.
        overlap: sliding-window overlap.
    """

    def __init__(self, model: nn.Module, config: dict[str, Any], run: str | os.PathLike | None = None,
                 device: str | torch.device | None = "cpu", batch_size: int = 4, overlap: float = 0.5):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.run = Path(run) if run is not None else None
        self.batch_size = int(batch_size)
        self.overlap = float(overlap)
        self.choice = read_prune_choice(self.run)

    # ------------------------------------------------------------------ description
    @property
    def model_config(self):
        return self.model.config

    @property
    def data_config(self) -> dict[str, Any]:
        return self.config.get("data") or {}

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(self.model.levels)

    @property
    def classes(self) -> int:
        return self.model.config.classes

    @property
    def in_channels(self) -> int:
        return self.model.config.in_channels

    @property
    def dims(self) -> int:
        return self.model.config.dims

    @property
    def patch_size(self) -> tuple[int, ...]:
        """The training patch (the sliding window): the run's ``train.patch_size``, else the
        training default (96 per axis in 2D, 64 in 3D), as validation during training used."""
        train = self.config.get("train") or {}
        patch = train.get("patch_size")
        if patch is None:
            patch = [96 if self.dims == 2 else 64]
        if isinstance(patch, (int, float)):
            patch = [patch]
        patch = tuple(int(p) for p in patch)
        return patch[-self.dims:] if len(patch) >= self.dims else (patch[0],) * self.dims

    def default_mode(self) -> tuple[str, int | None]:
        """prune.json's choice; else accurate (deep supervision) or the one head."""
        if self.choice is not None:
            return self.resolve(self.choice["mode"], self.choice.get("level"), use_choice=False)
        if len(self.levels) > 1:
            return "accurate", None
        return "fast", self.levels[-1]

    def resolve(self, mode: str | None = None, level: int | None = None,
                use_choice: bool = True) -> tuple[str, int | None]:
        """``(mode, level)`` with defaults filled in and checked against the network."""
        depth = self.model.config.depth
        if level is not None:
            if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
                raise UnetppError(f"--level must be an integer, got {level!r}")
            level = int(level)
            if not 1 <= level <= depth:
                raise UnetppError(f"--level {level}: the network has depth {depth}, so levels are "
                                  f"1..{depth}")
        if mode is None and level is None:
            return self.default_mode() if use_choice else ("accurate", None)
        if mode is None:
            mode = "fast"
        if mode not in MODES:
            raise UnetppError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "accurate":
            if level is not None:
                raise UnetppError("--level is for fast mode; accurate mode averages every head")
            return "accurate", None
        if level is None:
            if use_choice and self.choice is not None and self.choice["mode"] == "fast" \
                    and self.choice.get("level") in self.levels:
                level = self.choice["level"]
            else:
                level = self.levels[-1]
        if level not in self.levels:
            if len(self.levels) == 1:
                raise UnetppError(f"--level {level}: this model was trained without deep supervision "
                                  f"and has only level {self.levels[0]}")
            raise UnetppError(f"--level {level}: no head at that level (heads: "
                              f"{', '.join(map(str, self.levels))})")
        return "fast", level

    def mode_levels(self, mode: str, level: int | None) -> tuple[int, ...]:
        return self.levels if mode == "accurate" else (int(level),)

    # ------------------------------------------------------------------ inputs
    def to_channels_first(self, array: Any) -> np.ndarray:
        """A raw array in any documented layout -> ``(C, *S)`` (see the module docstring)."""
        a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        if a.dtype == object or a.dtype.kind not in "biuf":
            raise UnetppError(f"input array of dtype {a.dtype}; expected numbers")
        c, dims = self.in_channels, self.dims
        shape = tuple(a.shape)
        want = {2: ("(H, W)" if c == 1 else "(H, W, C)") + ", (C, H, W) or (C, D, H, W)",
                3: "(D, H, W) or (C, D, H, W)" if c == 1 else "(C, D, H, W)"}[dims]
        bad = UnetppError(f"input of shape {shape} does not fit a {dims}D model with {c} input "
                          f"channel(s); expected {want}")
        if a.ndim == 2:
            if dims != 2 or c != 1:
                raise bad
            return a[None]
        if a.ndim == 3:
            if dims == 3:
                if c != 1:
                    raise bad
                return a[None]
            if c == 1:
                if shape[0] == 1:
                    return a
                if shape[-1] == 1:
                    return np.moveaxis(a, -1, 0)
                return a[None]  # a volume, run slice by slice
            if shape[0] == c and shape[-1] != c:
                return a
            if shape[-1] == c:
                return np.moveaxis(a, -1, 0)
            raise bad
        if a.ndim == 4 and shape[0] == c:
            return a
        raise bad

    def prepare(self, array: Any, normalised: bool = False) -> torch.Tensor:
        """Raw array -> normalised float32 tensor ``(C, *S)`` as the network was trained on."""
        a = self.to_channels_first(array)
        if not normalised:
            a = _normalise(a.astype(np.float32, copy=False), self.data_config)
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    # ------------------------------------------------------------------ prediction
    def network(self, levels: Sequence[int]) -> Callable[[torch.Tensor], dict[int, torch.Tensor]]:
        """``x -> {level: probabilities}`` running only the nodes ``levels`` need."""
        net = _level_network(self.model, tuple(levels))
        classes = self.classes
        return lambda x: {lv: probabilities(logits.float(), classes) for lv, logits in net(x).items()}

    def level_probabilities(self, image: torch.Tensor, levels: Sequence[int], tta: bool = False,
                            network: Callable[[torch.Tensor], dict[int, torch.Tensor]] | None = None
                            ) -> dict[int, torch.Tensor]:
        """``{level: (K', *S)}`` probabilities of a prepared ``(C, *S)`` image."""
        return predict_with(network or self.network(levels), image, dims=self.dims,
                            in_channels=self.in_channels, levels=tuple(levels),
                            patch_size=self.patch_size, overlap=self.overlap,
                            batch_size=self.batch_size, tta=tta, device=self.device)

    def predict_tensor(self, image: torch.Tensor, mode: str | None = None, level: int | None = None,
                       tta: bool = False) -> torch.Tensor:
        """Probabilities ``(K', *S)`` of a prepared image in ``mode``."""
        mode, level = self.resolve(mode, level)
        probs = self.level_probabilities(image, self.mode_levels(mode, level), tta=tta)
        return mode_probabilities(probs, mode, level)

    def predict_proba(self, array: Any, mode: str | None = None, level: int | None = None,
                      tta: bool = False, normalised: bool = False) -> np.ndarray:
        """float32 probabilities ``(K', *S)`` (``K' = 1`` for a binary model, else K)."""
        probs = self.predict_tensor(self.prepare(array, normalised), mode, level, tta)
        return probs.numpy()

    def predict(self, array: Any, mode: str | None = None, level: int | None = None,
                tta: bool = False, normalised: bool = False) -> np.ndarray:
        """int64 label map of the input's spatial shape (binary: 0/1; K classes: 0..K-1)."""
        probs = self.predict_tensor(self.prepare(array, normalised), mode, level, tta)
        return probabilities_to_labels(probs, self.classes).numpy()

    def read(self, path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
        """Read and prepare a file as training did (``unetpp.data.io.read_input``)."""
        from ..data.io import read_input

        if not self.data_config.get("normalization"):
            raise RunError(f"{self.run or 'run'}/config.json: no data config; cannot prepare input files")
        image, meta = read_input(path, self.data_config)
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), meta

    def predict_file(self, path: str | os.PathLike, mode: str | None = None, level: int | None = None,
                     tta: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``(labels, probabilities, meta)`` of an image file; write the mask with
        ``unetpp.data.io.write_mask(out, labels, meta)`` (the input's format and geometry)."""
        image, meta = self.read(path)
        probs = self.predict_tensor(image, mode, level, tta)
        return probabilities_to_labels(probs, self.classes).numpy(), probs.numpy(), meta

    def __repr__(self) -> str:
        cfg = self.model.config
        return (f"Predictor(run={str(self.run) if self.run else None!r}, arch={cfg.arch!r}, dims={cfg.dims}, "
                f"levels={self.levels}, device={str(self.device)!r}, default={self.default_mode()})")


def load(run: str | os.PathLike, device: str | torch.device | None = "cpu", weights: str = WEIGHTS,
         batch_size: int = 4, overlap: float = 0.5) -> Predictor:
    """Load ``RUN`` (config.json + model.safetensors, no pickle) as a :class:`Predictor`.

    Raises :class:`~unetpp.errors.RunError` naming the file for a missing, tampered or
    incompatible run folder.
    """
    dev = resolve_device(device)
    model, config = load_model(run, weights=weights, device=dev)
    return Predictor(model, config, run=run, device=dev, batch_size=batch_size, overlap=overlap)
