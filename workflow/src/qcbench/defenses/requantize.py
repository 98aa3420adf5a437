"""``requantize``: no defense, as a defense entry, for the no-defense row of another quantizer.

A defense entry may name a ``scheme`` (a registered scheme family): the defend stage then
quantizes the cell's FP model with that family at the cell's bit width, calibrated as the
quantize stage, and defends that model instead of the one in the attack's own scheme
(:func:`qcbench.stages.defend`). This is the deployer's side of the threat model: a practitioner
quantizes with the quantizer they deploy, not the one the attacker built against. An entry
``{method: requantize, scheme: mqbench_academic}`` is the no-defense cell of that quantizer, beside
``{<<: *lac, scheme: mqbench_academic}`` (LAC+PDA in the reference code's academic setting).
Without ``scheme`` it returns the cell's own no-defense model.
"""

from __future__ import annotations

from torch import nn

from qcbench.data import Splits
from qcbench.defenses.base import Defense, register_defense


@register_defense("requantize")
class Requantize(Defense):
    label = "no defense"

    def __init__(self) -> None:
        super().__init__()

    def run(self, fp_model: nn.Module, qmodel: nn.Module, splits: Splits, *, seed: int, device) -> nn.Module:
        return qmodel
