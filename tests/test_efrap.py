"""The layer-wise reconstruction defenses (EFRAP, LAC) on a tiny model: rounding, locality, early stop."""

import pytest
import torch
from qcbench.defenses import create_defense
from qcbench.defenses.efrap import SoftRounding
from qcbench.defenses.units import extract_units
from qcbench.quant import QuantScheme, calibrate, create_scheme, freeze_weight_ranges, quant_modules, quantize_model

# (weight_symmetric, weight_per_channel, observer): symmetric and affine, per channel and per tensor;
# the MSE observer shrinks the range, so some weights are clamped
GRIDS = [(True, True, "minmax"), (True, False, "mse"), (False, True, "mse"), (False, False, "minmax")]


def _quantized(model, scheme, calib):
    q = quantize_model(model, scheme)
    calibrate(q, calib)
    return q


def _grid(q, w):
    shape = (-1, *([1] * (w.ndim - 1)))
    s = q.scale.view(shape) if q.per_channel else q.scale
    z = q.zero_point.view(shape) if q.per_channel else q.zero_point
    return s, z


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def calib(tiny_splits):
    return [x for x, _ in tiny_splits.defender.batches(32, limit=64)]


@pytest.mark.parametrize("symmetric,per_channel,observer", GRIDS)
def test_efrap_starts_at_w_and_at_nearest_rounding(tiny_model, calib, tiny_splits, symmetric, per_channel, observer):
    scheme = QuantScheme(4, 4, weight_symmetric=symmetric, weight_per_channel=per_channel, observer=observer)
    q = _quantized(tiny_model, scheme, calib)
    freeze_weight_ranges(q)
    for name, m in quant_modules(q):
        soft = SoftRounding(m.wq, m.weight)
        s, z = _grid(m.wq, m.weight)
        assert torch.allclose(soft.hard(), m.wq(m.weight), atol=1e-6), name  # hard = nearest rounding
        inside = ((m.weight / s + z) >= m.wq.qmin) & ((m.weight / s + z) <= m.wq.qmax)
        tol = 1e-4 * s.expand_as(m.weight) + 1e-7  # frac is clipped to [1e-4, 1 - 1e-4]
        assert ((soft() - m.weight).abs() <= tol)[inside].all(), name  # soft weight = W
    # the whole defense with zero iterations is the no-defense model
    d = create_defense("efrap", {"iterations": 0, "batch_size": 32, "calib_batches": 2})
    out = d.run(tiny_model, q, tiny_splits, seed=0, device="cpu")
    x = tiny_splits.test.x[:64].float() / 255
    with torch.no_grad():
        assert torch.allclose(out(x), q(x), atol=1e-5)
    assert all(e["flipped"] == 0 and e["iterations"] == 0 for e in d.log)


@pytest.mark.parametrize("method", ["efrap", "lac"])
def test_a_unit_changes_only_its_own_weights(tiny_model, calib, method):
    q = _quantized(tiny_model, create_scheme("mqbench_academic", 4), calib)
    params = {"iterations": 15, "lr": 0.2 if method == "efrap" else 1e-2, "batch_size": 32, "calib_batches": 2}
    if method == "lac":
        params |= {"pda": True, "pda_iterations": 2}
    d = create_defense(method, params)
    reference, work = d.setup(q)
    unit = extract_units(work)[4]
    before = {k: v.clone() for k, v in work.state_dict().items()}
    ref_before = {k: v.clone() for k, v in reference.state_dict().items()}
    entry = d.process_unit(work, reference, unit, calib, torch.Generator().manual_seed(0), 4)
    after = work.state_dict()
    assert set(after) == set(before)  # the per-unit variable is gone again
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{unit.first}.weight"}
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in ref_before.items())
    layer = work.get_submodule(unit.first)
    assert type(layer.wq).__name__ == "FakeQuantizer" and layer.weight_offset is None
    assert torch.allclose(layer.quant_weight(), layer.weight, atol=1e-6)  # hardened onto the grid
    assert entry["iterations"] == 15 and entry["module"] == unit.first and entry["wall_s"] > 0
    if method == "efrap":
        assert entry["flipped"] > 0


@pytest.mark.parametrize("scheme", ["mqbench_academic", "qa", "pq"])
def test_efrap_rounds_every_weight_down_or_up(tiny_model, calib, tiny_splits, scheme):
    q = _quantized(tiny_model, create_scheme(scheme, 4), calib)
    d = create_defense("efrap", {"iterations": 10, "lr": 0.5, "batch_size": 32, "calib_batches": 2})
    out = d.run(tiny_model, q, tiny_splits, seed=0, device="cpu")
    ref = quantize_model(tiny_model, create_scheme(scheme, 4))
    freeze_weight_ranges(ref)  # the grid EFRAP used
    flips = 0
    for (name, a), (_, b) in zip(quant_modules(ref), quant_modules(out)):
        s, z = _grid(a.wq, a.weight)
        code = torch.round(b.weight / s + z)
        lo = torch.clamp(torch.floor(a.weight / s) + z, a.wq.qmin, a.wq.qmax)
        hi = torch.clamp(torch.ceil(a.weight / s) + z, a.wq.qmin, a.wq.qmax)
        assert ((code == lo) | (code == hi)).all(), name
        assert torch.allclose(b.weight, s * (code - z), atol=1e-6), name  # exactly on the grid
        flips += int((code != torch.round(a.wq(a.weight) / s + z)).sum())
    assert flips > 0
    assert len(d.log) == len(extract_units(out)) and {"iterations", "loss", "wall_s"} <= set(d.log[0])


@pytest.mark.parametrize("method", ["lac", "efrap"])
def test_early_stop_ends_a_plateau_before_the_fixed_protocol(tiny_model, calib, tiny_splits, method):
    q = _quantized(tiny_model, create_scheme("mqbench_academic", 4), calib)
    base = {"iterations": 120, "lr": 1e-9, "batch_size": 32, "calib_batches": 2}  # lr ~ 0: a plateau
    if method == "lac":
        base["pda"] = False
    fixed = create_defense(method, base)
    fixed.run(tiny_model, q, tiny_splits, seed=0, device="cpu")
    stopping = create_defense(method, base | {"early_stop": {"window": 10, "rel_tol": 0.05}})
    stopping.run(tiny_model, q, tiny_splits, seed=0, device="cpu")
    assert all(e["iterations"] == 120 and not e["stopped_early"] for e in fixed.log)
    assert all(e["stopped_early"] and e["iterations"] < 120 and e["iterations"] % 10 == 0 for e in stopping.log)
    assert sum(e["iterations"] for e in stopping.log) < sum(e["iterations"] for e in fixed.log) / 2
