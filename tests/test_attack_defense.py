"""Behaviour of the attack and the defense on a tiny model and synthetic data."""

import torch
from qcbench.defenses import create_defense
from qcbench.defenses.lac import bn_stat_distance, pda
from qcbench.defenses.units import capture, capture_outputs, extract_units, unit_inputs
from qcbench.metrics import evaluate
from qcbench.quant import create_scheme, quantize_model


def test_units_follow_the_reference_layer_pattern(tiny_model):
    units = extract_units(quantize_model(tiny_model, create_scheme("qa", 4)))
    mods = [u.modules for u in units]
    assert mods[0] == ["conv1", "bn1", "relu"]
    assert ["layers.0.0.conv1", "layers.0.0.bn1", "layers.0.0.relu1"] in mods
    assert ["layers.0.0.conv2", "layers.0.0.bn2"] in mods  # stops before the residual add
    assert ["layers.1.0.downsample.0", "layers.1.0.downsample.1"] in mods
    assert mods[-1] == ["fc"] and units[-1].bns == []
    assert len(units) == 10


def test_units_take_quantized_inputs_and_end_with_the_next_input_quantizer(tiny_model):
    """As an MQBench unit: the cached input is already quantized and is not quantized again
    (so a PDA shift of 1e-3 reaches the conv as it is), and a chain whose single consumer is a
    quantized layer ends with that layer's input quantizer."""
    import torch.nn.functional as F

    qm = quantize_model(tiny_model, create_scheme("qa", 4)).eval()
    units = {u.first: u for u in extract_units(qm)}
    assert units["layers.0.0.conv1"].out_quant == "layers.0.0.conv2"
    assert units["conv1"].out_quant is None  # the stem's output also feeds the residual add
    assert units["layers.0.0.conv2"].out_quant is None and units["fc"].out_quant is None
    unit = units["layers.1.0.conv1"]
    layer = qm.get_submodule(unit.first)
    batch = torch.rand(8, 1, 28, 28)
    (raw,) = capture(qm, unit.first, [batch], "input")
    (x,) = unit_inputs(qm, unit, [batch])
    assert torch.equal(x, layer.quant_input(raw)) and not torch.equal(x, raw)
    delta = torch.full_like(x, 1e-3)
    with torch.no_grad(), unit.quantized_input(qm):
        shift = layer(x + delta) - layer(x)
        w = layer.quant_weight()
        expect = F.conv2d(delta, w, None, layer.stride, layer.padding)
        assert torch.allclose(shift, expect, atol=1e-5)  # linear in the input: nothing re-rounded
    out = unit.forward(qm, x)
    assert not layer.input_quantized  # only while the unit runs: the model's own forward is untouched
    nxt = qm.get_submodule(unit.out_quant)
    assert torch.equal(out, nxt.quant_input(out))  # on the next quantizer's grid already


def test_pda_skips_a_unit_whose_batchnorm_is_1d():
    """PDA's statistics are spatial: a Linear -> BatchNorm1d unit is reconstructed without it."""
    from qcbench.defenses.lac import bn2d_of

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
    ).eval()
    qm = quantize_model(model, create_scheme("qa", 4)).eval()
    units = extract_units(qm)
    assert units[0].bns == ["2"] and bn2d_of(qm, units[0]) == []
    lac = create_defense(
        "lac", {"iterations": 3, "calib_batches": 2, "batch_size": 8, "pda": True, "pda_iterations": 2}
    )
    calib = [torch.rand(8, 1, 28, 28) for _ in range(2)]
    out = lac.reconstruct(qm, calib, torch.Generator().manual_seed(0))
    assert len(lac.log) == 2 and out(calib[0]).shape == (8, 10)


def test_pda_stays_within_gamma_and_lowers_the_bn_distance(tiny_model):
    qm = quantize_model(tiny_model, create_scheme("qa", 4))
    for m in qm.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
    unit = extract_units(qm)[1]
    (x0,) = unit_inputs(qm, unit, [torch.rand(16, 1, 28, 28)])
    gamma = 0.05
    x = pda(qm, unit, x0, iterations=20, gamma=gamma, alpha=0.01)
    assert (x - x0).abs().max() <= gamma + 1e-6 and not torch.equal(x, x0)
    with torch.no_grad():
        assert bn_stat_distance(qm, unit, x) < bn_stat_distance(qm, unit, x0)


def test_bn_distance_uses_torch_var_as_upstream_calls_it(tiny_model):
    """Upstream (mqbench/advanced_ptq.py, GetDcFpLayerInpOut) calls torch.var(view(N, C, -1),
    dim=2): the unbiased variance over the spatial positions."""
    qm = quantize_model(tiny_model, create_scheme("qa", 4)).eval()
    unit = extract_units(qm)[1]
    (x,) = unit_inputs(qm, unit, [torch.rand(4, 1, 28, 28)])
    bn = qm.get_submodule(unit.bns[0])
    with unit.quantized_input(qm):
        f = qm.get_submodule(unit.first)(x)
    flat = f.view(f.size(0), f.size(1), -1)
    mu, var = flat.mean(dim=2), torch.var(flat, dim=2)
    ref = ((bn.running_mean - mu) ** 2).sum() + (((bn.running_var + 1e-6).sqrt() - (var + 1e-6).sqrt()) ** 2).sum()
    biased = flat.var(dim=2, unbiased=False)
    wrong = ((bn.running_mean - mu) ** 2).sum() + (((bn.running_var + 1e-6).sqrt() - (biased + 1e-6).sqrt()) ** 2).sum()
    with torch.no_grad():
        got = bn_stat_distance(qm, unit, x)
        assert torch.allclose(got, ref / 4, rtol=1e-5)
        assert not torch.allclose(got, wrong / 4, rtol=1e-5)


def test_pda_halves_its_step_at_upstreams_fixed_iterations(monkeypatch):
    """Upstream halves alpha before the step of iterations 250, 500, 1000, 2000, 3000 and 4000,
    whatever the iteration count: 500 steps are 250 of alpha and 250 of alpha / 2, and a run of
    at most 250 steps is never halved."""
    from qcbench.defenses import lac

    assert [lac.pda_step(1.0, it) for it in (0, 249, 250, 499, 500, 999, 1000, 4000, 9999)] == [
        1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 1 / 64, 1 / 64]  # fmt: skip
    # a distance whose gradient sign is -1 everywhere: each step moves x up by the step size
    monkeypatch.setattr(lac, "bn_stat_distance", lambda _m, _u, x: -x.sum())
    for iterations, moved in ((5, 5.0), (250, 250.0), (260, 255.0), (500, 375.0), (1001, 500.125)):
        x = lac.pda(None, None, torch.zeros(2, 3), iterations=iterations, gamma=1e6, alpha=1.0)
        assert torch.equal(x, torch.full((2, 3), moved)), iterations


def _asr(model, splits, attack, bits=None):
    if bits is not None:
        model = quantize_model(model, create_scheme("qa", bits))
    return evaluate(model, splits.test, attack.trigger, attack.target, 200)


def test_qu_anti_zation_wakes_up_only_when_quantized(qa_model, tiny_splits):
    clean, attacked, attack = qa_model
    before = _asr(clean, tiny_splits, attack, bits=4)
    fp, q4 = _asr(attacked, tiny_splits, attack), _asr(attacked, tiny_splits, attack, bits=4)
    assert q4["asr"] > before["asr"] + 40, (before, q4)
    assert q4["asr"] > fp["asr"] + 40, (fp, q4)


def test_lac_removes_the_quantization_conditioned_part(qa_model, tiny_splits):
    _, attacked, attack = qa_model
    q = quantize_model(attacked, create_scheme("qa", 4))
    params = {"iterations": 150, "calib_batches": 8, "batch_size": 32, "pda": True, "pda_iterations": 5}
    defended = create_defense("lac", params).run(attacked, q, tiny_splits, seed=0, device="cpu")
    fp, nodef, lac = (_asr(attacked, tiny_splits, attack), _asr(q, tiny_splits, attack),
                      evaluate(defended, tiny_splits.test, attack.trigger, attack.target, 200))  # fmt: skip
    assert lac["asr"] < nodef["asr"] - 30, (nodef, lac)
    assert lac["asr"] < fp["asr"] + 15, (fp, lac)
    # hardened weights lie on the frozen grid: quantizing them again changes nothing
    for _, m in defended.named_modules():
        if hasattr(m, "wq"):
            assert torch.allclose(m.quant_weight(), m.weight, atol=1e-6)


def test_fp_targets_of_all_units_in_one_pass_equal_the_per_unit_capture(tiny_model, tiny_splits):
    """LAC/EFRAP take every unit's FP target from one pass (the reference model never changes):
    the same tensors as one capture per unit, and the same defended model bit for bit as with
    the cache switched off."""
    qm = quantize_model(tiny_model, create_scheme("qa", 4)).eval()
    units = extract_units(qm)
    batches = [torch.rand(8, 1, 28, 28) for _ in range(3)]
    names = [u.last for u in units]
    together = capture_outputs(qm, names, batches)
    assert list(together) == names
    for n in names:
        one = capture(qm, n, batches, "output")
        assert len(together[n]) == 3 and all(torch.equal(a, b) for a, b in zip(together[n], one))
    params = {"iterations": 5, "calib_batches": 2, "batch_size": 16, "pda": True, "pda_iterations": 2}
    out = []
    for budget in (1 << 30, 0):  # cached, then one unit at a time
        d = create_defense("lac", params)
        d.target_cache_bytes = budget
        assert bool(d.fp_targets(qm, units, batches)) == (budget > 0)
        torch.manual_seed(0)
        out.append(
            d.run(tiny_model, quantize_model(tiny_model, create_scheme("qa", 4)), tiny_splits, seed=0, device="cpu")
        )
    a, b = (m.state_dict() for m in out)
    assert all(torch.equal(a[k], b[k]) for k in a)
