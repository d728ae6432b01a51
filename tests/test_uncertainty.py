"""Uncertainty maps, temperature calibration and per-case QC flags (issue 23)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import unetpp
from unetpp.cli import main
from unetpp.data import open_dataset
from unetpp.errors import RunError
from unetpp.inference.qc import TRUST, flag, intensity_distance, read_trust, spearman
from unetpp.inference.uncertainty import (calibrate, calibrate_samples, calibrated_uncertainty, describe_members,
                                          expected_calibration_error, fit_temperature, uncertainty_map)

from test_prune import pruned_run


def run_cli(capsys, *argv):
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        captured = capsys.readouterr()
        return e.code, captured.err
    return 0, capsys.readouterr().err


# ------------------------------------------------------------------------------ the maths
def test_uncertainty_map_is_normalised_entropy_in_0_1():
    p = torch.tensor([[[0.0, 0.5, 1.0, 0.25]]])  # binary (1, 1, 4)
    u = uncertainty_map(p)[0]
    assert u.shape == (4,)
    assert u[1].item() == pytest.approx(1.0) and u[0].item() < 1e-4 and u[2].item() < 1e-4
    assert u[3].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2), rel=1e-5)
    k = torch.full((3, 2, 2), 1 / 3)  # three classes, uniform: the most uncertain
    assert torch.allclose(uncertainty_map(k), torch.ones(2, 2), atol=1e-5)
    sure = torch.zeros(3, 2, 2)
    sure[1] = 1.0
    assert uncertainty_map(sure).max() < 1e-4


def test_calibrate_keeps_the_mask_and_scales_the_logits():
    torch.manual_seed(0)
    p = torch.rand(1, 16, 16)
    hot = calibrate(p, 2.0)
    assert torch.equal(hot[0] > 0.5, p[0] > 0.5)
    z = torch.log(p) - torch.log1p(-p)
    assert torch.allclose(hot, torch.sigmoid(z / 2.0), atol=1e-5)
    assert torch.equal(calibrate(p, 1.0), p)
    k = torch.softmax(torch.randn(4, 8, 8), 0)
    assert torch.equal(calibrate(k, 0.5).argmax(0), k.argmax(0))
    assert torch.allclose(calibrate(k, 1.0), k)


def test_fit_temperature_recovers_the_temperature_and_lowers_ece():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 60_000)
    labels = (rng.random(z.shape) < 1 / (1 + np.exp(-z / 2.5))).astype(np.int64)  # true T = 2.5
    probs = (1 / (1 + np.exp(-z)))[:, None].astype(np.float32)  # overconfident by 2.5x
    t = fit_temperature(probs, labels)
    assert t == pytest.approx(2.5, rel=0.08)
    before = expected_calibration_error(probs, labels)
    after = expected_calibration_error(calibrate_samples(probs, t), labels)
    assert after < before / 3 and after < 0.02
    # calibrated already: T stays near 1
    labels1 = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.int64)
    assert fit_temperature(probs, labels1) == pytest.approx(1.0, rel=0.08)


def test_spearman_and_ties():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1.5, 1.5, 3.5, 3.5], [1, 2, 3, 4])[0, 1])
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_flag_reasons_against_thresholds():
    trust = {"thresholds": {"uncertainty_inside": 0.2, "intensity_distance": 3.0, "always_structure": True,
                            "sizes": {"1": [10.0, 100.0]}}}
    ok = {"uncertainty_inside": 0.1, "intensity_distance": 1.0, "empty": False, "sizes": {1: 50.0}}
    assert flag(ok, trust) == ("ok", [])
    verdict, reasons = flag({**ok, "uncertainty_inside": 0.3, "intensity_distance": float("nan"),
                             "sizes": {1: 500.0}}, trust)
    assert verdict == "review" and len(reasons) == 3
    assert "uncertain" in reasons[0] and "intensities" in reasons[1] and "size" in reasons[2]
    verdict, reasons = flag({**ok, "empty": True, "sizes": {1: 0.0}}, trust)
    assert verdict == "review" and reasons == ["nothing segmented, but every training case has the structure"]
    assert flag(ok, None)[0] == "unknown"
    assert intensity_distance(np.zeros((2, 7)), {"mean": [[0.0] * 7], "sd": [[1.0] * 7]}) == float("inf")


# ------------------------------------------------------------------------------ on a run
@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tiny trained UNet++ (3 heads), pruned: prune.json and trust.json."""
    return pruned_run(tmp_path_factory.mktemp("trust"))


def test_prune_writes_trust_json(pruned):
    run, ds = pruned
    trust = json.loads((run / TRUST).read_text())
    assert trust["temperature"] > 0 and math.isfinite(trust["temperature"])
    split = json.loads((run / "config.json").read_text())["split"]
    assert sorted(trust["cases"]) == sorted(split["val"]) and len(split["val"]) == 4
    assert 0 <= trust["ece"]["before"] <= 1 and 0 <= trust["ece"]["after"] <= 1 and trust["ece"]["voxels"] == 4 * 40 * 40
    t = trust["thresholds"]
    assert 0 < t["uncertainty_inside"] <= 1.25 + 1e-9 and t["intensity_distance"] >= 3.0
    fp = trust["fingerprint"]
    assert np.asarray(fp["mean"]).shape == (1, 7) and fp["cases"] == 2
    for c in trust["cases"].values():
        assert 0 <= c["dice"] <= 1 and 0 <= c["confidence"] <= 1
    assert read_trust(run)["temperature"] == trust["temperature"]
    assert unetpp.load(run).trust == trust


def test_members_are_described_and_the_map_is_chunked(pruned):
    run, ds = pruned
    predictor = unetpp.load(run)
    assert describe_members(predictor, "accurate", None, False) == "3 heads"
    assert describe_members(predictor, "fast", 2, True) == "1 head x 4 flips"
    probs = torch.rand(1, 20, 9, 7)  # a volume's probabilities: chunks along the first axis agree
    assert torch.allclose(calibrated_uncertainty(probs, 1.7, chunk=3), uncertainty_map(calibrate(probs, 1.7)))


def _write_png(path, array):
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
    return path


def test_predict_uncertainty_writes_maps_and_flags_broken_inputs(pruned, tmp_path, capsys):
    run, ds = pruned
    val = [ds.root / "images" / f"{n}.png" for n in json.loads((run / "config.json").read_text())["split"]["val"]]
    clean = np.asarray(Image.open(val[0]).convert("L"), dtype=np.float64)
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in val:
        _write_png(inputs / p.name, np.asarray(Image.open(p).convert("L")))
    broken = {"blank": np.full_like(clean, 128), "inverted": 255 - clean,
              "noise": rng.uniform(0, 255, clean.shape)}
    for name, a in broken.items():
        _write_png(inputs / f"broken_{name}.png", a)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "predict", run, inputs, "--out", out, "--uncertainty", "--device", "cpu")
    assert code == 0, err
    assert "qc:" in err and "review broken_" in err
    rows = {r["case"]: r for r in csv.DictReader((out / "qc.csv").open())}
    assert set(rows) == {p.stem for p in val} | {f"broken_{n}" for n in broken}
    assert list(rows[val[0].stem]) == ["case", "volume_foreground", "uncertainty_inside", "confidence",
                                       "intensity_distance", "flag", "reasons"]
    for name in broken:
        r = rows[f"broken_{name}"]
        assert r["flag"] == "review" and "intensities unlike the training cases" in r["reasons"], r
    for p in val:  # the cases the thresholds were calibrated on: neither reason fires
        assert "intensities" not in rows[p.stem]["reasons"] and "uncertain" not in rows[p.stem]["reasons"]
    import tifffile

    for p in val:
        u = tifffile.imread(out / f"{p.stem}_uncertainty.tif")
        mask = np.asarray(Image.open(out / f"{p.stem}.png"))
        assert u.dtype == np.float32 and u.shape == mask.shape and 0 <= u.min() and u.max() <= 1
    qc = json.loads((out / "qc.json").read_text())
    chosen = json.loads((run / "prune.json").read_text())["chosen"]["mode"]
    assert qc["members"] == ("3 heads" if chosen == "accurate" else "1 head") and qc["temperature"] == json.loads((run / TRUST).read_text())["temperature"]
    # the masks are those of a plain prediction
    plain = tmp_path / "plain"
    assert run_cli(capsys, "predict", run, inputs, "--out", plain, "--device", "cpu")[0] == 0
    for p in val:
        assert np.array_equal(np.asarray(Image.open(out / f"{p.stem}.png")), np.asarray(Image.open(plain / f"{p.stem}.png")))


def test_uncertainty_on_a_volume_keeps_the_geometry(synthetic_3d, tmp_path, capsys):
    import nibabel as nib

    from unetpp.run import make_run_config, save_weights, write_run_config

    ds = open_dataset(synthetic_3d)
    torch.manual_seed(0)
    model = unetpp.create_model("unetpp", dims=3, depth=2, base_filters=4)
    run = tmp_path / "run3d"
    run.mkdir()
    write_run_config(run, make_run_config(model.config, data=ds.data_config(), train={"patch_size": [16, 32, 32]},
                                          split={"train": ds.case_names[:2], "val": ds.case_names[2:]}))
    save_weights(run / "model.safetensors", model)
    image = sorted((synthetic_3d / "imagesTr").glob("*.nii.gz"))[0]
    out = tmp_path / "out"
    code, err = run_cli(capsys, "predict", run, image, "--out", out, "--uncertainty", "--device", "cpu")
    assert code == 0, err
    assert "unflagged: the run has no trust.json" in err  # never pruned: no thresholds, said so
    name = image.name.replace("_0000.nii.gz", "")
    u, mask, src = (nib.load(str(p)) for p in (out / f"{name}_uncertainty.nii.gz", out / f"{name}.nii.gz", image))
    assert u.shape == mask.shape == src.shape and np.allclose(u.affine, src.affine)
    assert u.get_data_dtype() == np.float32 and 0 <= u.get_fdata().min() and u.get_fdata().max() <= 1
    row = next(csv.DictReader((out / "qc.csv").open()))
    assert row["flag"] == "unknown"


def test_a_damaged_trust_file_is_one_line(pruned, tmp_path):
    import shutil

    run, _ = pruned
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / TRUST).write_text(json.dumps({"temperature": -1, "thresholds": {}}))
    predictor = unetpp.load(copy)  # a plain prediction does not need it
    with pytest.raises(RunError, match="trust.json: not a valid trust file"):
        predictor.trust


def test_uncertainty_with_onnx_is_refused(pruned, tmp_path, capsys):
    run, ds = pruned
    code, err = run_cli(capsys, "predict", run, ds.root / "images", "--out", tmp_path / "o", "--uncertainty",
                        "--onnx", tmp_path / "missing.onnx")
    assert code != 0 and "--uncertainty needs the run's heads" in err
