"""``unetpp data prepare``: fingerprint, plan and preprocess a dataset once; after that,
training reads it at the speed of the disk, whatever the dataset's size.

One pass over the data (in parallel processes) fingerprints every case (shape, spacing,
intensities under the foreground, label values), checks it as ``unetpp data check`` does,
plans the normalisation and target spacing (:class:`~unetpp.data.cases.dataset.SegDataset`'s
rules), then writes every case resampled and normalised to a cache:

    <cache>/plan-<options>/
      plan.json                 the plan (data config, cases with their grid shapes and
                                source files); written last: without it nothing is prepared
      fingerprints/<case>.json  one per case, with <case>.fg.npy (foreground intensities)
      cases/<case>.image.npy    float32 (or float16) (C, *grid), read by memory map
      cases/<case>.label.npy    uint8 (int16 above 255 classes), (*grid)
      cases/<case>.fg.npz       flat indices of up to 20,000 voxels per foreground class
      cases/<case>.json         written last for the case: its sources (size, mtime, SHA-256),
                                the plan digest it was made with, shapes, dtypes and CRC-32s

``<cache>`` is ``$UNETPP_CACHE/<folder>-<hash>`` when that variable is set, else ``.unetpp``
inside the dataset folder, else (read-only data) ``~/.cache/unetpp/prepared/<folder>-<hash>``.
``<options>`` hashes what changes the preprocessing beyond the data (modality override, CT
window, cache format), so a different plan never reads a stale cache; every case file also
records the digest of the plan it was made with (spacing, normalisation, labels, dtype), and a
case made with another digest is prepared again.

**The plan is decided once.** Adding cases later prepares only the new ones with the stored
plan (normalisation statistics and spacing are not re-derived, as nnU-Net's plans are read as
stored); ``--replan`` plans again from every case, and cases made with another plan are then
prepared again. A source file whose size changed, or whose mtime changed and whose SHA-256
differs, is prepared again. Every file is written atomically and a case's JSON marker last,
so a killed ``prepare`` continues where it stopped and never leaves a half-written case in
use. Two processes preparing the same dataset take turns (a file lock), so the second finds
the work done.

**Image dtype**: float32 by default, so a prepared case equals the decoded one exactly;
``--dtype float16`` halves the disk and page cache for a rounding error of at most 2**-11
relative on normalised intensities (measured side by side in ``benchmarks/data.py``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ...io import atomic_write_bytes, atomic_write_json, read_json
from ..cases.check import Inspection, _check_consistency, _check_declared_channels, declared_labels, fingerprint, read_case
from ..cases.layouts import CaseFiles, Scan, scan
from .sources import sources_unchanged, stat_sources, with_hashes

CACHE_FORMAT = 2  # 2: volumes reoriented to (S, A, R) before resampling
PLAN = "plan.json"
IMAGE_DTYPES = ("float16", "float32")
DEFAULT_IMAGE_DTYPE = "float32"
#: foreground voxel positions remembered per case and class (a seeded random subset)
FG_POSITIONS = 20_000


# ------------------------------------------------------------------------------ where
def cache_root(root: Path) -> Path:
    """Where the prepared copy of the dataset at ``root`` lives (see the module doc)."""
    root = Path(root).resolve()
    tag = f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:12]}"
    env = os.environ.get("UNETPP_CACHE")
    if env:
        return Path(env).expanduser() / tag
    if os.access(root, os.W_OK):
        return root / ".unetpp"
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "unetpp" / "prepared" / tag


def plan_dir(root: Path, modality: str | None = None, ct_window: Sequence[float] | None = None) -> Path:
    options = {"format": CACHE_FORMAT, "modality": modality,
               "ct_window": None if ct_window is None else [float(v) for v in ct_window]}
    return cache_root(root) / f"plan-{_digest(options)}"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def plan_digest(data_config: dict[str, Any], image_dtype: str) -> str:
    """What shapes a prepared case: spacing, normalisation, labels, channels, dtype, format."""
    keys = ("target_spacing", "normalization", "labels", "channels", "classes", "spatial_dims")
    return _digest({"format": CACHE_FORMAT, "dtype": image_dtype, **{k: data_config.get(k) for k in keys}})


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (released on any exit, also when the process dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(folder / ".lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ npy files
def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def crc32_of(array: np.ndarray) -> int:
    import zlib

    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def foreground_positions(label: np.ndarray, ignore: int | None = None) -> dict[int, np.ndarray]:
    """Per foreground class, the flat indices of up to :data:`FG_POSITIONS` of its voxels (a
    seeded subset, so every process and the cache draw the same). The loader centres a third
    of its patches on these."""
    rng = np.random.default_rng(0)
    per_class = {}
    for k in np.unique(label).tolist():
        if k == 0 or k == ignore:  # background and nnU-Net's ignore label are not foreground
            continue
        idx = np.flatnonzero(label == k)
        if idx.size > FG_POSITIONS:
            idx = np.sort(rng.choice(idx, FG_POSITIONS, replace=False))
        per_class[int(k)] = idx
    return per_class


def _write(path: Path, data: bytes) -> None:
    """Atomic write; a full disk or a read-only folder is one line naming the folder."""
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}[e.errno]
            raise DataError(f"{path.parent}: cannot write the prepared dataset ({why}); free space, or set "
                            "UNETPP_CACHE to a writable folder") from None
        raise


# ------------------------------------------------------------------------------ per case work
def fingerprint_case(case: CaseFiles, labels: dict[int, str], folder: str) -> dict[str, Any]:
    """Read one case, fingerprint it, store the fingerprint; ``{"name", "problems"}``."""
    try:
        sources = with_hashes(stat_sources(case))
        image, label, meta = read_case(case, labels)
    except DataError as e:
        return {"name": case.name, "problems": e.problems}
    except OSError as e:
        return {"name": case.name, "problems": [f"{case.images[0]}: {e.strerror or e}"]}
    fp = fingerprint(image, label, meta)
    fg = fp.pop("foreground")
    out = Path(folder) / "fingerprints"
    _write(out / f"{case.name}.fg.npy", npy_bytes(np.stack(fg) if fg else np.zeros((0, 0), np.float32)))
    _write(out / f"{case.name}.json", json.dumps({"fingerprint": fp, "sources": sources}).encode())
    return {"name": case.name, "problems": []}


def preprocess_case(case: CaseFiles, labels: dict[int, str], data_config: dict[str, Any], image_dtype: str,
                    digest: str, folder: str, sources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Read, resample, normalise and store one case; ``{"name", "problems"}``. ``sources``:
    the case's files as its fingerprint recorded them (hashed), so they are not read again."""
    from ..cases.dataset import prepare

    try:
        now = stat_sources(case)
        # the hashes of files found unchanged (by sources_unchanged) carry over with today's stat
        sources = [dict(n, sha256=o["sha256"]) for n, o in zip(now, sources)] if sources else with_hashes(now)
        image, label, meta = read_case(case, labels)
        image, label, meta = prepare(image, label, meta, data_config)
    except DataError as e:
        return {"name": case.name, "problems": e.problems}
    except OSError as e:
        return {"name": case.name, "problems": [f"{case.images[0]}: {e.strerror or e}"]}
    out = Path(folder) / "cases"
    image = image.astype(image_dtype)
    entry: dict[str, Any] = {"sources": sources, "plan": digest, "meta": _jsonable_meta(meta),
                             "image": {"shape": list(image.shape), "dtype": image_dtype, "crc32": crc32_of(image)}}
    _write(out / f"{case.name}.image.npy", npy_bytes(image))
    entry["image"].update(_stamp(out / f"{case.name}.image.npy"))
    if label is not None:
        label = label.astype(np.uint8 if int(data_config["classes"]) <= 255 else np.int16)
        entry["label"] = {"shape": list(label.shape), "dtype": str(label.dtype), "crc32": crc32_of(label)}
        _write(out / f"{case.name}.label.npy", npy_bytes(label))
        entry["label"].update(_stamp(out / f"{case.name}.label.npy"))
        fg = foreground_positions(label, data_config.get("ignore_label"))
        import io

        buf = io.BytesIO()
        np.savez(buf, **{f"c{k}": v for k, v in fg.items()})
        _write(out / f"{case.name}.fg.npz", buf.getvalue())
    _write(out / f"{case.name}.json", json.dumps(entry).encode())  # the marker: last
    return {"name": case.name, "problems": []}


def _stamp(path: Path) -> dict[str, int]:
    """Size and mtime of a written file: while both are unchanged, the file is the one whose
    CRC-32 the marker holds (reading it is then unnecessary)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _jsonable_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(meta, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def run_tasks(fn: Callable[..., dict[str, Any]], tasks: list[tuple[Any, ...]], workers: int,
              progress: Callable[[int, int, str], None] | None = None) -> list[dict[str, Any]]:
    """``fn(*task)`` for every task, in ``workers`` spawned processes (inline for 1)."""
    results: list[dict[str, Any]] = []
    if workers <= 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks, 1):
            results.append(fn(*task))
            if progress:
                progress(i, len(tasks), results[-1]["name"])
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawned: a forked child of a process that has used torch's thread pool can hang
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *task) for task in tasks]
        for i, fut in enumerate(as_completed(futures), 1):
            results.append(fut.result())
            if progress:
                progress(i, len(tasks), results[-1]["name"])
    return results


# ------------------------------------------------------------------------------ prepare
def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path)
    except Exception:  # noqa: BLE001 - a damaged marker means: prepare the case again
        return None
    return data if isinstance(data, dict) else None


def prepare_dataset(path: str | os.PathLike, workers: int = 1, modality: str | None = None,
                    ct_window: Sequence[float] | None = None, image_dtype: str | None = None,
                    replan: bool = False, progress: Callable[[int, int, str], None] | None = None,
                    log: Callable[[str], None] | None = None) -> Path:
    """Prepare the dataset at ``path`` (see the module doc); return its plan folder.

    ``image_dtype`` None keeps the dtype of an existing plan (float32 for a new one).

    Raises:
        DataError: every problem of every case (one line each); no plan is written then, so
            nothing trains on a half-prepared dataset.
    """
    from ..samples.catalog import resolve

    if image_dtype is not None and image_dtype not in IMAGE_DTYPES:
        raise DataError(f"--dtype must be one of {', '.join(IMAGE_DTYPES)}, got {image_dtype!r}")
    root = resolve(path)
    sc = scan(root)
    problems = list(sc.problems)
    labels = declared_labels(sc, problems) if sc.layout else {}
    if not sc.layout:
        raise DataError(problems or [f"{root}: no dataset layout recognised"])
    folder = plan_dir(root, modality, ct_window)
    with locked(folder):
        return _prepare_locked(sc, labels, problems, folder, workers, modality, ct_window, image_dtype, replan,
                               progress, log or (lambda _: None))


def _in_case_order(results: list[dict[str, Any]], sc: Scan) -> list[str]:
    """Every problem of ``results`` (finished in any order), in the order of the cases."""
    order = {c.name: i for i, c in enumerate(sc.cases)}
    return [p for r in sorted(results, key=lambda r: order[r["name"]]) for p in r["problems"]]


def _prepare_locked(sc: Scan, labels: dict[int, str], problems: list[str], folder: Path, workers: int,
                    modality: str | None, ct_window: Sequence[float] | None, image_dtype: str, replan: bool,
                    progress: Callable[[int, int, str], None] | None, log: Callable[[str], None]) -> Path:
    from ..cases.dataset import SegDataset

    previous = _read_marker(folder / PLAN)
    image_dtype = image_dtype or (previous or {}).get("image_dtype") or DEFAULT_IMAGE_DTYPE
    plan = None if replan else previous
    cases = {c.name: c for c in sc.cases}
    # 1. fingerprints: new or changed cases only; every problem is reported, as 'data check' does
    stale = [c for c in sc.cases
             if not sources_unchanged((_read_marker(folder / "fingerprints" / f"{c.name}.json") or {}).get("sources"), c)]
    if stale:
        log(f"{sc.root}: fingerprinting {len(stale)} of {len(cases)} case(s)"
            + (f" with {workers} workers" if workers > 1 else ""))
        results = run_tasks(fingerprint_case, [(c, labels, str(folder)) for c in stale], workers, progress)
        problems += _in_case_order(results, sc)
        failed = {r["name"] for r in results if r["problems"]}
        cases = {n: c for n, c in cases.items() if n not in failed}
    if problems:
        raise DataError(problems)
    fingerprints, hashed = {}, {}
    for name in cases:
        stored = _read_marker(folder / "fingerprints" / f"{name}.json")
        if stored is None:
            raise DataError(f"{folder}/fingerprints/{name}.json: unreadable; run 'unetpp data prepare' again")
        hashed[name] = stored["sources"]  # checked unchanged above: its hashes serve step 3 too
        fp = dict(stored["fingerprint"])
        fg = np.load(folder / "fingerprints" / f"{name}.fg.npy", allow_pickle=False)
        fp["foreground"] = list(fg) if fg.size else [np.zeros(0, np.float32)] * fp["channels"]
        fingerprints[name] = fp
    ins = Inspection(sc, labels, fingerprints, [])
    _check_declared_channels(ins)
    _check_consistency(ins)
    if ins.problems:
        raise DataError(ins.problems)
    # 2. the plan: decided once (or again with --replan)
    planned = SegDataset(ins, modality=modality, ct_window=ct_window)
    data_config = plan["data_config"] if plan else planned.data_config()
    data_config = dict(data_config, cases=len(cases), root=str(sc.root))
    digest = plan_digest(data_config, image_dtype)
    # 3. preprocess: cases without a valid marker for this plan and these sources
    todo = []
    for name, case in cases.items():
        marker = _read_marker(folder / "cases" / f"{name}.json")
        if not (marker and marker.get("plan") == digest and sources_unchanged(marker.get("sources"), case)
                and (folder / "cases" / f"{name}.image.npy").is_file()):
            todo.append(case)
    if todo:
        log(f"{sc.root}: preparing {len(todo)} of {len(cases)} case(s) into {folder}")
        results = run_tasks(preprocess_case, [(c, labels, data_config, image_dtype, digest, str(folder),
                                               hashed[c.name]) for c in todo], workers, progress)
        if any(r["problems"] for r in results):
            raise DataError(_in_case_order(results, sc))
    entries = {}
    for name in sorted(cases):
        marker = _read_marker(folder / "cases" / f"{name}.json") or {}
        fp = fingerprints[name]
        entries[name] = {"grid_shape": marker["image"]["shape"][1:], "shape": fp["shape"], "spacing": fp["spacing"],
                         "source": fp["source"], "channels": fp["channels"], "spatial_dims": fp["spatial_dims"],
                         "dtype": fp["dtype"], "label_values": fp.get("label_values", []),
                         "labelled": "label" in marker, "sources": marker["sources"]}
    # 4. plan.json last: it is what makes the folder a prepared dataset
    atomic_write_json(folder / PLAN, {
        "format": "unetpp-prepared", "format_version": CACHE_FORMAT, "digest": digest, "image_dtype": image_dtype,
        "options": {"modality": modality, "ct_window": None if ct_window is None else list(ct_window)},
        "data_config": data_config, "layout": sc.layout, "info": sc.info,
        "labels": {str(k): v for k, v in labels.items()},
        "default_split": planned.default_split, "channel_names": planned.channel_names,
        "modality": data_config.get("modality", planned.modality), "cases": entries})
    return folder


def is_prepared(sc: Scan, folder: Path) -> dict[str, Any] | None:
    """The plan of ``folder`` if it covers exactly the cases of ``sc``, with unchanged source
    files (sizes and mtimes; a hash only for a touched file); else None. Cheap: one JSON
    file and a stat per source file, no image decoded."""
    plan = _read_marker(folder / PLAN)
    if not plan or plan.get("format") != "unetpp-prepared" or plan.get("format_version") != CACHE_FORMAT:
        return None
    entries = plan.get("cases") or {}
    if set(entries) != {c.name for c in sc.cases}:
        return None
    if not all(sources_unchanged(entries[c.name].get("sources"), c) for c in sc.cases):
        return None
    return plan


def auto_workers(cases: int) -> int:
    """Worker processes for a prepare nobody sized: the cores (at most 8), or 1 for a few
    cases, where starting processes costs more than it saves."""
    return 1 if cases < 8 else max(1, min(8, os.cpu_count() or 1))


__all__ = ["CACHE_FORMAT", "DEFAULT_IMAGE_DTYPE", "IMAGE_DTYPES", "PLAN", "cache_root", "foreground_positions",
           "auto_workers", "is_prepared", "locked", "plan_dir", "prepare_dataset", "sources_unchanged"]
