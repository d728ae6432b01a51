"""``unetpp compare`` and ``unetpp demo`` on tiny synthetic data (a few steps, tiny widths)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.errors import UnetppError

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--width", "0.125", "--depth", "2", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
        "--patch-size", "32", "--prune-repeats", "1", "--device", "cpu", "--no-augment"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one thread is faster, and much faster on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "blobs", n_cases=4, size=32, seed=3)


def main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process: exit code, stdout, stderr."""
    from unetpp.cli import main as cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(list(args))
    captured = capsys.readouterr()
    return e.value.code or 0, captured.out, captured.err


@pytest.fixture(scope="module")
def compared(dataset, tmp_path_factory) -> Path:
    """One comparison of two architectures, run once for the tests below (API, same as the CLI)."""
    from unetpp.experiment.compare import CompareConfig, compare

    out = tmp_path_factory.mktemp("cmp") / "out"
    compare(CompareConfig(data=str(dataset), out=str(out), archs=["unet", "unetpp-ds"], seeds=1, width=0.125,
                          depth=2, epochs=1, steps_per_epoch=1, batch_size=2, patch_size=[32],
                          augment=False, prune_repeats=1, device="cpu", progress="none", threads=1),
            command="unetpp compare (test)", log=lambda m: None)
    return out


def test_compare_writes_results(compared):
    out = compared
    assert (out / "iou_boxplot.png").read_bytes()[:8] == PNG
    md = (out / "results.md").read_text()
    assert "| U-Net |" in md and "| UNet++ DS |" in md and "width factor **0.125**" in md
    assert "## Pruning the deep-supervised UNet++" in md and "| L1 |" in md and "| L2 |" in md
    r = json.loads((out / "results.json").read_text())
    assert r["format"] == "unetpp-compare" and r["format_version"] == 1
    assert set(r) >= {"versions", "machine", "data", "settings", "archs", "pruning", "ordering", "paper",
                      "failed", "wall_seconds", "runs_seconds", "command"}
    train_total = sum(run["train_seconds"] for a in r["archs"].values() for run in a["runs"])
    assert r["runs_seconds"] > train_total > 0  # training + scoring + pruning of every run
    assert "min of training, scoring and pruning over all runs" in md
    assert r["settings"]["width"] == 0.125 and r["settings"]["seeds_list"] == [0]
    assert list(r["archs"]) == ["unet", "unetpp-ds"]
    for key, a in r["archs"].items():
        assert a["params"] > 0 and a["filters"] == 4
        assert set(a["iou"]) == {"mean", "sd", "values"} and len(a["iou"]["values"]) == 1
        assert a["iou"]["sd"] is None  # one seed: no spread
        assert 0 <= a["iou"]["mean"] <= 1 and 0 <= a["dice"]["mean"] <= 1
        run = a["runs"][0]
        assert run["seed"] == 0 and run["train_seconds"] > 0 and run["epochs"] == 1
        assert run["cases"] and {"case", "iou", "dice"} <= set(run["cases"][0])
        assert r["data"]["eval_split"] == run["split"] == "val"
    assert r["archs"]["unetpp-ds"]["runs"][0]["mode"] == "accurate"
    assert r["archs"]["unet"]["runs"][0]["mode"] == "fast"
    p = r["pruning"]
    assert list(p["levels"]) == ["1", "2", "accurate"]
    for e in p["levels"].values():
        assert e["params"] > 0 and e["latency_ms"] > 0 and e["val_iou"]["mean"] is not None
        assert e["test_iou"]["mean"] is not None
    assert p["levels"]["1"]["params"] < p["levels"]["2"]["params"]
    assert p["chosen"][0]["mode"] in ("fast", "accurate")
    assert (out / "runs" / "unetpp-ds-seed0" / "prune.json").is_file()
    claims = {c["claim"] for c in r["ordering"]["claims"]}
    assert claims == {"UNet++ DS beats U-Net"}


def test_compare_resumes_and_refuses_other_budget(compared, dataset, capsys):
    out = compared
    before = (out / "runs" / "unet-seed0" / "model.safetensors").stat().st_mtime_ns
    code, stdout, err = main(capsys, "compare", str(dataset), "--out", str(out), "--archs", "unet,unetpp-ds",
                             "--seeds", "1", *TINY)
    assert code == 0, err
    assert "already finished" in err and str(out / "results.md") in stdout
    assert (out / "runs" / "unet-seed0" / "model.safetensors").stat().st_mtime_ns == before
    args = [a if a != "1" else "2" for a in TINY]  # --epochs 2 etc.: another budget
    code, _, err = main(capsys, "compare", str(dataset), "--out", str(out), *args)
    assert code == 1 and "--epochs" in err and "Traceback" not in err


def test_compare_bad_options(dataset, tmp_path, capsys):
    code, _, err = main(capsys, "compare", str(dataset), "--out", str(tmp_path / "x"), "--archs", "unet,resnet",
                        "--seeds", "0")
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert any("--archs" in line and "resnet" in line for line in lines)
    assert any("--seeds" in line for line in lines)
    assert not (tmp_path / "x").exists()
    code, _, err = main(capsys, "compare", str(dataset), "--out", str(tmp_path / "x"), "--jobs", "0")
    assert code == 1 and "error: --jobs must be an integer >= 1, got 0" in err


def test_compare_jobs_run_in_parallel_processes_with_the_same_results(compared, dataset, tmp_path):
    """--jobs 2: two spawned workers train the two runs at once; the runs are seeded and
    independent, so every score equals the one-at-a-time comparison's."""
    from unetpp.experiment.compare import CompareConfig, compare
    from unetpp.experiment.jobs import job_devices

    assert job_devices("cpu", 3) == ["cpu", "cpu", "cpu"]
    lines: list[str] = []
    out = tmp_path / "parallel"
    r = compare(CompareConfig(data=str(dataset), out=str(out), archs=["unet", "unetpp-ds"], seeds=1, width=0.125,
                              depth=2, epochs=1, steps_per_epoch=1, batch_size=2, patch_size=[32],
                              augment=False, prune_repeats=1, device="cpu", progress="none", threads=1, jobs=2),
                command="unetpp compare (test)", log=lines.append)
    assert any("2 at a time" in line for line in lines)
    assert r["machine"]["jobs"] == 2 and not r["failed"]
    assert "2 runs trained at a time" in (out / "results.md").read_text()
    sequential = json.loads((compared / "results.json").read_text())
    for key in ("unet", "unetpp-ds"):
        mine, theirs = r["archs"][key]["runs"][0], sequential["archs"][key]["runs"][0]
        assert mine["cases"] == theirs["cases"] and mine["iou"] == theirs["iou"]
        assert mine.get("levels") == theirs.get("levels")
        assert (out / "runs" / f"{key}-seed0" / "compare.json").is_file()
    assert r["pruning"]["chosen"] == sequential["pruning"]["chosen"]


def test_demo_pipeline_and_rerun(dataset, tmp_path, capsys):
    from unetpp.experiment.demo import DemoConfig, run_demo

    out = tmp_path / "demo"
    cfg = DemoConfig(out=str(out), data=str(dataset), minutes=0.5, width=0.125, depth=2, patch_size=32, batch_size=2,
                     steps_per_epoch=1, epochs=2, prune_repeats=1, device="cpu", progress="none")
    fetched = []
    report = run_demo(cfg, log=lambda m: None, fetch=lambda *a, **k: fetched.append(a))
    assert report == out / "report.md" and not fetched  # a local dataset: nothing fetched
    text = report.read_text()
    assert "## Held-out metrics" in text and "## Pruning" in text and "| L1" in text
    window = json.loads((out / "run" / "prune.json").read_text())["window"]
    assert f"Inference window: **{window['chosen']}**" in text
    for name in ("curves.png", "prune.png", "overlays.png"):
        assert (out / name).read_bytes()[:8] == PNG and f"({name})" in text
    assert list((out / "predictions").glob("*_overlay.png"))
    ev = json.loads((out / "evaluation.json").read_text())
    assert set(ev["modes"]) == {"L1", "L2", "accurate"} and ev["split"] == "val"
    state = json.loads((out / "demo.json").read_text())
    assert state["finished"] and state["stages"]["train"] and state["stages"]["prune"]

    # a second run reports the finished demo without redoing anything
    weights = out / "run" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert run_demo(cfg, log=lambda m: None) == report
    assert weights.stat().st_mtime_ns == before
    # other settings on a finished demo are refused; --fresh would start again
    with pytest.raises(UnetppError, match="--fresh"):
        run_demo(DemoConfig(**{**cfg.__dict__, "width": 0.25}), log=lambda m: None)
    # a folder that is not a demo is never touched
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    code, _, err = main(capsys, "demo", "--out", str(other), "--data", str(dataset), "--threads", "1")
    assert code == 1 and "not a demo folder" in err and (other / "keep.txt").read_text() == "x"


def test_demo_resumes_an_interrupted_run(dataset, tmp_path):
    """A demo stopped during training continues from the checkpoint on the next call."""
    from unetpp.experiment.demo import DemoConfig, run_demo
    from unetpp.training import train

    out = tmp_path / "demo"
    cfg = DemoConfig(out=str(out), data=str(dataset), minutes=0.5, width=0.125, depth=2, patch_size=32, batch_size=2,
                     steps_per_epoch=1, epochs=2, prune_repeats=1, device="cpu", progress="none")
    # what an interrupted first call leaves: demo.json, and a run with one epoch of two done
    from unetpp.experiment.demo import _open_state, _save_state

    out.mkdir()
    _save_state(out, _open_state(out, cfg, False, lambda m: None))
    train(data=str(dataset), out=str(out / "run"), arch="unetpp", preset="paper", schedule="constant",
          deep_supervision=True, dims=2, width=0.125, depth=2,
          epochs=1, patience=40, batch_size=2, patch_size=[32], steps_per_epoch=1, max_minutes=0.5, seed=0,
          device="cpu", progress="none", tensorboard=False, extra={"demo": True})
    messages: list[str] = []
    run_demo(cfg, log=messages.append)
    rows = (out / "run" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2  # header + epochs 1 (first call) and 2 (resumed)
    assert (out / "report.md").is_file()


def test_busy_cores_reads_the_cpu_time_of_other_processes_now(tmp_path, monkeypatch):
    jobs = importlib.import_module("unetpp.runtime.threads")

    stat = tmp_path / "stat"
    stat.write_text("cpu  10 20 30 40 50 60 70 80 90 100\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert jobs._cpu_times(stat) == (360, 90)  # guest time is already inside user time
    stat.write_text("intr 1 2 3\n")
    assert jobs._cpu_times(stat) is None
    assert jobs._cpu_times(tmp_path / "missing") is None

    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 2)
    for samples, busy in (([(1000, 500), (1200, 600)], 1.0),   # half of the CPU time idle: one core busy
                          ([(1000, 500), (1200, 700)], 0.0),   # all idle
                          ([(1000, 500), (1200, 500)], 2.0)):  # none idle
        it = iter(samples)
        monkeypatch.setattr(jobs, "_cpu_times", lambda stat=None: next(it))
        assert jobs.busy_cores(interval=0) == pytest.approx(busy)
    # no /proc/stat: the load average
    monkeypatch.setattr(jobs, "_cpu_times", lambda stat=None: None)
    monkeypatch.setattr(jobs.os, "getloadavg", lambda: (1.5, 0.0, 0.0))
    assert jobs.busy_cores(interval=0) == 1.5


def test_set_threads_leaves_the_busy_cores_alone(monkeypatch):
    import torch

    jobs = importlib.import_module("unetpp.runtime.threads")

    before = torch.get_num_threads()
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    chosen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    lines: list[str] = []
    try:
        monkeypatch.setattr(jobs, "busy_cores", lambda: 1.2)
        assert jobs.set_threads(None, lines.append) == 3
        assert "using 3 torch thread(s) instead of 4" in lines[-1]
        monkeypatch.setattr(jobs, "busy_cores", lambda: 7.0)
        assert jobs.set_threads(None, lines.append) == 1
        monkeypatch.setattr(jobs, "busy_cores", lambda: 0.1)
        n = len(lines)
        assert jobs.set_threads(None, lines.append) == 4 and len(lines) == n  # idle machine: nothing to say
        assert jobs.set_threads(2, lines.append) == 2  # an explicit number is kept
        assert jobs.set_threads(None, lines.append, jobs=2) == 2 and len(lines) == n  # 4 idle cores, 2 jobs
        monkeypatch.setattr(jobs, "busy_cores", lambda: 1.2)
        assert jobs.set_threads(None, lines.append, jobs=2) == 1
        assert "using 1 torch thread(s) per job instead of 2" in lines[-1]
        assert chosen == [3, 1, 4, 2, 2, 1]
    finally:
        monkeypatch.undo()
        torch.set_num_threads(before)


def test_compare_jobs_stop_on_sigint_and_save_every_running_run(dataset, tmp_path):
    """Ctrl-C on a --jobs comparison: the parent passes the signal on once, each worker
    finishes its step and saves, and the command exits 130 with the way to continue."""
    import signal
    import subprocess
    import sys
    import time

    from unetpp.training.checkpoint import has_checkpoint

    out = tmp_path / "cmp"
    args = list(TINY)
    args[args.index("--epochs") + 1] = "10000"  # long enough to be interrupted
    args += ["--patience", "0"]  # and never stopped early: the faster run must still be running at Ctrl-C
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "unetpp", "compare", str(dataset), "--out", str(out),
                                 "--archs", "unet,unetpp-ds", "--seeds", "1", "--threads", "1", "--jobs", "2",
                                 *args], stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                text = err_path.read_text()
                if "[unet-seed0] epoch 2/" in text and "[unetpp-ds-seed0] epoch 2/" in text:
                    break
                assert proc.poll() is None, text
                time.sleep(0.2)
            else:
                pytest.fail("the workers did not start:\n" + err_path.read_text())
            proc.send_signal(signal.SIGINT)  # to the parent only, as a terminal's Ctrl-C reaches it
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = err_path.read_text()
    assert code == 130, text
    assert "stopped by SIGINT: the runs in progress saved a resumable state; run the same 'unetpp compare' " \
           "command to continue" in text
    assert text.count("received SIGINT: finishing the current step") == 2  # once per worker, not twice
    for name in ("unet-seed0", "unetpp-ds-seed0"):
        assert has_checkpoint(out / "runs" / name) and not (out / "runs" / name / "compare.json").exists()
    assert not (out / "results.json").exists()
