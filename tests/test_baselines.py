"""The six mitigation baselines (FT, FP, MCR, NAD, I-BAU, FT-SAM) on a tiny clean model."""

import copy
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from qcbench import io
from qcbench.config import load_config
from qcbench.defenses import DEFENSES, FPDefense, create_defense
from qcbench.defenses.fine_pruning import last_linear, linear_inputs, prune_channels
from qcbench.defenses.ftsam import asam_perturbation, sam_loss
from qcbench.defenses.ibau import fixed_point_hypergrad, gradient_step_map
from qcbench.defenses.mcr import BezierCurve, bezier_point
from qcbench.defenses.nad import attention_map, default_feature_layers
from qcbench.metrics import evaluate
from qcbench.models import create_model
from qcbench.quant import QUANT_MODULES, calibrate, create_scheme, quantize_model
from qcbench.train import train_clean

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("ft", "fp", "mcr", "nad", "ibau", "ftsam")
SMALL = {"batch_size": 64, "augmentation": None}
CALIB = {"calib_images": 256, "calib_batch_size": 128}
PARAMS = {
    "ft": {"epochs": 2},
    "fp": {"epochs": 1},
    "mcr": {"epochs": 1, "ft_epochs": 1, "ft_batch_size": 64},
    "nad": {"te_epochs": 1, "epochs": 1},
    "ibau": {"n_rounds": 1, "lr": 1e-4},
    "ftsam": {"epochs": 1, "augmentation": {"pad": 1, "flip": False}},
}


@pytest.fixture(scope="module")
def clean(tiny_splits):
    """A trained tiny clean model and its calibrated 8-bit (per-channel min/max) quantized copy."""
    torch.manual_seed(0)
    m = tiny_splits.meta
    model = create_model("resnet_tiny", m["num_classes"], m["in_channels"], m["mean"], m["std"], width=4)
    train_clean(model, tiny_splits.train, {"epochs": 2, "batch_size": 64, "optimizer": {"name": "adam", "lr": 3e-3}}, 0)
    q = quantize_model(model.eval(), create_scheme("pq", 8))
    calibrate(q, [x for x, _ in tiny_splits.defender.batches(128, limit=256)])
    return model, q, evaluate(q, tiny_splits.test, None, None, 400)["ba"]


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_keeps_accuracy_and_returns_the_cells_quantized_model(name, clean, tiny_splits):
    model, q, ba = clean
    assert ba > 60, ba
    before = copy.deepcopy(model.state_dict())
    defense = create_defense(name, SMALL | PARAMS[name])
    assert isinstance(defense, FPDefense)
    out = defense.run(model, q, tiny_splits, seed=0, device="cpu", **CALIB)
    assert out.qcbench_scheme == q.qcbench_scheme
    mods = [m for m in out.modules() if isinstance(m, QUANT_MODULES)]
    assert len(mods) == len([m for m in q.modules() if isinstance(m, QUANT_MODULES)])
    assert all(bool(m.wq.calibrated) and bool(m.aq.calibrated) for m in mods)
    assert not out.training
    after = evaluate(out, tiny_splits.test, None, None, 400)["ba"]
    assert after > ba - 12, (name, ba, after)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is not touched


def test_constructor_defaults_are_the_papers():
    sig = {n: inspect.signature(DEFENSES.get(n)).parameters for n in BASELINES}
    assert sig["ft"]["epochs"].default == 100 and sig["ft"]["batch_size"].default == 256
    assert sig["ft"]["lr"].default == 0.01 and sig["ft"]["weight_decay"].default == 5e-4
    assert sig["fp"]["acc_ratio"].default == 0.1 and sig["fp"]["once_prune_ratio"].default == 0.01
    assert sig["mcr"]["t"].default == 0.1 and sig["mcr"]["lr"].default == 3e-5
    assert sig["mcr"]["batch_size"].default == 128 and sig["mcr"]["ft_epochs"].default == 100
    assert tuple(sig["nad"]["betas"].default) == (500, 1000, 1000) and sig["nad"]["te_epochs"].default == 10
    assert sig["ibau"]["K"].default == 5 and sig["ibau"]["n_rounds"].default == 5 and sig["ibau"]["lr"].default == 1e-4
    assert sig["ftsam"]["rho"].default == 2.0 and sig["ftsam"]["adaptive"].default is True
    assert sig["ftsam"]["label_smoothing"].default == 0.1
    for n in BASELINES:
        # calibration is the quantize stage's (`quant:`), never a defense's own setting
        assert not {"calib_images", "calib_batch_size"} & set(sig[n])
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in sig[n].values() if p.name != "self")  # no **kwargs


@pytest.mark.parametrize("path", ["config/local.yaml", "config/config.yaml"])
def test_config_entries_bind_to_the_constructors(path):
    entries = load_config(ROOT / path)["defenses"]  # layered on the paper config, completed
    for name in BASELINES:
        spec = dict(entries[name])
        inspect.signature(DEFENSES.get(spec.pop("method"))).bind(**spec)


def test_fine_pruning_mask_zeroes_exactly_the_chosen_channels(clean, tiny_splits, tmp_path):
    model, q, _ = clean
    m = copy.deepcopy(model)
    name = last_linear(m)
    assert name == "fc"
    feats = linear_inputs(m, name, tiny_splits.defender, 128, "cpu")
    # a loose threshold prunes several steps; the pruned ones are the lowest-mean channels
    layer, pruned, log = prune_channels(
        m, tiny_splits.defender, acc_ratio=0.02, once_prune_ratio=0.1, batch_size=128, device="cpu"
    )
    k = len(pruned)
    assert k == log[-1]["pruned"] and k % 2 == 0 and k > 0  # steps of ceil(10% of 16) = 2 channels
    assert set(pruned.tolist()) == set(feats.mean(0).argsort()[:k].tolist())
    zero_cols = (m.fc.weight == 0).all(0)
    assert zero_cols.nonzero().flatten().tolist() == pruned.tolist()
    assert log[-1]["relative_drop"] >= 0.02 and all(s["relative_drop"] < 0.02 for s in log[:-1])

    defense = create_defense("fp", SMALL | {"epochs": 1, "acc_ratio": 0.02, "once_prune_ratio": 0.1})
    out = defense.run(model, q, tiny_splits, seed=0, device="cpu", **CALIB)
    assert torch.equal(defense.pruned, pruned)
    w = out.fc.weight
    assert (w[:, pruned] == 0).all() and (out.fc.quant_weight()[:, pruned] == 0).all()
    keep = torch.ones(w.shape[1], dtype=torch.bool)
    keep[pruned] = False
    assert (w[:, keep] != 0).any(0).all()
    assert not torch.equal(w[:, keep], model.fc.weight[:, keep])  # fine-tuned
    # the defended model round-trips through the pipeline's model files
    m = tiny_splits.meta
    meta = {"arch": "resnet_tiny", "arch_kwargs": {"width": 4}, "scheme": q.qcbench_scheme.to_dict()}
    meta |= {"num_classes": m["num_classes"], "in_channels": m["in_channels"], "mean": m["mean"], "std": m["std"]}
    io.save_model(out, tmp_path / "model.safetensors", meta)
    loaded, _ = io.load_model(tmp_path / "model.safetensors")
    x = tiny_splits.test.x[:64].float() / 255
    with torch.no_grad():
        assert torch.equal(loaded(x), out(x))


def test_mcr_curve_returns_its_end_points(clean):
    model, _, _ = clean
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    theta1 = {n: p + torch.randn_like(p) for n, p in theta0.items()}
    curve = BezierCurve(copy.deepcopy(model), theta0, theta1)
    with torch.no_grad():
        for p in curve.middle:
            p.add_(torch.randn_like(p))
        mid = curve.theta_m()
        for t, end in ((0.0, theta0), (1.0, theta1)):
            assert all(torch.equal(v, end[k]) for k, v in curve.point(t).items())
        half = bezier_point(0.5, theta0, mid, theta1)
        assert all(torch.allclose(half[k], 0.25 * theta0[k] + 0.5 * mid[k] + 0.25 * theta1[k]) for k in mid)
        x = torch.rand(4, 1, 28, 28)
        assert torch.allclose(curve.eval()(x, 0.0), model.eval()(x), atol=1e-6)
    # only the middle point learns, with the Bezier coefficient 2t(1-t) on its gradient
    t = 0.3
    loss = sum(v.sum() for v in curve.point(t).values())
    loss.backward()
    assert all(torch.allclose(p.grad, torch.full_like(p, 2 * t * (1 - t))) for p in curve.middle)
    assert all(p.grad is None for p in curve.net.parameters())


def test_ibau_hypergradient_matches_the_implicit_gradient_on_a_quadratic():
    torch.manual_seed(0)
    A, b, lam = torch.randn(3, 2), torch.randn(3), torch.randn(2, requires_grad=True)

    def inner_loss(inner, outer):  # argmin_w: w* = A λ
        return 0.5 * (inner[0] - A @ outer[0]).pow(2).sum()

    def outer_loss(inner, outer):
        return 0.5 * (inner[0] - b).pow(2).sum() + 0.1 * outer[0].pow(2).sum()

    w_star = (A @ lam).detach()
    analytic = A.T @ (A @ lam.detach() - b) + 0.2 * lam.detach()
    fp_map = gradient_step_map(inner_loss, 0.5)
    _, (exact,) = fixed_point_hypergrad([w_star], [lam], fp_map, outer_loss, K=60)
    assert torch.allclose(exact, analytic, atol=1e-5), (exact, analytic)
    _, (k5,) = fixed_point_hypergrad([w_star], [lam], gradient_step_map(inner_loss, 0.1), outer_loss, K=5)
    assert F.cosine_similarity(k5, analytic, dim=0) > 0.9  # I-BAU's K = 5 at step 0.1: right direction


def test_ftsam_perturbation_has_the_asam_form():
    torch.manual_seed(0)
    params = [torch.randn(5, 3), torch.randn(4)]
    grads = [torch.randn(5, 3), torch.randn(4)]
    rho = 2.0
    eps = asam_perturbation(params, grads, rho, adaptive=True)
    norm = torch.cat([(p.abs() * g).flatten() for p, g in zip(params, grads)]).norm()
    for e, p, g in zip(eps, params, grads):
        assert torch.allclose(e, rho * p * p * g / norm)
    # in the scaled coordinates (ε / |w|) the step has length ρ
    assert torch.isclose(torch.cat([(e / p.abs()).flatten() for e, p in zip(eps, params)]).norm(), torch.tensor(rho))
    plain = asam_perturbation(params, grads, rho, adaptive=False)
    assert torch.isclose(torch.cat([e.flatten() for e in plain]).norm(), torch.tensor(rho))


def test_ftsam_loss_is_the_loss_at_the_perturbed_weights_and_keeps_bn_stats(clean):
    model, _, _ = clean
    m = copy.deepcopy(model).train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    w0 = {n: p.detach().clone() for n, p in m.named_parameters()}
    loss = sam_loss(m, rho=0.5, adaptive=True, smoothing=0.1)(m, x, y)
    stats = {n: b.clone() for n, b in m.named_buffers() if "running" in n}
    # reproduce by hand: perturb in place, evaluate with BN running stats left as they are
    ref = copy.deepcopy(model).train()
    from qcbench.defenses.ftsam import frozen_bn_stats, smooth_crossentropy

    params = list(ref.parameters())
    g = torch.autograd.grad(smooth_crossentropy(ref(x), y), params)
    with torch.no_grad():
        for p, e in zip(params, asam_perturbation(params, g, 0.5)):
            p.add_(e)
    with frozen_bn_stats(ref):
        expected = smooth_crossentropy(ref(x), y)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert all(torch.equal(b, dict(ref.named_buffers())[n]) for n, b in stats.items())
    loss.backward()
    expected.backward()
    assert all(torch.allclose(p.grad, r.grad, atol=1e-5) for p, r in zip(m.parameters(), ref.parameters()))
    assert all(torch.equal(p, w0[n]) for n, p in m.named_parameters())  # weights untouched


def test_nad_attention_and_default_layers(tiny_model):
    assert default_feature_layers(tiny_model) == ["layers.1", "layers.2", "pool"]
    f = torch.randn(2, 3, 4, 4)
    a = attention_map(f)
    assert a.shape == (2, 1, 4, 4)
    assert torch.allclose(a.flatten(1).norm(dim=1), torch.ones(2), atol=1e-4)
    assert torch.allclose(a[0, 0], f[0].pow(2).sum(0) / f[0].pow(2).sum(0).norm(), atol=1e-5)


def test_fp_prune_ratio_prunes_exactly_that_share_of_the_last_block_channels(clean, tiny_splits):
    """``prune_ratio`` (BackdoorBox's Pruning): int(ratio x channels) of the last block's output
    channels, those of lowest mean activation, with no stopping rule; zeroing their columns of the
    final linear layer is the same network as masking them at the block's output; ``epochs: 0``
    does not fine-tune."""
    model, q, _ = clean
    m = copy.deepcopy(model)
    block_out = []
    handle = m.layers[-1].register_forward_hook(lambda _m, _a, o: block_out.append(o))
    with torch.no_grad():
        for x, _ in tiny_splits.defender.batches(128):
            m(x)
    handle.remove()
    means = torch.cat(block_out).mean(dim=(0, 2, 3))  # BackdoorBox: mean over images and positions
    channels = len(means)
    _, pruned, log = prune_channels(
        m, tiny_splits.defender, acc_ratio=0.0, once_prune_ratio=0.01, batch_size=128, device="cpu", prune_ratio=0.4
    )
    assert len(pruned) == int(0.4 * channels) == 6 and len(log) == 1  # 40 % of resnet_tiny's 16, one step
    assert set(pruned.tolist()) == set(means.argsort()[:6].tolist())
    assert (m.fc.weight == 0).all(0).nonzero().flatten().tolist() == pruned.tolist()
    mask = torch.ones(channels)
    mask[pruned] = 0
    masked = copy.deepcopy(model)
    masked.layers[-1].register_forward_hook(lambda _m, _a, o: o * mask[None, :, None, None])
    x = tiny_splits.test.x[:64].float() / 255
    with torch.no_grad():
        assert torch.allclose(m.eval()(x), masked.eval()(x), atol=1e-5)

    defense = create_defense("fp", SMALL | {"prune_ratio": 0.4, "epochs": 0})
    out = defense.run(model, q, tiny_splits, seed=0, device="cpu", **CALIB)
    assert torch.equal(defense.pruned, pruned)
    keep = torch.ones(channels, dtype=torch.bool)
    keep[pruned] = False
    assert (out.fc.weight[:, pruned] == 0).all()
    assert torch.equal(out.fc.weight[:, keep], model.fc.weight[:, keep])  # pruned only, not fine-tuned
    with pytest.raises(ValueError, match="prune_ratio"):
        create_defense("fp", {"prune_ratio": 1.0})


def test_step_schedule_decays_at_each_milestone_and_none_is_the_cosine():
    """BackdoorBox's schedule: the lr times ``lr_decay`` from the start of each milestone epoch;
    no milestones keep it constant; ``milestones: null`` is BackdoorBench's per-epoch cosine."""
    from qcbench.defenses.ft import cosine_lr, epoch_schedule, step_lr

    def lrs(make, steps):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched, out = make(opt), []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    got = lrs(step_lr([2, 4], 0.1, steps_per_unit=3), 18)  # 3 steps per epoch
    assert got[:6] == [1.0] * 6 and got[6:12] == pytest.approx([0.1] * 6) and got[12:] == pytest.approx([0.01] * 6)
    assert lrs(step_lr([], 0.1, 3), 9) == [1.0] * 9
    assert lrs(epoch_schedule(5, None, 0.1, 3), 15) == lrs(cosine_lr(5, 3), 15)
    assert lrs(epoch_schedule(5, [2], 0.5, 3), 15) == lrs(step_lr([2], 0.5, 3), 15)


@pytest.mark.parametrize(("scores", "chosen"), [((0.3, 0.7), 0.9), ((0.7, 0.3), 0.1), ((0.5, 0.5), 0.1)])
def test_mcr_keeps_the_t_with_the_better_defender_accuracy(monkeypatch, clean, tiny_splits, scores, chosen):
    """``t: [0.1, 0.9]``: each point of the curve is scored by its clean accuracy on the defender
    subset (never the test set) and the better one is returned, the first listed on ties."""
    import qcbench.defenses.mcr as mcr

    model, _, _ = clean
    seen = []

    def fake_accuracy(candidate, data, batch_size, device):
        assert data is tiny_splits.defender
        seen.append(copy.deepcopy(candidate.state_dict()))
        return scores[len(seen) - 1]

    monkeypatch.setattr(mcr, "defender_accuracy", fake_accuracy)
    defense = create_defense("mcr", SMALL | PARAMS["mcr"] | {"t": [0.1, 0.9]})
    out = defense.purify(copy.deepcopy(model), tiny_splits, seed=0, device="cpu")
    assert len(seen) == 2 and not torch.equal(seen[0]["fc.weight"], seen[1]["fc.weight"])
    assert defense.t == chosen and defense.t_accuracy == dict(zip((0.1, 0.9), scores))
    kept = seen[(0.1, 0.9).index(chosen)]
    assert all(torch.equal(v, kept[k]) for k, v in out.state_dict().items())


def test_mcr_curve_l2_adds_the_weight_norm_at_t(monkeypatch, clean, tiny_splits):
    """``curve_l2``: BackdoorBox's l2 regulariser, 0.5 x curve_l2 x the squared norm of every
    parameter of the network at the batch's t, on top of the cross-entropy."""
    import qcbench.defenses.mcr as mcr

    model, _, _ = clean
    losses = {}

    def spy_fit(net, data, loss_fn, **kwargs):
        if isinstance(net, mcr.BezierCurve):
            x, y = next(data.batches(16))
            losses[lam] = loss_fn(net.eval(), x, y).item()
        return []

    monkeypatch.setattr(mcr, "fit", spy_fit)
    monkeypatch.setattr(mcr, "finetune", lambda *a, **k: [])  # end point = start point
    for lam in (0.0, 1e-3):
        create_defense("mcr", SMALL | PARAMS["mcr"] | {"curve_l2": lam}).purify(
            copy.deepcopy(model), tiny_splits, seed=0, device="cpu"
        )
    norm = sum(p.detach().pow(2).sum().item() for p in model.parameters())  # θ0 = θm = θ1: w(t) = θ0
    assert losses[1e-3] - losses[0.0] == pytest.approx(0.5 * 1e-3 * norm, rel=1e-3)


def test_nad_backdoorbox_keys_reach_the_teacher_and_the_student(monkeypatch, tiny_model, tiny_splits):
    """NAD's teacher lr / schedule and the student's milestones are wired through; ``stages`` and
    ``pool`` pick the default feature layers (BackdoorBox: the last three stages, no pool)."""
    import qcbench.defenses.nad as nad

    assert default_feature_layers(tiny_model, stages=3, pool=False) == ["layers.0", "layers.1", "layers.2"]
    calls = {}
    monkeypatch.setattr(nad, "finetune", lambda *a, **k: calls.setdefault("teacher", k))
    monkeypatch.setattr(nad, "fit", lambda *a, **k: calls.setdefault("student", k) and [])
    params = {"te_lr": 0.005, "te_milestones": [], "milestones": [1], "stages": 3, "pool": False, "batch_size": 64}
    d = create_defense("nad", params | {"betas": [1.0, 1.0, 1.0], "te_epochs": 1, "epochs": 2})
    d.purify(tiny_model, tiny_splits, seed=0, device="cpu")
    assert calls["teacher"]["lr"] == 0.005 and calls["teacher"]["milestones"] == []
    assert callable(calls["student"]["scheduler"])
    calls.clear()
    create_defense("nad", {"te_epochs": 1, "epochs": 1}).purify(tiny_model, tiny_splits, seed=0, device="cpu")
    assert calls["teacher"]["lr"] == 0.01 and calls["teacher"]["milestones"] is None  # the cosine, as before
    assert calls["student"]["scheduler"] == "none"  # a constant lr, as before


#: keys a local overlay sets as its CPU budget (epochs, rounds, augmentation): the rest of each
#: baseline entry must be the class default, which the local figures were measured with
LOCAL_BUDGET_KEYS = {"epochs", "te_epochs", "ft_epochs", "n_rounds", "augmentation"}


def test_paper_entries_state_appendix_b_and_the_local_overlay_keeps_the_class_defaults():
    paper = load_config(ROOT / "config/config.yaml")["defenses"]
    assert paper["ft"]["epochs"] == 50 and paper["fp"]["prune_ratio"] == 0.4 and paper["fp"]["epochs"] == 0
    assert paper["mcr"]["t"] == [0.1, 0.9] and (paper["nad"]["te_epochs"], paper["nad"]["epochs"]) == (50, 50)
    assert paper["ibau"]["n_rounds"] == 3 and paper["ftsam"]["epochs"] == 200
    for name in ("nad", "ftsam"):  # Table 6: with and without PDA differ only in PDA
        pda = paper[f"{name}_pda"]
        assert all(pda[k] == v for k, v in paper[name].items() if k != "method")
    for overlays in [("config/local.yaml",), ("config/local.yaml", "config/baselines.yaml")]:
        local = load_config(*(ROOT / p for p in overlays))["defenses"]
        for name in (*BASELINES, "nad_pda", "ftsam_pda"):
            defaults = inspect.signature(DEFENSES.get(local[name]["method"])).parameters
            moved = {
                k: v
                for k, v in local[name].items()
                if k in defaults
                and k not in LOCAL_BUDGET_KEYS | {"pda_iterations"}
                and v != (list(defaults[k].default) if isinstance(defaults[k].default, tuple) else defaults[k].default)
            }
            assert moved == {}, (overlays, name)
