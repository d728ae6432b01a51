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
            try:  # a column added later (a resumed run of an older version) is empty before it
                parsed = {k: (int(v) if k == "epoch" else float(v) if v not in ("", None) else float("nan"))
                          for k, v in row.items() if k is not None}
            except (TypeError, ValueError):
                continue
            if parsed["epoch"] <= up_to_epoch:
                rows.append(parsed)
    return rows


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))  # rows may differ (a resumed older run)
    writer = csv.DictWriter(buf, fieldnames=columns, restval="nan", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


class Records:
    """metrics.csv, curves.png and TensorBoard of one run (rank 0 writes; others keep none).

    ``add`` keeps an epoch's row in memory; ``write`` (called by the run's background writer
    once that epoch's checkpoint is on disk, :mod:`unetpp.training.saver`) writes the rows.

    Args:
        run: the run folder.
        title: the curves' title.
        resumed_epoch: the last completed epoch of a resumed run (its rows are kept), or 0.
        rows: the rows of a resumed run as its checkpoint stored them (default: metrics.csv's).
        enabled: False on the non-main ranks of a torchrun job.
        tensorboard: write a TensorBoard log in ``RUN/tensorboard`` if it is installed.
    """

    def __init__(self, run: Path, title: str, resumed_epoch: int = 0, enabled: bool = True,
                 tensorboard: bool = True, rows: list[dict[str, Any]] | None = None):
        self.run, self.title, self.enabled = run, title, enabled
        if not enabled:
            self.rows: list[dict[str, Any]] = []
        elif rows is not None:
            self.rows = [r for r in rows if r["epoch"] <= resumed_epoch]
        else:
            self.rows = read_metrics(run / METRICS, resumed_epoch)
        self.tb = _tensorboard(run, tensorboard) if enabled else None
        self.tb_epoch = resumed_epoch  # the last epoch whose scalars went to TensorBoard
        self.plotted_at = time.perf_counter()

    def add(self, row: dict[str, Any]) -> None:
        """Keep an epoch's row (written by :meth:`write`)."""
        self.rows.append(row)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Write metrics.csv as ``rows``; TensorBoard gets the rows it has not seen; the curves
        are redrawn now and then (drawing costs ~1 s)."""
        if not self.enabled or not rows:
            return
        write_metrics(self.run / METRICS, rows)
        if time.perf_counter() - self.plotted_at >= PLOT_EVERY_S:
            self.plot(rows)
        if self.tb is not None:
            for row in rows:
                if row["epoch"] > self.tb_epoch:
                    for k, v in row.items():
                        if k != "epoch":
                            self.tb.add_scalar(k, v, row["epoch"])
                    self.tb_epoch = row["epoch"]
            self.tb.flush()

    def plot(self, rows: list[dict[str, Any]] | None = None) -> None:
        plot_curves(self.rows if rows is None else rows, self.run / CURVES, title=self.title)
        self.plotted_at = time.perf_counter()

    def close(self) -> None:
        """The final curves (call after the writer is flushed: they draw the written rows)."""
        written = read_metrics(self.run / METRICS, 10**9) if self.enabled else []
        if written:
            self.plot(written)
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
