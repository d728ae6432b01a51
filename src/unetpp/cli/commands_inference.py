"""``unetpp evaluate``, ``prune``, ``predict`` and ``export``.

Each command raises :class:`~unetpp.errors.UnetppError` / ``ValueError`` for bad input (the
app prints one line per problem and exits 1). Long work shows a rich progress bar on a
terminal and plain log lines otherwise (:func:`unetpp.cli.common.interactive`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import typer

from ..errors import UnetppError
from ..models.mode import Mode
from .common import interactive, log, out

MODE_HELP = "accurate (mean of every head) or fast (one head, --level). Default: prune.json's choice."
WINDOW_HELP = ("patch (the training patch, overlapping: nnU-Net's tiling) or large (the whole image, "
               "or as few windows as memory allows). Default: prune.json's choice, else patch.")
LEVEL_HELP = "Level L of fast mode (the pruned network UNet++ L<L>). Default: prune.json's choice."
DEVICE_HELP = "auto, cpu, cuda or mps."


@contextmanager
def progress_bar(what: str) -> Iterator[Callable[[int, int, str], None]]:
    """``update(done, total, item)``: a rich bar on a terminal, a log line per item otherwise."""
    if interactive():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from .common import err

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), TextColumn("{task.fields[item]}"), console=err,
                      transient=True) as bar:
            task = bar.add_task(what, total=None, item="")

            def update(done: int, total: int, item: str) -> None:
                bar.update(task, completed=done, total=total, item=item)

            yield update
    else:
        def update(done: int, total: int, item: str) -> None:
            log(f"{what}: [{done}/{total}] {item}")

        yield update


def _load(run: Path, device: str, batch_size: int = 4, model_file: bool = False, window: str | None = None):
    """A run folder, or a cross-validation folder (its folds as an ensemble); with
    ``model_file`` also an exported ``.onnx`` file (a deployed model, no run folder)."""
    from ..inference.deployed import is_model_file
    from ..inference.ensemble import load
    from ..inference.predictor import check_window

    if batch_size < 1:
        raise UnetppError(f"--batch-size must be >= 1, got {batch_size}")
    check_window(window)  # before the network is loaded
    if is_model_file(run) and not model_file:
        raise UnetppError(f"{run}: a model file; this command takes a run folder (only 'predict' runs a "
                          "model file)")
    return load(run, device=device, batch_size=batch_size, window=window)


def _open(data: str):
    from ..data import open_dataset

    return open_dataset(data)


def evaluate(run: Optional[Path] = typer.Argument(None, metavar="RUN", help="Run folder (from 'unetpp train')."),
             data: Optional[str] = typer.Argument(None, metavar="DATA",
                                                  help="Dataset folder or fetched sample name."),
             pred: Optional[Path] = typer.Option(None, "--pred", metavar="DIR",
                                                 help="Folder of predicted masks to score (instead of RUN DATA)."),
             ref: Optional[Path] = typer.Option(None, "--ref", metavar="DIR",
                                                help="Folder of reference masks, matched to --pred by case name."),
             mode: Optional[str] = typer.Option(None, "--mode", help=MODE_HELP),
             level: Optional[int] = typer.Option(None, "--level", help=LEVEL_HELP),
             json_file: Optional[str] = typer.Option(None, "--json", metavar="FILE",
                                                     help="Write the JSON here ('-': print it); a CSV "
                                                          "goes beside it. Default: RUN/evaluation.json "
                                                          "(PRED/evaluation.json with --pred)."),
             empty: Optional[str] = typer.Option(None, "--empty", metavar="one|nan",
                                                 help="A class absent from both masks "
                                                      "scores 1 (one, default) or NaN (nan: nnU-Net's)."),
             nsd_tolerance: Optional[float] = typer.Option(None, "--nsd-tolerance", metavar="MM",
                                                           help="Surface Dice tolerance in mm. "
                                                                "Default: one voxel along the coarsest axis."),
             tta: bool = typer.Option(False, "--tta", help="Average over mirrored inputs."),
             window: Optional[str] = typer.Option(None, "--window", metavar="patch|large", help=WINDOW_HELP),
             batch_size: int = typer.Option(4, "--batch-size", help="Windows/slices per forward pass."),
             device: str = typer.Option("auto", "--device", help=DEVICE_HELP)) -> None:
    """Per-case Dice and IoU of RUN on DATA's test cases (else validation, else all), or of --pred masks vs --ref.

    Scores are per case (whole image or volume), then averaged; per class for several
    classes. A class absent from both prediction and reference scores 1 (empty vs empty).
    With --pred DIR --ref DIR (no run): Dice, IoU, HD95 and normalised surface Dice (mm) of
    every mask in DIR against the reference of the same case name.
    """
    from ..inference.evaluate import evaluate as run_evaluation
    from ..inference.evaluate import json_ready, output_paths, write_evaluation
    from ..metrics import EMPTY_MODES

    if empty is not None and empty not in EMPTY_MODES:
        raise UnetppError(f"--empty must be one of {', '.join(EMPTY_MODES)}, got {empty!r}")
    if nsd_tolerance is not None and not nsd_tolerance >= 0:
        raise UnetppError(f"--nsd-tolerance must be a number of mm >= 0, got {nsd_tolerance}")
    folders = pred is not None or ref is not None
    if folders and (run is not None or data is not None):
        raise UnetppError("evaluate: give either RUN DATA or --pred DIR --ref DIR, not both")
    if folders and (pred is None or ref is None):
        raise UnetppError(f"evaluate: {'--ref' if ref is None else '--pred'} DIR missing; "
                          "--pred and --ref go together")
    if not folders and (run is None or data is None):
        raise UnetppError("evaluate: give RUN DATA (a run on a dataset) or --pred DIR --ref DIR "
                          "(two mask folders)")
    if folders:
        if mode is not None or level is not None or tta or window is not None:
            raise UnetppError("evaluate: --mode, --level, --tta and --window apply to RUN DATA, not to --pred/--ref")
        from ..inference.folders import score_folders, write_folder_scores

        json_path, csv_path = output_paths(pred, json_file)
        with progress_bar("evaluate") as update:
            result = score_folders(pred, ref, empty=empty or "one", tolerance=nsd_tolerance, progress=update)
        write_folder_scores(result, json_path, csv_path)
        if json_file == "-":
            print(json.dumps(json_ready(result), indent=2))
        per_class = "".join(f", {k} {v:.4f}" for k, v in (result.get("classes") or {}).items())
        log(f"{pred}: dice {result['dice']:.4f}, iou {result['iou']:.4f}, hd95 {result['hd95']:.2f} mm, "
            f"nsd {result['nsd']:.4f}{per_class} over {len(result['cases'])} case(s)")
        log(f"wrote {', '.join(str(p) for p in (json_path, csv_path) if p is not None)}")
        return
    predictor = _load(run, device, batch_size, window=window)
    settled = predictor.resolve(mode, level)
    ds = _open(data)
    json_path, csv_path = output_paths(run, json_file)
    with progress_bar("evaluate") as update:
        result = run_evaluation(predictor, ds, settled, tta=tta, progress=update, empty=empty or "one",
                                tolerance=nsd_tolerance)
    write_evaluation(result, json_path, csv_path)
    if json_file == "-":
        print(json.dumps(json_ready(result), indent=2))
    per_class = "".join(f", {k} {v:.4f}" for k, v in (result.get("classes") or {}).items())
    surface = "".join(f", {k} {result[k]:.4f}" for k in ("hd95", "nsd") if result.get(k) is not None)
    log(f"{settled or 'each run in its chosen mode'}: dice {result['dice']:.4f}, iou {result['iou']:.4f}"
        f"{surface}{per_class} over {len(result['cases'])} {result['split']} case(s) at their own resolution")
    log(f"wrote {', '.join(str(p) for p in (json_path, csv_path) if p is not None)}")


def prune(run: Path = typer.Argument(..., metavar="RUN", help="Run folder (from 'unetpp train')."),
          data: str = typer.Argument(..., metavar="DATA", help="Dataset folder or fetched sample name."),
          tolerance: float = typer.Option(0.5, "--tolerance", metavar="POINTS",
                                          help="Pick the smallest level within this many IoU points "
                                               "(0-100 scale) of the best."),
          repeats: int = typer.Option(10, "--repeats", help="Timed forward passes per level (median)."),
          tta: bool = typer.Option(False, "--tta", help="Score with mirrored inputs averaged."),
          batch_size: int = typer.Option(4, "--batch-size", help="Windows/slices per forward pass."),
          device: str = typer.Option("auto", "--device", help=DEVICE_HELP)) -> None:
    """Score every level (fast mode) and accurate mode on the validation cases, measure params,
    FLOPs and latency, choose a level; writes RUN/prune.json and RUN/prune.png."""
    from rich.table import Table

    from ..inference.prune import prune as run_prune
    from ..inference.prune import window_reason

    if not 0 <= tolerance <= 100:
        raise UnetppError(f"--tolerance must be between 0 and 100 IoU points, got {tolerance}")
    if repeats < 1:
        raise UnetppError(f"--repeats must be >= 1, got {repeats}")
    predictor = _load(run, device, batch_size)
    if len(predictor.levels) == 1:
        log(f"{run}: trained without deep supervision, so it has one head (level "
            f"{predictor.levels[0]}); measuring it alone, there is nothing to prune")
    ds = _open(data)
    with progress_bar("prune") as update:
        result = run_prune(predictor, ds, tolerance=tolerance, repeats=repeats, tta=tta, progress=update)
    table = Table("", "IoU %", "Dice %", "params", "MFLOPs", "latency ms",
                  title=f"{run.name}: {result['cases']} {result['split']} case(s), input "
                        f"{'x'.join(map(str, result['input_shape'][2:]))} on {result['device']}")
    rows = [(f"L{k}", v) for k, v in result["levels"].items()]
    if len(predictor.levels) > 1:
        rows.append(("accurate", result["accurate"]))
    chosen = result["chosen"]
    pick = "accurate" if chosen["mode"] == "accurate" else f"L{chosen['level']}"
    for name, v in rows:
        table.add_row(name + (" *" if name == pick else ""), f"{v['iou'] * 100:.2f}", f"{v['dice'] * 100:.2f}",
                      f"{v['params']:,}", f"{v['flops'] / 1e6:.1f}", f"{v['latency_ms']:.2f}")
    out.print(table)
    log(f"chosen: {Mode.from_json(chosen)} (within {tolerance} IoU points of the best); "
        f"wrote {run / 'prune.json'} and {run / 'prune.png'}")
    log(f"window: {result['window']['chosen']} ({window_reason(result['window'], tolerance)})")


def predict(run: Path = typer.Argument(..., metavar="RUN", help="Run folder (from 'unetpp train'), "
                                                                  "cross-validation folder, or MODEL.onnx "
                                                                  "(from 'unetpp export': no run folder needed)."),
            inputs: list[str] = typer.Argument(..., metavar="INPUT...",
                                               help="Image files, folders or glob patterns."),
            out_dir: Path = typer.Option(..., "--out", help="Folder for the masks."),
            mode: Optional[str] = typer.Option(None, "--mode", help=MODE_HELP),
            level: Optional[int] = typer.Option(None, "--level", help=LEVEL_HELP),
            tta: bool = typer.Option(False, "--tta", help="Average over mirrored inputs."),
            overlay: bool = typer.Option(False, "--overlay", help="Also write <name>_overlay.png."),
            probabilities: bool = typer.Option(False, "--probabilities",
                                               help="Also write float32 probability maps <name>_probs."),
            onnx: Optional[Path] = typer.Option(None, "--onnx", metavar="FILE",
                                                help="Run this file from 'unetpp export --format onnx' "
                                                     "through ONNX Runtime instead of PyTorch."),
            window: Optional[str] = typer.Option(None, "--window", metavar="patch|large", help=WINDOW_HELP),
            batch_size: int = typer.Option(4, "--batch-size", help="Windows/slices per forward pass."),
            device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
            uncertainty: bool = typer.Option(False, "--uncertainty",
                                             help="Also write <name>_uncertainty (per-voxel, 0-1: the "
                                                  "entropy of the calibrated mean over heads, folds and, "
                                                  "with --tta, flips) and OUT/qc.csv + qc.json: one row "
                                                  "per input, flag ok/review with the reasons."),
            mask_format: Optional[str] = typer.Option(None, "--format", metavar="nifti|dicom-seg",
                                                      help="Mask format. Default: the input's own; NIfTI in the "
                                                           "series' world geometry for a DICOM series folder. "
                                                           "dicom-seg: a DICOM-SEG referencing the series, "
                                                           "segments named from the run's labels.")) -> None:
    """Segment images, volumes and DICOM series; masks keep the input's format, shape, spacing and affine.

    A DICOM series folder (needs pip install 'unetpp[dicom]') gets a NIfTI mask in its world
    geometry, or with --format dicom-seg a DICOM-SEG. A failure on one input is reported (one
    line naming it) and the others still complete; the exit status is then 1. RUN may be an
    exported MODEL.onnx: it carries the run's preprocessing, patch and mode, and runs through
    ONNX Runtime (fp32, int8 or fp16) with the same sliding window.
    """
    from ..inference.deployed import is_model_file
    from ..inference.predict import MASK_FORMATS, predict_inputs
    from ..inference.window import window_policies

    if mask_format is not None and mask_format not in MASK_FORMATS:
        raise UnetppError(f"--format must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
    deployed = is_model_file(run)
    if deployed and onnx is not None:
        raise UnetppError(f"--onnx {onnx}: RUN {run} is already a model file; give one of them")
    predictor = _load(run, "cpu" if onnx is not None else device, batch_size, model_file=True, window=window)
    ok = {"n": 0}
    windows = window_policies(predictor)

    def started(total: int, settled) -> None:
        engine = f"ONNX Runtime ({onnx})" if onnx is not None else str(predictor.device)
        if deployed:
            engine = f"ONNX Runtime ({run}, {predictor.precision_name})"
        log(f"predict: {total} input(s), {settled or 'each run in its chosen mode, averaged'}"
            f"{', tta' if tta else ''}, {windows} windows, on {engine}")

    with progress_bar("predict") as update:
        def step(done: int, total: int, outcome) -> None:
            ok["n"] += outcome.error is None
            update(done, total, Path(outcome.input).name + (" (failed)" if outcome.error else ""))

        outcomes = predict_inputs(predictor, inputs, out_dir, mode, level, tta=tta,
                                  probabilities=probabilities, overlay=overlay,
                                  onnx=onnx, progress=step, on_start=started, mask_format=mask_format,
                                  uncertainty=uncertainty)
    failed = [o.error for o in outcomes if o.error]
    log(f"wrote {ok['n']} mask(s) to {out_dir}" + (f"; {len(failed)} input(s) failed" if failed else ""))
    if uncertainty:
        _log_qc(out_dir)
    if failed:
        raise UnetppError(failed)


def _log_qc(out_dir: Path) -> None:
    """One line per input flagged for review, and where qc.csv is."""
    from ..io import read_json

    qc = read_json(out_dir / "qc.json")
    review = [c for c in qc["cases"] if c["flag"] == "review"]
    unknown = sum(c["flag"] == "unknown" for c in qc["cases"])
    if qc.get("warning"):
        log(f"warning: {qc['warning']}")
    for c in review:
        log(f"review {c['case']}: {'; '.join(c['reasons'])}")
    note = f"; {unknown} unflagged: the run has no trust.json (run 'unetpp prune')" if unknown else ""
    log(f"qc: {len(review)} of {len(qc['cases'])} input(s) to review ({qc['members']}, temperature "
        f"{qc['temperature']:.2f}){note}; wrote {out_dir / 'qc.csv'}")


def export(run: Path = typer.Argument(..., metavar="RUN", help="Run folder (from 'unetpp train')."),
           fmt: str = typer.Option(..., "--format", help="onnx or torchscript."),
           out_file: Path = typer.Option(..., "--out", metavar="FILE", help="File to write."),
           mode: Optional[str] = typer.Option(None, "--mode", help=MODE_HELP),
           level: Optional[int] = typer.Option(None, "--level", help=LEVEL_HELP),
           opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 17)."),
           quantize: Optional[str] = typer.Option(None, "--quantize", metavar="int8|fp16",
                                                  help="ONNX only. int8: static quantization (QDQ, "
                                                       "per-channel weights) calibrated on the run's "
                                                       "validation cases; fp16: half-precision weights and "
                                                       "activations. Scored against fp32 before writing."),
           calibration: Optional[str] = typer.Option(None, "--calibration", metavar="DATA",
                                                     help="Dataset to calibrate and score --quantize on "
                                                          "(its validation cases). Default: the run's dataset."),
           tolerance: Optional[float] = typer.Option(None, "--tolerance", metavar="POINTS",
                                                     help="Refuse a --quantize model that loses more than this "
                                                          "many IoU points (0-100 scale) against fp32. "
                                                          "Default: 0.5.")) -> None:
    """Export one mode/level as ONNX or TorchScript: input (N, C, *S) normalised, output
    probabilities (N, K', *S); batch and spatial sizes dynamic. Checked against PyTorch
    (max abs diff <= 1e-4) before the file is written. The file carries the run's
    preprocessing, patch size and post-processing: 'unetpp predict MODEL.onnx INPUT' needs no
    run folder."""
    from ..inference.deployed import export_run
    from ..inference.export import FORMATS
    from ..inference.quantize import QUANTIZE

    if fmt not in FORMATS:
        raise UnetppError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if quantize is not None and quantize not in QUANTIZE:
        raise UnetppError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if quantize is None and (calibration is not None or tolerance is not None):
        raise UnetppError("--calibration and --tolerance go with --quantize")
    predictor = _load(run, "cpu")
    settled = predictor.resolve(mode, level)
    log(f"export: {settled} as {fmt}{f' ({quantize})' if quantize else ''} ...")
    if hasattr(predictor, "members"):
        raise UnetppError(f"{run}: a cross-validation folder; export one fold's run folder (an ensemble "
                          "is not exported as one file)")
    info = export_run(predictor, fmt, out_file, settled, opset=opset, quantize=quantize, calibration=calibration,
                      tolerance=tolerance, progress=lambda msg: log(f"export: {msg}"))
    log(f"wrote {out_file} ({fmt}{', opset ' + str(opset) if fmt == 'onnx' else ''}, "
        f"{settled}, output probabilities; max abs diff vs PyTorch "
        f"{info['max_abs_diff']:.2e} on inputs {', '.join('x'.join(map(str, s)) for s in info['checked_shapes'])})")
    record = info.get("quantization")
    if record:
        log(f"{quantize}: IoU {record[f'iou_{quantize}'] * 100:.2f} against fp32 {record['iou_fp32'] * 100:.2f} on "
            f"{record['cases']} {record['split']} case(s) ({'loses' if record['loss_points'] > 0 else 'gains'} "
            f"{abs(record['loss_points']):.2f} points; tolerance {record['tolerance']:g})")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("evaluate")(evaluate)
    app.command("prune")(prune)
    app.command("predict")(predict)
    app.command("export")(export)
