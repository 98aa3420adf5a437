"""A purified model's exact quantizer: model.json reproduces it bit for bit, model.onnx carries it."""

import json

import pytest
import torch
from qcbench import export, io
from qcbench import purify as purify_mod
from qcbench.cli import main
from qcbench.metrics import evaluate
from qcbench.quant import calibrate, input_quantizers, quant_modules
from safetensors.torch import load_file, save_file

from tests.test_purify_inputs import _argv, received  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _received(folder, model, splits, n_images=96):
    m = splits.meta
    meta = {"arch": "resnet_tiny", "arch_kwargs": {"width": _width(model)}}
    meta |= {"num_classes": 10, "in_channels": 1, "mean": m["mean"], "std": m["std"]}
    io.save_model(model, folder / "fp" / "model.safetensors", meta)
    save_file({"x": splits.defender.x[:n_images].contiguous()}, str(folder / "images.safetensors"))
    labeled = {"x": splits.test.x.contiguous(), "y": splits.test.y.contiguous()}
    save_file(labeled, str(folder / "labeled.safetensors"))
    return folder


def _width(model) -> int:
    return int(model.conv1.out_channels)


def _purify_keeping_the_model(monkeypatch, folder, model, **options):
    """Run ``purify`` on ``model`` and return (summary, the purified model as it was in memory)."""
    kept = []
    real = purify_mod.check_finite_result

    def keep(purified, log, out):
        kept.append(purified)
        return real(purified, log, out)

    monkeypatch.setattr(purify_mod, "check_finite_result", keep)
    opts = {"arch_kwargs": {"width": _width(model)}, "iterations": 3, "params": {"pda_iterations": 2}} | options
    summary = purify_mod.purify(
        folder / "fp" / "model.safetensors", folder / "images.safetensors", folder / "out", **opts
    )
    return summary, kept[0]


def _logits(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize(("scheme", "bits"), [("qa", 8), ("mqbench_academic", 4), ("pq", 8)])
def test_model_json_reproduces_the_purified_model_bit_for_bit(
    scheme, bits, trained_tiny, tiny_splits, tmp_path, monkeypatch
):
    folder = _received(tmp_path, trained_tiny, tiny_splits)
    _, purified = _purify_keeping_the_model(monkeypatch, folder, trained_tiny, scheme=scheme, bits=bits)
    out = folder / "out"
    meta = json.loads((out / "model.json").read_text())
    record = meta["quant_params"]
    assert all(r["weight"]["fixed"] and len(r["weight"]["scale"]) >= 1 for r in record.values())
    dynamic = scheme == "qa"  # its activation ranges are recomputed per batch, as it was purified
    assert all(r["act"]["fixed"] is not dynamic for r in record.values())
    assert all(("recorded" in r["act"]) is dynamic for r in record.values())
    assert ("are dynamic" in meta["quant_params_note"]) is dynamic

    # the quantizer buffers of model.safetensors are not what load_purified reads: the grids come from model.json
    state = load_file(str(out / "model.safetensors"))
    for k in state:
        if k.endswith(("wq.scale", "aq.scale")):
            state[k] = torch.full_like(state[k], 0.5)
    save_file(state, str(out / "model.safetensors"), metadata={"qcbench": "1"})
    loaded, _ = export.load_purified(out)

    defender = tiny_splits.defender.x[:96].float() / 255.0
    new = torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    for x in (defender[:64], defender[64:], new):
        assert torch.equal(_logits(loaded, x), _logits(purified, x))
    for (name, a), (_, b) in zip(quant_modules(loaded), quant_modules(purified), strict=True):
        assert torch.equal(export.integer_codes(a.wq, a.weight), export.integer_codes(b.wq, b.weight)), name
        # the purified weights are exactly their codes on the recorded grid
        assert torch.equal(a.wq(a.weight), b.weight), name

    # re-calibrating, as a fresh quantization would, moves layers off the grid the defense used
    if not dynamic:
        recalibrated = calibrate(loaded, [defender[:32]])
        ar, ap = input_quantizers(recalibrated), input_quantizers(purified)
        moved = [n for (n, a), (_, b) in zip(quant_modules(recalibrated), quant_modules(purified), strict=True)
                 if not torch.equal(a.wq.scale, b.wq.scale) or not torch.equal(ar[n].scale, ap[n].scale)]  # fmt: skip
        assert moved


def test_a_dynamic_schemes_recorded_ranges_fix_what_onnx_runs(trained_tiny, tiny_splits, tmp_path, monkeypatch):
    folder = _received(tmp_path, trained_tiny, tiny_splits)
    summary, purified = _purify_keeping_the_model(
        monkeypatch, folder, trained_tiny, scheme="qa", bits=8, export="onnx", labeled=folder / "labeled.safetensors"
    )
    out = folder / "out"
    fixed, _ = export.load_purified(out, fix_activations=True)
    assert all(bool(m.aq.calibrated) for _, m in quant_modules(fixed))
    dynamic, _ = export.load_purified(out)
    assert not any(bool(m.aq.calibrated) for _, m in quant_modules(dynamic))
    x = tiny_splits.test.x[:64].float() / 255.0
    ort = export.load_onnx(out / "model.onnx", threads=1)
    a, b = _logits(ort, x), _logits(fixed, x)
    # the same codes and ranges; ORT's float convolutions round differently, so an activation on a
    # rounding boundary can land one code away: logits agree closely, not bit for bit
    assert (a - b).abs().max() < 0.05 and (a.argmax(1) == b.argmax(1)).float().mean() >= 0.98
    codes = export.onnx_weight_codes(out / "model.onnx")
    for name, m in quant_modules(purified):
        assert torch.equal(codes[name], export.integer_codes(m.wq, m.weight).to(torch.int64)), name
    assert summary["export"]["weight_types"] == ["INT8"] and summary["export"]["opset"] == 17
    assert abs(summary["metrics"]["onnxruntime"]["ba"] - summary["metrics"]["purified"]["ba"]) <= 0.5


@pytest.mark.parametrize(
    ("scheme", "bits", "types"), [("pq", 8, ["INT8"]), ("mqbench_academic", 4, ["UINT4", "UINT8"])]
)
def test_onnx_export_of_a_purified_backdoored_model_matches_the_simulated_one(
    scheme, bits, types, qa_model, tiny_splits, tmp_path, capsys
):
    """ONNX Runtime runs model.onnx with BA within 0.5 and ASR within 1 point of the simulated
    purified model; the ONNX weights are the purified integer codes (int4 at 4 bits, opset 21)."""
    _, attacked, _ = qa_model
    folder = _received(tmp_path, attacked, tiny_splits, n_images=128)
    argv = ["purify", str(folder / "fp" / "model.safetensors"), "--images", str(folder / "images.safetensors")]
    argv += ["--out", str(folder / "out"), "--scheme", scheme, "--bits", str(bits), "--export", "onnx"]
    argv += ["--iterations", "20", "--params", '{"pda_iterations": 2}', "--threads", "1"]
    argv += ["--labeled", str(folder / "labeled.safetensors"), "--trigger", '{"name": "patch"}', "--target", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "ONNX QDQ model:" in stdout and "onnxruntime" in stdout
    assert (
        "Safe only when run in qcbench's simulated quantizer (qcbench.export.load_purified) or in ONNX Runtime"
        in stdout
    )
    out = folder / "out"
    summary = json.loads((out / "summary.json").read_text())
    sim, ort = summary["metrics"]["purified"], summary["metrics"]["onnxruntime"]
    assert abs(sim["ba"] - ort["ba"]) <= 0.5 and abs(sim["asr"] - ort["asr"]) <= 1.0, (sim, ort)
    assert summary["export"]["weight_types"] == types
    assert summary["export"]["opset"] == (21 if bits == 4 else 17)
    loaded, _ = export.load_purified(out)
    codes = export.onnx_weight_codes(out / "model.onnx")
    for name, m in quant_modules(loaded):
        assert torch.equal(codes[name], export.integer_codes(m.wq, m.weight).to(torch.int64)), name
    # the recorded model evaluates as the summary says
    again = evaluate(loaded, purify_mod.load_labeled(folder / "labeled.safetensors"), None, None)
    assert again["ba"] == sim["ba"]


def test_export_refuses_grids_onnx_cannot_hold_and_dynamic_ranges(trained_tiny, tiny_splits, tmp_path):
    from qcbench.quant import create_scheme, quantize_model

    x = tiny_splits.defender.x[:32].float() / 255.0
    q6 = calibrate(quantize_model(trained_tiny, create_scheme("pq", 6)), [x])
    with pytest.raises(export.ExportError, match="6-bit"):
        export.export_qdq_onnx(q6, x, tmp_path / "m.onnx")
    qa = calibrate(quantize_model(trained_tiny, create_scheme("qa", 8)), [x])
    with pytest.raises(export.ExportError, match="no fixed range"):
        export.export_qdq_onnx(qa, x, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_deploy_onnxruntime_picks_its_scheme_exports_and_warns_on_another(received, capsys):  # noqa: F811
    assert main(_argv(received, deploy="onnxruntime", bits="8")) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    summary = json.loads((received / "out" / "summary.json").read_text())
    assert summary["settings"]["scheme_name"] == "onnxruntime" and summary["settings"]["export"] == "onnx"
    assert summary["settings"]["scheme"]["fold_bn"] and not summary["settings"]["scheme"]["weight_per_channel"]
    assert (received / "out" / "model.onnx").is_file() and "onnxruntime" in summary["metrics"]
    assert summary["safe_for"].startswith("Safe only when run in ONNX Runtime from the exported model.onnx")
    assert summary["safe_for"] in captured.out
    assert json.loads((received / "out" / "model.json").read_text())["safe_for"] == summary["safe_for"]

    assert main(_argv(received, deploy="onnxruntime", bits="8", scheme="pq")) == 0
    err = capsys.readouterr().err
    assert "warning: --scheme pq is not the quantizer --deploy onnxruntime uses (onnxruntime)" in err
    assert json.loads((received / "out" / "summary.json").read_text())["settings"]["scheme_name"] == "pq"

    assert main(_argv(received, bits="8")) == 0  # simulated: the scheme as given, no export
    summary = json.loads((received / "out" / "summary.json").read_text())
    assert summary["settings"]["scheme_name"] == "mqbench_academic" and summary["settings"]["export"] is None
    assert not (received / "out" / "model.onnx").exists()
    assert summary["safe_for"].startswith("Safe only when run in qcbench's simulated quantizer")


def test_a_quantizer_placed_on_a_producers_output_exports_where_it_runs(trained_tiny, tiny_splits, tmp_path):
    """The exporter needs no knowledge of the placement: any FakeQuantizer module becomes a Q/DQ pair."""
    from qcbench.quant import FakeQuantizer, create_scheme, quantize_model
    from torch import nn

    x = tiny_splits.defender.x[:64].float() / 255.0
    q = calibrate(quantize_model(trained_tiny, create_scheme("pq", 8)), [x])
    extra = FakeQuantizer(8, False, False, "minmax")
    with torch.no_grad():
        extra.observe(q.layers[0](q.bn1(q.conv1(q.normalize(x))).relu()))
    q.layers[0] = nn.Sequential(q.layers[0], extra)
    info = export.export_qdq_onnx(q, x, tmp_path / "m.onnx", bits=8)
    assert info["activations"] == 11 and info["weights"] == 10
    a, b = _logits(export.load_onnx(tmp_path / "m.onnx", threads=1), x), _logits(q, x)
    assert (a - b).abs().max() < 0.05 and (a.argmax(1) == b.argmax(1)).float().mean() >= 0.98
    extra.scale.fill_(extra.scale.item() * 4)  # the exported graph follows that quantizer's own range
    export.export_qdq_onnx(q, x, tmp_path / "m4.onnx", bits=8)
    assert not torch.equal(_logits(export.load_onnx(tmp_path / "m4.onnx", threads=1), x), a)
