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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import runtime
from ..errors import RunError, UnetppError
from ..io import read_json
from ..models.mode import MODES, Mode, combine_heads, resolve_mode
from ..run import PRUNE, WEIGHTS, load_model, stored_patch_size
from .engine import level_network, predict_with, probabilities, probabilities_to_labels
from .postprocess import apply as apply_postprocess
from .postprocess import read_postprocess
from .qc import LazyTrust
from .window import WINDOWS, Window


def read_prune_choice(run: str | os.PathLike | None) -> Mode | None:
    """``prune.json["chosen"]`` of ``run`` as a :class:`Mode`, or None without prune.json."""
    if run is None:
        return None
    path = Path(run) / PRUNE
    if not path.is_file():
        return None
    data = read_json(path)
    chosen = data.get("chosen") if isinstance(data, dict) else None
    if not isinstance(chosen, dict) or chosen.get("mode") not in MODES:
        raise RunError(f"{path}: no valid \"chosen\" entry; run 'unetpp prune' again")
    try:
        return Mode.from_json(chosen, f"{path}: chosen")
    except UnetppError as e:
        raise RunError(f"{e.problems[0]}; run 'unetpp prune' again") from None


def read_window_choice(run: str | os.PathLike | None) -> str | None:
    """``prune.json["window"]["chosen"]`` of ``run`` (``"patch"`` or ``"large"``), or None
    without one (a run pruned before windows were chosen predicts with patch windows)."""
    path = Path(run) / PRUNE if run is not None else None
    if path is None or not path.is_file():
        return None
    window = read_json(path).get("window")
    if window is None:
        return None
    if not isinstance(window, dict) or window.get("chosen") not in WINDOWS:
        raise RunError(f"{path}: \"window\" must have \"chosen\": one of {', '.join(WINDOWS)}; "
                       "run 'unetpp prune' again")
    return window["chosen"]


def check_window(window: str | None) -> str | None:
    """``window`` if it is a policy (or None); else one line saying what is."""
    if window is not None and window not in WINDOWS:
        raise UnetppError(f"--window must be one of {', '.join(WINDOWS)}, got {window!r}")
    return window


def _normalise(array: np.ndarray, data_config: dict[str, Any]) -> np.ndarray:
    """The data module's normalisation of a raw ``(C, *S)`` array, with the run's statistics."""
    from ..data.cases.normalize import apply_normalization

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
        window: ``"patch"`` or ``"large"`` (:mod:`unetpp.inference.window`); default what
            ``unetpp prune`` chose on validation data (``RUN/prune.json``), else ``"patch"``.
    """

    def __init__(self, model: nn.Module, config: dict[str, Any], run: str | os.PathLike | None = None,
                 device: str | torch.device | None = "cpu", batch_size: int = 4, overlap: float = 0.5,
                 amp: bool | None = None, window: str | None = None):
        self.device = runtime.pick_device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.run = Path(run) if run is not None else None
        self.batch_size = int(batch_size)
        self.overlap = float(overlap)
        self.choice = read_prune_choice(self.run)
        #: the run's postprocess.json (chosen on out-of-fold predictions), applied to masks
        self.postprocess = read_postprocess(self.run)
        #: the training patch as stored (no default of its own): the patch windows, the
        #: large windows' smallest
        self.patch_size: tuple[int, ...] = stored_patch_size(config, model.config.dims,
                                                             f"{self.run or 'run'}/config.json")
        #: how images are tiled (:mod:`.window`): the caller's, prune's choice, else patch
        self.window = Window(check_window(window) or read_window_choice(self.run) or "patch", self.patch_size,
                             self.overlap, multiple=tuple(model.config.pad_multiple),
                             filters=model.config.base_filters)
        #: the fast inference copy (BN folded, no autograd, channels_last where it pays)
        self.fast_model = runtime.optimize_for_inference(self.model, device=self.device)
        self.precision, _ = runtime.choose_precision(self.device, amp)

    # ------------------------------------------------------------------ description
    #: RUN/trust.json (temperature, QC thresholds; written by prune), read on first use
    trust = LazyTrust()

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

    def window_for(self, policy: str) -> Window:
        """The predictor's :class:`~.window.Window` (its patch, padding, filters) with ``policy``."""
        return replace(self.window, policy=policy)

    def default_mode(self) -> Mode:
        """prune.json's choice; else accurate (deep supervision) or the one head."""
        return self.resolve()

    def resolve(self, mode: str | Mode | None = None, level: int | None = None) -> Mode:
        """The :class:`Mode` of ``--mode``/``--level``, prune.json's choice and the model's
        heads (:func:`unetpp.models.resolve_mode`): settled here once, then passed down."""
        if isinstance(mode, Mode):
            mode.levels(self.levels)
            return mode
        return resolve_mode(self.levels, self.model.config.depth, mode, level, chosen=self.choice)

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
        """``x -> {level: probabilities}`` running only the nodes ``levels`` need, on the fast
        inference copy, in the predictor's precision."""
        net = level_network(self.fast_model, tuple(levels))
        classes, device, dtype = self.classes, self.device, self.precision.dtype

        def run(x: torch.Tensor) -> dict[int, torch.Tensor]:
            with runtime.inference_context(device, dtype):
                return {lv: probabilities(logits.float(), classes) for lv, logits in net(x).items()}

        return run

    def level_probabilities(self, image: torch.Tensor, levels: Sequence[int], tta: bool = False,
                            network: Callable[[torch.Tensor], dict[int, torch.Tensor]] | None = None,
                            window: Window | None = None) -> dict[int, torch.Tensor]:
        """``{level: (K', *S)}`` probabilities of a prepared ``(C, *S)`` image, tiled by
        ``window`` (default the predictor's)."""
        return predict_with(network or self.network(levels), image, dims=self.dims,
                            in_channels=self.in_channels, levels=tuple(levels),
                            window=window or self.window, batch_size=self.batch_size, tta=tta,
                            device=self.device)

    def predict_tensor(self, image: torch.Tensor, mode: str | Mode | None = None, level: int | None = None,
                       tta: bool = False) -> torch.Tensor:
        """Probabilities ``(K', *S)`` of a prepared image in ``mode``."""
        mode = self.resolve(mode, level)
        return combine_heads(self.level_probabilities(image, mode.levels(self.levels), tta=tta), mode)

    def predict_proba(self, array: Any, mode: str | Mode | None = None, level: int | None = None,
                      tta: bool = False, normalised: bool = False) -> np.ndarray:
        """float32 probabilities ``(K', *S)`` (``K' = 1`` for a binary model, else K)."""
        probs = self.predict_tensor(self.prepare(array, normalised), mode, level, tta)
        return probs.numpy()

    def predict(self, array: Any, mode: str | Mode | None = None, level: int | None = None,
                tta: bool = False, normalised: bool = False) -> np.ndarray:
        """int64 label map of the input's spatial shape (binary: 0/1; K classes: 0..K-1)."""
        probs = self.predict_tensor(self.prepare(array, normalised), mode, level, tta)
        return apply_postprocess(probabilities_to_labels(probs, self.classes).numpy(), self.postprocess)

    def read(self, path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
        """Read and prepare a file as training did (``unetpp.data.io.read_input``)."""
        from ..data.io import read_input

        if not self.data_config.get("normalization"):
            raise RunError(f"{self.run or 'run'}/config.json: no data config; cannot prepare input files")
        image, meta = read_input(path, self.data_config)
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), meta

    def predict_file(self, path: str | os.PathLike, mode: str | Mode | None = None, level: int | None = None,
                     tta: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``(labels, probabilities, meta)`` of an image file, both on the input's own grid:
        the probabilities are resampled to it first and the labels are their argmax. Write the
        mask with ``unetpp.data.io.write_mask(out, labels, meta)`` (the input's format and
        geometry)."""
        from ..data.io import to_input_grid

        image, meta = self.read(path)
        probs = to_input_grid(self.predict_tensor(image, mode, level, tta), meta)
        labels = probabilities_to_labels(torch.from_numpy(probs), self.classes).numpy()
        return apply_postprocess(labels, self.postprocess), probs, meta

    def __repr__(self) -> str:
        cfg = self.model.config
        return (f"Predictor(run={str(self.run) if self.run else None!r}, arch={cfg.arch!r}, dims={cfg.dims}, "
                f"levels={self.levels}, device={str(self.device)!r}, default={str(self.default_mode())!r}, "
                f"window={self.window.policy!r})")


def load(run: str | os.PathLike, device: str | torch.device | None = "cpu", weights: str = WEIGHTS,
         batch_size: int = 4, overlap: float = 0.5, amp: bool | None = None,
         window: str | None = None) -> Predictor:
    """Load ``RUN`` (config.json + model.safetensors, no pickle) as a :class:`Predictor`.

    Raises :class:`~unetpp.errors.RunError` naming the file for a missing, tampered or
    incompatible run folder.
    """
    dev = runtime.pick_device(device)
    model, config = load_model(run, weights=weights, device=dev)
    return Predictor(model, config, run=run, device=dev, batch_size=batch_size, overlap=overlap, amp=amp,
                     window=window)
