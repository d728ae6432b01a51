"""The JSON-serialisable description of a model: all that rebuilds it, nothing that runs code.

A ``ModelConfig`` is what a run folder's ``config.json`` stores under ``"model"``. It is
validated before any tensor is allocated, so a tampered file with absurd sizes is refused
cheaply (see :meth:`ModelConfig.from_dict`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .blocks import ACTS, NORMS, UPS
from .registry import arch_names, arch_spec

PRESETS = ("paper", "modern")

# Limits that keep a hostile config from allocating gigabytes before we can say no.
MAX_DEPTH = 6
MAX_BASE_FILTERS = 256
MAX_CHANNELS = 64
MAX_CLASSES = 256

#: What each preset sets. ``paper``: the DLMIA 2018 network exactly (3x3 conv with bias +
#: ReLU, no normalisation, transposed-conv upsampling). ``modern``: nnU-Net's choices,
#: instance norm + leaky ReLU, which train stably from scratch at the small batch sizes that
#: 3D patches force, with the paper's transposed-conv upsampling kept.
PRESET_SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {"norm": "none", "act": "relu", "up": "transpose"},
    "modern": {"norm": "instance", "act": "leaky_relu", "up": "transpose"},
}

@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a network's structure.

    Example:
        >>> cfg = ModelConfig.from_preset("unetpp", "paper", dims=2)
        >>> cfg.filters
        (32, 64, 128, 256, 512)
    """

    arch: str = "unetpp"
    dims: int = 2
    in_channels: int = 1
    classes: int = 1
    depth: int = 4
    base_filters: int = 32
    norm: str = "none"
    act: str = "relu"
    up: str = "transpose"
    deep_supervision: bool = True
    preset: str = "paper"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def filters(self) -> tuple[int, ...]:
        """Filters per row i: ``k_i = base_filters * 2**i`` for i = 0..depth."""
        return tuple(self.base_filters * 2**i for i in range(self.depth + 1))

    @property
    def levels(self) -> tuple[int, ...]:
        """Levels that have an output head (1..depth with deep supervision, else depth)."""
        if self.deep_supervision and arch_spec(self.arch).deep_supervision:
            return tuple(range(1, self.depth + 1))
        return (self.depth,)

    def validate(self) -> None:
        problems = []

        def bad_int(name: str, value: Any, lo: int, hi: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                problems.append(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")

        if self.arch not in arch_names():
            problems.append(f"arch must be one of {', '.join(arch_names())}, got {self.arch!r}")
        if self.dims not in (2, 3) or isinstance(self.dims, bool):
            problems.append(f"dims must be 2 or 3, got {self.dims!r}")
        bad_int("in_channels", self.in_channels, 1, MAX_CHANNELS)
        bad_int("classes", self.classes, 1, MAX_CLASSES)
        bad_int("depth", self.depth, 1, MAX_DEPTH)
        bad_int("base_filters", self.base_filters, 1, MAX_BASE_FILTERS)
        if self.norm not in NORMS:
            problems.append(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.act not in ACTS:
            problems.append(f"act must be one of {', '.join(ACTS)}, got {self.act!r}")
        if self.up not in UPS:
            problems.append(f"up must be one of {', '.join(UPS)}, got {self.up!r}")
        if not isinstance(self.deep_supervision, bool):
            problems.append(f"deep_supervision must be true or false, got {self.deep_supervision!r}")
        if self.preset not in PRESETS + ("custom",):
            problems.append(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_preset(cls, arch: str = "unetpp", preset: str = "paper", **overrides: Any) -> "ModelConfig":
        """The config of ``arch`` under ``preset``; keyword arguments override any field."""
        if preset not in PRESET_SETTINGS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        if arch not in arch_names():
            raise ValueError(f"arch must be one of {', '.join(arch_names())}, got {arch!r}")
        spec = arch_spec(arch)
        values: dict[str, Any] = dict(arch=arch, preset=preset, base_filters=spec.base_filters,
                                      deep_supervision=spec.deep_supervision)
        values.update(PRESET_SETTINGS[preset])
        values.update(overrides)
        if not spec.deep_supervision:
            values["deep_supervision"] = False
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "ModelConfig":
        """Build from JSON data, refusing unknown keys and out-of-range values."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelConfig":
        return replace(self, **changes)
