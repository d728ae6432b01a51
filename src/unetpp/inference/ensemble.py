"""Several runs as one predictor: the folds of a cross-validation, or any runs of one task.

:class:`Ensemble` averages the members' probabilities. Without ``--mode``/``--level`` each
member uses its own chosen mode (``prune.json``; else accurate), then the mean over the
members is taken; with them, every member computes that mode. A cross-validation folder's
``postprocess.json`` (chosen on its out-of-fold predictions) is applied to the masks.

:func:`load` is ``unetpp.load``: one run folder gives a :class:`~.predictor.Predictor`; a
cross-validation folder (``cv.json`` or ``fold_*/`` run folders) or a list of run folders
gives an :class:`Ensemble`.

Example::

    >>> predictor = unetpp.load("runs/cv")                 # doctest: +SKIP
    >>> mask = predictor.predict(image)                     # mean of the folds' probabilities  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import RunError, UnetppError
from ..models.mode import Mode
from ..run import WEIGHTS
from .engine import probabilities_to_labels
from .postprocess import read_postprocess
from .qc import LazyTrust
from .unpack import is_package, open_package
from .predictor import Predictor
from .predictor import load as load_run

CV_FILE = "cv.json"


def fold_runs(folder: Path) -> list[Path]:
    """The run folders of a cross-validation folder (``fold_0``, ``fold_1``, ...), in order."""
    runs = [p for p in Path(folder).glob("fold_*") if (p / "config.json").is_file() and p.name[5:].isdigit()]
    return sorted(runs, key=lambda p: int(p.name[5:]))


def is_cv_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and not (path / "config.json").is_file() and bool(fold_runs(path))


class Ensemble:
    """The mean of several :class:`Predictor` s (see the module doc); the Predictor's API."""

    def __init__(self, members: Sequence[Predictor], folder: str | os.PathLike | None = None):
        if not members:
            raise RunError("an ensemble needs at least one run")
        first = members[0]
        problems = []
        for m in members[1:]:
            for what in ("dims", "in_channels", "classes"):
                if getattr(m, what) != getattr(first, what):
                    problems.append(f"{m.run}: {what} {getattr(m, what)} differs from {first.run}'s "
                                    f"{getattr(first, what)}; these runs cannot be averaged")
        if problems:
            raise RunError(problems)
        self.members = list(members)
        self.run = Path(folder) if folder is not None else None
        self.config = first.config
        self.postprocess = read_postprocess(self.run) if self.run is not None else None
        self.device = first.device
        self._same_input = all(m.data_config == first.data_config for m in self.members)

    #: RUN/trust.json (temperature, QC thresholds; written by prune), read on first use
    trust = LazyTrust()

    # the Predictor's description
    levels = property(lambda self: self.members[0].levels)
    classes = property(lambda self: self.members[0].classes)
    in_channels = property(lambda self: self.members[0].in_channels)
    dims = property(lambda self: self.members[0].dims)
    data_config = property(lambda self: self.members[0].data_config)
    patch_size = property(lambda self: self.members[0].patch_size)
    window = property(lambda self: self.members[0].window)  # each member tiles with its own
    model = property(lambda self: self.members[0].model)

    def resolve(self, mode: str | Mode | None = None, level: int | None = None) -> Mode | None:
        """None without flags (each member its own chosen mode); else the mode every member
        computes, checked against each."""
        if mode is None and level is None:
            return None
        settled = [m.resolve(mode, level) for m in self.members]
        return settled[0]

    def default_mode(self) -> None:
        return None

    def read(self, path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.members[0].read(path)

    def prepare(self, array: Any, normalised: bool = False) -> torch.Tensor:
        return self.members[0].prepare(array, normalised)

    def level_probabilities(self, image: torch.Tensor, levels: Sequence[int], tta: bool = False,
                            network: Any = None) -> dict[int, torch.Tensor]:
        """The members' mean per level (a mode computed from it is the members' mean)."""
        per = [m.level_probabilities(image, levels, tta=tta) for m in self.members]
        return {lv: torch.stack([p[lv] for p in per]).mean(0) for lv in levels}

    def predict_tensor(self, image: torch.Tensor, mode: str | Mode | None = None, level: int | None = None,
                       tta: bool = False) -> torch.Tensor:
        """Probabilities ``(K', *S)``: the mean over members, each in its mode (see above)."""
        if not self._same_input:
            raise UnetppError("the runs of this ensemble normalise inputs differently; use predict_file")
        return torch.stack([m.predict_tensor(image, mode, level, tta) for m in self.members]).mean(0)

    def predict_proba(self, array: Any, mode: str | Mode | None = None, level: int | None = None,
                      tta: bool = False, normalised: bool = False) -> np.ndarray:
        return self.predict_tensor(self.prepare(array, normalised), mode, level, tta).numpy()

    def predict(self, array: Any, mode: str | Mode | None = None, level: int | None = None,
                tta: bool = False, normalised: bool = False) -> np.ndarray:
        from .postprocess import apply

        probs = self.predict_tensor(self.prepare(array, normalised), mode, level, tta)
        return apply(probabilities_to_labels(probs, self.classes).numpy(), self.postprocess)

    def predict_file(self, path: str | os.PathLike, mode: str | Mode | None = None, level: int | None = None,
                     tta: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """As :meth:`Predictor.predict_file`: labels (post-processed) and probabilities on the
        input's own grid; each member reads the file its own way when they differ."""
        from ..data.io import to_input_grid
        from .postprocess import apply

        if self._same_input:
            image, meta = self.read(path)
            probs = to_input_grid(self.predict_tensor(image, mode, level, tta), meta)
        else:
            parts = [m.predict_file(path, mode, level, tta) for m in self.members]
            probs, meta = np.mean([p[1] for p in parts], axis=0), parts[0][2]
        labels = probabilities_to_labels(torch.from_numpy(probs), self.classes).numpy()
        return apply(labels, self.postprocess), probs, meta

    def __repr__(self) -> str:
        return f"Ensemble(runs={[str(m.run) for m in self.members]}, folder={str(self.run) if self.run else None!r})"


def load(run: str | os.PathLike | Sequence[str | os.PathLike], device: str | torch.device | None = "cpu",
         weights: str = WEIGHTS, batch_size: int = 4, overlap: float = 0.5,
         amp: bool | None = None, window: str | None = None) -> Predictor | Ensemble:
    """A run folder -> :class:`Predictor`; a cross-validation folder or several run folders ->
    :class:`Ensemble` (safetensors + JSON, no pickle, as :func:`.predictor.load`); an exported
    ``.onnx`` file -> :class:`~.deployed.DeployedPredictor` (no run folder needed); a
    ``MODEL.zip`` from ``unetpp package`` -> either of the first two (:mod:`.unpack`)."""
    from .deployed import is_model_file

    kwargs = dict(device=device, weights=weights, batch_size=batch_size, overlap=overlap, amp=amp, window=window)
    if isinstance(run, (list, tuple)):
        if len(run) == 1:
            return load(run[0], **kwargs)
        files = [str(r) for r in run if is_model_file(r)]
        if files:
            raise RunError(f"{files[0]}: a model file; an ensemble is made of run folders")
        return Ensemble([load_run(r, **kwargs) for r in run])
    if is_package(run):  # MODEL.zip: checked, extracted to the cache once, then a run or CV folder
        folder = open_package(run)
        try:
            return load(folder, **kwargs)
        except RunError as e:  # name the member of the archive, not the cache's copy
            raise RunError([line.replace(f"{folder}{os.sep}", f"{run}: ").replace(str(folder), str(run))
                            for line in e.problems]) from None
    if is_model_file(run):
        from .deployed import load as load_deployed

        return load_deployed(run, device=device, batch_size=batch_size, overlap=overlap, window=window)
    if is_cv_folder(run):
        return Ensemble([load_run(r, **kwargs) for r in fold_runs(Path(run))], folder=run)
    return load_run(run, **kwargs)


__all__ = ["CV_FILE", "Ensemble", "fold_runs", "is_cv_folder", "load"]
