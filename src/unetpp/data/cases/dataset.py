"""``SegDataset``: a checked dataset folder whose cases come out normalised and resampled.

    >>> ds = open_dataset("nuclei-2d")      # a fetched sample    # doctest: +SKIP
    >>> ds = open_dataset("Task03_Liver")   # any layout         # doctest: +SKIP
    >>> ds.layout, ds.spatial_dims, ds.channels, ds.classes, ds.modality   # doctest: +SKIP
    ('nnunet', 3, 1, 3, 'ct')
    >>> case = ds.load_case(ds.case_names[0])           # doctest: +SKIP
    >>> case.image.shape, case.image.dtype, case.label.shape              # doctest: +SKIP
    ((1, 75, 512, 512), dtype('float32'), (75, 512, 512))

Opening reads every case once (:func:`unetpp.data.cases.check.inspect`) and raises
:class:`~unetpp.errors.DataError` listing every problem; then the normalisation statistics
and the target spacing are planned from that pass. ``data_config()`` is the JSON that a
run stores, so ``read_input`` prepares new images exactly as training saw them.

Decoded, normalised cases are kept in an in-memory LRU cache (``cache_bytes``, 2 GiB by
default) so that epochs after the first do not decode files again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import DataError
from .check import Inspection, ignore_label, read_case, trained_labels
from .layouts import CaseFiles
from .orientation import canonical_spacing, reorientation, to_canonical
from .normalize import MODALITIES, apply_normalization, fit_channel, modality_of, scheme_for, use_nonzero_mask
from .resample import needs_resampling, new_shape, resize, target_spacing

DATA_CONFIG_VERSION = 1


@dataclass
class Case:
    """One case, ready for the network.

    ``image``: float32 (C, *spatial), normalised, at the dataset's target spacing.
    ``label``: int64 (*spatial), values 0..K-1 (binary: 0/1), or None (unlabelled).
    ``meta``: the file's geometry and what :func:`unetpp.data.io.write_mask` needs to write a
    prediction back onto the original grid (``format``, ``shape``, ``spacing``, ``affine``...).
    """

    name: str
    image: np.ndarray
    label: np.ndarray | None
    meta: dict[str, Any]


class SegDataset:
    """A dataset folder in one of the supported layouts. Use :func:`open_dataset`."""

    def __init__(self, inspection: Inspection, modality: str | None = None,
                 ct_window: Sequence[float] | None = None, cache_bytes: int = 2 * 2**30):
        ins = inspection
        self.root: Path = ins.scan.root
        self.layout: str = ins.scan.layout
        self.info: dict[str, Any] = ins.scan.info
        #: the labels as declared (masks may hold all of them: ``ignore`` included)
        self.declared_labels: dict[int, str] = dict(sorted(ins.labels.items()))
        #: nnU-Net v2's ``ignore`` label: left out of the loss and the scores
        self.ignore_label: int | None = ignore_label(self.declared_labels)
        self.labels: dict[int, str] = trained_labels(self.declared_labels)
        self.classes: int = 1 if len(self.labels) == 2 else len(self.labels)
        self._files: dict[str, CaseFiles] = {c.name: c for c in ins.scan.cases}
        self.case_names: list[str] = sorted(self._files)
        self.test_inputs: list[CaseFiles] = ins.scan.test_inputs
        self.fingerprints = ins.fingerprints
        first = self.fingerprints[self.case_names[0]]
        self.spatial_dims: int = first["spatial_dims"]
        self.channels: int = first["channels"]
        self.channel_names: list[str] = self._channel_names()
        if modality is not None and modality not in MODALITIES:
            raise DataError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")
        self._modality_override = modality
        self.modality: str = modality or self._modality(first)
        split = ins.scan.split
        self.default_split: dict[str, list[str]] | None = (
            {k: sorted(v) for k, v in split.items()} if split else None)
        self.target_spacing: list[float] | None = (
            target_spacing([fp["spacing"] for fp in self.fingerprints.values()])
            if self.spatial_dims == 3 else None)
        self.normalization = self._fit_normalization(ct_window)
        self._cache: OrderedDict[str, Case] = OrderedDict()
        self._cache_bytes = int(cache_bytes)

    # ------------------------------------------------------------------------- description
    def _declared_channels(self) -> dict[str, str] | None:
        """nnU-Net v2 ``channel_names`` or MSD ``modality``: ``{"0": "CT", ...}``."""
        names = self.info.get("channel_names") or self.info.get("modality")
        return names if isinstance(names, dict) else None

    def _channel_names(self) -> list[str]:
        names = self._declared_channels()
        if names is not None and len(names) == self.channels:
            return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]
        if self.channels == 3:
            return ["R", "G", "B"]
        return [f"channel{c}" for c in range(self.channels)]

    def _modality(self, first: dict[str, Any]) -> str:
        declared = self.info.get("modality")
        if isinstance(declared, str):            # ours / image folders: {"modality": "ct"}
            return modality_of(declared) if declared.lower() not in MODALITIES else declared.lower()
        if self._declared_channels() is not None:
            return modality_of(self.channel_names[0])
        if self.layout == "dsb2018":
            return "microscopy"
        return "rgb" if self.channels == 3 and first["dtype"] == "uint8" else "other"

    def _fit_normalization(self, ct_window: Sequence[float] | None) -> list[dict[str, Any]]:
        specs = []
        dtype = np.dtype(self.fingerprints[self.case_names[0]]["dtype"])
        dtype_max = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
        per_channel = self._declared_channels() is not None and self._modality_override is None
        for c, cname in enumerate(self.channel_names):
            # nnU-Net normalises each channel by its own declared modality (CT + MRI inputs)
            mod = modality_of(cname) if per_channel else self.modality
            scheme = scheme_for(mod, cname if per_channel else None)
            fg = None
            if scheme == "ct":
                fg = np.concatenate([fp["foreground"][c] for fp in self.fingerprints.values()])
            spec = fit_channel(scheme, foreground=fg, window=ct_window, dtype_max=dtype_max)
            if scheme == "zscore" and use_nonzero_mask([fp.get("nonzero_fraction", 1.0)
                                                        for fp in self.fingerprints.values()]):
                spec["nonzero"] = True  # a zero background: z-score inside the non-zero mask
            specs.append(spec)
        return specs

    def __len__(self) -> int:
        return len(self.case_names)

    def __repr__(self) -> str:
        return (f"SegDataset({str(self.root)!r}, layout={self.layout!r}, cases={len(self)}, "
                f"dims={self.spatial_dims}, channels={self.channels}, classes={self.classes}, "
                f"modality={self.modality!r})")

    def data_config(self) -> dict[str, Any]:
        """The JSON dict stored in ``RUN/config.json["data"]``: all that predict needs to
        prepare new inputs (layout, modality, channels, labels, normalisation with dataset
        statistics, target spacing) plus where the data came from."""
        return {
            "version": DATA_CONFIG_VERSION,
            "root": str(self.root),
            "layout": self.layout,
            "modality": self.modality,
            "spatial_dims": self.spatial_dims,
            "channels": self.channels,
            "channel_names": list(self.channel_names),
            "classes": self.classes,
            "labels": {str(k): v for k, v in self.labels.items()},
            "ignore_label": self.ignore_label,
            "normalization": [dict(s) for s in self.normalization],
            "target_spacing": self.target_spacing,
            "axes": "zyx" if self.spatial_dims == 3 else "yx",
            "cases": len(self.case_names),
        }

    # ------------------------------------------------------------------------- loading
    def case_shape(self, name: str) -> tuple[int, ...]:
        """Spatial shape of a case *after* resampling (without reading it)."""
        fp = self.fingerprints[name]
        if needs_resampling(fp["spacing"], self.target_spacing):
            return new_shape(fp["shape"], fp["spacing"], self.target_spacing)
        return tuple(fp["shape"])

    def load_case(self, name: str) -> Case:
        """Read (or take from the cache) one case: normalised float32 image, int64 label."""
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        if name not in self._files:
            raise DataError(f"{self.root}: no case named {name!r}")
        image, label, meta = read_case(self._files[name], self.declared_labels)
        image, label, meta = prepare(image, label, meta, self.data_config())
        case = Case(name, image, label, meta)
        self._remember(case)
        return case

    def native_label(self, name: str) -> np.ndarray:
        """The case's label map on its file's own grid (before resampling), int64."""
        return read_case(self._files[name], self.declared_labels)[1]

    def _remember(self, case: Case) -> None:
        size = case.image.nbytes + (case.label.nbytes if case.label is not None else 0)
        if size > self._cache_bytes:
            return
        self._cache[case.name] = case
        total = sum(c.image.nbytes + (c.label.nbytes if c.label is not None else 0) for c in self._cache.values())
        while total > self._cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            total -= old.image.nbytes + (old.label.nbytes if old.label is not None else 0)

    def preload(self, names: Sequence[str] | None = None) -> bool:
        """Decode cases into the cache now, before DataLoader workers fork (they then share
        the decoded arrays instead of each decoding every file). Does nothing, and returns
        False, when the cases would not fit in ``cache_bytes``."""
        names = list(names if names is not None else self.case_names)
        need = sum(int(np.prod(self.case_shape(n))) * (4 * self.channels + 8) for n in names)
        if need > self._cache_bytes:
            return False
        for n in names:
            self.load_case(n)
        return True


def prepare(image: np.ndarray, label: np.ndarray | None, meta: dict[str, Any],
            config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Reorient (volumes, to the canonical (S, A, R) order: :mod:`.orientation`), resample
    (to ``config["target_spacing"]``) and normalise a raw case.

    ``meta`` keeps the original ``shape``/``spacing``/``affine``; ``meta["orientation"]`` and
    ``meta["canonical_shape"]`` say how to undo the reorientation, and ``meta["grid_shape"]``
    is the shape the network sees, so :func:`unetpp.data.io.to_input_grid` and ``write_mask``
    can bring predictions back.
    """
    meta = dict(meta)
    spacing = list(meta["spacing"])
    if image.ndim == 4:
        r = reorientation(meta)
        if r is not None:
            image, label = to_canonical(image, r), to_canonical(label, r)
            spacing = canonical_spacing(spacing, r)
            meta["orientation"] = r
            meta["canonical_shape"] = list(image.shape[1:])
    target = config.get("target_spacing")
    shape = tuple(image.shape[1:])
    if image.ndim == 4 and needs_resampling(spacing, target):
        shape = new_shape(shape, spacing, target)
        _check_grid(meta, shape, image.shape[0], target)
        image = resize(image.astype(np.float32), shape, order=1)
        if label is not None:
            label = resize(label, shape, order=0)
        meta["grid_spacing"] = list(target)
    else:
        meta["grid_spacing"] = spacing
    meta["grid_shape"] = list(shape)
    meta["classes"] = int(config["classes"])
    image = apply_normalization(image, config["normalization"])
    label = None if label is None else np.ascontiguousarray(label, dtype=np.int64)
    return np.ascontiguousarray(image), label, meta


def _check_grid(meta: dict[str, Any], shape: Sequence[int], channels: int, target: Sequence[float]) -> None:
    """Refuse a resampled grid larger than the readers' limit (a tiny target spacing, or a
    file whose spacing is far from the training data's, would otherwise exhaust memory)."""
    from ..files.formats import max_voxels

    count = int(np.prod([int(n) for n in shape], dtype=np.float64)) * int(channels)
    if count > max_voxels():
        source = (meta.get("source") or ["image"])[0]
        raise DataError(f"{source}: resampling from spacing {list(meta['spacing'])} to the training spacing "
                        f"{list(target)} would give {tuple(shape)} voxels, more than the "
                        f"{max_voxels():,} allowed (UNETPP_MAX_VOXELS)")


def check_data_config(data: Any, *, channels: int | None = None, classes: int | None = None,
                      dims: int | None = None) -> list[str]:
    """Problems of a run's ``config.json["data"]`` (what :func:`unetpp.data.io.read_input` and
    ``write_mask`` trust): one line each; [] when usable.

    ``channels``/``classes``/``dims`` are the model's: the data config must agree with them.
    An empty section (a run made from arrays, not a dataset) is allowed.
    """
    if data is None or data == {}:
        return []
    if not isinstance(data, dict):
        return [f"\"data\" must be an object, got {type(data).__name__}"]
    p: list[str] = []

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))

    for key, want in (("channels", channels), ("classes", classes), ("spatial_dims", None)):
        if key not in data:
            continue
        v = data[key]
        if not is_int(v) or not 1 <= v <= 256:
            p.append(f"data.{key} must be an integer in 1..256, got {v!r}")
        elif want is not None and v != want:
            p.append(f"data.{key} is {v}, the model's is {want}")
    sd = data.get("spatial_dims")
    if "spatial_dims" in data and sd not in (2, 3):
        p.append(f"data.spatial_dims must be 2 or 3, got {sd!r}")
    elif dims == 3 and sd == 2:
        p.append("data.spatial_dims is 2 but the model is 3D")
    ts = data.get("target_spacing")
    if ts is not None:
        if (not isinstance(ts, list) or len(ts) != (sd if sd in (2, 3) else len(ts)) or not ts
                or not all(finite(x) and 1e-3 <= x <= 1e3 for x in ts)):
            p.append(f"data.target_spacing must be null or {sd or 'N'} numbers in [0.001, 1000] (mm), got {ts!r}")
    norm = data.get("normalization")
    if norm is not None:
        n = data.get("channels") if is_int(data.get("channels")) else channels
        if not isinstance(norm, list) or (n is not None and len(norm) != n):
            p.append(f"data.normalization must be a list of one spec per channel ({n}), got {norm!r}"[:300])
        else:
            for i, spec in enumerate(norm):
                why = _bad_norm_spec(spec)
                if why:
                    p.append(f"data.normalization[{i}]: {why}")
    labels = data.get("labels")
    if labels is not None and (not isinstance(labels, dict) or len(labels) > 257
                               or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        p.append("data.labels must be an object {\"0\": \"background\", ...} of at most 257 names")
    return p


def _bad_norm_spec(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return f"expected an object, got {type(spec).__name__}"
    scheme = spec.get("scheme")

    def num(key: str, positive: bool = False) -> bool:
        v = spec.get(key)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))
        return ok and (v > 0 if positive else True)

    if scheme == "ct":
        clip = spec.get("clip")
        if (not isinstance(clip, list) or len(clip) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in clip)
                or clip[0] > clip[1]):
            return f"ct needs \"clip\": [lo, hi] with lo <= hi, got {clip!r}"
        if not num("mean") or not num("std", positive=True):
            return "ct needs a finite \"mean\" and a \"std\" > 0"
    elif scheme == "scale":
        if not num("divide", positive=True):
            return f"scale needs \"divide\" > 0, got {spec.get('divide')!r}"
    elif scheme not in ("zscore", "none"):
        return f"unknown scheme {scheme!r} (ct, zscore, scale, none)"
    return None
