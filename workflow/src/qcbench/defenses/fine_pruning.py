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
4. Fine-tune with the FT settings (:mod:`qcbench.defenses.ft`, including ``milestones`` and
   ``lr_decay``); the mask is re-applied after every optimizer step, so the pruned columns are
   exactly zero in the returned model (and stay zero when quantized). ``epochs: 0`` prunes only.

With ``prune_ratio`` set, steps 2–3 are replaced by BackdoorBox's rule (``core/defenses/Pruning.py``):
a fixed share of channels, int(``prune_ratio`` × channels), those with the lowest mean activation,
is pruned, with no accuracy-drop stopping rule. BackdoorBox masks the output channels of a named
layer (the activation averaged over images and positions); the input of the final linear layer of
qcbench's ResNets is the last block's output averaged over positions (global average pooling), so
the same channels are ranked the same way, and zeroing their linear columns equals masking them at
the block's output. The LAC paper's Appendix B pruned 40% of the last block's channels with
BackdoorBox, whose ``Pruning`` does not fine-tune afterwards (the paper's FP rows keep backdoors
that its FT rows remove): the paper config states ``prune_ratio: 0.4`` and ``epochs: 0``. The
class defaults are BackdoorBench's sweep and FT.

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
from collections.abc import Sequence

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
    model: nn.Module,
    data: ImageSet,
    *,
    acc_ratio: float,
    once_prune_ratio: float,
    batch_size: int,
    device,
    prune_ratio: float | None = None,
) -> tuple[str, torch.Tensor, list[dict]]:
    """Run the pruning sweep on ``data`` (or, with ``prune_ratio``, prune that fixed share of the
    channels) and apply the chosen mask to ``model`` in place.

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
    if prune_ratio is not None:
        pruned = order[: int(prune_ratio * channels)]
        acc = accuracy(pruned)
        log.append({"pruned": len(pruned), "acc": acc, "relative_drop": (acc0 - acc) / max(acc0, 1e-12)})
    for k in range(step, channels, step) if prune_ratio is None else ():
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
        milestones: Sequence[int] | None = None,
        lr_decay: float = 0.1,
        prune_ratio: float | None = None,
    ) -> None:
        if prune_ratio is not None and not 0 <= prune_ratio < 1:
            raise ValueError(f"prune_ratio is {prune_ratio}; it is a share of the channels in [0, 1)")
        params = init_params(locals())
        params.update(milestones=None if milestones is None else list(milestones))
        FPDefense.__init__(self, **params)

    def purify(self, model, splits, *, seed, device):
        p = self.params
        self.layer, self.pruned, self.log = prune_channels(
            model,
            splits.defender,
            acc_ratio=p["acc_ratio"],
            once_prune_ratio=p["once_prune_ratio"],
            batch_size=p["batch_size"],
            device=device,
            prune_ratio=p["prune_ratio"],
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
