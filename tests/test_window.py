"""The inference window (patch or large), chosen by prune, used by predict, evaluate and export."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from monai.inferers.utils import _get_scan_interval
from monai.data.utils import dense_patch_slices

import unetpp
from unetpp import create_model
from unetpp.data import open_dataset
from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.errors import RunError, UnetppError
from unetpp.inference.engine import predict_with
from unetpp.inference.predictor import Predictor
from unetpp.inference.window import Window

from helpers import cli
from test_prune import trained_run


def monai_windows(spatial, window, overlap):
    """The windows MONAI's sliding_window_inference cuts ``spatial`` into for this plan."""
    interval = _get_scan_interval(spatial, window, len(spatial), overlap)
    return dense_patch_slices(spatial, window, interval)


def test_patch_policy_is_the_training_patch_with_its_overlap():
    w = Window("patch", (96, 96), overlap=0.5, multiple=(16, 16))
    assert w.plan((512, 512)) == ((96, 96), (0.5, 0.5))
    assert w.plan((50, 300)) == ((50, 96), (0.5, 0.5))  # never larger than the image


def test_large_policy_takes_the_whole_image_when_it_fits():
    w = Window("large", (96, 96), multiple=(16, 16), filters=8)
    window, overlap = w.plan((512, 512))
    assert window == (512, 512) and len(monai_windows((512, 512), window, overlap)) == 1


@pytest.mark.parametrize("seed", range(12))
def test_large_windows_fit_the_budget_cover_the_image_and_compute_less(seed):
    rng = random.Random(seed)
    dims = rng.choice((2, 3))
    multiple = rng.choice((16, 32, 64))
    # patches that are not multiples of the padding too (a --patch-size of 100, depth 6 at 96)
    patch = tuple(rng.choice((32, 40, 48, 56, 64, 96, 100)) for _ in range(dims))
    spatial = tuple(rng.randint(p // 2, p * 7) for p in patch)
    filters = rng.choice((8, 32))
    budget = rng.choice((2 ** 20, 2 ** 22))
    w = Window("large", patch, overlap=0.5, multiple=(multiple,) * dims, budget=budget, filters=filters)
    window, overlap = w.plan(spatial)
    slices = monai_windows(spatial, window, overlap)
    # never below the patch (or the image), a multiple of the padding unless it is the image or the patch
    for s, p, win in zip(spatial, patch, window):
        assert min(s, p) <= win <= s
        assert win in (s, min(s, p)) or win % multiple == 0
    # within the budget unless the patch itself is over it
    assert math.prod(window) <= max(budget // filters, math.prod(min(p, s) for p, s in zip(patch, spatial)))
    covered = np.zeros(spatial, dtype=bool)
    for sl in slices:
        covered[tuple(sl)] = True
    assert covered.all()
    # per axis: the fewest windows of that size that keep the patch policy's seam between them
    for axis, (s, p, win) in enumerate(zip(spatial, patch, window)):
        starts = sorted({sl[axis].start for sl in slices})
        seam = int(min(p, s) * 0.5)
        assert len(starts) == (1 if win >= s else -(-(s - seam) // (win - seam)))
        assert all(b - a <= win - seam for a, b in zip(starts, starts[1:]))
    patch_plan = Window("patch", patch, overlap=0.5).plan(spatial)
    patch_windows = monai_windows(spatial, *patch_plan)
    assert len(slices) <= len(patch_windows)
    assert len(slices) * math.prod(window) <= len(patch_windows) * math.prod(patch_plan[0])


def test_large_windows_are_never_more_than_patch_windows_when_rounding_cannot_shrink_them():
    """A 96³ patch padded to multiples of 64: the window stays at 128 for several tile counts."""
    w = Window("large", (96, 96, 96), multiple=(64, 64, 64), filters=32)
    window, overlap = w.plan((143, 138, 468))
    assert len(monai_windows((143, 138, 468), window, overlap)) <= len(
        monai_windows((143, 138, 468), *Window("patch", (96, 96, 96)).plan((143, 138, 468))))


def test_window_refuses_an_unknown_policy():
    with pytest.raises(ValueError, match="window must be one of patch, large"):
        Window("huge", (64, 64))


def counting(model):
    calls = []

    def network(x):
        calls.append(tuple(x.shape))
        with torch.no_grad():
            return {4: torch.sigmoid(model(x))}

    return network, calls


def test_large_window_runs_the_image_once_and_equals_a_direct_forward():
    torch.manual_seed(0)
    model = create_model("unet", base_filters=4).eval()
    image = torch.randn(1, 80, 112)
    network, calls = counting(model)
    kwargs = dict(dims=2, in_channels=1, levels=(4,))
    large = predict_with(network, image, window=Window("large", (32, 32), multiple=(16, 16), filters=4), **kwargs)
    assert calls == [(1, 1, 80, 112)]
    with torch.no_grad():
        assert torch.equal(large[4], torch.sigmoid(model(image[None]))[0])
    calls.clear()
    patch = predict_with(network, image, window=Window("patch", (32, 32)), **kwargs)
    assert sum(c[0] for c in calls) == len(monai_windows((80, 112), (32, 32), (0.5, 0.5))) > 1
    assert patch[4].shape == large[4].shape


def test_large_window_out_of_gpu_memory_falls_back_to_patch_windows(caplog):
    """Testable on CPU: the network raises torch.cuda.OutOfMemoryError on inputs over 32²."""
    model = create_model("unet", base_filters=4).eval()
    seen = []

    def network(x):
        seen.append(tuple(x.shape[2:]))
        if x.shape[-1] * x.shape[-2] > 32 * 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        with torch.no_grad():
            return {4: torch.sigmoid(model(x))}

    out = predict_with(network, torch.randn(1, 64, 64), dims=2, in_channels=1, levels=(4,),
                       window=Window("large", (32, 32), multiple=(16, 16), filters=4))
    assert out[4].shape == (1, 64, 64) and seen[0] == (64, 64) and set(seen[1:]) == {(32, 32)}
    assert "out of GPU memory with large windows: patch windows used instead" in caplog.text


@pytest.fixture(scope="module")
def small_patch_run(tmp_path_factory):
    """A tiny run on 40² cases trained with a 16² patch, so that large windows differ."""
    tmp = tmp_path_factory.mktemp("window")
    ds = open_dataset(write_synthetic_dataset(tmp / "ds", n_cases=4, size=40))
    run = trained_run(tmp / "run", ds)
    config = json.loads((run / "config.json").read_text())
    config["train"]["patch_size"] = [16]
    (run / "config.json").write_text(json.dumps(config))
    return run, ds


def test_prune_chooses_large_windows_within_tolerance_and_predict_uses_them(small_patch_run, tmp_path, capsys):
    run, ds = small_patch_run
    code, _, err = cli(["prune", str(run), str(ds.root), "--repeats", "3", "--tolerance", "100",
                        "--device", "cpu"], capsys)
    assert code == 0, err
    window = json.loads((run / "prune.json").read_text())["window"]
    assert window["chosen"] == "large" and window["cases_larger"] == 2
    for policy in ("patch", "large"):
        assert 0 <= window[policy]["iou"] <= 1 and window[policy]["ms"] > 0
    assert "window: large" in err
    predictor = unetpp.load(run)
    assert predictor.window.policy == "large" and predictor.window.multiple == (8, 8)
    assert unetpp.load(run, window="patch").window.policy == "patch"  # the caller's word wins
    image = ds.load_case(ds.case_names[0]).image
    whole = predictor.predict(image, normalised=True)
    assert whole.shape == (40, 40)
    # prune.json from before windows were chosen: patch windows; a garbled window entry
    data = json.loads((run / "prune.json").read_text())
    try:
        (run / "prune.json").write_text(json.dumps({k: v for k, v in data.items() if k != "window"}))
        assert unetpp.load(run).window.policy == "patch"
        (run / "prune.json").write_text(json.dumps({**data, "window": {"chosen": "huge"}}))
        with pytest.raises(RunError, match=r"prune.json: \"window\" must have \"chosen\": one of patch, large"):
            unetpp.load(run)
    finally:
        (run / "prune.json").write_text(json.dumps(data))


def test_prune_keeps_patch_windows_when_large_ones_lose_more_than_the_tolerance(small_patch_run, tmp_path,
                                                                                 monkeypatch):
    import shutil

    from unetpp.inference import prune as prune_module

    src, ds = small_patch_run
    run = shutil.copytree(src, tmp_path / "run")
    real = prune_module.score_modes

    def worse_with_large_windows(predictor, *args, **kwargs):
        scored = real(predictor, *args, **kwargs)
        if predictor.window.policy == "large":  # 10 IoU points below what large windows gave
            scored = {m: [{**c, "iou": c["iou"] - 0.1} for c in cases] for m, cases in scored.items()}
        return scored

    monkeypatch.setattr(prune_module, "score_modes", worse_with_large_windows)
    kept = prune_module.prune(unetpp.load(run), ds, tolerance=0.5, repeats=1)["window"]
    assert kept["chosen"] == "patch" and kept["large"]["iou"] < kept["patch"]["iou"] - 0.05
    assert unetpp.load(run).window.policy == "patch"
    taken = prune_module.prune(unetpp.load(run), ds, tolerance=15, repeats=1)["window"]
    assert taken["chosen"] == "large" and unetpp.load(run).window.policy == "large"


def test_prune_keeps_patch_windows_without_a_case_larger_than_the_patch(tmp_path, capsys):
    ds = open_dataset(write_synthetic_dataset(tmp_path / "ds", n_cases=4, size=40))
    run = trained_run(tmp_path / "run", ds)  # patch 64 > the 40² cases
    code, _, err = cli(["prune", str(run), str(ds.root), "--repeats", "3", "--tolerance", "100",
                        "--device", "cpu"], capsys)
    assert code == 0, err
    window = json.loads((run / "prune.json").read_text())["window"]
    assert window["chosen"] == "patch" and window["cases_larger"] == 0
    assert "no validation case is larger than the patch" in err


def test_cli_window_option(small_patch_run, tmp_path, capsys):
    run, ds = small_patch_run
    code, _, err = cli(["predict", str(run), str(ds.root / "images"), "--out", str(tmp_path / "out"),
                        "--window", "huge"], capsys)
    assert code != 0 and "--window must be one of patch, large, got 'huge'" in err
    code, _, err = cli(["predict", str(run), str(ds.root / "images"), "--out", str(tmp_path / "out"),
                        "--window", "large"], capsys)
    assert code == 0, err
    assert "large windows" in err and len(list((tmp_path / "out").iterdir())) >= 4
    code, _, err = cli(["evaluate", run, ds.root, "--window", "large", "--json", tmp_path / "eval.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "eval.json").read_text())["window"] == "large"
    code, _, err = cli(["evaluate", "--pred", str(tmp_path / "out"), "--ref", str(ds.root / "masks"),
                        "--window", "large"], capsys)
    assert code != 0 and "--window apply to RUN DATA" in err


def test_predictor_window_defaults_to_patch_without_a_run():
    model = create_model("unetpp", depth=3, base_filters=4)
    predictor = Predictor(model, {"train": {"patch_size": [32, 32]}})
    assert predictor.window == Window("patch", (32, 32), 0.5, multiple=(8, 8), filters=4)
    with pytest.raises(UnetppError, match="--window must be one of patch, large, got .whole."):
        Predictor(model, {"train": {"patch_size": [32, 32]}}, window="whole")


def test_export_carries_the_window_and_the_deployed_file_tiles_alike(small_patch_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from unetpp.inference.deployed import export_run
    from unetpp.inference.export import onnx_metadata, onnx_session

    run, ds = small_patch_run
    predictor = unetpp.load(run, window="large")
    model_file = tmp_path / "large.onnx"
    export_run(predictor, "onnx", model_file, "fast", 2)
    stored = json.loads(onnx_metadata(onnx_session(model_file.read_bytes()))["window"])
    assert stored == {"policy": "large", "multiple": [8, 8], "filters": 4}
    deployed = unetpp.load(model_file)
    assert deployed.window == predictor.window
    assert unetpp.load(model_file, window="patch").window.policy == "patch"
    image = ds.load_case(ds.case_names[-1]).image
    np.testing.assert_allclose(deployed.predict_proba(image, normalised=True),
                               predictor.predict_proba(image, mode="fast", level=2, normalised=True), atol=1e-4)


def test_a_2d_model_on_a_volume_runs_as_many_whole_slices_per_pass_as_the_budget_holds():
    model = create_model("unet", base_filters=4).eval()
    network, calls = counting(model)
    volume = torch.randn(1, 10, 32, 32)  # 10 slices of 32²
    window = Window("large", (16, 16), multiple=(16, 16), filters=4, budget=4 * 3 * 32 * 32)
    out = predict_with(network, volume, dims=2, in_channels=1, levels=(4,), batch_size=8, window=window)
    assert out[4].shape == (1, 10, 32, 32)
    assert calls == [(3, 1, 32, 32)] * 3 + [(1, 1, 32, 32)]  # 3 whole slices fit the budget


def test_quantization_scores_with_the_windows_the_file_will_use():
    from unetpp.inference.quantize import score

    model = create_model("unet", base_filters=4).eval()
    network, calls = counting(model)
    image = torch.randn(1, 48, 48)
    label = np.zeros((48, 48), dtype=np.int64)
    kw = dict(dims=2, in_channels=1, classes=1, patch_size=(16, 16))
    score(lambda x: {0: network(x)[4]}, [("c", image, label)], window=Window("large", (16, 16), filters=4), **kw)
    assert calls == [(1, 1, 48, 48)]
    calls.clear()
    score(lambda x: {0: network(x)[4]}, [("c", image, label)], **kw)
    assert len(calls) > 1
