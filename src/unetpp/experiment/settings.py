"""The settings of ``unetpp compare``: which networks are compared (from the model
registry), the budget they share, and the names of the runs."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from ..errors import UnetppError

SETTINGS_FILE = "compare.json"
RUN_DONE = "compare.json"


class Variant(NamedTuple):
    """One compared network: a registered architecture, with or without deep supervision."""

    arch: str
    deep_supervision: bool
    label: str


#: The paper's order (its baselines first); variants of other registered architectures follow.
ORDER = ("unet", "wide-unet", "unetpp", "unetpp-ds")


@functools.cache
def variants() -> Mapping[str, Variant]:
    """``--archs`` name -> :class:`Variant`, from the model registry: every architecture
    ``name`` without deep supervision, and ``name-ds`` with it where the architecture has a
    head per level; in the paper's order (:data:`ORDER`)."""
    from ..models import arch_names, arch_spec

    found: dict[str, Variant] = {}
    for name in arch_names():
        spec = arch_spec(name)
        found[name] = Variant(name, False, spec.label)
        if spec.deep_supervision:
            found[f"{name}-ds"] = Variant(name, True, f"{spec.label} DS")
    rank = {k: i for i, k in enumerate(ORDER)}
    return MappingProxyType(dict(sorted(found.items(), key=lambda kv: rank.get(kv[0], len(ORDER)))))


#: Settings that define the budget: a folder holding runs made with other values is refused.
BUDGET_KEYS = ("data", "preset", "dims", "width", "depth", "epochs", "patience", "batch_size",
               "patch_size", "lr", "steps_per_epoch", "max_minutes", "augment", "val_fraction", "amp",
               "eval_mode")


@dataclass
class CompareConfig:
    """The settings of one comparison; every architecture gets the same budget."""

    data: str = ""
    out: str = ""
    archs: list[str] = field(default_factory=lambda: list(variants()))
    seeds: int = 3                      # seeds 0..seeds-1
    width: float = 1.0                  # filter scale (1.0 = the paper)
    preset: str = "paper"
    dims: int | None = None             # default: the dataset's
    depth: int = 4
    epochs: int = 50
    patience: int | None = 20
    batch_size: int | None = None
    patch_size: list[int] | None = None
    lr: float = 3e-4
    steps_per_epoch: int | None = None
    max_minutes: float | None = None    # per run (training time)
    augment: bool = True
    val_fraction: float = 0.2
    amp: bool | None = None             # None: on for CUDA, off on the CPU (unetpp.runtime decides)
    eval_mode: str = "accurate"         # deep-supervised runs: accurate | L<k> (fast at level k)
    tolerance: float = 0.5              # prune: IoU points
    prune_repeats: int = 10
    device: str = "auto"
    threads: int | None = None          # torch threads (None: the idle cores, see set_threads)
    jobs: int = 1                       # runs trained at once, one process each
    num_workers: int | None = None      # None: unetpp.runtime.loader_workers
    progress: str = "log"               # training progress: auto | bar | log | none

    def validate(self) -> "CompareConfig":
        p: list[str] = []
        if not self.data:
            p.append("DATA: no dataset given")
        if not self.out:
            p.append("--out: no output folder given")
        unknown = [a for a in self.archs if a not in variants()]
        if unknown:
            p.append(f"--archs: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(variants())}")
        if not self.archs:
            p.append("--archs: no architecture given")
        if len(set(self.archs)) != len(self.archs):
            p.append(f"--archs: listed twice: {', '.join(self.archs)}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            p.append(f"--seeds must be an integer >= 1, got {self.seeds!r}")
        if not isinstance(self.width, (int, float)) or not math.isfinite(self.width) or not 0 < self.width <= 16:
            p.append(f"--width must be a number > 0 and <= 16, got {self.width!r}")
        if not 0 <= self.tolerance <= 100:
            p.append(f"--tolerance must be between 0 and 100 IoU points, got {self.tolerance}")
        if isinstance(self.prune_repeats, bool) or not isinstance(self.prune_repeats, int) or self.prune_repeats < 1:
            p.append(f"--prune-repeats must be an integer >= 1, got {self.prune_repeats!r}")
        if not (self.eval_mode == "accurate" or (self.eval_mode[:1] == "L" and self.eval_mode[1:].isdigit())):
            p.append(f"--eval-mode must be accurate or L<level>, got {self.eval_mode!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            p.append(f"--threads must be an integer >= 1, got {self.threads!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            p.append(f"--jobs must be an integer >= 1, got {self.jobs!r}")
        if p:
            raise UnetppError(p)
        # the training settings are checked by TrainConfig (one line per bad one), on a
        # deep-supervised variant where there is one (it has the most to check)
        key = next((k for k, v in variants().items() if v.deep_supervision), next(iter(variants())))
        self.train_config(key, 0).validate()
        return self

    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    def train_config(self, key: str, seed: int) -> Any:
        from ..training import TrainConfig

        v = variants()[key]
        return TrainConfig(
            data=self.data, out=str(Path(self.out) / "runs" / run_name(key, seed)), arch=v.arch,
            preset=self.preset, deep_supervision=v.deep_supervision, dims=self.dims, depth=self.depth,
            width=self.width, epochs=self.epochs, patience=self.patience, batch_size=self.batch_size,
            patch_size=list(self.patch_size) if self.patch_size else None, lr=self.lr, schedule="constant",
            steps_per_epoch=self.steps_per_epoch, max_minutes=self.max_minutes, augment=self.augment,
            val_fraction=self.val_fraction, amp=self.amp, seed=seed, device=self.device,
            num_workers=self.num_workers, progress=self.progress, tensorboard=False,
            extra={"compare": key})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_name(key: str, seed: int) -> str:
    return f"{key}-seed{seed}"
