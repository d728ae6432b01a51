"""``unetpp models`` and ``unetpp info``."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ..models import PRESETS, ModelConfig, list_models
from ..models.summary import summarize
from .common import out


def models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the architectures."""
    entries = list_models()
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    table = Table("arch", "description")
    for name, desc in entries.items():
        table.add_row(name, desc)
    out.print(table)


def info(arch: str = typer.Argument(..., help="unetpp, unet or wide-unet."),
         preset: str = typer.Option("paper", help=f"One of {', '.join(PRESETS)}."),
         dims: int = typer.Option(2, help="2 or 3."),
         in_channels: int = typer.Option(1, "--in-channels", help="Input channels."),
         classes: int = typer.Option(1, help="1 for binary, K for K classes."),
         depth: int = typer.Option(4, help="Poolings; 4 in the paper."),
         size: int = typer.Option(96, help="Side of the image the FLOPs are counted for."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Parameters and forward FLOPs of every level (pruned network UNet++ L1..L<depth>)."""
    if size < 1 or size > 4096:
        raise ValueError(f"--size must be in 1..4096, got {size}")
    config = ModelConfig.from_preset(arch, preset, dims=dims, in_channels=in_channels,
                                     classes=classes, depth=depth)
    summary = summarize(config, size)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table("level", "params", f"GFLOPs @ {size}^{dims}", title=f"{arch} ({preset}, {dims}D)")
    for level, params in summary["params"]["levels"].items():
        table.add_row(f"L{level}", f"{params:,}", f"{summary['flops'][level] / 1e9:.2f}")
    out.print(table)
    out.print(f"total parameters (every head): {summary['params']['total']:,}")


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("info")(info)
