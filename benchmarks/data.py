"""Data at scale: opening a dataset, the training loader's patches/s and its peak memory,
against the number of cases, today's decode-every-time path beside the prepared one.

    python benchmarks/data.py --out docs/benchmarks-data.md            # 6, 24, 96 cases (~30 min)
    python benchmarks/data.py --quick --out /tmp/data.md               # tiny volumes (~1 min)

The benchmark writes its own CT-like nnU-Net/MSD dataset (``imagesTr``/``labelsTr``,
512x512x64 int16 volumes, 0.7-0.9 mm in-plane, 2.5 mm slices, a liver-like label) and
measures, each in a fresh subprocess (so peak RSS is that of one loader):

- ``open``: ``open_dataset`` (unprepared: reads and checks every case; prepared: reads
  ``plan.json`` and stats the source files);
- ``prepare``: ``unetpp data prepare`` with 2 workers (once per size), beside today's cost of
  decoding, resampling and normalising every case once (open + ``load_case`` of each);
- loader patches/s: 3D 64^3 patches with augmentation (batch 2), 2D 256^2 slices (batch 8),
  ``num_workers=0``, after one warm-up batch; peak RSS of the process (``ru_maxrss``).

Never a timed test: numbers depend on the machine, its disk and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def write_ct_dataset(folder: Path, cases: int, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """``cases`` CT-like volumes (x, y, z as stored) in the MSD layout; returns the folder."""
    import nibabel as nib

    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    x, y, z = shape
    gx, gy = np.meshgrid(np.linspace(-1, 1, x, dtype=np.float32), np.linspace(-1, 1, y, dtype=np.float32),
                         indexing="ij")
    for i in range(cases):
        name = f"ct_{i:03d}"
        if (folder / "labelsTr" / f"{name}.nii.gz").is_file():
            continue
        rng = np.random.default_rng([seed, i])
        body = (gx / 0.85) ** 2 + (gy / 0.7) ** 2 < 1
        cx, cy, r = rng.uniform(-0.3, 0.1), rng.uniform(-0.2, 0.2), rng.uniform(0.2, 0.3)
        liver2d = (gx - cx) ** 2 + ((gy - cy) / 0.8) ** 2 < r**2
        zz = np.abs(np.linspace(-1, 1, z, dtype=np.float32)) < rng.uniform(0.4, 0.8)
        image = np.where(body, 40, -1000).astype(np.int16)[..., None].repeat(z, axis=2)
        label = (liver2d[..., None] & zz[None, None, :]).astype(np.uint8)
        image[label > 0] = 90
        image = (image + rng.normal(0, 15, image.shape).astype(np.int16)).astype(np.int16)
        spacing = (rng.uniform(0.7, 0.9),) * 2 + (2.5,)
        affine = np.diag(list(spacing) + [1.0])
        nib.save(nib.Nifti1Image(image, affine), str(folder / "imagesTr" / f"{name}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(folder / "labelsTr" / f"{name}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({
        "name": "ct-like", "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    return folder


def child(spec: dict) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    from unetpp.data import open_dataset
    from unetpp.data.loading.pipeline import make_train_loader

    torch.set_num_threads(spec.get("threads", 1))
    out: dict = {}
    t0 = time.perf_counter()
    ds = open_dataset(spec["data"], prepared=spec["prepared"])
    out["open_s"] = time.perf_counter() - t0
    if spec.get("load_all"):  # today's cost of decoding, resampling and normalising every case once
        t0 = time.perf_counter()
        for name in ds.case_names:
            ds.load_case(name)
        out["load_all_s"] = out["open_s"] + time.perf_counter() - t0
    if spec.get("batches"):
        dims, patch, batch = spec["dims"], tuple(spec["patch"]), spec["batch"]
        loader = make_train_loader(ds, ds.case_names, dims=dims, patch_size=patch, batch_size=batch, seed=0,
                                   augment=True, num_workers=0, samples_per_epoch=batch * (spec["batches"] + 1))
        loader.set_epoch(1)
        it = iter(loader)
        next(it)  # warm-up batch
        t0 = time.perf_counter()
        n = 0
        for _ in it:
            n += batch
        out["patches_per_s"] = n / (time.perf_counter() - t0)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(spec: dict, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--quick", action="store_true", help="tiny volumes and sizes: a smoke run")
    ap.add_argument("--sizes", default=None, help="comma-separated case counts (default 6,24,96)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the datasets (default: a temp folder)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    q = args.quick
    sizes = [int(s) for s in (args.sizes or ("2,4" if q else "6,24,96")).split(",")]
    shape = (64, 64, 16) if q else (512, 512, 64)
    patch3d, patch2d = ((16, 32, 32), (64, 64)) if q else ((64, 64, 64), (256, 256))
    batches = 3 if q else 10
    old_batches = 2 if q else 4  # the decode-every-time path is slow: fewer batches
    work = args.work or Path(tempfile.mkdtemp(prefix="unetpp-data-bench-"))
    t_start = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t_start:7.1f}s] {s}", flush=True)  # noqa: E731
    rows = []
    base = work / "ct"
    for n in sizes:
        log(f"{n} cases: writing")
        write_ct_dataset(base, n, shape)
        data = work / f"ct-{n}"
        if not data.exists():
            data.mkdir()
            for sub in ("imagesTr", "labelsTr"):
                (data / sub).mkdir()
                for f in sorted((base / sub).iterdir())[:n]:
                    os.link(f, data / sub / f.name)
            shutil.copy(base / "dataset.json", data / "dataset.json")
        row: dict = {"cases": n}
        for prepared in (False, True):
            tag = "prepared" if prepared else "decoded"
            if prepared:
                log(f"{n} cases: unetpp data prepare --workers 2")
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "unetpp", "data", "prepare", str(data), "--workers", "2"],
                                      capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
                row["prepare_s"] = time.perf_counter() - t0 if proc.returncode == 0 else None
            for dims, patch, batch in ((3, patch3d, 2), (2, patch2d, 8)):
                log(f"{n} cases: {tag} loader {dims}D")
                nb = batches if prepared else old_batches
                r = run_child({"data": str(data), "prepared": prepared, "dims": dims, "patch": list(patch),
                               "batch": batch, "batches": nb}, timeout=3600)
                row[f"{tag}_{dims}d"] = r
            log(f"{n} cases: {tag} open")
            row[f"{tag}_open"] = run_child({"data": str(data), "prepared": prepared, "load_all": not prepared},
                                           timeout=3600)
        rows.append(row)
        log(json.dumps(row))
    report = render(rows, shape, patch3d, patch2d, q, time.perf_counter() - t_start)
    if args.out:
        args.out.write_text(report)
    print(report)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def render(rows: list[dict], shape, patch3d, patch2d, quick: bool, seconds: float) -> str:
    def g(row, key, field, spec=".2f"):
        v = row.get(key, {}).get(field) if isinstance(row.get(key), dict) else row.get(key)
        return "n/a" if v is None else format(v, spec)

    lines = [f"Written by `benchmarks/data.py{' --quick' if quick else ''}` in {seconds / 60:.1f} min; "
             f"volumes {shape[0]}x{shape[1]}x{shape[2]} int16 (x, y, z), 3D patches {'x'.join(map(str, patch3d))} "
             f"(batch 2), 2D {'x'.join(map(str, patch2d))} (batch 8), augmentation on, no loader workers, "
             f"{os.cpu_count()} cores.", "",
             "| cases | open: decoded | open: prepared | prepare (2 workers) | 3D patches/s: decoded | prepared | "
             "2D patches/s: decoded | prepared | peak RSS 3D MB: decoded | prepared |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['cases']} | {g(r, 'decoded_open', 'open_s')} s | {g(r, 'prepared_open', 'open_s')} s | "
                     f"{g(r, 'prepare_s', None, '.0f')} s | {g(r, 'decoded_3d', 'patches_per_s')} | "
                     f"{g(r, 'prepared_3d', 'patches_per_s')} | {g(r, 'decoded_2d', 'patches_per_s')} | "
                     f"{g(r, 'prepared_2d', 'patches_per_s')} | {g(r, 'decoded_3d', 'peak_rss_mb', '.0f')} | "
                     f"{g(r, 'prepared_3d', 'peak_rss_mb', '.0f')} |")
    first, last = rows[0], rows[-1]

    def v(row, key, field):
        x = row.get(key)
        return x.get(field) if isinstance(x, dict) else None

    flat = (v(last, "prepared_3d", "patches_per_s") or 0) / max(v(first, "prepared_3d", "patches_per_s") or 1e-9, 1e-9)
    mid = next((r for r in rows if r["cases"] == 24), last)
    speedup = (v(mid, "prepared_3d", "patches_per_s") or 0) / max(v(mid, "decoded_3d", "patches_per_s") or 1e-9, 1e-9)
    lines += ["", "| goal | measured |", "|---|---|",
              f"| loader patches/s at {last['cases']} cases ≥ 0.8× at {first['cases']} (3D, prepared) | {flat:.2f}× |",
              f"| prepared ≥ 30× today's at {mid['cases']} cases (3D patches/s) | {speedup:.1f}× |",
              f"| `prepare` (2 workers) faster than today's decode + resample + normalise of every case "
              f"({last['cases']} cases) | {g(last, 'prepare_s', None, '.0f')} s vs "
              f"{g(last, 'decoded_open', 'load_all_s', '.0f')} s |",
              f"| opening a prepared {last['cases']}-case dataset ≤ 2 s | {g(last, 'prepared_open', 'open_s')} s |",
              f"| loader peak RSS flat in the number of cases, ≤ 1.5 GB | "
              f"{g(first, 'prepared_3d', 'peak_rss_mb', '.0f')} → {g(last, 'prepared_3d', 'peak_rss_mb', '.0f')} MB |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
