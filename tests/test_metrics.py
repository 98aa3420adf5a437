import math

import torch
from qcbench.data import ImageSet
from qcbench.metrics import der, evaluate
from qcbench.triggers import create_trigger
from torch import nn


class LabelReader(nn.Module):
    """Reads the true label from pixel (0, 0); with the trigger present it answers the target,
    except that it keeps the label of target-class images (so only `asr_all` counts them)."""

    def __init__(self, target: int, fooled: bool) -> None:
        super().__init__()
        self.target, self.fooled = target, fooled

    def forward(self, x):
        label = torch.round(x[:, 0, 0, 0] * 255).long()
        triggered = x[:, 0, -2, -2] > 0.99
        pred = torch.where(triggered & self.fooled, torch.full_like(label, self.target), label)
        return nn.functional.one_hot(pred, 10).float()


def _test_set(n=200):
    y = torch.arange(n) % 10
    x = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    x[:, 0, 0, 0] = y.to(torch.uint8)
    return ImageSet(x, y)


def test_asr_excludes_target_class_images():
    trig = create_trigger({"name": "patch", "value": 1.0}, 28)
    test = _test_set()
    res = evaluate(LabelReader(3, fooled=True), test, trig, 3)
    assert res["ba"] == 100.0 and res["asr"] == 100.0 and res["asr_all"] == 100.0
    res = evaluate(LabelReader(3, fooled=False), test, trig, 3)
    assert res["asr"] == 0.0
    assert math.isclose(res["asr_all"], 10.0, rel_tol=1e-6)  # only the target-class images "succeed"


def test_der_on_known_numbers():
    assert math.isclose(der(90, 99, 89, 1), 98.5)
    assert math.isclose(der(80, 90, 85, 10), 90.0)  # a BA gain is not rewarded
    assert math.isclose(der(90, 10, 90, 40), 50.0)  # an ASR rise is not penalised
    # paper Table 1, CompArtifact 8-bit, FT: 88.59/99.87 -> 90.59/1.72 printed as 99.08
    assert round(der(88.59, 99.87, 90.59, 1.72), 2) == 99.08


def test_predict_runs_a_channels_last_copy_and_leaves_the_model_alone():
    """predict evaluates conv models in channels-last (faster on CPU) on a copy: the caller's
    parameters keep their identity and contiguous format, and the predictions are the
    contiguous model's."""
    from qcbench.metrics import predict
    from qcbench.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet_tiny", 10, 1, [0.5], [0.5], width=8).eval()
    params = list(model.parameters())
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    pred = predict(model, x, 32)
    with torch.inference_mode():
        ref = model(x.float() / 255).argmax(1)
    assert all(p is q for p, q in zip(params, model.parameters()))
    assert all(p.is_contiguous() for p in model.parameters())
    assert torch.equal(pred, ref)


def test_natural_rates_match_the_asr_of_each_target():
    """natural_rates[t] is evaluate()'s ASR with target t, for every t, from one triggered pass."""
    from qcbench.metrics import natural_rates

    trig = create_trigger({"name": "patch", "value": 1.0}, 28)
    test = _test_set()
    clean = LabelReader(3, fooled=False)  # the trigger changes nothing: every rate is 0
    assert natural_rates(clean, test, trig, classes=10) == [0.0] * 10
    fooled = LabelReader(3, fooled=True)  # everything triggered goes to 3
    rates = natural_rates(fooled, test, trig, classes=10)
    assert rates[3] == 100.0 and sum(rates) == 100.0
    assert rates == [evaluate(fooled, test, trig, t)["asr"] for t in range(10)]


def test_natural_rate_command_prints_one_rate_per_class(idx_dir, tmp_path, capsys):
    from qcbench import io
    from qcbench.cli import main
    from qcbench.data import load_prepared, prepare_dataset
    from qcbench.models import create_model

    data = tmp_path / "data.safetensors"
    prepare_dataset("fashion_mnist", {"path": str(idx_dir)}, data, fraction=0.25, seed=0)
    m = load_prepared(data).meta
    meta = {k: m[k] for k in ("num_classes", "in_channels", "mean", "std", "image_size")}
    meta |= {"arch": "resnet_tiny", "arch_kwargs": {"width": 4}}
    torch.manual_seed(0)
    model = create_model("resnet_tiny", m["num_classes"], m["in_channels"], m["mean"], m["std"], width=4)
    io.save_model(model, tmp_path / "model.safetensors", meta)
    args = ["--data", str(data), "--trigger", '{"name": "patch"}', "--test-images", "100"]
    assert main(["natural-rate", str(tmp_path / "model.safetensors"), *args]) == 0
    out = capsys.readouterr().out
    rates = [float(ln.split(":")[1]) for ln in out.splitlines() if ln.strip().startswith("class")]
    assert len(rates) == m["num_classes"] and all(0.0 <= r <= 100.0 for r in rates)
    assert out.startswith("100 test images")
    # an untrained model sends triggered images somewhere: the rates cannot all be zero
    assert sum(rates) > 0
    (tmp_path / "model.pt").write_bytes(b"\x80\x04 a pickle, not safetensors")
    assert main(["natural-rate", str(tmp_path / "model.pt"), *args]) == 2
    assert "natural-rate" in capsys.readouterr().err
