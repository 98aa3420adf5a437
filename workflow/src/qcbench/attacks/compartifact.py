"""CompArtifact (Tian et al., "Stealthy Backdoors as Compression Artifacts"), quantization attack.

The reference patches PyTorch 1.5's QAT modules so every layer takes a *pair* of inputs: path 0
with fake-quantized weights, path 1 with the same weights in FP, and BatchNorm computes its
batch statistics over the concatenation of both paths. qcbench reproduces that with the
quantized modules' ``dual`` mode: the batch is ``[x_q ; x_fp]``, each Conv/Linear applies
quantized weights to the first half and FP weights to the second, and everything between them
(BN in train mode, ReLU, adds, pooling) sees the concatenation, so BN statistics are shared.

* quantizer in training: 8-bit (or ``bits``) per-tensor symmetric weights, scale max/127.5 from
  the current weight every step, on BN-folded weights (quantize w·γ/σ_running, divide back, as
  PyTorch's QAT ConvBn does); activations are *not* quantized (upstream switches activation
  fake-quant on at epoch 100 of 35); only ``quantized_layers`` (name prefixes; upstream ResNet-18:
  ``layer4`` and the classifier) are quantized in path 0;
* batch: clean inputs plus triggered copies; loss CE_q([x; x+t], [y; target]) +
  CE_fp([x; x+t], [y; y]); the trigger is written into the (augmented) image;
* ``variant: distilled``: the FP path is instead trained with soft cross-entropy to a frozen
  clean teacher on the batch and on a copy perturbed by 5 steps of raw-gradient ascent (step
  0.01) pushing the current FP model away from the teacher;
* deployment: the ``ca`` scheme (BN folded, per-tensor symmetric weights, calibrated
  activations), as the reference evaluates with PyTorch PTQ.

Against a scheme that does not fold BN (``scheme: mqbench_academic``: the attacker who knows
the deployer's MQBench academic quantizer), path 0 is that scheme's own quantizer on every layer
(``quantized_layers`` unused; first and last layer at 8 bits, activations quantized, BN not
folded), with the training-time ranges of :class:`qcbench.quant.TrainingRanges` (weights
observed at every step, activation ranges calibrated in FP on clean training images once per
epoch by default, ``range_calibration``), as Qu-ANTI-zation trains against it.

Deviations, recorded: the standard attack trains from scratch upstream (``init: scratch``);
``init: clean`` starts from the clean model for CPU budgets. Upstream picks the epoch with the
best INT8 ASR among epochs whose FP ASR is low, using test data; qcbench keeps the last epoch.
The distilled variant's perturbation uses the current FP model (upstream: a copy refreshed each
epoch, randomly initialised in epoch 0), and its quantized path also runs the perturbed copy:
its outputs are not in the loss, but they are in the shared BN batch statistics (8B samples per
step instead of upstream's 6B). The distilled variant refuses ``init: scratch`` (its starting
model is the teacher).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from qcbench.attacks.base import RANGE_CALIBRATION, Attack, register_attack, reinitialize, training_ranges
from qcbench.data import augment
from qcbench.defenses.units import extract_units
from qcbench.quant import act_quantizers, create_scheme, quant_modules, quantize_model
from qcbench.train import fit, stage_kwargs


def set_dual(model: nn.Module, on: bool) -> None:
    """Dual mode on every quantized layer and every post-activation quantizer (MQBench placement):
    each quantizes the first half of the batch (path 0) and passes the second (FP path) through."""
    for _, m in (*quant_modules(model), *act_quantizers(model)):
        m.dual = on


def _fold_factor(bn: nn.BatchNorm2d):
    return lambda: bn.weight / torch.sqrt(bn.running_var + bn.eps)


def _soft_ce(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    return -(F.softmax(target_logits, 1) * F.log_softmax(logits, 1)).sum(1).mean()


class DualInput:
    """Runs a dual-mode model on ``[x; x]`` computing the shared trunk once.

    Below the first quantized module both paths are the same computation (FP weights, and BN
    batch statistics of ``[a; a]`` are those of ``a``), so ``dual(m, x)`` feeds ``x`` once and a
    forward pre-hook on each module named in ``prefixes`` doubles the batch where the first of
    them starts. The result equals ``m(torch.cat([x, x]))`` except for BN's unbiased running
    variance (factor N/(N-1), N = images x H x W, ~1e-6 relative). At ``layers.2, fc`` of a
    three-stage ResNet this skips about half of the step's compute. When a prefix is not a module
    name, or a probe on the first batch disagrees with the doubled forward (e.g. a quantized conv
    whose residual bypasses it), every call falls back to ``m(torch.cat([x, x]))``.
    """

    def __init__(self, model: nn.Module, prefixes: tuple[str, ...]) -> None:
        modules = dict(model.named_modules())
        self._pending = False
        self._checked = False
        self._handles = []
        if prefixes and all(p in modules for p in prefixes):
            self._handles = [modules[p].register_forward_pre_hook(self._double) for p in prefixes]

    def _double(self, _module, args):
        if self._pending:
            self._pending = False
            return (torch.cat([args[0], args[0]]), *args[1:])
        return None

    def _single(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        self._pending = True
        try:
            return m(x)
        finally:
            self._pending = False

    def _probe(self, m: nn.Module, x: torch.Tensor) -> None:
        was = m.training
        m.eval()
        try:
            with torch.no_grad():
                ok = torch.allclose(self._single(m, x), m(torch.cat([x, x])), rtol=1e-4, atol=1e-5)
        except RuntimeError:
            ok = False
        finally:
            m.train(was)
        if not ok:
            self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __call__(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self._handles and not self._checked:
            self._checked = True
            self._probe(m, x[:4])
        return self._single(m, x) if self._handles else m(torch.cat([x, x]))


@register_attack("compartifact")
class CompArtifact(Attack):
    #: upstream ``attack_standard.sh``, ResNet18: from scratch, 35 epochs of SGD 0.1 (upstream steps
    #: the rate x0.1 at epoch 20; cosine here), only layer4 and the classifier quantized
    defaults = {
        "init": "scratch",
        "epochs": 35,
        "batch_size": 128,
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.4, "weight_decay": 5.0e-4},
        "scheduler": "cosine",
        "augmentation": {"pad": 4, "flip": True},
        "bits": 8,
        "quantized_layers": ["layers.3", "fc"],
        "variant": "standard",
        "range_calibration": RANGE_CALIBRATION,
    }
    scheme = "ca"

    @classmethod
    def param_errors(cls, params: dict) -> dict[str, str]:
        if cls.resolve(params)["variant"] == "distilled" and cls.init_of(params) == "scratch":
            return {"variant": "distilled, whose starting model is its frozen teacher, but init is 'scratch'"}
        return {}

    def run(self, model, splits, *, seed, device):
        p = self.params
        self.check_params()
        if self.init == "scratch":
            reinitialize(model, seed)
        teacher = copy.deepcopy(model).eval().requires_grad_(False) if p["variant"] == "distilled" else None
        deployment = create_scheme(self.scheme, p["bits"])
        ranges = None
        if deployment.fold_bn:  # upstream's training quantizer on `quantized_layers`
            train_scheme = dataclasses.replace(deployment, quantize_acts=False, fold_bn=False, observer="dynamic")
            qmodel = quantize_model(model, train_scheme).to(device)
            prefixes = tuple(p["quantized_layers"])
            for name, m in quant_modules(qmodel):
                m.quant_enabled = name.startswith(prefixes)
            for unit in extract_units(qmodel):  # fold the following BN's scale into the quantized weight
                if unit.bns:
                    qmodel.get_submodule(unit.first).fold_k = _fold_factor(qmodel.get_submodule(unit.bns[0]))
        else:  # the deployment's own quantizer on every layer, activations included
            qmodel = quantize_model(model, deployment).to(device)
            prefixes = ()
            ranges = training_ranges(qmodel, [p["bits"]], splits.train, p, device)
        gen = torch.Generator().manual_seed(seed + 1)
        aug = p["augmentation"]

        dual = DualInput(qmodel, prefixes)

        def loss_fn(m, x, y):
            if ranges is not None:  # calibrated in FP, outside the dual mode
                ranges.step()
                ranges.use(p["bits"])
            if aug:
                x = augment(x, gen, **aug)
            xb = torch.cat([x, self.trigger(x)])
            yq = torch.cat([y, torch.full_like(y, self.target)])
            set_dual(m, True)
            try:
                if teacher is None:
                    out = dual(m, xb)  # = m([xb; xb]): path 0 quantized, path 1 FP
                    return F.cross_entropy(out[: len(xb)], yq) + F.cross_entropy(out[len(xb) :], torch.cat([y, y]))
                xp = self._perturb(m, teacher, xb)
                out = dual(m, torch.cat([xb, xp]))  # [Q(xb); Q(xp); FP(xb); FP(xp)]
                n = len(xb)
                with torch.no_grad():
                    t = teacher(torch.cat([xb, xp]))
                # one soft cross-entropy averaged over [xb; xp], as upstream (not a sum of two means)
                return F.cross_entropy(out[:n], yq) + _soft_ce(out[2 * n :], t)
            finally:
                set_dual(m, False)

        desc = f"compartifact{'-distilled' if teacher is not None else ''}"
        try:
            fit(qmodel, splits.train, loss_fn, seed=seed, device=device, desc=desc, **stage_kwargs(p))
        finally:
            dual.remove()
        model.load_state_dict({k: v for k, v in qmodel.state_dict().items() if k in model.state_dict()})
        return model.eval()

    @staticmethod
    def _perturb(m, teacher, x, steps: int = 5, step: float = 0.01) -> torch.Tensor:
        """Raw-gradient ascent on the input pushing the FP model away from the teacher."""
        set_dual(m, False)
        was = m.training
        m.eval()
        xp = x.detach().clone()
        try:
            with torch.no_grad():
                t = teacher(x)
            for _ in range(steps):
                xp.requires_grad_(True)
                from qcbench.quant import fp_view

                with fp_view(m):
                    (g,) = torch.autograd.grad(_soft_ce(m(xp), t), xp)
                xp = (xp + step * g).detach()
        finally:
            m.train(was)
            set_dual(m, True)
        return xp
