"""Behaviour of the attack and the defense on a tiny model and synthetic data."""

import torch
from qcbench.defenses import create_defense
from qcbench.defenses.lac import bn_stat_distance, pda
from qcbench.defenses.units import capture, extract_units
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


def test_pda_stays_within_gamma_and_lowers_the_bn_distance(tiny_model):
    qm = quantize_model(tiny_model, create_scheme("qa", 4))
    for m in qm.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
    unit = extract_units(qm)[1]
    (x0,) = capture(qm, unit.first, [torch.rand(16, 1, 28, 28)], "input")
    gamma = 0.05
    x = pda(qm, unit, x0, iterations=20, gamma=gamma, alpha=0.01)
    assert (x - x0).abs().max() <= gamma + 1e-6 and not torch.equal(x, x0)
    with torch.no_grad():
        assert bn_stat_distance(qm, unit, x) < bn_stat_distance(qm, unit, x0)


def test_bn_distance_uses_the_population_variance(tiny_model):
    qm = quantize_model(tiny_model, create_scheme("qa", 4)).eval()
    unit = extract_units(qm)[1]
    (x,) = capture(qm, unit.first, [torch.rand(4, 1, 28, 28)], "input")
    bn = qm.get_submodule(unit.bns[0])
    f = qm.get_submodule(unit.first)(x)
    mu, var = f.mean(dim=(2, 3)), f.var(dim=(2, 3), unbiased=False)
    ref = ((bn.running_mean - mu) ** 2).sum() + (((bn.running_var + 1e-6).sqrt() - (var + 1e-6).sqrt()) ** 2).sum()
    with torch.no_grad():
        assert torch.allclose(bn_stat_distance(qm, unit, x), ref / 4, rtol=1e-5)


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
