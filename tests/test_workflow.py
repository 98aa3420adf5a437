"""A tiny end-to-end DAG through Snakemake: schema of metrics.parquet, table, and a no-op rerun."""

import subprocess

import pandas as pd
import pytest
from qcbench.io import METRIC_COLUMNS

from .conftest import ROOT, snakemake_cmd, write_idx

pytestmark = pytest.mark.slow


def snakemake(workdir, *args, timeout=900):
    cmd = snakemake_cmd(workdir, "--cores", "2", *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("dag")
    write_idx(work / "tiny_fmnist", n_train=800, n_test=300)
    out = snakemake(work, "all")
    assert out.returncode == 0, out.stderr[-4000:]
    return work


def test_metrics_parquet_schema_and_rows(tiny_run):
    df = pd.read_parquet(tiny_run / "results" / "metrics.parquet")
    for col in [*METRIC_COLUMNS, "der"]:
        assert col in df.columns
    # per seed: clean FP, attacked FP, and (none, lac, none_attacker) x (8, 4) simulated; one real
    # int8 backend. The cells are in the deployer's quantizer (the paper config's mqbench_academic);
    # beside each no-defense cell the same cell in the attack's own `qa` (none_attacker, for the verdicts)
    sim = df[(df.backend == "sim") & df.attack.isin(["clean", "qu_anti_zation"])]
    assert len(sim) == 2 * (2 + 3 * 2)
    quantized = sim[sim.bits != 32].set_index("defense").scheme
    assert set(quantized[["none", "lac"]]) == {"mqbench_academic"} and set(quantized["none_attacker"]) == {"qa"}
    # Table 6 (local.yaml's table6 section): BadNets FP, seed 0, no defense + 4 FP-level defenses
    t6 = df[df.attack == "badnets"]
    assert set(t6.defense) == {"none", "nad", "nad_pda", "ftsam", "ftsam_pda"} and set(t6.bits) == {32}
    assert len(df) == len(sim) + len(t6) + 2
    real = df[df.backend == "torch_qnnpack"]
    assert len(real) == 2 and set(real.bits) == {8} and set(real.defense) == {"none"}
    assert set(sim.bits) == {32, 8, 4} and set(sim.defense) == {"none", "lac", "none_attacker"}
    assert set(sim.seed) == {0, 1}
    assert df[df.defense != "none"].der.notna().all() and df[df.defense == "none"].der.isna().all()
    assert df.git_commit.str.len().min() >= 7 and df.config_hash.nunique() == 1
    assert ((df.ba >= 0) & (df.ba <= 100)).all()
    table = (tiny_run / "results" / "tables" / "table1.md").read_text()
    assert "No defense" in table and "8-bit qu_anti_zation" in table and "±" in table
    assert (tiny_run / "results" / "tables" / "table1.tex").read_text().startswith(r"\begin{table}")
    table8 = (tiny_run / "results" / "tables" / "table8.md").read_text()
    assert "torch_qnnpack BA / ASR" in table8 and "clean" in table8
    assert (tiny_run / "results" / "logs" / "attack").is_dir()


def test_second_run_has_nothing_to_do(tiny_run):
    out = snakemake(tiny_run, "all", "-n")
    assert out.returncode == 0
    assert "Nothing to be done" in out.stdout + out.stderr


def _reversed_keys(node):
    if isinstance(node, dict):
        return {k: _reversed_keys(node[k]) for k in reversed(list(node))}
    return [_reversed_keys(v) for v in node] if isinstance(node, list) else node


def test_reordering_config_keys_reruns_nothing(tiny_run, tmp_path):
    """The same settings in another key order (a hand edit, a `<<:` merge) are the same params."""
    import yaml

    from .conftest import TINY_CONFIGS

    def merge(base, new):  # Snakemake's recursive update of one config file by the next
        for k, v in new.items():  # a mapping is copied, so YAML aliases (`*bd`) stay apart
            base[k] = merge(base[k] if isinstance(base.get(k), dict) else {}, v) if isinstance(v, dict) else v
        return base

    merged = {}
    for path in TINY_CONFIGS:
        merge(merged, yaml.safe_load(path.read_text()))
    reordered = tmp_path / "reordered.yaml"
    reordered.write_text(yaml.safe_dump(_reversed_keys(merged), sort_keys=False))
    cmd = [*snakemake_cmd(tiny_run, "--cores", "2", "all", "-n")[: -len(TINY_CONFIGS)], str(reordered)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Nothing to be done" in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]


def test_one_cell_is_one_target(tiny_run):
    cell = "results/fashion_mnist/resnet_tiny/qu_anti_zation/w4/lac/seed1/metrics.parquet"
    out = snakemake(tiny_run, cell, "--forcerun", cell, "-n")
    assert out.returncode == 0
    text = out.stdout + out.stderr
    assert "evaluate" in text and "train_clean" not in text and "attack " not in text
    # a missing cell is recomputed alone: only its evaluate job runs, nothing upstream
    (tiny_run / cell).unlink()
    other = tiny_run / "results/fashion_mnist/resnet_tiny/qu_anti_zation/w4/lac/seed1/model.safetensors"
    before = other.stat().st_mtime_ns
    out = snakemake(tiny_run, cell)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1 of 1 steps (100%) done" in out.stderr and (tiny_run / cell).is_file()
    assert other.stat().st_mtime_ns == before


def test_report_figures_and_snakemake_report(tiny_run):
    res = tiny_run / "results"
    for name in ("fig1", "fig3", "fig4"):
        assert (res / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (res / "figures" / f"{name}.pdf").is_file()
    for table in ("table1", "table2", "table3", "table8", "table11"):
        assert "<caption>" in (res / "tables" / f"{table}.html").read_text()
    index = (res / "report" / "index.html").read_text()
    assert "Table 1 (fashion_mnist, resnet_tiny)" in index and index.count("data:image/png;base64,") >= 3
    out = snakemake(tiny_run, "--report", "results/report/snakemake.html")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (res / "report" / "snakemake.html").stat().st_size > 100_000
