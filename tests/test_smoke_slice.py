"""The paper DAG's CI slice (tests/smoke/slice.yaml) at smoke budgets (config/smoke.yaml) on fabricated
datasets: every table and figure, every architecture and every dataset format, end to end with
`snakemake --profile local` (2 cores) under a timeout. `make smoke-slice` runs it: not part of
`make test`; CI runs it after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from qcbench.cli import main
from qcbench.figures import FIGURES
from qcbench.tables import TABLES

from .conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.smoke]
TIMEOUT_S = 1500
CONFIGS = [ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml", ROOT / "tests" / "smoke" / "slice.yaml"]
ARCHS = {"resnet18", "alexnet", "vgg19_bn", "mobilenet_v2", "vit"}
BACKENDS = {"sim", "torch_x86", "torch_qnnpack", "torch_qnnpack_nofuse", "onnxruntime"}


@pytest.fixture(scope="module")
def slice_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke_slice")
    t0 = time.monotonic()
    assert main(["fabricate", "--root", str(work / "resources" / "fabricated")]) == 0
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(ROOT / "workflow" / "profiles" / "local"), "all",
           "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(work), "--configfile", *map(str, CONFIGS)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"the smoke slice did not finish in {TIMEOUT_S} s:\n{out[-4000:]}")
    (work / "snakemake.out").write_text(out)
    assert proc.returncode == 0, out[-4000:]
    print(f"\nsmoke slice (fabricate + snakemake --profile local all): {time.monotonic() - t0:.0f} s")
    return work


def test_every_table_figure_and_the_report(slice_run):
    for table in TABLES.names():
        assert (slice_run / "results" / "tables" / f"{table}.md").stat().st_size > 0
    for fig in FIGURES.names():
        assert (slice_run / "results" / "figures" / f"{fig}.png").stat().st_size > 0
    assert (slice_run / "results" / "report" / "index.html").is_file()


def test_every_architecture_dataset_and_runtime_has_rows(slice_run):
    m = pd.read_parquet(slice_run / "results" / "metrics.parquet")
    assert set(m.arch) == ARCHS
    assert set(m.dataset) == {"cifar10", "tinyimagenet", "imagenette"}
    assert set(m.backend) == BACKENDS
    assert m.ba.notna().all()
    assert set(pd.read_parquet(slice_run / "results" / "detection.parquet").dataset) == {"gtsrb"}


def test_every_job_left_a_benchmark_file(slice_run):
    from qcbench.costs import read_benchmarks

    rules = set(read_benchmarks(slice_run).rule)
    assert {"prepare_data", "train_clean", "attack", "quantize", "defend", "defend_fp", "evaluate",
            "evaluate_backend", "detect", "lac_curve", "table", "figure", "report"} <= rules  # fmt: skip
