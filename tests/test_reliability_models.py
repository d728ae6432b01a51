"""Untrusted run folders: no pickle anywhere, tampered config.json refused before any large
allocation, damaged weights refused with one line; predict tiles big inputs with the
training patch."""

from __future__ import annotations

import json
import pickle
import re
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

import unetpp
from unetpp import run as run_module
from unetpp.errors import RunError
from unetpp.io import load_tensors
from unetpp.models import ModelConfig, build_model
from unetpp.run import load_model, make_run_config, read_run_config, save_weights, write_run_config

SRC = Path(unetpp.__file__).parent


def test_the_package_never_unpickles():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\((.*)", text):
            assert "weights_only=True" in m.group(1), f"{path}: {m.group(0)}"
        assert not re.search(r"^\s*(import|from) (pickle|dill|cloudpickle|joblib)\b", text, re.M), path
        assert "allow_pickle=True" not in text, path


@pytest.fixture
def run(tmp_path) -> Path:
    cfg = ModelConfig.from_preset("unetpp", "paper", base_filters=4, depth=2)
    model = build_model(cfg)
    out = tmp_path / "run"
    data = {"layout": "image-folders", "modality": "other", "spatial_dims": 2, "channels": 1, "classes": 1,
            "labels": {"0": "background", "1": "foreground"}, "normalization": [{"scheme": "zscore"}],
            "target_spacing": None}
    write_run_config(out, make_run_config(cfg, data=data, train={"patch_size": [16]}))
    save_weights(out / "model.safetensors", model)
    return out


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_pickle_files_are_refused_and_never_run(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({"w": _Evil()})
    for name in ("model.pt", "model.pth", "model.ckpt", "model.pkl", "model.bin"):
        (run / name).write_bytes(payload)
        with pytest.raises(RunError, match="pickle-based PyTorch files are refused"):
            load_model(run, weights=name)
    (run / "model.safetensors").write_bytes(payload)  # a pickle in disguise
    with pytest.raises(RunError, match="not a valid safetensors file"):
        load_model(run)
    assert not (tmp_path / "PWNED").exists()


def _tamper(run: Path, change) -> None:
    cfg = json.loads((run / "config.json").read_text())
    change(cfg)
    (run / "config.json").write_text(json.dumps(cfg))


TAMPERED = {
    "unknown top-level key": (lambda c: c.update(evil=1), "unknown keys evil"),
    "unknown model key": (lambda c: c["model"].update(hook="os.system"), "unknown model config keys"),
    "base_filters 10**6": (lambda c: c["model"].update(base_filters=10**6), "base_filters"),
    "depth as text": (lambda c: c["model"].update(depth="4"), "depth"),
    "negative channels": (lambda c: c["model"].update(in_channels=-1), "in_channels"),
    "27 billion parameters within the field limits": (
        lambda c: (c["model"].update(dims=3, base_filters=256, depth=6, in_channels=64, classes=256),
                   c.update(data={})),  # a run made from arrays has no data section
        "parameters"),
    "model not an object": (lambda c: c.update(model=[1, 2]), "model config"),
    "data channels disagree": (lambda c: c["data"].update(channels=40), "data.channels"),
    "zero target spacing": (lambda c: c["data"].update(spatial_dims=2, target_spacing=[0, 0]), "target_spacing"),
    "normalisation divides by 0": (lambda c: c["data"].update(normalization=[{"scheme": "scale", "divide": 0}]),
                                   "divide"),
    "unknown normalisation": (lambda c: c["data"].update(normalization=[{"scheme": "eval"}]), "unknown scheme"),
    "patch size 0": (lambda c: c["train"].update(patch_size=[0]), "patch_size"),
    "wrong format version": (lambda c: c.update(format_version=99), "version"),
}


@pytest.mark.parametrize("kind", list(TAMPERED))
def test_tampered_config_is_refused_before_any_allocation(run, kind, monkeypatch):
    change, needle = TAMPERED[kind]
    _tamper(run, change)
    real_build = run_module.build_model

    def guarded(cfg):
        assert torch.get_default_device().type == "meta", "a tampered config reached a real allocation"
        return real_build(cfg)

    monkeypatch.setattr(run_module, "build_model", guarded)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(RunError) as e:
        load_model(run)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert needle in str(e.value), str(e.value)
    assert all("config.json" in p for p in e.value.problems)
    assert seconds < 5 and peak < 64 * 2**20, (seconds, peak)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b"[" * 100_000 + b"]" * 100_000,
                                     b" " * (2**20 + 1), b"[1, 2, 3]"])
def test_config_that_is_not_a_small_json_object_is_refused(run, content):
    (run / "config.json").write_bytes(content)
    with pytest.raises(RunError, match="config.json"):
        read_run_config(run)


def test_damaged_weights_are_refused_with_one_line(run):
    path = run / "model.safetensors"
    good = load_tensors(path)
    name = sorted(good)[0]
    cases = {
        "wrong shape": {**good, name: torch.zeros(3, 3)},
        "missing tensor": {k: v for k, v in good.items() if k != name},
        "extra tensor": {**good, "evil.weight": torch.zeros(1)},
        "nan": {**good, name: torch.full_like(good[name], float("nan"))},
        "integer": {**good, name: good[name].to(torch.int32)},
    }
    for why, tensors in cases.items():
        path.write_bytes(st_save({k: v.contiguous() for k, v in tensors.items()}))
        with pytest.raises(RunError) as e:
            load_model(run)
        assert len(e.value.problems) == 1 and str(path) in e.value.problems[0], (why, e.value.problems)
    data = st_save(good)
    for why, blob in {"truncated": data[: len(data) // 2], "empty": b"", "padded": data + b"\0" * 64,
                      "huge header length": (2**62).to_bytes(8, "little") + data[8:]}.items():
        path.write_bytes(blob)
        with pytest.raises(RunError, match="safetensors"):
            load_model(run)


def test_cli_predict_with_a_tampered_run_says_so_in_one_line(run, tmp_path, capsys):
    from unetpp.cli.app import main

    _tamper(run, lambda c: c["model"].update(base_filters=10**6))
    img = tmp_path / "x.png"
    from unetpp.data.files.formats import write_file

    write_file(img, np.zeros((16, 16), np.uint8), {})
    with pytest.raises(SystemExit) as e:
        main(["predict", str(run), str(img), "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Traceback" not in err
    assert err.startswith("error: ") and "config.json" in err and "base_filters" in err


def test_predict_tiles_large_inputs_with_the_training_patch(run):
    predictor = unetpp.load(run)
    assert predictor.patch_size == (16, 16)
    seen = []
    real = predictor.network

    def spy(levels):
        net = real(levels)

        def call(x):
            seen.append(tuple(x.shape[2:]))
            return net(x)
        return call

    predictor.network = spy
    mask = predictor.predict(np.random.default_rng(0).random((40, 56)).astype(np.float32))
    assert mask.shape == (40, 56)
    assert seen and all(s == (16, 16) for s in seen), seen


def test_gpu_out_of_memory_halves_the_batch_and_says_so(caplog):
    """Testable on CPU: the network raises torch.cuda.OutOfMemoryError while batches are big."""
    from unetpp.inference.engine import predict_with

    calls = []

    def network(x):
        calls.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return {1: torch.sigmoid(x[:, :1])}

    volume = torch.rand(1, 7, 12, 12)  # a 2D model on 7 slices, 8 slices per pass asked
    with caplog.at_level("WARNING", logger="unetpp.inference"):
        probs = predict_with(network, volume, dims=2, in_channels=1, levels=(1,), batch_size=8)
    assert torch.allclose(probs[1], torch.sigmoid(volume))
    assert calls[:2] == [7, 4] and max(calls[2:]) <= 2 and sum(calls[2:]) == 7, calls
    assert [r.getMessage() for r in caplog.records] == [
        "out of GPU memory: batch size halved to 4 and retried",
        "out of GPU memory: batch size halved to 2 and retried"]
    # sliding windows: the windows per pass are halved too; at 1 the error is the user's
    calls.clear()
    probs = predict_with(network, torch.rand(1, 40, 40), dims=2, in_channels=1, levels=(1,),
                         patch_size=(16, 16), batch_size=8)
    assert probs[1].shape == (1, 40, 40) and max(calls[-3:]) <= 2

    def always(x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        predict_with(always, torch.rand(1, 8, 8), dims=2, in_channels=1, levels=(1,), batch_size=4)
