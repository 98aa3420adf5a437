"""Defense registry. A defense maps (FP model, quantized no-defense model, defender data) to a
defended quantized model."""

from qcbench.defenses import efrap, fine_pruning, ft, ftsam, ibau, lac, mcr, nad, pda_plugin, requantize  # noqa: F401  (registers)
from qcbench.defenses.base import DEFENSES, Defense, FPDefense, create_defense, is_fp_defense, register_defense
from qcbench.defenses.layerwise import LayerwiseDefense

__all__ = [
    "DEFENSES",
    "Defense",
    "FPDefense",
    "LayerwiseDefense",
    "create_defense",
    "is_fp_defense",
    "register_defense",
]
