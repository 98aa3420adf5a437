"""Attack registry. An attack turns a clean FP model (or nothing) into a backdoored FP model and
declares the quantization scheme family it targets."""

from qcbench._registry import import_submodules
from qcbench.attacks.base import (
    ATTACKS,
    Attack,
    cell_bits,
    create_attack,
    declared_scheme,
    init_source,
    register_attack,
)

import_submodules(__name__, __path__)  # every module registers its entries

__all__ = ["ATTACKS", "Attack", "cell_bits", "create_attack", "declared_scheme", "init_source", "register_attack"]
