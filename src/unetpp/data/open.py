"""Opening a dataset: a folder in any layout, or a fetched sample's name, read from its
prepared copy (:mod:`unetpp.data.planning.prepare`) or decoded file by file (``prepared=False``).

    >>> ds = open_dataset("nuclei-2d")      # a fetched sample    # doctest: +SKIP
    >>> ds = open_dataset("Task03_Liver")   # any layout         # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from .cases.check import inspect
from .cases.dataset import SegDataset
from .samples.catalog import resolve


def open_dataset(path_or_name: str | os.PathLike, modality: str | None = None,
                 ct_window: Sequence[float] | None = None, cache_bytes: int = 2 * 2**30,
                 prepared: bool | None = None, workers: int | None = None) -> Any:
    """Open and check a dataset folder (any supported layout) or a fetched sample's name.

    By default the dataset is read from its prepared copy (:mod:`unetpp.data.planning.prepare`):
    opening a prepared dataset reads ``plan.json`` and stats the source files, no image is
    decoded; an unprepared (or changed) one is prepared first, saying so. The result
    (:class:`~unetpp.data.planning.prepared.PreparedDataset`) has :class:`SegDataset`'s interface.

    Args:
        path_or_name: a folder, or a sample name such as ``"nuclei-2d"``.
        modality: override the detected modality (``ct``, ``mri``, ``microscopy``, ``rgb``,
            ``other``), which selects the normalisation.
        ct_window: a fixed CT clip window ``(lo, hi)`` in HU instead of the dataset's
            foreground 0.5/99.5 percentiles.
        cache_bytes: memory for decoded cases (unprepared reading only).
        prepared: False reads and decodes the files every time (the old way, kept for
            comparison); None/True use the prepared copy. ``UNETPP_PREPARE=0`` sets False.
        workers: processes for preparing (default: the cores, or 1 for a few cases).

    Raises:
        DataError: one line per problem found in the dataset (see :mod:`unetpp.data.cases.check`).
    """
    root = resolve(path_or_name)
    if prepared is None:
        prepared = os.environ.get("UNETPP_PREPARE", "1").strip().lower() not in ("0", "false", "no")
    if prepared:
        return open_prepared(root, modality, ct_window, workers)
    ins = inspect(root)
    if ins.problems:
        raise DataError(ins.problems)
    if not ins.fingerprints:
        raise DataError(f"{ins.scan.root}: no usable cases")
    return SegDataset(ins, modality=modality, ct_window=ct_window, cache_bytes=cache_bytes)


def open_prepared(root: Path, modality: str | None = None, ct_window: Sequence[float] | None = None,
                  workers: int | None = None) -> Any:
    """The prepared copy of ``root``, preparing it first when missing or out of date."""
    from ..console import Progress, log
    from .cases.layouts import scan
    from .planning.prepare import auto_workers, is_prepared, plan_dir, prepare_dataset
    from .planning.prepared import PreparedDataset

    sc = scan(root)
    folder = plan_dir(root, modality, ct_window)
    plan = is_prepared(sc, folder) if sc.layout and not sc.problems else None
    if plan is None:
        # progress lines are held back until the data passed its checks, so that a bad
        # dataset prints its problems alone (one line each)
        lines: list[str] = []
        started = time.perf_counter()
        with Progress("auto") as bar:
            def step(done: int, total: int, name: str) -> None:
                if done == 1:
                    bar.start(f"preparing {root.name}", total, 0)
                bar.advance(name)

            prepare_dataset(root, workers=workers or auto_workers(len(sc.cases)), modality=modality,
                            ct_window=ct_window, progress=step, log=lines.append)
        for line in lines:
            log(line)
        log(f"{root}: prepared once in {time.perf_counter() - started:.1f} s; later runs read {folder} "
            "('unetpp data prepare' does this ahead)")
        sc = scan(root)
        plan = is_prepared(sc, folder)
        if plan is None:
            raise DataError(f"{folder}: the dataset changed while it was being prepared; run again")
    return PreparedDataset(sc, folder, plan)
