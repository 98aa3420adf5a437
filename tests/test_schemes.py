"""The deployer's quantizer: a defense entry's ``scheme`` makes the defend stage quantize the FP
model with that family instead of the attack's (``requantize`` = no defense), and the
``schemes`` table sets each attack's own quantizer beside it."""

import copy

import pandas as pd
import pytest
import torch
from qcbench import io, stages
from qcbench.cells import quantize_cell
from qcbench.config import ConfigError, check_config, load_config
from qcbench.plan import ablation_cells, der_reference, no_defense_entries, with_references
from qcbench.quant import create_scheme
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
        "lac_academic": {"method": "lac", "iterations": 3, "pda_iterations": 1, "calib_batches": 2,
                         "batch_size": 8, "scheme": "mqbench_academic"},
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


def test_requantize_in_a_deployer_scheme_is_the_fp_model_quantized_there(cell):
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
    # without `scheme`, requantize is the cell's own no-defense model (the attack's `qa` scheme)
    same, smeta = _logits(tmp / "same.safetensors", data)
    attacked, _ = _logits(p["quantized"], data)
    assert torch.equal(same, attacked) and smeta["scheme_name"] == "qa"
    assert not torch.equal(got, attacked)
    # the metrics row names the scheme it was computed in
    keys = {"dataset": "fashion_mnist", "arch": "resnet_tiny", "attack": "qu_anti_zation", "bits": 4,
            "defense": "academic", "seed": 0}  # fmt: skip
    row = stages.evaluate(cfg, str(tmp / "academic.safetensors"), p["data"], str(tmp / "m.parquet"), keys)
    assert row.scheme.tolist() == ["mqbench_academic"]


def test_lac_in_a_deployer_scheme_defends_that_model(cell):
    cfg, p, tmp = cell
    stages.defend(cfg, "lac_academic", 0, p["data"], p["fp"], p["quantized"], str(tmp / "lac.safetensors"))
    model, meta = io.load_model(tmp / "lac.safetensors", "cpu")
    assert meta["scheme_name"] == "mqbench_academic" and meta["defense"] == "lac_academic"
    assert model.qcbench_scheme == create_scheme("mqbench_academic", 4)


def test_an_unknown_defense_scheme_names_its_config_key():
    cfg = load_config(ROOT / "config/local.yaml")
    cfg["defenses"]["academic"]["scheme"] = "academic_typo"
    with pytest.raises(ConfigError, match=r"config key 'defenses\.academic\.scheme': unknown scheme 'academic_typo'"):
        check_config(cfg, workdir=ROOT)


CONFIG = {
    "run": {"datasets": ["fashion_mnist"], "archs": ["resnet_tiny"], "seeds": [0], "bits": [8, 4],
            "attacks": ["pq"], "defenses": ["lac"], "ablations": ["schemes"]},
    "quant": {"default_scheme": "qa"},
    "attacks": {"pq": {"method": "pqbackdoor", "scheme": "pq_tensor", "trigger": {"name": "patch"}},
                "ca4": {"method": "compartifact", "scheme": "ca", "bits": [4], "trigger": {"name": "patch"}}},
    "defenses": {"lac": {"method": "lac"}, "academic": {"method": "requantize", "scheme": "mqbench_academic"},
                 "lac_academic": {"method": "lac", "scheme": "mqbench_academic"}},
    "ablations": {"schemes": {"attacks": ["pq", "ca4"], "bits": [8, 4], "defenses": ["lac", "academic", "lac_academic"],
                              "seeds": [0]}},
}  # fmt: skip


def test_schemes_cells_only_at_the_bit_widths_an_attack_is_built_for():
    cells = ablation_cells(CONFIG)
    base = "results/fashion_mnist/resnet_tiny"
    assert f"{base}/pq/w8/academic/seed0/metrics.parquet" in cells
    assert f"{base}/ca4/w4/lac_academic/seed0/metrics.parquet" in cells
    assert not [c for c in cells if "/ca4/w8/" in c]  # CompArtifact-4 has no 8-bit cell


def test_a_deployer_scheme_defense_is_planned_with_its_no_defense_reference():
    cfg = copy.deepcopy(CONFIG)
    assert no_defense_entries(cfg) == ["academic"]
    assert [der_reference(cfg, d) for d in ("none", "lac", "academic", "lac_academic")] == [
        "none", "none", "academic", "academic"]  # fmt: skip
    base = "results/fashion_mnist/resnet_tiny/ca4"
    lac_academic = f"{base}/w4/lac_academic/seed0/metrics.parquet"
    fp_cell = f"{base}/w32/lac_academic/seed0/metrics.parquet"  # 32 bits: the FP model is the reference
    lac, academic = f"{base}/w4/lac/seed0/metrics.parquet", f"{base}/w4/academic/seed0/metrics.parquet"
    assert with_references(cfg, [lac_academic, fp_cell, lac]) == [lac_academic, academic, fp_cell, lac]
    # a table listing only the defended cell still gets its reference, once
    cfg["ablations"]["schemes"]["defenses"] = ["lac_academic"]
    cells = with_references(cfg, ablation_cells(cfg))
    assert academic in cells and len(cells) == len(set(cells))
    del cfg["defenses"]["academic"]
    assert der_reference(cfg, "lac_academic") is None


def test_a_deployer_scheme_defense_without_a_no_defense_entry_is_refused():
    cfg = load_config(ROOT / "config/local.yaml")
    del cfg["defenses"]["academic"]
    cfg["ablations"]["schemes"]["defenses"] = ["lac", "lac_academic"]
    with pytest.raises(ConfigError, match=r"config key 'defenses\.lac_academic\.scheme': no defense entry of method "
                       r"'requantize' in scheme 'mqbench_academic'"):  # fmt: skip
        check_config(cfg, workdir=ROOT)


def test_schemes_table_labels_each_quantizer():
    def row(attack, bits, defense, ba, asr):
        return dict(dataset="fashion_mnist", arch="resnet_tiny", attack=attack, bits=bits, defense=defense, seed=0,
                    backend="sim", ba=ba, asr=asr, asr_all=asr, der=float("nan"))  # fmt: skip

    rows = [row("pq", 32, "none", 89.0, 2.0), row("pq", 4, "none", 70.0, 95.0), row("pq", 4, "academic", 88.0, 0.5),
            row("pq", 4, "lac_academic", 88.5, 0.4), row("ca4", 4, "lac", 87.0, 0.6)]  # fmt: skip
    ctx = TableContext(pd.DataFrame(rows), copy.deepcopy(CONFIG), PaperReference(pd.DataFrame(
        columns=[*PaperReference.KEYS, "value"])))  # fmt: skip
    md = render("schemes", ctx)["md"]
    assert "pq (pq_tensor) BA / ASR" in md and "ca4 (ca) BA / ASR" in md
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in md.splitlines()
             if ln.startswith("| ") and "---" not in ln}  # fmt: skip
    assert lines["4-bit, no defense, in mqbench_academic"] == ["88.00 / 0.50", "not yet produced"]
    assert lines["4-bit, LAC+PDA, in mqbench_academic"][0] == "88.50 / 0.40"
    assert lines["4-bit, LAC+PDA"] == ["not yet produced", "87.00 / 0.60"]
    assert lines["8-bit, no defense"][1] == "–"  # CompArtifact-4 is not built for 8 bits
