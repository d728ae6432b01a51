"""New inputs for prediction, and masks written back in the input's own geometry.

    >>> image, meta = read_input("scan_0000.nii.gz", run_config["data"])   # doctest: +SKIP
    >>> image.shape      # (C, *grid): normalised, at the training spacing   # doctest: +SKIP
    >>> write_mask("out/scan.nii.gz", labels, meta)                       # doctest: +SKIP

``read_input`` applies exactly the preparation the training cases had (channel gathering,
resampling to ``data_config["target_spacing"]``, normalisation with the stored statistics).
:func:`to_input_grid` brings probabilities from the network's grid back to the input's own
grid (linearly; take the argmax afterwards). ``write_mask`` takes labels on the input's grid
(or, for callers that only have labels, on the network's grid: then resized by nearest
neighbour) and writes them in the input's format with its geometry:

- NIfTI: the input's affine and sform/qform codes; NRRD: its space, directions and origin;
  MHA: its spacing, origin and direction.
- PNG/TIF/BMP: binary masks as 0/255 (how Kvasir-SEG and friends store them), label values
  otherwise. A ``.jpg``/``.jpeg`` output is written as ``.png`` (JPG would blur the labels).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from .cases.check import _same_geometry
from .cases.dataset import prepare
from .files.formats import format_of, read_file, strip_suffix, suffix_of, write_file
from .cases.orientation import from_canonical
from .cases.resample import resize


def _channel_files(path: Path, channels: int) -> list[Path]:
    """``case_0000.nii.gz`` of a C-channel dataset -> its C sibling files ``_0000.._{C-1}``."""
    m = re.match(r"^(?P<case>.+)_0000$", strip_suffix(path))
    if channels <= 1 or m is None:
        return [path]
    suffix = "" if path.is_dir() else suffix_of(path)  # a DICOM series folder per channel
    files = [path.with_name(f"{m['case']}_{c:04d}{suffix}") for c in range(channels)]
    missing = [str(f) for f in files if not (f.is_dir() if path.is_dir() else f.is_file())]
    if missing:
        raise DataError([f"{f}: channel file missing (the model takes {channels} channels)" for f in missing])
    return files


def _match_channels(image: np.ndarray, channels: int, path: Path) -> tuple[np.ndarray, str | None]:
    """Make gray and RGB inputs fit the model: gray -> RGB by repeating, RGB -> gray by
    luminance. Any other mismatch is an error."""
    have = image.shape[0]
    if have == channels:
        return image, None
    if image.ndim != 3:  # volumes: extra frames are not colours (a 4D file for a 3D model)
        raise DataError(f"{path}: a volume with {have} channels/frames; the model was trained on {channels}")
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=0), "gray->rgb"
    if have == 3 and channels == 1:
        weights = np.asarray([0.299, 0.587, 0.114], np.float32).reshape(3, *([1] * (image.ndim - 1)))
        return (image.astype(np.float32) * weights).sum(0, keepdims=True), "rgb->gray"
    raise DataError(f"{path}: {have} channels; the model was trained on {channels}")


def read_input(path: str | os.PathLike | Sequence[str | os.PathLike],
               data_config: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a new image and prepare it as the training cases were.

    Args:
        path: an image file; for a multi-channel nnU-Net model either the ``_0000`` file (the
            other channels are found beside it) or the list of channel files.
        data_config: ``SegDataset.data_config()`` as stored in ``RUN/config.json["data"]``.

    Returns:
        ``(image, meta)``: float32 (C, *grid) and the meta :func:`write_mask` needs
        (``format``, ``shape`` and geometry of the input, ``grid_shape``, ``classes``).
    """
    channels = int(data_config["channels"])
    if not 1 <= channels <= 256:
        raise DataError(f"data config: {channels} channels; expected 1..256")
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
    else:
        files = _channel_files(Path(path), channels)
    parts, meta = [], None
    for f in files:
        arr, m = read_file(f)
        if meta is None:
            meta = m
        else:
            why = _same_geometry(meta, m)
            if why:
                raise DataError(f"{f}: {why} of {files[0].name}")
        parts.append(arr)
    assert meta is not None
    image = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise DataError(f"{files[0]}: NaN/Inf values in the image")
    dims = int(data_config["spatial_dims"])
    if image.ndim - 1 != dims:
        raise DataError(f"{files[0]}: a {image.ndim - 1}D image; the model was trained on {dims}D data")
    image, converted = _match_channels(image, channels, files[0])
    if converted:
        meta["channels_converted"] = converted
    image, _, meta = prepare(image, None, meta, data_config)
    return image, meta


def to_input_grid(probs: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Probabilities ``(K', *grid)`` on the network's grid (``meta["grid_shape"]``, in the
    canonical axis order) -> on the input's own grid (``meta["shape"]``, its own axis order),
    linearly: the argmax is taken *after* this, as nnU-Net does, so the
    mask is the argmax of the written probabilities and thin structures keep their voxels
    (resizing labels with nearest neighbour after the argmax loses them)."""
    if hasattr(probs, "detach"):
        probs = probs.detach().cpu().numpy()
    shape = tuple(meta["shape"])
    probs = np.asarray(probs, dtype=np.float32)
    if tuple(probs.shape[1:]) == shape and "orientation" not in meta:
        return probs
    canonical = tuple(meta.get("canonical_shape", shape))
    return from_canonical(resize(probs, canonical, order=1), meta.get("orientation"))


def write_mask(path_out: str | os.PathLike, labels: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write a label map (*grid) as a mask file in the input's format and geometry.

    Args:
        path_out: output file; its suffix picks the format (normally the input's).
        labels: int label map on the input's own grid (``meta["shape"]``, e.g. the argmax of
            :func:`to_input_grid`'s probabilities), or on the network's grid
            (``meta["grid_shape"]``, when that shape differs: then resized and reoriented
            back by nearest neighbour); values 0..K-1.
        meta: from :func:`read_input` or ``Case.meta``.

    Returns:
        The path written (``.jpg`` becomes ``.png``).
    """
    path = Path(path_out)
    if hasattr(labels, "detach"):  # a torch tensor, possibly on the GPU
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    shape = tuple(meta["shape"])
    grid = tuple(meta.get("grid_shape", ()))
    if labels.shape != shape:  # on the network's grid (in the canonical order): bring it back
        if labels.shape != grid:
            raise DataError(f"{path}: labels of shape {labels.shape} fit neither the input's grid "
                            f"{shape} nor the network's {grid}")
        # back onto the input's own voxels, in its own axis order
        labels = from_canonical(resize(labels, tuple(meta.get("canonical_shape", shape)), order=0),
                                meta.get("orientation"))
    fmt = format_of(path)
    if fmt == "jpg":
        path = path.with_suffix(".png")
        fmt = "png"
    binary = int(meta.get("classes", 1)) <= 1
    if fmt in ("png", "bmp", "tif"):
        if len(shape) == 2 and binary:
            data = (labels > 0).astype(np.uint8) * 255
        else:
            data = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    else:
        data = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    return write_file(path, data, meta)
