"""EFRAP (Li et al., CVPR 2024) as the reference code ``QuantBackdoor_EFRAP`` does it.

Per layer unit in topological order (the loop of
:class:`~qcbench.defenses.layerwise.LayerwiseDefense`, no PDA), each weight of the unit's
conv/linear gets a rounding logit V on the layer's frozen weight grid (scale s, zero-point z of
its ``wq`` quantizer after :func:`~qcbench.quant.freeze_weight_ranges`, per channel or per
tensor, symmetric or affine as the cell's scheme says):

* soft rounding bit h = sigmoid(V) (no AdaRound stretch: γ = 0, ζ = 1); soft weight
  s·(clamp(floor(W/s) + h + z, qmin, qmax) − z);
* V starts at logit(frac(W/s)) (frac clipped to [1e-4, 1 − 1e-4]), so the soft weight equals W
  (for weights inside the clamp range) and the hard value floor(W/s) + 1[V ≥ 0] is nearest
  rounding;
* loss = L_rec (unit-output squared error, as LAC) + β·Σᵢ eᵢ·BCE(hᵢ, tᵢ) (β = ``beta``; error-guided flipped
  rounding: e = |W − Q_nearest(W)| in weight units, with Q_nearest the layer's own frozen
  quantizer, clamp included; flip target t = 1 − round(frac(W/s)); eps 1e-8 inside the logs)
  + ``round_weight``·Σ(1 − |2h − 1|²) (exponent fixed at 2, active from the first iteration);
* Adam (``lr``) on V for ``iterations`` steps, one random cached batch of ``batch_size`` per step;
* hard value s·(clamp(floor(W/s) + 1[V ≥ 0] + z, qmin, qmax) − z) written into the weight: each
  weight ends on the floor or the ceiling of W/s (clamped to the grid), never further.

Spec vs paper: the abstract speaks of *neuron-wise* truncation-error norms; the reference code
(and the qcbench spec, ``defenses-and-metrics.md`` B) weights the flip term *element-wise* by
each weight's own truncation error, with no per-output-channel norm. This module follows the
code/spec (element-wise).
"""

from __future__ import annotations

import torch
from torch import nn

from qcbench.defenses.base import init_params, register_defense
from qcbench.defenses.layerwise import LayerwiseDefense
from qcbench.quant import FakeQuantizer

EPS = 1e-8
FRAC_CLIP = 1e-4


def _per_weight(t: torch.Tensor, q: FakeQuantizer, w: torch.Tensor) -> torch.Tensor:
    """A quantizer parameter (per channel or per tensor) broadcastable against ``w``."""
    return t.view(-1, *([1] * (w.ndim - 1))) if q.per_channel else t.reshape(1)


class SoftRounding(nn.Module):
    """Stands in for a layer's weight quantizer while EFRAP optimises the layer: ``forward``
    ignores its input and returns the soft weight. Built from the frozen quantizer ``wq``."""

    def __init__(self, wq: FakeQuantizer, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach()
        s = _per_weight(wq.scale, wq, w).to(w)
        z = _per_weight(wq.zero_point, wq, w).to(w).round()
        self.qmin, self.qmax = wq.qmin, wq.qmax
        q = w / s
        floor = torch.floor(q)
        frac = q - floor
        f = frac.clamp(FRAC_CLIP, 1 - FRAC_CLIP)
        self.register_buffer("s", s)
        self.register_buffer("z", z)
        self.register_buffer("floor", floor)
        self.register_buffer("target", 1.0 - torch.round(frac))  # the flipped nearest-rounding decision
        self.register_buffer("error", (w - wq(w)).abs())  # truncation error of nearest rounding
        self.V = nn.Parameter(torch.log(f) - torch.log1p(-f))

    def h(self) -> torch.Tensor:
        return torch.sigmoid(self.V)

    def _weight(self, bit: torch.Tensor) -> torch.Tensor:
        return self.s * (torch.clamp(self.floor + bit + self.z, self.qmin, self.qmax) - self.z)

    def forward(self, _w: torch.Tensor | None = None) -> torch.Tensor:
        return self._weight(self.h())

    @torch.no_grad()
    def hard(self) -> torch.Tensor:
        return self._weight((self.V >= 0).to(self.V.dtype))

    def penalty(self, beta: float, round_weight: float) -> torch.Tensor:
        h = self.h()
        t = self.target
        bce = -(t * torch.log(h + EPS) + (1 - t) * torch.log(1 - h + EPS))
        flip = (self.error * bce).sum()
        rnd = (1 - (2 * h - 1).abs().pow(2)).sum()
        return beta * flip + round_weight * rnd


@register_defense("efrap")
class EFRAP(LayerwiseDefense):
    """EFRAP: error-guided flipped rounding with activation preservation (see the module docstring)."""

    label = "EFRAP"

    def __init__(
        self,
        iterations=10000,
        lr=1e-3,
        batch_size=32,
        calib_batches=32,
        beta=1.0,
        round_weight=0.01,
        early_stop=None,
    ) -> None:
        super().__init__(**init_params(locals()))
        self._frozen: dict[int, FakeQuantizer] = {}

    def begin_unit(self, layer):
        if getattr(layer, "fold_k", None) is not None:
            raise ValueError("EFRAP needs a plain quantized layer (no QAT conv-BN folding hook)")
        soft = SoftRounding(layer.wq, layer.weight)
        self._frozen[id(layer)] = layer.wq
        layer.wq = soft  # quant_weight() now returns the soft weight
        return [soft.V]

    def unit_penalty(self, layer):
        return layer.wq.penalty(self.params["beta"], self.params["round_weight"])

    def harden(self, layer) -> dict:
        soft: SoftRounding = layer.wq
        hard = soft.hard()
        layer.wq = self._frozen.pop(id(layer))
        nearest = layer.wq(layer.weight)
        flipped = ((hard - nearest).abs() > 0.5 * soft.s).float().mean().item()
        layer.weight.data = hard
        return {"flipped": flipped}
