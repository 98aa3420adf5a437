import pytest
import torch
from qcbench.quant import (
    FakeQuantizer,
    QuantConv2d,
    QuantScheme,
    calibrate,
    create_scheme,
    dense_view,
    fake_quant,
    fp_view,
    quant_modules,
    quantize_calibrated,
    quantize_model,
    set_bits,
)
from torch import nn


def _grid_codes(q: FakeQuantizer, x: torch.Tensor) -> torch.Tensor:
    q.observe(x)
    y = q(x)
    s = q._shape(q.scale, x)
    z = q._shape(q.zero_point, x)
    return y / s + z


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bits", [8, 4])
def test_dequantized_values_lie_on_the_grid(symmetric, per_channel, bits):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 3, 3)
    q = FakeQuantizer(bits, symmetric, per_channel, "minmax", channels=6)
    codes = _grid_codes(q, x)
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.min() >= q.qmin - 1e-3 and codes.max() <= q.qmax + 1e-3
    assert len(torch.unique(codes.round())) <= 2**bits


def test_per_channel_scales_differ_per_channel():
    w = torch.randn(4, 8) * torch.tensor([0.1, 1.0, 3.0, 10.0])[:, None]
    q = FakeQuantizer(8, True, True, "minmax", channels=4)
    q.observe(w)
    assert q.scale.shape == (4,)
    assert len(torch.unique(q.scale)) == 4
    assert torch.allclose(q.scale, w.abs().amax(1) / 127)


def test_eight_bit_error_below_four_bit_error():
    torch.manual_seed(0)
    x = torch.randn(1000)
    errs = {}
    for b in (8, 4):
        q = FakeQuantizer(b, True, False, "minmax")
        q.observe(x)
        errs[b] = (q(x) - x).pow(2).mean().item()
    assert errs[8] < errs[4] / 100


def test_straight_through_gradient_and_clamp():
    q = FakeQuantizer(4, True, False, "minmax")
    q.observe(torch.tensor([-1.0, 1.0]))
    x = torch.tensor([-3.0, -0.33, 0.2, 0.9, 3.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # identity inside the range, 0 where clamped


def test_dynamic_observer_follows_the_current_tensor():
    q = FakeQuantizer(8, False, False, "dynamic")
    small, large = torch.linspace(0, 1, 50), torch.linspace(0, 100, 50)
    assert (q(small) - small).abs().max() <= 1 / 255 / 2 + 1e-6
    assert (q(large) - large).abs().max() <= 100 / 255 / 2 + 1e-4


@pytest.mark.parametrize("shape", [(5, 6, 7, 3), (1, 6, 4, 4), (5, 1, 7, 3)])
def test_dense_view_is_a_copy_free_view_with_the_same_range(shape):
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    v = dense_view(x)
    assert v.is_contiguous() and v.data_ptr() == x.data_ptr()  # a view in memory order, no copy
    assert sorted(v.shape) == sorted(x.shape)
    assert torch.equal(torch.stack(torch.aminmax(v)), torch.stack(torch.aminmax(x.contiguous())))
    xt = torch.randn(4, 6)[:, ::2]  # not dense: left as it is
    assert dense_view(xt) is xt


def test_dynamic_quantizer_is_the_same_on_channels_last_input():
    x = torch.randn(4, 8, 5, 5) * 3
    q = FakeQuantizer(4, False, False, "dynamic")
    assert torch.equal(q(x.contiguous(memory_format=torch.channels_last)), q(x))


def test_quantize_model_swaps_every_layer_and_keeps_fp_view(tiny_model):
    x = torch.rand(8, 1, 28, 28)
    qm = quantize_model(tiny_model, create_scheme("qa", 4))
    mods = list(quant_modules(qm))
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in tiny_model.modules())
    assert len(mods) == n_layers
    with torch.no_grad(), fp_view(qm):
        assert torch.allclose(qm(x), tiny_model(x), atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(qm(x), tiny_model(x), atol=1e-3)
        err4 = (qm(x) - tiny_model(x)).abs().mean()
        set_bits(qm, 8)
        err8 = (qm(x) - tiny_model(x)).abs().mean()
    assert err8 < err4


def test_fp_view_restores_each_layers_own_state(tiny_model):
    """A model quantizing only some layers (CompArtifact's training model) keeps exactly those
    quantized after an FP view, instead of every layer being switched on."""
    qm = quantize_model(tiny_model, create_scheme("qa", 8))
    mods = dict(quant_modules(qm))
    for name, m in mods.items():
        m.quant_enabled = name.startswith("layers.2") or name == "fc"
    before = {n: m.quant_enabled for n, m in mods.items()}
    assert any(before.values()) and not all(before.values())
    with fp_view(qm):
        assert not any(m.quant_enabled for m in mods.values())
    assert {n: m.quant_enabled for n, m in mods.items()} == before


def test_io_8bit_keeps_first_and_last_layers_at_8_bits(tiny_model):
    qm = quantize_model(tiny_model, QuantScheme(4, 4, io_8bit=True))
    bits = [m.wq.bits for _, m in quant_modules(qm)]
    assert bits[0] == 8 and bits[-1] == 8 and set(bits[1:-1]) == {4}


def test_calibration_freezes_static_ranges(tiny_model):
    qm = quantize_model(tiny_model, QuantScheme(8, 8, observer="minmax"))
    with pytest.raises(RuntimeError, match="before calibration"):
        qm(torch.rand(2, 1, 28, 28))
    calibrate(qm, [torch.rand(16, 1, 28, 28) for _ in range(2)])
    first = next(m for _, m in quant_modules(qm))
    assert bool(first.aq.calibrated) and first.aq.scale.item() > 0
    before = first.aq.scale.clone()
    qm(torch.rand(4, 1, 28, 28) * 5)  # no recalibration at inference
    assert torch.equal(first.aq.scale, before)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_quantize_calibrated_uses_the_first_images_in_its_batches(tiny_model, tiny_splits):
    """The stages' quantize-with-calibration: a copy quantized with the scheme and calibrated on
    the first ``images`` images of the set, ``batch_size`` at a time (EMA ranges see the batching)."""
    scheme = QuantScheme(4, 4, observer="ema_minmax")
    data = tiny_splits.defender
    got = quantize_calibrated(tiny_model, scheme, data, images=96, batch_size=32)
    want = calibrate(quantize_model(tiny_model, scheme), [data.x[i : i + 32].float() / 255 for i in (0, 32, 64)])
    assert not any(isinstance(m, QuantConv2d) for m in tiny_model.modules())  # the input is not touched
    assert not got.training and got.qcbench_scheme == scheme
    assert all(torch.equal(v, want.state_dict()[k]) for k, v in _state(got).items())
    other = quantize_calibrated(tiny_model, scheme, data, images=96, batch_size=96)
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in _state(got).items())
    later = type(data)(data.x.clone(), data.y.clone())
    later.x[96:] = 255 - later.x[96:]  # images past the first 96 are never seen
    same = quantize_calibrated(tiny_model, scheme, later, images=96, batch_size=32)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in _state(got).items())


def test_fold_bn_is_exact_in_full_precision(tiny_model):
    for m in tiny_model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    qm = quantize_model(tiny_model, QuantScheme(8, 8, fold_bn=True))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qm.modules())
    assert any(isinstance(m, QuantConv2d) for m in qm.modules())
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad(), fp_view(qm):
        assert torch.allclose(qm(x), tiny_model(x), atol=1e-4)


def test_bad_scheme_values_are_refused():
    with pytest.raises(ValueError, match="observer"):
        QuantScheme(observer="median")
    with pytest.raises(ValueError, match="bit width"):
        QuantScheme(weight_bits=1)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fused_kernel_matches_the_reference_formula(per_channel, symmetric):
    torch.manual_seed(1)
    x = torch.randn(5, 7, 3, 3, requires_grad=True)
    q = FakeQuantizer(4, symmetric, per_channel, "minmax", channels=5)
    q.observe(x)
    y = q(x)
    s, z = q._shape(q.scale, x), q._shape(q.zero_point, x)
    ref = fake_quant(x, s, z, q.qmin, q.qmax)
    assert torch.allclose(y, ref, atol=1e-6)
    (g1,) = torch.autograd.grad(y.sum(), x)
    (g2,) = torch.autograd.grad(ref.sum(), x)
    # the formula's float round-off can nudge a code sitting on the grid's end past the clamp;
    # the fused kernel masks on the rounded code. Everywhere else the gradients are identical.
    code = (x / s + z).round().detach()
    inner = (code > q.qmin) & (code < q.qmax)
    assert torch.equal(g1[inner], g2[inner]) and g1[inner].eq(1).all()


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bits", [8, 4])
def test_mse_observer_picks_the_range_of_least_squared_error(per_channel, bits):
    """The MSE observer's in-place search chooses, among its shrink factors of the min/max range
    (MQBench's: 1 - i/100 for i < 80 per channel, i < 95 per tensor), the one whose
    fake-quantized tensor (:func:`fake_quant`) has the least squared error."""
    torch.manual_seed(bits)
    x = torch.randn(16, 8, 5, 5).pow(3) * torch.linspace(0.1, 3, 8)[None, :, None, None]  # heavy tails
    if not per_channel:
        x = x.contiguous(memory_format=torch.channels_last)
    q = FakeQuantizer(bits, symmetric=False, per_channel=per_channel, observer="mse", channels=16)
    lo, hi = q._mse_range(x)
    flat = x.flatten(1) if per_channel else x.reshape(1, -1)
    lo0, hi0 = flat.min(1).values, flat.max(1).values
    errs = []
    for i in range(80 if per_channel else 95):
        s, z = q.qparams(lo0 * (1 - 0.01 * i), hi0 * (1 - 0.01 * i))
        errs.append((fake_quant(flat, s[:, None], z[:, None], q.qmin, q.qmax) - flat).pow(2).sum(1))
    best = torch.stack(errs).argmin(0)  # first minimum, as the search keeps the earlier on ties
    want = 1 - 0.01 * best.float()
    assert torch.allclose(hi, hi0 * want) and torch.allclose(lo, lo0 * want)
    assert bits == 8 or (best > 0).any()  # at 4 bits a heavy tail is clipped
