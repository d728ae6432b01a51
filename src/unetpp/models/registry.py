"""One :class:`ArchSpec` per architecture: the one place an architecture's facts live.

Each network class registers itself with :func:`register_arch` (timm's pattern), so the
names, base filters, descriptions and deep-supervision support that the model config, the
training config, ``unetpp models`` and ``unetpp compare`` read all come from here.

Example:
    >>> from unetpp.models import arch_spec
    >>> spec = arch_spec("wide-unet")
    >>> spec.base_filters, spec.label, spec.deep_supervision
    (35, 'wide U-Net', False)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

T = TypeVar("T", bound=type[nn.Module])


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: its name (``--arch``), network class and defaults.

    Attributes:
        name: ``--arch`` value and ``config.json["model"]["arch"]``.
        cls: the ``nn.Module`` built from a :class:`~unetpp.models.config.ModelConfig`.
        base_filters: filters of row 0 (row ``i`` has ``base_filters * 2**i``).
        label: the name used in reports ("UNet++", "wide U-Net").
        description: one line for ``unetpp models``.
        deep_supervision: whether it can have a head on every level (UNet++ only).
    """

    name: str
    cls: type[nn.Module]
    base_filters: int
    label: str
    description: str
    deep_supervision: bool = False


_SPECS: dict[str, ArchSpec] = {}


def register_arch(name: str, *, base_filters: int, label: str, description: str,
                  deep_supervision: bool = False) -> Callable[[T], T]:
    """Class decorator: register ``cls`` as architecture ``name`` (stackable)."""

    def register(cls: T) -> T:
        if name in _SPECS and _SPECS[name].cls is not cls:
            raise ValueError(f"architecture {name!r} is registered twice")
        _SPECS[name] = ArchSpec(name, cls, base_filters, label, description, deep_supervision)
        return cls

    return register


def arch_names() -> tuple[str, ...]:
    """Every registered ``--arch`` name, in registration order."""
    return tuple(_SPECS)


def arch_spec(name: str) -> ArchSpec:
    """The spec of ``name``; ValueError naming the known architectures otherwise."""
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown arch {name!r}; choose one of {', '.join(_SPECS)}") from None


def check_deep_supervision(arch: str, deep_supervision: bool | None, option: str = "deep supervision"
                           ) -> str | None:
    """The one rule "deep supervision needs an architecture with a head per level": a
    problem line, or None when ``deep_supervision`` is allowed for ``arch``."""
    if deep_supervision and arch in _SPECS and not _SPECS[arch].deep_supervision:
        able = ", ".join(repr(n) for n, s in _SPECS.items() if s.deep_supervision)
        return f"{option} needs arch {able}, got {arch!r}"
    return None


__all__ = ["ArchSpec", "arch_names", "arch_spec", "check_deep_supervision", "register_arch"]
