from __future__ import annotations

import abc
import math
from collections.abc import Mapping

import torch
from torch import nn

from qcbench._registry import Registry
from qcbench.data import Splits
from qcbench.triggers import create_trigger

ATTACKS = Registry("attack")
register_attack = ATTACKS.register

#: config keys every attack entry may carry (the schema's ``attacks.<name>`` properties that are
#: not specific to one method; ``bits`` also restricts the cells, see :func:`cell_bits`)
COMMON_KEYS = frozenset(
    "method target trigger scheme epochs batch_size optimizer scheduler samples_per_epoch "
    "augmentation channels_last per_dataset init bits".split()
)
#: the ``init`` values that name no attack (any other value is an attack entry's name)
BUILT_IN_INITS = frozenset({"clean", "scratch"})


class Attack(abc.ABC):
    """Base class. Subclasses set ``scheme`` (the registered quantization scheme family they are
    built against: their no-defense cells are quantized with it) and implement :meth:`run`."""

    scheme: str | None = "qa"
    #: where training starts unless the config's ``init`` says otherwise: ``clean`` (the clean
    #: model of the same seed) or ``scratch`` (fresh weights; the clean model is then not needed);
    #: ``init`` may also name another attack entry (:func:`init_source`)
    default_init: str = "clean"
    #: the method-specific config keys this class reads (besides :data:`COMMON_KEYS`); subclasses
    #: inherit their parents' (see :meth:`accepted_keys`)
    config_keys: frozenset[str] = frozenset()

    def __init__(self, target: int, trigger: dict, image_size: int, scheme: str | None = None, **params) -> None:
        self.target = target
        self.trigger_spec = trigger
        self.trigger = create_trigger(trigger, image_size)
        if scheme is not None:
            self.scheme = scheme
        self.params = params

    def describe(self) -> dict:
        """What evaluation needs to know of the attack; stored in every descendant model's metadata."""
        return {"name": self.name, "target": self.target, "trigger": self.trigger_spec, "scheme": self.scheme}

    @classmethod
    def init_of(cls, params: dict) -> str:
        """Where an attack configured with ``params`` starts: its ``init``, else the default."""
        return params.get("init", cls.default_init)

    @classmethod
    def accepted_keys(cls) -> frozenset[str]:
        """Every config key an entry of this method may carry."""
        own = (vars(k).get("config_keys", frozenset()) for k in cls.__mro__)
        return COMMON_KEYS.union(*own)

    @classmethod
    def param_errors(cls, params: dict) -> dict[str, str]:
        """Problems a config entry of this method has that the schema cannot see, by key (the
        config check reports them before any job runs; :meth:`run` may refuse the same)."""
        return {}

    def check_params(self) -> None:
        """Refuse, naming the attack, the first problem :meth:`param_errors` reports (for an
        attack run outside the workflow, whose config check would have caught it)."""
        for key, problem in self.param_errors(self.params).items():
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
    """The bit widths of the main grid (``run.bits``) at which an attack gets cells: those it
    declares in ``bits`` (the widths it trains against, e.g. a CompArtifact built for 4 bits), else
    all of them (PQBackdoor, BadNets: no ``bits``)."""
    declared = params.get("bits")
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
