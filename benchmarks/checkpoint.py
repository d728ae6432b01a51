"""What an epoch boundary costs the training thread: the marginal wall time of one more epoch
of the 3D paper network (314 MB of weights + Adam state to checkpoint) when each epoch is one
tiny step, so the checkpoint is nearly all there is (issue 21: <= 1.0 s on the CPU).

    python benchmarks/checkpoint.py                       # this tree
    python benchmarks/checkpoint.py --src /tmp/base/src   # another checkout (e.g. before the change)

It trains ``unetpp train`` (the library call, in one fresh process per run) for ``--short``
and ``--long`` epochs of one 16^3 step each, validating only after the last, and prints
``(wall(long) - wall(short)) / (long - short)``: the seconds an extra epoch adds (its step,
the snapshot, and whatever the checkpoint write takes from the training thread).
Never a timed test: the number depends on the disk and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from unetpp.training import train
torch.set_num_threads(2)
t0 = time.perf_counter()
run = train(data=sys.argv[2], out=sys.argv[3], dims=3, epochs=int(sys.argv[4]), steps_per_epoch=1, batch_size=1,
            patch_size=[16], val_every=1000, device="cpu", progress="none", tensorboard=False, augment=False,
            patience=None)
wall = time.perf_counter() - t0
rows = (run / "metrics.csv").read_text().splitlines()
print(json.dumps({"wall": wall, "epochs": len(rows) - 1,
                  "checkpoint_mb": (run / "last" / "checkpoint.safetensors").stat().st_size / 2**20}))
'''


def one(src: Path, data: Path, out: Path, epochs: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(data), str(out), str(epochs)], env=env,
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the unetpp source tree to measure")
    ap.add_argument("--short", type=int, default=2)
    ap.add_argument("--long", type=int, default=8)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from unetpp.data.samples.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "vol", layout="nnunet", n_cases=3, size=(16, 32, 32), dims=3,
                                       seed=0, spacing=(1.0, 1.0, 1.0))
        one(args.src, data, Path(tmp) / "warm", 1)  # prepares the data set once
        t = time.perf_counter()
        short = one(args.src, data, Path(tmp) / "short", args.short)
        long = one(args.src, data, Path(tmp) / "long", args.long)
        marginal = (long["wall"] - short["wall"]) / (args.long - args.short)
        print(json.dumps({"src": str(args.src), "checkpoint_mb": round(long["checkpoint_mb"], 1),
                          "short": {"epochs": short["epochs"], "wall_s": round(short["wall"], 2)},
                          "long": {"epochs": long["epochs"], "wall_s": round(long["wall"], 2)},
                          "marginal_s_per_epoch": round(marginal, 3),
                          "bench_s": round(time.perf_counter() - t, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
