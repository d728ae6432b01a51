"""What a run records as it trains: ``metrics.csv`` (one row per epoch), ``curves.png``,
and a TensorBoard log when TensorBoard is installed. Every file is written atomically."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from .plots import plot_curves

METRICS = "metrics.csv"
CURVES = "curves.png"
#: curves.png is redrawn at most this often during training, and always at the end
PLOT_EVERY_S = 60.0


def read_metrics(path: Path, up_to_epoch: int) -> list[dict[str, Any]]:
    """Rows of an existing metrics.csv (for a resumed run), epochs <= up_to_epoch."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                parsed = {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
            except (TypeError, ValueError):
                continue
            if parsed["epoch"] <= up_to_epoch:
                rows.append(parsed)
    return rows


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


class Records:
    """metrics.csv, curves.png and TensorBoard of one run (rank 0 writes; others keep none).

    Args:
        run: the run folder.
        title: the curves' title.
        resumed_epoch: the last completed epoch of a resumed run (its rows are kept), or 0.
        enabled: False on the non-main ranks of a torchrun job.
        tensorboard: write a TensorBoard log in ``RUN/tensorboard`` if it is installed.
    """

    def __init__(self, run: Path, title: str, resumed_epoch: int = 0, enabled: bool = True,
                 tensorboard: bool = True):
        self.run, self.title, self.enabled = run, title, enabled
        self.rows = read_metrics(run / METRICS, resumed_epoch) if enabled else []
        self.tb = _tensorboard(run, tensorboard) if enabled else None
        self.plotted_at = time.perf_counter()

    def add(self, row: dict[str, Any]) -> None:
        """Append an epoch's row; rewrite metrics.csv, redraw the curves now and then."""
        self.rows.append(row)
        if not self.enabled:
            return
        write_metrics(self.run / METRICS, self.rows)
        if time.perf_counter() - self.plotted_at >= PLOT_EVERY_S:  # drawing costs ~1 s
            self.plot()
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch":
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def plot(self) -> None:
        plot_curves(self.rows, self.run / CURVES, title=self.title)
        self.plotted_at = time.perf_counter()

    def close(self) -> None:
        if self.enabled and self.rows:
            self.plot()
        if self.tb is not None:
            self.tb.close()


def _tensorboard(run: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard not installed: no log, silently
        return None
    return SummaryWriter(log_dir=str(run / "tensorboard"))


__all__ = ["CURVES", "METRICS", "Records", "read_metrics", "write_metrics"]
