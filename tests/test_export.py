"""``unetpp export``: ONNX and TorchScript match PyTorch on other batch and spatial sizes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

import unetpp
from unetpp import create_model
from unetpp.cli import main
from unetpp.data import open_dataset
from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.errors import UnetppError
from unetpp.inference.export import ModeNetwork, export, onnx_metadata, onnx_session
from unetpp.run import make_run_config, save_weights, write_run_config


def tiny(dims=2, depth=3, **kw):
    torch.manual_seed(0)
    return create_model("unetpp", dims=dims, depth=depth, base_filters=4, **kw).eval()


def reference(model, mode, level, x):
    with torch.no_grad():
        if mode == "fast":
            return torch.sigmoid(model.prune(level)(x)).numpy()
        return torch.stack([torch.sigmoid(v) for v in model(x).values()]).mean(0).numpy()


@pytest.mark.parametrize("dims, mode, level", [(2, "fast", 2), (2, "accurate", None), (3, "fast", 1)])
def test_torchscript_matches_pytorch_on_dynamic_sizes(tmp_path, dims, mode, level):
    if dims == 2:
        model, shapes = tiny(), [(2, 1, 37, 45), (1, 1, 16, 64)]
    else:
        model, shapes = tiny(dims=3, depth=2), [(1, 1, 9, 14, 11), (2, 1, 4, 8, 12)]
    path = tmp_path / "model.ts"
    info = export(model, "torchscript", path, mode=mode, level=level)
    assert info["max_abs_diff"] <= 1e-4
    extra = {"unetpp.json": ""}
    loaded = torch.jit.load(io.BytesIO(path.read_bytes()), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["unetpp.json"])["mode"] == mode
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            np.testing.assert_allclose(loaded(x).numpy(), reference(model, mode, level, x), atol=1e-4)


def test_export_refuses_to_write_on_mismatch(tmp_path):
    model = tiny()
    with pytest.raises(UnetppError, match="not written; the exported torchscript model differs"):
        export(model, "torchscript", tmp_path / "bad.ts", mode="fast", level=1, atol=-1.0)
    assert not (tmp_path / "bad.ts").exists()
    with pytest.raises(UnetppError, match="--format must be one of onnx, torchscript"):
        export(model, "tflite", tmp_path / "m.tflite")


def test_multiclass_wrapper_is_softmax_mean():
    model = tiny(classes=3)
    x = torch.randn(1, 1, 20, 20)
    with torch.no_grad():
        out = ModeNetwork(model, "accurate", None)(x)
        want = torch.stack([torch.softmax(v, 1) for v in model(x).values()]).mean(0)
    torch.testing.assert_close(out, want)


def test_onnx_export_matches_pytorch_and_predict_runs_it(tmp_path, capsys):
    """One ONNX export (the slow part): accurate mode through the CLI, checked on other batch and
    spatial sizes, then ``predict --onnx`` gives what PyTorch gives."""
    ds = open_dataset(write_synthetic_dataset(tmp_path / "ds", n_cases=2, size=40))
    model = tiny()
    run = tmp_path / "run"
    run.mkdir()
    write_run_config(run, make_run_config(model.config, data=ds.data_config(), train={"patch_size": [32]}))
    save_weights(run / "model.safetensors", model)
    onnx_file = tmp_path / "accurate.onnx"
    try:
        main(["export", str(run), "--format", "onnx", "--out", str(onnx_file)])
    except SystemExit as e:
        assert e.code == 0, capsys.readouterr().err
    import onnx

    proto = onnx.load(str(onnx_file))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = onnx_session(onnx_file)
    meta = onnx_metadata(session)
    assert meta["mode"] == "accurate" and meta["output"] == "probabilities"
    # a run's export carries what prediction needs without the run folder (test_deployed.py)
    assert meta["format_version"] == "1" and meta["precision"] == "fp32" and "postprocess" not in meta
    assert json.loads(meta["data"]) == json.loads(json.dumps(ds.data_config()))
    assert json.loads(meta["patch_size"]) == [32, 32] and json.loads(meta["model"]) == model.config.to_dict()
    for shape in [(1, 1, 40, 56), (3, 1, 27, 33), (2, 1, 8, 8)]:
        x = torch.randn(shape)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, reference(model, "accurate", None, x), atol=1e-4)
    images = ds.root / "images"
    for args, out in (([], "torch"), (["--onnx", str(onnx_file)], "onnx")):
        try:
            main(["predict", str(run), str(images), "--out", str(tmp_path / out), "--probabilities", *args])
        except SystemExit as e:
            assert e.code == 0, capsys.readouterr().err
    import tifffile

    for name in ds.case_names:  # the sliding window (patch 32 on 40x40) through both runtimes
        a = tifffile.imread(tmp_path / "torch" / f"{name}_probs.tif")
        b = tifffile.imread(tmp_path / "onnx" / f"{name}_probs.tif")
        np.testing.assert_allclose(a, b, atol=1e-4)
        assert (tmp_path / "onnx" / f"{name}.png").read_bytes() == (tmp_path / "torch" / f"{name}.png").read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["predict", str(run), str(images), "--out", str(tmp_path / "x"), "--onnx", str(onnx_file),
              "--mode", "fast", "--level", "2"])
    assert e.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --mode fast --level 2: {onnx_file} computes accurate mode; export another file for that")
