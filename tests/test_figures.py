"""Figures: the importance τ finds a planted backdoor neuron; every registered figure draws a
non-blank image from the files its inputs declare; config checks name the key."""

import json

import matplotlib.image as mpimg
import pytest
import torch
from qcbench import figures, stages
from qcbench.config import load_config
from torch import nn

from .conftest import ROOT
from .fabricate import CONFIG, lac_curve, make_cell


class Planted(nn.Module):
    """Channel 2 fires only on a bright patch and drives the target logit: the backdoor neuron."""

    def __init__(self, target: int = 0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            self.conv.weight.uniform_(-0.1, 0.1)
            self.conv.bias.zero_()
            self.conv.weight[2].fill_(1.0)
            self.conv.bias[2] = -5.0  # needs a 3x3 neighbourhood averaging > 0.55
            self.fc.weight.uniform_(-0.3, 0.3)
            self.fc.weight[target, 2] = 10.0

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu(self.conv(x)))))


def test_importance_ranks_the_planted_backdoor_neuron_first():
    g = torch.Generator().manual_seed(1)
    x = 0.3 * torch.rand(64, 1, 12, 12, generator=g)
    xp = x.clone()
    xp[:, :, 8:12, 8:12] = 1.0  # the trigger
    model = Planted().eval()
    before = model(xp)
    tau = figures.neuron_importance(model, "relu", xp, target=0)
    assert tau.shape == (6,)
    assert int(tau.argmax()) == 2
    others = torch.cat([tau[:2], tau[3:]])
    assert tau[2] > 0.5 and tau[2] > 10 * others.abs().max()
    assert torch.equal(model(xp), before)  # the pruning hook is gone
    # the neuron is a backdoor neuron, not a benign one: on clean images pruning it changes nothing
    assert figures.neuron_importance(model, "relu", x, target=0)[2].abs() < 1e-4


@pytest.fixture(scope="module")
def cell(tmp_path_factory, idx_dir):
    root = make_cell(tmp_path_factory.mktemp("cell"), idx_dir)
    lac_curve(root / figures.cell_file(CONFIG, CONFIG["figures"]["fig2"], defense="lac", file="lac_curve.parquet"))
    return root


def _pixels_vary(path) -> float:
    img = mpimg.imread(path)
    return float(img[..., :3].std())


@pytest.mark.parametrize("name", ["fig1", "fig2", "fig3", "fig4"])
def test_every_figure_draws_a_non_blank_image(cell, name, monkeypatch, one_torch_thread):
    monkeypatch.chdir(cell)
    inputs = figures.figure_inputs(name, CONFIG)
    assert all((cell / p).is_file() for p in inputs.values()), inputs
    out = {k: str(cell / f"results/figures/{name}.{k}") for k in ("png", "pdf", "json")}
    numbers = stages.render_figure(name, inputs, out, CONFIG)
    assert _pixels_vary(out["png"]) > 0.02
    assert (cell / f"results/figures/{name}.pdf").read_bytes().startswith(b"%PDF")
    meta = json.loads((cell / f"results/figures/{name}.json").read_text())
    assert meta["caption"].startswith(f"Figure {name[-1]} (") and meta["numbers"] == json.loads(json.dumps(numbers))
    assert not list((cell / "results/figures").glob("*.tmp"))


def test_figure_inputs_follow_the_config_cell():
    ins = figures.figure_inputs("fig4", CONFIG)
    assert ins["defended"] == "results/fashion_mnist/resnet_tiny/qu_anti_zation/w4/lac/seed0/model.safetensors"
    assert ins["quantized"].endswith("/w4/none/seed0/model.safetensors")
    assert figures.figure_inputs("fig1", CONFIG)["fp"].endswith("/w32/none/seed0/model.safetensors")
    assert figures.figure_inputs("fig2", CONFIG)["curve"].endswith("/w4/lac/seed0/lac_curve.parquet")
    other = {**CONFIG, "figures": {"fig1": {**CONFIG["figures"]["fig1"], "seed": 1, "bits": 8}}}
    assert figures.figure_inputs("fig1", other)["quantized"].endswith("/w8/none/seed1/model.safetensors")
    assert figures.figure_names(other) == ["fig1"]
    with pytest.raises(KeyError, match="figures.fig3"):
        figures.figure_inputs("fig3", other)


def test_config_errors_name_the_key_and_shipped_configs_are_clean():
    bad = {**CONFIG, "figures": {"fig4": {**CONFIG["figures"]["fig4"], "defense": "nope"}, "fig9": {}}}
    errors = figures.config_errors(bad)
    assert any("figures.fig4.defense" in e and "'nope'" in e for e in errors)
    assert any("figures.fig9" in e for e in errors)
    for layers in ((), ("config.yaml",)):
        cfg = load_config(*(ROOT / "config" / f for f in layers))
        assert figures.config_errors(cfg) == [] and {"fig1", "fig3", "fig4"} <= set(figures.figure_names(cfg))


def test_a_wrong_layer_names_the_config_key(cell, monkeypatch):
    monkeypatch.chdir(cell)
    cfg = {**CONFIG, "figures": {"fig3": {**CONFIG["figures"]["fig3"], "unit": "layers.2.0.relu1"}}}
    with pytest.raises(ValueError, match="figures.fig3.unit"):
        figures.render_figure("fig3", cfg, figures.figure_inputs("fig3", cfg))


def test_grad_cam_of_a_stage_in_a_graph_module_quantized_model(tiny_model):
    """Under MQBench placement the quantized model is a torch.fx GraphModule in which a stage is
    inlined: Grad-CAM of `layers` hooks the last module called inside it, with the same maps as
    hooking that stage's output on the FP model."""
    from qcbench.quant import calibrate, create_scheme, quantize_model

    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    q = calibrate(quantize_model(tiny_model, create_scheme("mqbench_academic", 8)), [x])
    assert isinstance(q, torch.fx.GraphModule)
    last_relu = [n for n, m in q.named_modules() if n.startswith("layers.") and isinstance(m, nn.ReLU)][-1]
    assert figures.output_module(q, "layers") is q.get_submodule(last_relu)
    assert figures.output_module(tiny_model.eval(), "layers") is tiny_model.get_submodule("layers")
    maps, pred = figures.grad_cam(q, "layers", x)
    assert maps.shape[0] == 4 and len(pred) == 4 and maps.max() > 0


@pytest.mark.parametrize("layer", ["layers.1.0.relu1", "layers.2.0.relu2", "fc"])
def test_importance_with_the_upstream_replayed_equals_a_full_forward_per_channel(layer):
    """τ from one upstream pass per batch (replay_upstream) equals τ from a full forward pass per
    pruned channel, over several batches, and the model's modules are left as they were."""
    from qcbench.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10, in_channels=1, mean=[0.5], std=[0.25], width=8).eval()
    x = torch.rand(40, 1, 28, 28)
    tau = figures.neuron_importance(model, layer, x, target=3, batch_size=16)
    module = model.get_submodule(layer)
    mask = torch.ones(len(tau))
    handle = module.register_forward_pre_hook(lambda _m, a: (a[0] * mask.view(1, -1, *([1] * (a[0].ndim - 2))),))
    base = figures.backdoor_loss(model, x, 3, batch_size=16)  # the hook's mask is all ones here
    brute = []
    for k in range(len(tau)):
        mask.fill_(1.0)
        mask[k] = 0.0
        brute.append(figures.backdoor_loss(model, x, 3, batch_size=16) - base)
    handle.remove()
    assert torch.allclose(tau, torch.tensor(brute), atol=1e-5)
    assert tau.abs().max() > 0
    assert not any("forward" in m.__dict__ for m in model.modules())
    # the upstream really is replayed: while active, another input gives the recorded input's output
    with torch.no_grad(), figures.replay_upstream(model, layer, x[:16]):
        assert torch.equal(model(torch.zeros_like(x[:16])), model(x[:16]))
    assert not torch.equal(model(torch.zeros_like(x[:16])), model(x[:16]))
