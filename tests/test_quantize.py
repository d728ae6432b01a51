"""``export --quantize int8|fp16``: calibrated on the run's validation cases, scored against
fp32 before writing, the IoUs in the file; refused (nothing written) beyond the tolerance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import unetpp
from unetpp.data import open_dataset
from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.errors import UnetppError
from unetpp.inference.deployed import export_run
from unetpp.inference.export import onnx_metadata, onnx_session
from unetpp.inference.quantize import after_probabilities, calibration_patches, int8_instructions
from helpers import cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny UNet++ trained for a few seconds (IoU ~0.85 on its validation cases), so that
    fp32 and int8 have masks worth comparing."""
    from unetpp.training import TrainConfig, train

    root = tmp_path_factory.mktemp("q")
    ds = open_dataset(write_synthetic_dataset(root / "ds", n_cases=8, size=40))
    run = root / "run"
    train(TrainConfig(data=str(ds.root), out=str(run), depth=3, base_filters=4, epochs=6, steps_per_epoch=8,
                      batch_size=4, patch_size=[32], val_fraction=0.25, lr=3e-3, patience=None, val_every=6,
                      progress="none", tensorboard=False))
    return ds, run, root


def pytorch_probs(run, mode, level, x):
    model = unetpp.load(run).model
    with torch.no_grad():
        if mode == "fast":
            return torch.sigmoid(model.prune(level)(x)).numpy()
        return torch.stack([torch.sigmoid(v) for v in model(x).values()]).mean(0).numpy()


def test_int8_export_is_close_to_fp32_and_records_the_ious(setup, capsys):
    ds, run, root = setup
    out = root / "l2-int8.onnx"
    code, _, err = cli(["export", run, "--format", "onnx", "--level", "2", "--quantize", "int8",
                        "--tolerance", "100", "--out", out], capsys)
    assert code == 0, err
    assert "int8: IoU " in err and " on 2 val case(s) " in err
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = onnx_metadata(onnx_session(out))
    assert meta["precision"] == "int8" and meta["mode"] == "fast" and meta["level"] == "2"
    record = json.loads(meta["quantization"])
    assert record["cases"] == 2 and record["split"] == "val" and 0 < record["calibration_patches"] <= 64
    assert record["iou_fp32"] > 0.5 and abs(record["iou_int8"] - record["iou_fp32"]) < 0.05
    assert record["loss_points"] == pytest.approx((record["iou_fp32"] - record["iou_int8"]) * 100)
    val = unetpp.load(run).config["split"]["val"]
    assert [c["case"] for c in record["per_case"]] == val
    assert record["int8_instructions"] == int8_instructions()
    session = onnx_session(out)
    name = session.get_inputs()[0].name
    images = [torch.as_tensor(ds.load_case(n).image) for n in ds.case_names]
    # dynamic batch and spatial sizes survive quantization; on images like the calibration's,
    # int8 probabilities are close to PyTorch's
    for x in (images[0][None, :, :32, :32], torch.stack(images[1:3])[:, :, 3:, :37], torch.stack(images[3:]),):
        got = session.run(None, {name: x.numpy()})[0]
        want = pytorch_probs(run, "fast", 2, x)
        assert got.shape == want.shape and np.abs(got - want).mean() < 0.02, np.abs(got - want).mean()
        assert ((got > 0.5) == (want > 0.5)).mean() > 0.98
    predictor = unetpp.load(out)  # a deployed int8 model: same API
    assert predictor.precision_name == "int8" and predictor.quantization["iou_int8"] == record["iou_int8"]
    image = sorted((ds.root / "images").iterdir())[0]
    labels, probs, _ = predictor.predict_file(image)
    ref_labels, ref, _ = unetpp.load(run).predict_file(image, level=2)
    assert labels.shape == (40, 40) and np.abs(probs - ref).max() < 0.1
    assert (labels == ref_labels).mean() > 0.98


def test_impossible_tolerance_refuses_and_writes_nothing(setup, capsys):
    ds, run, root = setup
    out = root / "refused.onnx"
    code, _, err = cli(["export", run, "--format", "onnx", "--quantize", "int8", "--tolerance", "-1",
                        "--out", out], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, err
    assert errors[0].startswith(f"error: {out}: not written; int8 IoU ") and " against fp32 " in errors[0]
    assert errors[0].endswith("more than --tolerance -1")
    assert not out.exists() and not list(root.glob("refused*"))


def test_accurate_int8_keeps_probabilities_float(setup):
    """Accurate mode: the sigmoids and the mean of heads stay float32 (nothing quantized after them)."""
    ds, run, root = setup
    out = root / "accurate-int8.onnx"
    info = export_run(unetpp.load(run), "onnx", out, "accurate", quantize="int8", calibration=str(ds.root),
                      tolerance=100)
    assert info["quantization"]["precision"] == "int8"
    import onnx

    proto = onnx.load(str(out))
    after = set(after_probabilities(proto))
    assert sum(n.op_type == "Sigmoid" for n in proto.graph.node) == 3
    assert not [n for n in proto.graph.node if n.name in after and n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    x = torch.stack([torch.as_tensor(ds.load_case(n).image) for n in ds.case_names])[:, :, :36, 2:]
    session = onnx_session(out)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    want = pytorch_probs(run, "accurate", None, x)
    assert np.abs(got - want).mean() < 0.02 and ((got > 0.5) == (want > 0.5)).mean() > 0.98


def test_fp16_export_is_close_to_fp32(setup, capsys):
    ds, run, root = setup
    out = root / "fp16.onnx"
    code, _, err = cli(["export", run, "--format", "onnx", "--level", "1", "--quantize", "fp16",
                        "--tolerance", "100", "--out", out], capsys)
    assert code == 0, err
    meta = onnx_metadata(onnx_session(out))
    assert meta["precision"] == "fp16" and "iou_fp16" in json.loads(meta["quantization"])
    x = torch.randn(1, 1, 33, 47)
    session = onnx_session(out)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, pytorch_probs(run, "fast", 1, x), atol=1e-2)


def test_quantize_option_refusals(setup, tmp_path, capsys):
    ds, run, root = setup
    for args, message in (
            (["--format", "torchscript", "--quantize", "int8"], "error: --quantize int8 is for --format onnx"),
            (["--format", "onnx", "--quantize", "int4"], "error: --quantize must be one of int8, fp16, got 'int4'"),
            (["--format", "onnx", "--tolerance", "1"], "error: --calibration and --tolerance go with --quantize"),
            (["--format", "onnx", "--quantize", "int8", "--calibration", tmp_path / "nothing"],
             f"error: calibration data {tmp_path / 'nothing'}: ")):
        code, _, err = cli(["export", run, *args, "--out", tmp_path / "m.onnx"], capsys)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors) == 1 and errors[0].startswith(message), (args, err)
    assert not (tmp_path / "m.onnx").exists()
    # a run whose dataset is gone says to pass --calibration
    cfg = json.loads((run / "config.json").read_text())
    moved = tmp_path / "run"
    moved.mkdir()
    (moved / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    cfg["data"]["root"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnetppError, match=r"calibration data .*gone: .*; pass --calibration DATA$"):
        export_run(unetpp.load(moved), "onnx", tmp_path / "m.onnx", quantize="int8")
    assert not (tmp_path / "m.onnx").exists()


def test_calibration_patches_tile_images_and_volume_slices():
    img = torch.arange(1 * 40 * 50, dtype=torch.float32).reshape(1, 40, 50)
    patches = calibration_patches([img], (32, 32), dims=2)
    assert [p.shape for p in patches] == [(1, 1, 32, 32)] * 4  # starts 0 and 8 / 0 and 18
    assert patches[-1][0, 0, -1, -1] == img[0, -1, -1]  # the last window is flush with the end
    small = calibration_patches([torch.zeros(1, 20, 24)], (32, 32), dims=2)
    assert [p.shape for p in small] == [(1, 1, 20, 24)]
    volume = torch.zeros(2, 6, 32, 32)  # a 2D model on a volume: its slices
    assert [p.shape for p in calibration_patches([volume], (32, 32), dims=2)] == [(1, 2, 32, 32)] * 6
    many = calibration_patches([torch.zeros(1, 8, 64, 64)] * 10, (8, 32, 32), dims=3, limit=7)
    assert len(many) == 7 and many[0].shape == (1, 1, 8, 32, 32)
