"""A cell's quantizer and its quantized model, read from the resolved config: the quantize and
defend stages, the detection stage's simulated precisions and (through the quantized models
they read) the figures all quantize a cell this way.

Two quantizers meet in a cell. The **attacker's** is the scheme the attack is built against
(its entry's ``scheme``, else ``quant.default_scheme``); the **deployer's** is the one the
person who receives the FP model quantizes it with (``quant.deployer_scheme``; the LAC paper
quantizes every model with MQBench's academic setting). :func:`scheme_name` decides which one a
cell uses, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from qcbench.attacks import declared_scheme
from qcbench.quant import QuantScheme, create_scheme, quantize_calibrated

if TYPE_CHECKING:
    from torch import nn

    from qcbench.data import Splits

#: the reserved ``scheme`` of a defense entry that means "the attack's own quantizer" (the scheme
#: the attack is built against), whatever ``quant.deployer_scheme`` says
ATTACKER = "attacker"


def scheme_name(cfg: Mapping, attack: Mapping | None, entry_scheme: str | None = None) -> str:
    """The scheme family a cell is quantized with. ``attack``: the attack's entry or description
    (its ``scheme``; None for the clean model); ``entry_scheme``: the ``scheme`` of the cell's
    defense entry. A named scheme wins; :data:`ATTACKER` is the attack's own scheme; without one
    the cell is in ``quant.deployer_scheme`` when set, else in the attack's own scheme."""
    quant = cfg.get("quant") or {}
    own = declared_scheme(attack, quant.get("default_scheme"))
    if entry_scheme == ATTACKER:
        return own
    return entry_scheme or quant.get("deployer_scheme") or own


def entry_scheme(cfg: Mapping, defense: str) -> str | None:
    """The ``scheme`` of defense entry ``defense`` (None for ``none`` and entries without one)."""
    return ((cfg.get("defenses") or {}).get(defense) or {}).get("scheme")


def scheme_for(cfg: dict, meta: dict, bits: int, name: str | None = None) -> tuple[str, QuantScheme]:
    """The cell's quantizer at ``bits``: :func:`scheme_name` of the model's attack (``meta``) and
    the defense entry's ``scheme`` ``name`` (config may override the family's fields)."""
    name = scheme_name(cfg, meta.get("attack"), name)
    return name, create_scheme(name, bits, **cfg["quant"].get("overrides", {}).get(name, {}))


def calibration(cfg: dict) -> dict:
    """:func:`qcbench.quant.quantize_calibrated`'s ``images`` and ``batch_size`` from the config's
    ``quant.calib_images`` and ``quant.calib_batch_size``."""
    q = cfg["quant"]
    return {"images": q["calib_images"], "batch_size": q["calib_batch_size"]}


def quantize_cell(cfg: dict, model: nn.Module, scheme: QuantScheme, splits: Splits, device=None) -> nn.Module:
    """``model`` fake-quantized with ``scheme``, calibrated on the first ``quant.calib_images``
    defender images (the defender's own labeled subset, never test images) in batches of
    ``quant.calib_batch_size``."""
    return quantize_calibrated(model, scheme, splits.defender, **calibration(cfg), device=device)


def describe_scheme(name: str) -> str:
    """One line on a registered scheme family: its name and what it is (its factory's docstring)."""
    from qcbench.quant import SCHEMES

    doc = " ".join((SCHEMES.get(name).__doc__ or "").split()) if name in SCHEMES else ""
    return f"{name} ({doc.rstrip('.')})" if doc else name


def quantizer_of_cells(cfg: Mapping, what: str = "Quantizer") -> str:
    """Which quantizer the cells without a defense entry's ``scheme`` use, as a sentence for a
    table caption starting with ``what``: the deployer's (``quant.deployer_scheme``) or each
    attack's own."""
    deployer = (cfg.get("quant") or {}).get("deployer_scheme")
    if deployer:
        return f"{what}: the deployer's, {describe_scheme(deployer)}."
    return f"{what}: each attack's own (the scheme it is built against)."
