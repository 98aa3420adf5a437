"""FT: fine-tuning on the defender subset (BackdoorBench ``defense/ft.py``), plus the fine-tuning
helpers the other FP-model baselines share (FP, MCR, NAD).

All parameters train with cross-entropy on ``splits.defender`` (the labeled 5% subset, with
training augmentation) for ``epochs`` epochs: SGD (``lr``, ``momentum``, ``weight_decay``) and a
cosine schedule with T_max = ``epochs`` stepped once per *epoch* (a staircase, as BackdoorBench's
``CosineAnnealingLR`` stepped by its trainer). The purified FP model is then quantized with the
cell's scheme (:class:`~qcbench.defenses.base.FPDefense`). BackdoorBench's per-epoch test-set
evaluation and AMP are left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from qcbench.data import ImageSet
from qcbench.defenses.base import FPDefense, init_params, register_defense
from qcbench.train import LossFn, fit

PAPER_AUGMENTATION = {"pad": 4, "flip": True}  # BackdoorBench's CIFAR train transform: RandomCrop(32, 4) + flip


def sgd(lr: float, momentum: float, weight_decay: float) -> dict:
    return {"name": "sgd", "lr": lr, "momentum": momentum, "weight_decay": weight_decay}


def cosine_lr(t_max: int, steps_per_unit: int = 1) -> Callable[[torch.optim.Optimizer], object]:
    """A :func:`~qcbench.train.fit` scheduler: ``CosineAnnealingLR(T_max=t_max, eta_min=0)`` stepped
    once every ``steps_per_unit`` optimizer steps (= once per epoch when that is the number of
    batches per epoch). Past ``t_max`` the closed form keeps going, so the lr rises again (period
    2·t_max), as PyTorch's scheduler does."""

    def factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * (step // steps_per_unit) / t_max))

    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor)


def steps_per_epoch(data: ImageSet, batch_size: int) -> int:
    return math.ceil(len(data) / batch_size)


def finetune(
    model: nn.Module,
    data: ImageSet,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    augmentation: dict | None,
    seed: int,
    device,
    loss_fn: LossFn | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    desc: str = "ft",
) -> list[float]:
    """BackdoorBench's fine-tuning loop through :func:`~qcbench.train.fit`: SGD, per-epoch cosine
    with T_max = ``epochs``, cross-entropy unless ``loss_fn`` is given."""
    ce = nn.CrossEntropyLoss()
    return fit(
        model,
        data,
        loss_fn or (lambda m, x, y: ce(m(x), y)),
        epochs=epochs,
        batch_size=batch_size,
        optimizer=sgd(lr, momentum, weight_decay),
        scheduler=cosine_lr(epochs, steps_per_epoch(data, batch_size)),
        augmentation=augmentation,
        seed=seed,
        device=device,
        after_step=after_step,
        desc=desc,
    )


@register_defense("ft")
class FT(FPDefense):
    label = "FT"

    def __init__(
        self,
        epochs: int = 100,
        batch_size: int = 256,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        augmentation: dict | None = PAPER_AUGMENTATION,
    ) -> None:
        super().__init__(**init_params(locals()))

    def ft_kwargs(self) -> dict:
        p = self.params
        keys = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "augmentation")
        return {k: p[k] for k in keys}

    def purify(self, model, splits, *, seed, device):
        self.history = finetune(model, splits.defender, seed=seed, device=device, desc="ft", **self.ft_kwargs())
        return model
