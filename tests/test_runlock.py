"""One training process per run folder: the second refuses at once, naming the holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.errors import UnetppError
from unetpp.training import train
from unetpp.training.runlock import hold_run

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from pathlib import Path; from unetpp.training.runlock import hold_run\n"
        "with hold_run(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n")


def test_a_second_train_into_the_same_out_is_refused_naming_the_process(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", n_cases=4, size=32, seed=0)
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        with pytest.raises(UnetppError, match=rf"--out {out}: in use by process {holder.pid} on "):
            train(data=str(data), out=str(out), epochs=1, base_filters=4, depth=2, patch_size=[32],
                  progress="none", tensorboard=False, device="cpu")
        assert time.perf_counter() - t0 < 5  # at once, before reading the data
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder leaves no stale lock
        holder.wait()
    run = train(data=str(data), out=str(out), epochs=1, steps_per_epoch=1, base_filters=4, depth=2,
                patch_size=[32], progress="none", tensorboard=False, device="cpu")
    assert (run / "model.safetensors").is_file()


def test_a_refused_run_leaves_no_folder(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(UnetppError):
        with hold_run(out):
            raise UnetppError("bad data")
    assert not out.exists()
