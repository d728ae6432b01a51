"""``unetpp train`` from the command line: SIGINT saves a resumable state, DDP on CPU (gloo)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unetpp.data.samples.synthetic import write_synthetic_dataset

TINY = ["--base-filters", "4", "--depth", "2", "--patch-size", "32", "--batch-size", "2", "--device", "cpu",
        "--no-augment"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "blobs", n_cases=6, size=32, seed=1)


def env() -> dict[str, str]:
    return dict(os.environ, CI="1", OMP_NUM_THREADS="1")


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetpp", *args], capture_output=True, text=True,
                          timeout=timeout, env=env())


def main(capsys, *args: str) -> tuple[int, str]:
    """The CLI in this process (fast): exit code and stderr."""
    from unetpp.cli import main as cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(list(args))
    return e.value.code, capsys.readouterr().err


def test_cli_refuses_existing_out_and_bad_options(dataset, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    code, err = main(capsys, "train", str(dataset), "--out", str(tmp_path / "run"))
    assert code == 1 and err.count("error:") == 1 and "--resume" in err, err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 0\nbogus: 1\n")
    code, err = main(capsys, "train", str(dataset), "--out", str(tmp_path / "new"), "--config", str(cfg))
    assert code == 1 and "unknown setting 'bogus'" in err and "Traceback" not in err
    code, err = main(capsys, "train", str(dataset), "--out", str(tmp_path / "new"), "--epochs", "0", "--lr", "-1")
    assert code == 1 and err.count("error:") == 2, err
    code, err = main(capsys, "train", str(dataset), "--out", str(tmp_path / "new"), "--patch-size", "3,a")
    assert code == 1 and err.count("error:") == 1, err
    code, err = main(capsys, "train", "--help")
    assert code == 0
    assert not (tmp_path / "new").exists()


def test_sigint_saves_a_resumable_state_and_resume_finishes(dataset, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "unetpp", "train", str(dataset), "--out", str(out),
                             "--epochs", "50", "--patience", "50", "--steps-per-epoch", "3", *TINY],
                            stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.time() + 90
    while not (out / "last" / "state.json").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    state = json.loads((out / "last" / "state.json").read_text())["train"]
    done = state["epoch"]
    assert done >= 1
    r = cli("train", str(dataset), "--out", str(out), "--resume", "--epochs", str(done + 1))
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    with (out / "metrics.csv").open() as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(1, done + 2))


def test_ddp_two_processes_on_cpu_with_gloo(dataset, tmp_path):
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "unetpp", "train", str(dataset), "--out", str(out), "--epochs", "2",
                        "--steps-per-epoch", "2", *TINY], capture_output=True, text=True, timeout=180, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "x 2 processes" in r.stderr
    assert r.stderr.count("epoch 2/2") == 1  # rank 0 alone logs (and writes)
    with (out / "metrics.csv").open() as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2]
    assert (out / "model.safetensors").is_file() and (out / "last" / "checkpoint.safetensors").is_file()
    assert not [p for p in out.rglob("*.tmp")]
