"""`qcbench archive` (`make archive`) on a fake repository with a fake results folder."""

import hashlib
import shutil
import subprocess
import tarfile
from types import SimpleNamespace

import pytest
from qcbench.cli import main

from .conftest import ROOT


@pytest.fixture
def fake_repo(tmp_path):
    files = {
        "Snakefile": "rule all:\n    input: []\n",
        "workflow/rules/x.smk": "# rules\n",
        "workflow/src/qcbench/__init__.py": "",
        "workflow/src/qcbench/reference/paper-reference.csv": "table,cell,ba,asr\n1,x,93.1,1.2\n",
        "workflow/src/qcbench/__pycache__/__init__.cpython-311.pyc": "junk",
        "workflow/src/qcbench.egg-info/PKG-INFO": "junk",
        "workflow/profiles/slurm/config.yaml": "executor: slurm\n",
        "config/config.yaml": "name: paper\n",
        "envs/requirements.txt": "torch==2.14.1\n",
        "envs/requirements.lock": "torch==2.14.1\nnumpy==2.4.6\n",
        "container/qcbench.def": "Bootstrap: docker\nFrom: python:3.11\n",
        "container/qcbench.sif": "a built image, never archived",
        "resources/data/big.safetensors": "not archived",
        "tests/test_x.py": "def test_x():\n    pass\n",
        "tests/__pycache__/test_x.cpython-311.pyc": "junk",
        "docs/measurements.md": "# measurements\n",
        ".ci/run": "#!/bin/sh\nmake test\n",
        "pyproject.toml": "[project]\nname='qcbench'\n",
        "README.md": "# qcbench\n",
        "Makefile": "all:\n",
        "results/metrics.parquet": "PAR1 fake",
        "results/tables/table1.md": "| a |\n",
        "results/fashion_mnist/resnet_tiny/clean/w32/none/seed0/model.safetensors": "weights",
        "results/logs/train_clean/seed0.log": "log line\n",
        "results/archive/old.tar.gz": "a previous archive",
        "results/MANIFEST.sha256": "stale\n",
    }
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


@pytest.fixture
def run_archive(capsys):
    def run(root, *args):
        rc = main(["archive", "--root", str(root), *map(str, args)])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)

    return run


def test_manifest_and_archive(fake_repo, run_archive):
    out = run_archive(fake_repo)
    assert out.returncode == 0, out.stderr
    manifest = (fake_repo / "results" / "MANIFEST.sha256").read_text().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in manifest}
    assert set(listed) == {
        "metrics.parquet",
        "tables/table1.md",
        "fashion_mnist/resnet_tiny/clean/w32/none/seed0/model.safetensors",
        "logs/train_clean/seed0.log",
    }
    for rel, digest in listed.items():
        assert digest == hashlib.sha256((fake_repo / "results" / rel).read_bytes()).hexdigest()
    assert manifest == sorted(manifest, key=lambda line: line.split("  ", 1)[1])
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=fake_repo / "results", capture_output=True)
        assert check.returncode == 0, check.stdout

    archives = list((fake_repo / "results" / "archive").glob("qcbench-*-nogit.tar.gz"))
    assert len(archives) == 1
    with tarfile.open(archives[0]) as tar:
        names = tar.getnames()
        prefix = names[0].split("/")[0]
        members = {n.split("/", 1)[1] for n in names}
        assert (
            tar.extractfile(f"{prefix}/results/MANIFEST.sha256").read()
            == (fake_repo / "results" / "MANIFEST.sha256").read_bytes()
        )
    assert prefix.startswith("qcbench-") and all(n.startswith(prefix + "/") for n in names)
    for must in [
        "Snakefile",
        "workflow/rules/x.smk",
        "workflow/src/qcbench/__init__.py",
        "workflow/profiles/slurm/config.yaml",
        "config/config.yaml",
        "envs/requirements.lock",
        "envs/requirements.txt",
        "container/qcbench.def",
        "workflow/src/qcbench/reference/paper-reference.csv",
        "tests/test_x.py",
        "docs/measurements.md",
        ".ci/run",
        "pyproject.toml",
        "README.md",
        "Makefile",
        "results/metrics.parquet",
        "results/logs/train_clean/seed0.log",
        "results/MANIFEST.sha256",
        "ARCHIVE.txt",
    ]:
        assert must in members, must
    for never in ["container/qcbench.sif", "resources/data/big.safetensors", "results/archive/old.tar.gz"]:
        assert never not in members
    assert not any("__pycache__" in m or "egg-info" in m for m in members)


def test_explicit_output_path_and_missing_metrics(fake_repo, tmp_path_factory, run_archive):
    (fake_repo / "results" / "metrics.parquet").unlink()
    target = tmp_path_factory.mktemp("out") / "review.tar.gz"
    out = run_archive(fake_repo, "--out", str(target))
    assert out.returncode == 0, out.stderr
    assert "metrics.parquet is missing" in out.stderr and str(target) in out.stdout
    with tarfile.open(target) as tar:
        members = {n.split("/", 1)[1] for n in tar.getnames()}
    assert "results/tables/table1.md" in members and "results/metrics.parquet" not in members


def test_manifest_only_and_no_results(fake_repo, tmp_path, run_archive):
    out = run_archive(fake_repo, "--manifest-only")
    assert out.returncode == 0 and not any((fake_repo / "results" / "archive").glob("qcbench-*"))
    assert "metrics.parquet" in (fake_repo / "results" / "MANIFEST.sha256").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_archive(empty)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_make_archive_runs_the_qcbench_command():
    out = subprocess.run(["make", "-n", "-C", str(ROOT), "archive", "VENV=/opt/venv", "ARCHIVE_OUT=/tmp/a.tar.gz"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "/opt/venv/bin/qcbench archive --root . --out /tmp/a.tar.gz" in out.stdout
