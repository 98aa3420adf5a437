"""FT: fine-tuning on the defender subset (BackdoorBench ``defense/ft.py``), plus the fine-tuning
helpers the other FP-model baselines share (FP, MCR, NAD).

All parameters train with cross-entropy on ``splits.defender`` (the labeled 5% subset, with
training augmentation) for ``epochs`` epochs: SGD (``lr``, ``momentum``, ``weight_decay``) and a
cosine schedule with T_max = ``epochs`` stepped once per *epoch* (a staircase, as BackdoorBench's
``CosineAnnealingLR`` stepped by its trainer). With ``milestones`` (a list of epochs) the schedule
is a step decay instead: the lr is multiplied by ``lr_decay`` at the start of each listed epoch
(0-based), as BackdoorBox's trainers do (``core/defenses/FineTuning.py``: ×0.1 at epoch 20; an
empty list keeps the lr constant). The purified FP model is then quantized with the cell's scheme
(:class:`~qcbench.defenses.base.FPDefense`). BackdoorBench's per-epoch test-set evaluation and AMP
are left out.

The LAC paper's Appendix B ran FT with BackdoorBox for 50 epochs; the paper config states that
and BackdoorBox's remaining settings (``tests/test_FineTuning.py``: batch 128, SGD lr 1e-3,
momentum 0.9, weight decay 5e-4; ``FineTuning.py``: ×0.1 at epoch 20). The class defaults are
BackdoorBench's (100 epochs, batch 256, lr 0.01, cosine).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


def step_lr(
    milestones: Sequence[int], gamma: float, steps_per_unit: int = 1
) -> Callable[[torch.optim.Optimizer], object]:
    """A :func:`~qcbench.train.fit` scheduler: the lr times ``gamma`` per milestone reached, the
    epoch being (optimizer steps) // ``steps_per_unit`` (0-based): at epoch e the factor is
    gamma^#{m in milestones: m <= e}, as BackdoorBox's ``adjust_learning_rate`` at the start of
    each epoch. No milestones: a constant lr."""
    marks = sorted(milestones)

    def factor(step: int) -> float:
        epoch = step // steps_per_unit
        return gamma ** sum(m <= epoch for m in marks)

    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor)


def epoch_schedule(
    epochs: int, milestones: Sequence[int] | None, gamma: float, steps: int
) -> Callable[[torch.optim.Optimizer], object]:
    """The per-epoch schedule of the fine-tuning baselines: cosine over ``epochs`` (BackdoorBench)
    when ``milestones`` is None, else :func:`step_lr` (BackdoorBox); ``steps`` per epoch."""
    return cosine_lr(epochs, steps) if milestones is None else step_lr(milestones, gamma, steps)


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
    milestones: Sequence[int] | None = None,
    lr_decay: float = 0.1,
) -> list[float]:
    """BackdoorBench's fine-tuning loop through :func:`~qcbench.train.fit`: SGD, per-epoch cosine
    with T_max = ``epochs`` (or BackdoorBox's step decay at ``milestones``, :func:`epoch_schedule`),
    cross-entropy unless ``loss_fn`` is given. Zero epochs leave the model as it is."""
    if epochs == 0:
        return []
    ce = nn.CrossEntropyLoss()
    return fit(
        model,
        data,
        loss_fn or (lambda m, x, y: ce(m(x), y)),
        epochs=epochs,
        batch_size=batch_size,
        optimizer=sgd(lr, momentum, weight_decay),
        scheduler=epoch_schedule(epochs, milestones, lr_decay, steps_per_epoch(data, batch_size)),
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
        milestones: Sequence[int] | None = None,
        lr_decay: float = 0.1,
    ) -> None:
        params = init_params(locals())
        params.update(milestones=None if milestones is None else list(milestones))
        super().__init__(**params)

    def ft_kwargs(self) -> dict:
        p = self.params
        keys = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "augmentation", "milestones", "lr_decay")
        return {k: p[k] for k in keys}

    def purify(self, model, splits, *, seed, device):
        self.history = finetune(model, splits.defender, seed=seed, device=device, desc="ft", **self.ft_kwargs())
        return model
