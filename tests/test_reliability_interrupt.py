"""Interruptions: SIGTERM/SIGINT save a resumable state and exit cleanly; SIGKILL at random
moments always leaves a loadable run folder, and resuming after each kill ends with the same
weights as a run never stopped.

Starting Python with torch and MONAI takes seconds on a busy machine, so the training runs
are forked from one "zygote" process that imported unetpp once and never ran torch: each
child runs the real CLI (``unetpp.cli.main``) as a fresh ``unetpp train`` would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.io import load_tensors
from unetpp.run import load_model, read_run_config
from unetpp.training.checkpoint import CHECKPOINT, load_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")

TINY = ["--base-filters", "4", "--depth", "2", "--patch-size", "32", "--batch-size", "2", "--device", "cpu",
        "--no-augment", "--patience", "100", "--steps-per-epoch", "3"]

ZYGOTE = r'''
import json, os, sys
from unetpp.cli.app import main      # everything imported once, no torch computation yet
import unetpp.training.loop           # noqa: F401
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 0
        try:
            main(cmd["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
'''


class Zygote:
    """Forks ``unetpp`` CLI runs on request; ``start`` -> pid, ``wait`` -> exit status."""

    def __init__(self, tmp: Path):
        env = dict(os.environ, CI="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.tmp = tmp
        assert self._read(timeout=180) == {"ready": True}
        self.n = 0
        self.status: int | None = None

    def _read(self, timeout: float) -> dict:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"zygote gave no answer in {timeout}s")
        line = self.proc.stdout.readline()
        assert line, "zygote died"
        return json.loads(line)

    def start(self, *argv: str) -> tuple[int, Path]:
        self.n += 1
        log = self.tmp / f"run{self.n}.log"
        self.proc.stdin.write(json.dumps({"argv": list(argv), "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout=30)["pid"], log

    def wait(self, timeout: float = 120) -> int:
        if self.status is not None:
            status, self.status = self.status, None
            return status
        return self._read(timeout)["status"]

    def wait_for(self, path: Path, log: Path, timeout: float = 90) -> None:
        """Until ``path`` exists; fails at once, with the run's log, if the run ended."""
        deadline = time.time() + timeout
        while not path.exists():
            assert time.time() < deadline, f"{path} never appeared"
            try:
                self.status = self._read(timeout=0.02)["status"]
            except TimeoutError:
                continue
            raise AssertionError(f"the run ended ({self.status}) before {path} appeared:\n"
                                 + log.read_text(errors="replace")[-3000:])

    def run(self, *argv: str, timeout: float = 120) -> tuple[int, str]:
        _, log = self.start(*argv)
        status = self.wait(timeout)
        return status, log.read_text(errors="replace")

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "blobs", n_cases=4, size=32, seed=3)


def assert_run_folder_is_complete(run: Path) -> int:
    """Every file a kill may have left behind loads; returns the epochs in last/."""
    cfg = read_run_config(run)  # parses and validates
    model, _ = (load_model(run) if (run / "model.safetensors").exists() else (None, None))
    from unetpp.models import ModelConfig, build_model

    fresh = build_model(ModelConfig.from_dict(cfg["model"]))
    if not (run / "last" / CHECKPOINT).exists():
        return 0
    state = load_checkpoint(run, fresh, torch.optim.Adam(fresh.parameters()), restore_rng=False)
    json.loads((run / "last" / "state.json").read_text())  # the readable copy is whole too
    if (run / "metrics.csv").exists():
        lines = (run / "metrics.csv").read_text().splitlines()
        epochs = [int(line.split(",")[0]) for line in lines[1:]]
        assert epochs == list(range(1, len(epochs) + 1)), epochs
        assert len(epochs) <= state["epoch"]  # a row only for an epoch whose checkpoint is complete
    return int(state["epoch"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_a_resumable_state_and_exit_cleanly(zygote, dataset, tmp_path, sig):
    run = tmp_path / "run"
    pid, log = zygote.start("train", str(dataset), "--out", str(run), "--epochs", "200", *TINY)
    zygote.wait_for(run / "last" / CHECKPOINT, log)
    os.kill(pid, sig)
    status = zygote.wait()
    err = log.read_text()
    assert status == 128 + sig, err
    name = signal.Signals(sig).name
    assert f"interrupted by {name}" in err and "--resume" in err, err
    assert "Traceback" not in err
    done = assert_run_folder_is_complete(run)
    state = json.loads((run / "last" / "state.json").read_text())["train"]
    assert done == state["epoch"] and done < 200
    # it goes on from there and finishes
    status, err = zygote.run("train", str(dataset), "--out", str(run), "--resume", "--epochs", str(done + 1))
    assert status == 0 and "resuming" in err, err
    assert assert_run_folder_is_complete(run) == done + 1


def test_sigkill_at_random_moments_then_resume_ends_like_an_uninterrupted_run(zygote, dataset, tmp_path):
    epochs = 8
    straight = tmp_path / "straight"
    status, err = zygote.run("train", str(dataset), "--out", str(straight), "--epochs", str(epochs), *TINY)
    assert status == 0, err

    run = tmp_path / "killed"
    rng = random.Random(1234)
    # a kill before the first checkpoint leaves nothing to resume: --resume starts the run,
    # with the settings it was started with, and it ends like the run never stopped
    pid, log = zygote.start("train", str(dataset), "--out", str(run), "--epochs", str(epochs), *TINY)
    zygote.wait_for(run / "config.json", log)
    os.kill(pid, signal.SIGKILL)
    assert zygote.wait() == -signal.SIGKILL
    if not (run / "last" / CHECKPOINT).exists():
        status, err = zygote.run("train", str(dataset), "--out", str(run), "--resume")
        assert status == 0 and "starting the run" in err and "Traceback" not in err, err
        assert assert_run_folder_is_complete(run) == epochs
        assert metrics_without_time(run) == metrics_without_time(straight)
        import shutil

        shutil.rmtree(run)
        pid, log = zygote.start("train", str(dataset), "--out", str(run), "--epochs", str(epochs), *TINY)
        zygote.wait_for(run / "last" / CHECKPOINT, log)
        os.kill(pid, signal.SIGKILL)
        assert zygote.wait() == -signal.SIGKILL

    kills, finished = 1, False
    for _ in range(6):
        assert_run_folder_is_complete(run)
        pid, log = zygote.start("train", str(dataset), "--out", str(run), "--resume")
        time.sleep(rng.uniform(0.0, 1.5))  # anywhere: startup, a step, validation, a write
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = zygote.wait()
        if status == 0:
            finished = True
            break
        assert status == -signal.SIGKILL, log.read_text()
        kills += 1
    if not finished:
        status, err = zygote.run("train", str(dataset), "--out", str(run), "--resume")
        assert status == 0, err
    assert kills >= 2
    assert assert_run_folder_is_complete(run) == epochs

    # exact resume: the same best and last weights as the run that was never stopped
    for name in ("model.safetensors", f"last/{CHECKPOINT}"):
        a, b = load_tensors(straight / name), load_tensors(run / name)
        weights = [k for k in a if not k.startswith("rng.")]
        assert sorted(weights) == sorted(k for k in b if not k.startswith("rng.")), name
        for k in weights:
            assert torch.equal(a[k], b[k]), (name, k)
    assert metrics_without_time(run) == metrics_without_time(straight)


def metrics_without_time(run: Path) -> list[dict[str, str]]:
    import csv

    with (run / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in ("seconds", "train_seconds")} for row in csv.DictReader(f)]


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    """The temporary file behind an atomic write is 0o600; the result must not be: a new file
    follows the umask, an overwritten one keeps its mode."""
    from unetpp.io import atomic_write_text

    before = os.umask(0o027)
    try:
        new = atomic_write_text(tmp_path / "new.txt", "a")
        assert new.stat().st_mode & 0o777 == 0o640
        os.umask(0o022)
        assert atomic_write_text(tmp_path / "other.txt", "b").stat().st_mode & 0o777 == 0o644
        private = tmp_path / "private.txt"
        private.write_text("x")
        private.chmod(0o600)
        atomic_write_text(private, "y")
        assert private.stat().st_mode & 0o777 == 0o600 and private.read_text() == "y"
        assert os.umask(0o022) == 0o022  # the umask is left as it was
    finally:
        os.umask(before)
    assert not list(tmp_path.glob(".*.tmp"))
