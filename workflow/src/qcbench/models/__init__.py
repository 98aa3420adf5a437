"""Model registry (timm-style): ``@register_model`` entry points and ``create_model``."""

from qcbench._registry import import_submodules
from qcbench.models._registry import MODELS, create_model, register_model

import_submodules(__name__, __path__)  # every module registers its entries

__all__ = ["MODELS", "create_model", "register_model"]
