"""PDA as a plug-in for FP-level defenses (LAC paper, Table 6): NAD and FT-SAM run on defender
images first moved by PDA.

PDA (:func:`qcbench.defenses.lac.pda`, reused unchanged) takes signed steps that lower
D = Σ_BN [‖μ_run − μ‖² + ‖σ_run − σ‖²] / B — here summed over *every* BatchNorm of the
backdoored FP model (the whole model is one "unit") — while staying within ``gamma`` of the
image in L∞ (``pda_iterations`` steps of ``pda_alpha``, halved at upstream's fixed iterations
250, 500, 1000, …: :data:`~qcbench.defenses.lac.PDA_HALVINGS`; σ² the unbiased variance). The
images are moved in the model's input space ([0, 1] pixels, before its Normalize layer), in
batches of ``pda_batch_size``, with the model in eval mode (BN running statistics as the
reference); the labels are kept. The defense then trains on the adjusted images exactly as it would on the clean
ones. The adjusted set is kept in float (×255, as :class:`~qcbench.data.ImageSet` stores pixel
values), because a uint8 round trip would erase a γ = 1e-3 perturbation.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from qcbench.data import ImageSet, Splits
from qcbench.defenses.base import register_defense
from qcbench.defenses.ftsam import FTSAM
from qcbench.defenses.lac import pda
from qcbench.defenses.nad import NAD
from qcbench.defenses.units import Unit


def whole_model_unit(model: nn.Module) -> Unit:
    """The whole model as one PDA unit: its forward, and every BatchNorm2d."""
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    unit = Unit(modules=[], bns=bns)
    unit.forward = lambda m, x: m(x)  # type: ignore[method-assign]
    return unit


def pda_images(
    model: nn.Module, images: ImageSet, iterations: int, gamma: float, alpha: float, batch_size: int, device
) -> ImageSet:
    """``images`` moved by PDA on ``model`` (float pixel values in [0, 255], labels unchanged)."""
    was_training = model.training
    model.eval()
    unit = whole_model_unit(model)
    out = []
    for x, _ in images.batches(batch_size):
        out.append(pda(model, unit, x.to(device), iterations, gamma, alpha).cpu())
    model.train(was_training)
    return ImageSet(torch.cat(out).mul_(255.0), images.y.clone())


class _PDAPlugin:
    """Mixin: PDA-adjust the defender subset, then run the wrapped defense's ``purify``."""

    def __init__(self, pda_iterations=500, gamma=1e-3, pda_alpha=1e-3, pda_batch_size=256, **defense) -> None:
        super().__init__(**defense)
        self.pda_params = {
            "iterations": pda_iterations,
            "gamma": gamma,
            "alpha": pda_alpha,
            "batch_size": pda_batch_size,
        }

    def purify(self, model: nn.Module, splits: Splits, *, seed: int, device) -> nn.Module:
        torch.manual_seed(seed)
        adjusted = pda_images(model, splits.defender, device=device, **self.pda_params)
        shift = (adjusted.x - splits.defender.x.float()).abs().max().item() / 255.0
        self.pda_log = {"images": len(adjusted), "max_shift": shift}
        return super().purify(model, dataclasses.replace(splits, defender=adjusted), seed=seed, device=device)


@register_defense("nad_pda")
class NADPDA(_PDAPlugin, NAD):
    """NAD on PDA-adjusted defender images (Table 6)."""

    label = "NAD + PDA"


@register_defense("ftsam_pda")
class FTSAMPDA(_PDAPlugin, FTSAM):
    """FT-SAM on PDA-adjusted defender images (Table 6)."""

    label = "FT-SAM + PDA"
