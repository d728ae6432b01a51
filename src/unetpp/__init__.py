"""unetpp: UNet++ for medical image segmentation, with deep supervision and real pruning.

The names below are imported on first use (PEP 562), so ``import unetpp`` (what napari does
to find the plugin manifest, and every command's start) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"ModelConfig": ".models", "count_parameters": ".models", "create_model": ".models",
         "list_models": ".models", "Ensemble": ".inference.ensemble", "load": ".inference.ensemble",
         "Predictor": ".inference.predictor"}

__all__ = ["Ensemble", "ModelConfig", "Predictor", "__version__", "count_parameters", "create_model", "list_models",
           "load"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unetpp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
