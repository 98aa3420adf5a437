"""A cell's quantizer and its quantized model, read from the resolved config: the quantize and
defend stages and the detection stage's simulated precisions all quantize a cell this way."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qcbench.attacks import declared_scheme
from qcbench.quant import QuantScheme, create_scheme, quantize_calibrated

if TYPE_CHECKING:
    from torch import nn

    from qcbench.data import Splits


def scheme_for(cfg: dict, meta: dict, bits: int, name: str | None = None) -> tuple[str, QuantScheme]:
    """The cell's quantizer: the family ``name`` (a defense entry's ``scheme``) or else the
    attack's declared scheme family, at ``bits`` (config may override its fields)."""
    name = name or declared_scheme(meta.get("attack"), cfg["quant"]["default_scheme"])
    return name, create_scheme(name, bits, **cfg["quant"].get("overrides", {}).get(name, {}))


def calibration(cfg: dict) -> dict:
    """:func:`qcbench.quant.quantize_calibrated`'s ``images`` and ``batch_size`` from the config's
    ``quant.calib_images`` and ``quant.calib_batch_size``."""
    q = cfg["quant"]
    return {"images": q["calib_images"], "batch_size": q["calib_batch_size"]}


def quantize_cell(cfg: dict, model: nn.Module, scheme: QuantScheme, splits: Splits, device=None) -> nn.Module:
    """``model`` fake-quantized with ``scheme``, calibrated on the first ``quant.calib_images``
    defender images in batches of ``quant.calib_batch_size``."""
    return quantize_calibrated(model, scheme, splits.defender, **calibration(cfg), device=device)
