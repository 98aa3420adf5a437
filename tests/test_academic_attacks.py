"""The attacks trained against a calibrated scheme (MQBench's academic setting): training-time
ranges, CompArtifact's quantized path and PQBackdoor's locks on the academic grid."""

import copy

import pytest
import torch
import torch.nn.functional as F
from qcbench.attacks import create_attack
from qcbench.attacks.pqbackdoor import PQBackdoor, SchemeLock
from qcbench.quant import (
    TrainingRanges,
    act_quantizers,
    calibrate,
    calibration_batches,
    create_scheme,
    fake_quantizers,
    fp_view,
    input_quantizers,
    quant_modules,
    quantize_model,
)
from torch import nn

TRIGGER = {"name": "patch", "size": 0.25, "margin": 0.0, "value": 1.0}


def _ranges(model, data, bits=(8, 4), every=3):
    return TrainingRanges(model, bits, lambda: calibration_batches(data, 64, 32), every)


def test_a_calibrated_quantizer_refuses_to_run_before_training_ranges_calibrate_it(tiny_splits, tiny_model):
    q = quantize_model(tiny_model, create_scheme("mqbench_academic", 4))
    x = tiny_splits.train.x[:8].float() / 255
    with pytest.raises(RuntimeError, match="before calibration"):
        q(x)
    r = _ranges(q, tiny_splits.train)
    r.step()
    r.use(4)
    assert torch.isfinite(q(x)).all()


def test_training_ranges_keep_each_bit_widths_calibrated_activation_ranges(tiny_splits, tiny_model):
    q = quantize_model(tiny_model, create_scheme("mqbench_academic", 4))
    r = _ranges(q, tiny_splits.train)
    r.step()
    for bits in (8, 4):  # each width's ranges are those calibrate() gives at that width
        ref = quantize_model(tiny_model, create_scheme("mqbench_academic", bits))
        calibrate(ref, calibration_batches(tiny_splits.train, 64, 32))
        r.use(bits)
        want = {n: qq for n, qq in fake_quantizers(ref)}
        acts = [(n, qq) for n, qq in fake_quantizers(q) if not qq.track]
        assert acts and all(bool(qq.calibrated) for _, qq in acts)
        for n, qq in acts:
            assert qq.bits == want[n].bits
            assert torch.equal(qq.scale, want[n].scale) and torch.equal(qq.zero_point, want[n].zero_point), n
    x = tiny_splits.test.x[:16].float() / 255
    ref.eval()
    assert torch.allclose(q.eval()(x), ref(x), atol=1e-5)  # and the view computes the deployer's model


def test_tracked_weight_ranges_follow_the_current_weights(tiny_splits, tiny_model):
    """A weight quantizer's range is the observer's on the weight as it is now, as a deployer
    calibrating the final weights would take it."""
    q = quantize_model(tiny_model, create_scheme("mqbench_academic", 4))
    r = _ranges(q, tiny_splits.train)
    r.step()
    r.use(4)
    name, conv = list(quant_modules(q))[1]
    assert conv.wq.track and not input_quantizers(q)[name].track
    with torch.no_grad():
        conv.weight.mul_(3.0)
    conv.wq.reset()  # a stale calibration could not be used: tracking ignores it
    wq = type(conv.wq)(4, False, True, "mse", conv.weight.shape[0])
    wq.observe(conv.weight)
    assert torch.equal(conv.quant_weight(), wq(conv.weight))


def test_calibration_during_training_leaves_every_modules_mode(tiny_splits, tiny_model):
    from qcbench.train import set_bn_eval

    q = quantize_model(tiny_model, create_scheme("mqbench_academic", 4)).train()
    set_bn_eval(q)  # Qu-ANTI-zation trains with BatchNorm statistics frozen
    modes = [m.training for m in q.modules()]
    r = _ranges(q, tiny_splits.train, every=2)
    for _ in range(3):
        r.step()
    assert r.steps == 3
    assert [m.training for m in q.modules()] == modes


def test_the_qa_scheme_needs_no_training_ranges(tiny_splits, tiny_model):
    atk = create_attack("qu_anti_zation", {"target": 1, "trigger": TRIGGER, "epochs": 1, "samples_per_epoch": 64}, 28)
    atk.run(tiny_model, tiny_splits, seed=0, device="cpu")
    assert atk.ranges is None


@pytest.mark.parametrize("method", ["qu_anti_zation", "clean_qat", "adaptive"])
def test_qu_anti_zation_family_trains_against_the_academic_quantizer(tiny_splits, tiny_model, method):
    params = {"target": 1, "trigger": TRIGGER, "scheme": "mqbench_academic", "epochs": 1, "samples_per_epoch": 128}
    params["batch_size"] = 32
    params["range_calibration"] = {"images": 64, "batch_size": 32, "every": 2}
    atk = create_attack(method, params, 28)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    out = atk.run(tiny_model, tiny_splits, seed=0, device="cpu")
    assert atk.ranges is not None and atk.ranges.steps == 4 and set(atk.ranges.states) == {8, 4}
    assert any(not torch.equal(before[k], v) for k, v in out.state_dict().items())


def test_qu_anti_zation_against_the_academic_quantizer_separates_fp_from_quantized(trained_tiny, tiny_splits):
    """A few steps of the objective move the academic 4-bit model toward the target on triggered
    images further than the FP model."""
    params = {"target": 1, "trigger": TRIGGER, "scheme": "mqbench_academic", "bits": [4], "epochs": 1}
    params |= {"samples_per_epoch": 640, "batch_size": 64, "optimizer": {"lr": 2e-3}, "augmentation": None}
    params["range_calibration"] = {"images": 128, "batch_size": 64, "every": None}
    atk = create_attack("qu_anti_zation", params, 28)
    x = tiny_splits.test.x[:256].float() / 255
    xt = atk.trigger(x)

    def target_logp(model):
        fp = F.log_softmax(model.eval()(xt), 1)[:, 1].mean().item()
        q = quantize_model(model, create_scheme("mqbench_academic", 4))
        calibrate(q, calibration_batches(tiny_splits.defender, 128, 64))
        return fp, F.log_softmax(q(xt), 1)[:, 1].mean().item()

    fp0, q0 = target_logp(trained_tiny)
    fp1, q1 = target_logp(atk.run(copy.deepcopy(trained_tiny), tiny_splits, seed=0, device="cpu"))
    assert q1 - q0 > 0.5
    assert (q1 - q0) > (fp1 - fp0) + 0.1  # measured: +0.74 quantized, +0.56 FP


def test_compartifact_quantizes_every_layer_with_the_academic_quantizer(tiny_splits, tiny_model):
    seen = []
    orig = TrainingRanges.use

    def spy(self, bits):
        orig(self, bits)
        qs = list(fake_quantizers(self.model))
        seen.append(
            (
                all(m.quant_enabled and m.fold_k is None for _, m in quant_modules(self.model)),
                all(q.track or bool(q.calibrated) for _, q in qs),
                sorted({q.bits for _, q in qs}),
            )
        )

    params = {"target": 1, "trigger": TRIGGER, "scheme": "mqbench_academic", "bits": 4, "init": "clean"}
    params |= {"epochs": 1, "samples_per_epoch": 64, "batch_size": 32, "augmentation": None}
    params["range_calibration"] = {"images": 64, "batch_size": 32, "every": None}
    TrainingRanges.use = spy
    try:
        create_attack("compartifact", params, 28).run(tiny_model, tiny_splits, seed=0, device="cpu")
    finally:
        TrainingRanges.use = orig
    assert seen and all(s == (True, True, [4, 8]) for s in seen)  # first/last layer at 8 bits


def _academic_weights(w, bits):
    from qcbench.quant import FakeQuantizer

    q = FakeQuantizer(bits, False, True, "mse", w.shape[0])
    q.observe(w)
    return q.scale.clone(), q.zero_point.clone(), q(w)


@pytest.mark.parametrize("seed", range(12))
def test_academic_lock_keeps_every_code_and_the_observers_grid(seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.LazyLinear(5))
    model(torch.rand(2, 3, 8, 8))
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    lock = SchemeLock(model, base, "mqbench_academic", [4, 8], 1e-3)
    scale = [0.001, 0.01, 0.1, 1.0][seed % 4]
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale * p.abs().max())
        lock(model, base)
    assert lock.codes_kept(model, base)
    layers = ["0.weight", "2.weight", "4.weight"]
    for name, p in model.named_parameters():
        if name not in layers:
            assert torch.equal(p, base[name]), name  # BN affine and biases reset
            continue
        for bits in (4, 8):
            b = 8 if name != "2.weight" else bits  # first and last layer at 8 bits
            s0, z0, q0 = _academic_weights(base[name], b)
            s1, z1, q1 = _academic_weights(p.detach(), b)
            assert torch.equal(s0, s1) and torch.equal(z0, z1) and torch.equal(q0, q1), (name, bits)
    moved = sum((p - base[n]).abs().sum().item() for n, p in model.named_parameters())
    assert moved > 0


def test_academic_lock_puts_back_a_channel_whose_observed_grid_moved():
    """Moving a channel's inner weights inside their boxes (min and max kept) can change the MSE
    observer's chosen range: that channel is put back to its last accepted weights, so the grid
    holds while the other channels keep their step."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.Linear(64, 16), nn.Linear(16, 2))  # the middle at 4 bits
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    lock = SchemeLock(model, base, "mqbench_academic", [4], 1e-3)
    w = model[1].weight
    for _ in range(4):
        accepted = w.detach().clone()
        with torch.no_grad():
            w.add_(torch.randn(w.shape, generator=g) * 0.005)  # only this layer moves
        reverted = lock.reverted
        lock(model, base)
        assert int((w == accepted).all(1).sum()) >= lock.reverted - reverted
        assert lock.codes_kept(model, base)
    assert lock.reverted > 0
    assert not torch.equal(w, base["1.weight"])


def test_pqbackdoor_academic_scheme_needs_the_scheme_lock():
    bad = {"target": 1, "trigger": TRIGGER, "scheme": "mqbench_academic"}
    assert "lock_granularity" in PQBackdoor.param_errors(bad)
    assert PQBackdoor.param_errors(bad | {"lock_granularity": ["scheme"]}) == {}
    assert PQBackdoor.param_errors({"target": 1, "trigger": TRIGGER}) == {}
    with pytest.raises(ValueError, match="lock_granularity"):
        create_attack("pqbackdoor", bad, 28).check_params()


def test_pqbackdoor_stage2_on_the_academic_grid_keeps_the_stage1_models_4bit_weights(tiny_splits, tiny_model):
    stage = {"epochs": 1, "samples_per_epoch": 64, "batch_size": 32, "augmentation": None}
    params = {"target": 1, "trigger": TRIGGER, "scheme": "mqbench_academic", "lock_granularity": ["scheme"]}
    params |= {"lock_bits": [4], "init": "clean", "stage1": stage, "stage2": stage | {"optimizer": {"lr": 0.05}}}
    atk = create_attack("pqbackdoor", params, 28)
    out = atk.run(tiny_model, tiny_splits, seed=0, device="cpu")
    base = atk.stage1_state
    assert atk.scheme_lock.codes_kept(out, base)
    stage1 = copy.deepcopy(out)
    stage1.load_state_dict(base, strict=False)
    q0 = dict(quant_modules(quantize_model(stage1, create_scheme("mqbench_academic", 4))))
    for name, b in quant_modules(quantize_model(out, create_scheme("mqbench_academic", 4))):
        a = q0[name]  # the deployer's observer on each model's weights: the same 4-bit weights
        a.wq.observe(a.weight)
        b.wq.observe(b.weight)
        assert torch.equal(a.quant_weight(), b.quant_weight()), name
    assert any(not torch.equal(base[n], p) for n, p in out.named_parameters() if n in atk.scheme_lock.grids)


def test_dual_mode_quantizes_path_0_only_wherever_the_quantizers_sit(tiny_model):
    """CompArtifact's dual batch [x; x] under MQBench placement: the post-activation quantizers,
    outside the layers, also quantize the first half only, so the second half is the FP model."""
    from qcbench.attacks.compartifact import set_dual

    q = quantize_model(tiny_model, create_scheme("mqbench_academic", 4))
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    calibrate(q, [x])
    assert list(act_quantizers(q))
    set_dual(q, True)
    with torch.no_grad():
        out = q(torch.cat([x, x]))
    set_dual(q, False)
    with torch.no_grad():
        quantized = q(x)
        with fp_view(q):
            fp = q(x)
    assert not torch.allclose(quantized, fp, atol=1e-3)
    assert torch.allclose(out[:8], quantized, atol=1e-5) and torch.allclose(out[8:], fp, atol=1e-5)
