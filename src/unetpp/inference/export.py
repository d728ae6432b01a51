"""``unetpp export``: ONNX and TorchScript files of one mode/level, checked before writing.

The exported graph maps a normalised float32 batch ``(N, C, *S)`` to **probabilities**
``(N, K', *S)`` (sigmoid for a binary model, ``K' = 1``; softmax over K classes otherwise):

- *fast* mode at level L exports ``model.prune(L)`` (only the nodes of UNet++ L<L>), then
  the sigmoid/softmax;
- *accurate* mode exports the full network and the mean of every head's probabilities.

Probabilities rather than logits because accurate mode is defined as a mean of
probabilities (a mean of logits is a different model); a consumer thresholds at 0.5
(binary) or takes the argmax over channels (K classes), as ``unetpp predict`` does.

**Dynamic sizes.** Batch and every spatial axis are dynamic (any size >= 1). The network pads
its input up to a multiple of 2^depth inside and crops the output back; the example input
used for export has spatial sizes that are *not* multiples of 2^depth, so that padding and
cropping are recorded as size-dependent operations, and the written file is checked on a
second input of another batch size and spatial size.

**Check before writing.** The file is produced in memory, run (ONNX Runtime on the CPU /
the TorchScript interpreter) on random inputs and compared with PyTorch; if the max
absolute difference exceeds ``atol`` (1e-4) nothing is written. The file is then written
atomically. ONNX: opset 18 by default (>= 17 accepted), the torch.export-based exporter
(``dynamo=True``) with a fallback to the TorchScript-based one if that fails. The file's
metadata (ONNX ``metadata_props``; TorchScript extra file ``unetpp.json``) records mode,
level, dims, channels, classes and the output kind, which ``unetpp predict --onnx`` reads.

**A run's export** (:func:`unetpp.inference.deployed.export_run`, the ``export`` command)
adds what prediction needs without the run folder (data config, patch size, post-processing;
:mod:`.deployed`) and may quantize the file (:mod:`.quantize`). ONNX needs the ``export``
extra (onnx, onnxruntime, onnxscript): every import of them is lazy and a missing one is
one line (:func:`require`).
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import UnetppError
from ..io import atomic_write_bytes
from ..models.mode import Mode, combine_heads, resolve_mode
from .engine import probabilities

FORMATS = ("onnx", "torchscript")
MIN_OPSET = 17
DEFAULT_OPSET = 18
ATOL = 1e-4
#: version of the ``unetpp.*`` metadata layout (1: with the deployment keys of :mod:`.deployed`)
METADATA_VERSION = 1
#: the one line a missing ``export`` extra gives (``{}``: the missing package)
MISSING_EXTRA = "exporting/running ONNX needs {}: pip install 'unetpp[export]'"


def require(name: str = "onnxruntime") -> Any:
    """``import name`` (onnx, onnxruntime, ...), or :class:`UnetppError` saying which extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UnetppError(MISSING_EXTRA.format(name.split(".")[0])) from None


class ModeNetwork(nn.Module):
    """``x -> probabilities`` of one settled :class:`~unetpp.models.Mode`: the pruned network
    (fast) or the full one with its heads combined (accurate, :func:`combine_heads`)."""

    def __init__(self, model: nn.Module, mode: Mode | str, level: int | None = None):
        super().__init__()
        if not isinstance(mode, Mode):
            mode = resolve_mode(tuple(model.levels), mode=mode, level=level)
        self.mode = mode
        self.levels = mode.levels(model.levels)
        self.classes = model.config.classes
        self.net = model.prune(self.levels[0]) if len(self.levels) == 1 and tuple(model.levels) != self.levels \
            else model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        out = out if isinstance(out, dict) else {self.levels[-1]: out}
        return combine_heads({lv: probabilities(out[lv], self.classes) for lv in self.levels}, self.mode)


def example_shape(model: nn.Module, batch: int = 2, bump: int = 1) -> tuple[int, ...]:
    """An input shape whose spatial sizes are not multiples of 2^depth (see module doc)."""
    cfg = model.config
    m = 2 ** cfg.depth
    spatial = [m + bump + 2 * i for i in range(cfg.dims)]
    return (batch, cfg.in_channels, *spatial)


def metadata(model: nn.Module, mode: Mode, fmt: str) -> dict[str, str]:
    cfg = model.config
    return {"unetpp_version": __version__, "format": fmt, "mode": mode.name,
            "level": "" if mode.level is None else str(mode.level), "dims": str(cfg.dims),
            "in_channels": str(cfg.in_channels), "classes": str(cfg.classes), "output": "probabilities",
            "input_layout": "(N, C, H, W)" if cfg.dims == 2 else "(N, C, D, H, W)",
            "depth": str(cfg.depth), "format_version": str(METADATA_VERSION)}


def _onnx_bytes(wrapper: nn.Module, x: torch.Tensor, opset: int) -> bytes:
    require("onnx")
    dims = x.dim() - 2
    names = ["batch"] + ["depth", "height", "width"][3 - dims:]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "model.onnx")
        try:
            from torch.export import Dim

            dyn = {"x": {i: Dim.DYNAMIC for i in [0] + list(range(2, 2 + dims))}}
            torch.onnx.export(wrapper, (x,), path, dynamo=True, opset_version=opset, input_names=["image"],
                              output_names=["probabilities"], dynamic_shapes=dyn, verbose=False,
                              external_data=False)
        except Exception:  # noqa: BLE001 - fall back to the TorchScript-based exporter
            axes = {i: n for i, n in zip([0] + list(range(2, 2 + dims)), names)}
            torch.onnx.export(wrapper, (x,), path, dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["probabilities"],
                              dynamic_axes={"image": axes, "probabilities": axes})
        return Path(path).read_bytes()


def with_metadata(data: bytes, meta: dict[str, str]) -> bytes:
    """An ONNX file's bytes with its ``unetpp.*`` metadata replaced by ``meta``."""
    onnx = require("onnx")
    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"unetpp.{k}", v
    return proto.SerializeToString()


def onnx_session(data: bytes | str | os.PathLike, providers: list[str] | None = None):
    """An ONNX Runtime session (CPU unless ``providers`` says otherwise) of a file (path) or bytes."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = data if isinstance(data, bytes) else str(data)
    return ort.InferenceSession(src, sess_options=opts, providers=providers or ["CPUExecutionProvider"])


def onnx_metadata(session: Any) -> dict[str, str]:
    props = session.get_modelmeta().custom_metadata_map
    return {k[len("unetpp."):]: v for k, v in props.items() if k.startswith("unetpp.")}


def _check_inputs(model: nn.Module, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(example_shape(model, 2, 1), generator=g),
            torch.randn(example_shape(model, 1, 2 ** model.config.depth + 3), generator=g)]


def export(model: nn.Module, fmt: str, out: str | os.PathLike, mode: Mode | str = "accurate",
           level: int | None = None, opset: int = DEFAULT_OPSET, atol: float = ATOL,
           extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Export ``model`` in ``mode`` (a settled :class:`~unetpp.models.Mode`, or a mode name
    and ``level``) to ``out`` after checking it against PyTorch.

    ``extra``: more ``unetpp.*`` metadata (a run's deployment keys, :mod:`.deployed`).
    Returns ``{"format", "path", "mode", "level", "opset", "max_abs_diff", "checked_shapes"}``.
    Raises :class:`UnetppError` (writing nothing) when the exported model differs by more
    than ``atol`` from PyTorch.
    """
    data, info = export_bytes(model, fmt, out, mode, level, opset, atol, extra)
    atomic_write_bytes(out, data)
    return info


def export_bytes(model: nn.Module, fmt: str, out: str | os.PathLike, mode: Mode | str = "accurate",
                 level: int | None = None, opset: int = DEFAULT_OPSET, atol: float = ATOL,
                 extra: dict[str, str] | None = None) -> tuple[bytes, dict[str, Any]]:
    """:func:`export` without the writing: ``(the checked file's bytes, info)``; ``out`` only
    names the file in messages and ``info``."""
    if fmt not in FORMATS:
        raise UnetppError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise UnetppError(f"--opset must be >= {MIN_OPSET}, got {opset}")
    if fmt == "onnx":  # the export extra, before any work
        require("onnx")
        require("onnxruntime")
    if not isinstance(mode, Mode):
        mode = resolve_mode(tuple(model.levels), mode=mode, level=level)
    if next(model.parameters()).device.type != "cpu":  # export on the CPU, leave the caller's model
        model = copy.deepcopy(model).to("cpu")
    was_training = model.training
    model.eval()
    try:
        data, worst, checks = _export_checked(model, fmt, mode, opset, extra)
    finally:
        model.train(was_training)
    if not np.isfinite(worst) or worst > atol:
        raise UnetppError(f"{out}: not written; the exported {fmt} model differs from PyTorch by "
                          f"{worst:.3g} (max abs, allowed {atol:g})")
    return data, {"format": fmt, "path": str(out), "mode": mode.name, "level": mode.level,
                  "opset": opset if fmt == "onnx" else None, "max_abs_diff": worst,
                  "checked_shapes": [list(c.shape) for c in checks], "output": "probabilities"}


def _export_checked(model: nn.Module, fmt: str, mode: Mode, opset: int,
                    extra: dict[str, str] | None = None) -> tuple[bytes, float, list[torch.Tensor]]:
    """The exported file's bytes and its max abs difference from PyTorch on the check inputs."""
    wrapper = ModeNetwork(model, mode).eval()
    meta = {**metadata(model, mode, fmt), **(extra or {})}
    x = torch.randn(example_shape(model))
    checks = _check_inputs(model)
    with torch.no_grad():
        refs = [wrapper(c) for c in checks]
    diffs: list[float] = []
    if fmt == "onnx":
        data = with_metadata(_onnx_bytes(wrapper, x, opset), meta)
        session = onnx_session(data)
        name = session.get_inputs()[0].name
        for c, r in zip(checks, refs):
            got = session.run(None, {name: c.numpy()})[0]
            diffs.append(_diff(got, r.numpy()))
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, x, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={"unetpp.json": json.dumps(meta)})
        data = buf.getvalue()
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
        with torch.no_grad():
            for c, r in zip(checks, refs):
                diffs.append(_diff(loaded(c).numpy(), r.numpy()))
    return data, max(diffs), checks


def _diff(got: np.ndarray, ref: np.ndarray) -> float:
    if got.shape != ref.shape:
        return float("inf")
    return float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())


class OnnxNetwork:
    """An exported ONNX file as the engine's ``x -> {level: probabilities}`` network."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None):
        path = Path(path)
        if not path.is_file():
            raise UnetppError(f"{path}: file not found")
        require("onnxruntime")
        try:
            self.session = onnx_session(path, providers)
        except Exception as e:  # noqa: BLE001 - any load failure is the file's fault
            raise UnetppError(f"{path}: not a valid ONNX file ({type(e).__name__})") from None
        self.meta = onnx_metadata(self.session)
        if self.meta.get("output") != "probabilities":
            raise UnetppError(f"{path}: not exported by 'unetpp export' (no unetpp metadata)")
        self.path = path
        try:
            level = int(self.meta["level"]) if self.meta.get("level") else None
            self.mode = Mode.from_json({"mode": self.meta.get("mode"), "level": level}, f"{path}: metadata")
        except (ValueError, KeyError):
            raise UnetppError(f"{path}: invalid unetpp mode/level metadata") from None
        self.level = self.mode.level
        self.input = self.session.get_inputs()[0].name

    def check(self, predictor: Any, mode: str | None, level: int | None) -> None:
        """Refuse an ONNX file that does not fit the run, or a mode/level it cannot compute."""
        problems = []
        for key, want in (("dims", predictor.dims), ("in_channels", predictor.in_channels),
                          ("classes", predictor.classes)):
            if self.meta.get(key) != str(want):
                problems.append(f"{self.path}: {key} {self.meta.get(key)} differs from the run's {want}")
        problems += self.mode_problems(mode, level)
        if problems:
            raise UnetppError(problems)

    def mode_problems(self, mode: str | Mode | None, level: int | None) -> list[str]:
        """[] when ``--mode``/``--level`` (or a settled Mode) is what the file computes, else one line."""
        if isinstance(mode, Mode):
            mode, level = mode.name, mode.level
        what = "accurate mode" if self.mode.name == "accurate" else f"fast mode at level {self.level}"
        if (mode is not None and mode != self.mode.name) or (level is not None and level != self.level):
            asked = " ".join(f"{k} {v}" for k, v in (("--mode", mode), ("--level", level)) if v is not None)
            return [f"{asked}: {self.path} computes {what}; export another file for that"]
        return []

    def levels(self) -> tuple[int, ...]:
        return (self.level if self.level is not None else 0,)

    def __call__(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = self.session.run(None, {self.input: x.detach().cpu().numpy().astype(np.float32, copy=False)})[0]
        return {self.levels()[0]: torch.from_numpy(out)}
