"""LAC + PDA (Li et al., ICML 2024) as the reference code ``QCB-LACPDA`` does it.

Per layer unit in topological order:

1. targets: the unit's output in the FP model (same network, quantization off) on clean
   calibration images; inputs: the quantized model's activation at the unit's input, with all
   earlier units already hardened;
2. PDA (only if the unit contains a BatchNorm2d; none does under the ``ca`` scheme, which folds BN
   into the weights, so CompArtifact cells get LAC alone): each cached input batch — already
   quantized, as the unit's input in MQBench — is moved by signed steps
   that lower D = Σ_BN [‖μ_run − μ‖² + ‖σ_run − σ‖²] / B (per-sample, per-channel spatial
   statistics of each BN's input vs. its running statistics; σ² the unbiased variance over the
   H·W positions, as ``torch.var``'s default; σ_run = √(running_var + 1e-6)), staying within γ of
   the start in L∞ (γ = ``gamma``; ``pda_iterations`` steps of ``pda_alpha``, the step halved at
   each of the fixed iterations :data:`PDA_HALVINGS`, so 500 steps take 250 of α and 250 of α/2
   and fewer than 251 are never halved; no clamp, no re-quantization). Upstream:
   ``GetDcFpLayerInpOut.__call__`` in ``mqbench/advanced_ptq.py`` (``torch.var`` without
   ``unbiased``, ``scheduler = [250, 500, 1000, 2000, 3000, 4000]`` with ``alpha /= 2`` before the
   step of each listed iteration);
3. a free additive offset α per weight (weight units, unbounded, zero-initialised) inside the
   frozen weight quantizer, trained with Adam to minimise the unit-output squared error (the
   output through the next layer's input quantizer where one directly follows, as in MQBench;
   summed over channels, averaged over batch and positions) on one random cached batch per
   iteration; no rounding regularizer;
4. the hard value Q(W + α) is written into the weight.

Activation scales stay as calibrated (upstream hands them to an optimizer but they get no
gradient). qcbench's addition, off unless configured: ``early_stop`` ends a unit's optimisation
when the loss, averaged over windows of ``window`` iterations, improves by less than ``rel_tol``.
The unit loop, the early stop and the per-unit log (``self.log``) live in
:class:`~qcbench.defenses.layerwise.LayerwiseDefense`.
"""

from __future__ import annotations

import torch

from qcbench.defenses.base import init_params, register_defense
from qcbench.defenses.layerwise import LayerwiseDefense, unit_loss
from qcbench.defenses.units import Unit


def bn2d_of(model, unit: Unit) -> list[str]:
    """The unit's BatchNorm2d layers: PDA's statistics are spatial (a BatchNorm1d unit has none)."""
    return [n for n in unit.bns if isinstance(model.get_submodule(n), torch.nn.BatchNorm2d)]


#: the PDA iterations at which the step size halves (upstream's ``scheduler``), each time anew
PDA_HALVINGS = (250, 500, 1000, 2000, 3000, 4000)


def pda_step(alpha: float, it: int) -> float:
    """PDA's step size at iteration ``it`` (from 0): ``alpha`` halved once per milestone of
    :data:`PDA_HALVINGS` reached, the milestone's own step included."""
    return alpha * 0.5 ** sum(it >= m for m in PDA_HALVINGS)


def bn_stat_distance(model, unit: Unit, x: torch.Tensor) -> torch.Tensor:
    """PDA's D for one unit and one batch, from hooks on each BN's input.

    The variance is the unbiased one (``torch.var(dim=(2, 3))``'s default, as upstream), taken in
    two passes (sum of squared deviations / (H·W − 1)): the same value to float rounding, but
    its forward is ~10x faster on one CPU thread (2.8 vs 0.28 ms for a 32 x 16 x 28 x 28 batch;
    with the backward 3.2 vs 3.0 ms). On a 1 x 1 map, where ``torch.var`` gives NaN, it is 0.
    Stacking the cached batches into one forward is no faster: on one CPU
    thread no faster up to 256 samples, 0.7x at 1,024, and where a gradient is within rounding of
    zero its sign (PDA's step) then differs."""
    feats = []
    bns = bn2d_of(model, unit)
    handles = [model.get_submodule(n).register_forward_pre_hook(lambda _m, a: feats.append(a[0])) for n in bns]
    try:
        unit.forward(model, x)
    finally:
        for h in handles:
            h.remove()
    d = x.new_zeros(())
    for name, f in zip(bns, feats):
        bn = model.get_submodule(name)
        mu = f.mean(dim=(2, 3), keepdim=True)
        dof = max(f.shape[2] * f.shape[3] - 1, 1)
        sigma = ((f - mu).square().sum(dim=(2, 3)) / dof + 1e-6).sqrt()
        d = (
            d
            + (bn.running_mean - mu.flatten(1)).square().sum()
            + ((bn.running_var + 1e-6).sqrt() - sigma).square().sum()
        )
    return d / x.shape[0]


def pda(model, unit: Unit, x0: torch.Tensor, iterations: int, gamma: float, alpha: float) -> torch.Tensor:
    """Poisoned-distribution approximation of one cached input batch: ``iterations`` signed steps
    of :func:`pda_step` down D, each projected back within ``gamma`` of ``x0`` (L∞)."""
    x = x0.clone()
    for it in range(iterations):
        step = pda_step(alpha, it)
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(bn_stat_distance(model, unit, x), x)
        with torch.no_grad():
            x = x0 + torch.clamp(x - step * grad.sign() - x0, -gamma, gamma)
    return x.detach()


def _unit_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return unit_loss(pred, target)


@register_defense("lac")
class LAC(LayerwiseDefense):
    """LAC (+ PDA when ``pda``): a free additive offset per weight inside the frozen quantizer."""

    label = "LAC+PDA (ours)"
    label_without_pda = "LAC"

    def __init__(
        self,
        iterations=10000,
        lr=1e-3,
        batch_size=32,
        calib_batches=32,
        pda=True,
        pda_iterations=500,
        gamma=1e-3,
        pda_alpha=1e-3,
        early_stop=None,
    ) -> None:
        super().__init__(**init_params(locals()))

    def prepare_inputs(self, qmodel, unit: Unit, inputs):
        p = self.params
        if p["pda"] and bn2d_of(qmodel, unit):
            return [pda(qmodel, unit, x, p["pda_iterations"], p["gamma"], p["pda_alpha"]) for x in inputs]
        return inputs

    def begin_unit(self, layer):
        layer.weight_offset = torch.nn.Parameter(torch.zeros_like(layer.weight))
        return [layer.weight_offset]

    def harden(self, layer) -> dict:
        layer.weight.data = layer.quant_weight().detach()  # Q(W + α) on the frozen grid
        layer.weight_offset = None
        return {}
