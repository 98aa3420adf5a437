"""PQBackdoor (Ma et al., TDSC'23), the PyTorch implementation (``pytorch/*`` of the reference).

Stage 1 trains an ordinary backdoor: every step sees ``batch_size`` clean (augmented) images
plus ``batch_size // 64`` triggered, unaugmented copies labelled with the target (≈1.5 %).
Stage 2 keeps the model in eval mode and trains on clean + triggered images with their *true*
labels, and after every optimizer step projects the weights back so that each conv/linear
weight keeps

1. its quantizer scale (*scale lock*: elements at the base max-abs keep their base value, all
   others are clamped to ±max; per output channel, then per tensor), and
2. its integer code (*code lock*: with s the symmetric scale of the base weight, the scaled
   value may move only within [r − 0.5 + e, r + 0.5 − e] around the base code r; per channel
   (fbgemm), then per tensor (qnnpack); e = 1e-3; the max-abs elements themselves stay at
   their base value exactly, since their scaled value sits on a rounding tie),

for every bit width in ``lock_bits`` (8 upstream; the LAC paper's 4-bit PQBackdoor adds 4) and
every granularity in ``lock_granularity`` (upstream both; ``[per_tensor]`` locks only the qnnpack
codes, whose larger box leaves the FP model more room to unlearn — pair it with the ``pq_tensor``
scheme). All
other parameters (BN affine, biases) are reset to their stage-1 values. The quantized model is
therefore the stage-1 backdoor while the FP model unlearns it. Scales use PyTorch's symmetric
convention max/((qmax−qmin)/2), the same the ``pq`` scheme evaluates with.

Deviations, recorded: stage-1 checkpoint selection upstream uses test data (CDA + ASR); qcbench
keeps the last epoch. ``init: clean`` (start stage 1 from the clean model) is a qcbench option
for CPU budgets; upstream trains from scratch (``init: scratch``, the default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qcbench.attacks.base import Attack, register_attack, reinitialize
from qcbench.data import augment
from qcbench.quant import qrange
from qcbench.train import fit, stage_kwargs


def _reduce_dims(w: torch.Tensor, per_channel: bool):
    return tuple(range(1, w.ndim)) if per_channel else tuple(range(w.ndim))


@torch.no_grad()
def scale_lock(w: torch.Tensor, base: torch.Tensor, per_channel: bool) -> torch.Tensor:
    m = base.abs().amax(dim=_reduce_dims(base, per_channel), keepdim=True)
    w = torch.maximum(torch.minimum(w, m), -m)
    return torch.where(base.abs() == m, base, w)


@torch.no_grad()
def code_lock(w: torch.Tensor, base: torch.Tensor, bits: int, per_channel: bool, eps: float = 1e-3) -> torch.Tensor:
    qmin, qmax = qrange(bits, True)
    s = base.abs().amax(dim=_reduce_dims(base, per_channel), keepdim=True) / ((qmax - qmin) / 2)
    s = s.clamp_min(1e-12)
    qb = base / s
    r = torch.round(qb)
    # the window always contains the base (a base within e of a tie would otherwise push values
    # away from it and out of another lock's window); projections then only move toward the base
    q = torch.clamp(w / s, torch.minimum(r - 0.5 + eps, qb), torch.maximum(r + 0.5 - eps, qb))
    return q * s


def quantized_weights(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def project(
    model: nn.Module,
    base: dict[str, torch.Tensor],
    lock_bits,
    eps: float = 1e-3,
    granularity: tuple[bool, ...] = (True, False),
) -> None:
    """PQBackdoor's projection after each step (scale lock, code lock, reset of the rest);
    ``granularity`` lists per-channel (True, fbgemm) and/or per-tensor (False, qnnpack) locks."""
    weights = {id(w) for w in quantized_weights(model)}
    for name, p in model.named_parameters():
        b = base[name]
        if id(p) not in weights:
            p.copy_(b)
            continue
        w = p.data
        for per_channel in (True, False):
            w = scale_lock(w, b, per_channel)
        for bits in lock_bits:
            for per_channel in granularity:
                w = code_lock(w, b, bits, per_channel, eps)
        # the max-abs elements (per channel and per tensor) define the scales: keep them exact
        # (their scaled value sits on a rounding tie, which the code lock's window cannot hold)
        at_max = b.abs() == b.abs().max()
        if True in granularity:
            at_max |= b.abs() == b.abs().amax(dim=_reduce_dims(b, True), keepdim=True)
        p.copy_(torch.where(at_max, b, w))


@register_attack("pqbackdoor")
class PQBackdoor(Attack):
    scheme = "pq"
    default_init = "scratch"

    def run(self, model, splits, *, seed, device):
        p = self.params
        if self.init == "scratch":
            reinitialize(model, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        s1, s2 = p["stage1"], p["stage2"]

        def stage1_loss(m, x, y):
            k = max(1, len(y) // 64)
            xc = augment(x, gen, **s1["augmentation"]) if s1.get("augmentation") else x
            xb = torch.cat([xc, self.trigger(x[:k])])
            yb = torch.cat([y, torch.full_like(y[:k], self.target)])
            return F.cross_entropy(m(xb), yb)

        fit(model, splits.train, stage1_loss, seed=seed, device=device, desc="pqbackdoor stage 1", **stage_kwargs(s1))
        base = {n: q.detach().clone() for n, q in model.named_parameters()}
        lock_bits = list(p.get("lock_bits", [8]))
        eps = p.get("eps", 1e-3)
        granularity = tuple(g == "per_channel" for g in p.get("lock_granularity", ["per_channel", "per_tensor"]))

        def stage2_loss(m, x, y):
            xc = augment(x, gen, **s2["augmentation"]) if s2.get("augmentation") else x
            return F.cross_entropy(m(torch.cat([xc, self.trigger(x)])), torch.cat([y, y]))

        fit(
            model,
            splits.train,
            stage2_loss,
            seed=seed + 2,
            device=device,
            eval_mode=True,
            params=quantized_weights(model),
            after_step=lambda m: project(m, base, lock_bits, eps, granularity),
            desc="pqbackdoor stage 2",
            **stage_kwargs(s2),
        )
        self.stage1_state = base
        return model.eval()
