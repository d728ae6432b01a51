"""Scoring a folder of masks against references: matching, checks, labels, the CLI path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unetpp.data.files.formats import write_file
from unetpp.errors import DataError
from unetpp.inference.folders import score_folders
from helpers import cli

SPACING = [3.0, 1.0, 1.0]  # array order (Z, Y, X): 3 mm slices
SHAPE = (10, 16, 16)


def cube(z0=2, z1=6, value=1):
    m = np.zeros(SHAPE, np.uint8)
    m[z0:z1, 4:12, 4:12] = value
    return m


def write(folder, name, array, spacing=SPACING, meta=None):
    folder.mkdir(parents=True, exist_ok=True)
    return write_file(folder / name, array, meta or {"spacing": list(spacing)})


@pytest.fixture
def folders(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    write(ref, "a.nii.gz", cube())
    write(pred, "a.nii.gz", cube(4, 8))      # shifted 2 slices (6 mm): Dice 2*2/8 = 0.5
    write(ref, "b.nii.gz", cube())
    write(pred, "b_0000.nii.gz", cube())     # nnU-Net input naming; perfect
    return pred, ref


def test_known_overlap_dice_and_hd95_and_0000_naming(folders):
    pred, ref = folders
    r = score_folders(pred, ref)
    assert [c["case"] for c in r["cases"]] == ["a", "b"]
    a, b = r["cases"]
    assert list(a) == ["case", "dice", "iou", "hd95", "nsd"]
    assert a["dice"] == pytest.approx(0.5) and a["iou"] == pytest.approx(1 / 3)
    assert a["hd95"] == pytest.approx(6.0) and 0 < a["nsd"] < 1
    assert (b["dice"], b["iou"], b["hd95"], b["nsd"]) == (1.0, 1.0, 0.0, 1.0)
    assert r["dice"] == pytest.approx(0.75) and r["hd95"] == pytest.approx(3.0)
    assert r["mode"] is None and r["level"] is None and r["split"] == "folders" and "classes" not in r
    assert r["empty"] == "one" and r["tolerance_mm"] == 3.0 and r["labels"] == {"0": "background", "1": "foreground"}
    assert r["pred"] == str(pred) and r["ref"] == str(ref)
    # a wider tolerance forgives the 6 mm shift; surface=False gives Dice/IoU only
    assert score_folders(pred, ref, tolerance=6.0)["cases"][0]["nsd"] == 1.0
    flat = score_folders(pred, ref, surface=False)
    assert set(flat["cases"][0]) == {"case", "dice", "iou"} and flat["hd95"] is None


def test_every_problem_is_reported_at_once_naming_both_files(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for name in ("shape", "spacing", "affine", "missing", "ok"):
        write(ref, f"{name}.nii.gz", cube())
    write(pred, "shape.nii.gz", np.zeros((10, 16, 12), np.uint8))
    write(pred, "spacing.nii.gz", cube(), spacing=[2.5, 1.0, 1.0])
    moved = np.diag([1.0, 1.0, 3.0, 1.0])
    moved[:3, 3] = [5.0, 0.0, 0.0]  # same grid, origin 5 mm away
    write(pred, "affine.nii.gz", cube(), meta={"affine": moved.tolist(), "spacing": SPACING})
    write(pred, "ok.nii.gz", cube())
    write(pred, "stray.nii.gz", cube())
    (pred / "notes.txt").write_text("not a mask")  # ignored
    with pytest.raises(DataError) as e:
        score_folders(pred, ref)
    problems = e.value.problems
    assert len(problems) == 5, problems

    def line(needle):
        found = [p for p in problems if needle in p]
        assert len(found) == 1, (needle, problems)
        return found[0]

    shape = line("shape (10, 16, 12) differs")
    assert str(pred / "shape.nii.gz") in shape and str(ref / "shape.nii.gz") in shape
    spacing = line("spacing (2.5, 1, 1) differs")
    assert str(pred / "spacing.nii.gz") in spacing and str(ref / "spacing.nii.gz") in spacing
    affine = line("affine (origin/direction) differs")
    assert str(pred / "affine.nii.gz") in affine and str(ref / "affine.nii.gz") in affine
    assert line("reference without prediction") == \
        f"{ref / 'missing.nii.gz'}: reference without prediction {pred / 'missing.nii.gz'}"
    assert line("prediction without reference") == \
        f"{pred / 'stray.nii.gz'}: prediction without reference {ref / 'stray.nii.gz'}"


def test_two_files_for_one_case_and_missing_folder(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    write(ref, "a.nii.gz", cube())
    write(pred, "a.nii.gz", cube())
    write(pred, "a_0000.nii.gz", cube())
    with pytest.raises(DataError, match="two predictions for reference"):
        score_folders(pred, ref)
    with pytest.raises(DataError, match="no such folder"):
        score_folders(tmp_path / "nowhere", ref)


@pytest.mark.parametrize("labels", [{"background": 0, "liver": 1, "tumour": 2},      # nnU-Net v2
                                    {"0": "background", "1": "liver", "2": "tumour"}])  # MSD
def test_labels_from_dataset_json_beside_the_references(tmp_path, labels):
    pred, ref = tmp_path / "pred", tmp_path / "data" / "labelsTr"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text(json.dumps({"labels": labels}))
    write(ref, "a.nii.gz", cube())        # only label 1 stored: inference alone would say binary
    write(pred, "a.nii.gz", cube())
    r = score_folders(pred, ref)
    assert r["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
    c = r["cases"][0]
    assert list(c)[:5] == ["case", "dice", "iou", "hd95", "nsd"]
    assert c["dice_1"] == 1.0 and c["dice_2"] == 1.0 and c["hd95_2"] == 0.0  # tumour in neither
    assert set(r["classes"]) == {f"{m}_{k}" for k in (1, 2) for m in ("dice", "iou", "hd95", "nsd")}
    n = score_folders(pred, ref, empty="nan")
    assert np.isnan(n["cases"][0]["dice_2"]) and np.isnan(n["classes"]["dice_2"]) and n["dice"] == 1.0


def test_labels_inferred_and_binary_0_255(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    write(ref, "m.nii.gz", cube() + cube(3, 5, 1))  # values 0, 1, 2 -> 3 classes
    write(pred, "m.nii.gz", cube())
    r = score_folders(pred, ref)
    assert r["labels"] == {"0": "background", "1": "class 1", "2": "class 2"}
    assert r["cases"][0]["dice_2"] == 0.0 and np.isnan(r["cases"][0]["hd95_2"])  # missed entirely
    mask = np.zeros((12, 12), np.uint8)
    mask[2:8, 2:8] = 1
    write(tmp_path / "r2", "x.png", mask * 255)  # binary stored 0/255
    write(tmp_path / "p2", "x.png", mask)
    r2 = score_folders(tmp_path / "p2", tmp_path / "r2", classes=None)
    assert r2["dice"] == 1.0 and r2["labels"] == {"0": "background", "1": "foreground"}
    assert r2["tolerance_mm"] == 1.0


def test_cli_writes_json_and_csv(folders, tmp_path, capsys):
    pred, ref = folders
    write(ref, "c.nii.gz", cube())
    write(pred, "c.nii.gz", np.zeros(SHAPE, np.uint8))  # missed: Dice 0, HD95 undefined
    code, _, err = cli(["evaluate", "--pred", str(pred), "--ref", str(ref)], capsys)
    assert code == 0, err
    assert "dice 0.5000" in err and "hd95 3.00 mm" in err and "over 3 case(s)" in err
    result = json.loads((pred / "evaluation.json").read_text())  # strict JSON: NaN written as null
    assert result["cases"][2]["hd95"] is None and result["hd95"] == pytest.approx(3.0)
    rows = (pred / "evaluation.csv").read_text().splitlines()
    assert rows[0] == "case,dice,iou,hd95,nsd" and rows[3].startswith("c,0.000000,0.000000,nan,")
    assert rows[-1].startswith("mean,0.500000,") and ",3.000000," in rows[-1]
    target = tmp_path / "out" / "scores.json"
    code, _, err = cli(["evaluate", "--pred", str(pred), "--ref", str(ref), "--json", str(target),
                        "--empty", "nan", "--nsd-tolerance", "6"], capsys)
    assert code == 0, err
    again = json.loads(target.read_text())
    assert again["empty"] == "nan" and again["tolerance_mm"] == 6.0 and again["cases"][0]["nsd"] == 1.0
    assert (tmp_path / "out" / "scores.csv").is_file()


@pytest.mark.parametrize("argv,needle", [
    ([], "give RUN DATA (a run on a dataset) or --pred DIR --ref DIR"),
    (["somerun"], "give RUN DATA"),
    (["--pred", "p"], "--ref DIR missing"),
    (["somerun", "data", "--pred", "p", "--ref", "r"], "not both"),
    (["--pred", "p", "--ref", "r", "--empty", "zero"], "--empty must be one of one, nan"),
    (["somerun", "data", "--empty", "maybe"], "--empty must be one of one, nan"),
])
def test_cli_usage_errors_are_one_line(argv, needle, capsys):
    code, _, err = cli(["evaluate", *argv], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_tolerance_per_case_when_spacings_differ(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for name, spacing in (("a", SPACING), ("b", [2.0, 1.0, 1.0])):
        write(ref, f"{name}.nii.gz", cube(), spacing=spacing)
        write(pred, f"{name}.nii.gz", cube(), spacing=spacing)
    assert score_folders(pred, ref)["tolerance_mm"] == {"a": 3.0, "b": 2.0}
    assert score_folders(pred, ref, tolerance=1.5)["tolerance_mm"] == 1.5
