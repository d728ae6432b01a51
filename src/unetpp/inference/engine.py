"""Whole-image inference: sliding windows, deep-supervision levels, modes, mirroring TTA.

Everything that turns a trained model and one normalised image into probabilities goes
through :func:`predict_with`, so validation during training, ``evaluate``, ``prune`` and
``predict`` compute the same thing for the same tiling (validation during training always
tiles with patch windows; the others as the run's window policy says).

- **Levels**: a deep-supervised UNet++ has a head per level 1..depth. Asking for one level
  runs ``model.prune(level)``: only the nodes that head needs are computed. Asking for
  several runs the full network once and reads every head.
- **Modes** (the paper's, :class:`unetpp.models.Mode`): *accurate* averages the probabilities
  of every head; *fast* takes one head, level ``L``. The mode is settled once
  (:func:`unetpp.models.resolve_mode`) and its heads combined by
  :func:`unetpp.models.combine_heads`.
- **Sliding window**: images larger than the window are tiled and the tiles blended with
  Gaussian weights (MONAI's ``sliding_window_inference``), so border pixels of a tile count
  less than its centre. The window is a :class:`~unetpp.inference.window.Window`: the
  training patch overlapping by ``overlap`` (nnU-Net's), or large windows (the whole image,
  or as few windows as memory allows), chosen on validation data by ``prune``.
- **2D model, 3D image**: the volume is cut into slices along the first spatial axis, run as
  a batch of 2D images and stacked back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import combinations

import torch
from torch import nn

from ..models.mode import MODES, Mode, combine_heads, resolve_mode
from ..runtime import inference_context
from .window import Window

#: "out of GPU memory: batch size halved" goes here (stderr when nothing is configured)
_LOG = logging.getLogger("unetpp.inference")


def probabilities(logits: torch.Tensor, classes: int) -> torch.Tensor:
    """Sigmoid for a binary (1-channel) output, softmax over channels otherwise."""
    return torch.sigmoid(logits) if classes == 1 else torch.softmax(logits, dim=1)


def probabilities_to_labels(probs: torch.Tensor, classes: int, threshold: float = 0.5) -> torch.Tensor:
    """``(K', *S)`` probabilities -> int64 label map ``(*S)`` (binary: 0/1, else argmax)."""
    if classes == 1:
        return (probs[0] > threshold).long()
    return probs.argmax(dim=0)


def resolve_levels(model: nn.Module, mode: str, level: int | None) -> tuple[int, ...]:
    """The heads ``mode`` reads on ``model`` (see :func:`unetpp.models.resolve_mode`): every
    level for ``accurate``, one for ``fast`` (the deepest when ``level`` is None)."""
    heads = tuple(model.levels)
    return resolve_mode(heads, mode=mode, level=level).levels(heads)


def level_network(model: nn.Module, levels: Sequence[int]) -> Callable[[torch.Tensor], dict[int, torch.Tensor]]:
    """A callable ``x -> {level: logits}`` computing no more nodes than ``levels`` need."""
    if len(levels) == 1 and tuple(model.levels) != tuple(levels):
        net = model.prune(levels[0])  # structural pruning: fewer nodes actually run
        return lambda x: {levels[0]: net(x)}

    def run(x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = model(x)
        out = out if isinstance(out, dict) else {model.levels[-1]: out}
        return {lv: out[lv] for lv in levels}

    return run


def _mirror_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes of an ``(N, C, *S)`` tensor (nnU-Net's mirroring)."""
    axes = range(2, 2 + spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in combinations(axes, r)]


@torch.no_grad()
def predict_probabilities(model: nn.Module, image: torch.Tensor, *, levels: Sequence[int] | None = None,
                          patch_size: Sequence[int] | None = None, overlap: float = 0.5,
                          batch_size: int = 4, tta: bool = False,
                          device: str | torch.device | None = None,
                          dtype: torch.dtype | None = None) -> dict[int, torch.Tensor]:
    """Probabilities of each requested level for one whole image.

    Args:
        model: a model of :mod:`unetpp.models` (in eval mode for inference).
        image: float32 ``(C, *S)``, normalised as in training; ``len(S)`` equals the model's
            ``dims``, or is 3 for a 2D model (run slice by slice).
        levels: heads to read; default every head of the model.
        patch_size: window of the sliding window (the training patch). ``None``: the whole
            image at once.
        overlap: fraction of a window shared with its neighbour.
        batch_size: windows (or slices) per forward pass.
        tta: average over every mirroring of the spatial axes (4 in 2D, 8 in 3D).
        device: where to compute (default: the model's device). Results come back on the CPU.
        dtype: autocast dtype (:class:`unetpp.runtime.Precision`'s, so validation computes as
            training does); None: fp32.

    Returns:
        ``{level: probs}`` with probs float32 ``(K', *S)`` on the CPU; ``K' = 1`` for a
        binary model, else ``classes``.

    Example:
        >>> model = create_model("unetpp", base_filters=4).eval()
        >>> probs = predict_probabilities(model, torch.rand(1, 100, 120), patch_size=(64, 64))
        >>> sorted(probs), tuple(probs[4].shape)
        ([1, 2, 3, 4], (1, 100, 120))
    """
    cfg = model.config
    levels = tuple(model.levels) if levels is None else tuple(levels)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    network = level_network(model, levels)

    def probs_of(x: torch.Tensor) -> dict[int, torch.Tensor]:
        with inference_context(device, dtype):
            return {lv: probabilities(logits.float(), cfg.classes) for lv, logits in network(x).items()}

    return predict_with(probs_of, image, dims=cfg.dims, in_channels=cfg.in_channels, levels=levels,
                        patch_size=patch_size, overlap=overlap, batch_size=batch_size, tta=tta,
                        device=device)


@torch.no_grad()
def predict_with(network: Callable[[torch.Tensor], dict[int, torch.Tensor]], image: torch.Tensor, *,
                 dims: int, in_channels: int, levels: Sequence[int],
                 patch_size: Sequence[int] | None = None, overlap: float = 0.5, batch_size: int = 4,
                 tta: bool = False, device: str | torch.device = "cpu",
                 progress: Callable[[int, int], None] | None = None,
                 window: Window | None = None) -> dict[int, torch.Tensor]:
    """The sliding window, slicing and TTA of :func:`predict_probabilities` around any network.

    ``network(x)`` maps a float32 batch ``(N, C, *patch)`` on ``device`` to
    ``{level: probabilities (N, K', *patch)}``: a PyTorch model (see
    :func:`predict_probabilities`) or an exported one (ONNX Runtime, TorchScript).
    ``progress(done, total)`` is called after each batch of slices (2D model on a volume).
    ``window`` (:class:`~unetpp.inference.window.Window`): how to tile each image; default
    the patch policy with ``patch_size`` and ``overlap``.
    """
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(image)
    if image.dim() - 1 not in (dims, 3) or (dims == 3 and image.dim() != 4):
        raise ValueError(f"expected an image (C, *S) with {dims} spatial dims for a {dims}D "
                         f"model{' (or 3 for slice-by-slice)' if dims == 2 else ''}, "
                         f"got shape {tuple(image.shape)}")
    if image.shape[0] != in_channels:
        raise ValueError(f"the model expects {in_channels} channel(s), the image has "
                         f"{image.shape[0]} (shape {tuple(image.shape)})")
    levels = tuple(levels)
    device = torch.device(device)
    if window is None and patch_size is not None:
        window = Window("patch", tuple(int(p) for p in patch_size), overlap)
    mirror = _mirror_axes(dims) if tta else [()]

    def predictor(x: torch.Tensor) -> dict[int, torch.Tensor]:
        total: dict[int, torch.Tensor] = {}
        for axes in mirror:
            xi = torch.flip(x, axes) if axes else x
            for lv, p in network(xi).items():
                p = p.float()
                p = torch.flip(p, axes) if axes else p
                total[lv] = p if lv not in total else total[lv] + p
        return {lv: p / len(mirror) for lv, p in total.items()}

    slice_by_slice = dims == 2 and image.dim() == 4
    # (N, C, *S): one image, or the slices of a volume as a batch of 2D images
    batch = image.permute(1, 0, 2, 3) if slice_by_slice else image.unsqueeze(0)
    spatial = tuple(batch.shape[2:])

    def tiling(window: Window | None) -> tuple[tuple[int, ...], tuple[float, ...], int]:
        """(window size, overlaps, windows or slices per pass); one image in one window: 1."""
        roi, overlaps = window.plan(spatial) if window is not None else (spatial, ())
        whole = all(s <= r for s, r in zip(spatial, roi))
        per = window.per_pass(roi, batch_size) if window is not None else batch_size
        return roi, overlaps, 1 if whole and not slice_by_slice else per

    roi, overlaps, per_pass = tiling(window)
    chunks: list[dict[int, torch.Tensor]] = []
    start = 0
    while start < batch.shape[0]:
        step = per_pass if slice_by_slice else 1
        x = batch[start:start + step].to(device, torch.float32)
        try:
            if all(s <= r for s, r in zip(spatial, roi)):
                out = predictor(x)
            else:
                from monai.inferers import sliding_window_inference  # lazy: MONAI costs seconds at start-up

                out = sliding_window_inference(x, roi, per_pass, predictor, overlap=overlaps,
                                               mode="gaussian", sw_device=device, device="cpu")
        except torch.cuda.OutOfMemoryError:
            # out of GPU memory: halve the windows/slices per pass; at one, large windows give
            # way to patch windows (the image starts again: one tiling for all of it)
            del x
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if per_pass > 1:
                per_pass = max(1, per_pass // 2)
                _LOG.warning(f"out of GPU memory: batch size halved to {per_pass} and retried")
            elif window is not None and window.policy == "large":
                window = replace(window, policy="patch")
                roi, overlaps, per_pass = tiling(window)
                chunks, start = [], 0
                _LOG.warning("out of GPU memory with large windows: patch windows used instead")
            else:
                raise
            continue
        chunks.append({lv: p.float().cpu() for lv, p in out.items()})
        start += step
        if progress is not None:
            progress(min(start, batch.shape[0]), batch.shape[0])
    result = {lv: torch.cat([c[lv] for c in chunks]) for lv in levels}
    if slice_by_slice:  # (D, K', H, W) -> (K', D, H, W)
        return {lv: p.permute(1, 0, 2, 3).contiguous() for lv, p in result.items()}
    return {lv: p[0] for lv, p in result.items()}


#: the one function that combines heads, under its older name
mode_probabilities = combine_heads


def predict(model: nn.Module, image: torch.Tensor, mode: str | Mode = "accurate", level: int | None = None,
            **kwargs) -> torch.Tensor:
    """Probabilities ``(K', *S)`` of ``mode`` (see :func:`predict_probabilities` for kwargs)."""
    if not isinstance(mode, Mode):
        mode = resolve_mode(tuple(model.levels), mode=mode, level=level)
    probs = predict_probabilities(model, image, levels=mode.levels(model.levels), **kwargs)
    return combine_heads(probs, mode)


__all__ = ["MODES", "Mode", "combine_heads", "mode_probabilities", "predict", "predict_probabilities",
           "predict_with", "probabilities", "probabilities_to_labels", "resolve_levels"]
