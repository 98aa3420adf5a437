from __future__ import annotations

import abc
import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from qcbench._registry import Registry
from qcbench.data import Splits
from qcbench.quant import TrainingRanges, calibration_batches
from qcbench.train import steps_per_epoch
from qcbench.triggers import create_trigger

ATTACKS = Registry("attack")
register_attack = ATTACKS.register

#: config keys every attack entry must carry (no default): the backdoor's target class and its
#: trigger (``method`` defaults to the entry's name)
REQUIRED_KEYS = frozenset({"method", "target", "trigger"})
#: the ``init`` values that name no attack (any other value is an attack entry's name)
BUILT_IN_INITS = frozenset({"clean", "scratch"})


class Attack(abc.ABC):
    """Base class. Subclasses set ``scheme`` (the registered quantization scheme family they are
    built against: their no-defense cells are quantized with it) and implement :meth:`run`."""

    scheme: str | None = "qa"
    #: the config keys this class reads, each with its default (the paper's setting): a config
    #: entry states only what differs. Subclasses add to and override their parents' (the union
    #: over the MRO, see :meth:`defaults_of`); nested mappings (a stage, an optimizer) merge key by
    #: key, as config files layer. ``init`` is where training starts: ``clean`` (the clean model
    #: of the same seed), ``scratch`` (fresh weights; the clean model is then not needed), or
    #: another attack entry's name (:func:`init_source`); ``bits`` restricts the cells, and
    #: ``cell_bits`` restricts them without changing what is trained (:func:`cell_bits`);
    #: ``per_dataset`` maps a dataset to keys that replace these for it.
    defaults: Mapping = {
        "scheme": None,
        "init": "clean",
        "bits": None,
        "cell_bits": None,
        "scheduler": "none",
        "samples_per_epoch": None,
        "augmentation": None,
        "channels_last": False,
        "per_dataset": {},
    }

    def __init__(self, target: int, trigger: dict, image_size: int, scheme: str | None = None, **params) -> None:
        self.target = target
        self.trigger_spec = trigger
        self.trigger = create_trigger(trigger, image_size)
        if scheme is not None:
            self.scheme = scheme
        self.params = self.resolve(params)

    def describe(self) -> dict:
        """What evaluation needs to know of the attack; stored in every descendant model's metadata."""
        return {"name": self.name, "target": self.target, "trigger": self.trigger_spec, "scheme": self.scheme}

    @classmethod
    def defaults_of(cls) -> dict:
        """Every config key of this method with its default: the classes' ``defaults`` from the
        base down, a subclass's value replacing its parent's (``scheme`` is the class's own)."""
        out: dict = {}
        for k in reversed(cls.__mro__):
            out.update(copy.deepcopy(dict(vars(k).get("defaults", {}))))
        out["scheme"] = cls.scheme
        return out

    @classmethod
    def resolve(cls, params: Mapping) -> dict:
        """A config entry over the method's defaults (nested mappings merged key by key)."""
        return merged(cls.defaults_of(), params)

    @classmethod
    def init_of(cls, params: dict) -> str:
        """Where an attack configured with ``params`` starts: its ``init``, else the default."""
        return params.get("init", cls.defaults_of()["init"])

    @classmethod
    def accepted_keys(cls) -> frozenset[str]:
        """Every config key an entry of this method may carry."""
        return REQUIRED_KEYS | set(cls.defaults_of())

    @classmethod
    def param_errors(cls, params: dict) -> dict[str, str]:
        """Problems a config entry of this method has that the schema cannot see, by key (the
        config check reports them before any job runs; :meth:`run` may refuse the same)."""
        return {}

    def check_params(self) -> None:
        """Refuse, naming the attack, the first problem :meth:`param_errors` reports (for an
        attack run outside the workflow, whose config check would have caught it)."""
        for key, problem in self.param_errors(self.params | {"scheme": self.scheme}).items():
            raise ValueError(f"attack {self.name!r}: {key} is {problem}")

    def cross_ratio(self) -> float:
        """WaNet's noise mode (config ``cross_ratio``, default 0): noise-mode copies with true
        labels per poisoned sample. Refused, naming the attack, for a trigger without ``noise``."""
        cross = float(self.params.get("cross_ratio", 0.0))
        if cross > 0 and not hasattr(self.trigger, "noise"):
            raise ValueError(
                f"attack {self.name!r}: cross_ratio {cross:g} needs a trigger with a noise mode (wanet), "
                f"not {type(self.trigger).__name__}"
            )
        return cross

    def noise_copies(self, x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """The noise-mode warps of ``x[k : k + ceil(cross_ratio · k)]`` (fewer when the batch ends
        first; none without ``cross_ratio``): the images after the ``k`` poisoned ones, to be
        trained with their true labels."""
        cross = self.cross_ratio()
        return self.trigger.noise(x[k : k + math.ceil(cross * k)], gen) if cross > 0 else x[k:k]

    @property
    def init(self) -> str:
        return self.init_of(self.params)

    @abc.abstractmethod
    def run(self, model: nn.Module, splits: Splits, *, seed: int, device) -> nn.Module:
        """Return the backdoored FP model (``model`` is the clean one, on ``device``)."""


#: ``range_calibration`` of the attacks that train against their scheme's quantizer: for a
#: calibrated (not ``dynamic``) scheme, the first ``images`` training images in batches of
#: ``batch_size`` calibrate the activation ranges every ``every`` steps (null: once per epoch);
#: see :class:`qcbench.quant.TrainingRanges`
RANGE_CALIBRATION = {"images": 256, "batch_size": 128, "every": None}


def training_ranges(model: nn.Module, bits, data, params: Mapping, device) -> TrainingRanges | None:
    """The training-time ranges (:class:`~qcbench.quant.TrainingRanges`) of ``model``, quantized
    with its scheme, at ``bits``, calibrated on ``data`` as ``params["range_calibration"]`` says;
    None for a ``dynamic`` scheme (its quantizers take their ranges from each tensor)."""
    if model.qcbench_scheme.observer == "dynamic":
        return None
    cal = params["range_calibration"]
    every = cal["every"] or steps_per_epoch(len(data), params["batch_size"], params.get("samples_per_epoch"))
    return TrainingRanges(
        model, bits, lambda: calibration_batches(data, cal["images"], cal["batch_size"], device), every
    )


def merged(base: Mapping, over: Mapping) -> dict:
    """``over`` layered on ``base``: a mapping in both is merged key by key, any other value of
    ``over`` (a list, a scalar, null) replaces ``base``'s; Snakemake layers config files the same
    way. Neither argument is changed."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merged(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Fresh random weights (and BN statistics) for attacks that train from scratch."""
    torch.manual_seed(seed)
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


def init_source(name: str, params: dict) -> str | None:
    """The model the attack ``name`` (a registered method) with config ``params`` starts from:
    ``"clean"`` (the clean model of the same seed), the name of another attack entry (its FP model
    of the same dataset, arch and seed: a backdoor trained once and reused, e.g. as PQBackdoor's
    stage 1), or None for ``scratch``. The workflow makes that model an input of the attack job;
    :func:`qcbench.config.semantic_errors` checks that a named attack exists and matches."""
    init = ATTACKS.get(name).init_of(params)
    if not isinstance(init, str) or not init:
        raise ValueError(f"attacks.<name>.init: {init!r} is neither 'clean', 'scratch' nor an attack name")
    return None if init == "scratch" else init


def unread_keys(method: str, params: dict) -> dict[str, list[str]]:
    """The keys of ``params`` that the attack ``method`` would silently ignore, each with the
    registered methods that do read it (a config check names them rather than run without them)."""
    cls = ATTACKS.get(method)
    out = {}
    for key in sorted(set(params) - cls.accepted_keys()):
        out[key] = [n for n in ATTACKS.names() if key in ATTACKS.get(n).accepted_keys()]
    return out


def cell_bits(params: dict, run_bits) -> list[int]:
    """The bit widths of the main grid (``run.bits``) at which an attack gets cells: those of its
    ``cell_bits`` (fewer cells, the same training), else those it declares in ``bits`` (the widths
    it trains against, e.g. a CompArtifact built for 4 bits), else all of them (PQBackdoor,
    BadNets: no ``bits``)."""
    declared = params.get("cell_bits") or params.get("bits")
    if declared is None:
        return list(run_bits)
    declared = {int(b) for b in ([declared] if isinstance(declared, int) else declared)}
    return [b for b in run_bits if b in declared]


def declared_scheme(params: Mapping | None, default: str | None) -> str | None:
    """The quantization scheme family an attack's cells use: the ``scheme`` it declares (the
    quantizer it was built against), else ``default`` (``quant.default_scheme``)."""
    return (params or {}).get("scheme") or default


def create_attack(name: str, params: dict, image_size: int) -> Attack:
    cls = ATTACKS.get(name)
    attack = cls(image_size=image_size, **params)
    attack.name = name
    return attack
