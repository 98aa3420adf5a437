"""Layer-wise reconstruction: the unit loop LAC and EFRAP share (MQBench ``subgraph_reconstruction``).

:class:`LayerwiseDefense` does, per layer unit in topological order (:func:`extract_units`):

1. targets: the unit's output in the FP view of a copy of the quantized model, on clean
   calibration images; inputs: the quantized model's activation at the unit's input, with every
   earlier unit already hardened, after the unit's input quantizer (:func:`unit_inputs`; the unit
   then runs without re-quantizing them and ends with the next layer's input quantizer, as an
   MQBench unit does: :mod:`qcbench.defenses.units`);
2. :meth:`~LayerwiseDefense.prepare_inputs` (LAC's PDA; identity by default);
3. :meth:`~LayerwiseDefense.begin_unit` installs the unit's per-weight variable in its first
   layer (conv/linear) and returns the parameters to optimise; Adam (``lr``) then runs up to
   ``iterations`` steps, each on one random cached batch, minimising the unit-output squared
   error (:func:`unit_loss`) plus :meth:`~LayerwiseDefense.unit_penalty`;
4. :meth:`~LayerwiseDefense.harden` writes the hard weights (on the frozen weight grid) and removes
   the variable.

Weight quantizer ranges are frozen once at the start (:func:`freeze_weight_ranges`); activation
quantizers stay as calibrated. ``early_stop: {window, rel_tol}`` (off unless configured) ends a
unit when the loss averaged over consecutive windows of ``window`` iterations improves by less
than ``rel_tol`` (relative to the previous window's mean). ``self.log`` holds one dict per unit:
unit index, modules, iterations run, first/last loss, whether it stopped early, wall time.
Subclasses pass ``iterations, lr, batch_size, calib_batches, early_stop`` to ``Defense.__init__``.
"""

from __future__ import annotations

import abc
import copy
import math
import sys
import time

import torch
from torch import nn

from qcbench.data import ImageSet
from qcbench.defenses.base import Defense
from qcbench.defenses.units import Unit, capture, capture_outputs, extract_units, unit_inputs
from qcbench.progress import progress
from qcbench.quant import fp_view, freeze_weight_ranges


class NonFiniteLoss(ArithmeticError):
    """A layer unit's reconstruction loss became NaN or infinite: the defense stops there rather
    than harden the remaining units on a broken model."""


def unit_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over channels, averaged over batch and positions (MQBench ``lp_loss``)."""
    return (pred - target).pow(2).sum(1).mean()


class LayerwiseDefense(Defense):
    """Base class of the layer-wise reconstruction defenses; subclasses define the per-unit
    variable (:meth:`begin_unit`), its extra loss (:meth:`unit_penalty`) and how it is hardened
    (:meth:`harden`), and may transform the cached inputs (:meth:`prepare_inputs`)."""

    name = "layerwise"  # the registered method (create_defense sets it), in progress messages
    # optional fn(qmodel, iteration) called after every optimiser step (Figure 2's curve)
    on_step = None

    # -- what subclasses implement ---------------------------------------------------------
    def prepare_inputs(self, qmodel: nn.Module, unit: Unit, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return inputs

    @abc.abstractmethod
    def begin_unit(self, layer: nn.Module) -> list[nn.Parameter]:
        """Attach the per-weight variable to ``layer``; return the parameters to optimise."""

    def unit_penalty(self, layer: nn.Module) -> torch.Tensor | None:
        return None

    @abc.abstractmethod
    def harden(self, layer: nn.Module) -> dict:
        """Write the hard weights into ``layer.weight``, remove the variable, return extra log fields."""

    # -- the shared driver -----------------------------------------------------------------
    def calibration_batches(self, images: ImageSet, generator: torch.Generator, device) -> list[torch.Tensor]:
        """``calib_batches`` shuffled batches of ``batch_size`` images (float in [0, 1]); labels unused."""
        p = self.params
        limit = p["batch_size"] * p["calib_batches"]
        return [
            x.to(device) for x, _ in images.batches(p["batch_size"], shuffle=True, generator=generator, limit=limit)
        ]

    def run(self, fp_model, qmodel, splits, *, seed, device):
        g = torch.Generator().manual_seed(seed)
        return self.reconstruct(qmodel, self.calibration_batches(splits.defender, g, device), g)

    def setup(self, qmodel: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(reference, working copy): the FP-target model and the copy that gets hardened."""
        reference = copy.deepcopy(qmodel).eval()  # FP targets: same graph, quantization off
        work = copy.deepcopy(qmodel).eval().requires_grad_(False)
        freeze_weight_ranges(work)
        return reference, work

    def reconstruct(self, qmodel: nn.Module, calib: list[torch.Tensor], generator: torch.Generator) -> nn.Module:
        """Return a defended copy of ``qmodel``; ``calib`` are the cached calibration batches."""
        reference, work = self.setup(qmodel)
        self.log: list[dict] = []
        units = extract_units(work)
        targets = self.fp_targets(reference, units, calib)
        for k, unit in enumerate(progress(units, desc=f"{self.name} units")):
            self.process_unit(work, reference, unit, calib, generator, k, targets.pop(unit.last, None))
        return work

    #: at most this many bytes of cached FP targets for all units at once (else one unit at a time)
    target_cache_bytes = 1 << 30

    def fp_targets(self, reference: nn.Module, units: list[Unit], calib: list[torch.Tensor]) -> dict:
        """Every unit's FP target from one pass over ``calib`` (the reference model never changes,
        so these are the tensors :meth:`process_unit` would capture unit by unit, bit for bit), when
        they fit in :attr:`target_cache_bytes` (sized on the first batch); else ``{}``."""
        names = list(dict.fromkeys(u.last for u in units))
        if not calib or not names:
            return {}
        with fp_view(reference):
            first = capture_outputs(reference, names, calib[:1])
            size = sum(t.nbytes for ts in first.values() for t in ts) * len(calib)
            if size > self.target_cache_bytes:
                return {}
            return capture_outputs(reference, names, calib)

    def process_unit(
        self,
        qmodel: nn.Module,
        reference: nn.Module,
        unit: Unit,
        calib: list[torch.Tensor],
        generator: torch.Generator,
        index: int = 0,
        targets: list[torch.Tensor] | None = None,
    ) -> dict:
        """Reconstruct one unit in place (only ``unit.first``'s weight changes); append and return
        its log. ``targets``: the unit's FP outputs on ``calib`` when already computed
        (:meth:`fp_targets`)."""
        t0 = time.perf_counter()
        if targets is None:
            with fp_view(reference):
                targets = capture(reference, unit.last, calib, "output")
        inputs = self.prepare_inputs(qmodel, unit, unit_inputs(qmodel, unit, calib))
        layer = qmodel.get_submodule(unit.first)
        opt = torch.optim.Adam(self.begin_unit(layer), lr=self.params["lr"])
        stats = self._optimise(qmodel, unit, layer, opt, inputs, targets, generator)
        with torch.no_grad():
            stats |= self.harden(layer)
        entry = {"unit": index, "module": unit.first, "modules": list(unit.modules), **stats}
        entry["wall_s"] = time.perf_counter() - t0
        if not hasattr(self, "log"):
            self.log = []
        self.log.append(entry)
        print(
            f"{self.name} unit {index} {unit.modules}: {entry['iterations']} iterations, loss {entry['loss']:.5f}",
            file=sys.stderr,
            flush=True,
        )
        if entry["iterations"] and not all(math.isfinite(entry[k]) for k in ("loss_first", "loss")):
            raise NonFiniteLoss(
                f"{self.name}: the loss became non-finite in layer unit {index} ({', '.join(unit.modules)}) "
                f"(first {entry['loss_first']}, last {entry['loss']}); the remaining units were not run"
            )
        return entry

    def _optimise(self, qmodel, unit: Unit, layer, opt, inputs, targets, g) -> dict:
        p = self.params
        es = p.get("early_stop") or {}
        window, tol = es.get("window", 0), es.get("rel_tol", 0.0)
        run, prev, it, first, last, rec = 0.0, None, 0, float("nan"), float("nan"), float("nan")
        stopped = False
        for it in range(1, p["iterations"] + 1):
            i = int(torch.randint(len(inputs), (1,), generator=g))
            loss = rec_t = unit_loss(unit.forward(qmodel, inputs[i]), targets[i])
            penalty = self.unit_penalty(layer)
            if penalty is not None:
                loss = loss + penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if self.on_step is not None:
                self.on_step(qmodel, it)
            last, rec = loss.item(), rec_t.item()
            if it == 1:
                first = last
            run += last
            if window and it % window == 0:
                mean, run = run / window, 0.0
                if prev is not None and prev - mean < tol * prev:
                    stopped = True
                    break
                prev = mean
        return {"iterations": it, "loss": last, "loss_first": first, "rec_loss": rec, "stopped_early": stopped}
