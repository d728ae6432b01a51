"""Bad input: every problem is reported, one line naming the file; nothing skipped silently.
A test for each kind of problem in issue 3, on check_dataset, open_dataset and the CLI."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from unetpp.cli.app import main
from unetpp.data import DataError, check_dataset, open_dataset
from unetpp.data.files.formats import write_file
from unetpp.data.samples.synthetic import write_synthetic_dataset


def problems_of(root) -> list[str]:
    found = check_dataset(root)
    with pytest.raises(DataError) as err:  # training refuses the same data, same lines
        open_dataset(root)
    assert err.value.problems == found
    return found


def only(problems: list[str], *needles: str) -> str:
    """The single problem line; it must contain every needle."""
    assert len(problems) == 1, problems
    for n in needles:
        assert n in problems[0], (n, problems[0])
    return problems[0]


@pytest.fixture
def folders(tmp_path):
    return write_synthetic_dataset(tmp_path / "ds", n_cases=3, size=24)


@pytest.fixture
def volumes(tmp_path):
    return write_synthetic_dataset(tmp_path / "vol", layout="nnunet", n_cases=2, size=(4, 8, 8), dims=3)


def test_good_datasets_have_no_problems(folders, volumes):
    assert check_dataset(folders) == [] and check_dataset(volumes) == []


def test_image_without_mask_and_mask_without_image(folders):
    (folders / "masks" / "case_001.png").rename(folders / "masks" / "other.png")
    found = problems_of(folders)
    assert len(found) == 2
    assert any("images/case_001.png: image without mask" in p for p in found)
    assert any("masks/other.png: mask without image" in p for p in found)


def test_nnunet_image_without_label_and_label_without_image(volumes):
    (volumes / "labelsTr" / "case_000.nii.gz").rename(volumes / "labelsTr" / "case_009.nii.gz")
    found = problems_of(volumes)
    assert any("imagesTr/case_000_0000.nii.gz: image without mask" in p for p in found)
    assert any("labelsTr/case_009.nii.gz: mask without image" in p for p in found)


def test_dsb2018_image_without_instance_masks(tmp_path):
    root = write_synthetic_dataset(tmp_path, layout="dsb2018", n_cases=2, size=24)
    for p in (root / "case_000" / "masks").iterdir():
        p.unlink()
    only(problems_of(root), "case_000/images/case_000.png: image without mask")


def test_missing_channel_file(tmp_path):
    root = write_synthetic_dataset(tmp_path, layout="nnunet", n_cases=2, size=(4, 8, 8), dims=3, channels=2)
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    only(problems_of(root), "imagesTr/case_001", "channel files _0000; expected _0000..0001")


def test_shape_mismatch(folders):
    write_file(folders / "masks" / "case_002.png", np.zeros((20, 24), np.uint8), {})
    only(problems_of(folders), "masks/case_002.png", "shape (20, 24) differs from (24, 24)")


def test_geometry_mismatch(volumes):
    label = volumes / "labelsTr" / "case_001.nii.gz"
    img = nib.load(label)
    shifted = img.affine.copy()
    shifted[:3, 3] += 5.0  # same shape and spacing, moved origin
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), shifted), label)
    only(problems_of(volumes), "labelsTr/case_001.nii.gz", "affine")
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), np.diag([1, 1, 2.0, 1])), label)
    only(check_dataset(volumes), "labelsTr/case_001.nii.gz", "spacing")


def test_mask_values_outside_declared_labels(folders, volumes):
    mask = np.zeros((24, 24), np.uint8)
    mask[:5, :5] = 3
    write_file(folders / "masks" / "case_000.png", mask, {})
    only(problems_of(folders), "masks/case_000.png", "mask values 3 outside the declared labels [0, 1]")
    label = volumes / "labelsTr" / "case_000.nii.gz"
    img = nib.load(label)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine), label)
    only(problems_of(volumes), "labelsTr/case_000.nii.gz", "mask values 7")


def test_unreadable_and_truncated_files(folders, volumes):
    png = folders / "images" / "case_001.png"
    png.write_bytes(png.read_bytes()[:60])
    only(problems_of(folders), "images/case_001.png: unreadable or truncated png")
    nii = volumes / "imagesTr" / "case_001_0000.nii.gz"
    nii.write_bytes(gzip.compress(gzip.decompress(nii.read_bytes())[:400]))
    only(problems_of(volumes), "imagesTr/case_001_0000.nii.gz: unreadable or truncated nifti")


def test_nan_and_inf_in_image(volumes):
    path = volumes / "imagesTr" / "case_000_0000.nii.gz"
    img = nib.load(path)
    data = img.get_fdata().astype(np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, img.affine), path)
    only(problems_of(volumes), "imagesTr/case_000_0000.nii.gz: 2 NaN/Inf values")


def test_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    only(problems_of(tmp_path / "empty"), "empty: empty folder")
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    found = problems_of(tmp_path / "ds")
    assert any("ds/images: empty folder" in p for p in found)


def test_unknown_layout_and_missing_folder(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "scan.nii.gz").write_bytes(b"")
    only(problems_of(tmp_path / "odd"), "odd: unknown layout")
    only(check_dataset(tmp_path / "nope"), "nope: no such folder")


def test_channel_count_differs_across_cases(folders):
    rgb = np.zeros((3, 24, 24), np.uint8)
    rgb[:, :12] = 200  # not blank (a blank image with a mask is a problem of its own)
    write_file(folders / "images" / "case_002.png", rgb, {})
    only(problems_of(folders), "images/case_002.png: 3 channels, while 2 other case(s) have 1")


def test_unsupported_and_ambiguous_files_are_reported(folders):
    (folders / "images" / "notes.txt").write_text("not an image")
    write_file(folders / "images" / "case_000.tif", np.zeros((24, 24), np.uint8), {})
    found = problems_of(folders)
    assert any("images/notes.txt: not a supported image file" in p for p in found)
    assert any("case_000.tif: same name as case_000.png" in p for p in found)


def test_nnunet_bad_dataset_json(volumes):
    (volumes / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"},
                                                      "labels": {"background": 0, "tumour": 2}}))
    assert any("labels [0, 2] must be 0..K-1" in p for p in problems_of(volumes))
    (volumes / "dataset.json").unlink()
    assert any("dataset.json: missing" in p for p in problems_of(volumes))


def test_every_problem_reported_at_once(folders):
    (folders / "masks" / "case_000.png").unlink()
    (folders / "images" / "case_001.png").write_bytes(b"\x89PNG broken")
    write_file(folders / "masks" / "case_002.png", np.full((24, 24), 9, np.uint8), {})
    found = problems_of(folders)
    assert len(found) == 3 and all(str(folders) in p for p in found)


def test_cli_check_exit_codes(folders, capsys):
    with pytest.raises(SystemExit) as ok:
        main(["data", "check", str(folders)])
    assert ok.value.code in (0, None)
    assert "ok:" in capsys.readouterr().out
    (folders / "masks" / "case_000.png").unlink()
    (folders / "masks" / "case_001.png").unlink()
    with pytest.raises(SystemExit) as bad:
        main(["data", "check", str(folders)])
    err = capsys.readouterr().err.strip().splitlines()
    assert bad.value.code == 1 and len(err) == 2
    assert all(line.startswith("error: ") and "image without mask" in line for line in err)
    assert "Traceback" not in "\n".join(err)
