"""benchmarks/vs_nnunet.py without nnU-Net: the budget trainer's logic (against a stand-in for
nnU-Net's trainer loop), the raw data set it writes, and the report."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from unetpp.data.samples.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import vs_nnunet  # noqa: E402


class _FakeScheduler:
    max_steps = 1000


class _FakeTrainer:
    """nnU-Net's trainer as the subclass meets it: the hooks of its loop, 250 + 50 steps an
    epoch, a training step costing ``clock.step`` seconds and a validation step a third of it."""

    def __init__(self, clock):
        self.current_epoch, self.num_epochs, self.lr_scheduler, self.clock = 0, 1000, _FakeScheduler(), clock
        self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 250, 50
        self.dataloader_train = self.dataloader_val = iter(int, 1)  # endless batches
        self.ended, self.log, self.epoch_lengths = False, [], []

    def on_train_start(self):
        pass

    def on_epoch_start(self):
        self.epoch_lengths.append(0)

    def on_train_epoch_start(self):
        pass

    def step_seconds(self):
        return self.clock.step(self.clock) if callable(self.clock.step) else self.clock.step

    def train_step(self, batch):
        self.clock.now += self.step_seconds()
        self.epoch_lengths[-1] += 1
        return {}

    def on_train_epoch_end(self, outputs):
        pass

    def on_validation_epoch_start(self):
        pass

    def validation_step(self, batch):
        self.clock.now += (self.clock.step(self.clock) if callable(self.clock.step) else self.clock.step) / 3
        return {}

    def on_validation_epoch_end(self, outputs):
        pass

    def on_epoch_end(self):
        self.current_epoch += 1

    def on_train_end(self):
        self.ended = True

    def print_to_log_file(self, *args):
        self.log.append(" ".join(map(str, args)))


def _budget_trainer(monkeypatch, budget_s: float, step_s: float):
    clock = types.SimpleNamespace(now=0.0, step=step_s)
    fake = types.ModuleType("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")

    class Base(_FakeTrainer):
        def __init__(self):
            super().__init__(clock)

    fake.nnUNetTrainer = Base
    for name in ("nnunetv2", "nnunetv2.training", "nnunetv2.training.nnUNetTrainer"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setenv("UNETPP_BENCH_BUDGET_S", str(budget_s))
    namespace: dict = {}
    exec(compile(vs_nnunet.TRAINER_CODE, "trainer", "exec"), namespace)
    monkeypatch.setattr(namespace["time"], "perf_counter", lambda: clock.now)  # the trainer's clock: the fake
    trainer = namespace[vs_nnunet.TRAINER]()
    trainer.run_training()
    return trainer, clock


def test_budget_trainer_fits_the_epochs_to_the_budget_and_ends_normally(monkeypatch):
    trainer, clock = _budget_trainer(monkeypatch, budget_s=30, step_s=0.01)  # 2.67 s an epoch of 250 + 50
    assert trainer.num_epochs == 11 and trainer.current_epoch == 11  # int(30 / 2.67)
    assert trainer.epoch_lengths == [250] * 11  # enough epochs fit: nnU-Net's own length is kept
    assert trainer.lr_scheduler.max_steps == 11 and trainer.ended and "11 epochs" in trainer.log[-1]
    assert 27 <= clock.now <= 30


def test_budget_trainer_shortens_epochs_that_would_not_fit_four_times(monkeypatch):
    trainer, clock = _budget_trainer(monkeypatch, budget_s=100, step_s=1.0)  # 267 s an epoch of 250 + 50
    steps = int(100 / 4 / 1.0 / (1 + 1 / 15))  # 23 training steps, 4 validation steps
    assert trainer.epoch_lengths == [steps] * 4 and trainer.num_val_iterations_per_epoch == steps // 5
    assert trainer.num_epochs == trainer.current_epoch == 4 and trainer.ended
    assert 90 <= clock.now <= 100  # the whole run inside the budget
    assert any("shortened" in line for line in trainer.log)


def test_shortened_epochs_after_the_first_fill_the_budget_though_steps_grew_slower(monkeypatch):
    # 5.5 s a step while timed, 5.8 s later: the first epoch runs longer than planned, and
    # flooring the number of epochs would drop one (3 of 4, a quarter of the budget unused)
    def step_cost(clock):
        clock.steps = getattr(clock, "steps", 0) + 1
        return 5.5 if clock.steps <= 11 else 5.8

    trainer, clock = _budget_trainer(monkeypatch, budget_s=1200, step_s=step_cost)
    assert trainer.num_epochs == trainer.current_epoch == 4 and len(trainer.epoch_lengths) == 4
    assert 0.95 * 1200 <= clock.now <= 1.02 * 1200


def test_epochs_wall_time_of_each_tool(tmp_path):
    log = ("2026-12-04 19:43:54.926319: This split has 10 training and 2 validation cases.\n"
           "2026-12-04 19:43:55.384488: Epoch 0\n2026-12-04 19:46:23.099099: Epoch 1\n"
           "2026-12-04 19:54:02.222791: Training done.\n2026-12-04 19:55:00.199939: Mean Validation Dice: 0.9\n")
    assert vs_nnunet.nnunet_epochs_seconds(log) == 606.8
    assert vs_nnunet.nnunet_epochs_seconds("no epochs here") is None
    (tmp_path / "metrics.csv").write_text("epoch,val_dice,seconds\n1,0.5,89.5\n2,0.6,88.1\n")
    assert vs_nnunet.unetpp_epochs_seconds(tmp_path) == 177.6


def test_raw_data_set_holds_the_split_with_test_cases_apart(tmp_path):
    data = write_synthetic_dataset(tmp_path / "blobs", n_cases=6, size=32, seed=0)
    names = sorted(p.stem for p in (data / "images").iterdir())
    (data / "splits.json").write_text(json.dumps({"train": names[:3], "val": names[3:4], "test": names[4:]}))
    ds, split = vs_nnunet.load_split(str(data))
    dims, ending = vs_nnunet.write_nnunet_raw(ds, split, tmp_path / "raw", tmp_path / "work")
    folder = next((tmp_path / "raw").iterdir())
    assert (dims, ending) == (2, ".png")
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{n}_0000.png" for n in names[:4]]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [f"{n}_0000.png" for n in names[4:]]
    assert sorted(p.name for p in (tmp_path / "work" / "test_labels").iterdir()) == [f"{n}.png" for n in names[4:]]
    from PIL import Image

    label = np.asarray(Image.open(folder / "labelsTr" / f"{names[0]}.png"))
    assert set(np.unique(label)) <= {0, 1} and label.any()  # nnU-Net wants 0/1, the files hold 0/255
    info = json.loads((folder / "dataset.json").read_text())
    assert info["numTraining"] == 4 and info["file_ending"] == ".png" and info["labels"]["background"] == 0


def test_report_states_means_per_case_scores_and_every_command(tmp_path):
    def tool(dice):
        return {"cases": {"a": {"dice": dice[0], "hd95": 2.0}, "b": {"dice": dice[1], "hd95": float("inf")}},
                "train_seconds": 600.0, "inference_seconds_per_case": 1.5, "train": {"peak_mb": 900},
                "patch": [96, 96], "batch": 8, "commands": ["cmd-" + str(dice[0])]}

    result = {"device": "cpu", "minutes": 10.0, "datasets": [{
        "name": "blobs", "dims": 2, "split": {"train": ["x"], "val": ["y"], "test": ["a", "b"]},
        "unetpp": {**tool((0.8, 0.9)), "chosen": {"mode": "fast", "level": 2}}, "nnunet": tool((0.7, 0.95)),
        "cross_check": {"a": 0.7, "b": 0.95}, "prepare_commands": ["prep"], "eval_commands": ["eval"]}]}
    text = vs_nnunet.markdown(result)
    assert "| unetpp | 0.8500 | 2.00 |" in text and "| nnU-Net v2 | 0.8250 |" in text
    assert "| a | 0.8000 | 0.7000 | 0.7000 |" in text
    assert all(c in text for c in ("prep", "cmd-0.8", "cmd-0.7", "eval")) and "2 cases" in text
    vs_nnunet.plot(result, tmp_path / "cases.png")
    assert (tmp_path / "cases.png").stat().st_size > 1000


@pytest.mark.parametrize("with_split", [True, False])
def test_a_data_set_without_its_own_test_split_is_refused(tmp_path, with_split):
    data = write_synthetic_dataset(tmp_path / "blobs", n_cases=4, size=32, seed=0)
    names = sorted(p.stem for p in (data / "images").iterdir())
    if with_split:  # train and val, but no test cases
        (data / "splits.json").write_text(json.dumps({"train": names[:3], "val": names[3:]}))
    with pytest.raises(SystemExit):
        vs_nnunet.load_split(str(data))


def test_a_first_epoch_slower_than_its_timed_steps_still_gives_four_epochs_in_the_budget(monkeypatch):
    # timed at 0.01 s a step (11 epochs of 250 would fit 30 s), then 0.045 s: the first epoch
    # takes 11.5 s, and flooring 30 / 11.5 would leave 2 epochs and a quarter of the budget
    # unused; instead the epochs after the first are sized to fill it
    def step_cost(clock):
        clock.steps = getattr(clock, "steps", 0) + 1
        return 0.01 if clock.steps <= 11 else 0.045

    trainer, clock = _budget_trainer(monkeypatch, budget_s=30, step_s=step_cost)
    assert trainer.num_epochs == trainer.current_epoch == 4
    assert trainer.epoch_lengths[0] == 250 and trainer.epoch_lengths[1] < 250
    assert 0.9 * 30 <= clock.now <= 1.02 * 30


def test_a_first_epoch_that_spends_the_whole_budget_is_the_last(monkeypatch):
    def step_cost(clock):
        clock.steps = getattr(clock, "steps", 0) + 1
        return 1.0 if clock.steps <= 11 else 10.0  # 23 steps planned, then 10x slower than timed: 144 s

    trainer, clock = _budget_trainer(monkeypatch, budget_s=100, step_s=step_cost)
    assert trainer.num_epochs == trainer.current_epoch == 1 and trainer.ended
