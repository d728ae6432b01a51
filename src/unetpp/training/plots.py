"""``RUN/curves.png``: training loss and validation Dice/IoU per head, per epoch."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes


def plot_curves(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Draw the learning curves of ``metrics.csv`` rows; ``None`` when there is nothing yet."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_val = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], color="black", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log" if all(r["train_loss"] > 0 for r in rows) else "linear")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    heads = sorted(int(k[len("val_dice_"):]) for k in rows[0] if k.startswith("val_dice_")
                   and k[len("val_dice_"):].isdigit())
    for lv in heads:
        ax_val.plot(epochs, [r[f"val_dice_{lv}"] for r in rows], alpha=0.6, label=f"Dice L{lv}")
    ax_val.plot(epochs, [r["val_dice"] for r in rows], color="black", lw=2, label="Dice (accurate)")
    ax_val.plot(epochs, [r["val_iou"] for r in rows], color="black", lw=1, ls="--", label="IoU (accurate)")
    best = max(range(len(rows)), key=lambda i: rows[i]["val_score"])
    ax_val.axvline(epochs[best], color="tab:red", alpha=0.4, ls=":", label=f"best (epoch {epochs[best]})")
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("validation (per case)")
    ax_val.set_ylim(0, 1)
    ax_val.grid(alpha=0.3)
    ax_val.legend(fontsize=8, loc="lower right")
    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())
