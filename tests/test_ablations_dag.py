"""The ablation cells and Figure 2's curve are planned by `all` (dry run on the tiny config) when
run.ablations / figures.fig2 name them, and not otherwise."""

import re
import subprocess
import sys

import pytest

from .conftest import ROOT, snakemake_cmd, write_idx

pytestmark = pytest.mark.slow  # two dry runs: ~30 s on an idle machine

ON = """
run:
  ablations: [table4, table5, table7, table9, table10, table12]
figures:
  fig2: {attack: qu_anti_zation, bits: 4, seed: 0, eval_every: 5}
ablations:
  table5: {seeds: [0, 1, 2]}  # the paper's three seeds (the local default runs two)
attacks:
  pqbackdoor: {init: scratch}  # as upstream (the local default fine-tunes the clean model)
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("ablations_dag")
    write_idx(work / "tiny_fmnist", n_train=200, n_test=100)
    (work / "on.yaml").write_text(ON)
    return work


def dry_run(workdir, *configs) -> str:
    out = subprocess.run(snakemake_cmd(workdir, "-n", "all", configs=configs), capture_output=True, text=True,
                         cwd=ROOT, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def test_ablation_cells_planned_only_when_enabled(workdir):
    base = "results/fashion_mnist/resnet_tiny"
    on = dry_run(workdir, workdir / "on.yaml")
    for cell in [
        f"{base}/pqbackdoor/w8/lac_g1e-4/seed0/metrics.parquet",  # T4
        f"{base}/pqbackdoor/w8/lac_only/seed2/metrics.parquet",  # T5's third seed
        f"{base}/adaptive/w4/lac/seed0/metrics.parquet",  # T7
        f"{base}/clean_qat/w8/none/seed0/metrics.parquet",  # T9
        f"{base}/pq_trigger3/w32/none/seed0/metrics.parquet",  # T10
        f"{base}/pq_wanet/w8/lac/seed0/metrics.parquet",  # T12
        f"{base}/qu_anti_zation/w4/lac/seed0/lac_curve.parquet",  # Figure 2
    ]:
        assert cell in on, cell
    assert "rule lac_curve:" in on and "results/tables/table10.md" in on
    # T5 needs a third seed's PQBackdoor, which here trains from scratch (init: scratch): no clean
    # model of seed 2 is planned (attacks that start from the clean model do depend on it)
    assert f"{base}/pqbackdoor/w32/none/seed2/model.safetensors" in on
    assert f"{base}/clean/w32/none/seed2/model.safetensors" not in on
    # T12's WaNet PQBackdoor starts from the `wanet` backdoor (init: wanet, no stage 1 of its own):
    # that model is planned, as an input of the pq_wanet attack job, though `triggers` is not enabled
    jobs = re.findall(r"rule \w+:\n(?:    .*\n)+", on)
    pq = [j for j in jobs if "rule attack:" in j and f"output: {base}/pq_wanet/w32/none/seed0/model.safetensors" in j]
    assert len(pq) == 1 and f"{base}/wanet/w32/none/seed0/model.safetensors" in pq[0].split("output:")[0]
    assert any("rule attack:" in j and f"output: {base}/wanet/w32/none/seed0/model.safetensors" in j for j in jobs)
    off = dry_run(workdir)  # the tiny config sets run.ablations: [] and figures.fig2: null
    assert "lac_g1e-4" not in off and "clean_qat" not in off and "lac_curve" not in off and "seed2" not in off
    assert f"{base}/qu_anti_zation/w4/lac/seed0/metrics.parquet" in off  # the main run is unchanged
    assert "results/tables/table10.md" in off  # the tables still render ("not yet produced")


def test_paper_config_plans_tables_2_3_11_on_their_own_datasets_and_archs(tmp_path):
    """The paper config's other datasets and architectures: Table 2 on Tiny-ImageNet, Table 3's
    (dataset, arch) pairs only (no ViT on CIFAR-10, no AlexNet on ImageNette), Table 11 on
    ImageNette; GTSRB has a source but no table, so nothing of it is planned."""
    configs = [str(ROOT / "config/config.yaml")]
    cmd = [sys.executable, "-m", "snakemake", "-n", "all", "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", *configs]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    plan = out.stdout + out.stderr
    for cell in [
        "results/tinyimagenet/resnet18/pqbackdoor/w4/ftsam/seed2/metrics.parquet",  # T2, an FP-level baseline
        "results/tinyimagenet/resnet18/compartifact/w8/lac/seed0/metrics.parquet",
        "results/cifar10/alexnet/qu_anti_zation/w4/lac/seed0/metrics.parquet",  # T3
        "results/cifar10/mobilenet_v2/qu_anti_zation/w4/none/seed2/metrics.parquet",
        "results/imagenette/vit/qu_anti_zation/w4/lac/seed1/metrics.parquet",
        "results/imagenette/resnet18/pqbackdoor/w8/lac/seed1/metrics.parquet",  # T11
        "resources/data/tinyimagenet/data.safetensors",
        "resources/data/imagenette/data.safetensors",
    ]:
        assert cell in plan, cell
    for absent in ["results/cifar10/vit/", "results/imagenette/alexnet/", "results/imagenette/vit/pqbackdoor",
                   "results/tinyimagenet/alexnet/", "gtsrb"]:  # fmt: skip
        assert absent not in plan, absent


def test_the_sections_partition_what_all_evaluates(workdir):
    """`qcbench sections` (what `make costs` plans part by part): together its parts' metrics files
    are exactly those `all` plans, and a part's own dry run plans only what that part needs."""
    from qcbench.config import load_config
    from qcbench.plan import sections

    from .conftest import TINY_CONFIGS

    cfg = load_config(*TINY_CONFIGS, workdir / "on.yaml")
    parts = sections(cfg)
    assert {"table1", "table4", "table5", "table7", "table9", "table10", "table12", "fig2"} <= parts.keys()
    assert parts["fig2"] == ["results/figures/fig2.png"]
    metrics = re.compile(r"results/[^\s,]+/metrics(?:\.\w+)?\.parquet")
    on = dry_run(workdir, workdir / "on.yaml")
    planned = {m for line in on.splitlines() if line.strip().startswith("output:") for m in metrics.findall(line)}
    listed = {t for targets in parts.values() for t in targets if metrics.fullmatch(t)}
    assert listed == planned
    out = subprocess.run([*snakemake_cmd(workdir, "-n", configs=[workdir / "on.yaml"]), "--", *parts["table9"]],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "clean_qat" in out.stdout and "pqbackdoor" not in out.stdout and "rule table:" not in out.stdout
