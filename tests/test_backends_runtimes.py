"""Real int8 runtimes beyond torch.ao: PT2E (torchao) compiled by Inductor, PT2E lowered to
ExecuTorch's XNNPACK delegate, and OpenVINO (NNCF's PTQ and ORT's QDQ model), on a tiny ResNet."""

from __future__ import annotations

import pytest
import torch
from qcbench.backends import (
    BACKENDS,
    QuantizedModel,
    _chunks_padded,
    available_backends,
    backend_settings,
    evaluate_backend,
    quantize_real,
)
from qcbench.metrics import evaluate, predict
from qcbench.triggers import create_trigger

from .test_backends import calib_batches, skip_unavailable

NAMES = ["pt2e_x86", "pt2e_xnnpack", "pt2e_xnnpack_pertensor", "openvino", "openvino_qdq"]
# a static batch the padded chunks must fill: 200-image predictions run as 64+64+64+8
BATCH = {"pt2e_x86": 64, "pt2e_xnnpack": 64, "pt2e_xnnpack_pertensor": 64}


def build(name, model, splits):
    kwargs = {"batch": BATCH[name]} if name in BATCH else {}
    return quantize_real(name, model, calib_batches(splits), **kwargs)


@pytest.fixture(scope="module")
def quantized(trained_tiny, tiny_splits):
    """One quantized model per available backend, built once for the module."""
    return {n: build(n, trained_tiny, tiny_splits) for n in NAMES if available_backends()[n] is None}


def test_registered_with_settings():
    assert set(NAMES) <= set(BACKENDS.names())
    for name in BACKENDS.names():
        s = backend_settings(name)
        assert s["weights"] in ("per-channel", "per-tensor") and isinstance(s["fuse_conv_bn"], bool)
        assert s["runtime"].startswith(s["package"] + " ")
    assert backend_settings("pt2e_xnnpack_pertensor")["weights"] == "per-tensor"
    assert backend_settings("pt2e_xnnpack")["weights"] == "per-channel"
    assert not backend_settings("torch_qnnpack_nofuse")["fuse_conv_bn"]


@pytest.mark.parametrize("name", NAMES)
def test_pinned_environment_has_the_runtime(name):
    """The pinned environment (envs/requirements.txt) installs every runtime: CI runs them all."""
    assert available_backends()[name] is None


def test_chunks_padded_runs_a_static_batch():
    seen = []

    def fn(x):
        seen.append(len(x))
        return x * 2

    x = torch.arange(10.0).reshape(10, 1)
    assert torch.equal(_chunks_padded(fn, x, 4), x * 2)
    assert seen == [4, 4, 4]


@pytest.mark.parametrize("name", NAMES)
def test_int8_agrees_with_fp(name, trained_tiny, quantized, tiny_splits):
    skip_unavailable(name)
    q = quantized[name]
    assert isinstance(q, QuantizedModel) and q.backend == name and q.info["backend"] == name
    fp = predict(trained_tiny, tiny_splits.test.x, 200)
    q8 = predict(q, tiny_splits.test.x, 200)
    agree = (fp == q8).float().mean().item()
    assert agree >= 0.90, f"{name}: int8 agrees with FP on only {agree:.1%}"
    x = tiny_splits.test.x[:5].float() / 255  # fewer images than any static batch
    with torch.no_grad():
        logits, ref = q(x), trained_tiny(x)
    assert logits.shape == ref.shape and logits.dtype == torch.float32
    assert not torch.equal(logits, ref)  # really computed on an int8 grid
    assert (logits - ref).abs().max() < 0.5 * ref.abs().max()


def test_pt2e_x86_runs_onednn_int8_kernels(quantized):
    skip_unavailable("pt2e_x86")
    q = quantized["pt2e_x86"]
    ops = q.quantized_ops()  # the kernels in Inductor's generated code
    assert "onednn.qconv_pointwise" in ops or "onednn.qconv2d_pointwise" in ops
    assert "onednn.qlinear_pointwise" in ops
    assert "per_channel_symmetric" in q.info["qconfig"] and "uint8" in q.info["qconfig"]


@pytest.mark.parametrize("name", ["pt2e_xnnpack", "pt2e_xnnpack_pertensor"])
def test_xnnpack_delegates_the_whole_graph(name, quantized):
    skip_unavailable(name)
    q = quantized[name]
    assert q.quantized_ops() == ["XnnpackBackend"]  # nothing left to ExecuTorch's portable ops
    scheme = "per_channel_symmetric" if name == "pt2e_xnnpack" else "per_tensor_symmetric"
    assert f"weights int8 [-127, 127] torch.{scheme}" in q.info["qconfig"]


@pytest.mark.parametrize("name", ["openvino", "openvino_qdq"])
def test_openvino_runs_integer_convolutions(name, quantized):
    skip_unavailable(name)
    q = quantized[name]
    ops = q.quantized_ops()  # layers the CPU plugin executes in u8/i8
    assert any(o.startswith("Convolution:") for o in ops)
    assert any(o.startswith("FullyConnected:") for o in ops)
    assert q(torch.rand(3, 1, 28, 28)).shape == (3, 10)  # dynamic batch


def test_openvino_qdq_runs_the_onnxruntime_model(trained_tiny, quantized, tiny_splits):
    """The same QDQ model (same calibration) in two runtimes: predictions agree almost everywhere."""
    skip_unavailable("openvino_qdq")
    skip_unavailable("onnxruntime")
    ort = quantize_real("onnxruntime", trained_tiny, calib_batches(tiny_splits))
    a = predict(ort, tiny_splits.test.x, 200)
    b = predict(quantized["openvino_qdq"], tiny_splits.test.x, 200)
    assert (a == b).float().mean().item() >= 0.98


@pytest.mark.parametrize("name", ["openvino", "pt2e_xnnpack_pertensor"])
def test_evaluate_backend(name, trained_tiny, tiny_splits):
    skip_unavailable(name)
    trig = create_trigger({"name": "badnets"}, 28)
    calib = [(x, y) for x, y in tiny_splits.defender.batches(64, limit=128)]  # (x, y) pairs work too
    kwargs = {"batch": BATCH[name]} if name in BATCH else {}
    res = evaluate_backend(name, trained_tiny, calib, tiny_splits.test, trig, 0, batch_size=200, **kwargs)
    assert set(res) == {"ba", "asr", "asr_all", "n_test"} and res["n_test"] == len(tiny_splits.test)
    fp = evaluate(trained_tiny, tiny_splits.test, trig, 0, 200)
    assert abs(res["ba"] - fp["ba"]) < 10
