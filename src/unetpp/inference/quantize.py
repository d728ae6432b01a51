"""``unetpp export --format onnx --quantize int8|fp16``: a smaller, faster file, scored first.

- **int8**: ONNX Runtime's static quantization (``quantize_static``) in QDQ format, int8
  weights per output channel, uint8 activations whose ranges (MinMax) are calibrated on
  normalised patches of the run's validation cases at the run's patch size (at most
  :data:`MAX_CALIBRATION_PATCHES`). Everything from the probabilities on (the sigmoid/softmax
  and accurate mode's mean of heads) stays float32, so the output is still probabilities.
  :func:`~.deployed.export_run` exports the int8 network with one conv over each node's
  concatenation (``set_split_concat(False)``: same weights and result), which quantizes to
  fewer requantized sums and ran faster (L4 ~1.3x) than the split form.
- **fp16**: weights and activations in float16 (``onnxruntime.transformers.float16``, shipped
  with onnxruntime), inputs and outputs kept float32. It pays on GPU execution providers; ONNX
  Runtime's CPU provider runs it too, mostly through casts.

**Scored before it is written.** The quantized model and the float32 one are run on the
same cases, whole images through the same sliding window as ``predict``
(:func:`unetpp.inference.engine.predict_with`), and their per-case IoU compared
(:func:`quantize_checked`); a loss of more than ``tolerance`` IoU points (0-100 scale) is
refused in one line with both IoUs, and nothing is written. The measured IoUs go in the
file's metadata (``unetpp.quantization``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UnetppError
from ..metrics import case_scores
from .engine import predict_with, probabilities_to_labels
from .export import onnx_session, require

QUANTIZE = ("int8", "fp16")
#: IoU points (0-100) a quantized model may lose against float32 on the scored cases
DEFAULT_TOLERANCE = 0.5
#: calibration patches at most (spread over the cases); more adds time, not accuracy
MAX_CALIBRATION_PATCHES = 64
INT8_METHOD = "static QDQ, per-channel int8 weights, uint8 activations, MinMax calibration"
#: an evaluation case: (name, normalised image (C, *S), label map (*S))
Case = tuple[str, torch.Tensor, np.ndarray]


def int8_instructions() -> str:
    """What this CPU offers int8 convolutions: ``amx_int8``, ``avx512_vnni``, ``avx_vnni``,
    or ``none`` (ONNX Runtime then uses plain AVX2/AVX-512 integer code); ``unknown`` off Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return next((f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in flags), "none")


def _planes(image: torch.Tensor, dims: int) -> list[torch.Tensor]:
    """The ``(C, *S)`` inputs the network sees: the image, or a volume's slices for a 2D model."""
    if dims == 2 and image.dim() == 4:
        return [image[:, d] for d in range(image.shape[1])]
    return [image]


def _starts(size: int, patch: int) -> list[int]:
    """Window starts that tile ``size`` with windows of ``patch`` (the last one flush with the end)."""
    if size <= patch:
        return [0]
    return sorted(set(list(range(0, size - patch, patch)) + [size - patch]))


def calibration_patches(images: Sequence[torch.Tensor], patch_size: Sequence[int], dims: int,
                        limit: int = MAX_CALIBRATION_PATCHES) -> list[np.ndarray]:
    """float32 ``(1, C, *patch)`` windows tiling the images (a volume's slices for a 2D model),
    at most ``limit``, spread evenly over all of them."""
    windows: list[tuple[torch.Tensor, tuple[slice, ...]]] = []
    for image in images:
        for plane in _planes(torch.as_tensor(image), dims):
            spatial = plane.shape[1:]
            if len(spatial) != len(patch_size):
                raise ValueError(f"patch {tuple(patch_size)} for a {dims}D model, image of shape {tuple(image.shape)}")
            grids = [_starts(s, p) for s, p in zip(spatial, patch_size)]
            for start in np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, len(grids)):
                windows.append((plane, tuple(slice(int(a), int(a) + p) for a, p in zip(start, patch_size))))
    if not windows:
        raise UnetppError("no calibration images")
    keep = np.unique(np.linspace(0, len(windows) - 1, min(limit, len(windows))).round().astype(int))
    return [np.ascontiguousarray(windows[i][0][(slice(None), *windows[i][1])][None].numpy(), dtype=np.float32)
            for i in keep]


def _reader(input_name: str, patches: list[np.ndarray]) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``patches``."""
    quant = require("onnxruntime.quantization")

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(patches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {input_name: item}

    return Reader()


def _named(proto: Any) -> Any:
    """Give every node a name (the quantizer excludes nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        if not node.name or node.name in seen:
            node.name = f"unetpp_node_{i}"
        seen.add(node.name)
    return proto


def after_probabilities(proto: Any) -> list[str]:
    """Names of the sigmoid/softmax nodes and every node downstream of them (accurate mode's
    mean of heads): they stay float32, so the file still outputs probabilities."""
    consumers: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    todo = [n for n in proto.graph.node if n.op_type in ("Sigmoid", "Softmax")]
    found: dict[str, None] = {}
    while todo:
        node = todo.pop()
        if node.name in found:
            continue
        found[node.name] = None
        todo += [c for out in node.output for c in consumers.get(out, [])]
    return list(found)


def quantize_int8(data: bytes, patches: list[np.ndarray]) -> bytes:
    """Static int8 QDQ quantization of an exported float32 file (see the module doc)."""
    onnx = require("onnx")
    quant = require("onnxruntime.quantization")
    proto = _named(onnx.load_from_string(data))
    input_name = proto.graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(proto, src)
        quant.quantize_static(src, dst, _reader(input_name, patches), quant_format=quant.QuantFormat.QDQ,
                              per_channel=True, activation_type=quant.QuantType.QUInt8,
                              weight_type=quant.QuantType.QInt8, calibrate_method=quant.CalibrationMethod.MinMax,
                              nodes_to_exclude=after_probabilities(proto))
        return Path(dst).read_bytes()


def convert_fp16(data: bytes) -> bytes:
    """float16 weights and activations, float32 input and output."""
    onnx = require("onnx")
    float16 = require("onnxruntime.transformers.float16")
    with _quiet():
        proto = float16.convert_float_to_float16(onnx.load_from_string(data), keep_io_types=True)
    return proto.SerializeToString()


class _quiet:
    """Silence the quantization tools' advice on the root logger while they run."""

    def __enter__(self) -> None:
        logging.disable(logging.WARNING)

    def __exit__(self, *exc: Any) -> None:
        logging.disable(logging.NOTSET)


def session_network(session: Any) -> Callable[[torch.Tensor], dict[int, torch.Tensor]]:
    """An ONNX Runtime session as the engine's ``x -> {0: probabilities}`` network."""
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = session.run(None, {name: x.detach().cpu().numpy().astype(np.float32, copy=False)})[0]
        return {0: torch.from_numpy(out)}

    return run


def score(network: Callable[[torch.Tensor], dict[int, torch.Tensor]], cases: Sequence[Case], *, dims: int,
          in_channels: int, classes: int, patch_size: Sequence[int], overlap: float = 0.5, batch_size: int = 4,
          ignore: int | None = None, window: Any = None) -> list[float]:
    """Per-case IoU of ``network`` (whole images tiled as ``predict`` tiles them: ``window``,
    a :class:`~.window.Window`, else patch windows)."""
    ious = []
    for _, image, label in cases:
        probs = predict_with(network, image, dims=dims, in_channels=in_channels, levels=(0,),
                             patch_size=patch_size, overlap=overlap, batch_size=batch_size, window=window)[0]
        labels = probabilities_to_labels(probs, classes)
        ious.append(float(case_scores(labels, label, classes, ignore=ignore)["iou"]))
    return ious


def quantize_checked(data: bytes, how: str, cases: Sequence[Case], *, dims: int, in_channels: int, classes: int,
                     patch_size: Sequence[int], tolerance: float = DEFAULT_TOLERANCE, where: str = "model",
                     ignore: int | None = None, overlap: float = 0.5, batch_size: int = 4,
                     progress: Callable[[str], None] | None = None, window: Any = None
                     ) -> tuple[bytes, dict[str, Any]]:
    """``(quantized bytes, record)`` of an exported float32 file, or :class:`UnetppError`
    (one line with both IoUs) when it loses more than ``tolerance`` IoU points on ``cases``.

    ``record`` (the file's ``unetpp.quantization`` metadata): ``precision``, ``method``,
    ``calibration_patches``, ``cases``, ``iou_fp32``, ``iou_<how>`` (means over the cases,
    0-1), ``loss_points``, ``tolerance``, ``per_case``, ``int8_instructions``.
    """
    if how not in QUANTIZE:
        raise UnetppError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {how!r}")
    if not cases:
        raise UnetppError(f"{where}: no cases to calibrate and score the {how} model on")
    say = progress or (lambda _msg: None)
    record: dict[str, Any] = {"precision": how, "cases": len(cases)}
    if how == "int8":
        patches = calibration_patches([c[1] for c in cases], patch_size, dims)
        say(f"calibrating int8 on {len(patches)} patch(es) of {len(cases)} case(s)")
        quantized = quantize_int8(data, patches)
        record.update(method=INT8_METHOD, calibration_patches=len(patches), int8_instructions=int8_instructions())
    else:
        quantized = convert_fp16(data)
        record.update(method="float16 weights and activations, float32 input/output")
    kw = dict(dims=dims, in_channels=in_channels, classes=classes, patch_size=patch_size, overlap=overlap,
              batch_size=batch_size, ignore=ignore, window=window)
    say(f"scoring fp32 and {how} on {len(cases)} case(s)")
    base = score(session_network(onnx_session(data)), cases, **kw)
    try:
        session = onnx_session(quantized)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime cannot run what the tool produced here
        raise UnetppError(f"{where}: not written; ONNX Runtime cannot run the {how} model on this machine "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    got = score(session_network(session), cases, **kw)
    fp32, q = float(np.mean(base)), float(np.mean(got))
    loss = (fp32 - q) * 100
    record.update({"iou_fp32": fp32, f"iou_{how}": q, "loss_points": loss, "tolerance": tolerance,
                   "per_case": [{"case": c[0], "iou_fp32": a, f"iou_{how}": b} for c, a, b in zip(cases, base, got)]})
    if not loss <= tolerance:
        raise UnetppError(f"{where}: not written; {how} IoU {q * 100:.2f} against fp32 {fp32 * 100:.2f} on "
                          f"{len(cases)} case(s) loses {loss:.2f} points, more than --tolerance {tolerance:g}")
    return quantized, record


__all__ = ["DEFAULT_TOLERANCE", "MAX_CALIBRATION_PATCHES", "QUANTIZE", "after_probabilities", "calibration_patches",
           "convert_fp16", "int8_instructions", "quantize_checked", "quantize_int8", "score", "session_network"]
