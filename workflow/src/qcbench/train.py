"""The one training loop. Attacks and defenses supply a loss function (and optionally a hook run
after every optimizer step); this module owns batching, augmentation, optimizers, schedules,
best-checkpoint selection and the progress bar."""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable

import torch
from torch import nn

from qcbench.data import ImageSet, augment
from qcbench.progress import progress
from qcbench.triggers.base import float32_region  # noqa: F401  (re-exported: a float32 block inside fit's autocast)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def make_optimizer(params, name: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.9):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer {name!r} not in ('adam', 'sgd')")


def set_bn_eval(model: nn.Module) -> None:
    """Freeze BatchNorm running statistics (affine parameters still train)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def use_channels_last(model: nn.Module, channels_last: bool) -> bool:
    """Whether :func:`fit` trains in channels-last memory format: only when asked for and the model
    has 2-d convolutions. Off by default: ~1.3x faster for ``resnet_tiny`` on one CPU thread, but the
    changed summation order flipped the outcome of the tiny Qu-ANTI-zation test (README, Benchmarks).

    Also off for models with a strided 1x1 convolution whose input channels are neither 1 nor a
    multiple of 8: the channels-last CPU backward of such a convolution corrupts the heap in torch
    2.14.1 on an AVX2-only AMD EPYC (bus error / ``free(): invalid size``; measured 2026-12-02 for
    2, 4 and 6 input channels, e.g. ``resnet_tiny`` at width 4), see :func:`_channels_last_safe`."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return bool(channels_last) and bool(convs) and all(_channels_last_safe(m) for m in convs)


def _channels_last_safe(conv: nn.Conv2d) -> bool:
    strided_1x1 = tuple(conv.kernel_size) == (1, 1) and max(conv.stride) > 1
    return not strided_1x1 or conv.in_channels == 1 or conv.in_channels % 8 == 0


AMP_MODES = ("fp32", "bf16", "auto")


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively (faster than float32): a CUDA device
    with bf16 support, or a CPU with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(amp: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting: ``fp32`` none, ``bf16`` bfloat16, ``auto``
    bfloat16 where :func:`bf16_native` holds, else none (float32)."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp is {amp!r}, not one of {AMP_MODES}")
    if amp == "bf16" or (amp == "auto" and bf16_native(device)):
        return torch.bfloat16
    return None


def _has_quantizers(model: nn.Module) -> bool:
    from qcbench.quant import quant_modules

    return next(quant_modules(model), None) is not None


def steps_per_epoch(n: int, batch_size: int, samples_per_epoch: int | None = None) -> int:
    """Optimizer steps :func:`fit` takes per epoch on ``n`` samples (capped by ``samples_per_epoch``)."""
    return math.ceil(min(samples_per_epoch or n, n) / batch_size)


def fit(
    model: nn.Module,
    data: ImageSet,
    loss_fn: LossFn,
    *,
    epochs: int,
    batch_size: int,
    optimizer: dict,
    seed: int,
    device: torch.device | str = "cpu",
    scheduler: str | Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] = "none",
    augmentation: dict | None = None,
    samples_per_epoch: int | None = None,
    bn_eval: bool = False,
    eval_mode: bool = False,
    keep_best: str | Callable[[nn.Module], float] | None = None,
    params=None,
    after_step: Callable[[nn.Module], None] | None = None,
    desc: str = "train",
    channels_last: bool = False,
    amp: str = "fp32",
) -> list[float]:
    """Train ``model`` in place; return the mean loss of every epoch.

    ``loss_fn(model, x, y)`` receives a float batch in [0, 1] (augmented when ``augmentation``
    is set, e.g. ``{"pad": 2, "flip": True}``) and returns a scalar loss. ``bn_eval`` freezes
    BatchNorm statistics; ``eval_mode`` keeps the whole model in eval mode (BN and dropout
    frozen, PQBackdoor's stage 2). ``keep_best="loss"``
    restores the weights of the epoch with the lowest mean training loss (Qu-ANTI-zation's rule);
    a callable ``keep_best(model) -> score`` is called after every epoch (the model in eval mode)
    and the weights of the epoch with the highest score are restored, the earliest on ties
    (PQBackdoor's stage 2: validation accuracy).
    ``scheduler`` is ``"none"``, ``"cosine"`` (annealed to 0 over all steps) or a callable
    ``optimizer -> LRScheduler``; either scheduler is stepped after every optimizer step.
    ``channels_last`` (see :func:`use_channels_last`) trains in that memory format (parameters keep
    their identity; the model is handed back in the default contiguous format). The arithmetic is the
    same; only the summation order inside the convolutions differs, so losses agree to float rounding.
    ``amp`` (:func:`autocast_dtype`) runs the loss under bfloat16 autocast: convolutions and matrix
    products in bf16, weights, gradients and optimizer state in float32 (1.7x a step for
    ``resnet_tiny`` on one AVX512-BF16 core, README, Benchmarks). Only for full-precision training:
    a model with fake quantizers is refused, since bf16's 8-bit mantissa is as coarse as the int8
    grid a simulated quantizer models. Evaluation always runs in float32.
    """
    amp_dtype = autocast_dtype(amp, device)
    if amp_dtype is not None and _has_quantizers(model):
        raise ValueError(
            f"amp is {amp!r}: mixed precision is for full-precision training only (this model is fake-quantized)"
        )
    dev_type = torch.device(device).type
    if amp != "fp32":
        chosen = "bfloat16 autocast" if amp_dtype is not None else "float32 (no native bf16 here)"
        print(f"{desc}: amp={amp} -> {chosen} on {dev_type}", file=sys.stderr, flush=True)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cl = use_channels_last(model, channels_last)
    if cl:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(params if params is not None else model.parameters(), **optimizer)
    steps = steps_per_epoch(len(data), batch_size, samples_per_epoch)
    sched = None
    if callable(scheduler):
        sched = scheduler(opt)
    elif scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps))
    history: list[float] = []
    best, best_state = math.inf, None
    for epoch in range(epochs):
        model.train(not eval_mode)
        if bn_eval:
            set_bn_eval(model)
        total, count = 0.0, 0
        bar = progress(
            data.batches(batch_size, shuffle=True, generator=g, limit=samples_per_epoch),
            total=steps,
            desc=f"{desc} {epoch + 1}/{epochs}",
            leave=False,
        )
        for x, y in bar:
            if augmentation:
                x = augment(x, g, **augmentation)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cl and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
            if sched is not None:
                sched.step()
            total += loss.item() * len(y)
            count += len(y)
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        history.append(total / max(count, 1))
        print(f"{desc} epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f}", file=sys.stderr, flush=True)
        if callable(keep_best):
            model.eval()
            score = -float(keep_best(model))  # lower is better below, as for the loss
        else:
            score = history[-1] if keep_best == "loss" else math.inf
        if score < best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    if cl:
        model.to(memory_format=torch.contiguous_format)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def precise_bn(model: nn.Module, batches, device: torch.device | str = "cpu") -> nn.Module:
    """Re-estimate every BatchNorm's running statistics with the final weights: a cumulative
    (not exponential) average over ``batches`` (float tensors, or ``(x, y)`` pairs), through
    :func:`torch.optim.swa_utils.update_bn` ("precise BN", Wu & Johnson, *Rethinking Batch in
    BatchNorm*, 2021). Training's exponential averages (momentum 0.1) describe the weights of the
    last ~20 steps; when those still move fast they can miss the final weights badly. Measured on
    the local default's ISSBA backdoor (2026-12-03, AMD EPYC, float32): the model as trained gave
    BA 15.6 % in eval mode (train-mode BN on clean test batches: 90.5 %), and re-estimating the
    statistics on its own poisoned training mixture gave BA 91.2 / ASR 96.7 %. Weights are not
    touched; the model keeps its train/eval mode."""
    was_training = model.training
    torch.optim.swa_utils.update_bn(batches, model, device=torch.device(device))
    model.train(was_training)
    return model


def stage_kwargs(p: dict) -> dict:
    """The :func:`fit` arguments a config stage/attack entry carries (epochs, batch size,
    optimizer, scheduler, samples per epoch, channels-last, mixed precision)."""
    return {
        "epochs": p["epochs"],
        "batch_size": p["batch_size"],
        "optimizer": p["optimizer"],
        "scheduler": p.get("scheduler", "none"),
        "samples_per_epoch": p.get("samples_per_epoch"),
        "channels_last": bool(p.get("channels_last", False)),
        "amp": p.get("amp", "fp32"),
    }


def train_clean(model: nn.Module, data: ImageSet, cfg: dict, seed: int, device="cpu") -> list[float]:
    """Ordinary supervised training of the clean model (cross-entropy)."""
    ce = nn.CrossEntropyLoss()
    return fit(
        model,
        data,
        lambda m, x, y: ce(m(x), y),
        seed=seed,
        device=device,
        augmentation=cfg.get("augmentation"),
        desc="clean",
        **stage_kwargs(cfg),
    )
