"""A deployed model: an exported ONNX file predicts without its run folder, as the run does."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

import unetpp
from unetpp import create_model
from unetpp.data import open_dataset
from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.errors import UnetppError
from unetpp.inference.deployed import DeployedPredictor, export_run
from unetpp.inference.export import MISSING_EXTRA, export, onnx_metadata, onnx_session, with_metadata
from unetpp.inference.postprocess import write_postprocess
from unetpp.inference.predict import predict_inputs
from unetpp.run import make_run_config, save_weights, write_run_config
from helpers import cli


def make_run(path, ds, dims=2, depth=3, patch=(32,)):
    torch.manual_seed(0)
    model = create_model("unetpp", dims=dims, depth=depth, base_filters=4, in_channels=ds.channels,
                         classes=ds.classes)
    path.mkdir(parents=True)
    names = ds.case_names
    write_run_config(path, make_run_config(model.config, data=ds.data_config(), train={"patch_size": list(patch)},
                                           split={"train": names[:-2], "val": names[-2:]}))
    save_weights(path / "model.safetensors", model)
    return path


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    """A 2D PNG dataset, a run with a post-processing spec, and its fp32 fast-L2 export."""
    root = tmp_path_factory.mktemp("png")
    ds = open_dataset(write_synthetic_dataset(root / "ds", n_cases=4, size=40))
    run = make_run(root / "run", ds)
    write_postprocess(run, {"classes": {"1": {"op": "min_size", "voxels": 3}}})
    model_file = root / "l2.onnx"
    export_run(unetpp.load(run), "onnx", model_file, "fast", 2)
    return ds, run, model_file


def test_deployed_png_predicts_the_run_folders_masks_without_it(png, tmp_path, capsys):
    ds, run, model_file = png
    images = sorted((ds.root / "images").iterdir())
    reference = unetpp.load(run)
    want = {p.name: reference.predict_file(p, mode="fast", level=2) for p in images}
    want_tta = reference.predict_file(images[0], mode="fast", level=2, tta=True)
    code, _, err = cli(["predict", run, ds.root / "images", "--out", tmp_path / "torch", "--level", "2"], capsys)
    assert code == 0, err
    # the run folder goes away: only the copied file is left
    moved = shutil.copytree(run, tmp_path / "run_copy")
    deployed_file = tmp_path / "elsewhere" / "model.onnx"
    deployed_file.parent.mkdir()
    shutil.copy(model_file, deployed_file)
    shutil.rmtree(run)
    try:
        predictor = unetpp.load(deployed_file)
        assert isinstance(predictor, DeployedPredictor) and isinstance(predictor, unetpp.Predictor)
        assert (predictor.dims, predictor.in_channels, predictor.classes) == (2, 1, 1)
        assert predictor.levels == (2,) and predictor.patch_size == (32, 32)
        assert predictor.postprocess == {"classes": {"1": {"op": "min_size", "voxels": 3}}}
        assert predictor.data_config["normalization"] == ds.data_config()["normalization"]
        assert str(predictor.resolve()) == "fast L2" and predictor.device == torch.device("cpu")
        for p in images:
            labels, probs, meta = predictor.predict_file(p)
            np.testing.assert_allclose(probs, want[p.name][1], atol=1e-4)
            assert np.array_equal(labels, want[p.name][0]) and meta["shape"] == want[p.name][2]["shape"]
        np.testing.assert_allclose(predictor.predict_file(images[0], tta=True)[1], want_tta[1], atol=1e-4)
        raw = np.asarray(__import__("PIL.Image").Image.open(images[0]))
        assert np.array_equal(predictor.predict(raw), want[images[0].name][0])
        assert predictor.predict_proba(raw).shape == (1, 40, 40)
        code, _, err = cli(["predict", deployed_file, ds.root / "images", "--out", tmp_path / "onnx"], capsys)
        assert code == 0, err
        assert f"ONNX Runtime ({deployed_file}, fp32)" in err
        for p in images:
            assert (tmp_path / "onnx" / p.name).read_bytes() == (tmp_path / "torch" / p.name).read_bytes()
    finally:
        shutil.copytree(moved, run)


def test_deployed_nifti_volume_with_resampling_matches_the_run(tmp_path):
    """3D, three classes, anisotropic spacing (resampled to the target spacing and back)."""
    ds = open_dataset(write_synthetic_dataset(tmp_path / "ds", layout="nnunet", n_cases=3, size=(10, 16, 16), dims=3,
                                              classes=3, spacing=(2.0, 1.0, 1.0)))
    run = make_run(tmp_path / "run", ds, dims=3, depth=2, patch=(8, 16, 16))
    predictor = unetpp.load(run)
    model_file = tmp_path / "accurate.onnx"
    export_run(predictor, "onnx", model_file)  # prune.json absent: accurate mode
    import nibabel as nib

    source = nib.load(sorted((ds.root / "imagesTr").iterdir())[0])
    affine = source.affine.copy()
    affine[:3, 0] *= 1.5  # another spacing than the run's target: resampled there and back
    image = tmp_path / "scan_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj), affine), str(image))
    want_labels, want_probs, _ = predictor.predict_file(image)
    out_run = predict_inputs(predictor, [str(image)], tmp_path / "torch")
    shutil.rmtree(run)
    deployed = unetpp.load(model_file)
    assert deployed.levels == (0,) and str(deployed.resolve("accurate")) == "accurate"
    labels, probs, meta = deployed.predict_file(image)
    assert list(meta["grid_shape"]) != list(meta["shape"])  # resampled to the run's spacing and back
    np.testing.assert_allclose(probs, want_probs, atol=1e-4)
    assert np.array_equal(labels, want_labels) and probs.shape[0] == 3
    out = predict_inputs(deployed, [str(image)], tmp_path / "onnx")
    assert out[0].error is None and out_run[0].error is None
    a, b = nib.load(out_run[0].outputs[0]), nib.load(out[0].outputs[0])
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)


def test_deployed_refusals_are_one_line(png, tmp_path, capsys):
    ds, run, model_file = png
    image = sorted((ds.root / "images").iterdir())[0]
    # another mode/level than the file computes
    code, _, err = cli(["predict", model_file, image, "--out", tmp_path / "o", "--mode", "accurate"], capsys)
    assert code == 1 and err.strip().splitlines()[-1] == (
        f"error: --mode accurate: {model_file} computes fast mode at level 2; export another file for that")
    with pytest.raises(UnetppError, match="--level 1: .* computes fast mode at level 2"):
        unetpp.load(model_file).predict_file(image, level=1)
    # --onnx beside a model file; a model file where a run folder is needed
    code, _, err = cli(["predict", model_file, image, "--out", tmp_path / "o", "--onnx", model_file], capsys)
    assert code == 1 and "is already a model file" in err
    code, _, err = cli(["evaluate", model_file, ds.root], capsys)
    assert code == 1 and err.strip() == f"error: {model_file}: a model file; this command takes a run folder " \
                                        "(only 'predict' runs a model file)"
    # a 3D input for a 2D export: refused before running, naming the file
    vol = tmp_path / "v.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), str(vol))
    out = predict_inputs(unetpp.load(model_file), [str(vol)], tmp_path / "o")
    assert out[0].error == f"{vol}: a 3D image; the model was trained on 2D data"
    # files that are not ours, lack the deployment metadata, or garble it
    data = model_file.read_bytes()
    meta = onnx_metadata(onnx_session(data))
    cases = {"garbage.onnx": (b"not an onnx file", "not a valid ONNX file"),
             "foreign.onnx": (with_metadata(data, {}), "not exported by 'unetpp export'"),
             "bad-json.onnx": (with_metadata(data, {**meta, "data": "{oops"}),
                               "unetpp.data metadata is not valid JSON"),
             "bad-data.onnx": (with_metadata(data, {**meta, "data": json.dumps({"channels": 3})}),
                               "unetpp metadata: data.channels is 3, the model's is 1"),
             "bad-patch.onnx": (with_metadata(data, {**meta, "patch_size": "[0]"}), "unetpp metadata: patch_size"),
             "version.onnx": (with_metadata(data, {**meta, "format_version": "9"}), "metadata version 9"),
             "bad-mode.onnx": (with_metadata(data, {**meta, "mode": "fast", "level": "x"}), "invalid unetpp mode"),
             "bad-window.onnx": (with_metadata(data, {**meta, "window": json.dumps({"policy": "huge"})}),
                                 "unetpp metadata: window: window must be one of patch, large")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        code, _, err = cli(["predict", path, image, "--out", tmp_path / "o"], capsys)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and message in lines[0] and str(path) in lines[0], (name, err)
    code, _, err = cli(["predict", tmp_path / "missing.onnx", image, "--out", tmp_path / "o"], capsys)
    assert code == 1 and err.strip() == f"error: {tmp_path / 'missing.onnx'}: file not found"


def test_bare_export_needs_a_run_for_deployment(tmp_path):
    """``export(model, ...)`` (no run) still runs with ``predict RUN --onnx``; as a deployed
    model it says what is missing."""
    torch.manual_seed(0)
    model = create_model("unetpp", dims=2, depth=2, base_filters=4).eval()
    path = tmp_path / "bare.onnx"
    export(model, "onnx", path, mode="fast", level=1)
    meta = onnx_metadata(onnx_session(path))
    assert meta["format_version"] == "1" and "data" not in meta
    with pytest.raises(UnetppError, match=r"no unetpp.data metadata; re-export it with 'unetpp export RUN"):
        unetpp.load(path)


def test_missing_export_extra_is_one_line(png, tmp_path, monkeypatch, capsys):
    ds, run, model_file = png
    for name in ("onnxruntime", "onnxruntime.quantization"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    message = MISSING_EXTRA.format("onnxruntime")
    assert message == "exporting/running ONNX needs onnxruntime: pip install 'unetpp[export]'"
    with pytest.raises(UnetppError) as e:
        unetpp.load(model_file)
    assert e.value.problems == [message]
    code, _, err = cli(["predict", model_file, ds.root / "images", "--out", tmp_path / "o"], capsys)
    assert code == 1 and err.strip() == f"error: {message}"
    code, _, err = cli(["export", run, "--format", "onnx", "--out", tmp_path / "m.onnx"], capsys)
    assert code == 1 and err.strip().splitlines()[-1] == f"error: {message}"
    assert not (tmp_path / "m.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UnetppError, match=r"exporting/running ONNX needs onnx: pip install 'unetpp\[export\]'"):
        export(unetpp.load(run).model, "onnx", tmp_path / "m.onnx")
    # TorchScript needs no extra
    info = export(unetpp.load(run).model, "torchscript", tmp_path / "m.ts", mode="fast", level=1)
    assert info["max_abs_diff"] <= 1e-4
