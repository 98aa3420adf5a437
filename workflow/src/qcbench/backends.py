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

State of the toolchains in torch 2.14.1 (checked when this module was written):

* ``torch.ao.quantization`` (eager and FX) still works but every entry point is marked
  ``typing_extensions.deprecated`` ("torch.ao.quantization is deprecated and will be removed in
  2.10", a stale date), pointing to torchao; observers also warn about ``reduce_range``.
  Eager mode would need ``QuantStub``/``FloatFunctional`` edits of the model for the adds.
  Creating quint8/qint8 tensors (``torch.quantize_per_tensor``, used by the converted graph)
  also warns that these dtypes "are deprecated and will be removed in a future PyTorch
  release" (pytorch/pytorch#184982): this backend has no long-term future in torch itself.
* The PT2E flow (``prepare_pt2e``/``convert_pt2e``, ``X86InductorQuantizer``) is no longer in
  torch (``torch.ao.quantization.quantize_pt2e`` and ``.quantizer`` are gone); it lives in the
  separate ``torchao`` package, which is not a qcbench dependency, and its int8 output is
  meant for Inductor compilation rather than an eager int8 runtime. Hence FX here.
* ``torch.onnx.export`` defaults to the ``torch.export``-based exporter, which needs
  ``onnxscript`` (not installed); ``dynamo=False`` selects the legacy TorchScript exporter,
  which works and warns that it is deprecated.

A quantized backend model is a :class:`QuantizedModel`, an ``nn.Module`` taking [0, 1] images,
so :func:`qcbench.metrics.evaluate` works on it unchanged.
"""

from __future__ import annotations

import abc
import contextlib
import copy
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
def torch_x86(fp_model: nn.Module, calib_batches: Iterable) -> TorchQuantizedModel:
    """PyTorch ``x86`` engine (FBGEMM / oneDNN kernels chosen by torch), its default qconfigs."""
    return torch_ptq(fp_model, calib_batches, "x86")


@register_backend("torch_fbgemm")
def torch_fbgemm(fp_model: nn.Module, calib_batches: Iterable) -> TorchQuantizedModel:
    """PyTorch ``fbgemm`` engine, its default qconfigs."""
    return torch_ptq(fp_model, calib_batches, "fbgemm")


@register_backend("torch_qnnpack")
def torch_qnnpack(fp_model: nn.Module, calib_batches: Iterable) -> TorchQuantizedModel:
    """PyTorch ``qnnpack`` engine (the mobile/ARM kernels, also built for x86), its default qconfigs."""
    return torch_ptq(fp_model, calib_batches, "qnnpack")


@register_backend("torch_qnnpack_nofuse")
def torch_qnnpack_nofuse(fp_model: nn.Module, calib_batches: Iterable) -> TorchQuantizedModel:
    """PyTorch ``qnnpack`` without conv-BN fusion (per-tensor weights quantized unfolded)."""
    return torch_ptq(fp_model, calib_batches, "qnnpack", fuse=False)


@register_backend("torch_x86_nofuse")
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


@register_backend("onnxruntime")
def onnxruntime_ptq(
    fp_model: nn.Module,
    calib_batches: Iterable,
    activation_type: str = "QUInt8",
    weight_type: str = "QInt8",
    per_channel: bool = False,
    reduce_range: bool = False,
    calibrate_method: str = "MinMax",
    opset: int = 17,
    threads: int | None = None,
) -> OrtQuantizedModel:
    """ONNX Runtime static int8 PTQ: QDQ, per-tensor, MinMax calibration (see the module doc)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_static,
        )
    except ImportError as err:
        raise BackendUnavailable(f"onnxruntime backend needs `onnx` and `onnxruntime` ({err})") from err

    calib = _calibration_tensors(calib_batches)

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
        "backend": "onnxruntime",
        "runtime": f"onnxruntime {ort.__version__}",
        "engine": "CPUExecutionProvider",
        "flow": "torch.onnx.export(dynamo=False) + quant_pre_process + quantize_static (QDQ)",
        "qconfig": (
            f"activations {activation_type}, weights {weight_type}, "
            f"{'per-channel' if per_channel else 'per-tensor'}, reduce_range={reduce_range}, {calibrate_method}"
        ),
        "calib_samples": sum(len(x) for x in calib),
        "calibrate_s": t2 - t1,
        "quantize_s": t2 - t0,
    }
    return OrtQuantizedModel(model_bytes, info, threads)


# --- entry points -------------------------------------------------------------------------------


def available_backends() -> dict[str, str | None]:
    """Every registered backend -> ``None`` if it can run here, else the reason it cannot."""
    out: dict[str, str | None] = {}
    for name in BACKENDS.names():
        reason = None
        if name.startswith("torch_"):
            try:
                check_engine(name.removeprefix("torch_").removesuffix("_nofuse"))
            except BackendUnavailable as err:
                reason = str(err)
        elif name == "onnxruntime":
            try:
                import onnx  # noqa: F401
                import onnxruntime  # noqa: F401
            except ImportError as err:
                reason = f"onnxruntime backend needs `onnx` and `onnxruntime` ({err})"
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
