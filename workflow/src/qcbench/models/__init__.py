"""Model registry (timm-style): ``@register_model`` entry points and ``create_model``."""

from qcbench.models import resnet  # noqa: F401  (registers the ResNet family)
from qcbench.models._registry import MODELS, create_model, register_model

__all__ = ["MODELS", "create_model", "register_model"]
