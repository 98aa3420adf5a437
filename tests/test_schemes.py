"""The deployer's and the attacker's quantizers: ``quant.deployer_scheme`` quantizes every cell
whose defense entry names no ``scheme``; an entry's ``scheme`` (``attacker``: the attack's own)
makes the defend stage quantize the FP model with that family (``requantize`` = no defense);
DER follows the scheme; Table 1 says which quantizer it shows and the ``schemes`` table sets each
attack's own quantizer beside it."""

import copy
import math

import pandas as pd
import pytest
import torch
from qcbench import io, stages
from qcbench.cells import ATTACKER, quantize_cell, scheme_for, scheme_name
from qcbench.config import ConfigError, check_config, load_config
from qcbench.plan import (
    ablation_cells,
    der_reference,
    main_cells,
    no_defense_entries,
    with_attacker_rows,
    with_references,
)
from qcbench.quant import SCHEMES, create_scheme
from qcbench.tables import PaperReference, TableContext, render

from . import fabricate
from .conftest import ROOT, TINY_CONFIGS


@pytest.fixture
def cell(tmp_path, idx_dir):
    root = fabricate.make_cell(tmp_path, idx_dir)
    cfg = load_config(*TINY_CONFIGS)
    cfg["defenses"] |= {
        "academic": {"method": "requantize", "scheme": "mqbench_academic"},
        "as_attacked": {"method": "requantize"},
        "own": {"method": "requantize", "scheme": ATTACKER},
        "lac_academic": {"method": "lac", "iterations": 3, "pda_iterations": 1, "calib_batches": 2,
                         "batch_size": 8, "scheme": "mqbench_academic"},
        "lac_own": {"method": "lac", "iterations": 3, "pda_iterations": 1, "calib_batches": 2,
                    "batch_size": 8, "scheme": ATTACKER},
    }  # fmt: skip
    base = root / fabricate.BASE
    paths = {"data": str(root / "resources/data/fashion_mnist/data.safetensors"),
             "fp": str(base / "w32/none/seed0/model.safetensors"),
             "quantized": str(base / "w4/none/seed0/model.safetensors")}  # fmt: skip
    return cfg, paths, tmp_path


def _logits(path, data):
    model, meta = io.load_model(path, "cpu")
    x = data.test.x[:64].float() / 255 if data.test.x.dtype == torch.uint8 else data.test.x[:64]
    with torch.no_grad():
        return model(x), meta


def test_requantize_in_a_named_scheme_is_the_fp_model_quantized_there(cell):
    cfg, p, tmp = cell
    from qcbench.data import load_prepared

    data = load_prepared(p["data"])
    stages.defend(cfg, "academic", 0, p["data"], p["fp"], p["quantized"], str(tmp / "academic.safetensors"))
    stages.defend(cfg, "as_attacked", 0, p["data"], p["fp"], p["quantized"], str(tmp / "same.safetensors"))
    got, meta = _logits(tmp / "academic.safetensors", data)
    assert meta["scheme_name"] == "mqbench_academic" and meta["defense"] == "academic" and meta["bits"] == 4
    assert meta["scheme"] == create_scheme("mqbench_academic", 4).to_dict()
    # the same as quantizing the FP model in that scheme, calibrated as the quantize stage
    fp, fmeta = io.load_model(p["fp"], "cpu")
    want = quantize_cell(cfg, fp, create_scheme("mqbench_academic", 4), data, torch.device("cpu"))
    x = data.test.x[:64].float() / 255 if data.test.x.dtype == torch.uint8 else data.test.x[:64]
    with torch.no_grad():
        assert torch.equal(got, want(x))
    # without `scheme`, requantize is the cell's own no-defense model (the fabricated one, in `qa`)
    same, smeta = _logits(tmp / "same.safetensors", data)
    attacked, _ = _logits(p["quantized"], data)
    assert torch.equal(same, attacked) and smeta["scheme_name"] == "qa"
    assert not torch.equal(got, attacked)
    # the metrics row names the scheme it was computed in
    keys = {"dataset": "fashion_mnist", "arch": "resnet_tiny", "attack": "qu_anti_zation", "bits": 4,
            "defense": "academic", "seed": 0}  # fmt: skip
    row = stages.evaluate(cfg, str(tmp / "academic.safetensors"), p["data"], str(tmp / "m.parquet"), keys)
    assert row.scheme.tolist() == ["mqbench_academic"]


def test_lac_in_a_named_scheme_defends_that_model(cell):
    cfg, p, tmp = cell
    stages.defend(cfg, "lac_academic", 0, p["data"], p["fp"], p["quantized"], str(tmp / "lac.safetensors"))
    model, meta = io.load_model(tmp / "lac.safetensors", "cpu")
    assert meta["scheme_name"] == "mqbench_academic" and meta["defense"] == "lac_academic"
    assert model.qcbench_scheme == create_scheme("mqbench_academic", 4)
    # `attacker`: the scheme the attack is built against (the fabricated Qu-ANTI-zation's `qa`),
    # whatever quant.deployer_scheme says
    assert cfg["quant"]["deployer_scheme"] == "mqbench_academic"
    stages.defend(cfg, "lac_own", 0, p["data"], p["fp"], p["quantized"], str(tmp / "own.safetensors"))
    model, meta = io.load_model(tmp / "own.safetensors", "cpu")
    assert meta["scheme_name"] == "qa" and model.qcbench_scheme == create_scheme("qa", 4)


def test_requantize_in_the_attackers_scheme_is_the_fp_model_quantized_there(cell):
    cfg, p, tmp = cell
    from qcbench.data import load_prepared

    data = load_prepared(p["data"])
    stages.defend(cfg, "own", 0, p["data"], p["fp"], p["quantized"], str(tmp / "own.safetensors"))
    got, meta = _logits(tmp / "own.safetensors", data)
    fp, _ = io.load_model(p["fp"], "cpu")
    want = quantize_cell(cfg, fp, create_scheme("qa", 4), data, torch.device("cpu"))
    x = data.test.x[:64].float() / 255 if data.test.x.dtype == torch.uint8 else data.test.x[:64]
    with torch.no_grad():
        assert torch.equal(got, want(x))
    assert meta["scheme_name"] == "qa" and meta["defense"] == "own"


def test_the_quantize_stage_uses_the_deployers_scheme_unless_an_entry_names_one(cell):
    """The `none` cell (and an FP-level defense's purified model) in quant.deployer_scheme; null:
    in the attack's own scheme."""
    cfg, p, tmp = cell
    stages.quantize(cfg, 4, p["data"], p["fp"], str(tmp / "q.safetensors"))
    assert io.load_model(tmp / "q.safetensors", "cpu")[1]["scheme_name"] == "mqbench_academic"
    cfg["quant"]["deployer_scheme"] = None
    stages.quantize(cfg, 4, p["data"], p["fp"], str(tmp / "q.safetensors"))
    assert io.load_model(tmp / "q.safetensors", "cpu")[1]["scheme_name"] == "qa"


ATTACK = {"name": "pq", "scheme": "pq_tensor"}


@pytest.mark.parametrize(
    ("deployer", "entry", "attack", "want"),
    [
        ("mqbench_academic", None, ATTACK, "mqbench_academic"),  # no entry scheme: the deployer's
        (None, None, ATTACK, "pq_tensor"),  # no deployer's: the attack's own
        ("mqbench_academic", ATTACKER, ATTACK, "pq_tensor"),  # `attacker`: the attack's own
        (None, ATTACKER, ATTACK, "pq_tensor"),
        ("mqbench_academic", "ca", ATTACK, "ca"),  # a named scheme wins
        (None, ATTACKER, {"name": "bn", "scheme": None}, "qa"),  # a plain backdoor: quant.default_scheme
        ("mqbench_academic", None, None, "mqbench_academic"),  # the clean model
        (None, None, None, "qa"),
    ],
)
def test_scheme_name_decides_each_cells_quantizer(deployer, entry, attack, want):
    cfg = {"quant": {"default_scheme": "qa", "deployer_scheme": deployer, "overrides": {}}}
    assert scheme_name(cfg, attack, entry) == want
    name, scheme = scheme_for(cfg, {"attack": attack}, 4, entry)
    assert name == want and scheme == create_scheme(want, 4)


def test_attacker_is_no_registered_scheme():
    assert ATTACKER not in SCHEMES


def test_an_unknown_defense_scheme_names_its_config_key():
    cfg = load_config(ROOT / "config/local.yaml")
    cfg["defenses"]["none_attacker"]["scheme"] = "attacker_typo"
    with pytest.raises(
        ConfigError, match=r"config key 'defenses\.none_attacker\.scheme': unknown scheme 'attacker_typo'.*'attacker'"
    ):
        check_config(cfg, workdir=ROOT)


def test_an_unknown_deployer_scheme_names_its_config_key():
    cfg = load_config(ROOT / "config/local.yaml")
    check_config(cfg, workdir=ROOT)
    cfg["quant"]["deployer_scheme"] = ATTACKER  # the reserved word is no scheme family
    with pytest.raises(ConfigError, match=r"config key 'quant\.deployer_scheme': unknown scheme 'attacker'"):
        check_config(cfg, workdir=ROOT)
    cfg["quant"]["deployer_scheme"] = None  # null: each attack's own scheme
    check_config(cfg, workdir=ROOT)


CONFIG = {
    "run": {"datasets": ["fashion_mnist"], "archs": ["resnet_tiny"], "seeds": [0], "bits": [8, 4],
            "attacks": ["pq"], "defenses": ["lac"], "ablations": ["schemes"]},
    "quant": {"default_scheme": "qa", "deployer_scheme": "mqbench_academic"},
    "attacks": {"pq": {"method": "pqbackdoor", "scheme": "pq_tensor", "trigger": {"name": "patch"}},
                "ca4": {"method": "compartifact", "scheme": "ca", "bits": [4], "trigger": {"name": "patch"}},
                "bn": {"method": "badnets", "trigger": {"name": "badnets"}}},
    "defenses": {"lac": {"method": "lac"}, "none_attacker": {"method": "requantize", "scheme": ATTACKER},
                 "lac_attacker": {"method": "lac", "scheme": ATTACKER}},
    "ablations": {"schemes": {"attacks": ["pq", "ca4"], "bits": [8, 4], "defenses": ["none_attacker", "lac_attacker"],
                              "seeds": [0]}},
}  # fmt: skip
BASE = "results/fashion_mnist/resnet_tiny"


def test_schemes_cells_only_at_the_bit_widths_an_attack_is_built_for():
    cells = ablation_cells(CONFIG)
    assert f"{BASE}/pq/w8/none_attacker/seed0/metrics.parquet" in cells
    assert f"{BASE}/ca4/w4/lac_attacker/seed0/metrics.parquet" in cells
    assert not [c for c in cells if "/ca4/w8/" in c]  # CompArtifact-4 has no 8-bit cell


def test_a_named_scheme_defense_is_planned_with_its_no_defense_reference():
    cfg = copy.deepcopy(CONFIG)
    assert no_defense_entries(cfg) == ["none_attacker"]
    # `none` (the deployer's quantizer) rates the entries without scheme; `none_attacker` those in `attacker`
    assert [der_reference(cfg, d) for d in ("none", "lac", "none_attacker", "lac_attacker")] == [
        "none", "none", "none_attacker", "none_attacker"]  # fmt: skip
    base = f"{BASE}/ca4"
    lac_own = f"{base}/w4/lac_attacker/seed0/metrics.parquet"
    fp_cell = f"{base}/w32/lac_attacker/seed0/metrics.parquet"  # 32 bits: the FP model is the reference
    lac, own = f"{base}/w4/lac/seed0/metrics.parquet", f"{base}/w4/none_attacker/seed0/metrics.parquet"
    assert with_references(cfg, [lac_own, fp_cell, lac]) == [lac_own, own, fp_cell, lac]
    # a table listing only the defended cell still gets its reference, once
    cfg["ablations"]["schemes"]["defenses"] = ["lac_attacker"]
    cells = with_references(cfg, ablation_cells(cfg))
    assert own in cells and len(cells) == len(set(cells))
    del cfg["defenses"]["none_attacker"]
    assert der_reference(cfg, "lac_attacker") is None


def test_a_named_scheme_defense_without_a_no_defense_entry_is_refused():
    cfg = load_config(ROOT / "config/local.yaml")
    del cfg["defenses"]["none_attacker"]
    cfg["ablations"]["schemes"]["defenses"] = ["lac", "lac_attacker"]
    with pytest.raises(ConfigError, match=r"config key 'defenses\.lac_attacker\.scheme': no defense entry of method "
                       r"'requantize' in scheme 'attacker'"):  # fmt: skip
        check_config(cfg, workdir=ROOT)


def test_each_qcb_no_defense_cell_in_another_scheme_gets_its_attackers_row():
    """The verdicts read whether a backdoor fires in its own quantizer: beside each QCB "none"
    cell quantized in the deployer's scheme, the same cell in the attack's (none_attacker)."""
    cfg = copy.deepcopy(CONFIG)
    cfg["run"]["attacks"] = ["pq", "ca4", "bn"]
    cells = main_cells(cfg)
    planned = with_attacker_rows(cfg, cells)
    extra = [c for c in planned if c not in cells]
    own = "none_attacker/seed0/metrics.parquet"
    assert extra == [f"{BASE}/pq/w8/{own}", f"{BASE}/pq/w4/{own}", f"{BASE}/ca4/w4/{own}"]
    assert planned.index(extra[0]) == planned.index(f"{BASE}/pq/w8/none/seed0/metrics.parquet") + 1
    # BadNets (a plain backdoor) gets none; neither does a cell already in its attack's scheme
    cfg["quant"]["deployer_scheme"] = None
    assert with_attacker_rows(cfg, cells) == cells
    cfg["quant"]["deployer_scheme"] = "pq_tensor"
    assert [c for c in with_attacker_rows(cfg, cells) if c not in cells] == extra[2:]
    cfg["quant"]["deployer_scheme"] = "mqbench_academic"
    del cfg["defenses"]["none_attacker"]  # no such entry: nothing to plan
    assert with_attacker_rows(cfg, cells) == cells


def _collate_rows(tmp_path):
    from .test_collate import _write

    common = {"attack": "pq"}
    paths = [
        _write(tmp_path / "none.parquet", ba=88.0, asr=10.0, scheme="mqbench_academic", **common),
        _write(tmp_path / "lac.parquet", defense="lac", ba=87.0, asr=2.0, scheme="mqbench_academic", **common),
        _write(tmp_path / "own.parquet", defense="none_attacker", ba=86.0, asr=95.0, scheme="pq_tensor", **common),
        _write(tmp_path / "lac_own.parquet", defense="lac_attacker", ba=85.0, asr=5.0, scheme="pq_tensor", **common),
    ]
    return stages.collate(paths, str(tmp_path / "m.parquet"), no_defense=no_defense_entries(CONFIG))


def test_der_rates_each_row_against_the_no_defense_row_of_its_quantizer(tmp_path):
    df = _collate_rows(tmp_path).set_index("defense")
    assert math.isnan(df.der["none"])
    assert df.der["lac"] == pytest.approx(100 * (0.08 - 0.01 + 1) / 2)  # against `none` (deployer's): ASR 10 -> 2
    assert df.der["none_attacker"] == pytest.approx(50.0)  # its own reference: no change
    assert df.der["lac_attacker"] == pytest.approx(100 * (0.90 - 0.01 + 1) / 2)  # against none_attacker: 95 -> 5


def _row(attack, bits, defense, ba, asr, seed=0):
    return dict(dataset="fashion_mnist", arch="resnet_tiny", attack=attack, bits=bits, defense=defense, seed=seed,
                backend="sim", ba=ba, asr=asr, asr_all=asr, der=float("nan"))  # fmt: skip


def _lines(md: str) -> dict[str, list[str]]:
    return {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in md.splitlines()
            if ln.startswith("| ") and "---" not in ln}  # fmt: skip


NO_PAPER = PaperReference(pd.DataFrame(columns=[*PaperReference.KEYS, "value"]))


def test_schemes_table_is_the_attackers_quantizer():
    rows = [_row("pq", 32, "none", 89.0, 2.0), _row("pq", 4, "none", 88.0, 0.5),
            _row("pq", 4, "none_attacker", 70.0, 95.0), _row("pq", 4, "lac_attacker", 88.5, 0.4),
            _row("ca4", 4, "none_attacker", 87.0, 96.0)]  # fmt: skip
    ctx = TableContext(pd.DataFrame(rows), copy.deepcopy(CONFIG), NO_PAPER)
    md = render("schemes", ctx)["md"]
    assert "The attacker's deployment quantizer" in md
    assert "pq (pq_tensor) BA / ASR" in md and "ca4 (ca) BA / ASR" in md
    lines = _lines(md)
    assert lines["4-bit, no defense, in the attacker's quantizer"] == ["70.00 / 95.00", "87.00 / 96.00"]
    assert lines["4-bit, LAC+PDA, in the attacker's quantizer"] == ["88.50 / 0.40", "not yet produced"]
    assert lines["4-bit, no defense, in the deployer's quantizer (mqbench_academic)"][0] == "88.00 / 0.50"
    assert lines["8-bit, no defense, in the deployer's quantizer (mqbench_academic)"][1] == "–"  # no 8-bit CA-4
    cfg = copy.deepcopy(CONFIG)
    cfg["quant"]["deployer_scheme"] = None  # the `none` rows are then in the attacker's quantizer too
    assert "4-bit, no defense |" in render("schemes", TableContext(pd.DataFrame(rows), cfg, NO_PAPER))["md"]


def test_table1_caption_names_its_quantizer():
    rows = [_row("pq", 32, "none", 89.0, 2.0), _row("pq", 4, "none", 88.0, 0.5), _row("pq", 4, "lac", 88.5, 0.4)]
    md = render("table1", TableContext(pd.DataFrame(rows), copy.deepcopy(CONFIG), NO_PAPER))["md"]
    assert "Quantizer: the deployer's, mqbench_academic (" in md and "per-channel affine MSE weights" in md
    cfg = copy.deepcopy(CONFIG)
    cfg["quant"]["deployer_scheme"] = None
    md = render("table1", TableContext(pd.DataFrame(rows), cfg, NO_PAPER))["md"]
    assert "Quantizer: each attack's own (the scheme it is built against)." in md


def test_table1_states_the_seeds_of_a_row_run_on_fewer_and_the_cells_left_out():
    cfg = copy.deepcopy(CONFIG)
    cfg["run"] |= {"seeds": [0, 1], "defenses": ["lac", "ft"], "defense_cells": {"ft": {"seeds": [0], "bits": [4]}}}
    cfg["defenses"]["ft"] = {"method": "ft"}
    rows = [_row("pq", b, "none", 88.0, 90.0, seed=s) for b in (32, 8, 4) for s in (0, 1)]
    rows += [_row("pq", b, "lac", 87.0, 1.0, seed=s) for b in (8, 4) for s in (0, 1)]
    rows += [_row("pq", 4, "ft", 86.0, 3.0)]
    md = render("table1", TableContext(pd.DataFrame(rows), cfg, NO_PAPER))["md"]
    lines = _lines(md)
    assert lines["FT (seed 0)"] == ["–", "86.00 / 3.00 / –"]  # 8 bits left out by run.defense_cells
    assert lines["LAC+PDA (ours)"][0].startswith("87.00 ± 0.00")  # every seed: no seeds named
    assert "names its seeds" in md and "leaves out of the run" in md
    # a defense not run at all (a row of the paper's only): its restriction marks nothing
    cfg["run"]["defenses"] = ["lac"]
    ft_ba = ["T1", "fashion_mnist", "resnet_tiny", "pqbackdoor", "8", "ft", "", "ba", "85"]
    paper = PaperReference(pd.DataFrame([ft_ba], columns=[*PaperReference.KEYS, "value"]))
    lines = _lines(render("table1", TableContext(pd.DataFrame(rows), cfg, paper))["md"])
    assert lines["FT"][0] == "not yet produced (paper 85 / – / –)"


def test_defense_cells_restrict_the_main_grid_and_errors_name_the_key():
    cfg = copy.deepcopy(CONFIG)
    cfg["run"] |= {"seeds": [0, 1], "defenses": ["lac", "ft"], "defense_cells": {"ft": {"seeds": [0], "bits": [4]}}}
    cfg["defenses"]["ft"] = {"method": "ft"}
    cells = main_cells(cfg, fp_defenses=["ft"])
    ft = [c for c in cells if "/ft/" in c]
    assert ft == [f"{BASE}/pq/w32/ft/seed0/metrics.parquet", f"{BASE}/pq/w4/ft/seed0/metrics.parquet"]
    assert len([c for c in cells if "/lac/" in c]) == 4  # 2 bit widths x 2 seeds
    cfg["run"]["defense_cells"]["ft"]["attacks"] = ["ca4"]  # CompArtifact-4 is not in run.attacks
    assert not [c for c in main_cells(cfg, fp_defenses=["ft"]) if "/ft/" in c]  # not even the purified FP row


def test_defense_cells_config_errors_name_the_key():
    cfg = load_config(ROOT / "config/local.yaml")
    check_config(cfg, workdir=ROOT)
    bad = copy.deepcopy(cfg)
    bad["run"]["defense_cells"]["ft"] = {"seeds": [7]}
    with pytest.raises(ConfigError, match=r"config key 'run\.defense_cells\.ft\.seeds': \[7\] leaves 'ft' no cell"):
        check_config(bad, workdir=ROOT)
    bad = copy.deepcopy(cfg)
    bad["run"]["defense_cells"]["no_such"] = {"seeds": [0]}
    with pytest.raises(ConfigError, match=r"config key 'run\.defense_cells\.no_such': 'no_such' has no entry"):
        check_config(bad, workdir=ROOT)
    bad = copy.deepcopy(cfg)
    bad["run"]["defense_cells"]["ft"] = {"bits": [3]}
    with pytest.raises(ConfigError, match=r"config key 'run\.defense_cells\.ft\.bits': \[3\] leaves 'ft' no cell"):
        check_config(bad, workdir=ROOT)
    bad = copy.deepcopy(cfg)
    bad["run"]["defense_cells"]["ft"] = {"attacks": ["typo"]}
    with pytest.raises(ConfigError, match=r"config key 'run\.defense_cells\.ft\.attacks\.0': attack 'typo'"):
        check_config(bad, workdir=ROOT)
