"""I-BAU: implicit backdoor adversarial unlearning (Zeng et al. 2022), as the official
``YiZeng623/I-BAU`` code (``defense.py``, ``hypergrad.py``) with BackdoorBench's settings.

Each of ``n_rounds`` rounds, on the defender subset, with the model in eval mode throughout:

1. a universal perturbation δ (1×C×H×W, from 0) gets one pass of SGD (``delta_lr`` 10, no
   momentum) maximising the cross-entropy against the model's own current predictions, with a
   ``reg``·‖δ‖² penalty (no norm bound);
2. one pass of outer steps (Adam, ``lr``) on all weights with the implicit hypergradient of the
   outer loss, cross-entropy on the batch with δ added to a random ``portion`` (1%,
   int(portion·batch) images) of it; the inner problem is δ* = argmin −CE(x₀ + δ, y₀) +
   ``reg``·‖δ‖² on a fixed first batch (x₀, y₀), whose fixed-point map is one gradient step of
   size ``inner_lr`` (0.1); the hypergradient uses ``K`` (5) fixed-point iterations
   (:func:`fixed_point_hypergrad`).

Both phases run through :func:`~qcbench.train.fit`; the outer step's loss is a surrogate whose
value is the outer loss and whose gradient is the hypergradient. Differences from the official
code: the first batch (x₀, y₀) is drawn once from the shuffled defender subset, and phase 2
reshuffles the batches every round (upstream keeps one order).

BackdoorBox has no I-BAU. The LAC paper's Appendix B ran 3 rounds (``n_rounds``; the official
README's example, ``--n_rounds 3 --K 5``); the paper config states that, with BackdoorBench's
other settings (the class defaults).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from qcbench.defenses.base import FPDefense, init_params, register_defense
from qcbench.defenses.ft import PAPER_AUGMENTATION
from qcbench.train import fit

Tensors = Sequence[torch.Tensor]


def fixed_point_hypergrad(
    inner: Tensors,
    outer: Tensors,
    fp_map: Callable[[list[torch.Tensor], Tensors], list[torch.Tensor]],
    outer_loss: Callable[[list[torch.Tensor], Tensors], torch.Tensor],
    K: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Implicit hypergradient by the fixed-point method (hypertorch's ``fixed_point``).

    For inner variables w at (approximately) a fixed point w = Φ(w, λ) of ``fp_map`` and outer
    variables λ, the gradient of ``outer_loss(w(λ), λ)`` is ∂_λ L + (∂_λ Φ)ᵀ v with v solving
    v = (∂_w Φ)ᵀ v + ∂_w L, approximated by ``K`` iterations from v = 0. ``fp_map`` must build
    its graph (``create_graph=True``). Returns (the outer loss, detached; gradients for ``outer``).
    """
    inner = [w.detach().requires_grad_(True) for w in inner]
    outer = list(outer)
    loss = outer_loss(inner, outer)
    grads = torch.autograd.grad(loss, inner + outer, allow_unused=True)
    g_inner = [torch.zeros_like(w) if g is None else g for w, g in zip(inner, grads[: len(inner)])]
    g_outer = grads[len(inner) :]
    mapped = fp_map(inner, outer)
    vs = [torch.zeros_like(w) for w in inner]
    for _ in range(K):
        jv = torch.autograd.grad(mapped, inner, grad_outputs=vs, retain_graph=True, allow_unused=True)
        vs = [g + (torch.zeros_like(g) if j is None else j) for j, g in zip(jv, g_inner)]
    jv = torch.autograd.grad(mapped, outer, grad_outputs=vs, allow_unused=True)
    out = []
    for p, j, g in zip(outer, jv, g_outer):
        total = torch.zeros_like(p) if j is None else j
        out.append(total if g is None else total + g)
    return loss.detach(), out


def gradient_step_map(
    inner_loss: Callable[[list[torch.Tensor], Tensors], torch.Tensor], step: float
) -> Callable[[list[torch.Tensor], Tensors], list[torch.Tensor]]:
    """Φ(w, λ) = w − step·∇_w inner_loss(w, λ), differentiable (hypertorch's ``GradientDescent``)."""

    def fp_map(inner, outer):
        grads = torch.autograd.grad(inner_loss(inner, outer), inner, create_graph=True)
        return [w - step * g for w, g in zip(inner, grads)]

    return fp_map


def surrogate_loss(value: torch.Tensor, params: Tensors, grads: Tensors) -> torch.Tensor:
    """A scalar equal to ``value`` whose gradient w.r.t. ``params`` is ``grads``."""
    s = sum((p * g.detach()).sum() for p, g in zip(params, grads))
    return s - s.detach() + value.detach()


@register_defense("ibau")
class IBAU(FPDefense):
    label = "I-BAU"

    def __init__(
        self,
        n_rounds: int = 5,
        K: int = 5,
        batch_size: int = 256,
        lr: float = 1e-4,
        delta_lr: float = 10.0,
        inner_lr: float = 0.1,
        reg: float = 1e-3,
        portion: float = 0.01,
        augmentation: dict | None = PAPER_AUGMENTATION,
    ) -> None:
        super().__init__(**init_params(locals()))

    def purify(self, model, splits, *, seed, device):
        p = self.params
        data = splits.defender
        g = torch.Generator().manual_seed(seed)
        x0, y0 = next(data.batches(p["batch_size"], shuffle=True, generator=g))
        x0, y0 = x0.to(device), y0.to(device)

        def inner_loss(inner, _outer):
            (delta,) = inner
            return -F.cross_entropy(model(x0 + delta), y0) + p["reg"] * delta.pow(2).sum()

        fp_map = gradient_step_map(inner_loss, p["inner_lr"])
        self.history = []
        for r in range(p["n_rounds"]):
            delta = self.universal_perturbation(model, data, x0[:1], seed=seed + 2 * r + 1, device=device, desc=r)
            self.history += self.unlearn(model, data, delta, fp_map, g, seed=seed + 2 * r + 2, device=device, desc=r)
        return model.eval()

    def universal_perturbation(self, model, data, like, *, seed, device, desc) -> torch.Tensor:
        """Phase 1: one SGD pass on δ against the model's own predictions (weights frozen)."""
        p = self.params
        delta = torch.zeros_like(like).requires_grad_(True)

        def delta_loss(m, x, _y):
            with torch.no_grad():
                own = m(x).argmax(1)
            return -F.cross_entropy(m(x + delta), own) + p["reg"] * delta.pow(2).sum()

        trainable = [q for q in model.parameters() if q.requires_grad]
        model.requires_grad_(False)
        try:
            fit(
                model,
                data,
                delta_loss,
                epochs=1,
                batch_size=p["batch_size"],
                optimizer={"name": "sgd", "lr": p["delta_lr"], "momentum": 0.0},
                augmentation=p["augmentation"],
                eval_mode=True,
                params=[delta],
                seed=seed,
                device=device,
                desc=f"ibau round {desc + 1} delta",
            )
        finally:
            for q in trainable:
                q.requires_grad_(True)
        return delta.detach()

    def unlearn(self, model, data, delta, fp_map, g, *, seed, device, desc) -> list[float]:
        """Phase 2: one pass of Adam steps on the weights with the implicit hypergradient."""
        p = self.params
        params = [q for q in model.parameters() if q.requires_grad]

        def unlearn_loss(m, x, y):
            def outer_loss(inner, _outer):
                n = len(x)
                idx = torch.randperm(n, generator=g)[: int(n * p["portion"])].to(x.device)
                patch = torch.zeros_like(x)
                patch[idx] = inner[0]
                return F.cross_entropy(m(x + patch), y)

            value, grads = fixed_point_hypergrad([delta], params, fp_map, outer_loss, p["K"])
            return surrogate_loss(value, params, grads)

        return fit(
            model,
            data,
            unlearn_loss,
            epochs=1,
            batch_size=p["batch_size"],
            optimizer={"name": "adam", "lr": p["lr"]},
            augmentation=p["augmentation"],
            eval_mode=True,
            params=params,
            seed=seed,
            device=device,
            desc=f"ibau round {desc + 1} unlearn",
        )
