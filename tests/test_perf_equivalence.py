"""Every speed/memory optimisation computes what the plain network computes.

Tolerances: fp32 rearrangements (sum of convs instead of one conv over a concatenation,
channels_last, BN folding, checkpointing) change only the order of float additions, so
outputs agree to rtol=1e-4, atol=1e-5 and parameter gradients (sums over every pixel) to
rtol=1e-3, atol=1e-4, both atol scaled by the tensor's largest magnitude when above 1.
bf16 autocast is compared loosely (atol=5e-2 on unit-scale logits) and only for shape and
closeness, since bf16 keeps 8 bits of mantissa.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from unetpp import count_parameters, create_model
from unetpp import runtime as fast
from unetpp.models.blocks import ConvBlock

RTOL, ATOL = 1e-4, 1e-5
GRAD_RTOL, GRAD_ATOL = 1e-3, 1e-4
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waits when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(arch="unetpp", dims=2, **kw):
    torch.manual_seed(0)
    kw.setdefault("base_filters", 4)
    kw.setdefault("depth", 3 if dims == 3 else 4)
    return create_model(arch, dims=dims, **kw)


def as_list(out):
    return list(out.values()) if isinstance(out, dict) else [out]


def run(model, x, backward=False):
    out = as_list(model(x))
    if backward:
        sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in out).backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}
    return out, {}


def assert_same(a, b, rtol=RTOL, atol=ATOL):
    """Close within ``rtol`` and ``atol`` relative to the tensor's scale (gradients of weights
    sum thousands of terms, so their absolute size grows with the image)."""
    for x, y in zip(a, b, strict=True):
        scale = max(1.0, float(x.detach().abs().max()))
        torch.testing.assert_close(x.float(), y.float(), rtol=rtol, atol=atol * scale)


CASES = [("unetpp", 2, "paper", (2, 1, 37, 50)), ("unetpp", 2, "modern", (2, 1, 32, 32)),
         ("unet", 2, "paper", (2, 1, 33, 47)), ("unetpp", 3, "paper", (1, 1, 9, 17, 12)),
         ("wide-unet", 3, "modern", (2, 1, 16, 16, 16))]


@pytest.mark.parametrize("arch,dims,preset,shape", CASES)
def test_split_concat_equals_concatenation_forward_and_backward(arch, dims, preset, shape):
    ref = tiny(arch, dims, preset=preset).train()
    fast.set_split_concat(ref, False)
    opt = fast.set_split_concat(copy.deepcopy(ref), True)
    x = torch.randn(shape)
    out_ref, g_ref = run(ref, x, backward=True)
    out_opt, g_opt = run(opt, x, backward=True)
    assert_same(out_ref, out_opt)
    assert g_ref.keys() == g_opt.keys()
    assert_same(list(g_ref.values()), list(g_opt.values()), GRAD_RTOL, GRAD_ATOL)


def test_split_concat_keeps_state_dict_and_counts():
    for flag in (False, True):
        model = fast.set_split_concat(create_model("unetpp", preset="paper"), flag)
        assert count_parameters(model) == 9_041_700
    a = fast.set_split_concat(tiny(), False).state_dict()
    b = fast.set_split_concat(tiny(), True).state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert ConvBlock.split_concat is True  # the default


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 24, 40)), (3, (1, 1, 8, 16, 16))])
def test_checkpointing_same_outputs_and_gradients(dims, shape):
    ref = tiny(dims=dims).train()
    ckpt = fast.set_checkpointing(copy.deepcopy(ref), True)
    x = torch.randn(shape)
    out_ref, g_ref = run(ref, x, backward=True)
    out_ck, g_ck = run(ckpt, x, backward=True)
    assert_same(out_ref, out_ck)
    assert_same(list(g_ref.values()), list(g_ck.values()), GRAD_RTOL, GRAD_ATOL)


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 37, 50)), (3, (1, 1, 9, 17, 12))])
def test_channels_last_training_same(dims, shape):
    ref = tiny(dims=dims).train()
    cl = copy.deepcopy(ref).to(memory_format=fast.memory_format(dims))
    x = torch.randn(shape)
    out_ref, g_ref = run(ref, x, backward=True)
    out_cl, g_cl = run(cl, x.contiguous(memory_format=fast.memory_format(dims)), backward=True)
    assert_same(out_ref, out_cl)
    assert_same(list(g_ref.values()), list(g_cl.values()), GRAD_RTOL, GRAD_ATOL)


@pytest.mark.parametrize("arch,dims,preset,shape", CASES + [("unetpp", 2, "batch", (3, 1, 32, 32))])
def test_optimize_for_inference_same_outputs(arch, dims, preset, shape):
    norm = None
    if preset == "batch":
        preset, norm = "modern", "batch"
    model = tiny(arch, dims, preset=preset, **({"norm": norm} if norm else {}))
    if norm == "batch":  # give the running statistics something to fold
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(shape) * 2 + 0.5)
    model.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        ref = as_list(model(x))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = fast.optimize_for_inference(model)
    with torch.inference_mode():
        got = as_list(opt(x))
    assert_same(ref, got)
    assert not any(p.requires_grad for p in opt.parameters())
    if norm == "batch":
        kinds = {type(m).__name__ for m in opt.modules()}
        assert "BatchNorm2d" not in kinds
    # the original is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # pruning still works on the optimised copy
    if arch == "unetpp":
        with torch.inference_mode():
            assert_same([opt.prune(2)(x)], [model.prune(2)(x)])


def test_training_setup_and_autocast_choice():
    model = tiny()
    setup = fast.training_setup(model, "cpu", amp=True)
    # bf16 only where the CPU has native bf16; otherwise fp32 (emulated bf16 is slower)
    assert setup.amp_dtype == (torch.bfloat16 if fast.cpu_has_fast_bf16() else None)
    assert fast.autocast_dtype("cpu", amp=False) is None
    x = setup.prepare(torch.randn(2, 1, 32, 32))
    with setup.autocast():
        out = model(x)
    assert sorted(out) == [1, 2, 3, 4]
    assert setup.grad_scaler_needed is False


def test_bf16_autocast_close_to_fp32():
    model = tiny().eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        ref = as_list(model(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = as_list(model(x))
    assert_same(ref, got, rtol=5e-2, atol=5e-2)


def _load_bench():
    spec = importlib.util.spec_from_file_location("unetpp_bench", ROOT / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_steps_smoke():
    """The benchmark's building blocks run (the full `--quick` run takes minutes here)."""
    bench = _load_bench()
    bench.make_train_step("unetpp-ds", 2, 1, 32)()
    bench.make_train_step("unetpp-ds@concat", 2, 1, 32)()
    bench.make_infer_step("unetpp-L2@opt", 2, 1, 32, ROOT)()
    assert "UNet++ L2" in bench.label("unetpp-L2@opt")
    if bench.monai_unetpp(2) is not None:
        bench.make_train_step("monai", 2, 1, 32)()


@pytest.mark.skipif(not (ROOT / "benchmarks" / "run.py").exists() or
                    not __import__("os").environ.get("UNETPP_BENCH_SMOKE"),
                    reason="set UNETPP_BENCH_SMOKE=1: `run.py --quick` takes 1-2 min on 2 cores")
def test_benchmark_quick_run(tmp_path):
    import subprocess
    out = tmp_path / "b.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    assert "## Goals" in out.read_text()

