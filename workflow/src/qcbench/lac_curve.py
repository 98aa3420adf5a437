"""Figure 2 of the LAC paper: LAC(+PDA) run on benign, mixed and all-poisoned defender data, with
the whole quantized model's BA / ASR against the cumulative LAC iteration.

Each run is the ``lac`` defense exactly as the defend stage runs it (same seed, same calibration
batches, same random batch order), except that a share of the calibration images carries the
attack's trigger: ``benign`` none, ``mixed`` ``poison_fraction`` (the paper's 90:10 mixture; the
triggered images are drawn once over all calibration images with their own generator, so the
batch order is the benign run's), ``poisoned`` all. LAC is label-free, so a poisoned image is
just a triggered defender image. Every ``eval_every`` optimiser steps (counted over all units)
the partially defended model is evaluated: units already done are hardened, the current unit
computes Q(W + α) with its current offsets (which is what hardening writes), later units are
still the undefended quantized model. Iteration 0 is the undefended quantized model and the last
point is the defended model, so the benign curve ends on the ``lac`` cell's metrics.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from qcbench.data import ImageSet, Splits
from qcbench.defenses import create_defense
from qcbench.defenses.units import extract_units
from qcbench.metrics import EVAL_BATCH, evaluate

DATA_KINDS = ("benign", "mixed", "poisoned")
CURVE_COLUMNS = ["data", "iteration", "unit", "ba", "asr"]


def poison_batches(batches: list[torch.Tensor], trigger, fraction: float, generator: torch.Generator):
    """Copies of ``batches`` in which ``round(fraction · N)`` of all N images, drawn at random, carry
    the trigger (fraction 0: unchanged, 1: every image)."""
    sizes = [len(x) for x in batches]
    n = sum(sizes)
    k = round(fraction * n)
    if k == 0:
        return list(batches)
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[torch.randperm(n, generator=generator)[:k]] = True
    out = []
    for x, m in zip(batches, torch.split(chosen, sizes), strict=True):
        x = x.clone()
        if m.any():
            x[m] = trigger(x[m])
        out.append(x)
    return out


def lac_curve(
    qmodel: nn.Module,
    splits: Splits,
    trigger,
    target: int,
    lac_params: dict,
    *,
    seed: int,
    eval_every: int,
    kinds=DATA_KINDS,
    poison_fraction: float = 0.1,
    test: ImageSet | None = None,
    batch_size: int = EVAL_BATCH,
    device="cpu",
) -> pd.DataFrame:
    """One row per evaluation point: data, iteration, unit, ba, asr (see the module docstring).
    ``lac_params`` are the ``lac`` defense's keyword parameters (without ``method``)."""
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    test = splits.test if test is None else test
    fractions = {"benign": 0.0, "mixed": poison_fraction, "poisoned": 1.0}
    units = [u.first for u in extract_units(qmodel)]
    rows: list[dict] = []
    for kind in kinds:
        if kind not in fractions:
            raise ValueError(f"unknown data kind {kind!r}; known: {list(fractions)}")
        defense = create_defense("lac", dict(lac_params))
        g = torch.Generator().manual_seed(seed)  # as LayerwiseDefense.run
        calib = defense.calibration_batches(splits.defender, g, device)
        calib = poison_batches(calib, trigger, fractions[kind], torch.Generator().manual_seed(seed + 1))
        count = {"it": 0}

        def point(model, unit, kind=kind, count=count):
            res = evaluate(model, test, trigger, target, batch_size, device)
            rows.append({"data": kind, "iteration": count["it"], "unit": unit, "ba": res["ba"], "asr": res["asr"]})

        def on_step(model, _it, defense=defense, count=count, point=point):
            count["it"] += 1
            if count["it"] % eval_every == 0:
                point(model, units[min(len(defense.log), len(units) - 1)])

        defense.on_step = on_step
        point(qmodel, "")  # the undefended quantized model
        defended = defense.reconstruct(qmodel, calib, g)
        if count["it"] % eval_every:
            point(defended, units[-1])
    df = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    return df.astype({"iteration": "int64", "ba": "float64", "asr": "float64"})
