"""Attack registry. An attack turns a clean FP model (or nothing) into a backdoored FP model and
declares the quantization scheme family it targets."""

from qcbench.attacks import adaptive, badnets, clean_qat, compartifact, pqbackdoor, qu_anti_zation  # noqa: F401  (registers)
from qcbench.attacks.base import (
    ATTACKS,
    Attack,
    cell_bits,
    create_attack,
    declared_scheme,
    init_source,
    register_attack,
)

__all__ = ["ATTACKS", "Attack", "cell_bits", "create_attack", "declared_scheme", "init_source", "register_attack"]
