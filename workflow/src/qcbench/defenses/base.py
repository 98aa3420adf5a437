from __future__ import annotations

from torch import nn

from qcbench._registry import Registry
from qcbench.data import Splits

DEFENSES = Registry("defense")
register_defense = DEFENSES.register


class Defense:
    """Base class: :meth:`run` returns the defended *quantized* model (same scheme as ``qmodel``)."""

    def __init__(self, **params) -> None:
        self.params = params

    def run(
        self, fp_model: nn.Module, qmodel: nn.Module, splits: Splits, *, seed: int, device
    ) -> nn.Module:  # pragma: no cover
        raise NotImplementedError


def create_defense(method: str, params: dict) -> Defense:
    defense = DEFENSES.create(method, **params)
    defense.name = method
    return defense
