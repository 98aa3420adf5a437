"""CompArtifact's dual path, the adaptive attack's penalty, BadNets' poisoning."""

import copy

import torch
from qcbench.attacks import create_attack
from qcbench.attacks.adaptive import weight_error_penalty
from qcbench.attacks.compartifact import DualInput, set_dual
from qcbench.metrics import evaluate
from qcbench.quant import create_scheme, quant_modules, quantize_model
from torch import nn

#: a short fine-tune of the given model (the attacks' defaults are the paper's: BadNets from
#: scratch with a cosine schedule and crops)
FINE_TUNE = {"init": "clean", "scheduler": "none", "augmentation": None}


def test_dual_path_shares_batchnorm_statistics(tiny_model):
    qm = quantize_model(
        tiny_model, create_scheme("ca", 4, quantize_acts=False, fold_bn=False, observer="dynamic")
    ).train()
    seen = []
    qm.bn1.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach()))
    xq, xf = torch.rand(6, 1, 28, 28), torch.rand(6, 1, 28, 28)
    before = qm.bn1.running_mean.clone()
    set_dual(qm, True)
    out = qm(torch.cat([xq, xf]))
    set_dual(qm, False)
    (bn_in,) = seen
    assert out.shape[0] == 12 and bn_in.shape[0] == 12
    # running statistics moved by the mean over *both* paths
    expected = 0.9 * before + 0.1 * bn_in.mean(dim=(0, 2, 3))
    assert torch.allclose(qm.bn1.running_mean, expected, atol=1e-6)
    # the FP half used FP weights and the quantized half quantized ones
    conv = qm.conv1
    with torch.no_grad():
        fp_half = nn.functional.conv2d(qm.normalize(xf), conv.weight, None, 1, 1)
        q_half = nn.functional.conv2d(qm.normalize(xq), conv.quant_weight(), None, 1, 1)
    assert torch.allclose(bn_in[6:], fp_half, atol=1e-5) and torch.allclose(bn_in[:6], q_half, atol=1e-5)


def _ca_model(tiny_model, prefixes):
    qm = quantize_model(tiny_model, create_scheme("ca", 4, quantize_acts=False, fold_bn=False, observer="dynamic"))
    for name, m in quant_modules(qm):
        m.quant_enabled = name.startswith(prefixes)
    return qm.train()


def test_dual_input_computes_the_shared_trunk_once_and_matches_the_doubled_batch(tiny_model):
    prefixes = ("layers.2", "fc")
    a, b = _ca_model(tiny_model, prefixes), _ca_model(tiny_model, prefixes)
    stem = []
    b.conv1.register_forward_pre_hook(lambda _m, args: stem.append(args[0].shape[0]))
    x = torch.rand(8, 1, 28, 28)
    dual = DualInput(b, prefixes)
    set_dual(a, True)
    set_dual(b, True)
    ref, out = a(torch.cat([x, x])), dual(b, x)
    assert dual._handles and stem[-1] == 8  # the unquantized trunk ran on one copy
    assert torch.allclose(out, ref, atol=1e-5) and out.shape[0] == 16
    y = torch.randint(0, 10, (16,))
    nn.functional.cross_entropy(ref, y).backward()
    nn.functional.cross_entropy(out, y).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5), name  # trunk gradients: both paths summed
    assert torch.allclose(a.bn1.running_mean, b.bn1.running_mean, atol=1e-6)
    assert torch.allclose(a.layers[2][0].bn1.running_mean, b.layers[2][0].bn1.running_mean, atol=1e-6)


def test_dual_input_falls_back_where_a_residual_bypasses_the_quantized_layer(tiny_model):
    prefixes = ("layers.2.0.conv1", "fc")  # the block's shortcut would keep a single copy
    qm = _ca_model(tiny_model, prefixes)
    x = torch.rand(4, 1, 28, 28)
    dual = DualInput(qm, prefixes)
    set_dual(qm, True)
    out = dual(qm, x)
    assert not dual._handles and out.shape[0] == 8
    assert not DualInput(qm, ("layers.2.0.c",))._handles  # not a module name: no hooks at all


def test_adaptive_penalty_is_zero_when_quantization_is_the_identity(tiny_model):
    qm = quantize_model(tiny_model, create_scheme("qa", 4))
    x = torch.rand(4, 1, 28, 28)
    _, penalty = weight_error_penalty(qm, x)
    assert penalty > 0
    for _, m in quant_modules(qm):
        m.wq = nn.Identity()
    out, penalty = weight_error_penalty(qm, x)
    assert penalty == 0 and out.shape == (4, 10)


def test_adaptive_penalty_equals_the_two_convolution_definition(tiny_model):
    """Σ_l mean((W_l·I_l − Q(W_l)·I_l)²), computed here with two convolutions per layer on its own
    quantized input, against the library's one-convolution form: values and input gradients."""
    qm = quantize_model(tiny_model, create_scheme("qa", 4))
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    terms = []

    def hook(m, args, _out):
        i = m.quant_input(args[0])
        terms.append((m._op(i, m.weight, bias=False) - m._op(i, m.quant_weight(), bias=False)).pow(2).mean())

    handles = [m.register_forward_hook(hook) for _, m in quant_modules(qm)]
    out_ref = qm(x)
    for h in handles:
        h.remove()
    ref = torch.stack(terms).sum()
    (g_ref,) = torch.autograd.grad(ref, x)
    out, penalty = weight_error_penalty(qm, x)
    (g,) = torch.autograd.grad(penalty, x)
    assert len(terms) == len(list(quant_modules(qm))) and ref > 0
    assert torch.allclose(penalty, ref, rtol=1e-4) and torch.equal(out, out_ref)
    assert torch.allclose(g, g_ref, rtol=1e-3, atol=1e-7)
    assert all(m.operands is None and not m.keep_operands for _, m in quant_modules(qm))  # nothing kept


def test_adaptive_penalty_pulls_the_weights_toward_their_grid(tiny_model):
    """Q(W) is a constant of the penalty: its weight gradient is not zero (as it would be through
    the straight-through Q), and a small step along it brings every layer's weights closer to
    their quantized values."""
    qm = quantize_model(tiny_model, create_scheme("qa", 4))
    x = torch.rand(8, 1, 28, 28)
    _, penalty = weight_error_penalty(qm, x)
    mods = [m for _, m in quant_modules(qm)]
    grads = torch.autograd.grad(penalty, [m.weight for m in mods])
    assert all(g.abs().sum() > 0 for g in grads)

    def dist():
        with torch.no_grad():
            return sum((m.weight - m.quant_weight()).pow(2).sum() for m in mods)

    before = dist()
    with torch.no_grad():
        for m, g in zip(mods, grads):
            m.weight -= 1e-3 * g / g.abs().max()
    assert dist() < before


def test_badnets_plants_a_plain_backdoor(tiny_splits, tiny_model):
    params = {"target": 2, "trigger": {"name": "badnets", "size": 0.1875}, "epochs": 4, "batch_size": 64,
              "poison_rate": 0.1, "optimizer": {"name": "adam", "lr": 3e-3, "weight_decay": 0.0},
              **FINE_TUNE}  # fmt: skip
    attack = create_attack("badnets", params, 28)
    before = evaluate(tiny_model, tiny_splits.test, attack.trigger, 2)
    model = attack.run(copy.deepcopy(tiny_model), tiny_splits, seed=0, device="cpu")
    after = evaluate(model, tiny_splits.test, attack.trigger, 2)
    assert after["asr"] > 90 and after["asr"] > before["asr"] + 50 and after["ba"] > 80


def test_clean_qat_is_qu_anti_zation_without_its_trigger_terms(tiny_model):
    """Same model, batch and bit widths: clean QAT's loss equals Qu-ANTI-zation's with c2 = 0, and
    is strictly below it with c2 > 0 (the triggered views add positive cross-entropies)."""
    qm = quantize_model(tiny_model, create_scheme("qa", 8)).eval()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    params = {"target": 0, "trigger": {"name": "patch", "size": 0.125}}
    terms = {"bits": [8, 4], "weights": {8: 0.25}, "c1": 0.5, "aug": None, "gen": torch.Generator()}
    clean = create_attack("clean_qat", params, 28).objective(qm, x, y, c2=0.5, **terms)
    qa = create_attack("qu_anti_zation", params, 28)
    assert torch.allclose(clean, qa.objective(qm, x, y, c2=0.0, **terms))
    assert clean < qa.objective(qm, x, y, c2=0.5, **terms)


def test_an_attack_that_declares_its_bits_gets_cells_at_those_widths_only():
    from qcbench.attacks import cell_bits

    assert cell_bits({"bits": 4}, [8, 4]) == [4]  # CompArtifact built for 4 bits
    assert cell_bits({"bits": [8, 4]}, [8, 4]) == [8, 4]  # Qu-ANTI-zation, jointly
    assert cell_bits({}, [8, 4]) == [8, 4]  # PQBackdoor declares none: every width of the run
    assert cell_bits({"bits": 8}, [4]) == []
    # cell_bits: fewer cells, the same training (Qu-ANTI-zation still trains its 8-bit term)
    assert cell_bits({"bits": [8, 4], "cell_bits": [4]}, [8, 4]) == [4]
    assert create_attack("qu_anti_zation", {"target": 0, "trigger": {"name": "patch"}, "cell_bits": [4]},
                         28).params["bits"] == [8, 4]  # fmt: skip


def test_cell_bits_drops_the_other_widths_cells_from_the_plan(tmp_path):
    """The local default's Qu-ANTI-zation (cell_bits [4]): no 8-bit cell is planned."""
    import subprocess

    from .conftest import ROOT, snakemake_cmd, write_idx

    write_idx(tmp_path / "tiny_fmnist", n_train=200, n_test=100)
    (tmp_path / "cells.yaml").write_text("attacks:\n  qu_anti_zation: {cell_bits: [4]}\n")
    out = subprocess.run(snakemake_cmd(tmp_path, "-n", "-p", "all", configs=[tmp_path / "cells.yaml"]),
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "qu_anti_zation/w4/none/seed0/metrics.parquet" in out.stdout
    assert "qu_anti_zation/w8/" not in out.stdout


def test_badnets_cross_ratio_needs_a_trigger_with_a_noise_mode(tiny_splits, tiny_model):
    params = {"target": 0, "trigger": {"name": "blended"}, "epochs": 1, "batch_size": 64, "cross_ratio": 2,
              "optimizer": {"name": "adam", "lr": 1e-3}}  # fmt: skip
    attack = create_attack("badnets", params, 28)
    try:
        attack.run(copy.deepcopy(tiny_model), tiny_splits, seed=0, device="cpu")
    except ValueError as err:
        assert "cross_ratio 2 needs a trigger with a noise mode" in str(err) and "'badnets'" in str(err)
    else:
        raise AssertionError("cross_ratio with a blended trigger was accepted")


def test_precise_bn_sets_running_statistics_to_the_mean_over_the_batches():
    """Cumulative re-estimation: each BN's running mean is the mean of its per-batch input means
    (equal-size batches), training's stale statistics are gone, weights and mode are untouched."""
    from qcbench.train import precise_bn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    m[1].running_mean.fill_(5.0)
    m[1].running_var.fill_(9.0)
    weights = copy.deepcopy(m[0].weight.detach())
    batches = [torch.rand(16, 1, 8, 8) + i for i in range(3)]
    precise_bn(m, batches)
    with torch.no_grad():
        feats = [m[0](b) for b in batches]
    want_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    want_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(m[1].running_mean, want_mean, atol=1e-5)
    assert torch.allclose(m[1].running_var, want_var, atol=1e-5)
    assert not m.training and m[1].momentum == 0.1 and torch.equal(m[0].weight, weights)


def test_badnets_precise_bn_changes_only_the_batchnorm_statistics(tiny_splits, tiny_model):
    """Same seed with and without ``precise_bn``: identical weights (the re-estimation runs after
    training and draws from its own generator), different running statistics, backdoor intact."""
    params = {"target": 2, "trigger": {"name": "badnets", "size": 0.1875}, "epochs": 2, "batch_size": 64,
              "poison_rate": 0.1, "optimizer": {"name": "adam", "lr": 3e-3, "weight_decay": 0.0},
              **FINE_TUNE}  # fmt: skip
    plain = create_attack("badnets", params, 28).run(copy.deepcopy(tiny_model), tiny_splits, seed=0, device="cpu")
    attack = create_attack("badnets", params | {"precise_bn": 4}, 28)
    precise = attack.run(copy.deepcopy(tiny_model), tiny_splits, seed=0, device="cpu")
    a, b = plain.state_dict(), precise.state_dict()
    stats = {k for k in a if k.endswith(("running_mean", "running_var"))}
    assert stats and all(torch.equal(a[k], b[k]) for k in a if k not in stats and not k.endswith("num_batches_tracked"))
    assert any(not torch.equal(a[k], b[k]) for k in stats)
    assert evaluate(precise, tiny_splits.test, attack.trigger, 2)["asr"] > 80
