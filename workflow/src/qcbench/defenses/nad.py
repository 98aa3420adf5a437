"""NAD: neural attention distillation (Li et al. 2021) as BackdoorBench ``defense/nad.py`` runs it.

* Teacher: a copy of the model fine-tuned on the defender subset for ``te_epochs`` with the FT
  settings (SGD ``lr``, per-epoch cosine); it is then frozen (eval mode).
* Student: the model itself, trained for ``epochs`` (BackdoorBench trains it for ``te_epochs`` =
  10, not its ``epochs`` = 100; the default here is that 10) at a constant ``lr`` (BackdoorBench's
  per-epoch step function resets the lr to 0.01 below epoch 20, i.e. always) with
  cross-entropy + Σᵢ βᵢ·MSE(A(sᵢ), A(tᵢ)), where A(f) = Σ_c |f_c|^p over channels,
  L2-normalised over the spatial map (eps 1e-6), for student/teacher features sᵢ/tᵢ.
* Features (``layers``; default for qcbench's ResNets): the outputs of the last two stages
  (``layers.<n-2>``, ``layers.<n-1>``: PreActResNet-18's layer3 and layer4) and of the global pool
  (``pool``, 1×1, so its normalised map is constant and that term ≈ 0, as upstream);
  ``betas`` 500/1000/1000, ``p`` 2.

BackdoorBox's NAD (``core/defenses/NAD.py``, ``tests/test_NAD.py``), as keys:

* ``te_lr`` (null: ``lr``) and ``te_milestones``: the teacher's lr and its step schedule
  (:func:`~qcbench.defenses.ft.step_lr`; null: the cosine above). BackdoorBox decays the teacher's
  ``tune_lr`` into a param-group key the optimizer does not read, so its teacher trains at a
  constant 0.01: ``te_milestones: []``.
* ``milestones``/``lr_decay``: the student's lr times ``lr_decay`` at each listed epoch (default none:
  constant; BackdoorBox's test: ×0.1 at epochs 2, 4, 6 and 8).
* ``stages`` and ``pool``: the default feature layers are the outputs of the last ``stages``
  stages, plus the global pool with ``pool`` (BackdoorBox: layer2, layer3 and layer4 of
  ResNet-18, no pool, betas 500/500/500; batch 64). ``layers`` names them explicitly instead.

The LAC paper's Appendix B ran NAD with BackdoorBox, 50 teacher and 50 student epochs; the paper
config states that with the settings above.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qcbench.defenses.base import FPDefense, init_params, register_defense
from qcbench.defenses.ft import PAPER_AUGMENTATION, finetune, sgd, step_lr, steps_per_epoch
from qcbench.train import fit


def attention_map(f: torch.Tensor, p: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """NAD's attention: channel sum of |f|^p, L2-normalised over the spatial map -> (N, 1, H, W)."""
    if f.ndim == 2:
        f = f[:, :, None, None]
    am = f.abs().pow(p).sum(1, keepdim=True)
    return am / (am.norm(dim=(2, 3), keepdim=True) + eps)


def default_feature_layers(model: nn.Module, stages: int = 2, pool: bool = True) -> list[str]:
    """The outputs NAD distils for qcbench's ResNets: the last ``stages`` stages, and the pool
    with ``pool``."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.Sequential) or len(layers) < stages or (pool and not hasattr(model, "pool")):
        raise ValueError(f"no default NAD feature layers for {type(model).__name__}; set `layers` explicitly")
    n = len(layers)
    return [f"layers.{i}" for i in range(n - stages, n)] + (["pool"] if pool else [])


class FeatureTap:
    """Forward hooks collecting the outputs of named modules on every call (cleared by the user)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [
            model.get_submodule(n).register_forward_hook(lambda _m, _a, o, n=n: self.out.__setitem__(n, o))
            for n in names
        ]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@register_defense("nad")
class NAD(FPDefense):
    label = "NAD"

    def __init__(
        self,
        te_epochs: int = 10,
        epochs: int = 10,
        batch_size: int = 256,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        betas: Sequence[float] = (500.0, 1000.0, 1000.0),
        p: float = 2.0,
        layers: Sequence[str] | None = None,
        augmentation: dict | None = PAPER_AUGMENTATION,
        te_lr: float | None = None,
        te_milestones: Sequence[int] | None = None,
        milestones: Sequence[int] = (),
        lr_decay: float = 0.1,
        stages: int = 2,
        pool: bool = True,
    ) -> None:
        params = init_params(locals())
        params.update({k: None if params[k] is None else list(params[k]) for k in ("layers", "te_milestones")})
        params.update(betas=list(betas), milestones=list(milestones))
        super().__init__(**params)

    def purify(self, model, splits, *, seed, device):
        prm = self.params
        names = prm["layers"] or default_feature_layers(model, prm["stages"], prm["pool"])
        if len(names) != len(prm["betas"]):
            raise ValueError(f"NAD: {len(names)} feature layers {names} but {len(prm['betas'])} betas")
        teacher = copy.deepcopy(model)
        finetune(
            teacher,
            splits.defender,
            epochs=prm["te_epochs"],
            batch_size=prm["batch_size"],
            lr=prm["lr"] if prm["te_lr"] is None else prm["te_lr"],
            momentum=prm["momentum"],
            weight_decay=prm["weight_decay"],
            augmentation=prm["augmentation"],
            seed=seed,
            device=device,
            desc="nad teacher",
            milestones=prm["te_milestones"],
            lr_decay=prm["lr_decay"],
        )
        teacher.eval().requires_grad_(False)
        t_tap, s_tap = FeatureTap(teacher, names), FeatureTap(model, names)
        ce = nn.CrossEntropyLoss()

        def nad_loss(m, x, y):
            with torch.no_grad():
                teacher(x)
            loss = ce(m(x), y)
            for name, beta in zip(names, prm["betas"]):
                s, t = attention_map(s_tap.out[name], prm["p"]), attention_map(t_tap.out[name], prm["p"])
                loss = loss + beta * F.mse_loss(s, t)
            return loss

        steps = steps_per_epoch(splits.defender, prm["batch_size"])
        try:
            self.history = fit(
                model,
                splits.defender,
                nad_loss,
                epochs=prm["epochs"],
                batch_size=prm["batch_size"],
                optimizer=sgd(prm["lr"], prm["momentum"], prm["weight_decay"]),
                scheduler=step_lr(prm["milestones"], prm["lr_decay"], steps) if prm["milestones"] else "none",
                augmentation=prm["augmentation"],
                seed=seed + 1,
                device=device,
                desc="nad student",
            )
        finally:
            t_tap.remove()
            s_tap.remove()
        return model
