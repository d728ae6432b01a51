"""Find the cases of a dataset folder: detect its layout, pair images with masks.

Three layouts are recognised (see ``../shared/DATA.md``)::

    image-folders   ROOT/images/<name>.<png|jpg|tif|bmp>  +  ROOT/masks/<name>.<any of those>
                    (optional ROOT/dataset.json: {"modality": ..., "labels": {"0": ..., ...}})
    dsb2018         ROOT/<id>/images/<id>.png  +  ROOT/<id>/masks/*.png  (one PNG per instance)
    nnunet          ROOT/dataset.json, ROOT/imagesTr/<case>_<XXXX><ending> (XXXX = channel),
                    ROOT/labelsTr/<case><ending>, optional ROOT/imagesTs/; MSD-style single
                    files (``liver_0.nii.gz``, channels inside) are accepted too

Any of them may carry ``ROOT/splits.json`` ``{"train": [...], "val": [...], "test": [...]}``,
the dataset's own split (used by :func:`unetpp.data.loading.pipeline.make_split`).

**DICOM series as images**: where an image file is expected, a folder holding one DICOM
series (the slice files, any names; see :mod:`unetpp.data.files.dicom`) may stand instead, named
as the file would be without its suffix, and its mask is a volume file (NIfTI, NRRD, MHA) on
the series' grid::

    nnunet          ROOT/imagesTr/<case>_0000/*.dcm  +  ROOT/labelsTr/<case>.nii.gz
                    (also ROOT/imagesTs/<case>_0000/; dataset.json "file_ending" is the labels')
    image-folders   ROOT/images/<case>/*.dcm  +  ROOT/masks/<case>.nii.gz

A folder counts as a series when one of its first files is DICOM (a ``.dcm`` name or the
``DICM`` marker); any other folder where files are expected is reported. Reading (series
split, slice order, geometry) happens in :func:`unetpp.data.files.formats.read_file`, so
``read_case``, ``unetpp data check`` and training need nothing else.

This module looks at names only (and at the first bytes of a folder's files, to tell a DICOM
series folder); :mod:`unetpp.data.cases.check` opens the files. Every problem
found is collected as one line naming the file: nothing is skipped silently. Hidden files
(``.DS_Store``, macOS ``._*`` twins that MSD archives contain) are the only files ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files.dicom import is_series_folder
from ..files.formats import IMAGE_2D_SUFFIXES, SUFFIXES, strip_suffix, suffix_of

LAYOUT_NAMES = ("image-folders", "dsb2018", "nnunet")
#: Files at a dataset's top level that describe it rather than hold images.
METADATA_FILES = {"dataset.json", "splits.json", "readme", "readme.md", "readme.txt", "license",
                  "license.txt", "license.md", "source.txt", "source.md"}

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class CaseFiles:
    """The files of one case: ``images`` (one per channel, or one with all channels) and
    ``label`` (one mask file) or ``instance_masks`` (DSB 2018: one file per instance)."""

    name: str
    images: list[Path]
    label: Path | None = None
    instance_masks: list[Path] = field(default_factory=list)

    @property
    def has_label(self) -> bool:
        return self.label is not None or bool(self.instance_masks)


@dataclass
class Scan:
    """What a folder holds, from file names alone."""

    root: Path
    layout: str
    cases: list[CaseFiles]
    problems: list[str]
    info: dict[str, Any]          # dataset.json (or {}), as read
    split: dict[str, list[str]] | None
    test_inputs: list[CaseFiles] = field(default_factory=list)  # nnU-Net imagesTs (unlabelled)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def detect_layout(root: Path) -> str | None:
    """``"image-folders"``, ``"dsb2018"``, ``"nnunet"``, or None when none fits."""
    if (root / "imagesTr").is_dir() or (root / "labelsTr").is_dir():
        return "nnunet"
    if (root / "images").is_dir() or (root / "masks").is_dir():
        return "image-folders"
    for child in _visible(root):
        if child.is_dir() and (child / "images").is_dir():
            return "dsb2018"
    return None


def scan(root: str | Path) -> Scan:
    """Detect the layout of ``root`` and list its cases, with every naming problem found."""
    root = Path(root)
    if not root.exists():
        why = "broken or looping symbolic link" if root.is_symlink() else "no such folder"
        return Scan(root, "", [], [f"{root}: {why}"], {}, None)
    if not root.is_dir():
        return Scan(root, "", [], [f"{root}: not a folder (a dataset is a folder in a supported "
                                   "layout; see 'unetpp data --help')"], {}, None)
    if not _visible(root):
        return Scan(root, "", [], [f"{root}: empty folder"], {}, None)
    if (root / "stage1_train").is_dir() and detect_layout(root) is None:
        root = root / "stage1_train"  # the DSB 2018 archive's own top folder
    layout = detect_layout(root)
    if layout is None:
        return Scan(root, "", [], [
            f"{root}: unknown layout: expected images/ + masks/ (image folders), imagesTr/ + "
            "labelsTr/ + dataset.json (nnU-Net / MSD), or <id>/images/ + <id>/masks/ "
            "(Data Science Bowl 2018)"], {}, None)
    problems: list[str] = []
    info = _read_json(root / "dataset.json", problems) if (root / "dataset.json").is_file() else {}
    split = _read_split(root / "splits.json", problems)
    if layout == "image-folders":
        cases = _scan_image_folders(root, problems)
        test_inputs: list[CaseFiles] = []
    elif layout == "dsb2018":
        cases = _scan_dsb2018(root, problems)
        test_inputs = []
    else:
        if not info and not (root / "dataset.json").is_file():
            problems.append(f"{root / 'dataset.json'}: missing (nnU-Net / MSD datasets declare "
                            "channels and labels there)")
        cases, test_inputs = _scan_nnunet(root, info, problems)
    if not cases and not any("empty folder" in p for p in problems):
        problems.append(f"{root}: no labelled cases found")
    if split is not None:
        names = {c.name for c in cases}
        for part, members in split.items():
            for m in members:
                if m not in names:
                    problems.append(f"{root / 'splits.json'}: {part} case {m!r} is not in the dataset")
    return Scan(root, layout, cases, problems, info, split, test_inputs)


#: dataset.json / splits.json larger than this are refused (they are a few KiB normally).
MAX_JSON_BYTES = 16 * 2**20


def _read_json(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            problems.append(f"{path}: {size:,} bytes; larger than the {MAX_JSON_BYTES:,} allowed for a "
                            "dataset description")
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        problems.append(f"{path}: not valid JSON ({type(e).__name__ if isinstance(e, RecursionError) else e})")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a JSON object")
        return {}
    return data


def _read_split(path: Path, problems: list[str]) -> dict[str, list[str]] | None:
    if not path.is_file():
        return None
    data = _read_json(path, problems)
    split: dict[str, list[str]] = {}
    for part in ("train", "val", "test"):
        members = data.get(part, [])
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            problems.append(f"{path}: {part!r} must be a list of case names")
            return None
        split[part] = list(members)
    if not split["train"]:
        problems.append(f"{path}: no 'train' cases")
        return None
    return split


def _by_stem(folder: Path, allowed: tuple[str, ...], problems: list[str],
             series: bool = False) -> dict[str, Path]:
    """Map name-without-suffix -> file (or, with ``series``, DICOM series folder -> itself);
    unsupported and duplicate names are problems."""
    found: dict[str, Path] = {}
    for p in _visible(folder):
        if p.is_dir():
            if not (series and is_series_folder(p)):
                hint = " (no DICOM files in it; a DICOM series folder holds one series' slices)" if series else ""
                problems.append(f"{p}: unexpected folder inside {folder.name}/{hint}")
                continue
            stem = p.name
        elif suffix_of(p) not in allowed:
            problems.append(f"{p}: not a supported image file ({', '.join(allowed)})")
            continue
        else:
            stem = strip_suffix(p)
        if stem in found:
            problems.append(f"{p}: same name as {found[stem].name}; which one is meant?")
            continue
        found[stem] = p
    return found


def _scan_image_folders(root: Path, problems: list[str]) -> list[CaseFiles]:
    images_dir, masks_dir = root / "images", root / "masks"
    allowed = IMAGE_2D_SUFFIXES
    images = _by_stem(images_dir, allowed, problems, series=True) if images_dir.is_dir() else {}
    if any(p.is_dir() for p in images.values()):  # DICOM series: their masks are volumes
        allowed = SUFFIXES
    masks = _by_stem(masks_dir, allowed, problems) if masks_dir.is_dir() else {}
    if not images_dir.is_dir():
        problems.append(f"{images_dir}: missing (image folders need images/ and masks/)")
    elif not images:
        problems.append(f"{images_dir}: empty folder")
    if not masks_dir.is_dir():
        problems.append(f"{masks_dir}: missing (image folders need images/ and masks/)")
    for stem, p in images.items():
        if stem not in masks and masks_dir.is_dir():
            problems.append(f"{p}: image without mask (no masks/{stem}.*)")
    for stem, p in masks.items():
        if stem not in images:
            problems.append(f"{p}: mask without image (no images/{stem}.*)")
    return [CaseFiles(stem, [p], masks[stem]) for stem, p in sorted(images.items()) if stem in masks]


def _scan_dsb2018(root: Path, problems: list[str]) -> list[CaseFiles]:
    cases = []
    for child in _visible(root):
        if not child.is_dir():
            if child.name.lower() not in METADATA_FILES and child.suffix.lower() not in (".csv", ".md", ".txt"):
                problems.append(f"{child}: unexpected file in a Data Science Bowl 2018 folder")
            continue
        image = child / "images" / f"{child.name}.png"
        if not image.is_file():
            problems.append(f"{child}: no images/{child.name}.png")
            continue
        masks_dir = child / "masks"
        masks = [p for p in _visible(masks_dir)] if masks_dir.is_dir() else []
        bad = [p for p in masks if suffix_of(p) not in IMAGE_2D_SUFFIXES]
        for p in bad:
            problems.append(f"{p}: not a supported mask file")
        masks = [p for p in masks if p not in bad]
        if not masks:
            problems.append(f"{image}: image without mask (no instance masks in {masks_dir})")
            continue
        cases.append(CaseFiles(child.name, [image], None, masks))
    return cases


def _scan_nnunet(root: Path, info: dict[str, Any], problems: list[str]) -> tuple[list[CaseFiles], list[CaseFiles]]:
    ending = info.get("file_ending")
    allowed = (ending,) if isinstance(ending, str) and ending else SUFFIXES
    n_channels = len(info.get("channel_names") or info.get("modality") or {}) or None
    rejected: set[str] = set()  # cases already reported, so their labels are not "orphans"

    def group(folder: Path) -> dict[str, list[Path]]:
        files = _by_stem(folder, tuple(allowed), problems, series=True)
        groups: dict[str, dict[int, Path]] = {}
        for stem, p in files.items():
            m = _CHANNEL_RE.match(stem)
            case, channel = (m["case"], int(m["channel"])) if m else (stem, -1)
            groups.setdefault(case, {})[channel] = p
        out: dict[str, list[Path]] = {}
        for case, chans in sorted(groups.items()):
            if -1 in chans and len(chans) > 1:
                problems.append(f"{chans[-1]}: mixes a channel-less file with _XXXX channel files of case {case}")
                rejected.add(case)
                continue
            if -1 in chans:
                out[case] = [chans[-1]]  # MSD style: all channels in one 4D file
                continue
            idx = sorted(chans)
            expected = list(range(n_channels or len(idx)))
            if idx != expected:
                have = ", ".join(f"{i:04d}" for i in idx)
                want = f"0000..{expected[-1]:04d}" if expected else "0000"
                problems.append(f"{folder / case}: channel files _{have}; expected _{want}")
                rejected.add(case)
                continue
            out[case] = [chans[i] for i in idx]
        return out

    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    images = group(images_dir) if images_dir.is_dir() else {}
    if not images_dir.is_dir():
        problems.append(f"{images_dir}: missing")
    elif not _visible(images_dir):
        problems.append(f"{images_dir}: empty folder")
    labels = _by_stem(labels_dir, tuple(allowed), problems) if labels_dir.is_dir() else {}
    if not labels_dir.is_dir():
        problems.append(f"{labels_dir}: missing")
    for case, files in images.items():
        if case not in labels and labels_dir.is_dir():
            ending = suffix_of(files[0]) if files[0].is_file() else allowed[0] if len(allowed) == 1 else ".nii.gz"
            problems.append(f"{files[0]}: image without mask (no labelsTr/{case}{ending})")
    for case, p in labels.items():
        if case not in images and case not in rejected:
            problems.append(f"{p}: mask without image (no imagesTr/{case}_0000{suffix_of(p)} or DICOM "
                            f"series folder imagesTr/{case}_0000/)")
    cases = [CaseFiles(c, f, labels[c]) for c, f in images.items() if c in labels]
    tests = []
    if (root / "imagesTs").is_dir():
        tests = [CaseFiles(c, f) for c, f in group(root / "imagesTs").items()]
    return cases, tests
