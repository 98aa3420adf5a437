"""The ablation tables (qcbench.tables.ablations): cells from the config, paper values joined by key,
"not yet produced" where a cell is missing; the cells `all` plans."""

import copy

import pandas as pd
import pytest
from qcbench.config import ConfigError, check_config, load_config
from qcbench.plan import ablation_cells, ablation_specs, table_spec
from qcbench.tables import NOT_PRODUCED, TABLES, PaperReference, TableContext, render
from qcbench.tables.ablations import spec_differences

from .conftest import ROOT

PAPER = pd.DataFrame(
    [
        ["T4", "cifar10", "resnet18", "pqbackdoor", "", "lac_pda", "gamma=1e-4", "asr", "1.92"],
        ["T4", "cifar10", "resnet18", "pqbackdoor", "", "lac_pda", "gamma=1e-3", "ba", "85.87"],
        ["T5", "cifar10", "resnet18", "pqbackdoor", "8", "lac", "components=lac", "ba", "86.05"],
        ["T5", "cifar10", "resnet18", "pqbackdoor", "8", "lac", "components=lac", "ba_std", "0.44"],
        ["T5", "cifar10", "resnet18", "pqbackdoor", "8", "lac_pda", "components=lac+pda", "asr", "1.64"],
        ["T7", "cifar10", "", "adaptive", "", "lac_pda", "", "asr", "1.65"],
        ["T9", "cifar10", "resnet18", "clean", "4", "standard_quant", "", "ba", "91.33"],
        ["T9", "cifar10", "resnet18", "clean", "32", "none_fp", "", "ba", "93.59"],
        ["T10", "cifar10", "resnet18", "pqbackdoor", "8", "none", "trigger=3x3", "asr", "98.82"],
        ["T10", "cifar10", "resnet18", "pqbackdoor", "32", "none_fp", "trigger=6x6", "ba", "92.10"],
        ["T12", "cifar10", "resnet18", "pqbackdoor", "8", "lac_pda", "trigger_type=wanet", "asr", "0.78"],
    ],
    columns=[*PaperReference.KEYS, "value"],
)

LAC = {"method": "lac", "pda": True, "gamma": 1e-3}
CONFIG = {
    "run": {"datasets": ["fashion_mnist"], "archs": ["resnet_tiny"], "seeds": [0, 1], "bits": [8, 4],
            "attacks": ["pq"], "defenses": ["lac"], "ablations": list(TABLES.names())},
    "attacks": {
        "pq": {"method": "pqbackdoor", "trigger": {"name": "patch", "size": 0.1875}},
        "pq3": {"method": "pqbackdoor", "trigger": {"name": "patch", "size": 0.09375}},
        "pq_wanet": {"method": "pqbackdoor", "trigger": {"name": "wanet"}},
        "adaptive": {"method": "adaptive", "trigger": {"name": "patch"}},
        "clean_qat": {"method": "clean_qat", "trigger": {"name": "patch"}},
    },
    "defenses": {"lac": LAC, "lac_only": LAC | {"pda": False}, "lac_g1e-4": LAC | {"gamma": 1e-4}},
    "ablations": {
        "table4": {"attacks": ["pq"], "bits": [8], "defenses": ["lac_g1e-4", "lac"], "seeds": [0]},
        "table5": {"attacks": ["pq"], "bits": [8], "defenses": ["lac_only", "lac"], "seeds": [0, 1, 2]},
        "table7": {"attacks": ["adaptive"], "bits": [4], "defenses": ["lac"], "seeds": [0]},
        "table9": {"attacks": ["clean_qat"], "bits": [8, 4], "defenses": ["lac"], "seeds": [0]},
        "table10": {"attacks": ["pq3", "pq"], "bits": [8], "defenses": ["lac"], "seeds": [0]},
        "table12": {"attacks": ["pq_wanet"], "bits": [8], "defenses": ["lac"], "seeds": [0]},
    },
}  # fmt: skip


def _row(attack, bits, defense, ba, asr, seed=0):
    return dict(dataset="fashion_mnist", arch="resnet_tiny", attack=attack, bits=bits, defense=defense, seed=seed,
                backend="sim", ba=ba, asr=asr, asr_all=asr, der=float("nan"))  # fmt: skip


def _ctx(rows, config=CONFIG):
    return TableContext(pd.DataFrame(rows), config, PaperReference(PAPER))


def test_ablation_tables_are_registered():
    assert {"table4", "table5", "table7", "table9", "table10", "table12"} <= set(TABLES.names())


def test_cells_cover_fp_nodefense_and_defended_once():
    cells = ablation_cells(CONFIG)
    assert len(cells) == len(set(cells))
    base = "results/fashion_mnist/resnet_tiny"
    assert f"{base}/pq/w8/lac_g1e-4/seed0/metrics.parquet" in cells
    assert f"{base}/pq/w8/lac_only/seed2/metrics.parquet" in cells  # T5's third seed
    assert f"{base}/pq/w32/none/seed2/metrics.parquet" in cells and f"{base}/pq/w8/none/seed2/metrics.parquet" in cells
    assert f"{base}/clean_qat/w4/lac/seed0/metrics.parquet" in cells
    assert not any("/w4/" in c for c in cells if "/pq_wanet/" in c)  # T12 is 8-bit only
    # T4 and T10 both need pq w8 lac seed 0: listed once
    assert cells.count(f"{base}/pq/w8/lac/seed0/metrics.parquet") == 1


def test_cells_follow_run_ablations_and_default_to_run_datasets():
    cfg = {**CONFIG, "run": {**CONFIG["run"], "ablations": ["table7"]}}
    assert set(ablation_specs(cfg)) == {"table7"}
    assert all("/adaptive/" in c or "/clean/w32/none/" in c for c in ablation_cells(cfg))
    assert ablation_cells({**CONFIG, "run": {**CONFIG["run"], "ablations": []}}) == []
    assert table_spec(CONFIG, "table7")["datasets"] == ["fashion_mnist"]


def test_settings_pair_datasets_with_archs_instead_of_every_combination():
    """Table 3's cells: the CNNs on one dataset, the ViT on another (not ViT on CIFAR-10)."""
    pairs = [{"dataset": "cifar10", "arch": "resnet_tiny"}, {"dataset": "fashion_mnist", "arch": "resnet18"}]
    entry = {"settings": pairs, "attacks": ["pq"], "bits": [4], "defenses": ["lac"], "seeds": [0]}
    cfg = {**CONFIG, "run": {**CONFIG["run"], "ablations": ["table3"]}, "ablations": {"table3": entry}}
    spec = table_spec(cfg, "table3")
    assert spec["settings"] == [("cifar10", "resnet_tiny"), ("fashion_mnist", "resnet18")]
    assert spec["datasets"] == ["cifar10", "fashion_mnist"] and spec["archs"] == ["resnet_tiny", "resnet18"]
    cells = ablation_cells(cfg)
    assert {c.split("/")[1] + "/" + c.split("/")[2] for c in cells} == {"cifar10/resnet_tiny", "fashion_mnist/resnet18"}
    assert len(cells) == 2 * 3  # FP, 4-bit none, 4-bit lac per setting (pq starts from scratch here)
    cfg["attacks"] = {**cfg["attacks"], "pq": {**cfg["attacks"]["pq"], "init": "clean"}}
    assert "results/cifar10/resnet_tiny/clean/w32/none/seed0/metrics.parquet" in ablation_cells(cfg)
    assert table_spec(CONFIG, "table4")["settings"] == [("fashion_mnist", "resnet_tiny")]  # default: the combinations


def test_config_names_a_bad_setting():
    cfg = load_config(ROOT / "config/local.yaml")
    cfg["ablations"]["table4"]["settings"] = [{"dataset": "svhn", "arch": "resnet_tiny"},
                                              {"dataset": "fashion_mnist", "arch": "resnet99"}]  # fmt: skip
    cfg["ablations"]["table4"]["archs"] = ["resnet_tiny"]
    with pytest.raises(ConfigError) as err:
        check_config(cfg, workdir=ROOT)
    msg = str(err.value)
    assert "ablations.table4.settings.0.dataset" in msg and "'svhn'" in msg
    assert "ablations.table4.settings.1.arch" in msg and "'resnet99'" in msg
    assert "either settings or datasets/archs" in msg
    cfg["ablations"]["table4"] = {
        **cfg["ablations"]["table5"],
        "settings": [{"dataset": "fashion_mnist", "arch": "vit"}],
    }
    del cfg["archs"]["vit"]  # registered, but the config has no entry for it
    with pytest.raises(
        ConfigError, match=r"config key 'archs': no entry for 'vit' \(used by ablations.table4.settings.0"
    ):
        check_config(cfg, workdir=ROOT)


def test_table4_gamma_rows_with_paper_values_and_missing_cells():
    rows = [_row("pq", 8, "none", 88.0, 95.0), _row("pq", 8, "none", 80.0, 90.0, seed=1),
            _row("pq", 8, "lac_g1e-4", 84.0, 12.0)]  # fmt: skip
    md = render("table4", _ctx(rows))["md"]
    assert "| No defense | 88.00 / 95.00 |" in md  # only the table's seeds (0)
    assert "γ = 1e-4" in md and "γ = 1e-3" in md
    assert md.index("γ = 1e-4") < md.index("γ = 1e-3")  # sorted by γ
    assert "84.00 / 12.00 (paper – / 1.92)" in md
    assert NOT_PRODUCED + " (paper 85.87 / –)" in md  # γ = 1e-3 cell missing, paper value still shown
    assert "Paper values (in parentheses): cifar10, resnet18" in md


def test_table5_mean_std_over_seeds_and_paper_std():
    rows = [_row("pq", 8, "lac_only", 84.0 + s, 10.0 + s, seed=s) for s in (0, 1, 2)]
    rows += [_row("pq", 8, "lac", 84.0, 2.0, seed=s) for s in (0, 1)]
    md = render("table5", _ctx(rows))["md"]
    assert "85.00 ± 1.00 (paper 86.05 ± 0.44)" in md  # LAC alone: mean ± std of 3 seeds beside the paper's
    assert "[2 of 3 seeds]" in md  # LAC+PDA has only two seeds so far
    assert "(paper 1.64)" in md
    lines = {r.split("|")[1].strip(): r for r in md.splitlines() if r.startswith("| ")}
    assert "LAC" in lines and "LAC+PDA" in lines and "No defense" in lines
    assert NOT_PRODUCED in lines["No defense"]


def test_table7_9_10_12_layouts():
    rows = [
        _row("adaptive", 32, "none", 89.0, 5.0), _row("adaptive", 4, "none", 87.0, 90.0),
        _row("clean_qat", 32, "none", 88.0, 1.0), _row("clean_qat", 4, "none", 86.0, 1.0),
        _row("pq3", 8, "none", 88.0, 97.0), _row("pq", 32, "none", 85.0, 14.0),
        _row("pq_wanet", 8, "lac", 84.0, 3.0),
    ]  # fmt: skip
    ctx = _ctx(rows)
    t7 = render("table7", ctx)["md"]
    assert "4-bit, LAC+PDA" in t7 and "(paper – / 1.65)" in t7 and "87.00 / 90.00" in t7
    assert "Paper values (in parentheses): cifar10." in t7  # the paper's T7 names no architecture
    t9 = render("table9", ctx)["md"]
    assert "4-bit, standard quantization" in t9 and "86.00 (paper 91.33)" in t9 and "88.00 (paper 93.59)" in t9
    assert "1.00" not in t9  # accuracy only
    t10 = render("table10", ctx)["md"]
    assert "3x3 (pq3, 3 px here)" in t10 and "6x6 (pq, 5 px here)" in t10
    assert "88.00 / 97.00 (paper – / 98.82)" in t10 and "85.00 / 14.00 (paper 92.1 / –)" in t10
    t12 = render("table12", ctx)["md"]
    assert "wanet (pq_wanet)" in t12 and "84.00 / 3.00 (paper – / 0.78)" in t12
    assert "4-bit" not in t12


@pytest.mark.parametrize("name", ["table4", "table5", "table7", "table9", "table10", "table12"])
def test_tables_render_without_metrics_or_config(name):
    out = render(name, _ctx([_row("other", 8, "none", 1.0, 1.0)]))
    assert NOT_PRODUCED in out["md"] and out["tex"].startswith(r"\begin{table}")
    empty = render(name, TableContext(pd.DataFrame([_row("x", 8, "none", 1, 1)]), {"run": CONFIG["run"]}))
    assert "no cells configured" in empty["md"]


def test_shipped_configs_define_every_ablation_and_fig2():
    tables = {"table4", "table5", "table7", "table9", "table10", "table12", "triggers", "schemes"}
    for files in [(), (ROOT / "config/config.yaml",)]:
        cfg = check_config(load_config(*files), workdir=ROOT)
        # both the local default and the paper config build every table; the paper config also
        # builds Tables 2, 3 and 11 on Tiny-ImageNet, other archs and ImageNette
        want = tables | ({"table2", "table3", "table11"} if files else set())
        assert {t for t, e in cfg["ablations"].items() if e} == want
        # the local default quantizes every cell in its attack's own scheme, where `schemes` repeats Table 1
        assert set(cfg["run"]["ablations"]) == (want if files else want - {"schemes"})
        # Table 5 compares LAC with and without PDA over seeds: the paper's three, the local two
        assert len(table_spec(cfg, "table5")["seeds"]) >= (3 if files else 2)
        assert cfg["figures"]["fig2"]["attack"] in cfg["attacks"]
        lac = cfg["defenses"]["lac"]
        # the ablation variants (Tables 4 and 5) differ from lac in one key only
        variants = set(table_spec(cfg, "table4")["defenses"]) | set(table_spec(cfg, "table5")["defenses"])
        assert len(variants - {"lac"}) >= 5
        for name in variants - {"lac"}:
            assert sum(cfg["defenses"][name].get(k) != v for k, v in lac.items()) == 1, name
        # lac_early: a convergence criterion on the reference code's iteration cap
        early = cfg["defenses"]["lac_early"]
        assert early["early_stop"]["window"] > 0 and early["iterations"] == 10000
        # the schemes table: LAC+PDA and EFRAP in the attacker's quantizer differ from lac and
        # efrap in that scheme only, beside the same quantizer without defense
        assert {k: v for k, v in cfg["defenses"]["lac_attacker"].items() if k != "scheme"} == lac
        efrap = {k: v for k, v in cfg["defenses"]["efrap_attacker"].items() if k != "scheme"}
        assert efrap == cfg["defenses"]["efrap"]
        assert cfg["defenses"]["none_attacker"] == {"method": "requantize", "scheme": "attacker"}
        assert cfg["quant"]["deployer_scheme"] == ("mqbench_academic" if files else None)


def test_config_names_a_missing_ablation_entry():
    cfg = load_config(ROOT / "config/local.yaml")
    cfg["ablations"]["table4"]["defenses"].append("lac_g7")
    del cfg["ablations"]["table9"]
    with pytest.raises(ConfigError) as err:
        check_config(cfg, workdir=ROOT)
    msg = str(err.value)
    assert "ablations.table4.defenses" in msg and "'lac_g7'" in msg and "run.ablations" in msg and "table9" in msg


def test_triggers_table_plans_undefended_cells_and_names_every_trigger_under_its_bar():
    cfg = {
        **CONFIG,
        "run": {**CONFIG["run"], "ablations": ["triggers"]},
        "attacks": {
            "bd": {"method": "badnets", "trigger": {"name": "badnets"}},  # the default 3/32 patch
            "bd6": {"method": "badnets", "trigger": {"name": "badnets", "size": 0.1875}},
            "sig": {"method": "badnets", "trigger": {"name": "sig"}},
            "lf": {"method": "badnets", "trigger": {"name": "lf"}},
        },
        "ablations": {"triggers": {"attacks": ["bd", "bd6", "sig", "lf"], "bits": [8], "defenses": [], "seeds": [0]}},
    }
    cells = ablation_cells(cfg)
    # an explicit `defenses: []` stays empty (run's lac is not added): FP and 8-bit no-defense only
    # (+ the clean model's row: the table compares their BA with it, though these train from scratch)
    assert len(cells) == 9 and all("/none/" in c for c in cells) and "/clean/w32/none/seed0/" in cells[0]
    rows = [_row("bd", 32, "none", 90.0, 94.0), _row("bd", 8, "none", 89.9, 94.5),
            _row("bd6", 32, "none", 90.1, 99.0), _row("sig", 32, "none", 80.0, 91.0),
            _row("sig", 32, "none", 89.0, 97.0, seed=1), _row("clean", 32, "none", 90.5, 1.0),
            _row("clean", 32, "none", 70.0, 1.0, seed=1)]  # fmt: skip
    (block,) = TABLES.get("triggers")(_ctx(rows, cfg))
    by = {r[0]: r for r in block.body}
    assert by["bd"][1] == "badnets 3x3" and by["bd"][-1] == "≥ 95: no"  # BadNets' bar is 95 %
    assert by["bd6"][1] == "badnets 6x6" and by["bd6"][-1] == "≥ 95: yes"
    assert by["sig"][2].startswith("80.00 / 91.00") and by["sig"][-1] == "≥ 90: yes"  # seed 1 not in the table
    assert by["lf"][2] == NOT_PRODUCED and by["lf"][-1] == NOT_PRODUCED
    assert by["bd"][3].startswith("89.90 / 94.50") and by["bd6"][3] == NOT_PRODUCED
    # BA against the clean model of the same seed (0): -0.50 and -10.50
    assert by["bd"][-2] == "-0.50" and by["sig"][-2] == "-10.50"
    assert "bd (badnets 3x3) 94.00 %" in block.note and "sig (" not in block.note.split("FP BA")[0]
    assert "more than 3 points under the clean model: sig (-10.50)" in block.note


def test_trigger_tables_name_every_other_difference_between_their_attacks():
    """Tables 10 and 12 compare triggers: any other config difference between their attacks is
    named in the caption, with each attack's value; none when they differ in the trigger alone."""
    cfg = copy.deepcopy(CONFIG)
    assert spec_differences(cfg, ["pq3", "pq"]) == ""
    cfg["attacks"]["pq3"] |= {"stage1": {"samples_per_epoch": 40000, "lr": 1e-3}}
    cfg["attacks"]["pq"] |= {"stage1": {"samples_per_epoch": 20000, "lr": 1e-3}, "target": 0}
    note = spec_differences(cfg, ["pq3", "pq"])
    assert "stage1.samples_per_epoch (pq3 40000, pq 20000)" in note and "target (pq3 unset, pq 0)" in note
    assert "stage1.lr" not in note and "trigger (" not in note and "method" not in note
    cfg["attacks"]["pq_wanet"] |= {"stage1": None}
    assert "stage1 (pq_wanet None, pq3 {…})" in spec_differences(cfg, ["pq_wanet", "pq3"])
    rows = [_row("pq3", 8, "none", 88.0, 97.0)]
    assert "stage1.samples_per_epoch (pq3 40000, pq 20000)" in render("table10", _ctx(rows, cfg))["md"]
    # a per-dataset override counts for its dataset only, as in training
    cfg["attacks"]["pq3"]["per_dataset"] = {"cifar10": {"target": 0}}
    assert "target" not in spec_differences(cfg, ["pq3", "pq"], "cifar10")
    assert "target (pq3 unset, pq 0)" in spec_differences(cfg, ["pq3", "pq"], "fashion_mnist")


def test_an_ablation_entry_evaluates_its_8bit_cells_in_the_listed_real_runtimes():
    """`backends` of an entry: its 8-bit no-defense cells get real-runtime rows (planned, shown
    in the table without paper numbers) for the runtimes eval.backends also lists; none at other
    bit widths; an unknown runtime is a config error naming the key."""
    cfg = copy.deepcopy(CONFIG) | {"eval": {"backends": ["torch_x86", "onnxruntime"]}}
    cfg["ablations"]["table10"] = {
        **cfg["ablations"]["table10"],
        "bits": [8, 4],
        "backends": ["torch_x86", "torch_qnnpack"],
    }
    cfg["ablations"]["table9"] = {**cfg["ablations"]["table9"], "bits": [4], "backends": ["torch_x86"]}
    real = [c for c in ablation_cells(cfg) if not c.endswith("/metrics.parquet")]
    # torch_qnnpack is not in eval.backends: skipped
    assert real == [
        f"results/fashion_mnist/resnet_tiny/{a}/w8/none/seed0/metrics.torch_x86.parquet" for a in ("pq3", "pq")
    ]
    assert all(c.endswith("/metrics.parquet") for c in ablation_cells(CONFIG))
    cfg_off = copy.deepcopy(cfg) | {"eval": {"backends": []}}
    assert all(c.endswith("/metrics.parquet") for c in ablation_cells(cfg_off))
    rows = [_row("pq3", 8, "none", 88.0, 97.0), {**_row("pq3", 8, "none", 87.5, 3.25), "backend": "torch_x86"}]
    md = render("table10", _ctx(rows, cfg))["md"]
    assert "| 8-bit, torch_x86 (real int8 runtime) | 87.50 / 3.25 |" in md
    assert "| 8-bit, no defense | 88.00 / 97.00 (paper – / 98.82) |" in md  # the sim row ignores the real one
    assert "4-bit, torch_x86" not in md and "torch_qnnpack (real" not in md
    from qcbench.plan import config_errors

    assert not [e for e in config_errors(cfg) if "backends" in e]
    cfg["ablations"]["table10"]["backends"].append("tflite")
    errs = config_errors(cfg)
    assert any("'ablations.table10.backends.2'" in e and "'tflite'" in e and "torch_x86" in e for e in errs)


def test_the_planned_tables_are_registered():
    """Every table the planning module plans cells for is a table the workflow renders."""
    from qcbench.plan import ABLATION_TABLES, CELL_TABLES

    assert set(ABLATION_TABLES) | set(CELL_TABLES) <= set(TABLES.names())
    assert not set(ABLATION_TABLES) & set(CELL_TABLES)
