"""A prepared dataset (:mod:`unetpp.data.planning.prepare`), read by memory map.

:class:`PreparedDataset` has :class:`~unetpp.data.cases.dataset.SegDataset`'s interface, so the
loader, validation, evaluate and prune use either without knowing which. Opening it reads
``plan.json`` and lists the folder (no image is decoded); ``load_case`` returns memory maps,
so the loader reads only the patch it crops, and every process shares the operating system's
page cache instead of holding decoded cases.

**Damaged files.** The first time a process uses a case, its files are checked against the
case's marker: shape and dtype always, and the CRC-32 whenever the file's size or mtime
differs from when it was written (so an untouched cache costs a stat, not a read); a file
that fails is named on stderr and the case is prepared again from its sources before it is
used: a damaged cache is never trained on.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import DataError
from ...io import read_json
from ..cases.check import ignore_label, trained_labels
from ..cases.dataset import Case
from ..cases.layouts import Scan
from .prepare import PLAN, crc32_of, locked, preprocess_case


#: memory maps kept open per process (least recently used dropped)
OPEN_MAPS = 8


class PreparedDataset:
    """A dataset prepared into ``folder`` (a plan folder of :func:`prepare_dataset`)."""

    prepared = True

    def __init__(self, sc: Scan, folder: Path, plan: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.plan = plan if plan is not None else read_json(self.folder / PLAN)
        self._scan = sc
        self.root: Path = sc.root
        self.layout: str = self.plan["layout"]
        self.info: dict[str, Any] = sc.info
        #: as declared (masks may hold ``ignore``); ``labels`` are the classes a network predicts
        self.declared_labels: dict[int, str] = {int(k): v for k, v in self.plan["labels"].items()}
        self.labels: dict[int, str] = trained_labels(self.declared_labels)
        self.ignore_label: int | None = ignore_label(self.declared_labels)
        self._config: dict[str, Any] = self.plan["data_config"]
        self.classes: int = int(self._config["classes"])
        self._files = {c.name: c for c in sc.cases}
        self.fingerprints: dict[str, dict[str, Any]] = self.plan["cases"]
        self.case_names: list[str] = sorted(self.fingerprints)
        self.test_inputs = sc.test_inputs
        self.spatial_dims: int = int(self._config["spatial_dims"])
        self.channels: int = int(self._config["channels"])
        self.channel_names: list[str] = list(self.plan.get("channel_names") or self._config.get("channel_names", []))
        self.modality: str = self._config["modality"]
        self.default_split = self.plan.get("default_split")
        self.target_spacing = self._config.get("target_spacing")
        self.normalization = self._config["normalization"]
        self.image_dtype: str = self.plan["image_dtype"]
        self._markers: dict[str, dict[str, Any]] = {}
        self._maps: OrderedDict[str, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.case_names)

    def __repr__(self) -> str:
        return (f"PreparedDataset({str(self.root)!r}, layout={self.layout!r}, cases={len(self)}, "
                f"dims={self.spatial_dims}, channels={self.channels}, classes={self.classes}, "
                f"modality={self.modality!r}, cache={str(self.folder)!r})")

    def data_config(self) -> dict[str, Any]:
        """As :meth:`SegDataset.data_config`: the plan's (what a run stores)."""
        return dict(self._config)

    def case_shape(self, name: str) -> tuple[int, ...]:
        """Spatial shape of a case on the network's grid."""
        return tuple(self.fingerprints[name]["grid_shape"])

    def _path(self, name: str, kind: str) -> Path:
        return self.folder / "cases" / f"{name}.{kind}"

    def _check(self, name: str) -> tuple[dict[str, Any], list[str]]:
        """The case's marker and the problems of its files (shape, dtype, size, CRC-32)."""
        marker = read_json(self._path(name, "json"))
        problems = []
        for kind in ("image", "label"):
            want = marker.get(kind)
            if want is None:
                continue
            path = self._path(name, f"{kind}.npy")
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                problems.append(f"{path}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
                continue
            st = os.stat(path)
            if list(array.shape) != want["shape"] or str(array.dtype) != want["dtype"]:
                problems.append(f"{path}: {array.dtype} {list(array.shape)}, the marker says "
                                f"{want['dtype']} {want['shape']}")
            elif (st.st_size, st.st_mtime_ns) == (want.get("size"), want.get("mtime_ns")):
                continue  # untouched since it was written and checksummed: not read again
            elif crc32_of(array) != want["crc32"]:
                problems.append(f"{path}: checksum mismatch (the file changed after it was prepared)")
        return marker, problems

    def _verify(self, name: str) -> dict[str, Any]:
        """Check a case once per process; a damaged one is prepared again first."""
        try:
            marker, problems = self._check(name)
        except (OSError, ValueError) as e:
            marker, problems = {}, [f"{self._path(name, 'json')}: unreadable ({type(e).__name__})"]
        if problems:
            from ...console import log

            for p in problems:
                log(f"{p}; preparing {name} again")
            with locked(self.folder):
                result = preprocess_case(self._files[name], self.declared_labels, self._config, self.image_dtype,
                                         self.plan["digest"], str(self.folder))
            if result["problems"]:
                raise DataError(result["problems"])
            marker, problems = self._check(name)
            if problems:
                raise DataError(problems)
        self._markers[name] = marker
        return marker

    def arrays(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image, label)`` as memory maps: image (C, *grid) float16/float32, label (*grid)
        uint8/int16 (None when unlabelled). Reading a window reads only its pages."""
        if name not in self.fingerprints:
            raise DataError(f"{self.root}: no case named {name!r}")
        if name in self._maps:
            self._maps.move_to_end(name)
            return self._maps[name]
        marker = self._markers.get(name) or self._verify(name)
        image = np.load(self._path(name, "image.npy"), mmap_mode="r", allow_pickle=False)
        label = (np.load(self._path(name, "label.npy"), mmap_mode="r", allow_pickle=False)
                 if "label" in marker else None)
        # a few maps stay open (opening costs more than a small patch); dropping the rest
        # unmaps their pages, so the process's memory does not grow with the dataset
        self._maps[name] = (image, label)
        while len(self._maps) > OPEN_MAPS:
            self._maps.popitem(last=False)
        return image, label

    def load_case(self, name: str) -> Case:
        """The whole case as the :class:`Case` contract says: float32 image, int64 label."""
        image, label = self.arrays(name)
        return Case(name, np.array(image, dtype=np.float32), None if label is None else
                    np.array(label, dtype=np.int64), dict(self._markers[name]["meta"]))

    def native_label(self, name: str) -> np.ndarray:
        """The case's label map on its file's own grid (read from the source), int64."""
        from ..cases.check import read_case

        return read_case(self._files[name], self.declared_labels)[1]

    def foreground_positions(self, name: str) -> dict[int, np.ndarray]:
        """Per class, stored flat indices of its voxels (:func:`prepare.foreground_positions`)."""
        path = self._path(name, "fg.npz")
        if not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as z:
            return {int(k[1:]): z[k] for k in z.files}

    def preload(self, names: Sequence[str] | None = None) -> bool:
        """Nothing to do: worker processes share the memory maps through the page cache."""
        return True


__all__ = ["PreparedDataset"]
