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
