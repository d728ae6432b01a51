"""The run's files are written in the background (training/saver.py): in order (best weights,
checkpoint, metrics rows), without a queue, flushed on every way out; a kill -9 between an
epoch's checkpoint and its rows (or during the checkpoint) resumes to the same end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.io import load_tensors
from unetpp.training import checkpoint as checkpoint_module
from unetpp.training.checkpoint import CHECKPOINT, Snapshot
from unetpp.training.records import read_metrics
from unetpp.training.saver import EpochFiles, RunWriter


def _snapshot(epoch: int, value: float, rows: list[dict] | None = None) -> Snapshot:
    state = {"format": "x", "train": {"epoch": epoch}}
    return Snapshot({"model.w": torch.full((4,), value)}, state if rows is None else {**state, "rows": rows})


class _SlowWrites:
    """Stands in for write_checkpoint: records what is written, the first write waits."""

    def __init__(self):
        self.written: list[int] = []
        self.release = threading.Event()

    def __call__(self, run, snapshot):
        if not self.written:
            self.release.wait(10)
        self.written.append(snapshot.epoch)


def test_a_slow_write_keeps_only_the_newest_waiting_and_carries_best_weights(tmp_path, monkeypatch):
    import unetpp.training.saver as saver

    slow = _SlowWrites()
    monkeypatch.setattr(saver, "write_checkpoint", slow)
    rows_written: list[int] = []
    writer = RunWriter(tmp_path, "model.safetensors", lambda rows: rows_written.append(rows[-1]["epoch"]))
    writer.submit(EpochFiles(_snapshot(1, 1.0, [{"epoch": 1}])))
    time.sleep(0.2)  # epoch 1 is being written (and waits)
    writer.submit(EpochFiles(_snapshot(2, 2.0, [{"epoch": 1}, {"epoch": 2}]), best={"epoch": "2"}))
    t0 = time.perf_counter()
    writer.submit(EpochFiles(_snapshot(3, 3.0, [{"epoch": e} for e in (1, 2, 3)])))
    assert time.perf_counter() - t0 < 0.5  # submitting never waits for the disk
    slow.release.set()
    writer.close()
    assert slow.written == [1, 3] and rows_written == [1, 3] and writer.superseded == 1
    # epoch 2 improved: its weights (not epoch 3's) were written along with epoch 3's checkpoint
    best = load_tensors(tmp_path / "model.safetensors")
    assert torch.equal(best["w"], torch.full((4,), 2.0))


def test_a_failed_write_is_raised_in_the_training_thread(tmp_path, monkeypatch):
    import unetpp.training.saver as saver

    def full_disk(run, snapshot):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saver, "write_checkpoint", full_disk)
    writer = RunWriter(tmp_path, "model.safetensors", lambda rows: None)
    writer.submit(EpochFiles(_snapshot(1, 1.0)))
    with pytest.raises(OSError, match="No space left"):
        writer.flush()
    writer.close()


def test_snapshot_is_a_copy_taken_at_its_instant():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    snap = checkpoint_module.snapshot_checkpoint(model, opt, {"epoch": 1})
    before = {k: v.clone() for k, v in snap.tensors.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()  # training goes on: the snapshot does not change
    assert all(torch.equal(before[k], snap.tensors[k]) for k in before)


# ---------------------------------------------------------------------- kill -9 at the seams
KILL_AT = r'''
import os, signal, sys
import unetpp.training.records as records
import unetpp.training.saver as saver
where, epoch = sys.argv[1], int(sys.argv[2])
real_rows, real_checkpoint = records.Records.write, saver.write_checkpoint

def rows(self, rows):                      # the epoch's checkpoint is complete, its row is not
    if where == "rows" and rows[-1]["epoch"] >= epoch:  # >=: epoch 2's files may be superseded
        os.kill(os.getpid(), signal.SIGKILL)
    real_rows(self, rows)

def checkpoint(run, snapshot):             # during the epoch's checkpoint (best weights written)
    if where == "checkpoint" and snapshot.epoch >= epoch:
        os.kill(os.getpid(), signal.SIGKILL)
    real_checkpoint(run, snapshot)

records.Records.write, saver.write_checkpoint = rows, checkpoint
from unetpp.training import train
train(**__import__("json").loads(sys.argv[3]))
'''


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "blobs", n_cases=4, size=32, seed=3)


def _settings(dataset: Path, out: Path, **more) -> dict:
    return {**dict(data=str(dataset), out=str(out), base_filters=4, depth=2, patch_size=[32], batch_size=2,
                   epochs=4, steps_per_epoch=2, device="cpu", augment=False, patience=None, lr=3e-3,
                   progress="none", tensorboard=False), **more}


@pytest.mark.parametrize("where", ["rows", "checkpoint"])
def test_kill_between_checkpoint_and_rows_then_resume_ends_like_an_uninterrupted_run(dataset, tmp_path, where):
    from unetpp.training import train

    torch.set_num_threads(1)
    straight = train(**_settings(dataset, tmp_path / "straight"))
    run = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", KILL_AT, where, "2", json.dumps(_settings(dataset, run))],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = json.loads((run / "last" / "state.json").read_text())["train"]
    rows = [int(r["epoch"]) for r in read_metrics(run / "metrics.csv", 100)]
    if where == "rows":  # epoch 2 is in last/, but its row never reached metrics.csv
        assert state["epoch"] >= 2 and rows == [1]
    else:  # killed writing epoch 2's checkpoint: last/ still holds epoch 1, the rows epoch 1
        assert state["epoch"] == 1 and rows == [1]
    train(**_settings(dataset, run, resume=True))
    assert [int(r["epoch"]) for r in read_metrics(run / "metrics.csv", 100)] == [1, 2, 3, 4]
    for name in ("model.safetensors", f"last/{CHECKPOINT}"):
        a, b = load_tensors(straight / name), load_tensors(run / name)
        keys = sorted(k for k in a if not k.startswith("rng."))
        assert keys == sorted(k for k in b if not k.startswith("rng."))
        assert all(torch.equal(a[k], b[k]) for k in keys), name
    strip = ("seconds", "train_seconds")
    assert ([{k: v for k, v in r.items() if k not in strip} for r in read_metrics(run / "metrics.csv", 100)]
            == [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(straight / "metrics.csv", 100)])


def test_streamed_safetensors_read_back_exactly_through_the_library(tmp_path):
    from safetensors import safe_open

    from unetpp.io import stream_tensors

    tensors = {"w": torch.randn(3, 4), "step": torch.tensor(3.0), "half": torch.randn(5).bfloat16(),
               "empty": torch.zeros(0, 2), "ids": torch.arange(7), "mask": torch.tensor([True, False])}
    path = stream_tensors(tmp_path / "x.safetensors", tensors, {"state": "{}"})
    back = load_tensors(path)
    assert set(back) == set(tensors)
    assert all(back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v) for k, v in tensors.items())
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"state": "{}"}
    with pytest.raises(ValueError, match="contiguous CPU"):
        stream_tensors(tmp_path / "y.safetensors", {"t": torch.randn(4, 4).t()})


def test_an_interrupt_snapshot_keeps_the_rows_of_the_epoch_it_replaces(tmp_path, monkeypatch):
    import unetpp.training.saver as saver

    slow = _SlowWrites()
    monkeypatch.setattr(saver, "write_checkpoint", slow)
    rows_written: list[list[int]] = []
    writer = RunWriter(tmp_path, "model.safetensors", lambda rows: rows_written.append([r["epoch"] for r in rows]))
    writer.submit(EpochFiles(_snapshot(1, 1.0, [{"epoch": 1}])))
    time.sleep(0.2)
    writer.submit(EpochFiles(_snapshot(2, 2.0, [{"epoch": 1}, {"epoch": 2}])))
    # SIGTERM mid-epoch 3: the loop's snapshot holds the completed epochs' rows, as every one does
    writer.submit(EpochFiles(_snapshot(2, 2.5, [{"epoch": 1}, {"epoch": 2}])))
    slow.release.set()
    writer.close()
    assert rows_written == [[1], [1, 2]]
    with pytest.raises(RuntimeError, match="after close"):
        writer.submit(EpochFiles(_snapshot(3, 3.0)))


def test_metrics_of_an_older_run_gain_new_columns_on_resume(tmp_path):
    from unetpp.training.records import write_metrics

    old = [{"epoch": 1, "train_loss": 0.5, "seconds": 1.0}]
    write_metrics(tmp_path / "metrics.csv", old + [{"epoch": 2, "train_loss": 0.4, "seconds": 1.0, "train_seconds": 0.9}])
    rows = read_metrics(tmp_path / "metrics.csv", 10)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["train_seconds"] == pytest.approx(0.9)
    assert rows[0]["train_seconds"] != rows[0]["train_seconds"]  # NaN: the column did not exist then


def test_resume_without_checkpoint_starts_only_a_run_that_never_had_one(dataset, tmp_path):
    from unetpp.errors import RunError
    from unetpp.training import train

    torch.set_num_threads(1)
    run = train(**_settings(dataset, tmp_path / "done", epochs=1))
    import shutil

    shutil.rmtree(run / "last")  # a finished run whose resume point was removed to save disk
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RunError, match="nothing is deleted"):
        train(**_settings(dataset, run, resume=True, epochs=2))
    assert sorted(p.name for p in run.iterdir()) == before
    fresh = train(**_settings(dataset, tmp_path / "typo", resume=True, epochs=1))  # no folder yet: started
    assert [int(r["epoch"]) for r in read_metrics(fresh / "metrics.csv", 10)] == [1]
