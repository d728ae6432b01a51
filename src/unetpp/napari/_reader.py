"""napari reader: NIfTI, NRRD, MHA/MHD volumes and DICOM series folders, read as ``unetpp``
reads them (:func:`unetpp.data.files.formats.read_file`): one image layer per file, scaled by its
spacing (mm), in the file's own axis order (the order ``predict`` writes masks back in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """npe2 reader hook: a reader for ``path`` when unetpp reads it, else None (cheap: no
    file is opened, nothing heavy imported)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        return None
    for p in map(Path, paths):
        if p.is_dir():
            if not any(f.is_file() for f in p.iterdir()):
                return None
        elif not str(p).lower().endswith(SUFFIXES):
            return None
    return read_layers


def read_layers(path: str | list[str]) -> list[tuple]:
    """``[(array, {"name", "scale", "metadata"}, "image")]`` per path; a multi-channel file
    keeps its channels on the first axis (``channel_axis`` 0)."""
    from ..data.files.formats import read_file

    layers = []
    for p in [path] if isinstance(path, (str, Path)) else path:
        p = Path(p)
        if p.is_file() and p.suffix.lower() == ".dcm":  # one slice: read its whole series
            p = p.parent
        array, meta = read_file(p)
        spacing = [float(s) for s in meta.get("spacing") or [1.0] * (array.ndim - 1)]
        name = p.name.split(".")[0] if p.is_file() else p.name
        kwargs: dict[str, Any] = {"name": name, "scale": spacing,
                                  "metadata": {"unetpp_path": str(p), "spacing": spacing}}
        if array.shape[0] == 1:
            layers.append((array[0], kwargs, "image"))
        else:
            layers.append((array, {**kwargs, "channel_axis": 0}, "image"))
    return layers
