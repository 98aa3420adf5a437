"""Fine-pruning (Liu et al. 2018; registered as ``fp``, its label in LAC's tables) as BackdoorBench
``defense/fp.py`` runs it.

1. Hook the input of the final linear layer (the last ``nn.Linear`` in execution order,
   :func:`~qcbench.quant.layer_order`: the pooled features of a ResNet) and average each channel
   over the clean defender images; sort ascending.
2. Prune in steps of ceil(``once_prune_ratio`` × channels): at count k the k channels with the
   lowest mean activation are masked (the matching columns of the linear weight are zero).
3. Stop at the first step where the relative drop in clean accuracy, (acc₀ − acc_k) / acc₀,
   reaches ``acc_ratio``; the mask of that step stays (BackdoorBench means to keep the previous
   step's model, but its variable aliases the pruned module, so the crossing step's mask is what
   stays; qcbench keeps it on purpose). If no step reaches it, the last step (k < channels) stays.
4. Fine-tune with the FT settings; the mask is re-applied after every optimizer step, so the
   pruned columns are exactly zero in the returned model (and stay zero when quantized).

Deviations from BackdoorBench, on purpose:

* the stopping rule's accuracy is measured on the **defender subset**, not on the clean test set
  (BackdoorBench uses test data: information a defender does not have, and the test set is what
  qcbench reports);
* at count k exactly k channels are masked (BackdoorBench masks k − 1, an off-by-one);
* the mask is applied by zeroing weight columns after every step instead of through
  ``torch.nn.utils.prune`` (same effective weights: pruned entries get no update);
* the accuracies of the pruning sweep are computed from the cached linear-layer inputs (masking
  the input of the last layer does not change anything before it), which is exact and cheap.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qcbench.data import ImageSet
from qcbench.defenses.base import FPDefense, init_params, register_defense
from qcbench.defenses.ft import FT, PAPER_AUGMENTATION, finetune
from qcbench.quant import layer_order


def last_linear(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` in execution order."""
    names = [n for n in layer_order(model) if isinstance(model.get_submodule(n), nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to prune")
    return names[-1]


@torch.no_grad()
def linear_inputs(model: nn.Module, name: str, data: ImageSet, batch_size: int, device) -> torch.Tensor:
    """The (N, C) inputs of layer ``name`` on ``data`` (model in eval mode)."""
    feats: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda _m, a: feats.append(a[0].flatten(1)))
    try:
        model.eval()
        for x, _ in data.batches(batch_size):
            model(x.to(device))
    finally:
        handle.remove()
    return torch.cat(feats)


def prune_channels(
    model: nn.Module, data: ImageSet, *, acc_ratio: float, once_prune_ratio: float, batch_size: int, device
) -> tuple[str, torch.Tensor, list[dict]]:
    """Run the pruning sweep on ``data`` and apply the chosen mask to ``model`` in place.

    Returns (linear layer name, pruned channel indices, one log dict per step)."""
    name = last_linear(model)
    fc: nn.Linear = model.get_submodule(name)
    feats = linear_inputs(model, name, data, batch_size, device)
    y = data.y.to(feats.device)
    channels = feats.shape[1]
    order = feats.mean(0).argsort()  # ascending mean activation

    def accuracy(pruned: torch.Tensor) -> float:
        w = fc.weight.detach().clone()
        w[:, pruned] = 0
        logits = nn.functional.linear(feats, w, fc.bias)
        return (logits.argmax(1) == y).float().mean().item()

    acc0 = accuracy(order[:0])
    step = max(1, math.ceil(once_prune_ratio * channels))
    log, pruned = [], order[:0]
    for k in range(step, channels, step):
        pruned = order[:k]
        acc = accuracy(pruned)
        drop = (acc0 - acc) / max(acc0, 1e-12)
        log.append({"pruned": k, "acc": acc, "relative_drop": drop})
        if drop >= acc_ratio:
            break
    with torch.no_grad():
        fc.weight[:, pruned] = 0
    return name, pruned.sort().values, log


@register_defense("fp")
class FinePruning(FT):
    label = "FP"

    def __init__(
        self,
        acc_ratio: float = 0.1,
        once_prune_ratio: float = 0.01,
        epochs: int = 100,
        batch_size: int = 256,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        augmentation: dict | None = PAPER_AUGMENTATION,
    ) -> None:
        FPDefense.__init__(self, **init_params(locals()))

    def purify(self, model, splits, *, seed, device):
        p = self.params
        self.layer, self.pruned, self.log = prune_channels(
            model,
            splits.defender,
            acc_ratio=p["acc_ratio"],
            once_prune_ratio=p["once_prune_ratio"],
            batch_size=p["batch_size"],
            device=device,
        )
        pruned = self.pruned.to(device)
        fc = model.get_submodule(self.layer)

        @torch.no_grad()
        def reapply_mask(_model: nn.Module) -> None:
            fc.weight[:, pruned] = 0

        self.history = finetune(
            model, splits.defender, seed=seed, device=device, after_step=reapply_mask, desc="fp", **self.ft_kwargs()
        )
        return model
