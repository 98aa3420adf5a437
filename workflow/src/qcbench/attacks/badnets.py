"""BadNets (Gu et al.): an ordinary all-to-one patch backdoor, the canonical attack and the one the
"Quantization Blindspots" benchmark uses. Each batch has ``poison_rate`` of its samples replaced
by triggered copies labelled with the target (BackdoorBench: 10 %). Any registered trigger works,
which makes this the plain-backdoor attack for the conventional triggers (Blended, WaNet, SIG …).
It targets no particular quantizer: its cells use ``quant.default_scheme``.

``cross_ratio`` (default 0) is WaNet's noise mode for triggers that have one (``noise``): after
the poisoned samples, ``cross_ratio`` times as many are replaced by noise-mode copies that keep
their true labels (the reference's ``cross_ratio = 2``). ``amp`` trains under bfloat16 autocast
(:func:`qcbench.train.fit`); triggers stamp in float32 (``qcbench.triggers.base.float32_region``).

``precise_bn`` (batches, default null = off; BackdoorBench keeps training's running averages):
after training, the BatchNorm statistics are re-estimated with the final weights over that many
batches of the same poisoned training mixture (:func:`qcbench.train.precise_bn`). The attacker
ships a model that works in eval mode; without it the local default's ISSBA model lost its clean
accuracy (BA 15 %) and WaNet's ASR stayed at 74 % on an AVX2 CPU."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qcbench.attacks.base import Attack, register_attack, reinitialize
from qcbench.data import augment
from qcbench.train import fit, precise_bn, stage_kwargs


@register_attack("badnets")
class BadNets(Attack):
    #: "Quantization Blindspots" / BackdoorBench: from scratch, 10 % poisoned, 20 epochs of SGD 0.1
    #: (upstream steps the rate down at 50 % and 75 %; cosine here)
    defaults = {
        "init": "scratch",
        "poison_rate": 0.1,
        "epochs": 20,
        "batch_size": 128,
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4},
        "scheduler": "cosine",
        "augmentation": {"pad": 4, "flip": True},
        "amp": "fp32",
        "precise_bn": None,
        "cross_ratio": 0.0,
    }
    scheme = None

    def run(self, model, splits, *, seed, device):
        p = self.params
        if self.init == "scratch":
            reinitialize(model, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        rate, aug = p["poison_rate"], p["augmentation"]
        self.cross_ratio()  # a trigger without a noise mode is refused before training

        def poison(x, y):
            k = max(1, math.ceil(rate * len(y)))  # batches are shuffled: the first k are a random subset
            noisy = self.noise_copies(x, k, gen)
            x = torch.cat([self.trigger(x[:k]), noisy, x[k + len(noisy) :]])
            y = torch.cat([torch.full_like(y[:k], self.target), y[k:]])
            return (augment(x, gen, **aug) if aug else x), y

        def loss_fn(m, x, y):
            x, y = poison(x, y)
            return F.cross_entropy(m(x), y)

        kw = stage_kwargs(p)
        fit(model, splits.train, loss_fn, seed=seed, device=device, desc="badnets", **kw)
        if p["precise_bn"]:
            shuffle = torch.Generator().manual_seed(seed + 2)
            n = int(p["precise_bn"]) * kw["batch_size"]
            batches = (poison(x, y)[0] for x, y in splits.train.batches(kw["batch_size"], True, shuffle, limit=n))
            precise_bn(model, batches, device)
        return model.eval()
