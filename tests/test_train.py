"""Training: a tiny UNet++ learns synthetic nuclei, exact resume, the run folder, bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.errors import UnetppError
from unetpp.training import TrainConfig, TrainingError, TrainingInterrupted, resolve_config, train
from unetpp.training import loop as loop_module
from unetpp.training.checkpoint import CHECKPOINT
from unetpp.training.loss import DeepSupervisionLoss

#: tiny and fast: 2 shared cores
TINY = dict(base_filters=8, depth=2, patch_size=[48], batch_size=4, lr=3e-3, augment=False,
            progress="none", device="cpu", tensorboard=False)
#: tinier still, where only the mechanics matter (resume, NaN)
MICRO = TINY | dict(base_filters=4, depth=2, patch_size=[32], batch_size=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "blobs", n_cases=10, size=48, seed=0)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """A tiny UNet++ (L1, L2 heads) with deep supervision, a fixed budget of 3 x 10 = 30 steps."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(TrainConfig(data=str(dataset), out=str(out), epochs=3, steps_per_epoch=10, **TINY))


def read_metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_tiny_unetpp_with_deep_supervision_reaches_dice_above_0_9(trained):
    rows = read_metrics(trained)
    assert len(rows) == 3
    best = max(float(r["val_score"]) for r in rows)
    best_row = next(r for r in rows if float(r["val_score"]) == best)
    assert float(best_row["val_dice"]) > 0.9, rows
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # model.safetensors is the best epoch's, and loads through the run API
    from unetpp.run import load_model

    model, cfg = load_model(trained)
    assert model.levels == (1, 2) and cfg["model"]["deep_supervision"] is True
    meta = _safetensors_metadata(trained / "model.safetensors")
    assert int(meta["epoch"]) == int(best_row["epoch"])


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def test_metrics_csv_columns(trained):
    with (trained / "metrics.csv").open() as f:
        header = next(csv.reader(f))
    assert header == ["epoch", "train_loss", "val_dice_1", "val_iou_1", "val_dice_2", "val_iou_2",
                      "val_dice", "val_iou", "val_score", "seconds", "train_seconds", "lr"]
    rows = read_metrics(trained)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for r in rows:
        assert all(math.isfinite(float(v)) for v in r.values())
        assert 0 <= float(r["val_iou"]) <= float(r["val_dice"]) <= 1
        assert float(r["val_score"]) == float(r["val_iou"])  # monitor: accurate-mode IoU


def test_run_folder_has_no_pickle_and_a_complete_config(trained):
    files = sorted(p.relative_to(trained).as_posix() for p in trained.rglob("*") if p.is_file())
    assert files == ["config.json", "curves.png", f"last/{CHECKPOINT}", "last/state.json", "metrics.csv",
                     "model.safetensors"]
    for p in trained.rglob("*"):
        if not p.is_file():
            continue
        head = p.read_bytes()[:16]
        # a safetensors file starts with its header length (little-endian), which may begin with
        # 0x80 like a pickle does: tell them apart by the JSON header that follows
        safetensors = p.suffix == ".safetensors" and head[8:10] == b'{"'
        assert safetensors or not head.startswith(b"\x80"), f"{p} looks like a pickle"
        assert not head.startswith(b"PK\x03\x04"), f"{p} looks like a torch.save zip"
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".png":
            assert head.startswith(b"\x89PNG")
        elif p.suffix == ".safetensors":
            load_file(str(p))
    cfg = json.loads((trained / "config.json").read_text())
    assert set(cfg) >= {"format", "model", "data", "train", "split"}
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["lr"] == 3e-3 and cfg["train"]["resume"] is False
    assert set(cfg["split"]["train"]).isdisjoint(cfg["split"]["val"]) and cfg["split"]["val"]


def _same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


class _InterruptAt(DeepSupervisionLoss):
    """Sends SIGINT to this process during the loss of call ``n`` (a test hook, no framework)."""

    calls = 0
    at = 0

    def forward(self, outputs, target):
        type(self).calls += 1
        if type(self).calls == type(self).at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(outputs, target)


def test_interrupted_and_resumed_run_ends_with_the_same_weights(dataset, tmp_path, monkeypatch):
    settings = dict(data=str(dataset), epochs=3, steps_per_epoch=4, patience=None, **(MICRO | {"augment": True}))
    straight = train(TrainConfig(out=str(tmp_path / "straight"), **settings))

    # interrupted mid-epoch 2 (step 2 of 4) by SIGINT, resumed; then stopped after epoch 2
    # by its epoch budget and resumed with a larger one
    _InterruptAt.calls, _InterruptAt.at = 0, 6
    monkeypatch.setattr(loop_module, "DeepSupervisionLoss", _InterruptAt)
    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted) as e:
        train(TrainConfig(out=str(stopped), **settings))
    assert e.value.exit_code == 130 and "--resume" in e.value.message and "epoch 2, step 2" in e.value.message
    state = json.loads((stopped / "last" / "state.json").read_text())["train"]
    assert (state["epoch"], state["step"]) == (1, 2)
    monkeypatch.setattr(loop_module, "DeepSupervisionLoss", DeepSupervisionLoss)
    train(TrainConfig(out=str(stopped), resume=True, epochs=2, data=str(dataset)))
    assert json.loads((stopped / "last" / "state.json").read_text())["train"]["epoch"] == 2
    train(TrainConfig(out=str(stopped), resume=True, epochs=3, data=str(dataset)))

    _same_tensors(straight / "model.safetensors", stopped / "model.safetensors")
    _same_tensors(straight / "last" / CHECKPOINT, stopped / "last" / CHECKPOINT)
    assert read_metrics(straight) == [dict(r, seconds=s["seconds"], train_seconds=s["train_seconds"]) for r, s in
                                      zip(read_metrics(stopped), read_metrics(straight))]
    # resuming a finished run does nothing, and says so
    train(TrainConfig(out=str(stopped), resume=True, data=str(dataset)))
    _same_tensors(straight / "last" / CHECKPOINT, stopped / "last" / CHECKPOINT)


def test_resume_refuses_changed_settings(trained):
    with pytest.raises(UnetppError, match="--lr: the run was started with 0.003"):
        train(TrainConfig(out=str(trained), resume=True, lr=1e-2, data="unused"))


def test_resume_accepts_the_patch_size_as_given_at_the_start(dataset, trained):
    # the run stored [48, 48]; "--patch-size 48" again is the same setting, not a change.
    # epochs=3 is where it ended, so the resume has nothing left to do but must not refuse.
    run = train(TrainConfig(out=str(trained), resume=True, patch_size=[48], epochs=3, data=str(dataset),
                            progress="none"))
    assert run == trained


def test_absurd_model_size_is_refused_before_allocating(dataset, tmp_path):
    with pytest.raises(UnetppError, match="more than the .* allowed; refused before allocating"):
        train(TrainConfig(data=str(dataset), out=str(tmp_path / "huge"), base_filters=256,
                          depth=6, **{k: v for k, v in TINY.items() if k not in ("base_filters", "depth")}))


def test_existing_out_is_refused_without_resume(dataset, trained):
    before = (trained / "model.safetensors").read_bytes()
    with pytest.raises(UnetppError, match=r"already exists \(a run\); add --resume"):
        train(TrainConfig(data=str(dataset), out=str(trained), epochs=1, **TINY))
    assert (trained / "model.safetensors").read_bytes() == before


class _NanAt(DeepSupervisionLoss):
    calls = 0

    def forward(self, outputs, target):
        type(self).calls += 1
        loss = super().forward(outputs, target)
        return loss * float("nan") if type(self).calls == 7 else loss


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good_state(dataset, tmp_path, monkeypatch):
    _NanAt.calls = 0
    monkeypatch.setattr(loop_module, "DeepSupervisionLoss", _NanAt)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match="loss is nan at epoch 2, step 3"):
        train(TrainConfig(data=str(dataset), out=str(out), epochs=3, steps_per_epoch=4, **MICRO))
    state = json.loads((out / "last" / "state.json").read_text())["train"]
    assert (state["epoch"], state["step"]) == (1, 0)
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "model.safetensors")).values())


def test_bad_dataset_is_refused_before_training(tmp_path):
    root = write_synthetic_dataset(tmp_path / "bad", n_cases=3, size=32)
    (root / "masks" / "case_001.png").unlink()
    (root / "images" / "case_002.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    with pytest.raises(UnetppError) as e:
        train(TrainConfig(data=str(root), out=str(out), **TINY))
    lines = e.value.problems
    assert "dataset check failed" in lines[0] and len(lines) >= 3
    assert any("case_001" in line for line in lines[1:]) and any("case_002" in line for line in lines[1:])
    assert not out.exists()


def test_config_file_is_overridden_by_flags(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 7\nbatch-size: 3\nlevel_weights: [1, 2, 3, 4]\npatch_size: 64,32\nlr: 0.001\n")
    cfg = resolve_config({"data": "d", "out": "o", "lr": 0.01}, path)
    assert (cfg.epochs, cfg.batch_size, cfg.level_weights, cfg.patch_size, cfg.lr) == (7, 3, [1, 2, 3, 4], [64, 32], 0.01)
    (tmp_path / "bad.json").write_text(json.dumps({"epochs": 2, "learning_rate": 1}))
    with pytest.raises(UnetppError, match="unknown setting 'learning_rate'"):
        resolve_config({"data": "d", "out": "o"}, tmp_path / "bad.json")
    with pytest.raises(UnetppError) as e:
        resolve_config({"data": "d", "out": "o", "epochs": 0, "lr": -1.0})
    assert len(e.value.problems) == 2


def test_loss_is_bce_plus_dice_per_head_with_level_weights():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    perfect = (target[:, None].float() * 2 - 1) * 50
    bad = -perfect
    loss = DeepSupervisionLoss((1, 2), classes=1, level_weights=[1, 0])
    assert loss({1: perfect, 2: bad}, target) < 1e-3
    assert DeepSupervisionLoss((1, 2), classes=1, level_weights=[0, 1])({1: perfect, 2: bad}, target) > 1
    k3 = torch.randint(0, 3, (2, 8, 8))
    logits = torch.nn.functional.one_hot(k3, 3).movedim(-1, 1).float() * 50
    assert DeepSupervisionLoss((4,), classes=3)(logits, k3) < 1e-3
