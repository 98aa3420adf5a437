"""Simulated (fake) quantization of any registered model.

A :class:`QuantScheme` is a value describing one quantizer; :func:`quantize_model` returns a
copy of a model in which every ``Conv2d``/``Linear`` is a :class:`QuantConv2d`/:class:`QuantLinear`
that fake-quantizes its weight. Activations are quantized where the scheme's ``placement`` says:

* ``layer_input`` (Qu-ANTI-zation's placement, and every scheme but the academic one): each
  conv/linear quantizes its own *input*; block outputs, adds and pools are not quantized on
  their own, and a residual shortcut carries the unquantized activation;
* ``mqbench`` (MQBench's academic backend, ``AcademicQuantizer``): the copy is a
  ``torch.fx.GraphModule`` with an :class:`ActQuantizer` on the output of every node that feeds a
  conv/linear (:func:`post_act_producers`), shared by all of that node's consumers, so residual
  shortcuts, adds and pools downstream read the quantized activation. Named as MQBench names
  them, ``<node>_post_act_fake_quantizer``. The io rule keeps the quantizers feeding the first
  and last conv/linear at 8 bits. Deviation: MQBench's first layer is the node consuming the
  model input; qcbench's models normalize inside the model, so the first conv is meant (its
  input, the normalized image, gets the 8-bit quantizer MQBench puts on the image). A model that
  torch.fx cannot trace is refused (``ValueError``), not quantized in another placement.

Rounding uses a straight-through estimator, so the same modules serve quantization-aware
attacks, layer-wise defenses and plain evaluation.

Conventions (recorded here because the upstream codes differ):

* symmetric grids are signed ``[-2^(b-1), 2^(b-1)-1]`` with ``scale = max|x| / (2^(b-1)-1)``
  (``symmetric_range="qmax"``, Qu-ANTI-zation's multiplier) or ``max|x| / ((qmax-qmin)/2)``
  (``"half"``: 127.5 at 8 bits, PyTorch's and MQBench's observers, PQBackdoor's locks);
* affine grids are unsigned ``[0, 2^b-1]``; the range is first extended to contain 0 (torch
  and MQBench observers) so zero is exact; ``zero_point = qmin - round(min / scale)``;
* observers: ``dynamic`` (the current tensor's min/max at every call, as Qu-ANTI-zation
  trains and evaluates; evaluated ranges therefore depend on the batch: qcbench evaluates in
  batches of ``eval.batch_size``, 128 as upstream in the local default, 500 in the paper
  config), ``minmax`` (running min/max over calibration batches), ``ema_minmax`` (0.9/0.1
  blend), ``mse`` (per batch, the shrunken range with the least L2 fake-quant error, then
  running min/max: MQBench's ``MSEObserver``), ``ema_mse`` (the same per-batch ranges blended
  0.9/0.1: MQBench's ``EMAMSEObserver``). The MSE search is MQBench's: the min/max range times
  ``1 - i/100``, i < 80 per channel, i < 95 per tensor, keeping the first least error. The
  academic scheme observes weights with ``mse`` (per output channel) and activations with
  ``ema_mse`` (``act_observer``), as EFRAP/LAC's MQBench configs (``w_observer: MSEObserver``,
  ``a_observer: EMAMSEObserver``);
* weights are always observed on the weight itself; activations on calibration batches, in the
  FP view (every fake quantizer off, as MQBench calibrates).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from qcbench._registry import Registry

if TYPE_CHECKING:
    from qcbench.data import ImageSet

OBSERVERS = ("dynamic", "minmax", "ema_minmax", "mse", "ema_mse")
#: where activation quantizers sit (:class:`QuantScheme` ``placement``)
PLACEMENTS = ("layer_input", "mqbench")
SCHEMES = Registry("quantization scheme")
register_scheme = SCHEMES.register


@dataclass(frozen=True)
class QuantScheme:
    """One simulated quantizer. ``bits`` apply to weights and activations alike unless
    ``act_bits`` is given; ``io_8bit`` keeps the first and last layers (weights and their
    inputs) at 8 bits, as MQBench's academic backend does. ``act_observer`` (None: ``observer``)
    observes the activations. ``placement`` puts the activation quantizers at every conv/linear's
    own input (``layer_input``) or, as MQBench's academic backend, on the output of each node
    feeding a conv/linear, shared by all of that node's consumers (``mqbench``, see
    :func:`post_act_producers`)."""

    weight_bits: int = 8
    act_bits: int = 8
    weight_symmetric: bool = True
    weight_per_channel: bool = False
    act_symmetric: bool = False
    quantize_acts: bool = True
    observer: str = "minmax"
    fold_bn: bool = False
    io_8bit: bool = False
    symmetric_range: str = "qmax"
    act_observer: str | None = None
    placement: str = "layer_input"

    def __post_init__(self) -> None:
        for obs in (self.observer, self.act_observer):
            if obs is not None and obs not in OBSERVERS:
                raise ValueError(f"observer {obs!r} not in {OBSERVERS}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement {self.placement!r} not in {PLACEMENTS}")
        if self.symmetric_range not in ("qmax", "half"):
            raise ValueError(f"symmetric_range {self.symmetric_range!r} not in ('qmax', 'half')")
        for b in (self.weight_bits, self.act_bits):
            if not 2 <= b <= 16:
                raise ValueError(f"bit width {b} outside [2, 16]")

    @property
    def activation_observer(self) -> str:
        return self.observer if self.act_observer is None else self.act_observer

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantScheme:
        return cls(**d)


def create_scheme(name: str, bits: int, **overrides) -> QuantScheme:
    """A registered scheme family (see :func:`register_scheme`) at ``bits``."""
    return dataclasses.replace(SCHEMES.create(name, bits), **overrides)


@register_scheme("qa")
def _qa(bits: int) -> QuantScheme:
    """Qu-ANTI-zation's quantizer: per-layer symmetric weights, per-layer affine activations at
    every conv/linear input (the image included), dynamic ranges, BN not folded."""
    return QuantScheme(bits, bits, observer="dynamic")


@register_scheme("mqbench_academic")
def _academic(bits: int) -> QuantScheme:
    """EFRAP/LAC's MQBench academic w{b}a{b}: per-channel affine MSE weights, per-tensor affine
    EMA-MSE activations on the outputs of the nodes feeding a conv/linear (MQBench placement),
    BN not folded, first/last layer (weights and their input quantizers) at 8 bits."""
    return QuantScheme(
        bits,
        bits,
        weight_symmetric=False,
        weight_per_channel=True,
        observer="mse",
        act_observer="ema_mse",
        io_8bit=True,
        placement="mqbench",
    )


@register_scheme("pq")
def _pq(bits: int) -> QuantScheme:
    """PQBackdoor's target (fbgemm deployment): per-channel symmetric min/max weights with
    PyTorch's max/127.5 scale, BN not folded, per-tensor affine calibrated activations."""
    return QuantScheme(bits, bits, weight_per_channel=True, observer="minmax", symmetric_range="half")


@register_scheme("pq_tensor")
def _pq_tensor(bits: int) -> QuantScheme:
    """PQBackdoor's qnnpack target: per-tensor symmetric min/max weights (max/127.5), BN not
    folded, per-tensor affine calibrated activations."""
    return QuantScheme(bits, bits, observer="minmax", symmetric_range="half")


@register_scheme("ca")
def _ca(bits: int) -> QuantScheme:
    """CompArtifact's deployment (PyTorch PTQ after fusion): per-tensor symmetric min/max
    weights (max/127.5) on BN-folded weights, per-tensor affine calibrated activations. Deviation,
    recorded: activations use min/max ranges where PyTorch's default qconfig uses a
    HistogramObserver; the real backends (``evaluate_backend``, 8-bit cells) use torch's own."""
    return QuantScheme(bits, bits, observer="minmax", fold_bn=True, symmetric_range="half")


@register_scheme("fbgemm_like")
def _fbgemm(bits: int) -> QuantScheme:
    """PyTorch fbgemm-style static PTQ: per-channel symmetric min/max weights, BN folded."""
    return QuantScheme(bits, bits, weight_per_channel=True, observer="minmax", fold_bn=True)


@register_scheme("onnxruntime")
def _onnxruntime(bits: int) -> QuantScheme:
    """ONNX Runtime's static PTQ (``quantize_static`` defaults after ``quant_pre_process``):
    per-tensor symmetric min/max weights (max/127) on BN-folded weights, per-tensor affine min/max
    activations; ORT also quantizes the tensors between layers, which this scheme leaves float."""
    return QuantScheme(bits, bits, observer="minmax", fold_bn=True)


def round_ste(v: torch.Tensor) -> torch.Tensor:
    """Nearest rounding with an identity (straight-through) gradient."""
    return v + (torch.round(v) - v).detach()


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    q = torch.clamp(round_ste(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale


class _FakeQuantSTE(torch.autograd.Function):
    """Forward of :func:`fake_quantize_affine`; backward passes the gradient where the code was not
    clamped (torch's ``*_cachemask`` kernels)."""

    @staticmethod
    def forward(ctx, x, scale, zp, qmin, qmax):
        code = torch.round(x * torch.reciprocal(scale)).add_(zp)
        mask = (code >= qmin) & (code <= qmax)
        ctx.save_for_backward(mask)
        return code.clamp_(qmin, qmax).sub_(zp).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None


def fake_quantize_affine(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``(clamp(round(x · (1/scale)) + zp, qmin, qmax) − zp) · scale`` with a straight-through
    gradient masked where the code is clamped; ``scale``/``zp`` broadcast against ``x`` (shape
    (C, 1, …) per channel). The same arithmetic as torch's fused ``fake_quantize_per_*_affine``
    CPU kernels, element by element (float32 reciprocal, round half to even), so values and
    gradients are bitwise equal — but as vectorised tensor ops, 2-7x faster on CPU (those kernels
    run a scalar loop, slowest when many values clamp; README, Benchmarks). No gradient reaches
    ``scale`` or ``zp`` (as with the fused kernels)."""
    scale, zp = scale.float().detach(), zp.detach().round().float()
    if torch.is_grad_enabled() and x.requires_grad:
        return _FakeQuantSTE.apply(x, scale, zp, qmin, qmax)
    return torch.round(x * torch.reciprocal(scale)).add_(zp).clamp_(qmin, qmax).sub_(zp).mul_(scale)


def dense_view(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its dimensions permuted into memory order (a contiguous view, no copy) when it is
    dense but not contiguous, e.g. channels-last activations; else ``x``. For order-free
    reductions over the whole tensor: ``torch.aminmax`` of a channels-last [128, 16, 28, 28]
    tensor copies it to contiguous first and takes ~11x as long on one CPU thread (2.0 vs 0.17 ms,
    torch 2.14.1), the same values."""
    if x.is_contiguous() or x.ndim < 2:
        return x
    order = sorted(range(x.ndim), key=lambda d: -x.stride(d))
    view = x.permute(*order)
    return view if view.is_contiguous() else x


class FakeQuantizer(nn.Module):
    """Observer + fake-quantizer for one tensor (per-tensor, or per output channel = dim 0)."""

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        per_channel: bool,
        observer: str,
        channels: int = 1,
        symmetric_range: str = "qmax",
    ) -> None:
        super().__init__()
        self.bits, self.symmetric, self.per_channel, self.observer = bits, symmetric, per_channel, observer
        self.symmetric_range = symmetric_range
        n = channels if per_channel else 1
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("zero_point", torch.zeros(n))
        self.register_buffer("calibrated", torch.tensor(False))
        self.observing = False
        #: observe the tensor itself at every forward, from scratch, and quantize it with the range
        #: this observer gives it (a training policy: a weight quantizer then follows the current
        #: weights as the deployer's observer would follow the final ones); ``dynamic`` with any
        #: observer
        self.track = False
        self._lo: torch.Tensor | None = None
        self._hi: torch.Tensor | None = None

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "affine"
        gran = "per-channel" if self.per_channel else "per-tensor"
        return f"bits={self.bits}, {kind}, {gran}, observer={self.observer}"

    def _minmax(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.per_channel:
            return torch.aminmax(x.detach().flatten(1), dim=1)
        lo, hi = torch.aminmax(dense_view(x.detach()))
        return lo.reshape(1), hi.reshape(1)

    def qparams(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.symmetric:
            denom = self.qmax if self.symmetric_range == "qmax" else (self.qmax - self.qmin) / 2
            scale = torch.maximum(lo.abs(), hi.abs()) / denom
            return scale.clamp_min(1e-8), torch.zeros_like(scale)
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = ((hi - lo) / (self.qmax - self.qmin)).clamp_min(1e-8)
        zp = torch.clamp(self.qmin - torch.round(lo / scale), self.qmin, self.qmax)
        return scale, zp

    def _shape(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.view(-1, *([1] * (x.ndim - 1))) if self.per_channel else t

    def quantize(self, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
        """Fake-quantize: :func:`fake_quantize_affine`, bitwise equal to torch's fused
        ``fake_quantize_per_{tensor,channel}_affine`` kernels (values and gradients) and the same
        rounding, clamp and straight-through gradient as :func:`fake_quant`."""
        return fake_quantize_affine(x, self._shape(scale, x), self._shape(zp, x), self.qmin, self.qmax)

    def _mse_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._minmax(x)
        best_err, best_lo, best_hi = None, lo, hi
        flat = x.detach().flatten(1) if self.per_channel else x.detach().reshape(1, -1)
        buf = torch.empty_like(flat)
        for i in range(80 if self.per_channel else 95):  # MQBench's 1 % steps
            f = 1.0 - 0.01 * i
            s, z = self.qparams(lo * f, hi * f)
            s, z = s[:, None], z[:, None]
            # fake_quant(flat, s, z) − flat, its arithmetic (x / s, round) in place: the same values
            err = torch.div(flat, s, out=buf).round_().add_(z).clamp_(self.qmin, self.qmax).sub_(z).mul_(s)
            err = err.sub_(flat).square_().sum(1)
            if best_err is None:
                best_err = err
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo * f, best_lo), torch.where(better, hi * f, best_hi)
        return best_lo, best_hi

    def observed_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The range this quantizer's observer takes from ``x`` alone (one batch, no history)."""
        return self._mse_range(x) if self.observer in ("mse", "ema_mse") else self._minmax(x)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        lo, hi = self.observed_range(x)
        if self._lo is None:
            self._lo, self._hi = lo, hi
        elif self.observer in ("ema_minmax", "ema_mse"):
            self._lo, self._hi = 0.9 * self._lo + 0.1 * lo, 0.9 * self._hi + 0.1 * hi
        else:
            self._lo, self._hi = torch.minimum(self._lo, lo), torch.maximum(self._hi, hi)
        s, z = self.qparams(self._lo, self._hi)
        self.scale.copy_(s)
        self.zero_point.copy_(z)
        self.calibrated.fill_(True)

    def reset(self) -> None:
        self._lo = self._hi = None
        self.calibrated.fill_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        if self.track:
            return self.quantize(x, *self.qparams(*self.observed_range(x)))
        if self.observer == "dynamic" and not bool(self.calibrated):
            return self.quantize(x, *self.qparams(*self._minmax(x)))
        if not bool(self.calibrated):
            raise RuntimeError(f"quantizer ({self.extra_repr()}) used before calibration")
        return self.quantize(x, self.scale, self.zero_point)


class _QuantMixin:
    """Shared by QuantConv2d/QuantLinear: fake-quantized input and weight (+ optional offset)."""

    wq: FakeQuantizer
    aq: FakeQuantizer | None

    def _init_quant(self, scheme: QuantScheme, bits: int, act_bits: int) -> None:
        self.wq = FakeQuantizer(
            bits,
            scheme.weight_symmetric,
            scheme.weight_per_channel,
            scheme.observer,
            self.weight.shape[0],
            scheme.symmetric_range,
        )
        own_input = scheme.quantize_acts and scheme.placement == "layer_input"
        self.aq = (
            FakeQuantizer(act_bits, scheme.act_symmetric, False, scheme.activation_observer) if own_input else None
        )
        self.quant_enabled = True
        # set by a layer-wise defense whose cached unit inputs are already quantized (MQBench's
        # quantizer sits at the end of the previous unit): the input is then not re-quantized
        self.input_quantized = False
        self.weight_offset: nn.Parameter | None = None
        self.dual = False
        self.fold_k: Callable[[], torch.Tensor] | None = None
        # when set, the last quantized forward leaves (quantized input, quantized weight) here
        # for a forward hook to reuse (the adaptive attack's penalty) instead of recomputing them
        self.keep_operands = False
        self.operands: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quant_enabled:
            self._observe_fp(x)
            return self._op(x, self.weight)
        if self.dual:  # CompArtifact: first half of the batch quantized, second half FP
            xq, xf = x.chunk(2)
            return torch.cat([self._quant_forward(xq), self._op(xf, self.weight)])
        return self._quant_forward(x)

    def _quant_forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_input(x)
        if self.fold_k is None:
            w = self.quant_weight()
            if self.keep_operands:
                self.operands = (x, w)
            return self._op(x, w)
        # QAT conv-BN folding: quantize w·k (k = γ/σ of the following BN), divide k back out
        k = self.fold_k()
        w = self.weight if self.weight_offset is None else self.weight + self.weight_offset
        y = self._op(x, self.wq(w * k.view(-1, *([1] * (w.ndim - 1)))), bias=False)
        y = y / k.view(1, -1, *([1] * (y.ndim - 2)))
        return y if self.bias is None else y + self.bias.view(1, -1, *([1] * (y.ndim - 2)))

    def quant_weight(self) -> torch.Tensor:
        w = self.weight if self.weight_offset is None else self.weight + self.weight_offset
        return self.wq(w)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.aq is None or self.input_quantized else self.aq(x)

    def _observe_fp(self, x: torch.Tensor) -> None:
        """In the FP view, an observing activation quantizer still records its input."""
        if self.aq is not None and self.aq.observing:
            self.aq.observe(x)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    def _op(self, x: torch.Tensor, w: torch.Tensor, bias: bool = True) -> torch.Tensor:
        return self._conv_forward(x, w, self.bias if bias else None)


class QuantLinear(_QuantMixin, nn.Linear):
    def _op(self, x: torch.Tensor, w: torch.Tensor, bias: bool = True) -> torch.Tensor:
        return F.linear(x, w, self.bias if bias else None)


QUANT_MODULES = (QuantConv2d, QuantLinear)

#: suffix of a post-activation quantizer's name (MQBench's): ``<producer node>_post_act_fake_quantizer``
POST_ACT_SUFFIX = "_post_act_fake_quantizer"


class ActQuantizer(nn.Module):
    """A post-activation quantizer (``placement="mqbench"``): a node of the model's graph on one
    producer's output, so every consumer of that output (convs, linears, residual adds, pools)
    reads the quantized activation. ``quant_enabled``/``quant_input`` as on a quantized layer;
    ``io`` marks a quantizer feeding the first or last layer (8 bits under ``io_8bit``)."""

    def __init__(self, bits: int, scheme: QuantScheme, io: bool = False) -> None:
        super().__init__()
        self.aq = FakeQuantizer(bits, scheme.act_symmetric, False, scheme.activation_observer)
        self.io = io
        self.quant_enabled = True
        self.dual = False  # CompArtifact: quantize the first half of the batch, pass the FP half

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.aq(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quant_enabled:
            if self.aq.observing:  # the FP view still records what it sees (calibration)
                self.aq.observe(x)
            return x
        if self.dual:
            xq, xf = x.chunk(2)
            return torch.cat([self.aq(xq), xf])
        return self.aq(x)


class QuantTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps quantized layers, post-activation quantizers and the input
    normalization as single nodes (everything else as :func:`torch.fx.symbolic_trace`)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from qcbench.models.layers import Normalize

        return isinstance(m, (*QUANT_MODULES, ActQuantizer, Normalize)) or super().is_leaf_module(m, qualname)


def layer_order(model: nn.Module) -> list[str]:
    """Names of the Conv2d/Linear modules in execution order (from the traced graph when the
    model traces, else definition order)."""
    kinds = (nn.Conv2d, nn.Linear)
    try:
        graph = QuantTracer().trace(model)
        mods = dict(model.named_modules())
        names = [n.target for n in graph.nodes if n.op == "call_module" and isinstance(mods.get(n.target), kinds)]
    except Exception:  # untraceable model: fall back to the order of definition
        names = [n for n, m in model.named_modules() if isinstance(m, kinds)]
    return names


def _flat_nodes(args) -> list[torch.fx.Node]:
    """The graph nodes among ``args`` (nested tuples, lists and dicts), in order (MQBench's
    ``_flatten_args``)."""
    if isinstance(args, dict):
        args = list(args.values())
    if isinstance(args, list | tuple):
        return [n for a in args for n in _flat_nodes(a)]
    return [args] if isinstance(args, torch.fx.Node) else []


def post_act_producers(graph: torch.fx.Graph, modules: dict[str, nn.Module], io_layers=()) -> dict[str, bool]:
    """MQBench academic placement (``AcademicQuantizer._find_act_quants``): the names of the nodes
    whose output gets an activation quantizer, in the order the layers read them: every node among the positional
    arguments of a quantized conv/linear (``module_type_to_quant_input`` is conv and linear
    only; no function types, so adds and pools are quantized only through the conv/linear they
    feed). The value is True for a node feeding a layer of ``io_layers``: its quantizer is at 8
    bits under ``io_8bit`` (``post_act_8bit_node_name``)."""
    out: dict[str, bool] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), QUANT_MODULES):
            continue
        for src in _flat_nodes(node.args):
            out[src.name] = out.get(src.name, False) or node.target in io_layers
    return out


def _insert_post_act_quantizers(model: nn.Module, scheme: QuantScheme, names: list[str]) -> torch.fx.GraphModule:
    """``model`` as a GraphModule with an :class:`ActQuantizer` after every producer
    :func:`post_act_producers` names, every use of the producer rewired to it."""
    try:
        graph = QuantTracer().trace(model)
    except Exception as e:
        raise ValueError(
            f"placement 'mqbench' needs a model torch.fx can trace; {type(model).__name__} does not ({e})"
        ) from e
    gm = torch.fx.GraphModule(model, graph, type(model).__name__)
    io_layers = {names[0], names[-1]} if scheme.io_8bit and names else set()
    producers = post_act_producers(gm.graph, dict(gm.named_modules()), io_layers)
    nodes = {n.name: n for n in gm.graph.nodes}
    for name, io in producers.items():
        src, qname = nodes[name], name + POST_ACT_SUFFIX
        gm.add_submodule(qname, ActQuantizer(8 if io else scheme.act_bits, scheme, io).to(_device(model)))
        with gm.graph.inserting_after(src):
            q = gm.graph.call_module(qname, (src,))
        src.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
    gm.graph.lint()
    gm.recompile()
    return gm


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantize_model(model: nn.Module, scheme: QuantScheme) -> nn.Module:
    """A copy of ``model`` with every Conv2d/Linear fake-quantized according to ``scheme``.

    With ``fold_bn`` the copy is first put in eval mode and BatchNorm folded into the preceding
    conv (``torch.fx.experimental.optimization.fuse``). With ``placement="mqbench"`` (and
    activations quantized) it is a ``torch.fx.GraphModule`` carrying :class:`ActQuantizer` nodes
    (module names, parameters and buffers of the original kept). Calibrate it with
    :func:`calibrate` unless the observer is ``dynamic``.
    """
    model = copy.deepcopy(model)
    if scheme.fold_bn:
        from torch.fx.experimental.optimization import fuse

        model = fuse(model.eval())
    names = layer_order(model)
    for i, name in enumerate(names):
        old = model.get_submodule(name)
        io = scheme.io_8bit and i in (0, len(names) - 1)
        wb, ab = (8, 8) if io else (scheme.weight_bits, scheme.act_bits)
        if isinstance(old, nn.Conv2d):
            new = QuantConv2d(
                old.in_channels,
                old.out_channels,
                old.kernel_size,
                old.stride,
                old.padding,
                old.dilation,
                old.groups,
                old.bias is not None,
                old.padding_mode,
            )
        else:
            new = QuantLinear(old.in_features, old.out_features, old.bias is not None)
        new.weight, new.bias = old.weight, old.bias
        new._init_quant(scheme, wb, ab)
        new.to(old.weight.device)
        _swap(model, name, new)
    if scheme.placement == "mqbench" and scheme.quantize_acts:
        model = _insert_post_act_quantizers(model, scheme, names)
    _set_scheme(model, scheme)
    return model


def _set_scheme(model: nn.Module, scheme: QuantScheme) -> None:
    """Record ``scheme`` on ``model``; a BN-folded model is a ``torch.fx.GraphModule``, whose deep
    copy keeps only the attributes its ``meta["_user_preserved_attributes"]`` lists, so the scheme
    is listed there too (a defense's working copy must still know its quantizer)."""
    model.qcbench_scheme = scheme
    if isinstance(model, torch.fx.GraphModule):
        model.meta.setdefault("_user_preserved_attributes", {})["qcbench_scheme"] = scheme


def quant_modules(model: nn.Module) -> Iterator[tuple[str, _QuantMixin]]:
    for name, m in model.named_modules():
        if isinstance(m, QUANT_MODULES):
            yield name, m


def act_quantizers(model: nn.Module) -> Iterator[tuple[str, ActQuantizer]]:
    """The post-activation quantizers (``placement="mqbench"``), in graph order."""
    for name, m in model.named_modules():
        if isinstance(m, ActQuantizer):
            yield name, m


def input_quantizers(model: nn.Module) -> dict[str, FakeQuantizer | None]:
    """Each quantized layer's input activation quantizer, by layer name: its own (``layer_input``)
    or the post-activation quantizer its input comes from (``mqbench``); None where the input is
    not quantized."""
    out = {name: m.aq for name, m in quant_modules(model)}
    if isinstance(model, torch.fx.GraphModule):
        mods = dict(model.named_modules())
        for node in model.graph.nodes:
            if node.op == "call_module" and node.target in out and out[node.target] is None:
                src = _flat_nodes(node.args)
                if src and src[0].op == "call_module" and isinstance(mods.get(src[0].target), ActQuantizer):
                    out[node.target] = mods[src[0].target].aq
    return out


def _switchable(model: nn.Module) -> list[_QuantMixin | ActQuantizer]:
    return [m for _, m in quant_modules(model)] + [m for _, m in act_quantizers(model)]


def set_bits(model: nn.Module, bits: int) -> None:
    """Switch every quantizer to ``bits`` (io layers and the quantizers feeding them stay at 8
    under ``io_8bit``) and reset it."""
    scheme: QuantScheme = model.qcbench_scheme
    mods = list(quant_modules(model))
    for i, (_, m) in enumerate(mods):
        b = 8 if scheme.io_8bit and i in (0, len(mods) - 1) else bits
        for q in (m.wq, m.aq):
            if q is not None:
                q.bits = b
                q.reset()
    for _, m in act_quantizers(model):
        m.aq.bits = 8 if scheme.io_8bit and m.io else bits
        m.aq.reset()
    _set_scheme(model, dataclasses.replace(scheme, weight_bits=bits, act_bits=bits))


def set_quant_enabled(model: nn.Module, enabled: bool) -> None:
    for m in _switchable(model):
        m.quant_enabled = enabled


@contextmanager
def fp_view(model: nn.Module) -> Iterator[nn.Module]:
    """Run a quantized model in full precision (same weights) inside the block; on exit every
    layer and post-activation quantizer is back in the state it had (a model quantizing only
    some layers, as CompArtifact's, keeps the others in FP)."""
    before = [(m, m.quant_enabled) for m in _switchable(model)]
    set_quant_enabled(model, False)
    try:
        yield model
    finally:
        for m, enabled in before:
            m.quant_enabled = enabled


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Calibrate a quantized model: weights from themselves, activations on ``batches``
    (images in [0, 1]). Dynamic quantizers are left dynamic. The model is left in eval mode."""
    model.eval()
    mods = _switchable(model)
    for m in mods:
        if isinstance(m, QUANT_MODULES) and m.wq.observer != "dynamic":
            m.wq.reset()
            m.wq.observe(m.weight)
        if m.aq is not None and m.aq.observer != "dynamic":
            m.aq.reset()
            m.aq.observing = True
            m.quant_enabled = False  # activations observed in FP, as MQBench calibrates
    try:
        if any(m.aq is not None and m.aq.observing for m in mods):
            for x in batches:
                model(x)
    finally:
        for m in mods:
            if m.aq is not None:
                m.aq.observing = False
            m.quant_enabled = True
    return model


def fake_quantizers(model: nn.Module) -> Iterator[tuple[str, FakeQuantizer]]:
    """Every :class:`FakeQuantizer` of ``model`` by module name, wherever it is placed."""
    for name, m in model.named_modules():
        if isinstance(m, FakeQuantizer):
            yield name, m


class TrainingRanges:
    """Ranges for training against a calibrated (not ``dynamic``) scheme, whose quantizers refuse
    to run before calibration and which :func:`set_bits` resets.

    * Every weight quantizer tracks its weight (:attr:`FakeQuantizer.track`): its range is the
      observer's on the current weights at every forward, as the deployer's observer will take it
      from the final ones.
    * Every other quantizer (activations, wherever the scheme places them) is calibrated by
      :func:`calibrate` on ``batches()`` at each of ``bits``; its scale and zero-point are kept per
      bit width and held fixed between calibrations. :meth:`use` switches the model to a bit width
      and restores them; :meth:`step` (once per training step) recalibrates every ``every`` steps,
      the first step included. Calibration leaves every module's train/eval mode as it found it.
    """

    def __init__(
        self, model: nn.Module, bits: Iterable[int], batches: Callable[[], Iterable[torch.Tensor]], every: int
    ) -> None:
        self.model, self.bits, self.batches, self.every = model, list(bits), batches, max(1, every)
        self.steps = 0
        self.states: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.weights = {id(m.wq) for _, m in quant_modules(model)}
        for _, q in fake_quantizers(model):
            q.track = id(q) in self.weights

    def calibrate(self) -> None:
        modes = [(m, m.training) for m in self.model.modules()]
        try:
            for b in self.bits:
                set_bits(self.model, b)
                calibrate(self.model, self.batches())
                self.states[b] = {
                    name: (q.scale.clone(), q.zero_point.clone())
                    for name, q in fake_quantizers(self.model)
                    if id(q) not in self.weights and q.observer != "dynamic"
                }
        finally:
            for m, training in modes:
                m.training = training

    def step(self) -> None:
        if self.steps % self.every == 0:
            self.calibrate()
        self.steps += 1

    def use(self, bits: int) -> None:
        """Switch to ``bits`` with that width's calibrated activation ranges."""
        set_bits(self.model, bits)
        state = self.states[bits]
        for name, q in fake_quantizers(self.model):
            if name in state:
                q.scale.copy_(state[name][0])
                q.zero_point.copy_(state[name][1])
                q.calibrated.fill_(True)


#: calibration defaults (the paper config's ``quant.calib_images`` and ``quant.calib_batch_size``)
CALIB_IMAGES = 1024
CALIB_BATCH_SIZE = 32


def calibration_batches(
    data: ImageSet, images: int = CALIB_IMAGES, batch_size: int = CALIB_BATCH_SIZE, device=None
) -> Iterator[torch.Tensor]:
    """The first ``images`` images of ``data`` (float in [0, 1], on ``device`` when given) in
    batches of ``batch_size``; labels dropped."""
    for x, _ in data.batches(batch_size, limit=images):
        yield x if device is None else x.to(device)


def quantize_calibrated(
    model: nn.Module,
    scheme: QuantScheme,
    data: ImageSet | None,
    *,
    images: int = CALIB_IMAGES,
    batch_size: int = CALIB_BATCH_SIZE,
    device=None,
) -> nn.Module:
    """A copy of ``model`` fake-quantized with ``scheme`` and calibrated (:func:`calibrate`) on
    the first ``images`` images of ``data`` in batches of ``batch_size``, moved to ``device``:
    how every stage quantizes a cell (on the defender subset). ``data`` None calibrates the
    weights only (enough for a ``dynamic`` scheme)."""
    batches = () if data is None else calibration_batches(data, images, batch_size, device)
    return calibrate(quantize_model(model, scheme), batches)


def freeze_weight_ranges(model: nn.Module) -> None:
    """Fix every weight quantizer's scale/zero-point at the current weights' range (layer-wise
    defenses optimise offsets on a fixed grid, even under a dynamic scheme)."""
    for _, m in quant_modules(model):
        m.wq.reset()
        m.wq.observe(m.weight)
