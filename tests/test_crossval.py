"""Cross-validation: every fold, out-of-fold scores, post-processing, the folds as an ensemble."""

from __future__ import annotations

import json

import numpy as np
import pytest

import unetpp
from unetpp.data import open_dataset
from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.experiment.crossval import cross_validate
from unetpp.inference.ensemble import Ensemble
from unetpp.inference.postprocess import apply, choose
from unetpp.training import TrainConfig

TINY = dict(base_filters=4, depth=2, patch_size=[32], batch_size=2, epochs=1, steps_per_epoch=2, lr=3e-3,
            augment=False, progress="none", tensorboard=False, device="cpu")


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    data = write_synthetic_dataset(tmp_path_factory.mktemp("cvdata") / "d", n_cases=6, size=32, seed=3)
    out = tmp_path_factory.mktemp("cv") / "runs"
    cross_validate(TrainConfig(data=str(data), out=str(out), folds=3, **TINY))
    return data, out


def test_every_case_has_exactly_one_out_of_fold_prediction(cv):
    data, out = cv
    result = json.loads((out / "cv.json").read_text())
    names = [row["case"] for row in result["cases"]]
    assert sorted(names) == open_dataset(data).case_names and len(set(names)) == len(names)
    splits = json.loads((out / "splits_final.json").read_text())
    for k, split in enumerate(splits):  # predicted by the one model that did not train on it
        assert {r["case"] for r in result["cases"] if r["fold"] == k} == set(split["val"])
        assert not set(split["val"]) & set(split["train"])
    assert {"dice", "iou", "hd95", "nsd"} <= set(result["summary"])
    assert len(list((out / "oof").glob("*.npz"))) == 6


def test_the_folds_are_an_ensemble(cv, tmp_path):
    data, out = cv
    ensemble = unetpp.load(out)
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    ds = open_dataset(data)
    image = ds.load_case(ds.case_names[0]).image
    probs = ensemble.predict_tensor(__import__("torch").as_tensor(image))
    mean = np.mean([m.predict_tensor(__import__("torch").as_tensor(image)).numpy() for m in ensemble.members], axis=0)
    assert np.allclose(probs.numpy(), mean, atol=1e-6)
    result = __import__("unetpp.inference.evaluate", fromlist=["evaluate"]).evaluate(ensemble, ds)
    assert result["mode"] == "ensemble" and 0 <= result["dice"] <= 1


def test_pruning_a_cross_validation_uses_every_out_of_fold_case(cv):
    data, out = cv
    from unetpp.inference.prune import prune

    ensemble = unetpp.load(out)
    result = prune(ensemble, open_dataset(data), repeats=1, warmup=0)
    assert result["split"] == "out-of-fold" and result["cases"] == 6
    assert all("iou_ci95" in v for v in result["levels"].values())
    for fold in range(3):
        assert json.loads((out / f"fold_{fold}" / "prune.json").read_text())["chosen"] == result["chosen"]
    # the QC calibration: out of fold too (every case by the fold that did not train on it),
    # in the CV folder and every fold, and on the ensemble in memory
    trust = json.loads((out / "trust.json").read_text())
    assert sorted(trust["cases"]) == open_dataset(data).case_names and ensemble.trust == trust
    assert json.loads((out / "fold_1" / "trust.json").read_text()) == trust and unetpp.load(out).trust == trust
    assert trust["spearman_confidence_dice"] is None or -1 <= trust["spearman_confidence_dice"] <= 1


def test_a_cross_validation_packages_as_one_ensemble(cv, tmp_path, monkeypatch):
    data, out = cv
    from unetpp.inference.package import build_package, check_model

    monkeypatch.setenv("UNETPP_CACHE", str(tmp_path / "cache"))
    manifest = build_package(out, tmp_path / "cv.zip", data=str(data))
    assert manifest["kind"] == "ensemble" and "fold_2/model.safetensors" in manifest["files"]
    assert not any("/last/" in n or n.startswith("oof/") for n in manifest["files"])
    ensemble = unetpp.load(tmp_path / "cv.zip")
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    assert check_model(tmp_path / "cv.zip")["passed"]


def test_splits_final_json_of_the_data_sets_the_folds(tmp_path):
    data = write_synthetic_dataset(tmp_path / "d", n_cases=4, size=32, seed=1)
    names = sorted(p.stem for p in (data / "images").iterdir())
    folds = [{"train": names[1:], "val": names[:1]}, {"train": names[:1], "val": names[1:]}]
    (data / "splits_final.json").write_text(json.dumps(folds))
    from unetpp.data.loading.pipeline import cross_validation_splits, make_split

    ds = open_dataset(data)
    assert cross_validation_splits(ds, 5) == folds
    assert make_split(ds, folds=2, fold=1)["val"] == names[1:]


def test_postprocessing_is_kept_only_where_it_raises_dice():
    ref = np.zeros((3, 16, 16), np.int64)
    pred = np.zeros_like(ref)
    ref[:, 4:10, 4:10] = 1
    pred[:, 4:10, 4:10] = 1
    pred[:, 14, 14] = 1  # a stray false positive in every case
    spec = choose([(p, r) for p, r in zip(pred, ref)], classes=1)
    assert spec["classes"]["1"]["op"] in ("largest", "min_size")
    assert spec["evaluated"]["1"]["dice_after"] > spec["evaluated"]["1"]["dice_before"]
    assert apply(pred[0], spec).sum() == 36
    clean = choose([(r, r) for r in ref], classes=1)
    assert clean["classes"] == {}  # nothing to gain: nothing chosen
