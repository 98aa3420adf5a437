"""Model registry (timm-style): ``@register_model`` entry points and ``create_model``."""

from qcbench.models import alexnet, mobilenet, resnet, vgg, vit  # noqa: F401  (register the families)
from qcbench.models._registry import MODELS, create_model, register_model

__all__ = ["MODELS", "create_model", "register_model"]
