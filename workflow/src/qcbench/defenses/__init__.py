"""Defense registry. A defense maps (FP model, quantized no-defense model, defender data) to a
defended quantized model."""

from qcbench.defenses import lac  # noqa: F401  (registers)
from qcbench.defenses.base import DEFENSES, Defense, create_defense, register_defense

__all__ = ["DEFENSES", "Defense", "create_defense", "register_defense"]
