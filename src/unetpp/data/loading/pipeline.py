"""Per-case splits and the training loader (patches or slices, seeded per epoch).

    >>> split = make_split(ds, val_fraction=0.2, seed=0)        # doctest: +SKIP
    >>> loader = make_train_loader(ds, split["train"], dims=2, patch_size=(128, 128),
    ...                            batch_size=8, seed=0)         # doctest: +SKIP
    >>> loader.set_epoch(3)                                      # doctest: +SKIP
    >>> image, label = next(iter(loader))   # (8, C, 128, 128) float32, (8, 128, 128) int64  # doctest: +SKIP

**Splits** are made per case, never per patch, so no case is both trained and validated on.
A dataset's own split (``splits.json``, e.g. the spatially held-out tiles of ``nuclei-2d``)
is used unless k folds are asked for.

**Sampling** follows nnU-Net: an epoch is a fixed number of random patches
(``samples_per_epoch``; by default about enough to cover every training voxel once), cases are
visited in a shuffled round-robin so each is seen equally often, and a third of the patches
are centred on a foreground voxel of a randomly chosen class (small structures would
otherwise hardly ever be seen). With ``dims=2`` on a volume, patches are 2D slices along the
first spatial axis (axial for CT/MRI read from NIfTI).

**Determinism**: everything about sample ``i`` of epoch ``e`` (its case, slice, position and
augmentation) is drawn from ``numpy.random.default_rng([seed, e, i])``, so an epoch's batches
are identical whether the run was resumed or not, and whatever ``num_workers`` is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import augment as augment_patch
from .augment import context_size
from ..cases.dataset import SegDataset
from ..planning.prepare import foreground_positions

#: Fraction of patches forced to contain foreground (nnU-Net: 0.33).
FOREGROUND_FRACTION = 1 / 3


# ----------------------------------------------------------------------------------- splits

def make_split(ds: SegDataset, val_fraction: float = 0.2, folds: int | None = None,
               fold: int | None = None, seed: int = 0, use_default: bool = True) -> dict[str, list[str]]:
    """Split the cases of ``ds`` into ``{"train": [...], "val": [...], "test": [...]}``.

    - ``ds.default_split`` (the dataset's ``splits.json``) is returned as it is when
      ``use_default`` and no ``folds`` are asked for.
    - ``folds=k, fold=j``: the non-test cases in a seeded order, cut into k near-equal folds;
      fold j is validation, the rest training (j in 0..k-1).
    - otherwise: a seeded ``val_fraction`` of the non-test cases (at least 1 when there are 2
      or more cases; none with a single case).

    The result depends only on the case names, ``seed``, ``val_fraction``/``folds``/``fold``;
    lists are sorted. Test cases (from ``splits.json``) never enter train or val.

    A dataset folder holding nnU-Net's ``splits_final.json`` (``[{"train": [...], "val":
    [...]}, ...]``) has its folds taken from there, so folds can be the same as an nnU-Net
    run's (``folds`` must then equal its length).
    """
    if folds is not None and fold is not None:
        given = nnunet_splits(ds)
        if given is not None:
            if folds != len(given):
                raise ValueError(f"{ds.root}/splits_final.json holds {len(given)} folds; --folds is {folds}")
            test = sorted((ds.default_split or {}).get("test", []))
            return {"train": sorted(given[fold]["train"]), "val": sorted(given[fold]["val"]), "test": test}
    default = ds.default_split
    if default is not None and use_default and folds is None:
        return {"train": list(default["train"]), "val": list(default.get("val", [])),
                "test": list(default.get("test", []))}
    test = sorted(default.get("test", [])) if default is not None else []
    pool = sorted(set(ds.case_names) - set(test))
    order = [pool[i] for i in np.random.default_rng([seed, 0x5B1]).permutation(len(pool))]
    if folds is not None:
        if folds < 2 or folds > len(pool):
            raise ValueError(f"folds must be in 2..{len(pool)} (the number of cases), got {folds}")
        if fold is None or not 0 <= fold < folds:
            raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
        val = order[fold::folds]
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n_val = int(round(val_fraction * len(pool)))
        if val_fraction > 0 and len(pool) >= 2:
            n_val = min(max(n_val, 1), len(pool) - 1)
        val = order[:n_val]
    return {"train": sorted(set(pool) - set(val)), "val": sorted(val), "test": test}


def nnunet_splits(ds: SegDataset) -> list[dict[str, list[str]]] | None:
    """``DATA/splits_final.json`` (nnU-Net's folds), checked against the cases; or None."""
    import json

    path = Path(ds.root) / "splits_final.json"
    if not path.is_file():
        return None
    try:
        folds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    known = set(ds.case_names)
    if not isinstance(folds, list) or not folds or not all(
            isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list) for f in folds):
        raise ValueError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}} (nnU-Net's format)")
    unknown = sorted({n for f in folds for n in f["train"] + f["val"]} - known)
    if unknown:
        raise ValueError(f"{path}: cases not in the dataset: {', '.join(unknown[:5])}")
    return folds


def cross_validation_splits(ds: SegDataset, folds: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """Every fold's ``{"train", "val"}``: nnU-Net's ``splits_final.json`` if the dataset has
    one, else :func:`make_split`'s seeded folds. Each non-test case is in exactly one ``val``."""
    given = nnunet_splits(ds)
    if given is not None:
        return [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in given]
    return [{k: v for k, v in make_split(ds, folds=folds, fold=k, seed=seed).items() if k != "test"}
            for k in range(folds)]


# ----------------------------------------------------------------------------------- patches

def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """``array[..., start:start+size]`` over the trailing axes, padding with ``fill`` where the
    window leaves the array (patches larger than the image, windows at the border)."""
    lead = array.ndim - len(size)
    out = np.full(array.shape[:lead] + tuple(size), fill, dtype=array.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for s, n, dim in zip(start, size, array.shape[lead:]):
        a, b = max(s, 0), min(s + n, dim)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


class _Patches(Dataset):
    """Sample ``(epoch, i)`` -> one (image, label) patch, a pure function of its index."""

    def __init__(self, ds: SegDataset, cases: list[str], dims: int, patch_size: tuple[int, ...],
                 seed: int, augment: bool, samples: int, foreground_fraction: float):
        self.ds, self.cases, self.dims, self.patch = ds, cases, dims, patch_size
        self.seed, self.augment, self.samples, self.fg_fraction = seed, augment, samples, foreground_fraction
        self._order: tuple[int, np.ndarray] | None = None
        self._fg: dict[str, dict[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.samples

    def case_order(self, epoch: int) -> np.ndarray:
        """Shuffled round-robin over the cases: each is used equally often in an epoch."""
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 0xCA5E])
            reps = math.ceil(self.samples / len(self.cases))
            order = np.concatenate([rng.permutation(len(self.cases)) for _ in range(reps)])
            self._order = (epoch, order[: self.samples])
        return self._order[1]

    def foreground(self, name: str, label: np.ndarray) -> dict[int, np.ndarray]:
        """Per class, flat indices of (up to FG_POSITIONS) voxels of that class: stored by a
        prepared dataset, else computed once per case (the same seeded subset)."""
        if name not in self._fg:
            stored = getattr(self.ds, "foreground_positions", None)
            self._fg[name] = stored(name) if stored is not None else foreground_positions(
                label, getattr(self.ds, "ignore_label", None))
        return self._fg[name]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = key
        rng = np.random.default_rng([self.seed, epoch, i])
        name = self.cases[int(self.case_order(epoch)[i])]
        if hasattr(self.ds, "arrays"):  # prepared: memory maps, only the patch is read
            image, label = self.ds.arrays(name)
        else:
            case = self.ds.load_case(name)
            image, label = case.image, case.label
        shape = label.shape
        centre = None
        if rng.random() < self.fg_fraction:
            fg = self.foreground(name, label)
            if fg:
                cls = sorted(fg)[int(rng.integers(len(fg)))]
                centre = np.unravel_index(int(fg[cls][rng.integers(fg[cls].size)]), shape)
        slice_dims = len(shape) - self.dims  # 1 when 2D patches come from a volume
        if slice_dims:
            z = int(centre[0]) if centre is not None else int(rng.integers(shape[0]))
            image, label = image[:, z], label[z]
            centre = None if centre is None else centre[1:]
            shape = label.shape
        # patch start: the foreground voxel at a random place inside the patch, or anywhere
        start = []
        for d, (n, p) in enumerate(zip(shape, self.patch)):
            lo, hi = min(0, n - p), max(0, n - p)
            if centre is not None:
                s = int(centre[d]) - int(rng.integers(p))
                start.append(int(np.clip(s, lo, hi)))
            else:
                start.append(int(rng.integers(lo, hi + 1)))
        if self.augment:
            window = context_size(self.patch)
            wstart = [s - (w - p) // 2 for s, w, p in zip(start, window, self.patch)]
            img = crop(image, wstart, window).astype(np.float32, copy=False)
            lab = crop(label, wstart, window).astype(np.int64, copy=False)
            img, lab = augment_patch(img, lab, self.patch, seed=int(rng.integers(2**32)))
        else:
            img, lab = crop(image, start, self.patch), crop(label, start, self.patch)
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)), torch.from_numpy(
            np.ascontiguousarray(lab, dtype=np.int64))


class _EpochSampler(Sampler):
    """Yields ``(epoch, i)`` for i in 0..n-1; the epoch is read when iteration starts."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, i) for i in range(self.n)])

    def __len__(self) -> int:
        return self.n


class TrainLoader:
    """An iterable of ``(image, label)`` batches: float32 (B, C, *patch), int64 (B, *patch).

    ``len(loader)`` batches per epoch, all full. Call :meth:`set_epoch` before iterating.
    """

    def __init__(self, ds: SegDataset, cases: Sequence[str], dims: int, patch_size: Sequence[int],
                 batch_size: int, seed: int, augment: bool, num_workers: int,
                 samples_per_epoch: int | None, foreground_fraction: float = FOREGROUND_FRACTION):
        cases = sorted(cases)
        if not cases:
            raise ValueError("no training cases")
        unknown = [c for c in cases if c not in ds.fingerprints]
        if unknown:
            raise ValueError(f"cases not in {ds.root}: {', '.join(unknown[:5])}")
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if dims > ds.spatial_dims:
            raise ValueError(f"dims={dims} patches need {dims}D data; {ds.root} holds {ds.spatial_dims}D images")
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != dims or min(patch) < 1:
            raise ValueError(f"patch_size must have {dims} positive sizes, got {tuple(patch_size)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if samples_per_epoch is None:
            samples_per_epoch = default_samples_per_epoch(ds, cases, patch)
        samples = max(batch_size, math.ceil(samples_per_epoch / batch_size) * batch_size)
        self.ds, self.cases, self.dims, self.patch_size = ds, cases, dims, patch
        self.batch_size, self.seed, self.samples_per_epoch = batch_size, seed, samples
        self.epoch = 0
        if num_workers > 0:
            ds.preload(cases)  # decode once here; forked workers share the cache
        self._source = _Patches(ds, cases, dims, patch, seed, augment, samples, foreground_fraction)
        self._sampler = _EpochSampler(samples)
        self._loader = DataLoader(self._source, batch_size=batch_size, sampler=self._sampler,
                                  num_workers=num_workers, persistent_workers=num_workers > 0,
                                  drop_last=True, pin_memory=torch.cuda.is_available())

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s samples (call before iterating)."""
        self.epoch = int(epoch)
        self._sampler.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._loader)


def default_samples_per_epoch(ds: SegDataset, cases: Sequence[str], patch: Sequence[int]) -> int:
    """Patches that would tile every training case once (at least one per case)."""
    total = 0
    for name in cases:
        shape = ds.case_shape(name)
        voxels = int(np.prod(shape))
        total += max(1, math.ceil(voxels / int(np.prod(patch))))
    return total


def make_train_loader(ds: SegDataset, cases: Sequence[str], dims: int = 2,
                      patch_size: Sequence[int] = (128, 128), batch_size: int = 8, seed: int = 0,
                      augment: bool = True, num_workers: int = 0,
                      samples_per_epoch: int | None = None,
                      foreground_fraction: float = FOREGROUND_FRACTION) -> TrainLoader:
    """The training loader of ``cases`` (see the module docstring).

    Args:
        ds: an opened dataset.
        cases: training case names (``make_split(...)["train"]``).
        dims: 2 (images, or slices of volumes) or 3 (volume patches).
        patch_size: spatial patch size, ``dims`` numbers; smaller images are zero-padded.
        batch_size: patches per batch.
        seed: with the epoch, fixes every random choice.
        augment: apply :mod:`unetpp.data.loading.augment`.
        num_workers: DataLoader worker processes (0: in this process).
        samples_per_epoch: patches per epoch (rounded up to whole batches); default: enough to
            cover every training voxel about once.
        foreground_fraction: share of patches centred on foreground.
    """
    return TrainLoader(ds, cases, dims, patch_size, batch_size, seed, augment, num_workers,
                       samples_per_epoch, foreground_fraction)


def describe(loader: TrainLoader) -> dict[str, Any]:
    """The loader's settings, for the run's config.json."""
    return {"dims": loader.dims, "patch_size": list(loader.patch_size), "batch_size": loader.batch_size,
            "seed": loader.seed, "samples_per_epoch": loader.samples_per_epoch,
            "cases": len(loader.cases)}
