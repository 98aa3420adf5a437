"""The table contract: blocks rendered to Markdown/LaTeX, the paper's numbers joined by key."""

import pandas as pd
import pytest
from qcbench.config import load_config
from qcbench.defenses import DEFENSES, Defense
from qcbench.package_data import PAPER_REFERENCE
from qcbench.tables import (
    NO_DEFENSE,
    NOT_PRODUCED,
    Block,
    PaperReference,
    TableContext,
    cell,
    defense_label,
    render,
    to_html,
    to_markdown,
)

from .conftest import ROOT

PAPER = pd.DataFrame(
    [
        ["T1", "cifar10", "resnet18", "pqbackdoor", "8", "none", "", "ba", "85.16"],
        ["T1", "cifar10", "resnet18", "pqbackdoor", "8", "lac_pda", "", "asr", "1.64"],
        ["T4", "cifar10", "resnet18", "pqbackdoor", "", "lac_pda", "gamma=1e-4", "ba", "85.81"],
    ],
    columns=[*PaperReference.KEYS, "value"],
)


def _row(defense, bits, ba, asr, seed=0, attack="pq", der=float("nan")):
    return dict(dataset="fashion_mnist", arch="resnet_tiny", attack=attack, bits=bits, defense=defense,
                seed=seed, backend="sim", ba=ba, asr=asr, asr_all=asr, der=der)  # fmt: skip


def test_paper_lookup_by_key_and_missing_is_none():
    ref = PaperReference(PAPER)
    assert ref.value("T1", "ba", "cifar10", "resnet18", "pqbackdoor", 8, "none") == pytest.approx(85.16)
    assert ref.value("T4", "ba", "cifar10", "resnet18", "pqbackdoor", "", "lac_pda", "gamma=1e-4") == 85.81
    assert ref.value("T1", "ba", "cifar10", "resnet18", "pqbackdoor", 4, "none") is None


def test_cell_mean_std_and_not_produced():
    g = pd.DataFrame({"ba": [80.0, 82.0], "asr": [1.0, 3.0]})
    assert cell(g, ("ba", "asr")) == "81.00 ± 1.41 / 2.00 ± 1.41"
    assert cell(None) == NOT_PRODUCED and cell(g.iloc[:0]) == NOT_PRODUCED


def test_table1_joins_paper_values_and_marks_missing_cells():
    df = pd.DataFrame(
        [
            _row("none", 8, 90.0, 95.0),
            _row("none", 8, 88.0, 97.0, seed=1),
            _row("lac", 8, 89.0, 2.0, der=95.0),
            _row("none", 4, 80.0, 90.0),
            _row("none", 32, 91.0, 3.0),
        ]  # fmt: skip
    )
    ctx = TableContext(
        df, {"attacks": {"pq": {"method": "pqbackdoor"}}, "run": {"defenses": ["lac"]}}, PaperReference(PAPER)
    )
    md = render("table1", ctx)["md"]
    assert "89.00 ± 1.41 / 96.00 ± 1.41 (paper 85.16 / –)" in md  # no-defense cell beside the paper's
    assert "(paper – / 1.64 / –)" in md  # the paper's LAC+PDA ASR beside ours
    assert NOT_PRODUCED in md  # 4-bit LAC cell was not produced
    assert "Paper values (in parentheses): cifar10, resnet18" in md
    assert render("table1", ctx)["tex"].startswith(r"\begin{table}")


def test_table1_keeps_to_the_main_run_and_lists_the_papers_other_rows():
    """Ablation cells (another defense, a third seed, another attack) share metrics.parquet but
    not Table 1; a paper row the run did not produce (FT here) is shown as not yet produced."""
    paper = pd.concat([PAPER, pd.DataFrame([["T1", "cifar10", "resnet18", "pqbackdoor", "8", "ft", "", "ba", "85.29"]],
                                           columns=PAPER.columns)])  # fmt: skip
    df = pd.DataFrame(
        [
            _row("none", 8, 90.0, 95.0),
            _row("lac", 8, 89.0, 2.0, der=95.0),
            _row("lac", 8, 50.0, 50.0, seed=2, der=50.0),  # Table 5's third seed
            _row("lac_only", 8, 70.0, 9.0, der=80.0),  # Table 5's LAC alone
            _row("none", 8, 60.0, 1.0, attack="clean_qat"),  # Table 9's clean QAT model
            _row("none", 8, 61.0, 77.0) | {"arch": "vit", "dataset": "imagenette"},  # Table 3 / 11 cells
            _row("none", 8, 62.0, 78.0) | {"arch": "alexnet"},
        ]  # fmt: skip
    )
    run = {"attacks": ["pq"], "bits": [8], "defenses": ["lac"], "seeds": [0, 1],
           "datasets": ["fashion_mnist"], "archs": ["resnet_tiny"]}  # fmt: skip
    ctx = TableContext(df, {"attacks": {"pq": {"method": "pqbackdoor"}}, "run": run}, PaperReference(paper))
    md = render("table1", ctx)["md"]
    assert "89.00 / 2.00 / 95.00" in md and "50.00" not in md  # seed 2 left out
    assert "LAC |" not in md and "clean_qat" not in md and "seeds [0]" in md
    assert "imagenette" not in md and "alexnet" not in md and "61.00" not in md and "62.00" not in md
    assert "| FT | " + NOT_PRODUCED + " (paper 85.29 / – / –) |" in md


def test_markdown_of_blocks_has_captions_and_notes():
    md = to_markdown([Block("Table X: cap", ["a", "b"], [["1", "2"]], note="n.b.")])
    assert md.startswith("**Table X: cap**") and "| 1 | 2 |" in md and md.rstrip().endswith("n.b.")
    assert to_markdown([]) == "No metrics yet.\n"


def test_html_has_one_fragment_per_block_with_caption_and_escaping():
    blocks = [
        Block("Table X (a<b): cap", ["Defense", "8-bit x"], [["LAC+PDA (ours)", "1.00 (paper 2 / 3)"]], note="n<b"),
        Block("Table X, second", ["a", "a"], [["No defense", NOT_PRODUCED + " (paper 4)"]]),  # duplicate header
    ]
    out = to_html(blocks)
    assert out.count('<div class="qc-block">') == 2 and out.count("<caption>") == 2
    assert "<caption>Table X (a&lt;b): cap</caption>" in out and '<p class="qc-note">n&lt;b</p>' in out
    assert '<span class="qc-paper">(paper 2 / 3)</span>' in out
    assert f'<span class="qc-missing">{NOT_PRODUCED}</span>' in out
    assert "qc-ours" in out.split("LAC+PDA (ours)")[0].rsplit("<tr>", 1)[1]  # our row is highlighted
    assert to_html(blocks) == out  # deterministic (stable element ids)
    assert "No metrics yet" in to_html([])


def test_paper_only_tables_show_the_papers_numbers_beside_not_yet_produced():
    paper = PaperReference.load(PAPER_REFERENCE)
    df = pd.DataFrame([_row("none", 4, 86.0, 85.0, attack="qa"), _row("lac", 4, 87.0, 5.0, attack="qa", der=90.0)])
    ctx = TableContext(df, {"attacks": {"qa": {"method": "qu_anti_zation"}}}, paper)
    t2 = render("table2", ctx)
    assert "Table 2 (tinyimagenet, resnet18)" in t2["md"] and "<caption>Table 2" in t2["html"]
    assert f"{NOT_PRODUCED} (paper 56.33 / 99.75)" in t2["md"]  # 8-bit CompArtifact, no defense
    assert "| FT-SAM |" in t2["md"] and "| LAC+PDA (ours) |" in t2["md"]
    t3 = render("table3", ctx)["md"]
    assert f"| alexnet (cifar10) | {NOT_PRODUCED} (paper 76.47 / 88.71) |" in t3
    assert "| resnet_tiny (fashion_mnist) | 86.00 / 85.00 | 87.00 / 5.00 / 90.00 |" in t3  # our run, no paper value
    t11 = render("table11", ctx)["md"]
    assert f"| 4-bit, LAC+PDA (ours) | {NOT_PRODUCED} (paper 79.21 / 0.71) |" in t11
    assert "Table 1 (fashion_mnist, resnet_tiny)" in render("table1", ctx)["md"]
    assert "tinyimagenet" not in render("table1", ctx)["md"]


@pytest.mark.parametrize("method", DEFENSES.names())
def test_every_defense_class_declares_its_own_label(method):
    """A registered defense prints as its class's ``label`` (declared on the class itself, not
    inherited: FP is an FT, NAD + PDA a NAD) wherever an entry of that method is a row."""
    cls = DEFENSES.get(method)
    assert isinstance(cls.__dict__.get("label"), str) and cls.label
    assert defense_label({"defenses": {"x": {"method": method}}}, "x") == cls.label


def test_labels_resolve_entry_method_class_and_the_entrys_switches():
    cfg = load_config(ROOT / "config" / "local.yaml")
    shown = {d: defense_label(cfg, d) for d in ("none", "lac", "lac_only", "efrap", "ft", "fp", "mcr", "nad",
                                                "ibau", "ftsam", "nad_pda", "ftsam_pda")}  # fmt: skip
    assert shown == {
        "none": NO_DEFENSE, "lac": "LAC+PDA (ours)", "lac_only": "LAC", "efrap": "EFRAP", "ft": "FT", "fp": "FP",
        "mcr": "MCR", "nad": "NAD", "ibau": "I-BAU", "ftsam": "FT-SAM", "nad_pda": "NAD + PDA",
        "ftsam_pda": "FT-SAM + PDA",
    }  # fmt: skip
    assert defense_label(cfg, "lac_g1e-4", ours=False) == "LAC+PDA"  # a variant of LAC+PDA: its method's label
    assert defense_label(cfg, "none_attacker") == "no defense, in the attacker's quantizer"  # requantize there
    assert defense_label(cfg, "lac_attacker", ours=False) == "LAC+PDA, in the attacker's quantizer"
    named = {"defenses": {"lac_ca": {"method": "lac", "scheme": "ca"}}}
    assert defense_label(named, "lac_ca", ours=False) == "LAC+PDA, in ca"  # a named scheme family
    assert defense_label({}, "lac") == "LAC+PDA (ours)"  # an entry named after its method needs no config
    assert defense_label(cfg, "no_such_defense") == "no_such_defense"


def test_a_new_defense_appears_in_the_tables_with_its_label(monkeypatch):
    """Registering a defense class is all it takes: no table module names defenses."""

    class Toy(Defense):
        label = "Toy defense"

        def run(self, fp_model, qmodel, splits, *, seed, device):
            return qmodel

    monkeypatch.setitem(DEFENSES._entries, "toy", Toy)
    df = pd.DataFrame([_row("none", 8, 90.0, 95.0), _row("toy_v2", 8, 80.0, 3.0, der=60.0)])
    cfg = {"attacks": {"pq": {"method": "pqbackdoor"}}, "run": {"defenses": ["toy_v2"]},
           "defenses": {"toy_v2": {"method": "toy", "scheme": "x86"}}}  # fmt: skip
    md = render("table1", TableContext(df, cfg))["md"]
    assert "| Toy defense, in x86 | 80.00 / 3.00 / 60.00 |" in md
