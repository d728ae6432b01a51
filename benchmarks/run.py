"""Speed and memory of unetpp's models beside MONAI's BasicUNetPlusPlus, in one interleaved run.

    python benchmarks/run.py --out docs/benchmarks.md      # `make bench`, ~6-10 min on 2 cores
    python benchmarks/run.py --quick                       # smoke run, tiny sizes, ~20 s

Method (also written into the report):
- Throughput: every case of a table runs once per repetition, cases interleaved (the order
  rotates each repetition), after a warm-up; the median over repetitions is reported, and
  ratios are taken to MONAI's median in the same table. Training = forward, BCE-with-logits
  summed over heads, backward, Adam step. Inference = forward under ``torch.inference_mode``.
- GFLOP/s: forward FLOPs from ``torch.utils.flop_counter`` (convs and transposed convs,
  2 per multiply-add; training counted as 3x forward), over the median step time, as a
  share of an fp32 2048x2048 matmul rate measured inside the same interleaved loop.
- Peak memory: one fresh subprocess per measurement, with ``MALLOC_MMAP_THRESHOLD_=65536`` so
  that every tensor-sized block is mmap'd and returned to the OS on free (RSS then follows
  live memory instead of glibc's free lists). After a warm-up step (weights, gradients and
  Adam state allocated), gradients are set to None, the kernel's peak-RSS mark is reset
  (``/proc/self/clear_refs`` = 5) and one more step runs; reported: ``VmHWM - VmRSS before``,
  i.e. activations + gradients + workspace of one step above the steady state.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unetpp import count_parameters, create_model  # noqa: E402
from unetpp import runtime as fast  # noqa: E402
from unetpp.models.summary import count_flops  # noqa: E402

MONAI_FEATURES = (32, 64, 128, 256, 512, 32)


# --------------------------------------------------------------------------- models
#: in the output file, this line and everything after it are kept when the report is rewritten
KEPT = "<!-- written by benchmarks/data.py, nodeform.py, deploy.py and window.py: kept by run.py -->"

def monai_unetpp(dims: int, deep_supervision: bool = True) -> nn.Module | None:
    try:
        from monai.networks.nets import BasicUNetPlusPlus
    except Exception:  # pragma: no cover - optional dependency
        return None
    return BasicUNetPlusPlus(spatial_dims=dims, in_channels=1, out_channels=1, features=MONAI_FEATURES,
                             deep_supervision=deep_supervision, act=("relu", {"inplace": True}),
                             norm=None, upsample="deconv", dropout=0.0)


def smp_status() -> str:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"not benchmarked: `import segmentation_models_pytorch` fails here ({type(e).__name__}: {e}); it needs torchvision, which this CPU-only environment does not install"
    return "importable (not benchmarked: 2D encoders from timm/torchvision, not the paper's network)"


def build(key: str, dims: int) -> nn.Module:
    """Model by benchmark key. ``@concat``: textbook concatenation instead of split convs."""
    torch.manual_seed(0)
    name, _, variant = key.partition("@")
    if name == "monai":
        m = monai_unetpp(dims)
        if m is None:
            raise RuntimeError("monai is not installed")
    elif name == "unetpp-ds":
        m = create_model("unetpp", preset="paper", dims=dims, deep_supervision=True)
    elif name == "unetpp":
        m = create_model("unetpp", preset="paper", dims=dims, deep_supervision=False)
    elif name.startswith("unetpp-L"):
        m = create_model("unetpp", preset="paper", dims=dims, deep_supervision=True).prune(int(name[-1]))
    elif name in ("unet", "wide-unet"):
        m = create_model(name, preset="paper", dims=dims)
    else:
        raise ValueError(key)
    if name != "monai":
        fast.set_split_concat(m, variant != "concat")
        fast.set_checkpointing(m, variant == "ckpt")
    return m


LABELS = {
    "monai": "MONAI BasicUNetPlusPlus (4 heads)",
    "unetpp-ds": "UNet++ L4, deep supervision (4 heads)",
    "unetpp": "UNet++ L4, no deep supervision",
    "unetpp-L1": "UNet++ L1 (pruned)", "unetpp-L2": "UNet++ L2 (pruned)",
    "unetpp-L3": "UNet++ L3 (pruned)", "unetpp-L4": "UNet++ L4 (pruned, 1 head)",
    "unet": "U-Net", "wide-unet": "wide U-Net",
}
#: what the runtime decided for each "@amp" case (one line)
AMP_NOTES: dict[str, str] = {}
VARIANTS = {"": "", "amp": ", --amp (runtime policy)", "concat": ", textbook concat", "ckpt": ", checkpointing", "cl": ", channels_last",
            "bf16": ", bf16 autocast", "cl+bf16": ", channels_last + bf16", "opt": ", optimize_for_inference",
            "ort": ", ONNX Runtime", "compile": ", torch.compile"}


def label(key: str) -> str:
    name, _, variant = key.partition("@")
    return LABELS[name] + VARIANTS.get(variant, f", {variant}")


def outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, dict):
        return list(out.values())
    if isinstance(out, (list, tuple)):
        return list(out)
    return [out]


# --------------------------------------------------------------------------- steps
def make_train_step(key: str, dims: int, batch: int, size: int) -> Callable[[], None]:
    name, _, variant = key.partition("@")
    model = build(name + ("@" + variant if variant in ("concat", "ckpt") else ""), dims).train()
    cl = "cl" in variant.split("+")
    fmt = fast.memory_format(dims) if cl else torch.contiguous_format
    model.to(memory_format=fmt)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in variant else contextlib.nullcontext()
    if variant == "amp":  # what `unetpp train --amp` does: the runtime's policy, measured on this model
        g0 = torch.Generator().manual_seed(1)
        probe = torch.randn((batch, 1) + (size,) * dims, generator=g0)
        precision, note = fast.choose_precision(torch.device("cpu"), True,
                                                measure=lambda dt: fast.autocast_speedup(model, probe, dt))
        AMP_NOTES[key] = note or f"bf16 autocast (measured faster on this CPU)"
        amp = precision.autocast()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    if variant == "compile":
        model = torch.compile(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, 1) + (size,) * dims, generator=g).contiguous(memory_format=fmt)
    y = (torch.rand((batch, 1) + (size,) * dims, generator=g) > 0.5).float()
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            outs = outputs(model(x))
        loss = sum(loss_fn(o.float(), y) for o in outs)
        loss.backward()
        opt.step()

    return step


def make_infer_step(key: str, dims: int, batch: int, size: int, tmp: Path) -> Callable[[], None]:
    name, _, variant = key.partition("@")
    model = build(name, dims).eval()
    x = torch.randn((batch, 1) + (size,) * dims, generator=torch.Generator().manual_seed(0))
    if variant == "ort":
        import onnxruntime as ort
        m = copy.deepcopy(model)
        fast.set_split_concat(m, False)  # one Conv over a Concat: what ORT fuses best
        path = tmp / f"{name}-{dims}d.onnx"
        with torch.no_grad():
            torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["image"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {"image": x.numpy()}
        return lambda: sess.run(None, feed)
    if variant in ("opt", "opt+bf16", "compile"):
        model = fast.optimize_for_inference(model, channels_last=True)
        x = x.contiguous(memory_format=fast.memory_format(dims))
    if variant == "compile":
        model = torch.compile(model)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if "bf16" in variant else contextlib.nullcontext

    def step() -> None:
        with torch.inference_mode(), amp():
            model(x)

    return step


# --------------------------------------------------------------------------- timing
def matmul_step(n: int = 2048, dtype: torch.dtype = torch.float32) -> tuple[Callable[[], None], float]:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


@dataclass
class Case:
    key: str
    step: Callable[[], None]
    reps: int | None = None          # run only in the first ``reps`` repetitions
    first_call_s: float = 0.0
    times: list[float] = field(default_factory=list)


def interleave(cases: list[Case], reps: int, log: Callable[[str], None]) -> None:
    for c in cases:  # warm-up (first call: allocations, oneDNN primitive creation, compile)
        t = time.perf_counter()
        c.step()
        c.first_call_s = time.perf_counter() - t
    for r in range(reps):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for c in order:
            if c.reps is not None and r >= c.reps:
                continue
            t = time.perf_counter()
            c.step()
            c.times.append(time.perf_counter() - t)
        log(f"  rep {r + 1}/{reps} done")


def median(c: Case) -> float:
    return statistics.median(c.times)


# --------------------------------------------------------------------------- memory
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field_name):
                return int(line.split()[1])
    raise RuntimeError(field_name)


def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(spec["threads"])
    dims, batch, size = spec["dims"], spec["batch"], spec["size"]
    if spec["mode"] == "train":
        step = make_train_step(spec["key"], dims, batch, size)
    else:
        step = make_infer_step(spec["key"], dims, batch, size, Path(tempfile.gettempdir()))
    step()
    gc.collect()
    before = _status_kb("VmRSS:")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    step()
    peak = _status_kb("VmHWM:")
    return {"peak_mb": (peak - before) / 1024}


def measure_memory(spec: dict[str, Any]) -> float | None:
    env = {**os.environ, **MEMORY_ENV, "PYTHONPATH": str(ROOT / "src")}
    try:
        r = subprocess.run([sys.executable, __file__, "--memory-child", json.dumps(spec)], env=env,
                           capture_output=True, text=True, timeout=600, check=True)
        return json.loads(r.stdout.strip().splitlines()[-1])["peak_mb"]
    except Exception as e:  # noqa: BLE001
        print(f"memory measurement failed for {spec}: {e}", file=sys.stderr)
        return None


# --------------------------------------------------------------------------- report
def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except Exception:  # noqa: BLE001
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("monai", "onnx", "onnxruntime", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = "not installed"
    import unetpp
    versions["unetpp"] = getattr(unetpp, "__version__", "?")
    flags = fast.cpu_flags()
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16") if f in flags) or "?"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "threads": str(torch.get_num_threads()),
            "isa": isa, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items())}


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the Markdown report here")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1-2 repetitions: a smoke run")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per table (default 5; quick 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile (training and inference; first calls of 1-2 min each)")
    ap.add_argument("--skip-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    q = args.quick
    reps = args.reps or (1 if q else 3)
    if q:
        args.compile = False
    reps3d = max(2, reps - 1) if not q else 1
    # sizes: (batch, side)
    train2d, infer2d = ((1, 64), (1, 64)) if q else ((2, 128), (1, 256))
    train3d, infer3d = ((1, 16), (1, 16)) if q else ((1, 32), (1, 32))
    t_start = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t_start:6.1f}s] {s}", flush=True)  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="unetpp-bench-"))
    has_monai = monai_unetpp(2) is not None
    mm_step, mm_flops = matmul_step(512 if q else 2048)

    results: dict[str, Any] = {}

    def table(name: str, keys: list[str], make: Callable[[str], Callable[[], None]], r: int,
              slow: dict[str, int] | None = None) -> list[Case]:
        log(f"{name}: building {len(keys)} cases")
        cases = [Case("matmul", mm_step)]
        for k in keys:
            if k.startswith("monai") and not has_monai:
                continue
            try:
                cases.append(Case(k, make(k), reps=(slow or {}).get(k)))
            except Exception as e:  # noqa: BLE001
                log(f"  {k}: skipped ({type(e).__name__}: {e})")
        interleave(cases, r, log)
        results[name] = cases
        return cases

    def flops_of(key: str, dims: int, batch: int, size: int) -> int:
        name = key.partition("@")[0]
        with torch.device("meta"):
            m = build(name, dims)
        return batch * count_flops(m, (1, 1) + (size,) * dims)

    # ---------------------------------------------------------------- 2D training
    b, s = train2d
    keys = ["monai", "unetpp-ds", "unetpp-ds@concat", "unetpp-ds@cl", "unetpp-ds@ckpt", "unetpp", "unet",
            "wide-unet", "unetpp-ds@bf16", "unetpp-ds@amp"]
    if args.compile:
        keys.append("unetpp-ds@compile")
    if q:
        keys = ["monai", "unetpp-ds", "unetpp-ds@concat", "unetpp-ds@amp"]
    tr2 = table("train2d", keys, lambda k: make_train_step(k, 2, b, s), reps,
                slow={"unetpp-ds@bf16": 1 if q else 2})
    # ---------------------------------------------------------------- 2D inference
    b, s = infer2d
    keys = ["monai", "unetpp-ds", "unetpp-L1", "unetpp-L2", "unetpp-L3", "unetpp-L4", "unet",
            "wide-unet", "unetpp-L4@opt", "unetpp-L2@opt", "unetpp-L4@bf16", "unetpp-L4@ort",
            "unetpp-L2@ort"]
    if args.compile:
        keys.append("unetpp-L4@compile")
    if q:
        keys = ["monai", "unetpp-L2", "unetpp-L4", "unetpp-L4@opt", "unetpp-L2@ort"]
    in2 = table("infer2d", keys, lambda k: make_infer_step(k, 2, b, s, tmp), reps,
                slow={"unetpp-L4@bf16": 1 if q else 2})
    # ---------------------------------------------------------------- 3D
    b, s = train3d
    keys = ["monai", "unetpp-ds", "unetpp-ds@ckpt", "unetpp-ds@cl", "unet"]
    tr3 = table("train3d", [] if q else keys, lambda k: make_train_step(k, 3, b, s), reps3d)
    b, s = infer3d
    keys = ["monai", "unetpp-ds", "unetpp-L2", "unetpp-L4", "unetpp-L4@opt", "unet", "unetpp-L4@ort"]
    in3 = table("infer3d", ["unetpp-L2"] if q else keys, lambda k: make_infer_step(k, 3, b, s, tmp), reps3d)

    # ---------------------------------------------------------------- memory
    log("peak memory (one subprocess each)")
    mem_specs = [("train", 2, train2d, ["monai", "unetpp-ds", "unetpp-ds@concat", "unetpp-ds@ckpt", "unet"]),
                 ("infer", 2, infer2d, ["monai", "unetpp-L4", "unetpp-L2"]),
                 ("train", 3, train3d, ["monai", "unetpp-ds", "unetpp-ds@ckpt"])]
    if q:
        mem_specs = [("train", 2, train2d, ["unetpp-ds"])]
    if args.skip_memory:
        mem_specs = []
    memory: dict[tuple[str, int, str], float | None] = {}
    for mode, dims, (b, s), keys in mem_specs:
        for k in keys:
            if k == "monai" and not has_monai:
                continue
            memory[(mode, dims, k)] = measure_memory({"mode": mode, "dims": dims, "batch": b, "size": s,
                                                      "key": k, "threads": threads})
    log("done measuring; writing report")

    # ---------------------------------------------------------------- report
    mm_rate = statistics.median(mm_flops / t for t in next(c for c in tr2 if c.key == "matmul").times)

    def rows(cases: list[Case], dims: int, batch: int, size: int, train: bool, mode: str) -> list[str]:
        ref = next((median(c) for c in cases if c.key == "monai"), None)
        l4 = next((median(c) for c in cases if c.key == "unetpp-L4"), None)
        rate_all = [mm_flops / t for t in cases[0].times]
        rate = statistics.median(rate_all)
        out = [f"| model | params | images/s | × MONAI | GFLOP/s | % of matmul | first call s | peak MB | reps |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in cases[1:]:
            if not c.times:
                continue
            t = median(c)
            name = c.key.partition("@")[0]
            with torch.device("meta"):
                params = count_parameters(build(name, dims))
            fl = flops_of(c.key, dims, batch, size) * (3 if train else 1)
            gfs = fl / t / 1e9
            ratio = ref / t if ref else None
            extra = f" ({l4 / t:.2f}× L4)" if (not train and l4 and name.startswith("unetpp-L")) else ""
            mem = memory.get((mode, dims, c.key))
            out.append(f"| {label(c.key)} | {params:,} | {batch / t:.2f} | {fmt(ratio)}{extra} | {gfs:.1f} | "
                       f"{100 * gfs * 1e9 / rate:.0f}% | {c.first_call_s:.1f} | {fmt(mem, '.0f')} | {len(c.times)} |")
        out.append("")
        out.append(f"fp32 matmul in this table: median {rate / 1e9:.0f} GFLOP/s "
                   f"(min {min(rate_all) / 1e9:.0f}, max {max(rate_all) / 1e9:.0f}).")
        return out

    def t_of(cases: list[Case], key: str) -> float | None:
        c = next((c for c in cases if c.key == key and c.times), None)
        return median(c) if c else None

    def ratio(cases: list[Case], num: str, den: str) -> float | None:
        a, b_ = t_of(cases, num), t_of(cases, den)
        return None if a is None or b_ is None else a / b_

    mach = machine()
    goals = []
    r_fp32 = ratio(tr2, "monai", "unetpp-ds")
    best_amp = max((k for k in ("unetpp-ds", "unetpp-ds@cl", "unetpp-ds@bf16") if t_of(tr2, k)),
                   key=lambda k: -t_of(tr2, k), default=None)
    r_amp = ratio(tr2, "monai", "unetpp-ds@bf16")
    m_ours, m_monai = memory.get(("train", 2, "unetpp-ds")), memory.get(("train", 2, "monai"))
    m_ratio = m_ours / m_monai if m_ours and m_monai else None
    r_l2 = ratio(in2, "unetpp-L4", "unetpp-L2")
    exp = {k: ratio(in2, "unetpp-L4", k) for k in ("unetpp-L4@ort", "unetpp-L4@bf16", "unetpp-L4@opt",
                                                 "unetpp-L4@compile")}
    exp = {k: v for k, v in exp.items() if v is not None}
    best_exp = max(exp, key=lambda k: exp[k]) if exp else None

    def ok(v: float | None, goal: float, le: bool = False) -> str:
        if v is None:
            return "not measured"
        return "**met**" if (v <= goal if le else v >= goal) else "**not met**"

    goals.append(f"| training fp32, paper filters, ≥ 1.2× MONAI | {fmt(r_fp32)}× | {ok(r_fp32, 1.2)} |")
    goals.append(f"| training with bf16 autocast ≥ 2.5× MONAI fp32 | {fmt(r_amp)}× (bf16); best of our "
                 f"settings: {fmt(ratio(tr2, 'monai', best_amp) if best_amp else None)}× ({label(best_amp) if best_amp else '-'}) | "
                 f"{ok(r_amp, 2.5)} |")
    r_amp_fp32 = ratio(tr2, "unetpp-ds", "unetpp-ds@amp")
    goals.append(f"| `--amp` never slower than fp32 in training (≥ 0.95×, timing noise) | {fmt(r_amp_fp32)}× "
                 f"({AMP_NOTES.get('unetpp-ds@amp', 'not run')}) | {ok(r_amp_fp32, 0.95)} |")
    goals.append(f"| training peak memory ≤ 0.7× MONAI | {fmt(m_ratio)}× ({fmt(m_ours, '.0f')} vs "
                 f"{fmt(m_monai, '.0f')} MB) | {ok(m_ratio, 0.7, le=True)} |")
    goals.append(f"| inference: pruned L2 ≥ 2.5× faster than L4 | {fmt(r_l2)}× | {ok(r_l2, 2.5)} |")
    goals.append(f"| fastest export/inference path ≥ 2× eager fp32 | {fmt(exp.get(best_exp) if best_exp else None)}× "
                 f"({label(best_exp) if best_exp else '-'}) | {ok(exp.get(best_exp) if best_exp else None, 2.0)} |")

    bf16_mm = None
    try:
        a = torch.randn(256, 256, dtype=torch.bfloat16)
        t = time.perf_counter()
        for _ in range(3):
            torch.mm(a, a)
        bf16_mm = 3 * 2 * 256**3 / (time.perf_counter() - t)
    except Exception:  # noqa: BLE001
        pass

    elapsed = time.perf_counter() - t_start
    lines = [
        "# Benchmarks",
        "",
        f"Written by `benchmarks/run.py{' --quick' if q else ''}` (`make bench`) on "
        f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} min. "
        "Never a timed test: numbers depend on the machine and its load.",
        "",
        "## Machine",
        "",
        f"- CPU: {mach['cpu']}, {mach['cores']} cores, torch threads {mach['threads']}; ISA flags: "
        f"{mach['isa']}; torch CPU capability {mach['torch_cpu_capability']}",
        f"- fast bf16 on this CPU: {'yes' if fast.cpu_has_fast_bf16() else 'no (no AVX-512 BF16 / AMX: oneDNN emulates bf16)'}; "
        f"measured fp32 matmul {mm_rate / 1e9:.0f} GFLOP/s, bf16 matmul {fmt(bf16_mm and bf16_mm / 1e9, '.1f')} GFLOP/s",
        f"- versions: {mach['versions']}",
        f"- smp UnetPlusPlus: {smp_status()}",
        f"- load while running: {os.getloadavg()[0]:.2f} (1-min average at the end; other work shares the cores)",
        "",
        "## Goals (ratios from this run)",
        "",
        "| goal | measured | |",
        "|---|---|---|",
        *goals,
        "",
        "## Method",
        "",
        *[ln.strip() and ln.rstrip() for ln in (__doc__ or "").split("Method (also written into the report):")[1].splitlines()],
        f"- Repetitions: {reps} (2D), {reps3d} (3D); bf16 cases fewer (they are slow here). Sizes: "
        f"2D training {train2d[0]}×{train2d[1]}², 2D inference {infer2d[0]}×{infer2d[1]}², "
        f"3D training {train3d[0]}×{train3d[1]}³, 3D inference {infer3d[0]}×{infer3d[1]}³ (batch × side). "
        "All models fp32 unless the row says otherwise; `first call s` is the warm-up call "
        "(includes torch.compile's compilation, and oneDNN's primitive creation).",
        "- MONAI: `BasicUNetPlusPlus(features=(32, 64, 128, 256, 512, 32), norm=None, act=relu, "
        "upsample='deconv', deep_supervision=True)`. Its parameter count differs from the paper's "
        "(its up-convs halve channels and its last decoder has 32 filters), see the params column.",
        "- `textbook concat`: the node input concatenated, then one conv (the reference form). Default: "
        "`split_concat`, the first conv of a node as a sum of convs over the parts with slices of the "
        "same weight (same parameters and state_dict); the concatenation is never materialised.",
        "- `optimize_for_inference`: a copy in eval mode, BN folded (none in the paper preset), "
        "channels_last; run under `torch.inference_mode()`.",
        "- `ONNX Runtime`: `torch.onnx.export(dynamo=False, opset 17)` of the concat form, "
        "ORT CPU provider with the same thread count, all graph optimisations.",
        "",
    ]
    b, s = train2d
    lines += [f"## 2D training (batch {b}, {s}×{s})", "", *rows(tr2, 2, b, s, True, "train"), ""]
    b, s = infer2d
    lines += [f"## 2D inference (batch {b}, {s}×{s})", "", *rows(in2, 2, b, s, False, "infer"), ""]
    b, s = train3d
    lines += [f"## 3D training (batch {b}, {s}³)", "", *rows(tr3, 3, b, s, True, "train"), ""]
    b, s = infer3d
    lines += [f"## 3D inference (batch {b}, {s}³)", "", *rows(in3, 3, b, s, False, "infer"), ""]
    lines += [NOTES, ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        old = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if KEPT in old:  # the sections the other benchmarks wrote stay as they are
            report = report.rstrip("\n") + "\n\n" + old[old.index(KEPT):]
        tmp_out = args.out.with_suffix(".tmp")
        tmp_out.write_text(report, encoding="utf-8")
        tmp_out.replace(args.out)
        log(f"wrote {args.out}")
    return 0


NOTES = """## What was tried, and what was kept

- **split_concat (kept, default on)**: conv over a concatenation = sum of convs over its parts,
  with slices of the one weight. Training memory falls by about a third to a half and the
  step is also faster on CPU (no copy of every skip into a fresh buffer); see the
  `textbook concat` rows.
- **channels_last**: faster at inference on CPU (used by `optimize_for_inference`), slower
  in training (backward of the transposed convs and pooling), so `training_setup` leaves it
  off on CPU and turns it on for CUDA.
- **bf16 autocast**: on a CPU without AVX-512 BF16 / AMX, oneDNN emulates bf16 and every conv
  runs several times slower than fp32 (see the bf16 rows). `fast.autocast_dtype` returns
  None there, so `--amp` is a no-op on such CPUs and bf16 where the hardware has it.
- **activation checkpointing** (`fast.set_checkpointing`): an option for 3D patches; trades
  recomputation for memory, see the `checkpointing` rows.
- **torch.compile**: long first call and little or no gain on this CPU at inference, so it is
  opt-in (`fast.compiled`), not a default.
- **ONNX Runtime**: measured for the export path; the export CLI belongs to inference.
- **in-place activations**: already used (ReLU/LeakyReLU `inplace=True`)."""


if __name__ == "__main__":
    sys.exit(main())
