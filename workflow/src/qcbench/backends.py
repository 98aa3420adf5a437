"""Real int8 deployment backends: post-training static quantization through actual runtimes.

:mod:`qcbench.quant` *simulates* quantization. This module hands a full-precision model built by
:func:`qcbench.models.create_model` to real int8 runtimes and returns a model whose logits come
from their integer kernels, so BA/ASR can be measured on what a deployment would run:

``torch_x86``, ``torch_fbgemm``, ``torch_qnnpack``
    PyTorch's own static PTQ on CPU, FX graph mode: ``prepare_fx`` with
    ``get_default_qconfig_mapping(engine)``, calibration, ``convert_fx``. FX traces the model,
    fuses Conv+BN(+ReLU), quantizes the residual ``out + identity`` as ``quantized::add_relu``
    and keeps ``Normalize`` in float before the first ``quantize_per_tensor``, with no change to
    the model code. Default qconfigs (torch 2.14.1): ``x86``/``fbgemm`` use a
    ``HistogramObserver(reduce_range=True)`` on quint8 activations and per-channel symmetric
    qint8 weights (``PerChannelMinMaxObserver``); ``qnnpack`` uses
    ``HistogramObserver(reduce_range=False)`` and per-tensor symmetric qint8 weights. Weights
    are prepacked for the engine at convert time, so the engine is switched (and restored)
    around conversion and every forward.
``onnxruntime``
    ``torch.onnx.export`` (the legacy TorchScript exporter, ``dynamo=False``, opset 17, dynamic
    batch), ``onnxruntime.quantization.quant_pre_process`` (shape inference + graph
    optimization: folds the exported BN bias so every Conv can be quantized), then
    ``quantize_static`` with a :class:`~onnxruntime.quantization.CalibrationDataReader`:
    QDQ format, per-tensor, MinMax calibration, uint8 activations and int8 weights (ORT's advice
    for x86 CPUs; ``reduce_range=False`` for VNNI CPUs). At session creation ORT fuses the QDQ
    pairs into ``QLinearConv``/``QLinearAdd``/``QLinearGlobalAveragePool``/``QGemm`` kernels.
``pt2e_x86``
    The PT2E flow: ``torch.export.export`` of the eval-mode model, torchao's
    ``prepare_pt2e`` with ``X86InductorQuantizer`` (its default config: uint8 activations with a
    ``HistogramObserver``, per-tensor affine; int8 weights ``PerChannelMinMaxObserver``,
    per-channel symmetric), calibration, ``convert_pt2e``, then ``torch.compile`` (Inductor,
    ``freezing=True``), which lowers the Q/DQ patterns to oneDNN's
    ``onednn.qconv_pointwise``/``qconv2d_pointwise`` (Conv+ReLU and Conv+Add+ReLU fused) and
    ``qlinear_pointwise``. ``prepare_pt2e`` always folds BatchNorm into the preceding Conv.
``pt2e_xnnpack``, ``pt2e_xnnpack_pertensor``
    The same export and PT2E calibration with ExecuTorch's ``XNNPACKQuantizer``
    (``get_symmetric_quantization_config``: int8 activations with a ``HistogramObserver``,
    per-tensor affine; int8 weights in [-127, 127], symmetric, per-channel or per-tensor), then
    ``to_edge_transform_and_lower`` with the ``XnnpackPartitioner`` and ``to_executorch``: the
    whole graph becomes one XNNPACK delegate (``executorch_call_delegate``) run by the ExecuTorch
    runtime (``executorch.runtime``), the deployment path of PyTorch Mobile's successor. BN is
    folded as in ``pt2e_x86``.
``openvino``
    OpenVINO's own PTQ: ``openvino.convert_model`` of the eval-mode model (dynamic batch), then
    NNCF's ``nncf.quantize`` with its defaults (``PERFORMANCE`` preset: symmetric int8 weights
    per channel, symmetric per-tensor activations; Fast Bias Correction on), compiled for the
    ``CPU`` device with ``INFERENCE_PRECISION_HINT=f32`` (the non-quantized parts in f32 on every
    CPU); OpenVINO folds BN into the Conv when it reads the model. Its CPU plugin runs the
    ``FakeQuantize``-wrapped Convolutions as u8/i8 kernels.
``openvino_qdq``
    The ``onnxruntime`` backend's QDQ model (same export, calibration and per-tensor scales)
    compiled by OpenVINO's CPU plugin instead of ONNX Runtime: the same int8 model in a second
    runtime.

State of the toolchains in torch 2.14.1 (checked when this module was written):

* ``torch.ao.quantization`` (eager and FX) still works but every entry point is marked
  ``typing_extensions.deprecated`` ("torch.ao.quantization is deprecated and will be removed in
  2.10", a stale date), pointing to torchao; observers also warn about ``reduce_range``.
  Eager mode would need ``QuantStub``/``FloatFunctional`` edits of the model for the adds.
  Creating quint8/qint8 tensors (``torch.quantize_per_tensor``, used by the converted graph)
  also warns that these dtypes "are deprecated and will be removed in a future PyTorch
  release" (pytorch/pytorch#184982): the ``torch_*`` backends have no long-term future in torch
  itself; the ``pt2e_*`` backends are their successors.
* The PT2E flow (``prepare_pt2e``/``convert_pt2e``, ``X86InductorQuantizer``) is no longer in
  torch (``torch.ao.quantization.quantize_pt2e`` and ``.quantizer`` are gone); it lives in the
  separate ``torchao`` package (``torchao.quantization.pt2e``), and ``XNNPACKQuantizer`` in
  ``executorch`` (``executorch.backends.xnnpack.quantizer``). Its converted graph is Q/DQ ops
  around float ops, which only the lowering (Inductor, ExecuTorch) turns into integer kernels.
* ``torch.onnx.export`` defaults to the ``torch.export``-based exporter, which needs
  ``onnxscript`` (not installed); ``dynamo=False`` selects the legacy TorchScript exporter,
  which works and warns that it is deprecated.

Each registered backend carries its settings (:func:`backend_settings`: runtime package and
version, BN folding, weight granularity, activation type), which the deployment table prints.

A quantized backend model is a :class:`QuantizedModel`, an ``nn.Module`` taking [0, 1] images,
so :func:`qcbench.metrics.evaluate` works on it unchanged.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import operator
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from qcbench._registry import Registry
from qcbench.data import ImageSet
from qcbench.metrics import EVAL_BATCH

BACKENDS = Registry("backend")
register_backend = BACKENDS.register


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine (engine not compiled in, runtime not installed)."""


def runtime_settings(package: str, fuse: bool, weights: str, activations: str, engine: str = ""):
    """Decorator for a registered backend: the runtime ``package`` it needs (checked by
    :func:`available_backends`, its version reported by :func:`backend_settings`), whether BN is
    folded into the Conv before weight quantization (``fuse``), the weight granularity
    (``weights``: "per-channel" or "per-tensor") and the activation type."""

    def deco(fn):
        fn.settings = {
            "package": package,
            "fuse_conv_bn": fuse,
            "weights": weights,
            "activations": activations,
            "engine": engine,
        }
        return fn

    return deco


def backend_settings(name: str) -> dict:
    """The settings of registered backend ``name`` plus ``runtime``: its package and installed
    version (e.g. "onnxruntime 1.31.1"; "absent" where the package is not installed)."""
    from importlib import metadata

    settings = dict(BACKENDS.get(name).settings)
    try:
        version = metadata.version(settings["package"])
    except metadata.PackageNotFoundError:
        version = "absent"
    return settings | {"runtime": f"{settings['package']} {version}"}


def _calibration_tensors(calib_batches: Iterable) -> list[torch.Tensor]:
    """Float (N, C, H, W) CPU batches in [0, 1] from tensors or ``(x, y)`` pairs (uint8 is scaled)."""
    out = []
    for b in calib_batches:
        x = b[0] if isinstance(b, tuple | list) else b
        x = x.detach().cpu()
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        out.append(x)
    if not out:
        raise ValueError("no calibration batches given")
    return out


class QuantizedModel(nn.Module, abc.ABC):
    """An int8 model from a real runtime; ``forward`` takes [0, 1] images and returns float logits.

    ``info`` records the backend, engine/format and timings; :meth:`quantized_ops` lists the
    quantized operators of the converted graph (as proof that integer kernels run)."""

    backend: str

    def __init__(self, backend: str, info: dict) -> None:
        super().__init__()
        self.backend = backend
        self.info = info

    @abc.abstractmethod
    def quantized_ops(self) -> list[str]:
        """Names of the integer operators in the converted graph."""


# --- PyTorch (torch.ao.quantization, FX graph mode) ------------------------------------------


@contextlib.contextmanager
def quantized_engine(engine: str):
    """Set ``torch.backends.quantized.engine`` for the block, then restore it."""
    check_engine(engine)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def supported_engines() -> list[str]:
    """The quantized engines compiled into this torch build."""
    return list(torch.backends.quantized.supported_engines)


def check_engine(engine: str) -> None:
    supported = supported_engines()
    if engine not in supported:
        raise BackendUnavailable(
            f"quantized engine {engine!r} is not supported by this torch build "
            f"(torch {torch.__version__}, torch.backends.quantized.supported_engines = {supported})"
        )


class TorchQuantizedModel(QuantizedModel):
    def __init__(self, graph: nn.Module, engine: str, info: dict) -> None:
        super().__init__(info.get("backend", f"torch_{engine}"), info)
        self.graph = graph
        self.engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with quantized_engine(self.engine):
            return self.graph(x.float().cpu())

    def quantized_ops(self) -> list[str]:
        """Quantized module classes and quantized graph functions of the converted model."""
        ops = {
            f"{type(m).__module__}.{type(m).__name__}"
            for m in self.graph.modules()
            if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
        }
        for node in self.graph.graph.nodes:
            target = node.target
            if isinstance(target, torch._ops.OpOverloadPacket | torch._ops.OpOverload):
                name = str(target)  # e.g. quantized.add_relu
            else:
                name = getattr(target, "__name__", str(target))  # e.g. quantize_per_tensor
            if node.op == "call_function" and "quantize" in name:
                ops.add(name)
            elif node.op == "call_method" and node.target == "dequantize":
                ops.add("Tensor.dequantize")
        return sorted(ops)


def _backend_config_without_fusion():
    """torch's native backend config minus every fusion pattern: Conv and BatchNorm stay separate
    modules (BN runs as quantized ``BatchNorm2d``), so convs are quantized on their *unfolded*
    weights, as PQBackdoor's own deployment (``evaluate.py``: plain ``nn.Conv2d``, no fusion)."""
    from torch.ao.quantization.backend_config import BackendConfig, get_native_backend_config

    native = get_native_backend_config()
    return BackendConfig("native_without_fusion").set_backend_pattern_configs(
        [c for c in native.configs if c.fuser_method is None]
    )


def torch_ptq(
    fp_model: nn.Module, calib_batches: Iterable, engine: str = "x86", fuse: bool = True
) -> TorchQuantizedModel:
    """PyTorch static PTQ (FX graph mode) with ``engine``'s default qconfig mapping and observers;
    ``fuse=False`` keeps Conv and BatchNorm apart (no BN folding before weight quantization)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    check_engine(engine)
    calib = _calibration_tensors(calib_batches)
    t0 = time.perf_counter()
    model = copy.deepcopy(fp_model).cpu().float().eval()
    with quantized_engine(engine), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        qconfig_mapping = get_default_qconfig_mapping(engine)
        kw = {} if fuse else {"backend_config": _backend_config_without_fusion()}
        prepared = prepare_fx(model, qconfig_mapping, example_inputs=(calib[0][:1],), **kw)
        t1 = time.perf_counter()
        with torch.no_grad():
            for x in calib:
                prepared(x)
        t2 = time.perf_counter()
        graph = convert_fx(prepared, **kw)
    info = {
        "backend": f"torch_{engine}" + ("" if fuse else "_nofuse"),
        "fuse_conv_bn": fuse,
        "runtime": f"torch {torch.__version__}",
        "engine": engine,
        "flow": "torch.ao.quantization FX (prepare_fx/convert_fx)",
        "qconfig": str(qconfig_mapping.global_qconfig),
        "calib_samples": sum(len(x) for x in calib),
        "calibrate_s": t2 - t1,
        "quantize_s": time.perf_counter() - t0,
    }
    return TorchQuantizedModel(graph.eval(), engine, info)


@register_backend("torch_x86")
@runtime_settings("torch", True, "per-channel", "uint8 (reduce_range)", "x86")
def torch_x86(fp_model: nn.Module, calib_batches: Iterable) -> TorchQuantizedModel:
    """PyTorch ``x86`` engine (FBGEMM / oneDNN kernels chosen by torch), its default qconfigs."""
    return torch_ptq(fp_model, calib_batches, "x86")


@register_backend("torch_fbgemm")
@runtime_settings("torch", True, "per-channel", "uint8 (reduce_range)", "fbgemm")
def torch_fbgemm(fp_model: nn.Module, calib_batches: Iterable) -> TorchQuantizedModel:
    """PyTorch ``fbgemm`` engine, its default qconfigs."""
    return torch_ptq(fp_model, calib_batches, "fbgemm")


@register_backend("torch_qnnpack")
@runtime_settings("torch", True, "per-tensor", "uint8", "qnnpack")
def torch_qnnpack(fp_model: nn.Module, calib_batches: Iterable) -> TorchQuantizedModel:
    """PyTorch ``qnnpack`` engine (the mobile/ARM kernels, also built for x86), its default qconfigs."""
    return torch_ptq(fp_model, calib_batches, "qnnpack")


@register_backend("torch_qnnpack_nofuse")
@runtime_settings("torch", False, "per-tensor", "uint8", "qnnpack")
def torch_qnnpack_nofuse(fp_model: nn.Module, calib_batches: Iterable) -> TorchQuantizedModel:
    """PyTorch ``qnnpack`` without conv-BN fusion (per-tensor weights quantized unfolded)."""
    return torch_ptq(fp_model, calib_batches, "qnnpack", fuse=False)


@register_backend("torch_x86_nofuse")
@runtime_settings("torch", False, "per-channel", "uint8 (reduce_range)", "x86")
def torch_x86_nofuse(fp_model: nn.Module, calib_batches: Iterable) -> TorchQuantizedModel:
    """PyTorch ``x86`` without conv-BN fusion (per-channel weights quantized unfolded)."""
    return torch_ptq(fp_model, calib_batches, "x86", fuse=False)


# --- ONNX Runtime -------------------------------------------------------------------------------


class OrtQuantizedModel(QuantizedModel):
    def __init__(self, model_bytes: bytes, info: dict, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__("onnxruntime", info)
        self.model_bytes = model_bytes
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])

    def quantized_ops(self) -> list[str]:
        """Operator types of the quantized (QDQ) ONNX graph."""
        import onnx

        return sorted({n.op_type for n in onnx.load_from_string(self.model_bytes).graph.node})

    def runtime_ops(self) -> list[str]:
        """Operator types ORT actually runs after its graph optimizations (``QLinearConv``, ...)."""
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="qcbench-ort-") as tmp:
            so = ort.SessionOptions()
            so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            so.log_severity_level = 3
            so.intra_op_num_threads = 1
            ort.InferenceSession(self.model_bytes, so, providers=["CPUExecutionProvider"])
            return sorted({n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node})


def export_onnx(fp_model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17) -> None:
    """Export with the legacy TorchScript exporter (eval mode: BN folded), dynamic batch axis."""
    model = copy.deepcopy(fp_model).cpu().float().eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def qdq_onnx(
    fp_model: nn.Module,
    calib: list[torch.Tensor],
    activation_type: str = "QUInt8",
    weight_type: str = "QInt8",
    per_channel: bool = False,
    reduce_range: bool = False,
    calibrate_method: str = "MinMax",
    opset: int = 17,
) -> tuple[bytes, dict]:
    """The static int8 QDQ ONNX model of ``fp_model`` made by ``onnxruntime.quantization`` (see the
    module doc) from float calibration batches, and its ``info`` (flow, qconfig, timings)."""
    try:
        import onnx  # noqa: F401
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_static,
        )
    except ImportError as err:
        raise BackendUnavailable(f"QDQ ONNX export needs `onnx` and `onnxruntime` ({err})") from err

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"input": x.numpy()}

        def rewind(self) -> None:
            self._it = iter(calib)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qcbench-ort-") as tmp:
        fp_path, pre_path, q_path = (Path(tmp) / f for f in ("fp.onnx", "pre.onnx", "int8.onnx"))
        export_onnx(fp_model, calib[0][:1], fp_path, opset)
        quant_pre_process(str(fp_path), str(pre_path))
        t1 = time.perf_counter()
        quantize_static(
            str(pre_path),
            str(q_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=getattr(QuantType, activation_type),
            weight_type=getattr(QuantType, weight_type),
            calibrate_method=getattr(CalibrationMethod, calibrate_method),
        )
        t2 = time.perf_counter()
        model_bytes = q_path.read_bytes()
    info = {
        "flow": "torch.onnx.export(dynamo=False) + quant_pre_process + quantize_static (QDQ)",
        "qconfig": (
            f"activations {activation_type}, weights {weight_type}, "
            f"{'per-channel' if per_channel else 'per-tensor'}, reduce_range={reduce_range}, {calibrate_method}"
        ),
        "calib_samples": sum(len(x) for x in calib),
        "calibrate_s": t2 - t1,
        "quantize_s": t2 - t0,
    }
    return model_bytes, info


@register_backend("onnxruntime")
@runtime_settings("onnxruntime", True, "per-tensor", "uint8", "CPUExecutionProvider")
def onnxruntime_ptq(
    fp_model: nn.Module, calib_batches: Iterable, threads: int | None = None, **qdq
) -> OrtQuantizedModel:
    """ONNX Runtime static int8 PTQ: QDQ, per-tensor, MinMax calibration (see the module doc);
    ``qdq`` overrides :func:`qdq_onnx`'s settings."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise BackendUnavailable(f"onnxruntime backend needs `onnx` and `onnxruntime` ({err})") from err
    model_bytes, info = qdq_onnx(fp_model, _calibration_tensors(calib_batches), **qdq)
    info = {
        "backend": "onnxruntime",
        "runtime": f"onnxruntime {ort.__version__}",
        "engine": "CPUExecutionProvider",
    } | info
    return OrtQuantizedModel(model_bytes, info, threads)


# --- PT2E (torch.export + torchao's prepare_pt2e/convert_pt2e) ---------------------------------


def _chunks_padded(fn, x: torch.Tensor, batch: int) -> torch.Tensor:
    """``fn`` applied to ``x`` in chunks of exactly ``batch`` samples (the last one zero-padded,
    its padding dropped): a graph compiled or lowered for one static batch size runs on any."""
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        n = len(chunk)
        if n < batch:
            chunk = torch.cat([chunk, chunk.new_zeros((batch - n, *chunk.shape[1:]))])
        out.append(fn(chunk.contiguous())[:n])
    return torch.cat(out)


def _static_example(calib: list[torch.Tensor], batch: int) -> torch.Tensor:
    """A contiguous example input of ``batch`` samples (the first calibration image repeated)."""
    return calib[0][:1].expand(batch, *calib[0].shape[1:]).contiguous()


def _pt2e_calibrated(fp_model: nn.Module, calib: list[torch.Tensor], quantizer, batch: int) -> nn.Module:
    """Export ``fp_model`` (eval mode, static batch ``batch``), ``prepare_pt2e`` it with ``quantizer``
    (folds BN into the Conv), run the calibration batches, ``convert_pt2e``: a Q/DQ graph module."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = copy.deepcopy(fp_model).cpu().float().eval()
    example = _static_example(calib, batch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        exported = torch.export.export(model, (example,)).module()
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for x in calib:
                _chunks_padded(prepared, x, batch)
        return convert_pt2e(prepared)


class InductorQuantizedModel(QuantizedModel):
    """A PT2E-converted graph compiled by Inductor (``freezing=True``) into oneDNN int8 kernels;
    compiled at construction for one static batch size, inputs are run in chunks of it."""

    def __init__(self, converted: nn.Module, batch: int, example: torch.Tensor, info: dict) -> None:
        import re

        from torch._inductor.utils import run_and_get_code

        super().__init__(info["backend"], info)
        self.batch = batch
        t0 = time.perf_counter()
        self.compiled = torch.compile(converted, dynamic=False)
        with torch.no_grad(), torch._inductor.config.patch(freezing=True, compile_threads=1):
            _, codes = run_and_get_code(self.compiled, example)
        self.info["compile_s"] = time.perf_counter() - t0
        self._kernels = sorted(set(re.findall(r"torch\.ops\.(onednn\.\w+|quantized\.\w+)", "\n".join(codes))))

    def train(self, mode: bool = True) -> InductorQuantizedModel:
        """Only this wrapper's flag: an exported graph refuses ``train()``/``eval()`` (and an
        int8 inference graph has no training mode)."""
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch._inductor.config.patch(freezing=True, compile_threads=1):
            return _chunks_padded(self.compiled, x.float().cpu(), self.batch)

    def quantized_ops(self) -> list[str]:
        """The integer kernels Inductor's generated code calls (``onednn.qconv_pointwise``, ...)."""
        return list(self._kernels)


def _quantization_config_text(config) -> str:
    """One line of a PT2E ``QuantizationConfig``: dtype, range and scheme of activations and weights."""

    def spec(s) -> str:
        ctr = s.observer_or_fake_quant_ctr  # a functools.partial, or torchao's PartialWrapper of one
        ctr = getattr(ctr, "p", ctr)
        observer = getattr(getattr(ctr, "func", ctr), "__name__", str(ctr))
        return f"{str(s.dtype).removeprefix('torch.')} [{s.quant_min}, {s.quant_max}] {s.qscheme} ({observer})"

    return f"activations {spec(config.input_activation)}; weights {spec(config.weight)}"


@register_backend("pt2e_x86")
@runtime_settings("torchao", True, "per-channel", "uint8", "Inductor (oneDNN)")
def pt2e_x86(fp_model: nn.Module, calib_batches: Iterable, batch: int = EVAL_BATCH) -> InductorQuantizedModel:
    """PT2E with ``X86InductorQuantizer``'s default config, compiled by Inductor (see the module doc)."""
    try:
        import torchao
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as err:
        raise BackendUnavailable(f"pt2e_x86 needs `torchao` ({err})") from err
    calib = _calibration_tensors(calib_batches)
    t0 = time.perf_counter()
    config = xiq.get_default_x86_inductor_quantization_config()
    converted = _pt2e_calibrated(fp_model, calib, xiq.X86InductorQuantizer().set_global(config), batch)
    info = {
        "backend": "pt2e_x86",
        "fuse_conv_bn": True,
        "runtime": f"torch {torch.__version__} Inductor, torchao {torchao.__version__}",
        "engine": "onednn",
        "flow": "torch.export + prepare_pt2e/convert_pt2e (X86InductorQuantizer) + torch.compile(freezing)",
        "qconfig": _quantization_config_text(config),
        "calib_samples": sum(len(x) for x in calib),
        "quantize_s": time.perf_counter() - t0,
    }
    return InductorQuantizedModel(converted, batch, _static_example(calib, batch), info)


class ExecuTorchQuantizedModel(QuantizedModel):
    """An ExecuTorch program (``.pte`` bytes) run by the ExecuTorch runtime; static batch size."""

    def __init__(self, program: bytes, batch: int, info: dict, delegated: list[str]) -> None:
        from executorch.runtime import Runtime

        super().__init__(info["backend"], info)
        self.program = program
        self.batch = batch
        self._delegated = delegated
        self.method = Runtime.get().load_program(program).load_method("forward")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _chunks_padded(lambda c: self.method.execute([c])[0], x.float().cpu(), self.batch)

    def quantized_ops(self) -> list[str]:
        """The delegates of the lowered program (``XnnpackBackend``) and the ops left outside them."""
        return list(self._delegated)


def _xnnpack_executorch(
    fp_model: nn.Module, calib_batches: Iterable, per_channel: bool, batch: int
) -> ExecuTorchQuantizedModel:
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as err:
        raise BackendUnavailable(f"pt2e_xnnpack needs `executorch` and `torchao` ({err})") from err
    calib = _calibration_tensors(calib_batches)
    t0 = time.perf_counter()
    config = get_symmetric_quantization_config(is_per_channel=per_channel)
    converted = _pt2e_calibrated(fp_model, calib, XNNPACKQuantizer().set_global(config), batch)
    t1 = time.perf_counter()
    example = _static_example(calib, batch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        edge = to_edge_transform_and_lower(
            torch.export.export(converted, (example,)), partitioner=[XnnpackPartitioner()]
        )
        program = edge.to_executorch()
    graph = edge.exported_program().graph_module
    delegates = {
        getattr(m, "backend_id", type(m).__name__) for n, m in graph.named_children() if n.startswith("lowered_")
    }
    # ops left outside the delegates, but for the tuple unpacking of their outputs
    outside = {
        str(n.target)
        for n in graph.graph.nodes
        if n.op == "call_function" and "delegate" not in str(n.target) and n.target is not operator.getitem
    }
    delegated = sorted(delegates | outside)
    info = {
        "backend": "pt2e_xnnpack" + ("" if per_channel else "_pertensor"),
        "fuse_conv_bn": True,
        "runtime": f"executorch {backend_settings('pt2e_xnnpack')['runtime'].split()[-1]} XNNPACK",
        "engine": "XnnpackBackend",
        "flow": "torch.export + prepare_pt2e/convert_pt2e (XNNPACKQuantizer) + to_edge_transform_and_lower",
        "qconfig": _quantization_config_text(config),
        "calib_samples": sum(len(x) for x in calib),
        "lower_s": time.perf_counter() - t1,
        "quantize_s": time.perf_counter() - t0,
    }
    return ExecuTorchQuantizedModel(program.buffer, batch, info, delegated)


@register_backend("pt2e_xnnpack")
@runtime_settings("executorch", True, "per-channel", "int8", "XNNPACK")
def pt2e_xnnpack(fp_model: nn.Module, calib_batches: Iterable, batch: int = EVAL_BATCH) -> ExecuTorchQuantizedModel:
    """PT2E with ``XNNPACKQuantizer`` (per-channel weights), lowered to ExecuTorch's XNNPACK delegate."""
    return _xnnpack_executorch(fp_model, calib_batches, True, batch)


@register_backend("pt2e_xnnpack_pertensor")
@runtime_settings("executorch", True, "per-tensor", "int8", "XNNPACK")
def pt2e_xnnpack_pertensor(
    fp_model: nn.Module, calib_batches: Iterable, batch: int = EVAL_BATCH
) -> ExecuTorchQuantizedModel:
    """PT2E with ``XNNPACKQuantizer`` (per-tensor weights), lowered to ExecuTorch's XNNPACK delegate."""
    return _xnnpack_executorch(fp_model, calib_batches, False, batch)


# --- OpenVINO ----------------------------------------------------------------------------------


class OpenVinoQuantizedModel(QuantizedModel):
    """An OpenVINO model compiled for the ``CPU`` device (f32 outside the quantized layers)."""

    def __init__(self, model, info: dict, threads: int | None = None) -> None:
        import openvino as ov

        super().__init__(info["backend"], info)
        self.compiled = ov.Core().compile_model(
            model,
            "CPU",
            {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"},
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.compiled(x.detach().float().cpu().contiguous().numpy())[0].copy())

    def quantized_ops(self) -> list[str]:
        """``layerType:precision`` of the layers the CPU plugin runs on integers (``Convolution:u8``, ...)."""
        ops = set()
        for op in self.compiled.get_runtime_model().get_ops():
            rt = op.get_rt_info()
            precision = rt["runtimePrecision"].astype(str)
            if precision in ("u8", "i8"):
                ops.add(f"{rt['layerType'].astype(str)}:{precision}")
        return sorted(ops)


def _openvino():
    try:
        import openvino as ov
    except ImportError as err:
        raise BackendUnavailable(f"OpenVINO backends need `openvino` ({err})") from err
    return ov


@register_backend("openvino")
@runtime_settings("openvino", True, "per-channel", "uint8/int8 (symmetric)", "CPU")
def openvino_nncf(fp_model: nn.Module, calib_batches: Iterable, threads: int | None = None) -> OpenVinoQuantizedModel:
    """OpenVINO with NNCF's post-training quantization at its defaults (see the module doc)."""
    ov = _openvino()
    try:
        import nncf
    except ImportError as err:
        raise BackendUnavailable(f"openvino backend needs `nncf` ({err})") from err
    calib = _calibration_tensors(calib_batches)
    t0 = time.perf_counter()
    model = copy.deepcopy(fp_model).cpu().float().eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        ov_model = ov.convert_model(model, example_input=calib[0][:1], input=[(-1, *calib[0].shape[1:])])
    nncf.set_log_level(40)  # logging.ERROR: no progress bars in the job logs
    t1 = time.perf_counter()
    quantized = nncf.quantize(ov_model, nncf.Dataset([x.numpy() for x in calib]), subset_size=len(calib))
    info = {
        "backend": "openvino",
        "fuse_conv_bn": True,
        "runtime": f"openvino {ov.__version__.split('-')[0]}, nncf {nncf.__version__}",
        "engine": "CPU",
        "flow": "openvino.convert_model + nncf.quantize (defaults) + compile_model(CPU, f32)",
        "qconfig": "NNCF PERFORMANCE preset: int8 symmetric weights per channel, symmetric per-tensor "
        "activations, Fast Bias Correction",
        "calib_samples": sum(len(x) for x in calib),
        "calibrate_s": time.perf_counter() - t1,
        "quantize_s": time.perf_counter() - t0,
    }
    return OpenVinoQuantizedModel(quantized, info, threads)


@register_backend("openvino_qdq")
@runtime_settings("openvino", True, "per-tensor", "uint8", "CPU")
def openvino_qdq(fp_model: nn.Module, calib_batches: Iterable, threads: int | None = None) -> OpenVinoQuantizedModel:
    """The ``onnxruntime`` backend's QDQ ONNX model, compiled by OpenVINO's CPU plugin."""
    ov = _openvino()
    model_bytes, info = qdq_onnx(fp_model, _calibration_tensors(calib_batches))
    with tempfile.TemporaryDirectory(prefix="qcbench-ov-") as tmp:
        path = Path(tmp) / "int8.onnx"
        path.write_bytes(model_bytes)
        model = ov.Core().read_model(str(path))
    info = {
        "backend": "openvino_qdq",
        "runtime": f"openvino {ov.__version__.split('-')[0]}",
        "engine": "CPU",
    } | info
    return OpenVinoQuantizedModel(model, info, threads)


# --- entry points -------------------------------------------------------------------------------


def available_backends() -> dict[str, str | None]:
    """Every registered backend -> ``None`` if it can run here, else the reason it cannot."""
    import importlib.util

    out: dict[str, str | None] = {}
    for name in BACKENDS.names():
        reason = None
        settings = getattr(BACKENDS.get(name), "settings", {})
        if name.startswith("torch_"):
            try:
                check_engine(settings.get("engine") or name.removeprefix("torch_").removesuffix("_nofuse"))
            except BackendUnavailable as err:
                reason = str(err)
        needs = {"onnxruntime": ["onnx", "onnxruntime"], "openvino": ["openvino", "nncf", "onnx", "onnxruntime"]}
        for module in needs.get(settings.get("package"), [settings.get("package")]):
            if module and reason is None and importlib.util.find_spec(module) is None:
                reason = f"backend {name} needs `{module}`, which is not installed"
        out[name] = reason
    return out


def quantize_real(name: str, fp_model: nn.Module, calib_batches: Iterable, **kwargs) -> QuantizedModel:
    """Quantize ``fp_model`` to int8 with backend ``name`` after calibrating on ``calib_batches``
    (float [0, 1] or uint8 tensors, or ``(x, y)`` pairs). The result is callable on [0, 1] images
    and returns logits. Unknown names raise ``KeyError`` (listing the registered ones); a backend
    this machine cannot run raises :class:`BackendUnavailable` with the reason."""
    return BACKENDS.create(name, fp_model, calib_batches, **kwargs)


def evaluate_backend(
    name: str,
    fp_model: nn.Module,
    calib_batches: Iterable,
    test: ImageSet,
    trigger,
    target: int | None,
    batch_size: int = EVAL_BATCH,
    **kwargs,
) -> dict:
    """``ba``, ``asr``, ``asr_all`` (%) and ``n_test`` of ``fp_model`` quantized by backend ``name``,
    through :func:`qcbench.metrics.evaluate` (the quantized model is an ``nn.Module``)."""
    from qcbench.metrics import evaluate

    qmodel = quantize_real(name, fp_model, calib_batches, **kwargs)
    return evaluate(qmodel, test, trigger, target, batch_size)
