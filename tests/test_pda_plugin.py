"""PDA as a plug-in (LAC Table 6): PDA-adjusted defender images for NAD / FT-SAM, and table6."""

from pathlib import Path

import pandas as pd
import torch
from qcbench.config import check_config, load_config
from qcbench.defenses import DEFENSES, create_defense, is_fp_defense
from qcbench.defenses.lac import bn_stat_distance
from qcbench.defenses.pda_plugin import pda_images, whole_model_unit
from qcbench.models import create_model
from qcbench.package_data import PAPER_REFERENCE
from qcbench.tables import PaperReference, TableContext, render

ROOT = Path(__file__).resolve().parents[1]


def _model(splits):
    torch.manual_seed(0)
    m = splits.meta
    model = create_model("resnet_tiny", 10, 1, m["mean"], m["std"], width=4)
    with torch.no_grad():  # BN statistics that differ from the data's, as after training
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_pda_lowers_the_bn_distance_of_all_layers_within_gamma(tiny_splits, one_torch_thread):
    model = _model(tiny_splits)
    images = tiny_splits.defender.subset(torch.arange(48))
    unit = whole_model_unit(model)
    assert len(unit.bns) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    adjusted = pda_images(model, images, iterations=6, gamma=1e-3, alpha=1e-3, batch_size=16, device="cpu")
    x0, x1 = images.x.float() / 255, adjusted.x / 255
    assert adjusted.x.dtype == torch.float32 and torch.equal(adjusted.y, images.y)
    assert (x1 - x0).abs().max() <= 1e-3 + 1e-6 and (x1 - x0).abs().max() > 0
    assert bn_stat_distance(model, unit, x1) < bn_stat_distance(model, unit, x0)


def test_plugins_are_fp_defenses_that_train_on_the_adjusted_images(tiny_splits, one_torch_thread, monkeypatch):
    assert is_fp_defense("nad_pda") and is_fp_defense("ftsam_pda")
    seen = {}
    base = DEFENSES.get("ftsam").purify

    def spy(self, model, splits, *, seed, device):
        seen["x"] = splits.defender.x
        return model

    monkeypatch.setattr(DEFENSES.get("ftsam"), "purify", spy)
    d = create_defense("ftsam_pda", {"epochs": 1, "pda_iterations": 2, "pda_batch_size": 64})
    d.purify(_model(tiny_splits), tiny_splits, seed=0, device="cpu")
    assert base is not spy and seen["x"].dtype == torch.float32
    shift = (seen["x"] - tiny_splits.defender.x.float()).abs().max() / 255
    assert 0 < shift <= 1e-3 + 1e-6


def test_table6_renders_rows_attacks_and_paper_values():
    cfg = load_config(ROOT / "config" / "local.yaml")
    check_config(cfg)
    rows = []
    for d, ba, asr in (("none", 90.0, 95.0), ("nad", 88.0, 5.0), ("nad_pda", 88.5, 3.0)):
        rows.append({"dataset": "fashion_mnist", "arch": "resnet_tiny", "attack": "badnets", "bits": 32,
                     "defense": d, "seed": 0, "backend": "sim", "ba": ba, "asr": asr})  # fmt: skip
    ctx = TableContext(pd.DataFrame(rows), cfg, PaperReference.load(PAPER_REFERENCE))
    md = render("table6", ctx)["md"]
    assert "NAD + PDA" in md and "FT-SAM + PDA" in md and "badnets" in md
    assert "94.00" in md  # DER of NAD: [(95 - 5) - (90 - 88) + 100] / 2 %
    assert "(paper" in md and "not yet produced" in md  # paper values joined; missing cells say so
