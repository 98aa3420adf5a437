"""MQBench academic placement of the activation quantizers (``placement="mqbench"``).

MQBench's academic backend (``AcademicQuantizer._find_act_quants``) quantizes the *output* of
every node that feeds a conv or linear: its ``module_type_to_quant_input`` holds only those two
and it quantizes the inputs of no function (adds, pools), so an add or a pool is quantized only
where it feeds a conv/linear. One quantizer per producer, and every use of the producer is
rewired to it: a residual shortcut carries the quantized activation. The io rule
(``_get_io_module``, ``post_act_8bit_node_name``) keeps the first and last layers' weights and
the quantizers on their inputs at 8 bits. MQBench's first layer is the node that consumes the
model input; qcbench's models normalize inside the model, where that node is the normalization,
so the first *conv* is meant: its input (the normalized image) gets the 8-bit quantizer that
MQBench puts on the image.
"""

from __future__ import annotations

import operator

import pytest
import torch
from qcbench.defenses.units import capture, extract_units, unit_inputs
from qcbench.models import create_model
from qcbench.quant import (
    QUANT_MODULES,
    SCHEMES,
    ActQuantizer,
    FakeQuantizer,
    QuantTracer,
    act_quantizers,
    calibrate,
    create_scheme,
    fp_view,
    input_quantizers,
    quant_modules,
    quantize_model,
    set_bits,
)


def _model(arch: str, channels: int = 3, size: int = 32):
    torch.manual_seed(0)
    return create_model(arch, 10, channels, [0.5] * channels, [0.25] * channels, image_size=size).eval()


def _label(node: torch.fx.Node) -> str:
    """A consumer as the tables below name it: a module by its name, a residual add as ``+``."""
    if node.op == "call_module":
        return node.target
    return "+" if node.target is operator.add else node.name


def _producer(node: torch.fx.Node) -> str:
    """A producer: a module by its name, a function or method by its node's name (``add_1``)."""
    return node.target if node.op == "call_module" else node.name


def placement(qmodel) -> dict[str, tuple[int, list[str]]]:
    """producer -> (bits of its quantizer, the consumers reading the quantized output)."""
    out = {}
    for node in qmodel.graph.nodes:
        if node.op == "call_module" and isinstance(qmodel.get_submodule(node.target), ActQuantizer):
            (src,) = node.args
            consumers = sorted(_label(u) for u in node.users if u.op != "call_function" or u.target is operator.add)
            out[_producer(src)] = (qmodel.get_submodule(node.target).aq.bits, consumers)
    return out


def _block(stage: int, block: int, downsample_next: bool) -> dict[str, tuple[int, list[str]]]:
    """A BasicBlock's two quantizers: after relu1 (conv2's input) and after relu2 (the next
    block's conv1 and either its downsample conv or, as the identity shortcut, its add)."""
    p = f"layers.{stage}.{block}"
    nxt = f"layers.{stage + 1}.0" if block == 1 else f"layers.{stage}.1"
    after = sorted([f"{nxt}.conv1", f"{nxt}.downsample.0" if downsample_next else "+"])
    return {f"{p}.relu1": (4, [f"{p}.conv2"]), f"{p}.relu2": (4, after)}


#: ResNet-18 (CIFAR stem, 32 px) at W4A4: every quantized node, in graph order
RESNET18 = {
    "normalize": (8, ["conv1"]),  # the first conv's input, 8 bits (MQBench: the image itself)
    "relu": (4, ["+", "layers.0.0.conv1"]),  # the stem's post-ReLU output, also block 0.0's shortcut
    **_block(0, 0, False),
    **_block(0, 1, True),  # stage 1 opens with a downsampling block
    **_block(1, 0, False),
    **_block(1, 1, True),
    **_block(2, 0, False),
    **_block(2, 1, True),
    **_block(3, 0, False),
    "layers.3.1.relu1": (4, ["layers.3.1.conv2"]),
    # layers.3.1.relu2 feeds only the pool: not quantized; the pooled, flattened features are
    "flatten": (8, ["fc"]),  # the last layer's input, 8 bits
}


def test_resnet18_quantizers_sit_where_mqbench_academic_puts_them():
    q = quantize_model(_model("resnet18"), create_scheme("mqbench_academic", 4))
    got = placement(q)
    assert list(got) == list(RESNET18) and got == RESNET18
    # not quantized: the residual branch (bn2 -> add), the add itself, downsample BN, the pool
    assert not any(k.endswith(("bn2", "downsample.1")) or k in ("+", "pool") for k in got)
    assert all(m.aq is None for _, m in quant_modules(q))  # no layer quantizes its own input again
    wbits = {n: m.wq.bits for n, m in quant_modules(q)}
    assert wbits.pop("conv1") == wbits.pop("fc") == 8 and set(wbits.values()) == {4}


def test_resnet18_imagenet_stem_quantizes_the_max_pool_output():
    """With the ImageNet stem the first block reads the max-pool: that output is quantized (and
    is the shortcut), the stem's ReLU, feeding only the pool, is not."""
    q = quantize_model(_model("resnet18", size=96), create_scheme("mqbench_academic", 4))
    got = placement(q)
    assert "relu" not in got and got["maxpool"] == (4, ["+", "layers.0.0.conv1"])


def test_residual_shortcut_carries_the_quantized_activation():
    q = quantize_model(_model("resnet_tiny", 1, 28), create_scheme("mqbench_academic", 4))
    x = torch.rand(16, 1, 28, 28)
    calibrate(q, [x])
    seen = {}
    hooks = [
        q.get_submodule("relu_post_act_fake_quantizer").register_forward_hook(lambda m, a, o: seen.update(q=o)),
        q.get_submodule("layers.0.0.bn2").register_forward_hook(lambda m, a, o: seen.update(bn2=o)),
        q.get_submodule("layers.0.0.relu2").register_forward_pre_hook(lambda m, a: seen.update(add=a[0])),
    ]
    with torch.no_grad():
        q(x)
    for h in hooks:
        h.remove()
    raw = q.get_submodule("layers.0.0.conv1")  # its input is the same quantized tensor
    (inp,) = capture(q, "layers.0.0.conv1", [x], "input")
    assert torch.equal(inp, seen["q"]) and raw.aq is None
    assert torch.allclose(seen["add"] - seen["bn2"], seen["q"], atol=1e-5)  # identity = quantized
    with fp_view(q), torch.no_grad():
        assert torch.equal(q(x), _model("resnet_tiny", 1, 28)(x))  # FP view: quantizers off


def _fp_producers(model) -> dict[str, bool]:
    """Independently of qcbench's insertion: the nodes among a conv/linear's arguments in the FP
    model's graph, True for those feeding its first or last conv/linear."""
    graph = QuantTracer().trace(model)
    mods = dict(model.named_modules())
    layers = [
        n
        for n in graph.nodes
        if n.op == "call_module" and isinstance(mods[n.target], (torch.nn.Conv2d, torch.nn.Linear))
    ]
    out: dict[str, bool] = {}
    for i, n in enumerate(layers):
        for a in n.all_input_nodes:
            out[_producer(a)] = out.get(_producer(a), False) or i in (0, len(layers) - 1)
    return out


@pytest.mark.parametrize("arch", ["resnet18", "vgg19_bn", "mobilenet_v2", "alexnet", "vit"])
def test_every_conv_linear_reads_a_quantized_producer_as_mqbench(arch):
    fp = _model(arch)
    q = quantize_model(fp, create_scheme("mqbench_academic", 4))
    got = placement(q)
    want = _fp_producers(fp)
    assert set(got) == set(want)
    assert {k: b for k, (b, _) in got.items()} == {k: 8 if io else 4 for k, io in want.items()}
    mods = dict(q.named_modules())
    for node in q.graph.nodes:
        if node.op == "call_module" and isinstance(mods[node.target], QUANT_MODULES):
            assert all(isinstance(mods.get(a.target), ActQuantizer) for a in node.all_input_nodes), node
            assert mods[node.target].aq is None
        if node.op == "call_module" and isinstance(mods[node.target], ActQuantizer):
            assert len(node.args[0].users) == 1  # every use of the producer goes through it
    # it runs (min/max observers here: MSE search on 20M VGG weights is slow on CPU)
    q = calibrate(quantize_model(fp, create_scheme("mqbench_academic", 4, observer="minmax", act_observer="minmax")),
                  [x := torch.rand(2, 3, 32, 32)])  # fmt: skip
    assert q(x).shape == (2, 10)


def test_arch_specific_placements():
    """What the rule gives beyond ResNet-18's pattern: MobileNet-V2 quantizes its residual adds
    (each feeds the next block's conv; the shortcut input of the next add is then quantized too);
    VGG quantizes a max-pool's output where a conv follows it, not the ReLU before; ViT quantizes
    the attention output (``reshape``, proj's input) and the class token (``getitem``, the head's
    8-bit input), and none of its residual adds."""
    mb = placement(quantize_model(_model("mobilenet_v2"), create_scheme("mqbench_academic", 4)))
    adds = [k for k in mb if k.startswith("add")]
    assert len(adds) == 10 and mb["add"] == (4, ["blocks.3.conv.0"])  # the 10 residual adds
    assert mb["add_1"] == (4, ["+", "blocks.5.conv.0"])  # also the shortcut of block 5's add
    vgg = placement(quantize_model(_model("vgg19_bn"), create_scheme("mqbench_academic", 4)))
    assert vgg["features.6"] == (4, ["features.7"]) and "features.5" not in vgg  # pool, not ReLU
    vit = placement(quantize_model(_model("vit"), create_scheme("mqbench_academic", 4)))
    assert vit["reshape_1"] == (4, ["blocks.0.attn.proj"]) and vit["getitem_37"] == (8, ["head"])
    assert not any(k == "+" or k.startswith("add") for k in vit)
    assert all("+" not in consumers for _, consumers in vit.values())


@pytest.mark.parametrize("name", [n for n in SCHEMES.names() if n != "mqbench_academic"])
def test_other_schemes_keep_the_layer_input_placement(name, tiny_model):
    """Every other scheme quantizes each conv/linear's own input; the model keeps its class."""
    scheme = create_scheme(name, 4)
    q = quantize_model(tiny_model, scheme)
    assert scheme.placement == "layer_input" and not list(act_quantizers(q))
    assert all((m.aq is not None) == scheme.quantize_acts for _, m in quant_modules(q))
    assert isinstance(q, torch.fx.GraphModule) == scheme.fold_bn


def test_units_under_mqbench_placement_read_the_previous_quantizer(tiny_model):
    """LAC/EFRAP units: the cached input is the previous quantizer's output (not quantized again);
    a chain ending in a post-activation quantizer ends with it, the stem's included."""
    q = quantize_model(tiny_model, create_scheme("mqbench_academic", 4))
    x = torch.rand(8, 1, 28, 28)
    calibrate(q, [x])
    units = {u.first: u for u in extract_units(q)}
    assert units["conv1"].out_quant == "relu_post_act_fake_quantizer"
    assert units["layers.0.0.conv1"].out_quant == "layers_0_0_relu1_post_act_fake_quantizer"
    assert units["layers.0.0.conv2"].out_quant is None and units["fc"].out_quant is None
    unit = units["layers.1.0.conv1"]
    (cached,) = unit_inputs(q, unit, [x])
    qz = q.get_submodule("layers_0_0_relu2_post_act_fake_quantizer")
    (raw,) = capture(q, "layers.0.0.relu2", [x], "output")
    assert torch.equal(cached, qz(raw)) and not torch.equal(cached, raw)
    out = unit.forward(q, cached)
    assert torch.equal(out, q.get_submodule(unit.out_quant).quant_input(out))


def test_set_bits_keeps_the_io_quantizers_at_8(tiny_model):
    q = quantize_model(tiny_model, create_scheme("mqbench_academic", 8))
    set_bits(q, 4)
    bits = {n: m.aq.bits for n, m in act_quantizers(q)}
    assert bits.pop("normalize_post_act_fake_quantizer") == bits.pop("flatten_post_act_fake_quantizer") == 8
    assert set(bits.values()) == {4} and q.qcbench_scheme.act_bits == 4
    assert not any(bool(m.aq.calibrated) for _, m in act_quantizers(q))


def test_ema_mse_observer_blends_per_batch_mse_ranges():
    """MQBench's EMAMSEObserver: the first batch's MSE range, then 0.9 · old + 0.1 · new."""
    torch.manual_seed(0)
    a, b = torch.randn(4, 8, 5, 5).pow(3), 3 * torch.randn(4, 8, 5, 5).pow(3)
    ema = FakeQuantizer(4, symmetric=False, per_channel=False, observer="ema_mse")
    ema.observe(a)
    ema.observe(b)
    (la, ha), (lb, hb) = ema._mse_range(a), ema._mse_range(b)
    assert torch.allclose(ema._lo, 0.9 * la + 0.1 * lb) and torch.allclose(ema._hi, 0.9 * ha + 0.1 * hb)
    plain = FakeQuantizer(4, symmetric=False, per_channel=False, observer="mse")
    plain.observe(a)
    plain.observe(b)
    assert torch.equal(plain._lo, torch.minimum(la, lb)) and torch.equal(plain._hi, torch.maximum(ha, hb))
    scheme = create_scheme("mqbench_academic", 4)
    assert (scheme.observer, scheme.activation_observer) == ("mse", "ema_mse")


def test_input_quantizers_name_the_shared_quantizer_each_layer_reads(tiny_model):
    q = quantize_model(tiny_model, create_scheme("mqbench_academic", 4))
    acts = input_quantizers(q)
    shared = q.get_submodule("layers_0_0_relu2_post_act_fake_quantizer").aq
    assert acts["layers.1.0.conv1"] is shared and acts["layers.1.0.downsample.0"] is shared
    assert acts["conv1"].bits == acts["fc"].bits == 8 and acts["layers.0.0.conv2"].bits == 4
    plain = quantize_model(tiny_model, create_scheme("qa", 4))
    assert all(acts is m.aq for (_, m), acts in zip(quant_modules(plain), input_quantizers(plain).values()))


def test_a_model_fx_cannot_trace_is_refused_with_a_clear_error():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else self.conv(-x)  # data-dependent: not traceable

    with pytest.raises(ValueError, match="placement 'mqbench' needs a model torch.fx can trace; Branchy"):
        quantize_model(Branchy(), create_scheme("mqbench_academic", 4))
    assert quantize_model(Branchy(), create_scheme("qa", 4)).conv.aq is not None  # layer_input: no tracing
