"""``package`` and ``check-model``: a trained run as one file others can pick up."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UnetppError
from .common import log


def package(run: Path = typer.Argument(..., metavar="RUN", help="Run folder or cross-validation folder."),
            out_file: Path = typer.Option(..., "--out", metavar="MODEL.zip", help="Package file to write."),
            data: Optional[str] = typer.Option(None, "--data", metavar="DATA",
                                               help="Data set for the test case. [default: the run's]"),
            onnx: bool = typer.Option(False, "--onnx", help="Also put the chosen mode in as model.onnx (a run "
                                                            "only; needs the export extra)."),
            licence: Optional[str] = typer.Option(None, "--licence", metavar="ID",
                                                  help="Licence of the weights, an SPDX id (e.g. CC-BY-4.0)."),
            intended_use: Optional[str] = typer.Option(None, "--intended-use", metavar="TEXT",
                                                       help="One paragraph for the model card.")) -> None:
    """Package a run (or the folds of a cross-validation) as MODEL.zip: weights, plan, labels,
    the chosen level, a model card and a test case; no code, no pickle.

    'unetpp predict', 'evaluate' and unetpp.load() take the zip directly, and 'unetpp
    check-model MODEL.zip' re-runs its test case.
    """
    from ..inference.package import build_package

    if not run.is_dir():
        raise UnetppError(f"{run}: no such run folder")
    manifest = build_package(run, out_file, data=data, onnx=onnx, licence=licence, intended_use=intended_use,
                             log=log)
    size = out_file.stat().st_size / 2**20
    test = manifest["test"]
    log(f"wrote {out_file} ({size:.1f} MB, {len(manifest['files'])} files, {manifest['kind']}"
        + (f", test case {test['case']})" if test else "; no test case: give --data DATA)"))


def check_model(model: Path = typer.Argument(..., metavar="MODEL.zip", help="A package from 'unetpp package'."),
                device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto.")) -> None:
    """Unpack MODEL.zip afresh (every check of an untrusted file), predict its test case and
    compare with the mask it was packaged with; exit 1 if a label's Dice is under 0.99."""
    from ..inference.package import check_model as run_check

    result = run_check(model, device=device)
    dice = ", ".join(f"label {k}: {v:.4f}" for k, v in result["dice"].items()) or "no labels in either mask"
    log(f"{model}: test case {result['case']}: Dice {dice}; {result['agreement'] * 100:.2f} % of voxels agree; "
        f"{result['seconds']:.2f} s")
    if not result["passed"]:
        raise UnetppError(f"{model}: the prediction differs from the packaged mask (Dice under 0.99)")
    log("passed")


def register(app: typer.Typer) -> None:
    app.command("package")(package)
    app.command("check-model")(check_model)
