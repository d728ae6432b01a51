"""``unetpp package``: a trained run (or cross-validation) as one self-describing file.

``MODEL.zip`` holds what prediction needs and what a reader needs to trust it, no pickle::

    unetpp-package.json   manifest: format, kind (run | ensemble), every member's SHA-256
                          and size, the chosen mode, the test case, unetpp's version
    config.json           the run folder's files: plan (spacing, orientation, normalisation,
    model.safetensors     patch, window), labels; prune.json (levels, the chosen level),
    prune.json ...        trust.json (QC thresholds), postprocess.json; a CV folder's
    fold_<k>/...          folds likewise (the ensemble); never last/ (Adam's state)
    labels.csv            value, name, colour, code (Slicer / napari / ITK-SNAP)
    README.md             the model card, with YAML front matter as model hubs read it
    test/input/<file>     a validation case as it was read, and the mask this package
    test/expected/<file>  predicted for it when packaged (``unetpp check-model`` compares)
    model.onnx            with ``--onnx`` (a run only): the chosen mode, fp32

:mod:`.unpack` reads it back (checked as untrusted input). The model card's latency and peak
memory per level are measured while packaging, on the packaging machine, in a fresh process
(peak resident memory of one forward pass of a patch-sized input above the process's
baseline, Linux's VmHWM).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import RunError, UnetppError
from ..io import atomic_write_with, read_json
from .unpack import MANIFEST, PACKAGE_FORMAT, PACKAGE_VERSION, open_package

RUN_FILES = ("config.json", "model.safetensors", "prune.json", "trust.json", "postprocess.json")
CV_FILES = ("splits_final.json", "cv.json", "postprocess.json", "prune.json", "trust.json")
#: check-model passes when every label's Dice against the packaged mask is at least this
CHECK_DICE = 0.99

_PEAK_CODE = r'''
import json, sys, torch
from unetpp.models import ModelConfig, build_model
cfg, shape, key = json.loads(sys.argv[1]), tuple(json.loads(sys.argv[2])), sys.argv[4]
torch.set_num_threads(int(sys.argv[3]))
model = build_model(ModelConfig.from_dict(cfg)).eval()
net = model if key == "accurate" else model.prune(int(key))
x = torch.randn(shape)
def status(name):
    for line in open("/proc/self/status"):
        if line.startswith(name):
            return int(line.split()[1])
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS:")
with torch.inference_mode():
    net(x)
print((status("VmHWM:") - base) / 1024)
'''


def peak_memory_mb(model_config: dict[str, Any], input_shape: list[int]) -> dict[str, float] | None:
    """Peak resident MB of one forward pass per level above the process's baseline (the
    network built, its input made), each level in a fresh process: what one prediction of a
    patch costs (Linux's VmHWM, reset through /proc/self/clear_refs; else None). In one
    process the allocator would keep the first level's memory for the next."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    import torch

    from ..models import ModelConfig

    levels = [str(lv) for lv in ModelConfig.from_dict(model_config).levels] + ["accurate"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = {}
    for key in levels:
        r = subprocess.run([sys.executable, "-c", _PEAK_CODE, json.dumps(model_config), json.dumps(input_shape),
                            str(torch.get_num_threads()), key], capture_output=True, text=True, env=env,
                           timeout=600)
        if r.returncode != 0:
            return None
        out[key] = float(r.stdout.strip().splitlines()[-1])
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run_files(run: Path) -> dict[str, Path]:
    """``{name in the archive: file}`` of a run folder or a cross-validation folder."""
    from .ensemble import fold_runs, is_cv_folder

    if is_cv_folder(run):
        files = {n: run / n for n in CV_FILES if (run / n).is_file()}
        for fold in fold_runs(run):
            files.update({f"{fold.name}/{n}": fold / n for n in RUN_FILES if (fold / n).is_file()})
        return files
    if not (run / "config.json").is_file() or not (run / "model.safetensors").is_file():
        raise RunError(f"{run}: not a run folder (config.json and model.safetensors) or a cross-validation folder")
    return {n: run / n for n in RUN_FILES if (run / n).is_file()}


def package_labels_csv(predictor: Any) -> str:
    """labels.csv of the package: every label of the run, background included."""
    from .predict import label_names, labels_csv

    return labels_csv(label_names(predictor))


def _test_case(predictor: Any, data: str | None, folder: Path) -> dict[str, Any] | None:
    """A validation case's input file and the mask this model predicts for it, copied into
    ``folder``; None when the data set is not at hand or the case is not one file."""
    from ..data import open_dataset
    from ..data.io import write_mask
    from ..data.cases.layouts import scan
    from .predict import output_name

    config = predictor.config
    source = data or (config.get("train") or {}).get("data")
    try:
        ds = open_dataset(source)
    except Exception:  # noqa: BLE001 - the package is still useful without its test case
        return None
    split = config.get("split") or {}
    names = list(split.get("val") or []) + list(split.get("test") or []) + list(ds.case_names)
    files = {c.name: c for c in scan(ds.root).cases}
    case = next((files[n] for n in names if n in files and len(files[n].images) == 1
                 and Path(files[n].images[0]).is_file()), None)
    if case is None:
        return None
    path = Path(case.images[0])
    labels, _, meta = predictor.predict_file(path)
    name, ext = output_name(path, predictor.in_channels)
    (folder / "input").mkdir(parents=True)
    (folder / "input" / path.name).write_bytes(path.read_bytes())
    write_mask(folder / "expected" / f"{name}{ext}", labels, meta)
    return {"input": f"test/input/{path.name}", "expected": f"test/expected/{name}{ext}", "case": case.name,
            "dice_min": CHECK_DICE}


def model_card(predictor: Any, run: Path, kind: str, costs: dict[str, Any], peaks: dict[str, float] | None,
               licence: str | None, intended_use: str | None, files: list[str]) -> str:
    """README.md: YAML front matter (licence, tags, data set) and the card itself."""
    from .predict import label_names

    config = predictor.config
    model, train = config.get("model") or {}, config.get("train") or {}
    split = config.get("split") or {}
    labels = [n for v, n in sorted(label_names(predictor).items()) if v > 0]
    prune = read_json(run / "prune.json") if (run / "prune.json").is_file() else None
    data_name = Path(str(train.get("data") or "unknown")).name
    title = f"{model.get('arch', 'unetpp')} ({model.get('preset', '?')}, {model.get('dims', '?')}D): {', '.join(labels)}"
    lines = ["---", f"license: {licence or 'other'}", "library_name: unetpp", "pipeline_tag: image-segmentation",
             "tags:", "  - medical-imaging", "  - segmentation", "  - unet-plus-plus", f"datasets:\n  - {data_name}",
             "metrics:\n  - dice\n  - iou", "---", "", f"# {title}", "",
             "**Not for clinical use.** Not validated for diagnosis or treatment; a research model whose "
             "masks a person checks.", "", "## Intended use", "",
             intended_use or (f"Research segmentation of {', '.join(labels)} in images like its training data "
                              "(below). `unetpp predict MODEL.zip IMAGES --out MASKS --uncertainty` writes "
                              "per-case flags (`qc.csv`) for the masks to check."), "",
             "## Training data", "",
             f"- data set: `{train.get('data')}`; {len(split.get('train') or [])} training, "
             f"{len(split.get('val') or [])} validation cases" + (" per fold" if kind == "ensemble" else ""),
             f"- patch {train.get('patch_size')}, batch {train.get('batch_size')}, {train.get('epochs')} epochs at most, "
             f"lr {train.get('lr')} ({train.get('schedule', 'constant')}), preset {model.get('preset')}",
             f"- normalisation and spacing: `config.json` (\"data\")", "",
             "## Levels", ""]
    if prune:
        chosen = prune["chosen"]
        pick = "accurate" if chosen["mode"] == "accurate" else str(chosen["level"])
        lines += [f"IoU and Dice on {prune['cases']} {prune['split']} case(s) (mean, 95 % interval over cases); "
                  f"latency and peak memory measured when packaging on {_cpu_name()}, one "
                  f"{'x'.join(map(str, costs['input_shape'][2:]))} input.", "",
                  "| level | IoU | IoU 95 % CI | Dice | parameters | latency ms | peak MB |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        entries = [(k, v) for k, v in prune["levels"].items()] + [("accurate", prune["accurate"])]
        for key, v in entries:
            ci = v.get("iou_ci95")
            cost = costs["levels"].get(key, {})
            peak = f"{peaks[key]:.0f}" if peaks and key in peaks else "n/a"
            lines.append(f"| {'L' + key if key != 'accurate' else key}{' (chosen)' if key == pick else ''} | "
                         f"{v['iou']:.4f} | {'n/a' if not ci else f'{ci[0]:.4f}-{ci[1]:.4f}'} | {v['dice']:.4f} | "
                         f"{cost.get('params', v.get('params', 0)):,} | {cost.get('latency_ms', float('nan')):.1f} | "
                         f"{peak} |")
    else:
        lines.append("Not pruned: `unetpp prune` the run before packaging to choose and document a level.")
    lines += ["", "## Use", "", "    pip install unetpp", "    unetpp check-model MODEL.zip",
              "    unetpp predict MODEL.zip scans/ --out masks/ [--level L] [--uncertainty]", "",
              "or `unetpp.load(\"MODEL.zip\")` in Python. The package holds no code and no pickle: safetensors "
              "weights and JSON, checked against the manifest's SHA-256 before use.", "",
              "## Files", "", *[f"- `{f}`" for f in files], "",
              "## Licence and patent", "",
              f"Weights: {licence or 'see the data set and the trainer'}. unetpp is Apache-2.0. UNet++ is the subject "
              "of US patent US11164067B2 (Arizona State University).", ""]
    return "\n".join(lines)


def build_package(run: str | os.PathLike, out: str | os.PathLike, data: str | None = None, onnx: bool = False,
                  licence: str | None = None, intended_use: str | None = None,
                  log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Write ``out`` (MODEL.zip) from a run or cross-validation folder; returns the manifest."""
    from .ensemble import load
    from .prune import measure_costs

    run, out = Path(run), Path(out)
    if out.suffix.lower() != ".zip":
        raise UnetppError(f"--out {out}: a package is a .zip file")
    files = _run_files(run)
    predictor = load(run)
    kind = "ensemble" if hasattr(predictor, "members") else "run"
    if onnx and kind == "ensemble":
        raise UnetppError("--onnx: a cross-validation package is an ensemble of folds; export one fold instead")
    first = predictor.members[0] if kind == "ensemble" else predictor
    input_shape = [1, first.in_channels, *first.patch_size]
    log("measuring latency and peak memory per level ...")
    costs = {"input_shape": input_shape, "levels": measure_costs(first.fast_model, input_shape, first.device, 5, 1)}
    peaks = peak_memory_mb(first.model.config.to_dict(), input_shape)
    generated: dict[str, bytes] = {"labels.csv": package_labels_csv(predictor).encode()}
    with tempfile.TemporaryDirectory() as tmp:
        log("predicting the test case ...")
        test = _test_case(predictor, data, Path(tmp) / "test")
        if test is not None:
            for key in ("input", "expected"):
                generated[test[key]] = (Path(tmp) / test[key]).read_bytes()
        if onnx:
            from .deployed import export_run

            export_run(predictor, "onnx", Path(tmp) / "model.onnx")
            generated["model.onnx"] = (Path(tmp) / "model.onnx").read_bytes()
        names = sorted([*files, *generated, "README.md"])
        generated["README.md"] = model_card(predictor, run, kind, costs, peaks, licence, intended_use,
                                            names).encode()
        entries: dict[str, dict[str, Any]] = {}
        for name in sorted(files):
            data_bytes = files[name].read_bytes()
            entries[name] = {"sha256": hashlib.sha256(data_bytes).hexdigest(), "bytes": len(data_bytes)}
        for name, b in generated.items():
            entries[name] = {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)}
        chosen = read_json(run / "prune.json")["chosen"] if (run / "prune.json").is_file() else None
        manifest = {"format": PACKAGE_FORMAT, "format_version": PACKAGE_VERSION, "kind": kind,
                    "unetpp_version": __version__,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "source": run.name, "chosen": chosen, "test": test, "licence": licence, "files": entries}

        def fill(f: Any) -> None:
            with zipfile.ZipFile(f, "w") as z:
                z.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n", zipfile.ZIP_DEFLATED)
                for name in sorted(entries):
                    packed = zipfile.ZIP_STORED if name.endswith((".safetensors", ".onnx")) else zipfile.ZIP_DEFLATED
                    content = generated[name] if name in generated else files[name].read_bytes()
                    z.writestr(name, content, packed)

        atomic_write_with(out, fill)
    return manifest


def check_model(package: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """Extract ``package`` afresh, predict its test case and compare with the packaged mask:
    ``{"case", "dice": {label: d}, "agreement", "passed", "seconds"}``."""
    from ..data.files.formats import read_file
    from .ensemble import load
    from .unpack import read_manifest

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = open_package(package, dest=Path(tmp) / "model")
        test = read_manifest(folder).get("test")
        if not test:
            raise RunError(f"{package}: holds no test case (packaged without its data set); nothing to check")
        predictor = load(folder, device=device)
        labels, _, _ = predictor.predict_file(folder / test["input"])
        expected, _ = read_file(folder / test["expected"])
        expected = np.asarray(expected)
        if expected.ndim == labels.ndim + 1:
            expected = expected[0]
        if predictor.classes == 1 and expected.max() > 1:  # 2D binary masks are stored 0/255
            expected = (expected > 0).astype(np.int64)
        if expected.shape != labels.shape:
            raise RunError(f"{package}: {test['expected']}: shape {expected.shape}, the prediction's {labels.shape}")
        dice = {}
        for value in sorted((set(np.unique(expected).tolist()) | set(np.unique(labels).tolist())) - {0}):
            a, b = labels == value, expected == value
            dice[int(value)] = 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))
        agreement = float((labels == expected).mean())
    passed = all(d >= float(test.get("dice_min", CHECK_DICE)) for d in dice.values())
    return {"case": test["case"], "dice": dice, "agreement": agreement, "passed": passed,
            "seconds": time.perf_counter() - t0}


__all__ = ["build_package", "check_model", "model_card", "package_labels_csv", "peak_memory_mb"]
