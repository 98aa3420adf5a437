"""Figure 2's data (qcbench.lac_curve): LAC+PDA on benign, mixed and poisoned defender data."""

import pytest
import torch
from qcbench.defenses import create_defense
from qcbench.lac_curve import DATA_KINDS, lac_curve, poison_batches
from qcbench.metrics import evaluate
from qcbench.quant import create_scheme, quantize_model
from qcbench.triggers import create_trigger

LAC = {"iterations": 6, "lr": 1e-3, "batch_size": 16, "calib_batches": 2, "pda": True, "pda_iterations": 2,
       "gamma": 1e-3, "pda_alpha": 1e-3, "early_stop": None}  # fmt: skip


def test_poison_batches_trigger_the_requested_share():
    trigger = create_trigger({"name": "patch", "value": 1.0}, 28)
    batches = [torch.rand(32, 1, 28, 28) * 0.5 for _ in range(4)]
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731

    def changed(out):
        return sum(int((a != b).flatten(1).any(1).sum()) for a, b in zip(batches, out, strict=True))

    assert all(a is b for a, b in zip(batches, poison_batches(batches, trigger, 0.0, g()), strict=True))
    mixed = poison_batches(batches, trigger, 0.1, g())
    assert changed(mixed) == round(0.1 * 128)
    assert changed(poison_batches(batches, trigger, 1.0, g())) == 128
    assert all(torch.equal(a, b) for a, b in zip(mixed, poison_batches(batches, trigger, 0.1, g()), strict=True))
    assert changed(batches) == 0  # the inputs themselves are untouched


def test_curve_has_every_kind_and_the_benign_run_is_the_lac_defense(tiny_model, tiny_splits, one_torch_thread):
    trigger = create_trigger({"name": "patch"}, 28)
    q = quantize_model(tiny_model, create_scheme("qa", 4))
    test = tiny_splits.test.sample(100)
    df = lac_curve(q, tiny_splits, trigger, 0, LAC, seed=3, eval_every=25, test=test)
    assert list(df.data.unique()) == list(DATA_KINDS)
    n_units = 10
    for _, g in df.groupby("data"):
        its = g.iteration.tolist()
        assert its[0] == 0 and its[-1] == LAC["iterations"] * n_units
        assert all(b > a for a, b in zip(its, its[1:], strict=False))
        assert g.unit.iloc[0] == "" and g.unit.iloc[-1] == "fc"
        assert ((g.ba >= 0) & (g.ba <= 100)).all()
    # iteration 0 is the undefended model for every kind
    start = evaluate(q, test, trigger, 0, 500)
    assert (df[df.iteration == 0].ba == start["ba"]).all()
    # the benign run is exactly the `lac` defense of the cell (same seed, same batches)
    defended = create_defense("lac", LAC).run(None, q, tiny_splits, seed=3, device="cpu")
    end = evaluate(defended, test, trigger, 0, 500)
    last = df[df.data == "benign"].iloc[-1]
    assert (last.ba, last.asr) == (end["ba"], end["asr"])
    assert q.training is False and torch.equal(  # the input model is left as it was
        q.conv1.weight, quantize_model(tiny_model, create_scheme("qa", 4)).conv1.weight
    )


@pytest.mark.slow
def test_benign_lac_lowers_the_asr_of_a_planted_backdoor(tiny_splits, qa_model):
    """Qu-ANTI-zation planted at 4 bits on a tiny model (the shared ``qa_model``): along the
    benign curve the ASR falls from the undefended model's to far below it."""
    _, attacked, attack = qa_model
    q = quantize_model(attacked, create_scheme("qa", 4))
    lac = LAC | {"iterations": 150, "calib_batches": 8, "batch_size": 32, "pda_iterations": 5}
    df = lac_curve(q, tiny_splits, attack.trigger, 0, lac, seed=0, eval_every=300, kinds=("benign",))
    assert df.asr.iloc[0] > 50, df  # the backdoor fires before LAC
    assert df.asr.iloc[-1] < df.asr.iloc[0] - 30, df
