"""The report of a comparison: statistics over seeds, the paper's numbers and claims,
``results.json``, ``results.md`` and the per-case box plot.

Kept apart from running the experiment (:mod:`.compare`) so that the report can be rebuilt
from the runs' ``compare.json`` entries alone, and read without the training machinery:
nothing here trains or loads a network. The schema of ``results.json`` is in
:mod:`.compare`'s docstring.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .settings import CompareConfig, run_name, variants


RESULTS_FORMAT = "unetpp-compare"
RESULTS_FORMAT_VERSION = 1

#: The paper's own numbers (Zhou et al., DLMIA 2018, Table 3 and Table 2): IoU (%) on the
#: cell nuclei data (Data Science Bowl 2018), and parameters of the 2D networks.
PAPER = {
    "source": "Zhou et al., UNet++: A Nested U-Net Architecture for Medical Image Segmentation, "
              "DLMIA 2018 (Tables 2 and 3)",
    "nuclei_iou": {"unet": 90.77, "wide-unet": 90.92, "unetpp": 92.63, "unetpp-ds": 92.52},
    "params": {"unet": 7.76e6, "wide-unet": 9.13e6, "unetpp": 9.04e6, "unetpp-ds": 9.04e6},
}


# ------------------------------------------------------------------------------ statistics
def stats(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "sd", "values"}``; ``sd`` is the sample sd over seeds (None for one value)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "values": []}
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return {"mean": float(np.mean(vals)), "sd": sd, "values": vals}


def pct(s: dict[str, Any] | None, digits: int = 2) -> str:
    """``"91.23 ± 0.45"`` from a stats dict on a 0-1 scale."""
    if not s or s.get("mean") is None:
        return "n/a"
    text = f"{s['mean'] * 100:.{digits}f}"
    return text + (f" ± {s['sd'] * 100:.{digits}f}" if s.get("sd") is not None else "")


# ------------------------------------------------------------------------------ results.json
def _machine(cfg: CompareConfig) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "device": device, "gpu": gpu}


def _versions() -> dict[str, str]:
    import torch

    from .. import __version__

    return {"unetpp": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _claims(archs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's claims, checked on our means (with the larger of the two seed sds)."""
    def mean(k: str) -> float | None:
        return archs[k]["iou"]["mean"] if k in archs and archs[k]["iou"]["mean"] is not None else None

    def sd(a: str, b: str) -> float | None:
        sds = [archs[k]["iou"]["sd"] for k in (a, b) if archs[k]["iou"]["sd"] is not None]
        return max(sds) if sds else None

    out = []
    for a, b, text in (("unetpp", "unet", "UNet++ beats U-Net"),
                       ("unetpp", "wide-unet", "UNet++ beats wide U-Net"),
                       ("unetpp-ds", "unet", "UNet++ DS beats U-Net"),
                       ("unetpp-ds", "wide-unet", "UNet++ DS beats wide U-Net"),
                       ("wide-unet", "unet", "wide U-Net beats U-Net"),
                       ("unetpp-ds", "unetpp", "deep supervision helps UNet++")):
        ma, mb = mean(a), mean(b)
        if ma is None or mb is None:
            continue
        diff = ma - mb
        s = sd(a, b)
        paper = PAPER["nuclei_iou"][a] - PAPER["nuclei_iou"][b]
        out.append({"claim": text, "a": a, "b": b, "holds": diff > 0, "difference": diff, "sd": s,
                    "within_sd": s is not None and abs(diff) <= s,
                    "paper_nuclei_difference": paper / 100.0, "paper_holds_on_nuclei": paper > 0})
    return out


def build_results(cfg: CompareConfig, ds: Any, entries: dict[str, list[dict[str, Any]]],
                  failed: list[dict[str, Any]], command: str | None, eval_split: str,
                  wall_seconds: float) -> dict[str, Any]:
    from ..training import TrainConfig

    archs: dict[str, dict[str, Any]] = {}
    for key in cfg.archs:
        runs = sorted(entries.get(key, []), key=lambda e: e["seed"])
        variant = variants()[key]
        archs[key] = {
            "label": variant.label, "arch": variant.arch, "deep_supervision": variant.deep_supervision,
            "filters": TrainConfig(arch=variant.arch, width=cfg.width).filters(),
            "params": runs[0]["params"] if runs else None,
            "iou": stats([r["iou"] for r in runs]), "dice": stats([r["dice"] for r in runs]),
            "train_seconds": stats([r["train_seconds"] for r in runs]),
            "epochs": stats([r["epochs"] for r in runs if r.get("epochs") is not None]),
            "runs": [{k: v for k, v in r.items() if k not in ("prune", "arch")} for r in runs],
        }
    pruning = None
    ds_runs = [r for r in entries.get("unetpp-ds", []) if "prune" in r]
    if ds_runs:
        first = ds_runs[0]["prune"]
        keys = sorted(first["levels"], key=int) + ["accurate"]
        levels = {}
        for k in keys:
            get = (lambda r, k=k: r["prune"]["accurate"] if k == "accurate" else r["prune"]["levels"][k])
            levels[k] = {"params": get(ds_runs[0])["params"], "flops": get(ds_runs[0]).get("flops"),
                         "latency_ms": float(np.median([get(r)["latency_ms"] for r in ds_runs])),
                         "val_iou": stats([get(r)["iou"] for r in ds_runs]),
                         "test_iou": stats([r["levels"][k]["iou"] for r in ds_runs if k in r.get("levels", {})]),
                         "test_dice": stats([r["levels"][k]["dice"] for r in ds_runs if k in r.get("levels", {})])}
        pruning = {"arch": "unetpp-ds", "tolerance": cfg.tolerance, "input_shape": first["input_shape"],
                   "device": first["device"], "val_cases": first["cases"], "val_split": first["split"],
                   "levels": levels,
                   "chosen": [{"seed": r["seed"], **r["prune"]["chosen"]} for r in ds_runs]}
    ranked = sorted((k for k in archs if archs[k]["iou"]["mean"] is not None),
                    key=lambda k: archs[k]["iou"]["mean"], reverse=True)
    split = getattr(ds, "default_split", None)
    first_run = next((r for rs in entries.values() for r in rs), None)
    run_split = None
    if first_run is not None:
        try:
            from ..io import read_json

            run_split = read_json(Path(first_run["run"]) / "config.json").get("split")
        except Exception:  # noqa: BLE001
            run_split = None
    split = run_split or split or {}
    settings = cfg.to_dict()
    settings["seeds_list"] = cfg.seed_list()
    return {
        "format": RESULTS_FORMAT, "format_version": RESULTS_FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "versions": _versions(), "machine": {**_machine(cfg), "jobs": max(
            (r.get("jobs", 1) for rs in entries.values() for r in rs), default=1)},
        "data": {"data": cfg.data, "root": str(getattr(ds, "root", "")), "layout": getattr(ds, "layout", None),
                 "spatial_dims": getattr(ds, "spatial_dims", None), "dims": cfg.dims or getattr(ds, "spatial_dims", None),
                 "channels": getattr(ds, "channels", None), "classes": getattr(ds, "classes", None),
                 "labels": {str(k): v for k, v in (getattr(ds, "labels", {}) or {}).items()},
                 "split": {k: len(v) for k, v in split.items()}, "eval_split": eval_split},
        "settings": settings, "archs": archs, "pruning": pruning,
        "ordering": {"ours": ranked, "paper_nuclei": sorted(PAPER["nuclei_iou"], key=PAPER["nuclei_iou"].get,
                                                             reverse=True),
                     "claims": _claims({k: v for k, v in archs.items()})},
        "paper": PAPER, "failed": failed, "wall_seconds": wall_seconds,
        "runs_seconds": float(sum(r.get("train_seconds", 0.0) + r.get("eval_seconds", 0.0) + r.get("prune_seconds", 0.0)
                                  for rs in entries.values() for r in rs)),
    }


# ------------------------------------------------------------------------------ box plot, results.md
def boxplot_png(results: dict[str, Any]) -> bytes:
    """Per-case IoU (%) per architecture, all seeds pooled; each case a dot."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    keys = [k for k in results["archs"] if results["archs"][k]["runs"]]
    data = [[c["iou"] * 100 for r in results["archs"][k]["runs"] for c in r["cases"]] for k in keys]
    fig, ax = plt.subplots(figsize=(1.6 * max(2, len(keys)) + 2, 4.2), dpi=100)
    if keys:
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(keys) + 1))
        ax.set_xticklabels([results["archs"][k]["label"] for k in keys])
        rng = np.random.default_rng(0)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=12, alpha=0.6, color="tab:blue", zorder=3)
    s = results["settings"]
    ax.set_ylabel("IoU per case (%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"{Path(str(results['data']['data'])).name}: per-case IoU on {results['data']['eval_split']} "
                 f"cases, {s['seeds']} seed(s), width {s['width']:g}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _fmt_seconds(s: dict[str, Any]) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    m = s["mean"]
    return f"{m / 60:.1f} min" if m >= 120 else f"{m:.0f} s"


def results_markdown(results: dict[str, Any]) -> str:
    """``results.md``: what was run, the table, the paper's numbers, the ordering, pruning."""
    s, d, archs = results["settings"], results["data"], results["archs"]
    v, m = results["versions"], results["machine"]
    filters = ", ".join(f"{a['label']} {a['filters']}" for a in archs.values())
    lines = [
        f"# unetpp compare: {Path(str(d['data'])).name}", "",
        f"- data: `{d['data']}` ({d['layout']}, {d['spatial_dims']}D images, trained in {d['dims']}D; "
        f"{d['classes']} class(es) {d['labels']}); split {d['split']}; scored per case on the "
        f"**{d['eval_split']}** cases",
        f"- width factor **{s['width']:g}** (1.0 = the paper): first-row filters {filters}; preset {s['preset']}",
        f"- same budget for every network: epochs {s['epochs']}, early stopping "
        + (f"after {s['patience']} epochs without improvement" if s['patience'] else "off (best epoch kept)") + ", "
        f"steps per epoch {s['steps_per_epoch'] or 'default'}, batch size {s['batch_size'] or 'default'}, "
        f"patch {s['patch_size'] or 'default'}, lr {s['lr']:g}, augmentation {'on' if s['augment'] else 'off'}, "
        f"amp {'on' if s['amp'] else 'off'}"
        + (f", at most {s['max_minutes']:g} min of training per run" if s.get("max_minutes") else ""),
        f"- seeds {s['seeds_list']}; mean ± sample sd over seeds; deep-supervised UNet++ scored in "
        f"{s['eval_mode']} mode",
        f"- unetpp {v['unetpp']}, torch {v['torch']}, Python {v['python']}; {m['cpu']} "
        f"({m['cpu_count']} cores, {m['threads']} torch threads), device {m['device']}"
        + (f" ({m['gpu']})" if m.get("gpu") else "")
        + (f"; {m['jobs']} runs trained at a time, one process each (so the pruning latencies were "
           "measured while other runs trained)" if m.get("jobs", 1) > 1 else ""),
    ]
    if results.get("command"):
        lines += [f"- command: `{results['command']}`"]
    lines += ["", "| network | params | IoU % | Dice % | epochs | training time / run | paper IoU % (nuclei) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for key, a in archs.items():
        ep = a["epochs"]["mean"]
        lines.append(f"| {a['label']} | {a['params']:,} | {pct(a['iou'])} | {pct(a['dice'])} | "
                     f"{'n/a' if ep is None else f'{ep:.0f}'} | {_fmt_seconds(a['train_seconds'])} | "
                     f"{PAPER['nuclei_iou'][key]:.2f} |" if a["params"] is not None else
                     f"| {a['label']} | n/a | n/a | n/a | n/a | n/a | {PAPER['nuclei_iou'][key]:.2f} |")
    lines += ["", f"The paper's IoU column is its cell-nuclei result at full width (parameters "
              f"{PAPER['params']['unet'] / 1e6:.2f}M / {PAPER['params']['wide-unet'] / 1e6:.2f}M / "
              f"{PAPER['params']['unetpp'] / 1e6:.2f}M for U-Net / wide U-Net / UNet++), for reference "
              "only: it was measured on other data, at full width and with a much longer budget.", ""]
    order = results["ordering"]
    if order["ours"]:
        lines += ["## Ordering", "",
                  "- ours (mean IoU): " + " > ".join(archs[k]["label"] for k in order["ours"]),
                  "- the paper (nuclei): " + " > ".join(variants()[k].label for k in order["paper_nuclei"]), ""]
        for c in order["claims"]:
            sd = f", larger seed sd {c['sd'] * 100:.2f}" if c["sd"] is not None else ""
            note = " (within the seed-to-seed spread)" if c["within_sd"] else ""
            agree = "agrees" if c["holds"] == c["paper_holds_on_nuclei"] else "disagrees"
            lines.append(f"- {c['claim']}: {'yes' if c['holds'] else 'no'}, {c['difference'] * 100:+.2f} IoU points"
                         f"{sd}{note}; the paper: {c['paper_nuclei_difference'] * 100:+.2f} on nuclei; {agree} "
                         "with the paper's sign")
        lines.append("")
    p = results.get("pruning")
    if p:
        shape = "x".join(map(str, p["input_shape"][2:]))
        lines += ["## Pruning the deep-supervised UNet++", "",
                  f"Fast mode at level L runs only UNet++ L<L> (the nodes X^(i,j) with i+j <= L); accurate mode "
                  f"averages every head. Latency: median forward pass on one {shape} input on {p['device']} "
                  f"(median over seeds); validation IoU on {p['val_cases']} {p['val_split']} case(s) (what "
                  f"`unetpp prune` chooses on, tolerance {p['tolerance']:g} IoU points); held-out IoU on the "
                  f"{d['eval_split']} cases.", "",
                  "| level | params | MFLOPs | latency ms | val IoU % | held-out IoU % | held-out Dice % |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for k, e in p["levels"].items():
            name = "accurate" if k == "accurate" else f"L{k}"
            fl = f"{e['flops'] / 1e6:.1f}" if e.get("flops") is not None else "n/a"
            lines.append(f"| {name} | {e['params']:,} | {fl} | {e['latency_ms']:.2f} | {pct(e['val_iou'])} | "
                         f"{pct(e['test_iou'])} | {pct(e['test_dice'])} |")
        chosen = ", ".join(f"seed {c['seed']}: " + ("accurate" if c["mode"] == "accurate" else f"L{c['level']}")
                           for c in p["chosen"])
        lines += ["", f"Chosen by `prune`: {chosen}.", ""]
    lines += ["## Per case", "", "![per-case IoU](iou_boxplot.png)", "",
              "| network | seed | " + "case | IoU % | Dice % |", "|---|---:|---|---:|---:|"]
    for a in archs.values():
        for r in a["runs"]:
            for c in r["cases"]:
                lines.append(f"| {a['label']} | {r['seed']} | {c['case']} | {c['iou'] * 100:.2f} | {c['dice'] * 100:.2f} |")
    if results.get("failed"):
        lines += ["", "## Failed runs", ""] + [f"- {run_name(f['arch'], f['seed'])}: {f['error']}"
                                              for f in results["failed"]]
    lines += ["", f"Time: {results['runs_seconds'] / 60:.1f} min of training, scoring and pruning over all runs; "
              f"{results['wall_seconds'] / 60:.1f} min for this invocation "
              "(runs finished earlier in the folder are not retrained).", ""]
    return "\n".join(lines)


def write_results(out: Path, results: dict[str, Any]) -> None:
    from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text

    atomic_write_bytes(out / "iou_boxplot.png", boxplot_png(results))
    atomic_write_text(out / "results.md", results_markdown(results))
    atomic_write_json(out / "results.json", results)


__all__ = ["PAPER", "RESULTS_FORMAT", "RESULTS_FORMAT_VERSION", "build_results", "boxplot_png", "pct",
           "results_markdown", "stats", "write_results"]
