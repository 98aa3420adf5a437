"""Real int8 backends (PyTorch FX PTQ on x86/fbgemm/qnnpack, ONNX Runtime QDQ) on a tiny ResNet."""

from __future__ import annotations

import pytest
import qcbench.backends
import torch
from qcbench.backends import (
    BACKENDS,
    BackendUnavailable,
    QuantizedModel,
    available_backends,
    evaluate_backend,
    quantize_real,
    torch_ptq,
)
from qcbench.metrics import evaluate, predict
from qcbench.models import create_model
from qcbench.train import train_clean
from qcbench.triggers import create_trigger

NAMES = ["torch_x86", "torch_fbgemm", "torch_qnnpack", "torch_qnnpack_nofuse", "onnxruntime"]


def skip_unavailable(name: str) -> None:
    reason = available_backends()[name]
    if reason is not None:
        pytest.skip(reason)


def calib_batches(splits, n: int = 256, batch_size: int = 64):
    return [x for x, _ in splits.defender.batches(batch_size, limit=n)]


@pytest.fixture(scope="module")
def trained(tiny_splits):
    """``tiny_model`` (resnet_tiny, width 4) after one epoch of clean training."""
    torch.manual_seed(0)
    m = tiny_splits.meta
    model = create_model("resnet_tiny", m["num_classes"], m["in_channels"], m["mean"], m["std"], width=4)
    cfg = {"epochs": 1, "batch_size": 32, "optimizer": {"name": "adam", "lr": 3e-3}}
    train_clean(model, tiny_splits.train, cfg, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def quantized(trained, tiny_splits):
    """One quantized model per available backend, built once for the module."""
    out = {}
    for name in NAMES:
        if available_backends()[name] is None:
            out[name] = quantize_real(name, trained, calib_batches(tiny_splits))
    return out


def test_registry():
    assert set(NAMES) <= set(BACKENDS.names())
    reasons = available_backends()
    assert set(reasons) == set(BACKENDS.names())
    assert all(r is None or isinstance(r, str) for r in reasons.values())


@pytest.mark.parametrize("name", NAMES)
def test_int8_agrees_with_fp(name, trained, quantized, tiny_splits):
    skip_unavailable(name)
    q = quantized[name]
    assert isinstance(q, QuantizedModel) and q.backend == name
    fp_ba = evaluate(trained, tiny_splits.test, None, None, 200)["ba"]
    assert fp_ba > 30, "the tiny model should have learned something in one epoch"
    fp = predict(trained, tiny_splits.test.x, 200)
    q8 = predict(q, tiny_splits.test.x, 200)
    agree = (fp == q8).float().mean().item()
    assert agree >= 0.90, f"{name}: int8 agrees with FP on only {agree:.1%}"
    x = tiny_splits.test.x[:16].float() / 255
    with torch.no_grad():
        logits, ref = q(x), trained(x)
    assert logits.shape == ref.shape and logits.dtype == torch.float32
    assert not torch.equal(logits, ref)  # really computed on an int8 grid
    assert (logits - ref).abs().max() < 0.5 * ref.abs().max()


@pytest.mark.parametrize("name", ["torch_x86", "torch_fbgemm", "torch_qnnpack"])
def test_torch_graph_is_quantized(name, quantized):
    skip_unavailable(name)
    q = quantized[name]
    ops = q.quantized_ops()
    assert any(o.endswith("ConvReLU2d") for o in ops) and any(o.endswith(".Conv2d") for o in ops)
    assert any(o.endswith(".Linear") for o in ops)
    assert "quantized.add_relu" in ops  # the residual add runs on int8 tensors
    assert "quantize_per_tensor" in ops  # float input -> quint8 before the first conv
    assert not any(isinstance(m, torch.nn.Conv2d) for m in q.graph.modules())  # no float conv left
    engine = torch.backends.quantized.engine
    q(torch.rand(2, 1, 28, 28))
    assert torch.backends.quantized.engine == engine  # restored after the forward
    assert q.info["engine"] == name.removeprefix("torch_") and q.info["calib_samples"] == 256


def test_onnxruntime_graph_is_quantized(quantized):
    skip_unavailable("onnxruntime")
    q = quantized["onnxruntime"]
    ops = q.quantized_ops()
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Add"} <= set(ops)
    run = q.runtime_ops()  # what ORT executes after fusing the QDQ pairs
    assert {"QLinearConv", "QLinearAdd"} <= set(run) and "Conv" not in run
    assert "per-tensor" in q.info["qconfig"] and "MinMax" in q.info["qconfig"]
    assert q(torch.rand(3, 1, 28, 28)).shape == (3, 10)  # dynamic batch


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_backend(name, trained, tiny_splits):
    skip_unavailable(name)
    trig = create_trigger({"name": "badnets"}, 28)
    calib = [(x, y) for x, y in tiny_splits.defender.batches(64, limit=128)]  # (x, y) pairs work too
    res = evaluate_backend(name, trained, calib, tiny_splits.test, trig, 0, batch_size=200)
    assert set(res) == {"ba", "asr", "asr_all", "n_test"} and res["n_test"] == len(tiny_splits.test)
    assert all(0 <= res[k] <= 100 for k in ("ba", "asr", "asr_all"))
    fp = evaluate(trained, tiny_splits.test, trig, 0, 200)
    assert abs(res["ba"] - fp["ba"]) < 10


def test_unknown_and_unsupported(tiny_model, monkeypatch):
    calib = [torch.rand(4, 1, 28, 28)]
    with pytest.raises(KeyError, match="unknown backend 'torch_arm'.*registered: .*torch_qnnpack"):
        quantize_real("torch_arm", tiny_model, calib)
    with pytest.raises(BackendUnavailable, match="engine 'nosuch' is not supported.*supported_engines"):
        torch_ptq(tiny_model, calib, engine="nosuch")
    monkeypatch.setattr(qcbench.backends, "supported_engines", lambda: ["x86", "fbgemm"])  # a build without qnnpack
    with pytest.raises(BackendUnavailable, match="'qnnpack' is not supported"):
        quantize_real("torch_qnnpack", tiny_model, calib)
    assert "qnnpack" in available_backends()["torch_qnnpack"]
    with pytest.raises(ValueError, match="no calibration batches"):
        quantize_real("torch_x86", tiny_model, [])


def test_uint8_calibration_matches_float(tiny_model, tiny_splits):
    skip_unavailable("torch_x86")
    xb = tiny_splits.defender.x[:64]
    a = quantize_real("torch_x86", tiny_model, [xb])
    b = quantize_real("torch_x86", tiny_model, [xb.float() / 255])
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(a(x), b(x))


def test_nofuse_keeps_batchnorm_apart_and_fused_folds_it(quantized):
    for name in ("torch_qnnpack", "torch_qnnpack_nofuse"):
        skip_unavailable(name)
    kinds = {n: {type(m).__name__ for m in quantized[n].modules()} for n in ("torch_qnnpack", "torch_qnnpack_nofuse")}
    assert "BatchNorm2d" not in kinds["torch_qnnpack"] and "ConvReLU2d" in kinds["torch_qnnpack"]
    assert "BatchNorm2d" in kinds["torch_qnnpack_nofuse"] and "ConvReLU2d" not in kinds["torch_qnnpack_nofuse"]
    assert quantized["torch_qnnpack_nofuse"].info["fuse_conv_bn"] is False
