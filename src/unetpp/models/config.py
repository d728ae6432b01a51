"""The JSON-serialisable description of a model: all that rebuilds it, nothing that runs code.

A ``ModelConfig`` is what a run folder's ``config.json`` stores under ``"model"``. It is
validated before any tensor is allocated, so a tampered file with absurd sizes is refused
cheaply (see :meth:`ModelConfig.from_dict`).
"""

from __future__ import annotations

import reprlib
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .blocks import ACTS, NORMS, UPS
from .registry import arch_names, arch_spec
from .topology import patch_multiple

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

    ``strides`` and ``kernel_sizes`` describe an anisotropic network (see
    :func:`unetpp.models.topology.plan_topology`); ``None``, the default, is the isotropic
    network of the paper (pool 2 on every axis, 3x3[x3] kernels), so old ``config.json`` files
    without these keys build the same network:

    - ``strides``: per level i = 1..depth, the pooling factor per spatial axis (1 or 2), e.g.
      ``[[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]``; the transposed conv from row i back to
      row i-1 uses the same factors as its kernel and stride;
    - ``kernel_sizes``: per row i = 0..depth, the conv kernel per spatial axis (1 or 3), e.g.
      ``[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]``.

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
    strides: tuple[tuple[int, ...], ...] | None = None
    kernel_sizes: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        self.validate()
        for name in ("strides", "kernel_sizes"):  # JSON lists -> tuples: hashable, immutable
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(tuple(row) for row in value))

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

    @property
    def pool_strides(self) -> tuple[tuple[int, ...], ...]:
        """``strides`` with the default filled in: per level 1..depth, the factor per axis."""
        return self.strides or ((2,) * self.dims,) * self.depth

    @property
    def conv_kernels(self) -> tuple[tuple[int, ...], ...]:
        """``kernel_sizes`` with the default filled in: per row 0..depth, the kernel per axis."""
        return self.kernel_sizes or ((3,) * self.dims,) * (self.depth + 1)

    @property
    def pad_multiple(self) -> tuple[int, ...]:
        """Per axis, the product of the strides: inputs are padded to a multiple of it."""
        return patch_multiple(self.pool_strides)

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
        if not problems:  # the shapes below need a valid depth and dims
            problems += _grid_problems("strides", self.strides, self.depth, "level i = 1..depth",
                                       self.dims, (1, 2))
            problems += _grid_problems("kernel_sizes", self.kernel_sizes, self.depth + 1,
                                       "row i = 0..depth", self.dims, (1, 3))
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
        """JSON-ready fields; ``strides``/``kernel_sizes`` as lists of lists, and left out when
        ``None`` so that an isotropic config reads exactly as before they existed."""
        data = asdict(self)
        for name in ("strides", "kernel_sizes"):
            if data[name] is None:
                del data[name]
            else:
                data[name] = [list(row) for row in data[name]]
        return data

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


def _grid_problems(name: str, value: Any, rows: int, what: str, dims: int, allowed: tuple[int, ...]) -> list[str]:
    """``[]`` if ``value`` is None or ``rows`` lists of ``dims`` values in ``allowed``, else the
    one line that says what was expected (checked by length first: a huge list costs nothing)."""
    if value is None:
        return []
    ok = isinstance(value, (list, tuple)) and len(value) == rows and all(
        isinstance(row, (list, tuple)) and len(row) == dims and all(
            type(v) is int and v in allowed for v in row) for row in value)
    if ok:
        return []
    shown = reprlib.repr(value)  # bounded: a hostile list of a million rows prints six
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    choices = " or ".join(map(str, allowed))
    return [f"{name} must be null or {rows} lists (one per {what}) of {dims} values, each {choices}, "
            f"got {shown}"]
