"""A digest of the weights of a tiny seeded training run, to show a refactoring changed nothing.

    python benchmarks/digest.py            # prints one SHA-256 per configuration

Each configuration trains a tiny network on a synthetic data set for a fixed number of
steps on the CPU, then hashes every tensor of ``model.safetensors`` and of the last
checkpoint (weights and Adam's state) in name order. Same code, same seed: same digest.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.training import TrainConfig, train

CONFIGS = {
    "unetpp-ds-2d": dict(arch="unetpp", preset="paper", schedule="constant", deep_supervision=True, base_filters=4,
                         depth=3, patch_size=[32], batch_size=2, epochs=2, steps_per_epoch=4),
    "unet-modern-2d": dict(arch="unet", preset="modern", schedule="constant", base_filters=4, depth=2,
                           patch_size=[32], batch_size=2, epochs=2, steps_per_epoch=4),
    # the defaults for user data (modern preset, poly schedule; issue 22)
    "unetpp-defaults-2d": dict(arch="unetpp", base_filters=4, depth=3, patch_size=[32], batch_size=2, epochs=2,
                               steps_per_epoch=4),
}


def tensors_digest(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        tensors = load_file(str(f))
        for name in sorted(tensors):
            t = tensors[name].contiguous()
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    torch.set_num_threads(1)  # thread count can change float summation order
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data", n_cases=8, size=40, seed=0)
        for name, settings in CONFIGS.items():
            run = train(TrainConfig(data=str(data), out=str(Path(tmp) / name), seed=0, lr=3e-3,
                                    device="cpu", progress="none", tensorboard=False, **settings))
            print(f"{name}: {tensors_digest(run / 'model.safetensors', run / 'last' / 'checkpoint.safetensors')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
