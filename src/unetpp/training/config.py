"""``TrainConfig``: every setting of a training run, as one JSON-serialisable dataclass.

Precedence, lowest first: the defaults here, a ``--config`` file (YAML or JSON, keys are the
field names below, ``-`` or ``_``), then command-line flags. The effective config is stored in
``RUN/config.json["train"]`` so a run can be resumed or reproduced from its folder alone.

A resumed run keeps its stored settings; only the fields in :data:`RESUMABLE_CHANGES`
(how long to train, where, how fast) may differ from the stored ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import UnetppError
from ..models import PRESETS, arch_names, arch_spec, check_deep_supervision
from .schedule import SCHEDULES

DEVICES = ("auto", "cpu", "cuda", "mps")
MONITORS = ("accurate", "mean")  # or "L1".."L<depth>": one head

#: Fields a resumed run may change (they do not alter what an epoch computes on CPU, or they
#: are how long to go on). Everything else is taken from the run folder.
RESUMABLE_CHANGES = ("epochs", "patience", "min_patience_steps", "device", "num_workers", "max_minutes", "compile",
                     "channels_last", "amp", "progress", "tensorboard", "data", "val_every")


@dataclass
class TrainConfig:
    """Every setting of a training run; see ``unetpp train --help`` for each.

    Example:
        >>> from unetpp.training import TrainConfig, train
        >>> run = train(TrainConfig(data="nuclei-2d", out="runs/a", epochs=20))  # doctest: +SKIP
    """

    data: str = ""                      # dataset folder or fetched sample name
    out: str = ""                       # run folder to create (or resume)
    # model
    arch: str = "unetpp"                # unetpp | unet | wide-unet
    preset: str = "modern"              # modern (user data; issue 22) | paper (the DLMIA 2018 network)
    deep_supervision: bool | None = None  # default: on for unetpp
    dims: int | None = None             # 2 or 3; default: the dataset's
    depth: int = 4
    width: float = 1.0                  # filter scale: base_filters = round(the arch's base filters * width)
    base_filters: int | None = None     # overrides width
    strides: list[list[int]] | None = None       # per-level pooling per axis; settled from the spacing
    kernel_sizes: list[list[int]] | None = None  # per-row conv kernel per axis; settled likewise
    # optimisation (the paper's: Adam 3e-4, BCE + Dice on every head, early stopping)
    epochs: int = 100
    patience: int | None = 20           # epochs without a better validation score; None: never stop early
    min_patience_steps: int = 1000      # ... and at least this many steps in them (issue 22); 0: epochs only
    batch_size: int | None = None       # CPU: 8 (2D) / 2 (3D); CUDA: from its memory (plan.settle)
    patch_size: list[int] | None = None  # CPU: 96 (2D) / 64 (3D) per axis; CUDA: from its memory
    lr: float = 3e-4
    schedule: str = "poly"              # poly (user data; issue 22) | constant (the paper's); training/schedule.py
    weight_decay: float = 0.0
    level_weights: list[float] | None = None  # loss weight per deep-supervision head, level 1 first
    ce_weight: float = 0.5              # paper's loss: 1/2 BCE + Dice
    dice_weight: float = 1.0
    steps_per_epoch: int | None = None  # CPU: the loader's (every training voxel about once); CUDA: 250
    max_minutes: float | None = None    # wall-time budget of the epochs (steps + validation); stops (resumable) before an epoch that would not fit
    # data
    val_fraction: float = 0.2
    folds: int = 5
    fold: int | None = None
    augment: bool = True
    num_workers: int | None = None      # None: unetpp.runtime.loader_workers (CUDA: cores-1, CPU: 0)
    # validation: whole images/volumes through the sliding-window engine, per case
    monitor: str = "accurate"           # accurate (mean of heads) | mean (of per-head scores) | L<k>
    val_overlap: float = 0.5
    val_batch_size: int = 4
    val_every: int | None = None        # epochs between validations; None: every epoch unless costly
    # runtime
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None             # None: on for CUDA, off elsewhere (unetpp.runtime decides)
    channels_last: bool | None = None   # None: where it pays (unetpp.runtime decides)
    compile: bool | None = None         # None: where it pays (a long enough run on CUDA; see plan.compile_pays)
    deterministic: bool = False
    resume: bool | str = False          # True: continue RUN; "auto": continue it if it has a checkpoint
    progress: str = "auto"              # auto | bar | log | none
    tensorboard: bool = True            # a TensorBoard log in RUN/tensorboard if it is installed
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the run

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TrainConfig":
        """Raise :class:`UnetppError` with one line per bad field."""
        p: list[str] = []

        def check_int(name: str, lo: int, hi: int | None = None, optional: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
                p.append(f"--{name.replace('_', '-')} must be an integer {rng}, got {v!r}")

        def check_float(name: str, lo: float, hi: float | None = None, optional: bool = False,
                        open_lo: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > lo if open_lo else v >= lo) and (hi is None or v <= hi)
            if not ok:
                rng = f"{'>' if open_lo else '>='} {lo}" + ("" if hi is None else f" and <= {hi}")
                p.append(f"--{name.replace('_', '-')} must be a number {rng}, got {v!r}")

        if not self.data:
            p.append("DATA: no dataset given")
        if not self.out:
            p.append("--out: no run folder given")
        if self.arch not in arch_names():
            p.append(f"--arch must be one of {', '.join(arch_names())}, got {self.arch!r}")
        if self.preset not in PRESETS:
            p.append(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        problem = check_deep_supervision(self.arch, self.deep_supervision, "--deep-supervision")
        if problem:
            p.append(problem)
        if self.dims is not None and (isinstance(self.dims, bool) or self.dims not in (2, 3)):
            p.append(f"--dims must be 2 or 3, got {self.dims!r}")
        check_int("depth", 1, 6)
        check_float("width", 0.0, 16.0, open_lo=True)
        check_int("base_filters", 1, 256, optional=True)
        check_int("epochs", 1)
        check_int("patience", 1, optional=True)
        check_int("min_patience_steps", 0)
        check_int("batch_size", 1, 4096, optional=True)
        if self.patch_size is not None:
            ps = self.patch_size
            if (not isinstance(ps, (list, tuple)) or not ps
                    or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in ps)):
                p.append(f"--patch-size must be positive integers (S or S,S[,S]), got {ps!r}")
            elif self.dims is not None and len(ps) not in (1, self.dims):
                p.append(f"--patch-size has {len(ps)} values for --dims {self.dims}")
        check_float("lr", 0.0, open_lo=True)
        if self.schedule not in SCHEDULES:
            p.append(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        check_float("weight_decay", 0.0)
        check_float("ce_weight", 0.0)
        check_float("dice_weight", 0.0)
        if self.ce_weight == 0 and self.dice_weight == 0:
            p.append("--ce-weight and --dice-weight are both 0: the loss would be 0")
        if self.level_weights is not None:
            lw = self.level_weights
            if (not isinstance(lw, (list, tuple)) or not lw
                    or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)
                           or w < 0 for w in lw) or sum(lw) <= 0):
                p.append(f"level_weights must be non-negative numbers, not all 0, got {lw!r}")
        check_int("steps_per_epoch", 1, optional=True)
        check_float("max_minutes", 0.0, optional=True, open_lo=True)
        check_float("val_fraction", 0.0, 0.9, open_lo=True)
        check_int("folds", 2, 100)
        check_int("fold", 0, optional=True)
        if isinstance(self.fold, int) and isinstance(self.folds, int) and self.fold >= self.folds:
            p.append(f"--fold must be in 0..{self.folds - 1} (--folds {self.folds}), got {self.fold}")
        check_int("num_workers", 0, 256, optional=True)
        if self.monitor not in MONITORS and not (isinstance(self.monitor, str) and self.monitor[:1] == "L"
                                                 and self.monitor[1:].isdigit()):
            p.append(f"monitor must be accurate, mean or L<level>, got {self.monitor!r}")
        check_float("val_overlap", 0.0, 0.95)
        check_int("val_batch_size", 1, 4096)
        check_int("val_every", 1, 10_000, optional=True)
        check_int("seed", 0, 2**32 - 1)
        if self.device not in DEVICES and not (isinstance(self.device, str) and self.device.startswith("cuda:")):
            p.append(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.resume not in (True, False, "auto"):
            p.append(f"resume must be true, false or \"auto\", got {self.resume!r}")
        for name in ("amp", "channels_last"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                p.append(f"{name} must be true, false or null, got {getattr(self, name)!r}")
        if self.compile is not None and not isinstance(self.compile, bool):
            p.append(f"compile must be true, false or null, got {self.compile!r}")
        for name in ("deterministic", "augment", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                p.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.progress not in ("auto", "bar", "log", "none"):
            p.append(f"progress must be auto, bar, log or none, got {self.progress!r}")
        if not isinstance(self.extra, dict):
            p.append(f"extra must be a mapping, got {self.extra!r}")
        if p:
            raise UnetppError(p)
        return self

    # ------------------------------------------------------------------ derived values
    def filters(self) -> int:
        if self.base_filters is not None:
            return self.base_filters
        return max(1, round(arch_spec(self.arch).base_filters * self.width))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a mapping, refusing unknown keys (one line each, naming ``source``)."""
        return cls(**normalise_keys(data, source))

    def replace(self, **changes: Any) -> "TrainConfig":
        return replace(self, **changes)


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
DEFAULTS = TrainConfig()
#: settings added with a new default: what a stored config without them was trained with
PREVIOUS_DEFAULTS = {"schedule": "constant", "min_patience_steps": 0}


def normalise_keys(data: Any, source: str) -> dict[str, Any]:
    """``{"batch-size": 4}`` -> ``{"batch_size": 4}``; unknown keys raise UnetppError."""
    if not isinstance(data, dict):
        raise UnetppError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    out: dict[str, Any] = {}
    problems = []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELD_NAMES:
            problems.append(f"{source}: unknown setting {key!r} (known: {', '.join(FIELD_NAMES)})")
            continue
        if name == "patch_size" and value is not None:
            value = parse_patch_size(value, source)
        out[name] = value
    if problems:
        raise UnetppError(problems)
    return out


def as_config(config: TrainConfig | dict[str, Any] | None, overrides: dict[str, Any]) -> TrainConfig:
    """``train()``'s arguments as one config: a TrainConfig or a dict of its fields (or None:
    the defaults), with ``overrides`` (field names, ``-`` or ``_``) replacing its fields."""
    if config is None:
        config = TrainConfig()
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    if overrides:
        config = config.replace(**normalise_keys(overrides, "train()"))
    return config


def parse_patch_size(value: Any, source: str = "--patch-size") -> list[int]:
    """``96``, ``"96"``, ``"96,96"`` or ``[96, 96]`` -> list of ints."""
    if isinstance(value, bool):
        raise UnetppError(f"{source}: patch size must be integers, got {value!r}")
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        try:
            return [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            raise UnetppError(f"{source}: patch size must be S or S,S[,S], got {value!r}") from None
    if isinstance(value, (list, tuple)):
        return list(value)
    raise UnetppError(f"{source}: patch size must be S or S,S[,S], got {value!r}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML (``.yaml``/``.yml``) or JSON file, keys normalised."""
    path = Path(path)
    if not path.is_file():
        raise UnetppError(f"--config {path}: file not found")
    if path.stat().st_size > 2**20:
        raise UnetppError(f"--config {path}: larger than 1 MiB; is it a config file?")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the file's fault
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnetppError(f"--config {path}: cannot parse ({first})") from None
    return normalise_keys({} if data is None else data, f"--config {path}")


def resolve_config(overrides: dict[str, Any] | None = None, config_file: str | Path | None = None,
                   base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (defaults) <- ``config_file`` <- ``overrides`` (explicit flags), validated."""
    values = (base or TrainConfig()).to_dict()
    if config_file is not None:
        values.update(read_config_file(config_file))
    values.update(normalise_keys(overrides or {}, "option"))
    return TrainConfig(**values).validate()


def _same_setting(name: str, given: Any, stored: Any) -> bool:
    # A patch size given as one side (``--patch-size 32``) is stored expanded ([32, 32]).
    if name == "patch_size" and isinstance(given, (list, tuple)) and isinstance(stored, (list, tuple)):
        if len(given) == 1 and len(stored) > 1:
            given = list(given) * len(stored)
        return list(given) == list(stored)
    return given == stored


def merge_for_resume(saved: dict[str, Any], given: TrainConfig, run: Path) -> TrainConfig:
    """The stored config of a run, with the changes a resume may make.

    A field of ``given`` that differs from its default is an explicit request: taken when in
    :data:`RESUMABLE_CHANGES`, refused (one line each) when it differs from the stored value.
    """
    # a run from before a default changed keeps what it was trained with
    saved = {**PREVIOUS_DEFAULTS, **saved}
    try:
        stored = TrainConfig.from_dict(saved, f"{run}/config.json train")
    except TypeError as e:
        raise UnetppError(f"{run}/config.json: invalid train section ({e})") from None
    changes: dict[str, Any] = {"resume": True, "out": given.out or stored.out}
    problems = []
    for name in FIELD_NAMES:
        if name in ("resume", "out", "extra"):
            continue
        value, default = getattr(given, name), getattr(DEFAULTS, name)
        if value == default:
            continue
        if name in RESUMABLE_CHANGES:
            changes[name] = value
        elif not _same_setting(name, value, getattr(stored, name)):
            problems.append(f"--{name.replace('_', '-')}: the run was started with "
                            f"{getattr(stored, name)!r}; a resumed run keeps its settings "
                            f"(start a new run to change it)")
    if problems:
        raise UnetppError(problems)
    return stored.replace(**changes).validate()
