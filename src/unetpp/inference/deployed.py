"""A deployed model: one exported ONNX file that predicts without its run folder.

:func:`export_run` (the ``export`` command) writes, besides the network of one mode/level
(:mod:`.export`), everything prediction needs as ONNX ``metadata_props`` (``unetpp.*``,
JSON strings where structured):

=====================  ===================================================================
key                    value
=====================  ===================================================================
``format_version``     ``1`` (:data:`~.export.METADATA_VERSION`)
``mode``, ``level``    what the file computes (accurate: the mean of every head)
``dims``,              the network's input and output
``in_channels``,
``classes``
``model``              the run's model config (JSON)
``data``               the run's data config (JSON): channels, labels, normalisation with
                       its statistics, target spacing (what ``read_input`` needs)
``patch_size``         the training patch (JSON list): the sliding window
``window``             the window policy (JSON): ``{"policy": "patch" | "large",
                       "multiple": [...], "filters": F}``, the run's (what prune chose);
                       absent: patch windows (:mod:`.window`)
``postprocess``        the run's ``postprocess.json`` (JSON), when it has one
``trust``              the run's ``trust.json`` (JSON; temperature and QC thresholds of
                       ``predict --uncertainty``), when prune wrote one
``precision``          ``fp32``, ``int8`` or ``fp16``
``quantization``       int8/fp16 only (JSON): method, calibration, the measured IoUs
=====================  ===================================================================

:class:`DeployedPredictor` (``unetpp.load("model.onnx")``, ``unetpp predict MODEL.onnx``) reads
it back and runs the file through ONNX Runtime with the Predictor's sliding window, TTA and
file geometry (``read_input`` / ``to_input_grid`` / ``write_mask``): int8, fp16 and fp32
alike. A file that is not ours, or lacks or garbles this metadata, is refused in one line
naming it; so is a ``--mode``/``--level`` other than what the file computes.

Example::

    >>> predictor = unetpp.load("nuclei-L2-int8.onnx")         # doctest: +SKIP
    >>> labels, probs, meta = predictor.predict_file("tile.png")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, RunError, UnetppError
from ..io import atomic_write_bytes
from ..models.mode import Mode
from .export import DEFAULT_OPSET, METADATA_VERSION, OnnxNetwork, export, export_bytes, require, with_metadata
from .predictor import Predictor, check_window
from .window import Window

#: the suffix ``unetpp.load`` and ``unetpp predict`` take for a model file
MODEL_SUFFIXES = (".onnx",)


def is_model_file(path: Any) -> bool:
    """Whether ``path`` names a model file (``.onnx``) rather than a run folder."""
    return isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in MODEL_SUFFIXES \
        and not Path(path).is_dir()


def deployment_metadata(predictor: Any) -> dict[str, str]:
    """The ``unetpp.*`` keys a run adds to its exported file (see the module doc)."""
    meta = {"model": json.dumps(predictor.model.config.to_dict()), "data": json.dumps(predictor.data_config),
            "patch_size": json.dumps(list(predictor.patch_size)), "precision": "fp32",
            "window": json.dumps({"policy": predictor.window.policy, "multiple": list(predictor.window.multiple),
                                  "filters": predictor.window.filters})}
    if getattr(predictor, "postprocess", None):
        meta["postprocess"] = json.dumps(predictor.postprocess)
    if getattr(predictor, "trust", None):
        meta["trust"] = json.dumps(predictor.trust)
    return meta


def validation_cases(predictor: Any, data: Any = None) -> tuple[list[tuple[str, torch.Tensor, np.ndarray]], str, Any]:
    """``(cases, source, dataset)``: the run's validation cases (``prune``'s choice) as
    ``(name, normalised image, label)``, from ``data`` (a dataset or its path/sample name) or
    the dataset the run was trained on (``config.json["data"]["root"]``)."""
    from ..data import open_dataset
    from .evaluate import check_compatible, select_cases

    ds = data
    if ds is None or isinstance(ds, (str, os.PathLike)):
        root = ds if ds is not None else (predictor.data_config or {}).get("root")
        if not root:
            raise UnetppError(f"{predictor.run or 'run'}/config.json: no data.root to calibrate on; "
                              "pass --calibration DATA")
        try:
            ds = open_dataset(root)
        except DataError as e:
            hint = "" if data is not None else "; pass --calibration DATA"
            raise UnetppError(f"calibration data {root}: {e.problems[0]}{hint}") from None
    check_compatible(ds, predictor)
    names, source = select_cases(ds, predictor.config, "prune")
    cases = []
    for name in names:
        case = ds.load_case(name)
        if case.label is None:
            raise DataError(f"{getattr(ds, 'root', 'dataset')}: case {name} has no label to score against")
        cases.append((name, torch.as_tensor(case.image, dtype=torch.float32), case.label))
    return cases, source, ds


def export_run(predictor: Any, fmt: str, out: str | os.PathLike, mode: str | Mode | None = None,
               level: int | None = None, opset: int = DEFAULT_OPSET, quantize: str | None = None,
               calibration: Any = None, tolerance: float | None = None,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export a run's network in ``mode`` with its deployment metadata; with ``quantize``
    (``"int8"``/``"fp16"``, ONNX only) calibrate and score it on the validation cases of
    ``calibration`` (default: the run's dataset) first (:func:`.quantize.quantize_checked`).

    Returns :func:`.export.export`'s info, plus the quantization record when quantized.
    Raises :class:`UnetppError`, writing nothing, for a mismatch with PyTorch or a quantized
    model that loses more than ``tolerance`` IoU points.
    """
    from .quantize import DEFAULT_TOLERANCE, QUANTIZE, quantize_checked

    settled = predictor.resolve(mode, level)
    extra = deployment_metadata(predictor)
    if quantize is None:
        return export(predictor.model, fmt, out, settled, opset=opset, extra=extra)
    if quantize not in QUANTIZE:
        raise UnetppError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if fmt != "onnx":
        raise UnetppError(f"--quantize {quantize} is for --format onnx (ONNX Runtime quantizes); got --format {fmt}")
    tolerance = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    require("onnxruntime")
    cases, source, ds = validation_cases(predictor, calibration)  # before the export: a bad DATA fails fast
    model = predictor.model
    if quantize == "int8":  # one conv over the concatenation: fewer requantized sums (measured faster)
        import copy

        from ..runtime.layout import set_split_concat

        model = set_split_concat(copy.deepcopy(model), False)
    data, info = export_bytes(model, fmt, out, settled, opset=opset, extra=extra)
    cfg = predictor.model.config
    quantized, record = quantize_checked(data, quantize, cases, dims=cfg.dims, in_channels=cfg.in_channels,
                                         classes=cfg.classes, patch_size=predictor.patch_size, tolerance=tolerance,
                                         where=str(out), ignore=getattr(ds, "ignore_label", None),
                                         overlap=predictor.overlap, batch_size=predictor.batch_size,
                                         progress=progress, window=predictor.window)
    record.update(data=str(getattr(ds, "root", "")), split=source)
    from .export import metadata

    meta = {**metadata(predictor.model, settled, fmt), **extra, "precision": quantize,
            "quantization": json.dumps(record)}
    atomic_write_bytes(out, with_metadata(quantized, meta))
    return {**info, "quantize": quantize, "quantization": record}


def _json(meta: dict[str, str], key: str, path: Path, required: bool = True) -> Any:
    if key not in meta:
        if required:
            raise RunError(f"{path}: no unetpp.{key} metadata; re-export it with 'unetpp export RUN "
                           f"--format onnx' (or run it with 'unetpp predict RUN INPUT --onnx {path.name}')")
        return None
    try:
        return json.loads(meta[key])
    except ValueError:
        raise RunError(f"{path}: unetpp.{key} metadata is not valid JSON") from None


class DeployedPredictor(Predictor):
    """An exported ONNX file with its metadata as a :class:`Predictor` (no run folder).

    It has the Predictor's API (``read``, ``prepare``, ``predict``, ``predict_proba``,
    ``predict_tensor``, ``predict_file``, ``level_probabilities``, ``resolve``, ...); ``levels``
    are the heads the file outputs: ``(L,)`` for fast mode at level L, ``(0,)`` for accurate
    mode (its one output, the mean of every head). ``device``: ``"auto"``/``"cpu"`` (ONNX
    Runtime's CPU provider) or ``"cuda"`` (its CUDA provider, with onnxruntime-gpu).
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = "cpu", batch_size: int = 4,
                 overlap: float = 0.5, window: str | None = None):
        path = Path(path)
        self.network_file = OnnxNetwork(path, providers=_providers(device))
        meta = self.network_file.meta
        version = meta.get("format_version")
        if version is None:
            _json(meta, "data", path)  # no deployment metadata: says how to re-export
        if version != str(METADATA_VERSION):
            raise RunError(f"{path}: unetpp metadata version {version}; this unetpp reads version {METADATA_VERSION}")
        try:
            dims, in_channels, classes = (int(meta[k]) for k in ("dims", "in_channels", "classes"))
        except (KeyError, ValueError):
            raise RunError(f"{path}: invalid unetpp dims/in_channels/classes metadata") from None
        data = _json(meta, "data", path)
        patch = _json(meta, "patch_size", path)
        from ..data.cases.dataset import check_data_config
        from ..run import MAX_PATCH

        problems = check_data_config(data, channels=in_channels, classes=classes, dims=dims)
        if not isinstance(patch, list) or len(patch) != dims or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_PATCH for v in patch):
            problems.append(f"patch_size must be {dims} integers in 1..{MAX_PATCH}, got {patch!r}"[:200])
        if dims not in (2, 3) or not 1 <= in_channels <= 256 or not 1 <= classes <= 256:
            problems.append(f"dims {dims}, in_channels {in_channels}, classes {classes} out of range")
        check_window(window)
        stored_window = _json(meta, "window", path, required=False) or {"policy": "patch"}
        try:
            self.window = Window(window or stored_window["policy"], tuple(patch), float(overlap),
                                 multiple=tuple(int(m) for m in stored_window.get("multiple") or [1] * dims),
                                 filters=int(stored_window.get("filters", 32)))
            if len(self.window.multiple) != dims or min(self.window.multiple) < 1 or self.window.filters < 1:
                raise ValueError(f"multiple {list(self.window.multiple)}, filters {self.window.filters}")
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            problems.append(f"window: {e}"[:200])
        if problems:
            raise RunError([f"{path}: unetpp metadata: {p}" for p in problems])
        self.path = path
        self.run = None
        self.mode = self.network_file.mode
        self._dims, self._in_channels, self._classes = dims, in_channels, classes
        self.config = {"format": "unetpp-deployed", "model": _json(meta, "model", path, required=False) or {},
                       "data": data or {}, "train": {"patch_size": patch}}
        self.patch_size = tuple(patch)
        self.postprocess = _json(meta, "postprocess", path, required=False)
        self.trust = _json(meta, "trust", path, required=False)
        self.precision_name = meta.get("precision", "fp32")
        self.quantization = _json(meta, "quantization", path, required=False)
        self.device = torch.device("cpu")  # ONNX Runtime takes numpy arrays; its provider places the work
        self.batch_size = int(batch_size)
        self.overlap = float(overlap)
        self.choice = self.mode

    levels = property(lambda self: self.network_file.levels())
    classes = property(lambda self: self._classes)
    in_channels = property(lambda self: self._in_channels)
    dims = property(lambda self: self._dims)
    model_config = property(lambda self: self.config["model"])

    def resolve(self, mode: str | Mode | None = None, level: int | None = None) -> Mode:
        """The file's :class:`Mode`; any other ``--mode``/``--level`` is refused in one line."""
        problems = self.network_file.mode_problems(mode, level)
        if problems:
            raise UnetppError(problems)
        return self.mode

    def network(self, levels: Sequence[int]) -> Callable[[torch.Tensor], dict[int, torch.Tensor]]:
        return self.network_file

    def _need_data(self) -> None:
        if not self.data_config.get("normalization"):
            raise RunError(f"{self.path}: exported from a run without a data config; it cannot prepare raw "
                           "inputs (pass normalised=True with an image normalised as in training)")

    def prepare(self, array: Any, normalised: bool = False) -> torch.Tensor:
        if not normalised:
            self._need_data()
        return super().prepare(array, normalised)

    def read(self, path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
        self._need_data()
        return super().read(path)

    def __repr__(self) -> str:
        return (f"DeployedPredictor(path={str(self.path)!r}, dims={self.dims}, mode={str(self.mode)!r}, "
                f"precision={self.precision_name!r}, window={self.window.policy!r}, providers={self.network_file.session.get_providers()})")


def _providers(device: str | torch.device | None) -> list[str]:
    """ONNX Runtime providers for ``--device`` (one line when the one asked for is missing)."""
    name = str(device or "auto").split(":")[0]
    if name in ("auto", "cpu"):
        return ["CPUExecutionProvider"]
    if name == "cuda":
        available = require("onnxruntime").get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise UnetppError("--device cuda: this onnxruntime has no CUDA execution provider; "
                              "pip install onnxruntime-gpu (in place of onnxruntime)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise UnetppError(f"--device {name}: an ONNX model runs on cpu or cuda (ONNX Runtime)")


def load(path: str | os.PathLike, device: str | torch.device | None = "cpu", batch_size: int = 4,
         overlap: float = 0.5, window: str | None = None) -> DeployedPredictor:
    """An exported ONNX file as a :class:`DeployedPredictor` (``unetpp.load("model.onnx")``)."""
    if batch_size < 1:
        raise UnetppError(f"--batch-size must be >= 1, got {batch_size}")
    return DeployedPredictor(path, device=device, batch_size=batch_size, overlap=overlap, window=window)


__all__ = ["DeployedPredictor", "MODEL_SUFFIXES", "deployment_metadata", "export_run", "is_model_file", "load",
           "validation_cases"]
