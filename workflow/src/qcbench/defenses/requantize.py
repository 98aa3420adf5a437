"""``requantize``: no defense, as a defense entry, for the no-defense row of another quantizer.

A defense entry may name a ``scheme`` (a registered scheme family): the defend stage then
quantizes the cell's FP model with that family at the cell's bit width, calibrated as the
quantize stage, and defends that model instead of the one in the attack's own scheme
(:func:`qcbench.stages.defend`). This is the deployer's side of the threat model: a practitioner
quantizes with the quantizer they deploy, not the one the attacker built against. An entry
``{method: requantize, scheme: mqbench_academic}`` is the no-defense cell of that quantizer, beside
``{<<: *lac, scheme: mqbench_academic}`` (LAC+PDA in the reference code's academic setting).
Without ``scheme`` it returns the cell's own no-defense model.

Its row is the no-defense cell of its scheme: the DER of a defense entry naming ``scheme: S`` is
rated against the ``requantize`` row in S of the same cell, not against the attack's own-scheme
"none" row, so a scheme switch alone is not credited as a defense (:func:`qcbench.plan.der_reference`,
:func:`qcbench.stages.collate`).
"""

from __future__ import annotations

from torch import nn

from qcbench.data import Splits
from qcbench.defenses.base import Defense, register_defense


@register_defense("requantize")
class Requantize(Defense):
    label = "no defense"
    no_defense = True

    def __init__(self) -> None:
        super().__init__()

    def run(self, fp_model: nn.Module, qmodel: nn.Module, splits: Splits, *, seed: int, device) -> nn.Module:
        return qmodel
