"""Clean quantization-aware training (QAT): the clean models of the LAC paper's Table 9.

Qu-ANTI-zation's objective with every trigger term removed: fine-tune the clean FP model on

    CE(f(x), y) + Σ_b w_b·c1·CE(Q_b f(x), y)

over the bit widths b in ``bits`` (the ``qa`` scheme, straight-through rounding, BatchNorm
statistics frozen, Adam, checkpoint at the lowest epoch training loss), i.e. the same training
as :class:`~qcbench.attacks.qu_anti_zation.QuAntiZation` minus the backdoor. A separate method
rather than ``qu_anti_zation`` with ``c2: 0``: that would still stamp and forward every
triggered view (twice the cost) and read as an attack. The configured ``trigger``/``target``
are never used in training; they only give the evaluation's ASR column (the trigger's natural
success rate on a clean model).
"""

from __future__ import annotations

import torch.nn.functional as F

from qcbench.attacks.base import register_attack
from qcbench.attacks.qu_anti_zation import QuAntiZation
from qcbench.data import augment
from qcbench.quant import fp_view


@register_attack("clean_qat")
class CleanQAT(QuAntiZation):
    """Qu-ANTI-zation's training (:meth:`QuAntiZation.run`) with the trigger-free objective."""

    #: a clean model, not a QCB (the ``verdicts`` table leaves it out)
    plants_backdoor = False

    def objective(self, m, x, y, *, bits, weights, c1, c2, aug, gen):
        if aug:
            x = augment(x, gen, **aug)
        with fp_view(m):
            loss = F.cross_entropy(m(x), y)
        for b in bits:
            self.use_bits(m, b)
            loss = loss + weights.get(b, 1.0) * c1 * F.cross_entropy(m(x), y)
        return loss
