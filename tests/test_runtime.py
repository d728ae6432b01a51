"""unetpp.runtime: the one place that decides device, precision, memory format and threads."""

from __future__ import annotations

import pytest
import torch

from unetpp import create_model, runtime
from unetpp.errors import UnetppError
from unetpp.runtime import hardware


def test_amp_on_a_cpu_without_native_bf16_stays_fp32_and_says_why(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    measured = []
    precision, note = runtime.choose_precision(torch.device("cpu"), True, measure=measured.append)
    assert precision.dtype is None and "no native bf16" in note and "stays fp32" in note
    assert measured == []  # nothing to measure: emulated bf16 is known to be slow


def test_amp_on_a_bf16_cpu_is_used_only_where_measured_faster(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    slower, note = runtime.choose_precision(torch.device("cpu"), True, measure=lambda dtype: 0.8)
    assert slower.dtype is None and "0.80x" in note and "stays fp32" in note
    faster, note = runtime.choose_precision(torch.device("cpu"), True, measure=lambda dtype: 1.2)
    assert faster.dtype == torch.bfloat16 and note is None and not faster.needs_grad_scaler
    # no --amp on the CPU: fp32, silently
    assert runtime.choose_precision(torch.device("cpu"), None) == (runtime.Precision(torch.device("cpu")), None)


def test_mixed_precision_is_the_default_on_cuda_and_off_with_no_amp(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    cuda = torch.device("cuda")
    on, _ = runtime.choose_precision(cuda, None)
    assert on.dtype == torch.float16 and on.needs_grad_scaler  # fp16 + GradScaler without bf16
    off, note = runtime.choose_precision(cuda, False)
    assert off.dtype is None and note is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.choose_precision(cuda, None)[0].dtype == torch.bfloat16


def test_autocast_speedup_leaves_model_and_rng_alone():
    model = create_model("unetpp", base_filters=2, depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 1, 16, 16)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    speedup = runtime.autocast_speedup(model, x, torch.bfloat16, steps=1)
    assert speedup > 0
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pick_device_names_the_option():
    assert runtime.pick_device("auto").type in ("cpu", "cuda", "mps")
    assert runtime.pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UnetppError, match="--device cuda: no CUDA GPU"):
            runtime.pick_device("cuda")
    with pytest.raises(UnetppError, match="--device must be"):
        runtime.pick_device("tpu")


def test_loader_workers_and_memory_format_policies():
    assert runtime.loader_workers(torch.device("cpu")) == 0
    assert runtime.loader_workers(torch.device("cuda")) >= 1
    assert runtime.channels_last_pays("cpu", training=False, dims=2)
    assert not runtime.channels_last_pays("cpu", training=True, dims=2)
    assert not runtime.channels_last_pays("cpu", training=False, dims=3)
    assert runtime.channels_last_pays("cuda", training=True, dims=3)
