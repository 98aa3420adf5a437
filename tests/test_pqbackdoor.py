"""PQBackdoor's projection: whatever the step, every int code and every scale stays the same."""

import pytest
import torch
from qcbench.attacks.pqbackdoor import code_lock, project, scale_lock
from qcbench.quant import FakeQuantizer
from torch import nn


def _codes_and_scales(w: torch.Tensor, bits: int, per_channel: bool):
    q = FakeQuantizer(bits, True, per_channel, "minmax", channels=w.shape[0], symmetric_range="half")
    q.observe(w)
    s = q._shape(q.scale, w)
    return torch.round(q(w) / s), q.scale.clone()


@pytest.mark.parametrize("seed", range(40))
def test_projection_keeps_every_code_and_scale(seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the layers' init too: the case does not depend on the test order
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(5))
    model(torch.rand(2, 3, 6, 6))
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    scale = [0.001, 0.01, 0.1, 1.0][seed % 4]  # from sub-LSB nudges to steps far larger than the grid
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.abs().max())
    project(model, base, lock_bits=[8, 4])
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.ndim > 1:
            for bits in (8, 4):
                for per_channel in (True, False):
                    c0, s0 = _codes_and_scales(base[name], bits, per_channel)
                    c1, s1 = _codes_and_scales(p.detach(), bits, per_channel)
                    assert torch.equal(c0, c1), (name, bits, per_channel)
                    assert torch.allclose(s0, s1, rtol=0, atol=0), (name, bits, per_channel)
        else:  # BN affine parameters and biases are reset to their base values
            assert torch.equal(p, base[name]), name
    moved = sum((p - base[n]).abs().sum().item() for n, p in model.named_parameters())
    assert moved > 0  # the FP weights do move inside the locked box


@pytest.mark.parametrize("push", [-1.0, 1.0])
def test_projection_keeps_codes_of_weights_within_float_rounding_of_a_tie(push):
    """Bases a few ulps either side of a rounding tie (code ±83.5 on the 8-bit per-tensor grid):
    the lock's ``q · s`` can land exactly on the tie and round half to even to the other code;
    the projection's final check puts such elements back to their base."""
    m = torch.tensor(0.190_318_6)  # max-abs of the tensor, an awkward float32 scale m / 127.5
    s = m / 127.5
    tie = torch.tensor(-83.5) * s
    near = [tie]
    for _ in range(40):  # 40 float32 neighbours on each side of the tie
        near = [torch.nextafter(near[0], torch.tensor(-1.0)), *near, torch.nextafter(near[-1], torch.tensor(1.0))]
    base = torch.cat([torch.stack(near), -torch.stack(near), m.view(1)]).view(1, -1)
    assert torch.unique(torch.round(base / s)).numel() == 5  # -84, -83, 83, 84 and the max
    for per_channel, bits in ((False, [8]), (True, [8, 4])):
        model = nn.Linear(base.shape[1], 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(base + push * 0.6 * s)  # pushes every weight to a window's edge
        project(model, {"weight": base}, lock_bits=bits, granularity=(per_channel,))
        for b in bits:
            c0, s0 = _codes_and_scales(base, b, per_channel)
            c1, s1 = _codes_and_scales(model.weight.detach(), b, per_channel)
            assert torch.equal(c0, c1) and torch.equal(s0, s1), (per_channel, b)


def test_locks_move_toward_the_base_only():
    base = torch.tensor([[1.0, -0.5, 0.2, 0.0]])
    w = torch.tensor([[3.0, 0.5, 0.21, -0.001]])
    locked = code_lock(scale_lock(w, base, True), base, 8, True)
    assert (locked - base).abs().max() <= 0.5 * 1.0 / 127.5 + 1e-7
    assert (locked - base).abs().le((w - base).abs()).all()
    layer = nn.Linear(4, 1, bias=False)
    layer.weight.data = w.clone()
    project(layer, {"weight": base}, lock_bits=[8])
    assert layer.weight[0, 0] == 1.0  # the max keeps its exact base value: the scale cannot change


def test_pqbackdoor_trains_from_scratch_unless_configured():
    """PQBackdoor and BadNets start from scratch upstream, so their jobs do not wait for a clean
    model; the attacks that fine-tune one (Qu-ANTI-zation) do; ``init`` may name another attack,
    whose FP model the job then waits for; a bad value names the key."""
    from qcbench.attacks import init_source

    assert init_source("pqbackdoor", {}) is None
    assert init_source("pqbackdoor", {"init": "clean"}) == "clean"
    assert init_source("badnets", {}) is None and init_source("qu_anti_zation", {}) == "clean"
    assert init_source("badnets", {"init": "clean"}) == "clean"
    assert init_source("pqbackdoor", {"init": "wanet", "stage1": None}) == "wanet"
    with pytest.raises(ValueError, match=r"attacks\.<name>\.init"):
        init_source("badnets", {"init": ""})


def test_pqbackdoor_without_stage1_keeps_the_init_backdoor_as_its_quantized_model(tiny_model, tiny_splits):
    """``stage1: null`` + ``init: <attack>``: the starting model is the stage-1 backdoor, so only
    stage 2 runs and every locked code and scale is the starting model's; without a backdoored
    init it is refused, naming the attack."""
    from qcbench.attacks import create_attack

    spec = {
        "target": 0,
        "trigger": {"name": "patch", "size": 0.25, "margin": 0.0, "value": 1.0},
        "init": "some_backdoor",
        "stage1": None,
        "stage2": {
            "epochs": 1,
            "batch_size": 32,
            "samples_per_epoch": 64,
            "scheduler": "none",
            "augmentation": None,
            "optimizer": {"name": "adam", "lr": 1e-2, "weight_decay": 0.0},
        },
        "lock_granularity": ["per_tensor"],
        "lock_bits": [8],
    }
    atk = create_attack("pqbackdoor", spec, tiny_splits.meta["image_size"])
    start = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    out = atk.run(tiny_model, tiny_splits, seed=0, device="cpu")
    assert all(torch.equal(atk.stage1_state[n], start[n]) for n in start)  # no stage 1 ran
    moved = False
    for name, p in out.named_parameters():
        if p.ndim > 1:  # conv / linear weights: same per-tensor int8 codes and scale as the start
            b = start[name]
            s = b.abs().max() / 127.5
            assert torch.equal(torch.round(p.detach() / s), torch.round(b / s)), name
            assert p.detach().abs().max() == b.abs().max()
            moved |= not torch.equal(p.detach(), b)
    assert moved  # stage 2 did train
    bad = create_attack("pqbackdoor", spec | {"init": "clean"}, tiny_splits.meta["image_size"])
    bad.name = "pq_x"
    with pytest.raises(ValueError, match=r"attack 'pq_x': stage1 is null .* init is 'clean'"):
        bad.run(tiny_model, tiny_splits, seed=0, device="cpu")


def _residual(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    dims = tuple(range(1, w.ndim)) if per_channel else tuple(range(w.ndim))
    q = w / (w.abs().amax(dim=dims, keepdim=True) / ((2**bits - 1) / 2))
    return q - torch.round(q)


@pytest.mark.parametrize("per_channel", [True, False])
def test_grid_penalty_pulls_weights_to_their_grid_points_without_changing_codes(per_channel):
    """The TF version's stage-1 regulariser: its minimum (−0.25 per grid) is every weight on a
    grid point; descending it centres each weight in its rounding box and keeps its code."""
    from qcbench.attacks.pqbackdoor import grid_penalty

    g = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(8, 4, 3, 3, generator=g))
    before = _residual(w.detach(), 8, per_channel)
    dims = (1, 2, 3) if per_channel else (0, 1, 2, 3)
    s = w.detach().abs().amax(dim=dims, keepdim=True) / 127.5
    codes = torch.round(w.detach() / s)
    # on the grid (the max-abs elements sit on a rounding tie by convention and count 0)
    on_grid = torch.where(w.detach().abs() == s * 127.5, w.detach(), codes * s)
    assert grid_penalty([on_grid], [8], (per_channel,)).item() < -0.24
    assert grid_penalty([w.detach()], [8], (per_channel,)).item() > -0.12  # ~ -1/12 when uniform
    opt = torch.optim.Adam([w], lr=0.02 * s.min().item())
    for _ in range(300):
        opt.zero_grad()
        grid_penalty([w], [8], (per_channel,)).backward()
        opt.step()
    after = _residual(w.detach(), 8, per_channel)
    assert before.abs().mean() > 0.2 and after.abs().mean() < 0.5 * before.abs().mean()
    inner = w.detach().abs() < s * 127  # the max-abs elements sit on a tie (Adam may nudge them)
    assert torch.equal(torch.round(w.detach() / s)[inner], codes[inner])  # each stays in its box


def _stage1_batch(monkeypatch, params, n=128, stage=None):
    """The (inputs, labels) stage 1 feeds the model for one batch of ``n`` images."""
    import qcbench.attacks.pqbackdoor as pq
    from qcbench.attacks import create_attack

    stage = {
        "epochs": 1,
        "batch_size": n,
        "optimizer": {"name": "adam", "lr": 1e-3},
        "augmentation": None,
        **(stage or {}),
    }
    attack = create_attack("pqbackdoor", {"target": 3, "stage1": stage, "lock_bits": [8], **params}, 16)
    seen = {}

    def fake_fit(model, data, loss_fn, **kw):
        seen["x"], seen["y"] = torch.rand(n, 1, 16, 16), torch.randint(0, 10, (n,))
        loss_fn(lambda xb: seen.update(xb=xb) or torch.zeros(len(xb), 10), seen["x"], seen["y"])

    def cross_entropy(logits, yb):
        seen["yb"] = yb
        return logits.sum()

    monkeypatch.setattr(pq, "fit", fake_fit)
    monkeypatch.setattr(pq, "F", type("F", (), {"cross_entropy": staticmethod(cross_entropy)}))
    splits = type("Splits", (), {"train": None})()
    attack.stage1(nn.Identity(), splits, seed=0, device="cpu", gen=torch.Generator().manual_seed(0))
    return attack, seen


@pytest.mark.parametrize(("fraction", "expected"), [(None, 2), (0.125, 16)])
def test_stage1_adds_poison_fraction_of_the_batch_as_triggered_target_copies(monkeypatch, fraction, expected):
    """Stage 1's batch is the clean batch plus ``poison_fraction`` x batch_size triggered copies
    labelled with the target (upstream 1/64: 2 of 128); the copies are the batch's first images."""
    trigger = {"name": "patch", "size": 0.25, "margin": 0.0, "value": 1.0}
    extra = {} if fraction is None else {"poison_fraction": fraction}
    attack, seen = _stage1_batch(monkeypatch, {"trigger": trigger}, stage=extra)
    xb, x = seen["xb"], seen["x"]
    assert len(xb) == 128 + expected
    assert torch.equal(xb[:128], x)
    assert torch.equal(xb[128:], attack.trigger(x[:expected]))
    assert not torch.equal(xb[128:], x[:expected])
    assert torch.equal(seen["yb"], torch.cat([seen["y"], torch.full((expected,), 3)]))


def test_stage1_noise_mode_adds_warped_copies_with_true_labels(monkeypatch):
    """WaNet's noise mode in stage 1: cross_ratio x k noise-warped copies of the images after the
    k triggered ones, labelled with their own labels; a trigger without noise mode is refused."""
    attack, seen = _stage1_batch(monkeypatch, {"trigger": {"name": "wanet"}, "cross_ratio": 2})
    x, y, xb, yb = seen["x"], seen["y"], seen["xb"], seen["yb"]
    assert len(xb) == 128 + 2 + 4 and len(yb) == len(xb)
    assert torch.equal(xb[128:130], attack.trigger(x[:2])) and torch.equal(yb[128:130], torch.full((2,), 3))
    noisy = xb[130:]
    assert torch.equal(yb[130:], y[2:6])  # true labels
    assert not torch.equal(noisy, attack.trigger(x[2:6])) and not torch.equal(noisy, x[2:6])
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0
    patch = {"name": "patch", "size": 0.25, "margin": 0.0, "value": 1.0}
    with pytest.raises(ValueError, match="cross_ratio 2 needs a trigger with a noise mode"):
        _stage1_batch(monkeypatch, {"trigger": patch, "cross_ratio": 2})


def test_folding_bn_keeps_per_channel_codes_and_changes_per_tensor_ones():
    """Why `pqbackdoor_x86` (per-channel locks) survives the x86 backend's conv-BN fusion and the
    per-tensor variant does not: folding multiplies each output channel by gamma / sigma > 0, which
    scales that channel's symmetric max-abs scale by the same factor (codes kept) while the tensor's
    single scale follows only the largest channel (codes of the others move)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=g)
    fold = torch.empty(16).uniform_(0.3, 3.0, generator=g).view(-1, 1, 1, 1)  # gamma / sigma > 0
    c_pc, _ = _codes_and_scales(w, 8, per_channel=True)
    c_pc_folded, _ = _codes_and_scales(w * fold, 8, per_channel=True)
    # equal but for float rounding at a tie: at most a stray element, never a code off by more than 1
    assert (c_pc != c_pc_folded).sum() <= 2 and (c_pc - c_pc_folded).abs().max() <= 1
    c_pt, _ = _codes_and_scales(w, 8, per_channel=False)
    c_pt_folded, _ = _codes_and_scales(w * fold, 8, per_channel=False)
    assert (c_pt != c_pt_folded).float().mean() > 0.5  # most codes move (86 % here)


def test_stage2_keeps_the_epoch_with_the_best_validation_accuracy(monkeypatch, tiny_model, tiny_splits):
    """Stage 2 keeps, as upstream, the epoch with the best clean FP accuracy, here on the held-out
    validation images (not the test set): a last epoch that is worse than an earlier one does not
    stay. The validation images are never trained on."""
    import qcbench.attacks.pqbackdoor as pq
    from qcbench.attacks import create_attack
    from qcbench.data import validation_split

    spec = {
        "target": 0,
        "trigger": {"name": "patch", "size": 0.25, "margin": 0.0, "value": 1.0},
        "init": "some_backdoor",
        "stage1": None,
        "stage2": {
            "epochs": 3,
            "batch_size": 32,
            "samples_per_epoch": 64,
            "scheduler": "none",
            "augmentation": None,
            "optimizer": {"name": "adam", "lr": 1e-2, "weight_decay": 0.0},
            "val_fraction": 0.1,
        },
        "lock_granularity": ["per_tensor"],
        "lock_bits": [8],
    }
    _, val = validation_split(tiny_splits, 0.1, seed=0 + 3)
    val_rows = {tuple(r.flatten().tolist()) for r in val.x}
    seen_training, states, accuracy = [], [], iter([0.2, 0.8, 0.5])
    real_fit = pq.fit

    def spy_fit(model, data, *args, **kwargs):
        seen_training.append(data)
        return real_fit(model, data, *args, **kwargs)

    def fake_predict(model, x, batch_size, device):
        assert torch.equal(x, val.x)  # scored on the validation images
        states.append({n: p.detach().clone() for n, p in model.named_parameters()})
        y = val.y.clone()
        wrong = round((1 - next(accuracy)) * len(y))
        y[:wrong] = (y[:wrong] + 1) % 10
        return y

    monkeypatch.setattr(pq, "fit", spy_fit)
    monkeypatch.setattr(pq, "predict", fake_predict)
    atk = create_attack("pqbackdoor", spec, tiny_splits.meta["image_size"])
    out = atk.run(tiny_model, tiny_splits, seed=0, device="cpu")
    assert len(states) == 3 and not all(torch.equal(states[1][n], states[2][n]) for n in states[1])
    assert all(torch.equal(p.detach(), states[1][n]) for n, p in out.named_parameters())  # epoch 2 of 3
    (data,) = seen_training
    assert len(data) == len(tiny_splits.train) - len(val)
    assert val_rows.isdisjoint(tuple(r.flatten().tolist()) for r in data.x)
