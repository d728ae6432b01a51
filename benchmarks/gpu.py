"""UNet++ on one CUDA GPU: inference and training speed of the paper's network, and the
real `unetpp train` on CT-like volumes, in one run of at most 6 minutes (issue 17 item 5,
issue 21 item 7). Writes ``gpu.json`` and ``gpu.md`` into ``--out``.

    python benchmarks/gpu.py --out docs/results/gpu        # on a machine with a CUDA PyTorch
    python benchmarks/gpu.py --dry-run --out /tmp/gpu      # CPU, tiny sizes, ~1 min: the code paths

What it measures (random weights: speed does not depend on them):
1. Inference, seconds per image through the real Predictor path (BN-folded copy, sliding
   window, probabilities back on the CPU): UNet++ paper preset with deep supervision, 2D
   512x512 at L1..L4 and accurate mode in fp32, bf16 and fp16 autocast; 3D 256x256x64 (D=64)
   accurate mode in fp32 and bf16. Windows: the defaults (training patch 96 / 64 per axis,
   overlap 0.5, 4 per pass), and the "large" policy too where this Predictor has one. ONNX
   Runtime's CUDA provider when onnxruntime has it (else its status is recorded).
2. Training, samples/s of `unetpp train`'s step (forward, deep-supervision loss, backward,
   Adam) at its default batches (8 x 96^2 in 2D, 2 x 64^3 in 3D): fp32, bf16 AMP, bf16 +
   channels_last, bf16 + channels_last + torch.compile (`--compile` on CUDA; compile time
   apart, in a child process). Plus the machine: GPU, torch, CUDA, cuDNN, TF32 switches.
3. `unetpp train` itself, 3D then 2D, about a minute each on generated CT-like volumes: wall
   time, start-up, the share spent in training steps, samples/s and MFU (gpu_train.py).

Time: a row times 3 calls (training: 10 steps) after a warm-up, fewer past ~10 s. Sections
end at 22 % (inference), 31 % (training), 35 % (ONNX Runtime), 47 % (compile) and 100 %
(`unetpp train`) of --budget (default 340 s from the start, imports included): rows past their
section's end are skipped with a note instead of overrunning, a compile still running then is
killed, and the training runs get what is left (--max-minutes 1, or less if that does not fit).

On this workplace's GPU machine (the `run` device tool): its own ``python3`` (Python 3.12,
/opt/torch/.venv) holds a CUDA torch, Triton, numpy, safetensors, rich and onnxruntime, but
no MONAI, which the sliding window imports. This repo's ``.venv`` cannot go along (1.5 GB
against the 64 MiB carry limit; its python is a link into this machine's pyenv; its torch is
a CPU wheel), and nothing can be installed there. So carry MONAI and nibabel (NIfTI, for the
`unetpp train` section), both pure Python: this script (and the children it starts) appends
every ``.venv/lib/python3*/site-packages`` to the *end* of sys.path, so the machine's packages
(its CUDA torch) win and only what it lacks comes from there::

    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --out $OUT/gpu",
        carry=[".venv/lib/python3.11/site-packages/monai",
               ".venv/lib/python3.11/site-packages/nibabel"], timeout_s=420)

Without a CUDA torch (e.g. ``.venv/bin/python`` here) it prints one line saying so and exits 2.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

START = time.monotonic()  # the budget counts from here: imports included
import torch  # noqa: E402

sys.path.append(str(Path(__file__).resolve().parent))  # gpu_train.py beside this file
import gpu_train  # noqa: E402

gpu_train.add_paths()  # src/ first, .venv's site-packages after the interpreter's own
import unetpp  # noqa: E402
from unetpp import create_model, runtime  # noqa: E402
from unetpp.inference.predictor import Predictor  # noqa: E402
from unetpp.io import atomic_write_json, atomic_write_text  # noqa: E402
from unetpp.models import Mode  # noqa: E402
from unetpp.training.loss import DeepSupervisionLoss  # noqa: E402
from unetpp.training.memory import step_memory  # noqa: E402

# ----------------------------------------------------------------------------- sizes
# training rows at issue 21's goal sizes (2D 32 x 256^2, 3D 2 x 128^3); inference windows at the patch
FULL = dict(image={2: (512, 512), 3: (64, 256, 256)}, patch={2: (96, 96), 3: (64, 64, 64)},
            batch={2: 8, 3: 2}, train_patch={2: (256, 256), 3: (128, 128, 128)}, train_batch={2: 32, 3: 2}, width=32, windows_per_pass=4, repeats=3, steps=10, budget=340.0, row_cap=10.0)
DRY = dict(image={2: (64, 64), 3: (16, 32, 32)}, patch={2: (32, 32), 3: (16, 16, 16)},
           batch={2: 2, 3: 1}, train_patch={2: (32, 32), 3: (16, 16, 16)}, train_batch={2: 2, 3: 1}, width=4, windows_per_pass=4, repeats=1, steps=2, budget=120.0, row_cap=5.0)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TRAIN_VARIANTS = ("fp32", "bf16", "bf16+cl", "bf16+cl+compile")
S: dict[str, Any] = FULL  # the sizes of this run (DRY with --dry-run)
DEADLINE = float("inf")   # time.monotonic() after which rows are skipped


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def left() -> float:
    return DEADLINE - time.monotonic()


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, int]:
    """Median seconds of ``fn`` over up to ``repeats`` calls after one warm-up; fewer when
    the row has run ``row_cap`` seconds or the section's time is up."""
    fn()
    sync(device)
    times: list[float] = []
    while len(times) < repeats and (not times or (sum(times) < S["row_cap"] and left() > 0)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def peak_gib(device: torch.device, reset: bool = False) -> float | None:
    if device.type != "cuda":
        return None
    # resetting before this process has initialised CUDA raises "Invalid device argument"
    # (the compile child's first row); nothing is allocated then, so there is nothing to reset
    if reset and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def record(rows: list[dict[str, Any]], row: dict[str, Any], measure: Callable[[], dict[str, Any]],
           device: torch.device) -> None:
    """Run one row unless its section's time is up; an error is kept as one line, not raised."""
    if left() <= 0:
        row["skipped"] = "time limit reached"
    else:
        try:
            peak_gib(device, reset=True)
            row.update(measure(), peak_gib=peak_gib(device))
        except Exception as e:  # noqa: BLE001 - one row's failure (OOM, compile) is a result too
            row["error"] = one_line(e)
        torch.cuda.empty_cache()  # a no-op without CUDA
    rows.append(row)
    print(json.dumps(row), flush=True)


# ----------------------------------------------------------------------------- models
def paper_model(dims: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("unetpp", preset="paper", dims=dims, deep_supervision=True, base_filters=S["width"])


def predictor(dims: int, device: torch.device, window: str | None = None) -> Predictor:
    """A Predictor around fresh weights, with the minimal run config it reads (the patch)."""
    config = {"train": {"patch_size": list(S["patch"][dims])}, "data": {}}
    extra = {"window": window} if window else {}
    return Predictor(paper_model(dims), config, device=device, batch_size=S["windows_per_pass"], amp=False, **extra)


# ----------------------------------------------------------------------------- 1. inference
def inference(device: torch.device, rows: list[dict[str, Any]]) -> None:
    plan = [(2, [Mode.fast(lv) for lv in (1, 2, 3, 4)] + [Mode.accurate()], ["fp32", "bf16", "fp16"]),
            (3, [Mode.accurate()], ["fp32", "bf16"])]
    # None: the Predictor's default window; "large" too where this Predictor has window policies
    for window in [None, "large"] if hasattr(Predictor, "window_for") else [None]:
        for dims, modes, precisions in plan:
            head = {"dims": dims, "engine": "torch", "mode": "all", "window": window or "patch"}
            try:
                if left() <= 0:
                    raise TimeoutError("time limit reached")
                p = predictor(dims, device, window)
            except Exception as e:  # noqa: BLE001
                rows.append({**head, "skipped" if isinstance(e, TimeoutError) else "error": one_line(e)})
                continue
            image = torch.randn((1, *S["image"][dims]), generator=torch.Generator().manual_seed(0))
            for mode in modes:
                for name in precisions:
                    p.precision = runtime.Precision(p.device, PRECISIONS[name])  # no dtype argument to ask for

                    def measure(p=p, image=image, mode=mode) -> dict[str, Any]:
                        seconds, n = timed(lambda: p.predict_tensor(image, mode), device, S["repeats"])
                        return {"seconds": seconds, "repeats": n}

                    record(rows, {"dims": dims, "engine": "torch", "mode": str(mode), "precision": name,
                                  "window": getattr(getattr(p, "window", None), "policy", "patch"),
                                  "image": list(S["image"][dims]), "patch": list(p.patch_size)}, measure, device)
            del p


def onnxruntime_status(dry_run: bool) -> tuple[str | None, str]:
    """(the device to run exported files on, or None; one line for the report). Dry run: CPU."""
    try:
        import onnxruntime as ort
    except Exception as e:  # noqa: BLE001
        return None, f"not installed ({one_line(e)})"
    providers = ort.get_available_providers()
    line = f"onnxruntime {ort.__version__}, providers {', '.join(providers)}"
    if dry_run:
        return "cpu", line + ": dry run, CPU provider"
    if "CUDAExecutionProvider" not in providers:
        return None, line + ": no CUDA execution provider, not measured"
    trt = "; TensorRT not measured (its engine build takes minutes)" if "TensorrtExecutionProvider" in providers else ""
    return "cuda", line + trt


def onnxruntime_rows(device: torch.device, rows: list[dict[str, Any]], ort_device: str) -> None:
    """2D accurate mode through an exported file (`unetpp export`, fp32) on ONNX Runtime."""
    from unetpp.inference import deployed

    image = torch.randn((1, *S["image"][2]), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        def measure() -> dict[str, Any]:
            path = Path(tmp) / "accurate.onnx"
            t0 = time.perf_counter()
            base = predictor(2, torch.device("cpu"))  # exported on the CPU, as `unetpp export` does
            deployed.export_run(base, "onnx", path, Mode.accurate())  # ~10 s: checked against PyTorch
            export_s = time.perf_counter() - t0
            d = deployed.load(path, device=ort_device, batch_size=S["windows_per_pass"])
            seconds, n = timed(lambda: d.predict_tensor(image), device, S["repeats"])
            return {"seconds": seconds, "repeats": n, "export_s": export_s}

        record(rows, {"dims": 2, "engine": f"onnxruntime {ort_device}", "mode": "accurate", "precision": "fp32",
                      "window": "patch", "image": list(S["image"][2]), "patch": list(S["patch"][2])}, measure, device)


# ----------------------------------------------------------------------------- 2. training
def train_step(dims: int, variant: str, device: torch.device, backend: str | None = None) -> dict[str, Any]:
    """samples/s of `unetpp train`'s step (autocast forward, loss, scaled backward, Adam)."""
    model = paper_model(dims)
    precision = runtime.Precision(device, None if variant == "fp32" else torch.bfloat16)
    setup = runtime.training_setup(model, device, channels_last="+cl" in variant, precision=precision)
    net = runtime.compiled(model, **({"backend": backend} if backend else {})) if "compile" in variant else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = DeepSupervisionLoss(tuple(model.levels), model.config.classes)
    scaler = precision.grad_scaler()
    batch, patch = S["train_batch"][dims], S["train_patch"][dims]
    g = torch.Generator().manual_seed(0)
    x = setup.prepare(torch.randn((batch, 1, *patch), generator=g).to(device))
    y = (torch.rand((batch, *patch), generator=g) > 0.5).long().to(device)

    def step() -> None:
        with setup.autocast():
            outputs = net(x)
        loss = criterion(outputs, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    t0 = time.perf_counter()
    step()  # first step: cuDNN autotuning, and the compile
    sync(device)
    first = time.perf_counter() - t0
    seconds, n = timed(step, device, S["steps"])  # one more warm-up step inside
    row = {"samples_per_s": batch / seconds, "step_s": seconds, "steps": n, "first_step_s": first,
           # the planner's memory model (training/memory.py) beside the measured peak of this row
           "model_gib": round(step_memory(model.config, batch, patch, 4 if variant == "fp32" else 2) / 2**30, 2)}
    if "compile" in variant:
        row["compile_s"] = max(0.0, first - seconds)
        row["backend"] = backend or "inductor"
    return row


def compile_child(device: torch.device, dry_run: bool) -> None:
    """In the child process: the compiled row of each dims, one ``ROW {json}`` line each."""
    if device.type == "cuda":
        torch.cuda.init()  # a fresh process: CUDA is initialised lazily, by the first tensor
    runtime.set_determinism(False, device)
    for dims in (2, 3):
        try:
            peak_gib(device, reset=True)
            row = train_step(dims, "bf16+cl+compile", device, backend="eager" if dry_run else None)
            row["peak_gib"] = peak_gib(device)
        except Exception as e:  # noqa: BLE001
            row = {"error": one_line(e)}
        print("ROW " + json.dumps({"dims": dims, **row}), flush=True)
        torch._dynamo.reset()


def compiled_rows(dry_run: bool) -> dict[int, dict[str, Any]]:
    """The compiled rows from a child process, killed with its compile workers at the deadline."""
    cmd = [sys.executable, __file__, "--compile-child", "--out", tempfile.gettempdir()] + (["--dry-run"] if dry_run else [])
    limit = max(1.0, left() - 5.0)
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=limit)
        why = f"child exited {child.returncode}: {(err.strip().splitlines() or ['no output'])[-1][:300]}"
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        why = f"not finished in the {limit:.0f} s left to the compiled rows: killed"
    done = {r.pop("dims"): r for r in (json.loads(x[4:]) for x in out.splitlines() if x.startswith("ROW "))}
    return {d: done.get(d, {"error": why}) for d in (2, 3)}


def training(device: torch.device, rows: list[dict[str, Any]]) -> None:
    runtime.set_determinism(False, device)  # cuDNN benchmark on CUDA, as `unetpp train` does
    for variant in TRAIN_VARIANTS[:-1]:
        for dims in (2, 3):
            row = {"dims": dims, "variant": variant, "batch": S["train_batch"][dims],
                   "patch": list(S["train_patch"][dims])}
            record(rows, row, lambda dims=dims, variant=variant: train_step(dims, variant, device), device)


def compiled_training(rows: list[dict[str, Any]], dry_run: bool) -> None:
    """The compiled rows, last and in one child process: a cold compile can take minutes."""
    heads = [{"dims": d, "variant": TRAIN_VARIANTS[-1], "batch": S["train_batch"][d], "patch": list(S["train_patch"][d])}
             for d in (2, 3)]
    done = compiled_rows(dry_run) if left() >= 30 else {d: {"skipped": f"{max(0.0, left()):.0f} s left, too "
                                                            "little for a compile"} for d in (2, 3)}
    for row in heads:
        rows.append({**row, **done[row["dims"]]})
        print(json.dumps(rows[-1]), flush=True)


# ----------------------------------------------------------------------------- report
def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
        "python": f"{platform.python_version()} ({sys.executable})", "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "unetpp": unetpp.__version__,
        "device": str(device), "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    try:
        import monai
        info["monai"] = monai.__version__
    except Exception as e:  # noqa: BLE001
        info["monai"] = one_line(e)
    info["library_precision"] = str(runtime.choose_precision(device)[0])  # what `unetpp train` picks here
    return info


def cell(row: dict[str, Any] | None, key: str, fmt: str) -> str:
    return "" if row is None else fmt.format(row[key]) if key in row else "skipped" if "skipped" in row else "error"


def markdown(result: dict[str, Any]) -> str:
    m, st = result["machine"], result["settings"]
    lines = [f"# UNet++ on {m.get('gpu', m['device'])}{' (DRY RUN: CPU, tiny sizes)' if st['dry_run'] else ''}", "",
             f"torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, Python {m['python']}, {m['date']}; "
             f"TF32 matmul {m.get('tf32_matmul', '-')}, TF32 cuDNN {m.get('tf32_cudnn', '-')}; "
             f"paper preset, base filters {st['width']}; wall {result['wall_s']:.0f} s (imports included) of a {st['budget_s']:.0f} s budget.", "",
             "## Inference: seconds per image (Predictor path, sliding window included)", "",
             f"Median of up to {st['repeats']} calls after a warm-up; {st['windows_per_pass']} windows per pass, "
             "overlap 0.5; 2D image "
             f"{'x'.join(map(str, st['image']['2']))} (patch {'x'.join(map(str, st['patch']['2']))}), 3D volume D x H x W "
             f"{'x'.join(map(str, st['image']['3']))} (patch {'x'.join(map(str, st['patch']['3']))}).", "",
             "| dims | engine | window | mode | fp32 | bf16 | fp16 |", "|---|---|---|---|---:|---:|---:|"]
    inf = result["inference"]
    keys = list(dict.fromkeys((r["dims"], r.get("engine", "torch"), r.get("window", ""), r.get("mode", "-")) for r in inf))
    for dims, engine, window, mode in keys:
        by = {r.get("precision"): r for r in inf
              if (r["dims"], r.get("engine", "torch"), r.get("window", ""), r.get("mode", "-")) == (dims, engine, window, mode)}
        lines.append(f"| {dims}D | {engine} | {window} | {mode} | "
                     + " | ".join(cell(by.get(p), "seconds", "{:.4f}") for p in PRECISIONS) + " |")
    lines += ["", f"ONNX Runtime: {result['onnxruntime']}", "",
              "## Training: samples/s (forward, deep-supervision loss, backward, Adam)", "",
              "| dims | batch x patch | variant | samples/s | s/step | first step s | compile s | peak GiB | model GiB |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["training"]:
        lines.append(f"| {r['dims']}D | {r['batch']} x {'x'.join(map(str, r['patch']))} | {r['variant']} | "
                     f"{cell(r, 'samples_per_s', '{:.1f}')} | {cell(r, 'step_s', '{:.4f}')} | "
                     f"{cell(r, 'first_step_s', '{:.1f}')} | {cell(r, 'compile_s', '{:.1f}') if 'compile' in r['variant'] else ''} | "
                     f"{r.get('peak_gib') or ''} | {r.get('model_gib') or ''} |")
    notes = [f"- {r['dims']}D {r.get('variant') or r.get('mode', '')} {r.get('precision', '')}: {r.get('error') or r['skipped']}"
             for r in inf + result["training"] if "error" in r or "skipped" in r]
    lines += ["", "cl = channels_last; compile = torch.compile (inductor; `eager` backend in a dry run), "
              "compile s = first step minus a steady step; model GiB = the planner's memory model "
              "(training/memory.py, with its 1.5 GiB workspace), to check against the measured peak.", ""]
    lines += gpu_train.markdown(result["train"]) if "train" in result else []
    return "\n".join(lines + (["## Errors and skipped rows", ""] + notes + [""] if notes else []))


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    global S, DEADLINE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1 repeat: a test of the code paths")
    ap.add_argument("--budget", type=float, help="seconds for the whole run, imports included (default 340; 120 dry)")
    ap.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"CUDA is not available to this PyTorch: torch {torch.__version__} "
              f"({'CUDA ' + torch.version.cuda + ' build, but no GPU visible' if torch.version.cuda else 'a CPU-only build'}) "
              f"in {sys.executable}; run it with a CUDA PyTorch's python (see this script's docstring), "
              "or pass --dry-run", file=sys.stderr, flush=True)
        return 2
    S = DRY if args.dry_run else FULL
    if args.dry_run:  # one thread: on a busy CPU more would wait for each other
        torch.set_num_threads(1)
    device = torch.device("cpu") if args.dry_run else runtime.pick_device("cuda")
    if args.compile_child:  # the child process of compiled_rows
        compile_child(device, args.dry_run)
        return 0
    budget = args.budget or S["budget"]
    info = machine(device)
    print(json.dumps(info), flush=True)
    ort_device, ort_line = onnxruntime_status(args.dry_run)
    settings = {k: ({str(d): v for d, v in v.items()} if isinstance(v, dict) else v) for k, v in S.items()}
    result = {"machine": info, "settings": {**settings, "dry_run": args.dry_run, "budget_s": budget},
              "onnxruntime": ort_line, "inference": [], "training": []}

    def cli_training() -> None:  # `unetpp train` in child processes, one at a time
        result["train"] = gpu_train.section(args.dry_run, DEADLINE, info.get("gpu"))

    sections = [(0.22, lambda: inference(device, result["inference"])),  # each ends at this share of the budget
                (0.31, lambda: training(device, result["training"])),
                (0.35, lambda: ort_device and onnxruntime_rows(device, result["inference"], ort_device)),
                (0.47, lambda: compiled_training(result["training"], args.dry_run)),
                (1.0, cli_training)]
    try:  # what was measured is written even if something unforeseen stops the run
        for end, run_section in sections:
            DEADLINE = START + end * budget  # a section that ends early leaves its time to the next
            run_section()
    finally:
        result["wall_s"] = time.monotonic() - START
        atomic_write_json(args.out / "gpu.json", result)
        atomic_write_text(args.out / "gpu.md", markdown(result))
    print(markdown(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
