"""``unetpp prune``: levels scored on validation cases, params/FLOPs/latency, the choice, prune.json/png."""

from __future__ import annotations

import json

import pytest
import torch

import unetpp
from unetpp import create_model
from unetpp.cli import main
from unetpp.data import open_dataset
from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.inference.prune import choose
from unetpp.run import make_run_config, save_weights, write_run_config


def trained_run(path, ds, steps=10):
    """A tiny UNet++ with deep supervision, fitted for a few steps on the training cases."""
    torch.manual_seed(0)
    model = create_model("unetpp", depth=3, base_filters=4)
    names = ds.case_names
    x = torch.stack([torch.from_numpy(ds.load_case(n).image) for n in names[:2]])
    y = torch.stack([torch.from_numpy(ds.load_case(n).label) for n in names[:2]]).float()[:, None]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(v, y) for v in model(x).values())
        loss.backward()
        opt.step()
    path.mkdir(parents=True)
    write_run_config(path, make_run_config(model.config, data=ds.data_config(), train={"patch_size": [64]},
                                           split={"train": names[:2], "val": names[2:]}))
    save_weights(path / "model.safetensors", model)
    return path


def pruned_run(tmp, steps=30):
    """``(run, dataset)``: a tiny trained run on 6 synthetic cases (2 train, 4 val), pruned by the CLI."""
    ds = open_dataset(write_synthetic_dataset(tmp / "ds", n_cases=6, size=40))
    run = trained_run(tmp / "run", ds, steps=steps)
    try:
        main(["prune", str(run), str(ds.root), "--repeats", "1", "--device", "cpu"])
    except SystemExit as e:
        assert e.code in (None, 0)
    return run, ds


def test_prune_writes_json_and_png_and_predict_uses_the_choice(tmp_path, capsys):
    ds = open_dataset(write_synthetic_dataset(tmp_path / "ds", n_cases=4, size=40))
    run = trained_run(tmp_path / "run", ds)
    try:
        main(["prune", str(run), str(ds.root), "--repeats", "3", "--device", "cpu"])
    except SystemExit as e:
        assert e.code == 0, capsys.readouterr().err
    result = json.loads((run / "prune.json").read_text())
    assert set(result["levels"]) == {"1", "2", "3"}
    assert result["cases"] == 2 and result["split"] == "val" and result["tolerance"] == 0.5
    assert result["input_shape"] == [1, 1, 64, 64]  # latency on one training-patch-sized input
    entries = [result["levels"][k] for k in ("1", "2", "3")]
    for e in entries + [result["accurate"]]:
        assert set(e) >= {"iou", "dice", "params", "flops", "latency_ms"}
        assert 0 <= e["iou"] <= 1 and e["latency_ms"] > 0
    params = [e["params"] for e in entries]
    flops = [e["flops"] for e in entries]
    assert params == sorted(set(params)) and flops == sorted(set(flops))  # strictly increasing in L
    assert params[-1] < result["accurate"]["params"]  # accurate keeps every head
    model = create_model("unetpp", depth=3, base_filters=4)
    assert params == [unetpp.count_parameters(model.prune(lv)) for lv in (1, 2, 3)]
    # L1 runs ~1/6 of L3's FLOPs; timing on a shared machine is noisy, so only loosely
    assert entries[0]["latency_ms"] < 1.5 * entries[2]["latency_ms"]
    best = max(e["iou"] for e in entries + [result["accurate"]])
    chosen = result["chosen"]
    if chosen["mode"] == "fast":
        level = chosen["level"]
        assert best * 100 - result["levels"][str(level)]["iou"] * 100 <= 0.5 + 1e-9
        assert all(best * 100 - result["levels"][str(lv)]["iou"] * 100 > 0.5 for lv in range(1, level))
    assert (run / "prune.png").read_bytes()[:4] == b"\x89PNG"
    predictor = unetpp.load(run)
    assert predictor.default_mode() == (chosen["mode"], chosen["level"])


def test_choose_smallest_level_within_tolerance_else_accurate():
    def s(*ious, acc):
        out = {str(i + 1): {"iou": v} for i, v in enumerate(ious)}
        out["accurate"] = {"iou": acc}
        return out

    assert choose(s(0.70, 0.795, 0.80, 0.79, acc=0.80), 0.5) == {"mode": "fast", "level": 2}
    assert choose(s(0.70, 0.795, 0.80, 0.79, acc=0.80), 0.0) == {"mode": "fast", "level": 3}
    assert choose(s(0.70, 0.75, 0.78, 0.79, acc=0.80), 0.5) == {"mode": "accurate", "level": None}
    assert choose(s(0.70, 0.75, 0.78, 0.79, acc=0.80), 10.0) == {"mode": "fast", "level": 1}


def test_prune_refuses_bad_tolerance(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", str(tmp_path), str(tmp_path), "--tolerance", "-1"])
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == "error: --tolerance must be between 0 and 100 IoU points, got -1.0"


def test_prune_without_deep_supervision_measures_the_one_head(tmp_path):
    from unetpp.inference.prune import prune

    ds = open_dataset(write_synthetic_dataset(tmp_path / "ds", n_cases=2, size=24))
    model = create_model("unetpp", depth=2, base_filters=4, deep_supervision=False)
    run = tmp_path / "run"
    run.mkdir()
    write_run_config(run, make_run_config(model.config, data=ds.data_config(), train={"patch_size": [32]}))
    save_weights(run / "model.safetensors", model)
    result = prune(unetpp.load(run), ds, repeats=1, warmup=0)
    assert list(result["levels"]) == ["2"] and result["chosen"] == {"mode": "fast", "level": 2}
    assert result["split"] == "all" and result["cases"] == 2
    assert json.loads((run / "prune.json").read_text())["chosen"] == {"mode": "fast", "level": 2}
