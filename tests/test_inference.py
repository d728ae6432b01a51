"""Inference: Predictor/load, modes, input layouts, predict on files (geometry kept), evaluate, CLI errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

import unetpp
from unetpp import create_model
from unetpp.data import open_dataset
from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.errors import RunError, UnetppError
from unetpp.inference.evaluate import select_cases
from unetpp.inference.predict import predict_inputs
from unetpp.io import atomic_write_json
from unetpp.run import make_run_config, save_weights, write_run_config
from helpers import cli


def make_run(path, ds, dims=2, depth=3, split=None, train=None, **kw):
    torch.manual_seed(0)
    model = create_model("unetpp", dims=dims, depth=depth, base_filters=4, in_channels=ds.channels,
                         classes=ds.classes, **kw)
    path.mkdir(parents=True, exist_ok=True)
    write_run_config(path, make_run_config(model.config, data=ds.data_config(), train=train or {"patch_size": [64]},
                                           split=split))
    save_weights(path / "model.safetensors", model)
    return path


@pytest.fixture(scope="module")
def ds2d(tmp_path_factory):
    return open_dataset(write_synthetic_dataset(tmp_path_factory.mktemp("d2") / "ds", n_cases=4, size=40))


@pytest.fixture(scope="module")
def run2d(tmp_path_factory, ds2d):
    names = ds2d.case_names
    return make_run(tmp_path_factory.mktemp("r2") / "run", ds2d,
                    split={"train": names[:2], "val": names[2:]})


def test_fast_is_pruned_network_and_accurate_is_mean_of_heads(run2d, ds2d):
    predictor = unetpp.load(run2d)
    image = ds2d.load_case(ds2d.case_names[0]).image
    x = torch.from_numpy(image)[None]
    with torch.no_grad():
        heads = {lv: torch.sigmoid(v)[0].numpy() for lv, v in predictor.model(x).items()}
        pruned = {lv: torch.sigmoid(predictor.model.prune(lv)(x))[0].numpy() for lv in (1, 2, 3)}
    for lv in (1, 2, 3):
        fast = predictor.predict_proba(image, mode="fast", level=lv, normalised=True)
        np.testing.assert_allclose(fast, pruned[lv], atol=1e-6)
        np.testing.assert_array_equal(predictor.predict(image, level=lv, normalised=True),
                                      (pruned[lv][0] > 0.5).astype(np.int64))
    accurate = predictor.predict_proba(image, mode="accurate", normalised=True)
    np.testing.assert_allclose(accurate, np.mean(list(heads.values()), axis=0), atol=1e-6)


def test_raw_array_layouts_are_normalised_like_files(run2d, ds2d):
    predictor = unetpp.load(run2d)
    raw = (np.random.default_rng(0).random((40, 52)) * 255).astype(np.uint8)
    mask = predictor.predict(raw)
    assert mask.shape == (40, 52) and mask.dtype == np.int64
    mean, std = raw.mean(), raw.std()  # the synthetic dataset normalises by z-score per image
    np.testing.assert_array_equal(mask, predictor.predict(((raw - mean) / std)[None], normalised=True))
    np.testing.assert_array_equal(mask, predictor.predict(raw[None]))
    np.testing.assert_array_equal(mask, predictor.predict(raw[..., None]))
    volume = predictor.predict(np.stack([raw, raw, raw]))  # (D, H, W): slice by slice
    assert volume.shape == (3, 40, 52)
    with pytest.raises(UnetppError, match="does not fit a 2D model with 1 input channel"):
        predictor.predict(np.zeros((2, 3, 40, 52)))
    with pytest.raises(UnetppError, match="--level 4: the network has depth 3"):
        predictor.predict(raw, level=4)


def test_rgb_layouts(tmp_path):
    ds = open_dataset(write_synthetic_dataset(tmp_path / "rgb", n_cases=3, size=24, channels=3))
    predictor = unetpp.load(make_run(tmp_path / "run", ds))
    rgb = (np.random.default_rng(1).random((24, 30, 3)) * 255).astype(np.uint8)
    hwc = predictor.predict_proba(rgb, mode="fast", level=2)
    chw = predictor.predict_proba(np.moveaxis(rgb, -1, 0), mode="fast", level=2)
    assert hwc.shape == (1, 24, 30)
    np.testing.assert_allclose(hwc, chw)
    with pytest.raises(UnetppError, match=r"expected \(H, W, C\)"):
        predictor.predict(rgb[..., 0])


def test_default_mode_follows_prune_json_and_no_deep_supervision(tmp_path, ds2d, run2d):
    assert unetpp.load(run2d).default_mode() == ("accurate", None)
    run = make_run(tmp_path / "chosen", ds2d)
    atomic_write_json(run / "prune.json", {"chosen": {"mode": "fast", "level": 2}, "levels": {}})
    predictor = unetpp.load(run)
    assert predictor.resolve() == ("fast", 2)
    assert predictor.resolve("fast") == ("fast", 2)
    assert predictor.resolve("accurate") == ("accurate", None)
    assert predictor.resolve(level=1) == ("fast", 1)
    plain = unetpp.load(make_run(tmp_path / "plain", ds2d, deep_supervision=False))
    assert plain.resolve() == ("fast", 3)
    with pytest.raises(UnetppError, match="trained without deep supervision and has only level 3"):
        plain.resolve("fast", 1)


def test_select_cases_prefers_test_then_val_then_all(ds2d):
    names = ds2d.case_names
    assert select_cases(ds2d, {"split": {"train": names[:2], "val": names[2:], "test": names[3:]}}) == (names[3:], "test")
    assert select_cases(ds2d, {"split": {"train": names[:2], "val": names[2:], "test": names[3:]}}, "prune") \
        == (names[2:], "val")
    assert select_cases(ds2d, {"split": {"val": ["other_case"]}}) == (names, "all")
    assert select_cases(ds2d, {}) == (names, "all")


def test_predicted_nifti_keeps_affine_and_shape(tmp_path):
    root = write_synthetic_dataset(tmp_path / "vol", layout="nnunet", n_cases=3, size=(12, 16, 16), dims=3,
                                   spacing=(2.0, 1.0, 1.0))
    ds = open_dataset(root)
    run = make_run(tmp_path / "run3d", ds, dims=3, depth=2, train={"patch_size": [8, 16, 16]})
    affine = np.array([[0.0, -1.2, 0.0, 10.0], [1.1, 0.0, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0, 0, 0, 1]])
    data = np.random.default_rng(0).random((17, 15, 9)).astype(np.float32)  # (X, Y, Z), another spacing
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "scan_0000.nii.gz"))
    predictor = unetpp.load(run)
    outcomes = predict_inputs(predictor, [str(tmp_path / "scan_0000.nii.gz")], tmp_path / "out",
                              mode="fast", level=1, probabilities=True, overlay=True)
    assert [o.error for o in outcomes] == [None]
    # nnU-Net naming: image scan_0000.nii.gz -> mask scan.nii.gz (issue 15)
    mask = nib.load(str(tmp_path / "out" / "scan.nii.gz"))
    assert mask.shape == data.shape
    np.testing.assert_allclose(mask.affine, affine, atol=1e-5)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    probs = nib.load(str(tmp_path / "out" / "scan_probs.nii.gz"))
    assert probs.shape == data.shape and probs.get_data_dtype() == np.float32
    assert (tmp_path / "out" / "scan_overlay.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_folder_reports_broken_file_and_writes_the_others(tmp_path, run2d, ds2d, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ds2d.case_names[:2]:
        (folder / f"{name}.png").write_bytes((ds2d.root / "images" / f"{name}.png").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code, out, err = cli(["predict", str(run2d), str(folder), "--out", str(tmp_path / "out"),
                          "--overlay", "--mode", "fast", "--level", "2"], capsys)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    from PIL import Image

    for name in ds2d.case_names[:2]:
        with Image.open(tmp_path / "out" / f"{name}.png") as im:
            assert im.size == (40, 40)
        assert (tmp_path / "out" / f"{name}_overlay.png").is_file()
    assert not (tmp_path / "out" / "broken.png").exists()


def test_evaluate_cli_writes_contract_json_and_csv(tmp_path, run2d, ds2d, capsys):
    target = tmp_path / "eval" / "scores.json"
    code, out, err = cli(["evaluate", str(run2d), str(ds2d.root), "--json", str(target)], capsys)
    assert code == 0, err
    result = json.loads(target.read_text())
    assert result["mode"] == "accurate" and result["level"] is None
    assert [c["case"] for c in result["cases"]] == ds2d.case_names[2:]  # the validation cases
    # native-resolution scores with surface metrics by default (issue 15)
    assert set(result["cases"][0]) == {"case", "dice", "iou", "hd95", "nsd"}
    assert result["dice"] == pytest.approx(np.mean([c["dice"] for c in result["cases"]]))
    rows = (tmp_path / "eval" / "scores.csv").read_text().splitlines()
    assert rows[0] == "case,dice,iou,hd95,nsd" and rows[-1].startswith("mean,") and len(rows) == 4


def test_cli_one_line_errors(tmp_path, run2d, ds2d, capsys):
    broken = make_run(tmp_path / "noweights", ds2d)
    (broken / "model.safetensors").unlink()
    code, _, err = cli(["evaluate", str(broken), str(ds2d.root)], capsys)
    assert code == 1 and err.strip().splitlines() == [
        f"error: {broken / 'model.safetensors'}: missing; training writes it after the first validation"]
    old = make_run(tmp_path / "old", ds2d)
    cfg = json.loads((old / "config.json").read_text())
    cfg["format_version"] = 99
    (old / "config.json").write_text(json.dumps(cfg))
    code, _, err = cli(["predict", str(old), str(ds2d.root / "images"), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "run format version 99" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(["predict", str(run2d), str(ds2d.root / "images"), "--out", str(tmp_path / "o"),
                        "--level", "7"], capsys)
    assert code == 1 and err.strip() == "error: --level 7: the network has depth 3, so levels are 1..3"
    vol = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), str(vol))
    code, _, err = cli(["predict", str(run2d), str(vol), "--out", str(tmp_path / "o")], capsys)
    # a 2D run on 2D data: a volume is refused, naming the file
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and errors == [f"error: {vol}: a 3D image; the model was trained on 2D data"]
    plain = make_run(tmp_path / "plain", ds2d, deep_supervision=False)
    code, _, err = cli(["export", str(plain), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                        "--mode", "fast", "--level", "1"], capsys)
    assert code == 1 and "trained without deep supervision" in err
    with pytest.raises(RunError, match="not a run folder"):
        unetpp.load(tmp_path / "nothing")


def test_dicom_series_without_pydicom_is_one_clear_line(tmp_path, run2d):
    series = tmp_path / "series"
    series.mkdir()
    for i in range(2):
        (series / f"slice{i}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    outcomes = predict_inputs(unetpp.load(run2d), [str(series)], tmp_path / "out")
    assert len(outcomes) == 1 and outcomes[0].error.startswith(f"{series}: ")
    try:
        import pydicom  # noqa: F401
    except ImportError:
        assert "needs pydicom" in outcomes[0].error
