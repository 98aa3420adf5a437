"""The defense registry and base classes.

A defense is a class registered with :func:`register_defense`: its ``label`` is its row label in
the tables, its constructor's keyword parameters are its config keys, their defaults the upstream
paper's setting (:func:`defaults_of`). The modules document their keys; these recur:
``epochs``, ``iterations`` (optimisation length: epochs over the defender subset, or steps),
``batch_size``, ``lr``, ``momentum``, ``weight_decay`` (SGD's), ``augmentation`` (training
augmentation of the defender images: ``{pad, flip}`` or null), ``calib_batches`` (cached
calibration batches of a layer-wise defense) and ``early_stop`` (a layer-wise unit's convergence
rule, :mod:`qcbench.defenses.layerwise`).
"""

from __future__ import annotations

import abc
import copy

from torch import nn

from qcbench._registry import Registry
from qcbench.data import Splits
from qcbench.quant import CALIB_BATCH_SIZE, CALIB_IMAGES, quantize_calibrated

DEFENSES = Registry("defense")
register_defense = DEFENSES.register


def init_params(local_vars: dict) -> dict:
    """A constructor's keyword arguments from its ``locals()`` (taken first thing in ``__init__``):
    defenses spell out their parameters in the signature, which the config check binds against,
    and store them in ``self.params`` without repeating each name."""
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__")}


class Defense(abc.ABC):
    """Base class: :meth:`run` returns the defended *quantized* model (same scheme as ``qmodel``).
    ``no_defense``: the entry defends nothing (``requantize``); its row is a no-defense cell, the
    DER reference of the defenses in its scheme (:func:`qcbench.plan.der_reference`)."""

    no_defense: bool = False

    def __init__(self, **params) -> None:
        self.params = params

    @abc.abstractmethod
    def run(self, fp_model: nn.Module, qmodel: nn.Module, splits: Splits, *, seed: int, device) -> nn.Module:
        """Return the defended quantized model."""


class FPDefense(Defense):
    """A defense that purifies the *full-precision* model (the mitigation baselines of LAC's
    Tables 1-2: FT, FP, MCR, NAD, I-BAU, FT-SAM). The pipeline purifies with :meth:`purify`
    (the ``defend_fp`` stage) and quantizes the purified model like any FP model (the quantize
    stage, calibrated as ``quant:`` says). :meth:`run` does both at once, as the LAC paper
    evaluates them: it deep-copies ``fp_model``, purifies it, then quantizes the result with the
    cell's scheme (``qmodel.qcbench_scheme``), calibrated on the first ``calib_images`` defender
    images in batches of ``calib_batch_size`` (:func:`qcbench.quant.quantize_calibrated`)."""

    @abc.abstractmethod
    def purify(self, model: nn.Module, splits: Splits, *, seed: int, device) -> nn.Module:
        """Purify ``model`` (a private copy, on ``device``) and return the purified FP model."""

    def run(
        self,
        fp_model: nn.Module,
        qmodel: nn.Module,
        splits: Splits,
        *,
        seed: int,
        device,
        calib_images: int = CALIB_IMAGES,
        calib_batch_size: int = CALIB_BATCH_SIZE,
    ) -> nn.Module:
        model = copy.deepcopy(fp_model).to(device)
        model = self.purify(model, splits, seed=seed, device=device).eval()
        calib = {"images": calib_images, "batch_size": calib_batch_size, "device": device}
        return quantize_calibrated(model, qmodel.qcbench_scheme, splits.defender, **calib)


def is_fp_defense(method: str) -> bool:
    """Does the registered defense ``method`` purify the FP model (quantized afterwards)?"""
    cls = DEFENSES.get(method)
    return isinstance(cls, type) and issubclass(cls, FPDefense)


def is_no_defense(method: str) -> bool:
    """Is the registered defense ``method`` no defense (its row a no-defense cell)?"""
    return method in DEFENSES and bool(getattr(DEFENSES.get(method), "no_defense", False))


def create_defense(method: str, params: dict) -> Defense:
    defense = DEFENSES.create(method, **params)
    defense.name = method
    return defense


def defaults_of(method: str) -> dict:
    """Every keyword parameter of the registered defense ``method`` with its default (the paper's
    setting), gathered along the MRO while constructors pass ``**kwargs`` on to their parents."""
    import inspect

    out: dict = {}
    for cls in DEFENSES.get(method).__mro__:
        init = vars(cls).get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD:
                if p.name != "self" and p.default is not p.empty:  # a tuple default as YAML gives it
                    default = list(p.default) if isinstance(p.default, tuple) else p.default
                    out.setdefault(p.name, copy.deepcopy(default))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out
