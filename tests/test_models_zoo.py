"""The LAC paper's Table 3 architectures (AlexNet, VGG19-BN, MobileNet-V2, ViT) on tiny instances:
shapes, fake quantization, layer units, LAC end to end and the model-file round trip."""

import pytest
import torch
from qcbench.defenses import create_defense
from qcbench.defenses.units import extract_units
from qcbench.io import load_model, save_model
from qcbench.metrics import evaluate
from qcbench.models import MODELS, create_model
from qcbench.quant import QUANT_MODULES, create_scheme, fp_view, quantize_model
from qcbench.triggers.base import create_trigger
from torch import nn

TINY = {  # registered name -> keywords of a tiny instance
    "alexnet": {"width_div": 16},
    "vgg19_bn": {"width_div": 8},
    "mobilenet_v2": {"width_mult": 0.25},
    "vit": {"dim": 32, "depth": 2, "heads": 2},
}


def tiny(arch: str, num_classes: int = 10, channels: int = 1, size: int = 28, **extra) -> nn.Module:
    torch.manual_seed(0)
    kw = TINY[arch] | ({"image_size": size} if arch == "vit" else {}) | extra
    model = create_model(arch, num_classes, channels, [0.5] * channels, [0.25] * channels, **kw)
    for m in model.modules():  # BN statistics of one random batch, so the untrained net's activations keep their scale
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(32, channels, size, size))
    return model.eval()


def layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def test_the_table3_architectures_are_registered():
    assert {"alexnet", "vgg19_bn", "mobilenet_v2", "vit"} <= set(MODELS.names())


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("channels,size,classes", [(1, 28, 10), (3, 32, 43), (3, 64, 200)])
def test_output_shape(arch, channels, size, classes):
    model = tiny(arch, classes, channels, size)
    torch.fx.symbolic_trace(model)  # traceable (layer units and FX backends need it)
    assert model(torch.rand(3, channels, size, size)).shape == (3, classes)


def test_alexnet_with_batchnorm():
    model = tiny("alexnet", bn=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    units = extract_units(quantize_model(model, create_scheme("qa", 4)))
    assert [len(u.bns) for u in units] == [1] * 5 + [0] * 3  # conv units [conv, bn, relu]: PDA has BN statistics


@pytest.mark.parametrize("arch", sorted(TINY))
def test_quantization_swaps_every_layer_and_units_follow_the_execution_order(arch):
    model = tiny(arch, channels=3, size=32)
    q = quantize_model(model, create_scheme("qa", 4)).eval()
    n = len(layers(model))
    assert n == len(layers(q)) == sum(isinstance(m, QUANT_MODULES) for m in q.modules())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        fp, out = model(x), q(x)
        with fp_view(q):
            assert torch.equal(q(x), fp)  # quantization off: exactly the FP model
    assert torch.isfinite(out).all() and not torch.equal(out, fp)

    order: list[str] = []
    names = {m: name for name, m in q.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda m, _: order.append(names[m])) for m in layers(q)]
    with torch.no_grad():
        q(x)
    for h in hooks:
        h.remove()
    units = extract_units(q)
    assert [u.first for u in units] == order and len(order) == n  # one unit per layer, in execution order
    if arch == "vgg19_bn":
        convs = [[type(q.get_submodule(m)) for m in u.modules] for u in units if "features" in u.first]
        assert len(convs) == 16 and all(t == [QUANT_MODULES[0], nn.BatchNorm2d, nn.ReLU] for t in convs)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_lac_runs_end_to_end(arch, tiny_splits, one_torch_thread):
    m = tiny_splits.meta
    fp = tiny(arch, m["num_classes"], m["in_channels"], m["image_size"])
    q = quantize_model(fp, create_scheme("qa", 4))
    params = {"iterations": 5, "calib_batches": 2, "batch_size": 16, "pda": True, "pda_iterations": 2}
    lac = create_defense("lac", params)
    defended = lac.run(fp, q, tiny_splits, seed=0, device="cpu")
    assert len(lac.log) == len(layers(fp))
    for _, layer in defended.named_modules():
        if hasattr(layer, "wq"):  # hardened weights lie on the frozen grid
            assert torch.allclose(layer.quant_weight(), layer.weight, atol=1e-6)
    trigger = create_trigger({"name": "patch"}, m["image_size"])
    res = evaluate(defended, tiny_splits.test, trigger, 0, 200)
    assert 0 <= res["ba"] <= 100 and 0 <= res["asr"] <= 100


@pytest.mark.parametrize("arch", sorted(TINY))
def test_model_files_round_trip(arch, tmp_path):
    model = tiny(arch, 43, 3, 32)  # non-trivial BN statistics, so a lost buffer would show
    meta = {"arch": arch, "arch_kwargs": TINY[arch] | ({"image_size": 32} if arch == "vit" else {}),
            "num_classes": 43, "in_channels": 3, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
            "scheme": None}  # fmt: skip
    x = torch.rand(2, 3, 32, 32)
    for name, m, extra in (
        ("fp", model, {}),
        ("q", quantize_model(model, create_scheme("qa", 4)), {"scheme": create_scheme("qa", 4).to_dict()}),
    ):
        save_model(m, tmp_path / f"{name}.safetensors", meta | extra)
        loaded, _ = load_model(tmp_path / f"{name}.safetensors")
        with torch.no_grad():
            assert torch.equal(loaded(x), m.eval()(x))


def test_create_model_sizes_the_vit_by_the_dataset_and_others_ignore_it():
    from qcbench.models import create_model

    vit = create_model("vit", 10, 1, [0.5], [0.25], image_size=28, **TINY["vit"])
    assert vit(torch.rand(2, 1, 28, 28)).shape == (2, 10)  # 7x7 patches of 4 px
    # the config's arch keywords win over the dataset's size (how stages and io merge them)
    kw = {"image_size": 28} | TINY["vit"] | {"image_size": 32}
    assert create_model("vit", 10, 1, [0.5], [0.25], **kw).pos_embed.shape[1] == 8 * 8 + 1
    resnet = create_model("resnet_tiny", 10, 1, [0.5], [0.25], image_size=28, width=4)
    assert resnet(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_resnet_takes_the_imagenet_stem_above_64_px_only():
    from qcbench.models import create_model

    small = create_model("resnet18", 200, 3, [0.5] * 3, [0.25] * 3, image_size=64)
    large = create_model("resnet18", 10, 3, [0.5] * 3, [0.25] * 3, image_size=224)
    assert small.conv1.kernel_size == (3, 3) and small.maxpool is None
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2) and large.maxpool is not None
    assert large(torch.rand(1, 3, 224, 224)).shape == (1, 10)
    # the state dict keys do not depend on the stem: a CIFAR-stem file keeps loading as before
    assert {k for k in small.state_dict()} == {k for k in large.state_dict()}
    forced = create_model("resnet_tiny", 10, 1, [0.5], [0.25], image_size=28, stem="imagenet", width=4)
    assert forced.conv1.kernel_size == (7, 7)
