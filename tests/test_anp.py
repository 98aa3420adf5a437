"""ANP (adversarial neuron pruning) on a tiny model: the BN wrapper, the mask optimization and the
pruning rule."""

import copy
import inspect
from pathlib import Path

import pytest
import torch
import yaml
from qcbench.defenses import DEFENSES, FPDefense, create_defense
from qcbench.defenses import anp as anp_module
from qcbench.defenses.anp import DrawnWithReplacement, NoisyBatchNorm2d, batchnorm_names, pruned_channels
from qcbench.defenses.base import defaults_of
from qcbench.models import create_model
from qcbench.quant import create_scheme, quantize_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"nb_iter": 12, "batch_size": 64, "augmentation": None}


@pytest.fixture(scope="module")
def trained(trained_tiny):
    return trained_tiny


def test_defaults_are_the_papers():
    defense = create_defense("anp", {})
    assert isinstance(defense, FPDefense) and defense.name == "anp" and type(defense).label == "ANP"
    expected = {"nb_iter": 2000, "batch_size": 128, "lr": 0.2, "anp_eps": 0.4, "anp_steps": 1, "anp_alpha": 0.2}
    expected |= {"pruning_by": "threshold", "pruning_max": 0.2, "augmentation": {"pad": 4, "flip": True}}
    assert defense.params == expected == defaults_of("anp")
    sig = inspect.signature(DEFENSES.get("anp")).parameters
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in sig.values() if p.name != "self")  # no **kwargs
    with pytest.raises(ValueError, match="pruning_by"):
        create_defense("anp", {"pruning_by": "ratio"})


@pytest.mark.parametrize("path", ["config/config.yaml", "config/local.yaml", "config/baselines.yaml"])
def test_config_entries_bind_to_the_constructor(path):
    entries = yaml.safe_load((ROOT / path).read_text()).get("defenses") or {}
    if path == "config/config.yaml":
        assert entries["anp"]["method"] == "anp"
    for name, spec in entries.items():
        if name == "anp" or spec.get("method") == "anp":
            spec = {k: v for k, v in spec.items() if k != "method"}
            inspect.signature(DEFENSES.get("anp")).bind(**spec)


def test_noisy_batchnorm_scales_weight_and_bias_per_channel():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_mean.copy_(torch.tensor([0.2, 0.0, -0.1]))
    x = torch.randn(2, 3, 4, 4)
    noisy = NoisyBatchNorm2d(copy.deepcopy(bn)).eval()
    assert torch.allclose(noisy(x), bn(x))  # mask 1, noise excluded: the BN itself
    noisy.reset(0.4)
    assert noisy.neuron_noise.abs().max() <= 0.4 and noisy.neuron_noise_bias.abs().max() <= 0.4
    assert torch.allclose(noisy(x), bn(x))  # noise drawn but excluded
    with torch.no_grad():
        noisy.neuron_mask.copy_(torch.tensor([1.0, 0.0, 0.5]))
    ref = copy.deepcopy(bn)
    for perturbed in (False, True):
        noisy.perturbed = perturbed
        with torch.no_grad():
            d, xi = (noisy.neuron_noise, noisy.neuron_noise_bias) if perturbed else (0.0, 0.0)
            ref.weight.copy_(bn.weight * (noisy.neuron_mask + d))
            ref.bias.copy_(bn.bias * (1 + xi))
            assert torch.allclose(noisy(x), ref(x), atol=1e-6)


def test_drawn_with_replacement_gives_exactly_the_asked_batches(tiny_splits):
    d = tiny_splits.defender
    data = DrawnWithReplacement(d.x[:10], d.y[:10], samples=7 * 4)
    batches = list(data.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert len(data) == 28 and len(batches) == 7 and all(len(y) == 4 for _, y in batches)
    xs = torch.cat([x for x, _ in batches])
    assert xs.dtype == torch.float32 and 0 <= xs.min() and xs.max() <= 1
    pool = {tuple(v.tolist()) for v in d.x[:10].flatten(1)}
    assert all(tuple((x * 255).round().to(torch.uint8).flatten().tolist()) in pool for x in xs)


def test_pruned_channels_by_threshold_and_by_number():
    masks = {"a": torch.tensor([0.9, 0.2, 0.0, 0.5]), "b": torch.tensor([0.1, 1.0, 0.2])}
    by_t = pruned_channels(masks, "threshold", 0.2)
    assert by_t["a"].tolist() == [1, 2] and by_t["b"].tolist() == [0, 2]  # <= threshold, ties included
    by_n = pruned_channels(masks, "number", 3)
    assert by_n["a"].tolist() == [1, 2] and by_n["b"].tolist() == [0]  # lowest three; a tie goes to layer order
    assert sum(len(v) for v in pruned_channels(masks, "number", 0).values()) == 0


def test_a_model_without_batchnorm_is_refused_before_any_work(tiny_splits, monkeypatch):
    m = tiny_splits.meta
    alexnet = create_model("alexnet", m["num_classes"], m["in_channels"], m["mean"], m["std"], width_div=16)
    assert batchnorm_names(alexnet) == []

    def no_work(*a, **k):
        raise AssertionError("ANP started work on a model without BatchNorm")

    monkeypatch.setattr(anp_module, "fit", no_work)
    monkeypatch.setattr(anp_module, "noisy_copy", no_work)
    with pytest.raises(ValueError, match=r"ANP.*BatchNorm2d"):
        create_defense("anp", SMALL).purify(alexnet, tiny_splits, seed=0, device="cpu")


def test_only_the_masks_learn_and_stay_in_the_unit_interval(trained, tiny_splits, monkeypatch):
    """Spy on fit: every network parameter of the wrapped copy is unchanged by the optimization,
    the masks moved and stay in [0, 1], the noise in [-eps, eps]; the model itself is untouched."""
    seen = {}
    real_fit = anp_module.fit

    def spy(net, data, loss_fn, **kw):
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        out = real_fit(net, data, loss_fn, **kw)
        seen.update(before=before, after=dict(net.named_parameters()), kw=kw, net=net)
        return out

    monkeypatch.setattr(anp_module, "fit", spy)
    state = copy.deepcopy(trained.state_dict())
    defense = create_defense("anp", SMALL | {"lr": 0.5})
    masks = defense.optimize_masks(trained, tiny_splits.defender, batchnorm_names(trained), seed=0, device="cpu")
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in state.items())  # buffers included
    assert all(p.requires_grad for p in trained.parameters())
    before, after = seen["before"], seen["after"]
    learned = {n for n in before if n.endswith("neuron_mask")}
    assert len(learned) == len(batchnorm_names(trained)) == len(masks)
    assert all(torch.equal(before[n], after[n]) for n in before if "neuron_" not in n)
    assert {id(p) for p in seen["kw"]["params"]} == {id(after[n]) for n in learned}
    assert not all(torch.equal(before[n], after[n]) for n in learned)  # the masks moved
    for n in learned:
        assert 0 <= after[n].min() and after[n].max() <= 1
    for n in before:  # U[-eps, eps] plus one signed step of eps, unclipped as upstream
        if "neuron_noise" in n:
            assert after[n].abs().max() <= 2 * defense.params["anp_eps"] + 1e-6
    assert seen["kw"]["epochs"] == 1 and len(seen["kw"]["params"]) == len(masks)
    assert len(defense.history) == 1
    all_masks = torch.cat(list(masks.values()))
    assert 0 <= all_masks.min() and all_masks.max() <= 1 and all_masks.min() < 1


def test_pruning_zeroes_exactly_the_low_mask_channels(trained, tiny_splits, one_torch_thread):
    params = SMALL | {"lr": 0.5}
    by_number = create_defense("anp", params | {"pruning_by": "number", "pruning_max": 5})
    q = quantize_model(copy.deepcopy(trained), create_scheme("pq", 8))
    out = by_number.purify(copy.deepcopy(trained), tiny_splits, seed=0, device="cpu")
    masks = by_number.masks
    assert sum(len(v) for v in by_number.pruned.values()) == 5
    # the same seed gives the same masks; a threshold at the 5th-lowest mask prunes the same channels
    low6 = torch.cat(list(masks.values())).sort().values[:6]
    assert low6[4] < low6[5], low6  # no tie at the cut
    fifth = low6[4].item()
    by_threshold = create_defense("anp", params | {"pruning_max": fifth})
    defended = by_threshold.run(trained, q, tiny_splits, seed=0, device="cpu", calib_images=128, calib_batch_size=64)
    assert all(torch.equal(masks[n], by_threshold.masks[n]) for n in masks)
    ref = trained.state_dict()
    for name, mask in masks.items():
        low = (mask <= fifth).nonzero().flatten()
        assert by_threshold.pruned[name].tolist() == low.tolist() == by_number.pruned[name].tolist()
        bn = out.get_submodule(name)
        keep = torch.ones_like(mask, dtype=torch.bool)
        keep[low] = False
        assert (bn.weight[low] == 0).all() and torch.equal(bn.weight[keep], ref[f"{name}.weight"][keep])
        assert torch.equal(bn.bias, ref[f"{name}.bias"]) and torch.equal(bn.running_var, ref[f"{name}.running_var"])
    for k, v in out.state_dict().items():  # nothing but BN weights changes
        if not any(k == f"{n}.weight" for n in masks):
            assert torch.equal(v, ref[k]), k
    # the FP defense's run: the cell's scheme, finite outputs of the right shape
    assert defended.qcbench_scheme == q.qcbench_scheme and not defended.training
    x = tiny_splits.test.x[:32].float() / 255
    with torch.no_grad():
        y = defended(x)
    assert y.shape == (32, tiny_splits.meta["num_classes"]) and torch.isfinite(y).all()
