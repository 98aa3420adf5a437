"""qcbench.costs: benchmark files collated per rule x arch x dataset, and a plan estimated from them."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from qcbench import costs as C
from qcbench.cli import main
from qcbench.config import load_config

from .conftest import ROOT

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
PLAN = """
[Mon Dec  7 14:46:59 2026]
rule train_clean:
    input: resources/data/cifar10/data.safetensors
    wildcards: dataset=cifar10, arch=resnet18, seed=0
    resources: tmpdir=/tmp
[Mon Dec  7 14:46:59 2026]
rule train_clean:
    wildcards: dataset=cifar10, arch=resnet18, seed=1
[Mon Dec  7 14:46:59 2026]
localrule table:
    wildcards: table=table1
[Mon Dec  7 14:46:59 2026]
localrule all:
    input: results/metrics.parquet
"""


def write_bench(run, rel: str, s: float, rss: float, cpu: float):
    f = run / "results" / "benchmarks" / rel
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(HEADER + f"{s}\t0:00:01\t{rss}\t0\t0\t0\t0\t0\t0\t{cpu}\n")


@pytest.fixture
def run(tmp_path):
    write_bench(tmp_path, "train_clean/cifar10/resnet18/seed0.tsv", 30.0, 1500.0, 28.0)
    write_bench(tmp_path, "evaluate/cifar10/resnet18/qu_anti_zation/w4/lac/seed0.tsv", 6.0, 900.0, 5.0)
    write_bench(tmp_path, "evaluate_backend/cifar10/resnet18/pqbackdoor/onnxruntime/seed0.tsv", 7.0, 950.0, 6.0)
    write_bench(tmp_path, "detect/gtsrb/resnet18/badnets/seed0/int8_sim.tsv", 9.0, 1000.0, 8.0)
    write_bench(tmp_path, "table/table1.tsv", 3.0, 300.0, 3.0)
    write_bench(tmp_path, "report.tsv", 4.0, 400.0, 4.0)
    data = tmp_path / "resources" / "data" / "cifar10"
    data.mkdir(parents=True)
    (data / "data.json").write_text(json.dumps({"dataset": "cifar10", "n_train": 2500, "n_test": 500}))
    return tmp_path


def test_paths_parse_into_rule_and_wildcards():
    assert C.parse_benchmark_path("defend/cifar10/vit/qu_anti_zation/w4/lac_g1e-2/seed0.tsv") == {
        "rule": "defend", "dataset": "cifar10", "arch": "vit", "attack": "qu_anti_zation", "bits": "4",
        "defense": "lac_g1e-2", "seed": "0"}  # fmt: skip
    assert C.parse_benchmark_path("detect/gtsrb/resnet18/clean/seed0/fp32.tsv")["precision"] == "fp32"
    assert C.parse_benchmark_path("report.tsv") == {"rule": "report"}
    assert C.parse_benchmark_path("nosuchrule/x.tsv") is None


def test_cost_table_divides_cpu_time_above_the_floor_by_the_units(run):
    cfg = load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml")
    bench = C.read_benchmarks(run)
    assert len(bench) == 6 and set(bench.rule) == {"train_clean", "evaluate", "evaluate_backend", "detect", "table",
                                                   "report"}  # fmt: skip
    table = C.cost_table(bench, cfg, C.prepared_sizes(run))
    assert table.attrs["floor_cpu_s"] == 3.0
    row = table[table.rule == "train_clean"].iloc[0]
    assert row.units == 256 and row.cpu_s_per_unit == pytest.approx((28.0 - 3.0) / 256)  # smoke: 256 samples
    row = table[table.rule == "evaluate"].iloc[0]
    assert row.units == 200 and row.unit == "test image"  # eval.test_images
    assert table[table.rule == "detect"].iloc[0].unit == "job"
    assert C.gpu_factor(table) == pytest.approx(25.0 / 256 * C.GPU_IMAGES_PER_S)


def test_plan_estimate_scales_the_rate_to_the_paper_counts(run):
    smoke = load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml")
    paper = load_config(ROOT / "config" / "config.yaml")
    table = C.cost_table(C.read_benchmarks(run), smoke, C.prepared_sizes(run))
    plan = C.parse_plan(PLAN)
    assert [j["rule"] for j in plan] == ["train_clean", "train_clean", "table"] and plan[1]["seed"] == "1"
    est = C.estimate(plan, table, paper, C.DATASET_SIZES).set_index("rule")
    per_job = 3.0 + 25.0 / 256 * 200 * 50000  # floor + rate x (200 epochs x 50,000 images)
    assert est.loc["train_clean", "cpu_s"] == pytest.approx(2 * per_job)
    assert est.loc["table", "cpu_s"] == pytest.approx(3.0) and est.loc["table", "unmeasured"] == 0


def test_mem_mb_swaps_the_prepared_images_for_the_real_ones(run):
    smoke = load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml")
    table = C.cost_table(C.read_benchmarks(run), smoke, C.prepared_sizes(run))
    mem = C.mem_mb(table, C.prepared_sizes(run), C.DATASET_SIZES)
    extra = (60000 - 3000) * 3 * 32 * 32 / 2**20  # 167 MB more images
    assert mem["train_clean"] == int(-(-(1500 + extra) * 1.5 // 1000)) * 1000


def test_cli_prints_the_table_and_the_estimate(run, capsys):
    (run / "plan.txt").write_text(PLAN)
    assert main(["costs", "--run", str(run), "--config", str(ROOT / "config/smoke.yaml"), "--plan",
                 str(run / "plan.txt")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| train_clean" in out and "GPU-hours" in out and "mem_mb" in out
    assert main(["costs", "--run", str(run / "empty")]) == 2


def test_each_plan_alone_gets_its_own_row(run, capsys):
    """Several listings (one per table target): one row each, with the jobs that plan needs."""
    (run / "all.txt").write_text(PLAN)
    (run / "table1.txt").write_text("localrule table:\n    wildcards: table=table1\n")
    (run / "nothing.txt").write_text("Nothing to be done.\n")
    out_csv = run / "plans.csv"
    plans = [str(run / f"{n}.txt") for n in ("all", "table1", "nothing")]
    args = ["costs", "--run", str(run), "--config", str(ROOT / "config/smoke.yaml"), "--plan", *plans]
    assert main([*args, "--plans-out", str(out_csv)]) == 0
    assert "each plan alone" in capsys.readouterr().out
    rows = pd.read_csv(out_csv).set_index("plan")
    assert list(rows.index) == ["all", "table1", "nothing"]
    assert rows.loc["all", "jobs"] == 3 and rows.loc["table1", "jobs"] == 1 and rows.loc["nothing", "jobs"] == 0
    assert rows.loc["table1", "cpu_h"] == pytest.approx(3.0 / 3600)  # the floor: tables cost no units
    assert rows.loc["nothing", "cpu_h"] == 0
    assert rows.loc["all", "gpu_h"] == pytest.approx(rows.loc["all", "cpu_h"] / C.gpu_factor(
        C.cost_table(C.read_benchmarks(run), load_config(ROOT / "config/config.yaml", ROOT / "config/smoke.yaml"),
                     C.prepared_sizes(run))))  # fmt: skip
