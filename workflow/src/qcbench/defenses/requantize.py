"""``requantize``: no defense, as a defense entry, for the no-defense row of another quantizer.

A defense entry may name a ``scheme`` (a registered scheme family, or ``attacker``: the scheme
the cell's attack is built against): the defend stage then quantizes the cell's FP model with
that family at the cell's bit width, calibrated as the quantize stage, and defends that model
instead of the cell's own (:func:`qcbench.stages.defend`, :func:`qcbench.cells.scheme_name`).
The cells are otherwise in the deployer's quantizer (``quant.deployer_scheme``); an entry
``{method: requantize, scheme: attacker}`` is the no-defense cell of the attacker's quantizer,
beside ``{method: lac, scheme: attacker}`` (LAC+PDA there). Without ``scheme`` it returns the
cell's own no-defense model.

Its row is the no-defense cell of its scheme: the DER of a defense entry naming ``scheme: S`` is
rated against the ``requantize`` row in S of the same cell, not against the ``none`` row, so a
scheme switch alone is not credited as a defense (:func:`qcbench.plan.der_reference`,
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
