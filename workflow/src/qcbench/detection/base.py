"""What every detector shares: the registry, the inputs a detector may look at, its verdict,
the penultimate-feature hook and the models at each precision.

A detector sees a model (at one precision) and a :class:`DetectionInputs`. What it inspects
follows its canonical use (BackdoorBench): Neural Cleanse and fine-pruning only the model and
the defender's clean data; Activation Clustering and Spectral Signatures the model's training
data (poisoned as the attack poisoned it, clean for a clean model: :meth:`inspection_set`);
STRIP the inputs at test time, triggered ones included (:meth:`triggered_inputs`).
"""

from __future__ import annotations

import abc
import copy
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from qcbench._registry import Registry
from qcbench.data import ImageSet, Splits
from qcbench.metrics import EVAL_BATCH
from qcbench.quant import CALIB_BATCH_SIZE, CALIB_IMAGES, QuantScheme, quantize_calibrated

DETECTORS = Registry("detector")
register_detector = DETECTORS.register

STATUSES = ("detected", "not_detected", "could_not_run")
# fp32; int8 by PyTorch dynamic quantization (Blindspots: only Linear layers are converted and
# carry no gradient); int<b>_sim: qcbench.quant's fully quantized model (straight-through gradients)
PRECISION_RE = re.compile(r"^(fp32|int8_dynamic|int(\d+)_sim)$")


@dataclass
class Verdict:
    """A detector's decision on one model: ``score`` compared with ``threshold`` (the rule is the
    detector's own, stated in its docstring), and what it found (JSON-serialisable)."""

    detected: bool
    score: float
    threshold: float
    detail: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "detected" if self.detected else "not_detected"


@dataclass
class DetectionInputs:
    """The data around one model: the prepared splits, the attack's trigger and target (for a
    clean model: those of the attack it is compared with), the rate at which the model's training
    data was poisoned (0 for a clean model) and a seed."""

    splits: Splits
    trigger: object
    target: int
    poison_rate: float
    seed: int = 0

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(1000 * self.seed + offset)

    def clean(self, n: int | None = None, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` defender images (float in [0, 1]) and labels, a seeded sample."""
        d = self.splits.defender
        idx = torch.randperm(len(d), generator=self.generator(offset))[: n or len(d)]
        return d.x[idx].float().div(255.0), d.y[idx]

    def inspection_set(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` training images as the model was trained on them: a ``poison_rate`` share
        triggered and relabelled to the target (BadNets). Returns images, labels, poisoned mask."""
        train = self.splits.train
        idx = torch.randperm(len(train), generator=self.generator(1))[: min(n, len(train))]
        x, y = train.x[idx].float().div(255.0), train.y[idx].clone()
        k = round(self.poison_rate * len(idx))
        poisoned = torch.zeros(len(idx), dtype=torch.bool)
        poisoned[:k] = True
        if k:
            x[:k] = self.trigger(x[:k])
            y[:k] = self.target
        return x, y, poisoned

    def triggered_inputs(self, n: int) -> torch.Tensor:
        """``n`` triggered test images whose label is not the target."""
        test = self.splits.test
        pool = torch.nonzero(test.y != self.target).flatten()
        idx = pool[torch.randperm(len(pool), generator=self.generator(2))[:n]]
        return self.trigger(test.x[idx].float().div(255.0))


class Detector(abc.ABC):
    """Base class. ``gradient_based`` detectors differentiate through the model (they cannot run
    on PyTorch's dynamically quantized modules, which carry no gradient)."""

    gradient_based = False

    def __init__(self, **params) -> None:
        self.params = params

    @abc.abstractmethod
    def detect(self, model: nn.Module, inputs: DetectionInputs) -> Verdict:
        """Decide whether ``model`` (eval mode, CPU) carries a backdoor."""


class NoGradientError(RuntimeError):
    """The model's output carries no gradient with respect to its input."""


def require_input_gradient(model: nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`NoGradientError` unless ``model``'s output has a nonzero gradient with
    respect to its input. PyTorch's dynamically quantized modules have no autograd kernel: the
    backward pass silently yields no gradient (with only a UserWarning), so a gradient-based
    detector would optimise against a constant and report "not detected" — the Blindspots
    artifact this check turns into "could not run"."""
    import warnings

    probe = x[:2].clone().requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model(probe)
        grad = None
        if out.requires_grad:
            (grad,) = torch.autograd.grad(out.float().sum(), probe, allow_unused=True)
    if grad is None or not bool(torch.any(grad != 0)):
        quantized = sorted({type(m).__module__ + "." + type(m).__name__ for m in model.modules()
                            if "quantized" in type(m).__module__})  # fmt: skip
        why = [str(w.message).split(".")[0] for w in caught if "autograd" in str(w.message)]
        raise NoGradientError(
            "the model's output carries no gradient w.r.t. its input"
            + (f" (non-differentiable modules: {', '.join(quantized)})" if quantized else "")
            + (f"; torch: {why[0]}" if why else "")
        )


def create_detector(method: str, params: dict) -> Detector:
    det = DETECTORS.create(method, **params)
    det.name = method
    return det


LINEAR_TYPES: tuple[type, ...] = (nn.Linear, torch.ao.nn.quantized.dynamic.Linear)


def final_linear(model: nn.Module) -> nn.Module:
    """The classifier (the last linear module, float, simulated or dynamically quantized)."""
    mods = [m for m in model.modules() if isinstance(m, LINEAR_TYPES)]
    if not mods:
        raise ValueError(f"{type(model).__name__} has no linear layer to read penultimate features from")
    return mods[-1]


@torch.no_grad()
def penultimate(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """The classifier's input (pooled last-stage features) for images ``x``."""
    feats: list[torch.Tensor] = []
    h = final_linear(model).register_forward_pre_hook(lambda _m, a: feats.append(a[0].detach().flatten(1)))
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    finally:
        h.remove()
    return torch.cat(feats).float()


def mad_anomaly(values: torch.Tensor) -> torch.Tensor:
    """Neural Cleanse's anomaly index |v - median| / (1.4826 MAD) of each value."""
    values = values.double()
    med = torch.quantile(values, 0.5)  # the mean of the two middle values, as numpy's median
    mad = torch.quantile((values - med).abs(), 0.5) * 1.4826
    return (values - med).abs() / mad.clamp_min(1e-12)


def check_precision(precision: str) -> int | None:
    """The simulated bit width of ``precision`` (None for fp32 / int8_dynamic); raises on unknown names."""
    m = PRECISION_RE.match(precision)
    if not m:
        raise ValueError(f"unknown precision {precision!r}: use fp32, int8_dynamic or int<bits>_sim")
    return int(m.group(2)) if m.group(2) else None


def at_precision(
    model: nn.Module,
    precision: str,
    scheme: QuantScheme | None = None,
    calib: ImageSet | None = None,
    *,
    images: int = CALIB_IMAGES,
    batch_size: int = CALIB_BATCH_SIZE,
) -> nn.Module:
    """``model`` at one precision: as is (``fp32``); PyTorch dynamic int8 quantization of
    {Linear, Conv2d} as Blindspots calls it (``int8_dynamic``: PyTorch converts only the Linear
    layers); or qcbench's simulated fully quantized model (``int<b>_sim``) with ``scheme``,
    calibrated on the first ``images`` images of ``calib`` in batches of ``batch_size``
    (:func:`qcbench.quant.quantize_calibrated`). Always a copy, on the CPU, in eval mode."""
    bits = check_precision(precision)
    model = copy.deepcopy(model).cpu().eval()
    if precision == "fp32":
        return model
    if precision == "int8_dynamic":
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.Conv2d}, dtype=torch.qint8).eval()
    if scheme is None or scheme.weight_bits != bits:
        raise ValueError(f"precision {precision!r} needs a {bits}-bit quantization scheme, got {scheme}")
    return quantize_calibrated(model, scheme, calib, images=images, batch_size=batch_size)
