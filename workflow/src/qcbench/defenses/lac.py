"""LAC + PDA (Li et al., ICML 2024) as the reference code ``QCB-LACPDA`` does it.

Per layer unit in topological order:

1. targets: the unit's output in the FP model (same network, quantization off) on clean
   calibration images; inputs: the quantized model's activation at the unit's input, with all
   earlier units already hardened;
2. PDA (only if the unit contains BatchNorm): each cached input batch is moved by signed steps
   that lower D = Σ_BN [‖μ_run − μ‖² + ‖σ_run − σ‖²] / B (per-sample, per-channel spatial
   statistics of each BN's input vs. its running statistics), staying within γ of the start in
   L∞ (step ``pda_alpha`` halved at half the iterations; no clamp, no re-quantization);
3. a free additive offset α per weight (weight units, unbounded, zero-initialised) inside the
   frozen weight quantizer, trained with Adam to minimise the unit-output squared error
   (summed over channels, averaged over batch and positions) on one random cached batch per
   iteration; no rounding regularizer;
4. the hard value Q(W + α) is written into the weight.

Activation scales stay as calibrated (upstream hands them to an optimizer but they get no
gradient). qcbench's addition, off unless configured: ``early_stop`` ends a unit's optimisation
when the loss, averaged over windows of ``window`` iterations, improves by less than ``rel_tol``.
"""

from __future__ import annotations

import copy
import sys

import torch
from tqdm.auto import tqdm

from qcbench.defenses.base import Defense, register_defense
from qcbench.defenses.units import Unit, capture, extract_units
from qcbench.quant import fp_view, freeze_weight_ranges


def bn_stat_distance(model, unit: Unit, x: torch.Tensor) -> torch.Tensor:
    """PDA's D for one unit and one batch, from hooks on each BN's input."""
    feats = []
    handles = [model.get_submodule(n).register_forward_pre_hook(lambda _m, a: feats.append(a[0])) for n in unit.bns]
    try:
        unit.forward(model, x)
    finally:
        for h in handles:
            h.remove()
    d = x.new_zeros(())
    for name, f in zip(unit.bns, feats):
        bn = model.get_submodule(name)
        mu = f.mean(dim=(2, 3))
        sigma = (f.var(dim=(2, 3), unbiased=False) + 1e-6).sqrt()
        d = d + ((bn.running_mean - mu) ** 2).sum() + (((bn.running_var + 1e-6).sqrt() - sigma) ** 2).sum()
    return d / x.shape[0]


def pda(model, unit: Unit, x0: torch.Tensor, iterations: int, gamma: float, alpha: float) -> torch.Tensor:
    """Poisoned-distribution approximation of one cached input batch."""
    x = x0.clone()
    for it in range(iterations):
        step = alpha / 2 if it >= iterations // 2 else alpha
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(bn_stat_distance(model, unit, x), x)
        with torch.no_grad():
            x = x0 + torch.clamp(x - step * grad.sign() - x0, -gamma, gamma)
    return x.detach()


def _unit_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).sum(1).mean()


@register_defense("lac")
class LAC(Defense):
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
        super().__init__(
            iterations=iterations,
            lr=lr,
            batch_size=batch_size,
            calib_batches=calib_batches,
            pda=pda,
            pda_iterations=pda_iterations,
            gamma=gamma,
            pda_alpha=pda_alpha,
            early_stop=early_stop,
        )

    def run(self, fp_model, qmodel, splits, *, seed, device):
        p = self.params
        g = torch.Generator().manual_seed(seed)
        calib = [
            x.to(device)
            for x, _ in splits.defender.batches(
                p["batch_size"], shuffle=True, generator=g, limit=p["batch_size"] * p["calib_batches"]
            )
        ]
        reference = copy.deepcopy(qmodel).eval()  # FP targets: same graph, quantization off
        qmodel = copy.deepcopy(qmodel).eval().requires_grad_(False)
        freeze_weight_ranges(qmodel)
        units = extract_units(qmodel)
        self.log: list[dict] = []
        for k, unit in enumerate(tqdm(units, desc="lac units", file=sys.stderr, mininterval=2.0)):
            with fp_view(reference):
                targets = capture(reference, unit.last, calib, "output")
            inputs = capture(qmodel, unit.first, calib, "input")
            if p["pda"] and unit.bns:
                inputs = [pda(qmodel, unit, x, p["pda_iterations"], p["gamma"], p["pda_alpha"]) for x in inputs]
            iters, loss = self._reconstruct(qmodel, unit, inputs, targets, g)
            self.log.append({"unit": k, "module": unit.first, "iterations": iters, "loss": loss})
            print(f"lac unit {k} {unit.modules}: {iters} iterations, loss {loss:.5f}", file=sys.stderr, flush=True)
        return qmodel

    def _reconstruct(self, qmodel, unit: Unit, inputs, targets, g) -> tuple[int, float]:
        p = self.params
        layer = qmodel.get_submodule(unit.first)
        layer.weight_offset = torch.nn.Parameter(torch.zeros_like(layer.weight))
        opt = torch.optim.Adam([layer.weight_offset], lr=p["lr"])
        es = p.get("early_stop") or {}
        window, tol = es.get("window", 0), es.get("rel_tol", 0.0)
        run, prev, it, last = 0.0, None, 0, float("nan")
        for it in range(1, p["iterations"] + 1):
            i = int(torch.randint(len(inputs), (1,), generator=g))
            loss = _unit_loss(unit.forward(qmodel, inputs[i]), targets[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += loss.item()
            last = loss.item()
            if window and it % window == 0:
                mean, run = run / window, 0.0
                if prev is not None and prev - mean < tol * prev:
                    break
                prev = mean
        with torch.no_grad():
            layer.weight.data = layer.quant_weight().detach()  # harden: Q(W + α) on the frozen grid
        layer.weight_offset = None
        return it, last
