"""Defense registry. A defense maps (FP model, quantized no-defense model, defender data) to a
defended quantized model."""

from qcbench._registry import import_submodules
from qcbench.defenses.base import (
    DEFENSES,
    Defense,
    FPDefense,
    create_defense,
    is_fp_defense,
    is_no_defense,
    register_defense,
)
from qcbench.defenses.layerwise import LayerwiseDefense

import_submodules(__name__, __path__)  # every module registers its entries

__all__ = [
    "DEFENSES",
    "Defense",
    "FPDefense",
    "LayerwiseDefense",
    "create_defense",
    "is_fp_defense",
    "is_no_defense",
    "register_defense",
]
