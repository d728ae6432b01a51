"""benchmarks/gpu.py (the GPU benchmark) runs end to end in its CPU dry run, so that the one
run on a lent GPU machine has no bug left that a CPU could have found."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("unetpp_bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not shipped with the package")
def test_gpu_benchmark_dry_run(tmp_path, monkeypatch):
    bench = _load_bench()
    # the ONNX Runtime row (export_run + deployed.load, tested in test_deployed.py) costs ~10 s
    # of export here; `python benchmarks/gpu.py --dry-run` runs it on the CPU provider
    monkeypatch.setattr(bench, "onnxruntime_status", lambda dry_run: (None, "left out by the test"))
    # a generous budget: on a loaded CPU the dry run must not skip rows (it takes ~15 s)
    assert bench.main(["--dry-run", "--out", str(tmp_path), "--budget", "600"]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["settings"]["dry_run"] is True and result["machine"]["device"] == "cpu"

    inference = [r for r in result["inference"] if r["engine"] == "torch" and r["window"] == "patch"]
    got = {(r["dims"], r["mode"], r["precision"]) for r in inference}
    modes_2d = ["fast L1", "fast L2", "fast L3", "fast L4", "accurate"]
    want = {(2, m, p) for m in modes_2d for p in ("fp32", "bf16", "fp16")} | {(3, "accurate", p) for p in ("fp32", "bf16")}
    assert got == want
    assert len(result["inference"]) in (len(want), 2 * len(want))  # 2x: "large" windows too
    assert result["onnxruntime"] == "left out by the test"
    for r in result["inference"]:
        assert "error" not in r and "skipped" not in r, r
        assert r["seconds"] > 0 and r["repeats"] >= 1

    training = {(r["dims"], r["variant"]): r for r in result["training"]}
    assert set(training) == {(d, v) for d in (2, 3) for v in bench.TRAIN_VARIANTS}
    for key, r in training.items():
        assert "error" not in r and "skipped" not in r, r
        assert r["samples_per_s"] > 0 and r["step_s"] > 0, key
    assert all(training[(d, "bf16+cl+compile")]["compile_s"] >= 0 for d in (2, 3))

    # the real `unetpp train` (subprocesses), 3D first: it prepares the data the 2D run reuses
    train = result["train"]
    assert train["data"]["cases"] == 8 and train["data"]["seconds"] > 0
    runs = {r["dims"]: r for r in train["runs"]}
    assert list(runs) == [3, 2]
    for dims, r in runs.items():
        assert "error" not in r and "skipped" not in r and "note" not in r, r
        assert r["epochs"] == 2 and len(r["epoch_train_s"]) == 2 and r["steps_per_epoch"] >= 1, r
        assert 0 < r["startup_s"] < r["wall_s"] and 0 < r["train_share"] < 1 and r["samples_per_s"] > 0, r
        assert r["train_flops_per_sample"] > 0 and r["mfu"] is None, r  # no peak for a CPU
    assert runs[3]["prepare_s"] > 0 and "prepare_s" not in runs[2]

    text = (tmp_path / "gpu.md").read_text()
    assert "DRY RUN" in text and "| 2D | torch | patch | fast L1 |" in text and "bf16+cl+compile" in text
    assert "## `unetpp train`" in text and "| 3D | 2 x 16x48x48 |" in text


def test_gpu_peak_memory_before_cuda_is_initialised():
    """The compile child asked for peak memory before its first CUDA tensor: resetting the
    peak then raised "Invalid device argument"; before initialisation there is none to reset."""
    bench = _load_bench()
    if not bench.torch.cuda.is_initialized():
        assert bench.peak_gib(bench.torch.device("cuda"), reset=True) == 0.0
    assert bench.peak_gib(bench.torch.device("cpu"), reset=True) is None
    assert bench.gpu_train.peak_bf16("NVIDIA H200") == 989e12 and bench.gpu_train.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert bench.gpu_train.peak_bf16("cpu") is None and bench.gpu_train.peak_bf16(None) is None


def test_gpu_benchmark_needs_cuda(tmp_path, capsys, monkeypatch):
    """Without CUDA (and without --dry-run) it says so in one line and exits 2, writing nothing."""
    bench = _load_bench()
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err and bench.torch.__version__ in err
    assert not list(tmp_path.iterdir())
