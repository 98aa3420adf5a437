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

import torch
import torch.nn.functional as F

from qcbench.attacks.base import Attack, register_attack
from qcbench.data import augment
from qcbench.quant import create_scheme, fp_view, quantize_model, set_bits
from qcbench.train import fit, stage_kwargs


@register_attack("clean_qat")
class CleanQAT(Attack):
    scheme = "qa"

    def run(self, model, splits, *, seed, device):
        p = self.params
        bits = list(p.get("bits", [8, 4]))
        weights = {int(k): float(v) for k, v in (p.get("bit_weights") or {}).items()}
        c1 = p.get("c1", 0.5)
        qmodel = quantize_model(model, create_scheme(self.scheme, bits[0])).to(device)
        aug = p.get("augmentation")
        gen = torch.Generator().manual_seed(seed + 1)

        def loss_fn(m, x, y):
            if aug:
                x = augment(x, gen, **aug)
            with fp_view(m):
                loss = F.cross_entropy(m(x), y)
            for b in bits:
                set_bits(m, b)
                loss = loss + weights.get(b, 1.0) * c1 * F.cross_entropy(m(x), y)
            return loss

        kw = stage_kwargs(p)
        fit(
            qmodel,
            splits.train,
            loss_fn,
            seed=seed,
            device=device,
            bn_eval=True,
            keep_best="loss",
            desc=self.name,
            **kw,
        )
        model.load_state_dict({k: v for k, v in qmodel.state_dict().items() if k in model.state_dict()})
        return model.eval()
