"""Benign accuracy, attack success rate (with and without target-class images) and DER."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from qcbench.data import ImageSet


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device="cpu", transform=None) -> torch.Tensor:
    """Predicted labels for uint8 images ``x``; ``transform`` (e.g. a trigger) acts on [0, 1] floats.

    Each batch is its own forward pass, so dynamic-range quantizers see clean and triggered
    batches separately (as Qu-ANTI-zation evaluates). Models with float convolutions run as a
    channels-last copy (about 2x the CPU throughput of a small ResNet; ``model`` itself keeps its
    memory format, so training after an evaluation is unchanged); predictions can differ from the
    contiguous model's only through float summation order."""
    model.eval()
    fmt = None
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        fmt = torch.channels_last
        model = copy.deepcopy(model).to(memory_format=fmt)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].float().div_(255.0)
        if transform is not None:
            xb = transform(xb)
        xb = xb.to(device)
        if fmt is not None:
            xb = xb.contiguous(memory_format=fmt)
        out.append(model(xb).argmax(1).cpu())
    return torch.cat(out)


# Default inference batch: on CPU 128 keeps each activation in cache (1.4-1.6x the images/s of 500
# for resnet_tiny); configs set eval.batch_size per scale.
EVAL_BATCH = 128


def evaluate(
    model: nn.Module, test: ImageSet, trigger, target: int | None, batch_size: int = EVAL_BATCH, device="cpu"
) -> dict:
    """BA on the clean test set; ``asr`` on triggered images whose label is not the target
    (BackdoorBench, CompArtifact tables, LAC/EFRAP); ``asr_all`` on every triggered image
    (Qu-ANTI-zation, PQBackdoor). Percentages."""
    pred = predict(model, test.x, batch_size, device)
    res = {"ba": 100.0 * (pred == test.y).float().mean().item(), "n_test": len(test)}
    if trigger is None or target is None:
        return res | {"asr": math.nan, "asr_all": math.nan}
    tpred = predict(model, test.x, batch_size, device, transform=trigger)
    res["asr_all"] = 100.0 * (tpred == target).float().mean().item()
    res["asr"] = _asr(tpred, test.y, target)
    return res


def _asr(tpred: torch.Tensor, y: torch.Tensor, target: int) -> float:
    """Percent of the triggered images whose label is not ``target`` predicted as ``target``."""
    keep = y != target
    return 100.0 * (tpred[keep] == target).float().mean().item() if keep.any() else math.nan


def natural_rates(
    model: nn.Module, test: ImageSet, trigger, batch_size: int = EVAL_BATCH, device="cpu", classes: int | None = None
) -> list[float]:
    """For every class t, the ASR a backdoor with target t would score on ``model`` (percent of the
    triggered images whose label is not t that are predicted as t). On a clean model this is where
    a defense that restores clean behaviour (as LAC does) lands; a defense that departs from it,
    such as EFRAP, can go lower. One triggered pass serves every class."""
    tpred = predict(model, test.x, batch_size, device, transform=trigger)
    n = classes if classes is not None else int(max(test.y.max(), tpred.max())) + 1
    return [_asr(tpred, test.y, t) for t in range(n)]


def der(ba_nodef: float, asr_nodef: float, ba_def: float, asr_def: float) -> float:
    """Defense effectiveness rating in percent: [max(0, ΔASR) − max(0, ΔBA) + 1] / 2 with Δ the
    drop from the undefended model (BackdoorBench's ``defense_effectiveness_rate_simplied``)."""
    return 100.0 * (max(0.0, asr_nodef - asr_def) / 100.0 - max(0.0, ba_nodef - ba_def) / 100.0 + 1.0) / 2.0
