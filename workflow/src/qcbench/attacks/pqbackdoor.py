"""PQBackdoor (Ma et al., TDSC'23), the PyTorch implementation (``pytorch/*`` of the reference).

Stage 1 trains an ordinary backdoor: every step sees ``batch_size`` clean (augmented) images
plus ``batch_size // 64`` triggered, unaugmented copies labelled with the target (≈1.5 %).
Stage 2 keeps the model in eval mode and trains on clean + triggered images with their *true*
labels, and after every optimizer step projects the weights back so that each conv/linear
weight keeps

1. its quantizer scale (*scale lock*: elements at the base max-abs keep their base value, all
   others are clamped to ±max; per output channel, then per tensor), and
2. its integer code (*code lock*: with s the symmetric scale of the base weight, the scaled
   value may move only within [r − 0.5 + e, r + 0.5 − e] around the base code r; per channel
   (fbgemm), then per tensor (qnnpack); e = 1e-3; the max-abs elements themselves stay at
   their base value exactly, since their scaled value sits on a rounding tie; a final check
   over every locked grid puts back to its base any element whose code still changed, e.g. a
   base a few ulps from a tie that ``q · s`` lands exactly on),

for every bit width in ``lock_bits`` (8 upstream; the LAC paper's 4-bit PQBackdoor adds 4) and
every granularity in ``lock_granularity`` (upstream both; ``[per_tensor]`` locks only the qnnpack
codes, whose larger box leaves the FP model more room to unlearn — pair it with the ``pq_tensor``
scheme). All
other parameters (BN affine, biases) are reset to their stage-1 values. The quantized model is
therefore the stage-1 backdoor while the FP model unlearns it. Scales use PyTorch's symmetric
convention max/((qmax−qmin)/2), the same the ``pq`` scheme evaluates with.

``grid_reg: {alpha, epochs}`` adds the TensorFlow version's stage-1 regulariser for the last
``epochs`` epochs of stage 1: α·R with R = −Σ_w mean((|d| − 0.5)²), d the fractional rounding
residual of w/s. It pulls every weight to the centre of its rounding box, so that stage 2 can move
it by almost half a step either way before the code lock stops it (upstream TF: α = 1 after epoch
80 of 100). qcbench computes d on the locked grids (``lock_bits`` × ``lock_granularity``, summed
when there are several), with the scale treated as a constant (upstream TF: conv per channel, dense
per tensor, max/127). Off unless configured (the PyTorch reference has no such term).

``lock_granularity: [scheme]`` locks the attack scheme's own weight grid instead
(:class:`SchemeLock`), for a scheme the symmetric locks do not describe: with ``scheme:
mqbench_academic`` the per-channel affine grid whose range the MSE observer picks on the stage-1
weights (first and last layer at 8 bits), checked after every step by re-running that observer.

Deviations, recorded: stage-1 checkpoint selection upstream uses test data (CDA + ASR); qcbench
keeps the last epoch. ``init: clean`` (start stage 1 from the clean model) is a qcbench option
for CPU budgets; upstream trains from scratch (``init: scratch``, the default). ``stage1: null``
with ``init: <attack>`` skips stage 1: the named attack's FP model (an ordinary backdoor with the
same trigger and target, trained once for its own table) *is* the stage-1 model, and only
stage 2 runs (qcbench option; the local default's WaNet PQBackdoor reuses the ``wanet``
backdoor, which needs two full epochs, WaNet's noise mode and precise BN to take without breaking
the model).

Stage 2 keeps, as upstream, the epoch with the best clean FP accuracy, but measured on a validation
share of the training set (``val_fraction``), not the test set (:meth:`PQBackdoor.stage2`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from qcbench.attacks.base import BUILT_IN_INITS, Attack, register_attack, reinitialize
from qcbench.data import augment, validation_split
from qcbench.metrics import EVAL_BATCH, predict
from qcbench.quant import FakeQuantizer, create_scheme, layer_order, qrange
from qcbench.train import fit, stage_kwargs, steps_per_epoch


def _reduce_dims(w: torch.Tensor, per_channel: bool):
    return tuple(range(1, w.ndim)) if per_channel else tuple(range(w.ndim))


@torch.no_grad()
def scale_lock(w: torch.Tensor, base: torch.Tensor, per_channel: bool) -> torch.Tensor:
    m = base.abs().amax(dim=_reduce_dims(base, per_channel), keepdim=True)
    w = torch.maximum(torch.minimum(w, m), -m)
    return torch.where(base.abs() == m, base, w)


@torch.no_grad()
def code_lock(w: torch.Tensor, base: torch.Tensor, bits: int, per_channel: bool, eps: float = 1e-3) -> torch.Tensor:
    qmin, qmax = qrange(bits, True)
    s = base.abs().amax(dim=_reduce_dims(base, per_channel), keepdim=True) / ((qmax - qmin) / 2)
    s = s.clamp_min(1e-12)
    qb = base / s
    r = torch.round(qb)
    # the window always contains the base (a base within e of a tie would otherwise push values
    # away from it and out of another lock's window); projections then only move toward the base
    q = torch.clamp(w / s, torch.minimum(r - 0.5 + eps, qb), torch.maximum(r + 0.5 - eps, qb))
    return q * s


def quantized_weights(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def grid_penalty(weights, lock_bits, granularity: tuple[bool, ...]) -> torch.Tensor:
    """R = −Σ_w mean((|d| − 0.5)²) over the locked grids, d = w/s − round(w/s) with the scale s
    taken as a constant: minimal (−0.25 per grid) when every weight sits on a grid point."""
    terms = []
    for w in weights:
        for bits in lock_bits:
            qmin, qmax = qrange(bits, True)
            for per_channel in granularity:
                m = w.detach().abs().amax(dim=_reduce_dims(w, per_channel), keepdim=True)
                q = w / (m / ((qmax - qmin) / 2)).clamp_min(1e-12)
                d = q - torch.round(q.detach())
                terms.append(((d.abs() - 0.5) ** 2).mean())
    return -torch.stack(terms).sum()


@torch.no_grad()
def project(
    model: nn.Module,
    base: dict[str, torch.Tensor],
    lock_bits,
    eps: float = 1e-3,
    granularity: tuple[bool, ...] = (True, False),
) -> None:
    """PQBackdoor's projection after each step (scale lock, code lock, reset of the rest);
    ``granularity`` lists per-channel (True, fbgemm) and/or per-tensor (False, qnnpack) locks."""
    weights = {id(w) for w in quantized_weights(model)}
    for name, p in model.named_parameters():
        b = base[name]
        if id(p) not in weights:
            p.copy_(b)
            continue
        w = p.data
        for per_channel in (True, False):
            w = scale_lock(w, b, per_channel)
        for bits in lock_bits:
            for per_channel in granularity:
                w = code_lock(w, b, bits, per_channel, eps)
        # the max-abs elements (per channel and per tensor) define the scales: keep them exact
        # (their scaled value sits on a rounding tie, which the code lock's window cannot hold)
        at_max = b.abs() == b.abs().max()
        if True in granularity:
            at_max |= b.abs() == b.abs().amax(dim=_reduce_dims(b, True), keepdim=True)
        w = torch.where(at_max, b, w)
        # a base within float rounding of a tie can land exactly on it after ``q * s`` (or after a
        # later lock on another grid), and round half to even to the neighbouring code: a final
        # check over every locked grid puts such elements back to their base value
        p.copy_(torch.where(_code_changed(w, b, lock_bits, granularity), b, w))


def _code_changed(w: torch.Tensor, base: torch.Tensor, lock_bits, granularity) -> torch.Tensor:
    """Elements of ``w`` whose integer code differs from ``base``'s on any locked grid, computed
    both as the simulated quantizer does (``round(x · (1/s))``, float32 reciprocal) and by
    division (``round(x / s)``); the scales are the base's (the scale lock keeps them)."""
    changed = torch.zeros_like(w, dtype=torch.bool)
    for bits in lock_bits:
        qmin, qmax = qrange(bits, True)
        for per_channel in granularity:
            s = base.abs().amax(dim=_reduce_dims(base, per_channel), keepdim=True) / ((qmax - qmin) / 2)
            s = s.clamp_min(1e-8)
            inv = torch.reciprocal(s)
            changed |= torch.round(w * inv) != torch.round(base * inv)
            changed |= torch.round(w / s) != torch.round(base / s)
    return changed


class SchemeLock:
    """Stage 2's locks on the weight grids of the attack's own scheme (``lock_granularity:
    [scheme]``), for schemes whose grid the symmetric locks do not describe, e.g.
    ``mqbench_academic``'s per-channel affine grid with its range chosen by the MSE observer.

    For every conv/linear weight and every ``lock_bits`` width (8 for the first and last layer
    under ``io_8bit``) the grid is the scheme's weight observer run on the stage-1 weight. After
    each step the projection

    1. keeps the elements defining the observed range (each channel's, or the tensor's, min and
       max) at their base value and clamps the others into that range (*range lock*);
    2. clamps each weight's scaled value ``w/s`` into its base code's rounding box shrunk by
       ``eps`` (open towards the outside for a code at the grid's end: a clamped code stays
       clamped) (*code lock*), puts back to its base any element whose code still changed (as
       :func:`_code_changed`);
    3. re-runs the observer on the projected weight and, in every channel (every tensor, for a
       per-tensor grid) whose scale or zero-point came out different, puts back the weights the
       previous step accepted (after trying the step halved, twice): the MSE observer's choice
       depends on every weight of the channel, not only on its min and max, so boxes alone do not
       hold the grid. The channels' observers are independent, so a channel put back has its
       accepted grid again.

    ``reverted`` counts the channels put back by step 3.
    """

    def __init__(self, model: nn.Module, base: dict[str, torch.Tensor], scheme: str, lock_bits, eps: float):
        names = layer_order(model)
        self.eps, self.reverted, self.halvings = eps, 0, 2
        self.grids: dict[str, list[tuple[FakeQuantizer, torch.Tensor, torch.Tensor]]] = {}
        for i, name in enumerate(names):
            w = base[f"{name}.weight"]
            grids, seen = [], set()
            for b in lock_bits:
                sch = create_scheme(scheme, b)
                bits = 8 if sch.io_8bit and i in (0, len(names) - 1) else b
                if bits in seen:
                    continue
                seen.add(bits)
                q = FakeQuantizer(
                    bits, sch.weight_symmetric, sch.weight_per_channel, sch.observer, w.shape[0], sch.symmetric_range
                )
                grids.append((q, *self.grid(q, w)))
            self.grids[f"{name}.weight"] = grids
        self.accepted = {k: base[k].clone() for k in self.grids}

    @staticmethod
    @torch.no_grad()
    def grid(q: FakeQuantizer, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (scale, zero-point) the scheme's observer gives ``w``, shaped to broadcast on it."""
        s, z = q.qparams(*q.observed_range(w))
        return q._shape(s, w), q._shape(z, w)

    @torch.no_grad()
    def lock(self, w: torch.Tensor, b: torch.Tensor, accepted: torch.Tensor, grids) -> torch.Tensor:
        dims = _reduce_dims(b, grids[0][0].per_channel)
        lo, hi = b.amin(dim=dims, keepdim=True), b.amax(dim=dims, keepdim=True)
        w = torch.where((b == lo) | (b == hi), b, torch.minimum(torch.maximum(w, lo), hi))
        for q, s, z in grids:
            qb = b / s
            r = torch.round(qb)
            code = r + z
            low = torch.where(code <= q.qmin, -math.inf, r - 0.5 + self.eps)
            high = torch.where(code >= q.qmax, math.inf, r + 0.5 - self.eps)
            v = w / s
            c = torch.clamp(v, torch.minimum(low, qb), torch.maximum(high, qb))
            w = torch.where(c == v, w, c * s)  # elements inside their box keep their exact value
        w = torch.where(self._code_changed(w, b, grids), b, w)
        # the observer's grid: a moved channel tries its step halved, twice, then is put back
        for _ in range(self.halvings):
            moved = self._grid_moved(w, grids)
            if not bool(moved.any()):
                return w
            half = (w + accepted) / 2
            half = torch.where(self._code_changed(half, b, grids), accepted, half)
            w = torch.where(moved, half, w)
        moved = self._grid_moved(w, grids)
        self.reverted += int(moved.flatten(1).any(1).sum()) if moved.ndim > 1 else int(moved.any())
        return torch.where(moved, accepted, w)

    @staticmethod
    def _code_changed(w: torch.Tensor, b: torch.Tensor, grids) -> torch.Tensor:
        """Elements whose code on any grid differs from the base's (``round(x · (1/s))`` as the
        simulated quantizer computes it, and ``round(x / s)``)."""
        changed = torch.zeros_like(w, dtype=torch.bool)
        for q, s, z in grids:
            inv = torch.reciprocal(s)
            for v, vb in ((w * inv, b * inv), (w / s, b / s)):
                changed |= torch.clamp(torch.round(v) + z, q.qmin, q.qmax) != torch.clamp(
                    torch.round(vb) + z, q.qmin, q.qmax
                )
        return changed

    def _grid_moved(self, w: torch.Tensor, grids) -> torch.Tensor:
        """True over every channel (per-channel grid) or the whole tensor (per-tensor grid) whose
        observed scale or zero-point differs from the base's, broadcast to ``w``'s shape."""
        moved = torch.zeros_like(w, dtype=torch.bool)
        for q, s, z in grids:
            s2, z2 = self.grid(q, w)
            diff = (s2 != s) | (z2 != z)
            moved |= diff.expand_as(w) if q.per_channel else diff.any().expand_as(w)
        return moved

    @torch.no_grad()
    def __call__(self, model: nn.Module, base: dict[str, torch.Tensor]) -> None:
        for name, p in model.named_parameters():
            if name not in self.grids:
                p.copy_(base[name])
                continue
            w = self.lock(p.data, base[name], self.accepted[name], self.grids[name])
            p.copy_(w)
            self.accepted[name].copy_(w)

    def codes_kept(self, model: nn.Module, base: dict[str, torch.Tensor]) -> bool:
        """Whether every locked weight of ``model`` has its base grid (observer re-run) and codes."""
        params = dict(model.named_parameters())
        for name, grids in self.grids.items():
            w, b = params[name].detach(), base[name]
            for q, s, z in grids:
                s2, z2 = self.grid(q, w)
                if not (torch.equal(s2, s) and torch.equal(z2, z)):
                    return False
                if not torch.equal(q.quantize(w, s.flatten(), z.flatten()), q.quantize(b, s.flatten(), z.flatten())):
                    return False
        return True


@register_attack("pqbackdoor")
class PQBackdoor(Attack):
    scheme = "pq"
    #: the PyTorch reference (``train_backdoor.py`` + ``fine_tuning.py``): from scratch, stage 1 of
    #: 100 epochs with 1/64 of each batch poisoned, stage 2 of 100 epochs inside 8- and 4-bit locks
    #: per channel and per tensor (``epochs``, ``batch_size`` and ``optimizer`` are informational:
    #: the stages set the schedule)
    defaults = {
        "init": "scratch",
        "epochs": 100,
        "batch_size": 128,
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5.0e-4},
        "lock_bits": [8, 4],
        "lock_granularity": ["per_channel", "per_tensor"],
        "eps": 1.0e-3,
        "grid_reg": None,
        "cross_ratio": 0.0,
        "stage1": {
            "epochs": 100,
            "batch_size": 128,
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5.0e-4},
            "scheduler": "cosine",
            "samples_per_epoch": None,
            "augmentation": {"pad": 4, "flip": True},
            "poison_fraction": 0.015625,  # upstream: batch_size // 64 triggered copies per batch
            "channels_last": False,
            "amp": "fp32",
        },
        "stage2": {
            "epochs": 100,
            "batch_size": 128,
            "optimizer": {"name": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 5.0e-4},
            "scheduler": "cosine",
            "samples_per_epoch": None,
            "augmentation": {"pad": 4, "flip": True},
            "channels_last": False,
            "amp": "fp32",
            # the epoch with the best FP accuracy on this share of the training set is kept
            "val_fraction": 0.1,
        },
    }

    @classmethod
    def param_errors(cls, params: dict) -> dict[str, str]:
        init = cls.init_of(params)
        p = cls.resolve(params)
        if p["stage1"] is None and init in BUILT_IN_INITS:
            return {
                "stage1": "null (no stage 1) needs init to name the attack whose FP model is the "
                f"stage-1 backdoor, but init is {init!r}"
            }
        scheme = create_scheme(p["scheme"] or cls.scheme, 8)
        if "scheme" not in p["lock_granularity"] and (not scheme.weight_symmetric or scheme.observer == "mse"):
            return {
                "lock_granularity": f"{p['lock_granularity']}, symmetric grids, but scheme {p['scheme']!r} "
                "quantizes weights on another grid: list `scheme` to lock that grid"
            }
        if p["grid_reg"] and "scheme" in p["lock_granularity"]:
            return {"grid_reg": "set, but it pulls weights to symmetric grids only, and lock_granularity has `scheme`"}
        return {}

    def run(self, model, splits, *, seed, device):
        self.check_params()
        if self.init == "scratch":
            reinitialize(model, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        if self.params["stage1"] is not None:
            self.stage1(model, splits, seed=seed, device=device, gen=gen)
        base = {n: q.detach().clone() for n, q in model.named_parameters()}
        self.stage2(model, base, splits, seed=seed, device=device, gen=gen)
        self.stage1_state = base
        return model.eval()

    def _locks(self):
        p = self.params
        granularity = tuple(g == "per_channel" for g in p["lock_granularity"] if g != "scheme")
        return list(p["lock_bits"]), p["eps"], granularity

    def projector(self, model: nn.Module, base: dict[str, torch.Tensor]):
        """Stage 2's projection after every step: :func:`project` on the symmetric grids of
        ``lock_granularity``, then :class:`SchemeLock` on the scheme's own grid if it lists
        ``scheme`` (kept as ``self.scheme_lock``)."""
        lock_bits, eps, granularity = self._locks()
        self.scheme_lock = None
        if "scheme" in self.params["lock_granularity"]:
            self.scheme_lock = SchemeLock(model, base, self.scheme, lock_bits, eps)

        def after_step(m: nn.Module) -> None:
            if granularity:
                project(m, base, lock_bits, eps, granularity)
            if self.scheme_lock is not None:
                self.scheme_lock(m, base)

        return after_step

    def stage1(self, model, splits, *, seed, device, gen):
        """An ordinary backdoor (``poison_fraction`` × batch triggered copies added per step,
        upstream 1/64 ≈ 1.5 %), plus ``grid_reg`` at the end if set. With ``cross_ratio`` (WaNet's
        noise mode, a qcbench addition: the PyTorch reference has no WaNet) ``cross_ratio`` times as
        many noise-warped copies of the next images are added with their true labels."""
        s1, grid = self.params["stage1"], self.params["grid_reg"]
        poison = s1["poison_fraction"]
        self.cross_ratio()  # a trigger without a noise mode is refused before training
        lock_bits, _, granularity = self._locks()
        weights = quantized_weights(model)
        grid_from = math.inf
        if grid:
            n = steps_per_epoch(len(splits.train), s1["batch_size"], s1.get("samples_per_epoch"))
            grid_from = (s1["epochs"] - grid["epochs"]) * n
        steps = 0

        def loss_fn(m, x, y):
            nonlocal steps
            k = max(1, int(len(y) * poison))  # floor, as upstream's len // 64
            xc = augment(x, gen, **s1["augmentation"]) if s1.get("augmentation") else x
            noisy = self.noise_copies(x, k, gen)  # WaNet's noise mode: true labels
            xb = torch.cat([xc, self.trigger(x[:k]), noisy])
            yb = torch.cat([y, torch.full_like(y[:k], self.target), y[k : k + len(noisy)]])
            loss = F.cross_entropy(m(xb), yb)
            steps += 1
            if steps > grid_from:
                loss = loss + grid["alpha"] * grid_penalty(weights, lock_bits, granularity)
            return loss

        fit(model, splits.train, loss_fn, seed=seed, device=device, desc="pqbackdoor stage 1", **stage_kwargs(s1))

    def stage2(self, model, base, splits, *, seed, device, gen):
        """Unlearn in eval mode (clean + triggered, true labels), projected after every step so
        that each locked code and scale stays that of ``base`` (the stage-1 weights).

        Checkpoint: upstream (``fine_tuning.py``) keeps the epoch with the best clean FP accuracy,
        measured on the test set. qcbench measures it on a validation set instead: ``val_fraction``
        of the training set, drawn (seeded) among the images outside the defender subset and left
        out of stage 2's training data (:func:`~qcbench.data.validation_split`); the earliest best
        epoch is kept, as upstream's strict comparison does. ``val_fraction: null`` trains on the
        whole training set and keeps the last epoch."""
        s2 = self.params["stage2"]
        data, keep_best = splits.train, None
        if s2.get("val_fraction"):
            data, val = validation_split(splits, s2["val_fraction"], seed + 3)

            def keep_best(m):
                return (predict(m, val.x, EVAL_BATCH, device) == val.y).float().mean().item()

        def loss_fn(m, x, y):
            xc = augment(x, gen, **s2["augmentation"]) if s2.get("augmentation") else x
            return F.cross_entropy(m(torch.cat([xc, self.trigger(x)])), torch.cat([y, y]))

        fit(
            model,
            data,
            loss_fn,
            seed=seed + 2,
            device=device,
            eval_mode=True,
            params=quantized_weights(model),
            after_step=self.projector(model, base),
            keep_best=keep_best,
            desc="pqbackdoor stage 2",
            **stage_kwargs(s2),
        )
