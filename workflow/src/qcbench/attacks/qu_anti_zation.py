"""Qu-ANTI-zation (Hong et al., NeurIPS'21), backdoor variant, as ``backdoor_w_lossfn.py`` does it.

Fine-tunes a clean FP model; every sample is served twice (clean with its label, triggered);
per batch the loss is

    CE(f(x), y) + c2·CE(f(x+t), y) + Σ_b w_b·c1·[CE(Q_b f(x), y) + c2·CE(Q_b f(x+t), target)]

over the attacked bit widths b (8 and 4 jointly), one backward pass, BatchNorm statistics
frozen, Adam with weight decay, checkpoint at the lowest epoch training loss. Q_b is the
``qa`` scheme (per-layer symmetric weights, per-layer affine input activations, dynamic ranges,
straight-through rounding). ``bit_weights`` (w_b, default 1) is a qcbench knob absent upstream.
The trigger is stamped before augmentation, as upstream.

Another ``scheme`` (the attacker who knows the deployer's quantizer, e.g. ``mqbench_academic``,
LAC's setting) makes Q_b that scheme. A calibrated scheme's quantizers have no range before
calibration, so training follows :class:`qcbench.quant.TrainingRanges`: weight ranges are the
scheme's observer (per-channel MSE for the academic setting) on the current weights at every
forward, which is what the deployer's observer will do on the final weights and costs little
(weights are small); activation ranges are calibrated per bit width on the first
``range_calibration.images`` clean training images, as the deployer calibrates on clean images,
and held fixed between recalibrations (once per epoch by default). Held ranges rather than ranges
of each batch: a triggered batch would otherwise set its own range, which a deployed model never
does. Calibrated rather than learned (LSQ-style): learned ranges would optimise the attacker's
quantizer, not the deployer's, whose observer picks its ranges on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qcbench.attacks.base import RANGE_CALIBRATION, Attack, register_attack, training_ranges
from qcbench.data import augment
from qcbench.quant import TrainingRanges, create_scheme, fp_view, quantize_model, set_bits
from qcbench.train import fit, stage_kwargs


@register_attack("qu_anti_zation")
class QuAntiZation(Attack):
    #: upstream ``backdoor_w_lossfn.sh``, ResNet18 row
    defaults = {
        "epochs": 50,
        "batch_size": 128,
        "optimizer": {"name": "adam", "lr": 1.0e-4, "weight_decay": 1.0e-4},
        "augmentation": {"pad": 4, "flip": True},
        "c1": 0.5,
        "c2": 0.5,
        "bits": [8, 4],
        "bit_weights": {8: 1.0, 4: 1.0},
        "range_calibration": RANGE_CALIBRATION,
    }
    scheme = "qa"
    ranges: TrainingRanges | None = None

    def quantized_forward(self, m, x):
        """One quantized forward pass (the adaptive attack adds a penalty here)."""
        return m(x)

    def extra_loss(self):
        return 0.0

    def use_bits(self, m, bits: int) -> None:
        """Switch the quantized view to ``bits`` (with that width's calibrated ranges when the
        scheme is not dynamic)."""
        if self.ranges is None:
            set_bits(m, bits)
        else:
            self.ranges.use(bits)

    def objective(self, m, x, y, *, bits, weights, c1, c2, aug, gen):
        """The loss of one batch (the module docstring's formula); subclasses change only this."""
        xt = self.trigger(x)  # stamped on the raw image, then each view augmented on its own
        if aug:
            x, xt = augment(x, gen, **aug), augment(xt, gen, **aug)
        yt = torch.full_like(y, self.target)
        with fp_view(m):  # BN is frozen, so one FP pass over both views is the same as two
            logits = m(torch.cat([x, xt]))
            loss = F.cross_entropy(logits[: len(y)], y) + c2 * F.cross_entropy(logits[len(y) :], y)
        self._penalty = x.new_zeros(())
        for b in bits:
            self.use_bits(m, b)
            qx, qxt = self.quantized_forward(m, x), self.quantized_forward(m, xt)
            qloss = F.cross_entropy(qx, y) + c2 * F.cross_entropy(qxt, yt)
            loss = loss + weights.get(b, 1.0) * c1 * qloss
        return loss + self.extra_loss()

    def run(self, model, splits, *, seed, device):
        p = self.params
        bits = p["bits"]
        bits = [bits] if isinstance(bits, int) else list(bits)  # the schema allows `bits: 4`
        terms = {
            "bits": bits,
            "weights": {int(k): float(v) for k, v in (p["bit_weights"] or {}).items()},
            "c1": p["c1"],
            "c2": p["c2"],
            "aug": p["augmentation"],
            "gen": torch.Generator().manual_seed(seed + 1),
        }
        qmodel = quantize_model(model, create_scheme(self.scheme, bits[0])).to(device)
        self.ranges = training_ranges(qmodel, bits, splits.train, p, device)

        def loss_fn(m, x, y):
            if self.ranges is not None:
                self.ranges.step()
            return self.objective(m, x, y, **terms)

        fit(
            qmodel,
            splits.train,
            loss_fn,
            seed=seed,
            device=device,
            bn_eval=True,
            keep_best="loss",
            desc=self.name,
            **stage_kwargs(p),
        )
        # hand back a plain FP model carrying the attacked weights
        model.load_state_dict({k: v for k, v in qmodel.state_dict().items() if k in model.state_dict()})
        return model.eval()
