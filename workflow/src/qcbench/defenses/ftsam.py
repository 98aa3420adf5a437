"""FT-SAM: fine-tuning with sharpness-aware minimisation (Zhu et al. 2023) as BackdoorBench
``defense/ft-sam.py`` runs it.

* SGD (``lr``, ``momentum``, ``weight_decay``) for ``epochs`` on the defender subset, each step a
  SAM step: gradient g at w, perturbation ε, gradient at w + ε applied at w. With ``adaptive``
  (on: BackdoorBench's ``--adaptive`` is a store_false flag) this is ASAM,
  ε = ρ·(w²⊙g)/‖|w|⊙g‖ (:func:`asam_perturbation`), with ``rho`` = 2 (``rho_max`` = ``rho_min``).
* Loss: label-smoothed cross-entropy (``label_smoothing`` 0.1; the SAM code's form: 1 − s on the
  true class, s/(n−1) on each other one), in both passes.
* BatchNorm: the first pass updates the running statistics as usual; the perturbed pass uses
  batch statistics but leaves the running statistics alone (momentum 0 during that pass).
* LR: ``CosineAnnealingLR(T_max=cos_t_max)`` (``cos_t_max``) stepped every *iteration* (upstream: T_max 100, so
  the lr oscillates with a period of 200 iterations); ``cos_t_max: null`` anneals once over the run.

The SAM step lives entirely inside the loss function given to :func:`~qcbench.train.fit`: the
first pass's gradient comes from ``torch.autograd.grad`` (``.grad`` untouched), and the returned
loss is the network evaluated, through ``torch.func.functional_call``, at w + ε with ε detached, so
its gradient w.r.t. w is the gradient at w + ε and the optimizer steps from the unperturbed w
(weight decay included) exactly as SAM's ``second_step`` does. The logged loss is the perturbed
pass's.

BackdoorBox has no FT-SAM. The LAC paper's Appendix B ran 200 epochs (``epochs``); the paper
config states that, with BackdoorBench's other settings (the class defaults, ``cos_t_max`` 100
included).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from qcbench.defenses.base import FPDefense, init_params, register_defense
from qcbench.defenses.ft import PAPER_AUGMENTATION, cosine_lr, sgd
from qcbench.train import fit


def smooth_crossentropy(logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Mean cross-entropy against 1 − s on the label and s/(n−1) on every other class."""
    n = logits.shape[1]
    target = torch.full_like(logits, smoothing / (n - 1))
    target.scatter_(1, y[:, None], 1.0 - smoothing)
    return -(target * F.log_softmax(logits, 1)).sum(1).mean()


@torch.no_grad()
def asam_perturbation(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], rho: float, adaptive: bool = True
) -> list[torch.Tensor]:
    """SAM's ε = ρ·g/‖g‖, or with ``adaptive`` ASAM's ε = ρ·(w²⊙g)/‖|w|⊙g‖ (norm over all
    parameters together, + 1e-12 as the SAM code); a missing gradient counts as zero."""
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    scaled = [(p.abs() * g if adaptive else g) for p, g in zip(params, grads)]
    norm = torch.linalg.vector_norm(torch.stack([s.norm(2) for s in scaled]), 2)
    scale = rho / (norm + 1e-12)
    return [((p * p * g) if adaptive else g) * scale for p, g in zip(params, grads)]


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm keeps its running statistics (momentum 0) inside the block; batch statistics
    are still used in train mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m


def sam_loss(model: nn.Module, rho: float, adaptive: bool, smoothing: float):
    """A :func:`~qcbench.train.fit` loss doing one (A)SAM step's two passes (see module doc)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]

    def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = smooth_crossentropy(m(x), y, smoothing)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        eps = asam_perturbation(params, grads, rho, adaptive)
        with frozen_bn_stats(m):
            out = functional_call(m, {n: p + e for n, p, e in zip(names, params, eps)}, (x,))
        return smooth_crossentropy(out, y, smoothing)

    return loss_fn


@register_defense("ftsam")
class FTSAM(FPDefense):
    label = "FT-SAM"

    def __init__(
        self,
        epochs: int = 100,
        batch_size: int = 256,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        rho: float = 2.0,
        adaptive: bool = True,
        label_smoothing: float = 0.1,
        cos_t_max: int | None = 100,
        augmentation: dict | None = PAPER_AUGMENTATION,
    ) -> None:
        super().__init__(**init_params(locals()))

    def purify(self, model, splits, *, seed, device):
        p = self.params
        self.history = fit(
            model,
            splits.defender,
            sam_loss(model, p["rho"], p["adaptive"], p["label_smoothing"]),
            epochs=p["epochs"],
            batch_size=p["batch_size"],
            optimizer=sgd(p["lr"], p["momentum"], p["weight_decay"]),
            scheduler="cosine" if p["cos_t_max"] is None else cosine_lr(p["cos_t_max"]),
            augmentation=p["augmentation"],
            seed=seed,
            device=device,
            desc="ftsam",
        )
        return model
