"""ANP: adversarial neuron pruning (Wu & Wang, NeurIPS 2021) as its authors' code runs it
(csdongxian/ANP_backdoor ``optimize_mask_cifar.py``, ``models/anp_batchnorm.py`` and
``prune_neuron_cifar.py``; BackdoorBench ``defense/anp.py`` wraps the same code).

1. On a copy of the model every ``BatchNorm2d`` gets, per channel, a mask m (``neuron_mask``, 1 at
   the start) and noises δ, ξ (``neuron_noise``, ``neuron_noise_bias``): its affine weight acts as
   γ·(m + δ) and its bias as β·(1 + ξ) while the noise is included, as γ·m and β otherwise
   (:class:`NoisyBatchNorm2d`).
2. ``nb_iter`` steps, each on a batch of ``batch_size`` defender images drawn with replacement
   (upstream's ``RandomSampler``), with training augmentation, the copy in train mode (batch
   statistics, as upstream):

   a. δ, ξ drawn from U[−``anp_eps``, ``anp_eps``]; ``anp_steps`` signed-gradient ascent steps of
      cross-entropy (noise included) with step ``anp_eps / anp_steps``, δ and ξ left unclipped
      after the steps, as upstream's code leaves them (the paper states the bound; with one step
      of size ``anp_eps`` a noise can reach 2·``anp_eps``);
   b. one SGD step (``lr``, momentum 0.9) on m of ``anp_alpha``·CE(noise excluded) +
      (1 − ``anp_alpha``)·CE(noise included); m clipped to [0, 1].

   Only the masks learn: the network's weights stay frozen.
3. Pruning, on the model itself (its weights and BatchNorm statistics untouched by step 2): each
   BN channel whose mask is ≤ ``pruning_max`` (``pruning_by`` ``threshold``), or each of the
   ``pruning_max`` channels with the lowest masks (``pruning_by`` ``number``), gets BN weight 0, its
   bias kept (upstream's ``pruning``).

BackdoorBench sweeps the threshold and keeps the model of lowest test-set ASR (an oracle); qcbench
prunes at the paper's fixed threshold, 0.2.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from qcbench.data import ImageSet
from qcbench.defenses.base import FPDefense, init_params, register_defense
from qcbench.defenses.ft import PAPER_AUGMENTATION, sgd
from qcbench.train import fit

PRUNING_BY = ("threshold", "number")


class NoisyBatchNorm2d(nn.Module):
    """A ``BatchNorm2d`` (``bn``, called as itself, running statistics included) whose affine
    weight is scaled per channel by ``neuron_mask`` (+ ``neuron_noise``) and whose bias by
    1 + ``neuron_noise_bias`` while :attr:`perturbed` is set."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn = bn
        n, dev = bn.num_features, bn.weight.device
        self.neuron_mask = nn.Parameter(torch.ones(n, device=dev))
        self.neuron_noise = nn.Parameter(torch.zeros(n, device=dev))
        self.neuron_noise_bias = nn.Parameter(torch.zeros(n, device=dev))
        self.perturbed = False

    @torch.no_grad()
    def reset(self, eps: float) -> None:
        """Draw both noises from U[−eps, eps] (upstream's ``reset(rand_init=True)``)."""
        self.neuron_noise.uniform_(-eps, eps)
        self.neuron_noise_bias.uniform_(-eps, eps)

    @torch.no_grad()
    def clip_mask(self) -> None:
        self.neuron_mask.clamp_(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perturbed:
            weight = self.bn.weight * (self.neuron_mask + self.neuron_noise)
            bias = self.bn.bias * (1.0 + self.neuron_noise_bias)
        else:
            weight, bias = self.bn.weight * self.neuron_mask, self.bn.bias
        return functional_call(self.bn, {"weight": weight, "bias": bias}, (x,))


def batchnorm_names(model: nn.Module) -> list[str]:
    """Names of the affine ``BatchNorm2d`` layers of ``model`` (the neurons ANP masks)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.affine]


def noisy_copy(model: nn.Module, names: list[str]) -> tuple[nn.Module, dict[str, NoisyBatchNorm2d]]:
    """A copy of ``model`` with each BN in ``names`` wrapped in a :class:`NoisyBatchNorm2d`; every
    original parameter frozen."""
    net = copy.deepcopy(model)
    net.requires_grad_(False)
    wrapped = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        holder = net.get_submodule(parent) if parent else net
        wrapped[name] = NoisyBatchNorm2d(getattr(holder, child))
        setattr(holder, child, wrapped[name])
    return net, wrapped


@dataclass
class DrawnWithReplacement(ImageSet):
    """``samples`` images drawn with replacement from ``x``/``y`` in each pass (a
    ``RandomSampler(replacement=True, num_samples=samples)``): :func:`~qcbench.train.fit` over one
    epoch of it takes exactly ceil(samples / batch_size) steps, whatever the set's size."""

    samples: int = 0

    def __len__(self) -> int:
        return self.samples

    def batches(self, batch_size, shuffle=False, generator=None, drop_last=False, limit=None):
        n = self.samples if limit is None else min(limit, self.samples)
        idx = torch.randint(len(self.y), (n,), generator=generator)
        stop = n - (n % batch_size) if drop_last else n
        for i in range(0, stop, batch_size):
            j = idx[i : i + batch_size]
            yield self.x[j].float().div_(255.0), self.y[j]


def pruned_channels(masks: dict[str, torch.Tensor], pruning_by: str, pruning_max: float) -> dict[str, torch.Tensor]:
    """Per BN name, the channel indices to prune: masks ≤ ``pruning_max`` (``threshold``) or the
    ``int(pruning_max)`` lowest masks over all layers (``number``; ties in layer order)."""
    if pruning_by == "threshold":
        return {n: (m <= pruning_max).nonzero().flatten() for n, m in masks.items()}
    if pruning_by != "number":
        raise ValueError(f"ANP: pruning_by is {pruning_by!r}, not one of {PRUNING_BY}")
    flat = torch.cat([m.flatten() for m in masks.values()])
    order = flat.argsort(stable=True)[: int(pruning_max)]
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[order] = True
    out, start = {}, 0
    for n, m in masks.items():
        out[n] = chosen[start : start + m.numel()].nonzero().flatten()
        start += m.numel()
    return out


@register_defense("anp")
class ANP(FPDefense):
    label = "ANP"

    def __init__(
        self,
        nb_iter: int = 2000,
        batch_size: int = 128,
        lr: float = 0.2,
        anp_eps: float = 0.4,
        anp_steps: int = 1,
        anp_alpha: float = 0.2,
        pruning_by: str = "threshold",
        pruning_max: float = 0.2,
        augmentation: dict | None = PAPER_AUGMENTATION,
    ) -> None:
        if pruning_by not in PRUNING_BY:
            raise ValueError(f"ANP: pruning_by is {pruning_by!r}, not one of {PRUNING_BY}")
        super().__init__(**init_params(locals()))

    def purify(self, model, splits, *, seed, device):
        p = self.params
        names = batchnorm_names(model)
        if not names:
            raise ValueError(
                f"ANP masks BatchNorm2d channels: {type(model).__name__} has no (affine) BatchNorm2d layer"
            )
        self.masks = self.optimize_masks(model, splits.defender, names, seed=seed, device=device)
        self.pruned = pruned_channels(self.masks, p["pruning_by"], p["pruning_max"])
        with torch.no_grad():
            for name, idx in self.pruned.items():
                model.get_submodule(name).weight[idx.to(device)] = 0.0
        return model

    def optimize_masks(self, model, data: ImageSet, names: list[str], *, seed: int, device) -> dict[str, torch.Tensor]:
        """Steps 1-2: the learned mask of every BN in ``names`` (on the CPU), ``model`` untouched."""
        p = self.params
        eps, steps, alpha = p["anp_eps"], p["anp_steps"], p["anp_alpha"]
        net, noisy = noisy_copy(model, names)
        net.to(device)
        mods = list(noisy.values())
        noise = [t for m in mods for t in (m.neuron_noise, m.neuron_noise_bias)]
        noise_opt = torch.optim.SGD(noise, lr=eps / max(steps, 1))
        ce = nn.CrossEntropyLoss()

        def include_noise(on: bool) -> None:
            for m in mods:
                m.perturbed = on

        def anp_loss(m, x, y):
            if eps > 0:
                for mod in mods:
                    mod.reset(eps)
                include_noise(True)
                for _ in range(steps):
                    noise_opt.zero_grad(set_to_none=True)
                    (-ce(m(x), y)).backward(inputs=noise)
                    for t in noise:
                        t.grad.sign_()
                    noise_opt.step()
                loss_rob = ce(m(x), y)
            include_noise(False)
            loss_nat = ce(m(x), y)
            return alpha * loss_nat + (1 - alpha) * loss_rob if eps > 0 else alpha * loss_nat

        def clip_masks(_m) -> None:
            for mod in mods:
                mod.clip_mask()

        data = DrawnWithReplacement(data.x, data.y, samples=p["nb_iter"] * p["batch_size"])
        self.history = fit(
            net,
            data,
            anp_loss,
            epochs=1,
            batch_size=p["batch_size"],
            optimizer=sgd(p["lr"], 0.9, 0.0),
            params=[m.neuron_mask for m in mods],
            augmentation=p["augmentation"],
            seed=seed,
            device=device,
            after_step=clip_masks,
            desc="anp",
        )
        return {n: m.neuron_mask.detach().cpu().clone() for n, m in noisy.items()}
