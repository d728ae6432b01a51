"""unetpp: UNet++ for medical image segmentation, with deep supervision and real pruning."""

from __future__ import annotations

__version__ = "0.1.0"

from .models import ModelConfig, count_parameters, create_model, list_models  # noqa: E402
from .inference.ensemble import Ensemble, load  # noqa: E402
from .inference.predictor import Predictor  # noqa: E402

__all__ = ["Ensemble", "ModelConfig", "Predictor", "__version__", "count_parameters", "create_model", "list_models",
           "load"]
