"""Which node form is fastest, per dims and per training/inference: a conv over the
concatenated inputs ("concat", the textbook form) or a sum of convs over the parts
("split", the default: no concatenated tensor, less activation memory). Same weights and
outputs either way. MONAI's BasicUNetPlusPlus beside them, in one interleaved run.

    python benchmarks/nodeform.py            # 2D 256^2 and 3D 48^3, paper filters, batch 1

Prints the median seconds per step and the ratio to MONAI; the runtime's choice
(``unetpp.runtime.split_concat_pays``) should follow these numbers.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import build  # noqa: E402  (the benchmark's model builder)

from unetpp import runtime  # noqa: E402


def step_fn(key: str, dims: int, side: int, train: bool):
    model = build(key, dims)
    if key != "monai":
        runtime.set_split_concat(model, not key.endswith("@concat"))
    x = torch.randn((1, 1) + (side,) * dims, generator=torch.Generator().manual_seed(0))
    if train:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            out = model(x)
            outs = list(out.values()) if isinstance(out, dict) else (list(out) if isinstance(out, (list, tuple)) else [out])
            sum(o.float().mean() for o in outs).backward()
            opt.step()
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(x)
    return step


def main() -> int:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for dims, side in ((2, 256), (3, 48)):
        for train in (False, True):
            keys = ["monai", "unetpp-ds", "unetpp-ds@concat"]
            steps = {k: step_fn(k, dims, side, train) for k in keys}
            for s in steps.values():
                s()  # warm-up (oneDNN picks its kernels)
            times = {k: [] for k in keys}
            for r in range(reps):
                for k in keys[r % 3:] + keys[:r % 3]:  # rotate the order each repetition
                    t0 = time.perf_counter()
                    steps[k]()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            what = "training" if train else "inference"
            print(f"{dims}D {what} {side}^{dims}: " + ", ".join(
                f"{k} {med[k]*1000:.0f} ms ({med['monai'] / med[k]:.2f}x MONAI)" for k in keys), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
