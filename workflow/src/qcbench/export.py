"""A fake-quantized model's exact quantizer, written down and exported: the grids it uses, a
loader that rebuilds the model on exactly those grids, and an ONNX QDQ export.

A layer-wise defense (LAC, EFRAP) chooses every weight's rounding on a *fixed* grid
(:func:`qcbench.quant.freeze_weight_ranges`), so a purified model is safe only on that grid and
with the activation ranges it was purified under; re-calibrating moves layers to another grid.
This module therefore never recalibrates:

:func:`quantizer_record`, :func:`quantization_record`
    every quantizer's bits, signedness, granularity, scale and zero-point, and whether its range is
    fixed (``"fixed": true``) or recomputed from every batch (a ``dynamic`` activation quantizer,
    ``"fixed": false``, with the ranges it used on the defender images under ``"recorded"``);
:func:`load_purified`
    a ``qcbench purify`` output rebuilt with those grids set from ``model.json`` (optionally with a
    dynamic scheme's recorded activation ranges fixed, as the ONNX export runs it);
:func:`export_qdq_onnx`
    the model as an ONNX QDQ graph: each weight an int8/uint8 (int4/uint4 at 4 bits, opset 21)
    initializer holding the integer codes, followed by ``DequantizeLinear`` (per output channel on
    axis 0 or per tensor, as the scheme); each activation quantizer a ``QuantizeLinear`` +
    ``DequantizeLinear`` pair with its fixed scale and zero-point. Everything else (normalization,
    BatchNorm, adds, pooling) stays float, exactly where the simulated quantizer leaves it. The
    graph is traced with :func:`qcbench.backends.export_onnx` (the one ONNX path of the library)
    and run with :class:`qcbench.backends.OrtQuantizedModel`.

What the exporter assumes of a model: its quantized layers are the ``QuantConv2d``/``QuantLinear``
modules :func:`qcbench.quant.quant_modules` yields, each quantizing its weight with its ``wq``
(a ``FakeQuantizer`` on a fixed grid, exported as integer codes). Every other ``FakeQuantizer``
module, wherever it sits (a layer's ``aq`` on its input, or a quantizer placed on a producer's
output), is exported as a per-tensor ``QuantizeLinear`` + ``DequantizeLinear`` pair at the point of
the graph where it runs: the exporter swaps each ``FakeQuantizer`` module for one that leaves a
tagged node in the traced graph, so it needs no knowledge of the placement. A weight offset still
attached, a CompArtifact dual forward or a QAT conv-BN fold (``fold_k``) is refused.

ONNX Runtime 1.31 runs these graphs on its CPU provider at 8 and at 4 bits (int4/uint4
``QuantizeLinear``/``DequantizeLinear``, opset 21). Because the quantizers sit on the layers'
inputs and weights only (not on their outputs), ORT keeps ``DequantizeLinear`` + float
``Conv``/``Gemm`` rather than fusing them into ``QLinearConv``: the integers are the purified
codes, the arithmetic after dequantization is float, as in the simulation.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

#: bit widths with an exact ONNX integer type (the type's range is the quantizer's grid)
ONNX_BITS = (4, 8)
#: the opset of the exported graph: 17 at 8 bits, 21 (the first with INT4/UINT4) when a quantizer has 4 bits
OPSET_8BIT, OPSET_4BIT = 17, 21


class ExportError(ValueError):
    """A model or quantizer the exporter cannot write exactly; the message says which and why."""


# -- the grids ---------------------------------------------------------------------------------
def integer_codes(q, x: torch.Tensor) -> torch.Tensor:
    """The integer codes ``clamp(round(x · (1/scale)) + zp, qmin, qmax)`` of ``x`` on the fixed grid of
    the ``FakeQuantizer`` ``q`` (the arithmetic of :func:`qcbench.quant.fake_quantize_affine`, so
    ``(codes − zp) · scale`` is bitwise what ``q(x)`` returns), as int32."""
    if not bool(q.calibrated):
        raise ExportError(f"quantizer ({q.extra_repr()}) has no fixed range")
    scale, zp = q._shape(q.scale.float(), x), q._shape(q.zero_point.round().float(), x)
    codes = torch.round(x.detach().float() * torch.reciprocal(scale)).add_(zp).clamp_(q.qmin, q.qmax)
    return codes.to(torch.int32)


def quantizer_record(q, *, fixed: bool | None = None) -> dict | None:
    """One quantizer as ``model.json`` records it: bits, signedness, granularity, observer, integer
    range and, when its range is fixed (calibrated, or a weight grid frozen by the defense), its
    scale and zero-point. ``fixed=False`` marks a dynamic quantizer whose buffers hold no range."""
    if q is None:
        return None
    fixed = bool(q.calibrated) if fixed is None else fixed
    d = {
        "bits": int(q.bits),
        "symmetric": bool(q.symmetric),
        "per_channel": bool(q.per_channel),
        "observer": q.observer,
        "qmin": int(q.qmin),
        "qmax": int(q.qmax),
        "fixed": fixed,
    }
    if fixed:
        d |= {"scale": q.scale.float().tolist(), "zero_point": q.zero_point.float().tolist()}
    return d


def quantization_record(qmodel: nn.Module, recorded: dict | None = None) -> dict:
    """Every quantized layer's ``{"weight": ..., "act": ...}`` (:func:`quantizer_record`); a dynamic
    activation quantizer is ``fixed: false`` and carries ``recorded`` (scale/zero-point from
    :func:`record_activation_ranges`) when given."""
    from qcbench.quant import input_quantizers, quant_modules

    acts = input_quantizers(qmodel)  # a layer's own, or the shared post-activation one it reads
    out = {}
    for name, m in quant_modules(qmodel):
        act = quantizer_record(acts[name])
        if act is not None and not act["fixed"] and recorded and name in recorded:
            act["recorded"] = recorded[name]
        out[name] = {"weight": quantizer_record(m.wq), "act": act}
    return out


@torch.no_grad()
def record_activation_ranges(qmodel: nn.Module, batches) -> dict:
    """For every activation quantizer without a fixed range (a ``dynamic`` one), the scale and
    zero-point of the widest range it quantized over ``batches`` (min/max of its inputs as the
    quantized model runs, every layer quantized): the ranges the simulated model used on them,
    which an export with fixed ranges (ONNX) takes. ``{layer: {"scale", "zero_point", "lo", "hi"}}``."""
    from qcbench.quant import quant_modules

    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, m in quant_modules(qmodel):
        if m.aq is None or bool(m.aq.calibrated) or m.input_quantized:
            continue

        def hook(mod, args, name=name):
            lo, hi = mod.aq._minmax(args[0])
            if name in seen:
                lo, hi = torch.minimum(seen[name][0], lo), torch.maximum(seen[name][1], hi)
            seen[name] = [lo, hi]

        hooks.append(m.register_forward_pre_hook(hook))
    try:
        for x in batches:
            qmodel(x)
    finally:
        for h in hooks:
            h.remove()
    mods = dict(quant_modules(qmodel))
    out = {}
    for name, (lo, hi) in seen.items():
        scale, zp = mods[name].aq.qparams(lo, hi)
        out[name] = {"scale": scale.tolist(), "zero_point": zp.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
    return out


def set_grid(q, record: dict, where: str) -> None:
    """Fix quantizer ``q`` on the scale/zero-point of ``record`` (a :func:`quantizer_record` or a
    recorded range), checking that its bits and shape match."""
    if "bits" in record and int(record["bits"]) != q.bits:
        raise ExportError(f"{where}: model.json says {record['bits']} bits, the quantizer has {q.bits}")
    scale = torch.tensor(record["scale"], dtype=q.scale.dtype)
    zp = torch.tensor(record["zero_point"], dtype=q.zero_point.dtype)
    if scale.shape != q.scale.shape or zp.shape != q.zero_point.shape:
        raise ExportError(f"{where}: {len(scale)} scales in model.json, the quantizer has {len(q.scale)}")
    q.reset()
    q.scale.copy_(scale)
    q.zero_point.copy_(zp)
    q.calibrated.fill_(True)


def fix_activation_ranges(qmodel: nn.Module, recorded: dict) -> nn.Module:
    """Fix every activation quantizer named in ``recorded`` (:func:`record_activation_ranges`) on
    its recorded range, in place; returns ``qmodel``."""
    from qcbench.quant import quant_modules

    for name, m in quant_modules(qmodel):
        if name in recorded and m.aq is not None:
            set_grid(m.aq, recorded[name], f"{name} activation")
    return qmodel


def load_purified(folder: str | Path, *, fix_activations: bool = False, device="cpu") -> tuple[nn.Module, dict]:
    """The fake-quantized model of a ``qcbench purify`` output, rebuilt from ``model.json``: the
    architecture and scheme, the weights from ``model.safetensors`` and every quantizer's grid from
    ``model.json``'s ``quant_params`` (never recalibrated). Weight grids and calibrated activation
    ranges are fixed as recorded; a dynamic activation quantizer stays dynamic (as the purified
    model ran), or, with ``fix_activations``, is fixed on its recorded range (as ``model.onnx``
    runs). Returns ``(model in eval mode, meta)``."""
    from safetensors.torch import load_file

    from qcbench import io
    from qcbench.quant import input_quantizers, quant_modules

    folder = Path(folder)
    path = folder / "model.safetensors" if folder.is_dir() else folder
    meta = io.read_meta(path)
    record = meta.get("quant_params")
    if not meta.get("scheme") or not isinstance(record, dict):
        raise ExportError(f"{path}: not a quantized qcbench model (model.json has no scheme/quant_params)")
    model = io.build_model(meta)
    io.check_safetensors(path)
    state = load_file(str(path))
    quantizer_keys = {
        f"{name}.{part}.{buf}"
        for name, m in quant_modules(model)
        for part in ("wq", "aq")
        if getattr(m, part) is not None
        for buf in ("scale", "zero_point", "calibrated")
    }
    own = model.state_dict()
    weights = {k: v for k, v in state.items() if k not in quantizer_keys}
    missing = sorted(set(own) - quantizer_keys - set(weights))
    if missing:
        raise ExportError(f"{path}: tensors missing {missing[:5]}")
    model.load_state_dict(weights, strict=False)
    layers = dict(quant_modules(model))
    acts = input_quantizers(model)
    if set(layers) != set(record):
        raise ExportError(f"{path}: model.json's quant_params name {sorted(record)}, the model has {sorted(layers)}")
    for name, m in layers.items():
        w, a = record[name]["weight"], record[name]["act"]
        if not w or not w.get("fixed", "scale" in w):
            raise ExportError(f"{path}: layer {name}'s weight grid is not recorded in model.json")
        set_grid(m.wq, w, f"{name} weight")
        aq = acts[name]
        if aq is None:
            continue
        if a.get("fixed", "scale" in a):
            set_grid(aq, a, f"{name} activation")
        elif fix_activations:
            if "recorded" not in a:
                raise ExportError(f"{path}: layer {name}'s activation range is dynamic and none was recorded")
            set_grid(aq, a["recorded"], f"{name} activation")
        else:
            aq.reset()
    return model.to(device).eval(), meta


# -- ONNX QDQ ----------------------------------------------------------------------------------
@dataclass
class _Spec:
    """One quantizer of the exported graph (the table the traced graph's tags index)."""

    kind: str  # "weight" (integer codes, DequantizeLinear only) or "act" (QuantizeLinear + DequantizeLinear)
    where: str
    bits: int
    signed: bool
    per_channel: bool
    scale: torch.Tensor
    zero_point: torch.Tensor
    codes: torch.Tensor | None = None


class _TaggedQDQ(torch.autograd.Function):
    """Identity on the traced value's shape; exports as ``qcbench::QDQ[tag]``, rewritten to standard
    ONNX Q/DQ nodes after tracing."""

    @staticmethod
    def forward(ctx, x, y, tag):
        return y

    @staticmethod
    def symbolic(g, x, y, tag):
        out = g.op("qcbench::QDQ", x, tag_i=tag)
        out.setType(x.type())
        return out


class _ExportQuantizer(nn.Module):
    """Stands in for a ``FakeQuantizer`` while tracing: computes the same values, and leaves a tag
    in the graph naming its entry of the spec table."""

    def __init__(self, q, tag: int) -> None:
        super().__init__()
        self.q, self.tag = q, tag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _TaggedQDQ.apply(x, self.q(x), self.tag)


def _onnx_type(bits: int, signed: bool) -> int:
    from onnx import TensorProto

    return {(8, True): TensorProto.INT8, (8, False): TensorProto.UINT8, (4, True): TensorProto.INT4,
            (4, False): TensorProto.UINT4}[bits, signed]  # fmt: skip


def _check_quantizer(q, where: str) -> None:
    if q.bits not in ONNX_BITS:
        raise ExportError(
            f"{where}: {q.bits}-bit quantizer; an ONNX QDQ graph holds exact grids only at {ONNX_BITS} bits "
            "(INT8/UINT8, INT4/UINT4)"
        )
    if not bool(q.calibrated):
        raise ExportError(
            f"{where}: quantizer ({q.extra_repr()}) has no fixed range (a dynamic one); fix it first "
            "(qcbench.export.fix_activation_ranges, or load_purified(folder, fix_activations=True))"
        )
    zp = q.zero_point.round()
    if bool(((zp < q.qmin) | (zp > q.qmax)).any()):
        raise ExportError(f"{where}: zero-point outside [{q.qmin}, {q.qmax}]")


def quantizer_specs(qmodel: nn.Module) -> list[_Spec]:
    """Check every quantizer of ``qmodel`` for an exact ONNX export and list them: each quantized
    layer's weight quantizer (``wq``, exported as integer codes) and every other ``FakeQuantizer``
    module, wherever it sits (a layer's ``aq``, or one placed on a producer's output), as an
    activation Q/DQ pair. ``where`` is the layer name for ``wq``/``aq``, else the module's name."""
    from qcbench.quant import FakeQuantizer, quant_modules

    specs = []
    layers = list(quant_modules(qmodel))
    if not layers:
        raise ExportError("the model has no quantized layers (qcbench.quant.quantize_model makes them)")
    owners = {}  # id(FakeQuantizer) -> (kind, where)
    for name, m in layers:
        if m.weight_offset is not None or m.dual or m.fold_k is not None or not m.quant_enabled:
            raise ExportError(
                f"{name}: a weight offset, dual forward, QAT fold or disabled quantization is not exportable"
            )
        owners[id(m.wq)] = ("weight", name)
        if m.aq is not None:
            owners[id(m.aq)] = ("act", name) if not m.input_quantized else ("skip", name)
    weights = {name: m for name, m in layers}
    for mod_name, q in qmodel.named_modules():
        if not isinstance(q, FakeQuantizer):
            continue
        kind, where = owners.get(id(q), ("act", mod_name))
        if kind == "skip":
            continue
        _check_quantizer(q, f"{where} {'weight' if kind == 'weight' else 'activation'}")
        codes = integer_codes(q, weights[where].weight) if kind == "weight" else None
        per_channel = q.per_channel if kind == "weight" else False
        if kind == "act" and q.per_channel:
            raise ExportError(f"{where}: a per-channel activation quantizer is not exportable")
        specs.append(
            _Spec(
                kind,
                where,
                q.bits,
                q.symmetric,
                per_channel,
                q.scale.float().clone(),
                q.zero_point.round().clone(),
                codes,
            )
        )
    return specs


def _tagged_copy(qmodel: nn.Module, specs: list[_Spec]) -> nn.Module:
    from qcbench.quant import FakeQuantizer, quant_modules

    model = copy.deepcopy(qmodel).cpu().float().eval()
    tags = {(s.kind, s.where): i for i, s in enumerate(specs)}
    layer_of = {}
    for name, m in quant_modules(model):
        layer_of[id(m.wq)] = ("weight", name)
        if m.aq is not None:
            layer_of[id(m.aq)] = ("act", name)
    swaps = []
    for mod_name, q in model.named_modules():
        key = layer_of.get(id(q), ("act", mod_name)) if isinstance(q, FakeQuantizer) else None
        if key in tags:
            swaps.append((mod_name, _ExportQuantizer(q, tags[key])))
    for mod_name, new in swaps:
        parent, _, child = mod_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def _int_tensor(name: str, values: torch.Tensor, bits: int, signed: bool):
    import numpy as np
    from onnx import helper, numpy_helper

    arr = values.detach().cpu().to(torch.int64).numpy()
    if bits == 8:
        return numpy_helper.from_array(arr.astype(np.int8 if signed else np.uint8), name)
    return helper.make_tensor(name, _onnx_type(bits, signed), list(arr.shape), arr.flatten().tolist())


def _rewrite(model_proto, specs: list[_Spec]) -> None:
    """Replace every ``qcbench::QDQ[tag]`` node by standard ``QuantizeLinear``/``DequantizeLinear``
    nodes with the spec's initializers (integers in 8-bit containers; :func:`export_qdq_onnx`
    retypes 4-bit ones); drop initializers no node reads any more."""
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    nodes, inits = [], []
    for node in graph.node:
        if node.domain != "qcbench":
            nodes.append(node)
            continue
        tag = next(a.i for a in node.attribute if a.name == "tag")
        s, base = specs[tag], f"qdq{tag}"
        scale = s.scale if s.per_channel else s.scale.reshape(())
        zp = s.zero_point if s.per_channel else s.zero_point.reshape(())
        inits += [
            numpy_helper.from_array(scale.numpy().astype("float32"), f"{base}.scale"),
            _int_tensor(f"{base}.zero_point", zp, 8, s.signed),
        ]
        axis = {"axis": 0} if s.per_channel else {}
        if s.kind == "weight":
            inits.append(_int_tensor(f"{base}.codes", s.codes, 8, s.signed))
            nodes.append(helper.make_node("DequantizeLinear", [f"{base}.codes", f"{base}.scale", f"{base}.zero_point"],
                                          [node.output[0]], name=f"{s.where}.weight.dq", **axis))  # fmt: skip
        else:
            q_out = f"{base}.q"
            nodes.append(helper.make_node("QuantizeLinear", [node.input[0], f"{base}.scale", f"{base}.zero_point"],
                                          [q_out], name=f"{s.where}.input.q"))  # fmt: skip
            nodes.append(helper.make_node("DequantizeLinear", [q_out, f"{base}.scale", f"{base}.zero_point"],
                                          [node.output[0]], name=f"{s.where}.input.dq"))  # fmt: skip
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + inits)
    for vi in list(graph.value_info):
        if vi.name.startswith("/") and "QDQ" in vi.name:
            graph.value_info.remove(vi)
    opsets = [o for o in model_proto.opset_import if o.domain != "qcbench"]
    del model_proto.opset_import[:]
    model_proto.opset_import.extend(opsets)


def export_qdq_onnx(qmodel: nn.Module, example: torch.Tensor, path: str | Path, *, bits: int | None = None) -> dict:
    """Write ``qmodel`` (fake-quantized, every quantizer on a fixed grid) to ``path`` as an ONNX QDQ
    graph taking [0, 1] images (dynamic batch) and returning logits: weights as integer codes
    (int8/uint8, or int4/uint4 with opset 21) + ``DequantizeLinear``, activation quantizers as
    ``QuantizeLinear`` + ``DequantizeLinear`` with their fixed scales and zero-points.
    ``example`` is one input batch for tracing; ``bits``, when given, is the scheme's bit width
    and is checked before any work (ONNX holds exact grids at 4 and 8 bits only). Returns a small
    record (opset, quantizer counts, weight integer types)."""
    import onnx

    from qcbench.backends import export_onnx

    if bits is not None and bits not in ONNX_BITS:
        raise ExportError(f"{bits}-bit: an ONNX QDQ graph holds exact grids only at {ONNX_BITS} bits")
    specs = quantizer_specs(qmodel)
    traced = _tagged_copy(qmodel, specs)
    path = Path(path)
    tmp = path.with_name(path.name + ".trace")
    try:
        with warnings.catch_warnings():  # the traced quantizers' Python branches are fixed by design
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            export_onnx(traced, example.detach().float().cpu()[:1], tmp, opset=OPSET_8BIT)
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    _rewrite(proto, specs)
    opset = OPSET_4BIT if any(s.bits == 4 for s in specs) else OPSET_8BIT
    if opset != OPSET_8BIT:
        from onnx import numpy_helper, version_converter

        # the converter predates INT4: convert with 8-bit containers, then retype the 4-bit tensors
        proto = version_converter.convert_version(proto, opset)
        fours = {f"qdq{i}.{part}": s for i, s in enumerate(specs) if s.bits == 4 for part in ("codes", "zero_point")}
        for t in proto.graph.initializer:
            if t.name in fours:
                values = torch.from_numpy(numpy_helper.to_array(t).astype("int64"))
                t.CopyFrom(_int_tensor(t.name, values, 4, fours[t.name].signed))
        del proto.graph.value_info[:]  # inferred with the 8-bit types
        proto.ir_version = 10  # IR 10 introduced INT4/UINT4; ORT 1.31 reads up to 13
    onnx.checker.check_model(proto, full_check=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    n_w = sum(s.kind == "weight" for s in specs)
    types = sorted({onnx.TensorProto.DataType.Name(_onnx_type(s.bits, s.signed)) for s in specs if s.kind == "weight"})
    return {"format": "onnx_qdq", "opset": opset, "weights": n_w, "activations": len(specs) - n_w,
            "weight_types": types, "file": str(path)}  # fmt: skip


def load_onnx(path: str | Path, threads: int | None = None):
    """An exported ONNX model as a :class:`qcbench.backends.OrtQuantizedModel` (an ``nn.Module``
    taking [0, 1] images), run by ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    from qcbench.backends import OrtQuantizedModel

    info = {"backend": "onnxruntime", "runtime": f"onnxruntime {ort.__version__}", "engine": "CPUExecutionProvider",
            "flow": "qcbench.export.export_qdq_onnx (the quantizer's own grids)"}  # fmt: skip
    return OrtQuantizedModel(Path(path).read_bytes(), info, threads)


def onnx_weight_codes(path: str | Path) -> dict[str, torch.Tensor]:
    """``{layer: integer codes}`` of an exported model's weights (read back from the ONNX file)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    out = {}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and n.name.endswith(".weight.dq"):
            arr = numpy_helper.to_array(inits[n.input[0]]).astype("int64")
            out[n.name.removesuffix(".weight.dq")] = torch.from_numpy(arr)
    return out


# -- deployments -------------------------------------------------------------------------------
#: export formats and the bit widths each holds exactly
EXPORTS = {"onnx": ONNX_BITS}
#: where an export runs
EXPORT_RUNS = {"onnx": "in ONNX Runtime from the exported model.onnx"}


@dataclass(frozen=True)
class Deployment:
    """Where a purified model will run: the registered scheme that runtime's own quantizer matches
    (None: any), the bit widths it runs (None: any), the export it needs, and how it runs."""

    name: str
    scheme: str | None
    bits: tuple[int, ...] | None
    export: str | None
    runs: str

    def safe_for(self, scheme: str, bits: int, export: str | None = None) -> str:
        """The one sentence saying which deployment a purified result is safe for (``export``: the
        format also written, whose runtime runs the same quantizer)."""
        runs = self.runs
        if export is not None and export != self.export:
            runs += f" or {EXPORT_RUNS[export]}"
        return (
            f"Safe only when run {runs} with the exact {bits}-bit {scheme} quantizer recorded in "
            "model.json (weights as these integer codes, the recorded activation ranges fixed); "
            "re-quantizing or re-calibrating it, or running another quantizer, may bring the backdoor back."
        )


#: ``qcbench purify --deploy`` targets
DEPLOYMENTS = {
    d.name: d
    for d in (
        Deployment("simulated", None, None, None, "in qcbench's simulated quantizer (qcbench.export.load_purified)"),
        Deployment("onnxruntime", "onnxruntime", ONNX_BITS, "onnx", EXPORT_RUNS["onnx"]),
    )
}


def create_deployment(name: str) -> Deployment:
    if name not in DEPLOYMENTS:
        raise KeyError(f"unknown deployment {name!r}; one of {list(DEPLOYMENTS)}")
    return DEPLOYMENTS[name]
