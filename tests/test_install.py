"""The package installs and works without the repository: a wheel built from exactly the files the
container recipes copy, installed non-editably into a fresh venv, runs `qcbench list` and
`qcbench check-config` from a folder outside the checkout."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from qcbench.package_data import CONFIG_SCHEMA, PAPER_REFERENCE
from spython.main.parse.parsers import DockerParser, SingularityParser

from .conftest import ROOT

LOCK = "envs/requirements.lock"


def recipe_sources() -> list[str]:
    """What both container recipes copy before `pip install .` (the lockfile aside)."""
    docker = DockerParser(str(ROOT / "container" / "Dockerfile")).recipe["spython-base"].files
    apptainer = SingularityParser(str(ROOT / "container" / "qcbench.def")).recipe["spython-base"].files
    from_docker = {src for src, _ in docker} - {LOCK}
    from_apptainer = {f.split()[0] for f in apptainer} - {LOCK}
    assert from_docker == from_apptainer
    return sorted(from_docker)


def run(cmd, **kw):
    out = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip install .` builds in the containers, from a copy of the recipes' files only
    (building in a copy also keeps build/ and *.egg-info out of the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for rel in recipe_sources():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_dir():
            shutil.copytree(ROOT / rel, src / rel, ignore=ignore)
        else:
            shutil.copy2(ROOT / rel, src / rel)
    # offline: the build backend (setuptools) comes from this environment
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", tmp / "dist", src])  # fmt: skip
    (whl,) = (tmp / "dist").glob("qcbench-*.whl")
    return whl


def test_the_wheel_ships_the_files_the_library_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = CONFIG_SCHEMA.parents[1]
    for path in (CONFIG_SCHEMA, PAPER_REFERENCE, PAPER_REFERENCE.with_suffix(".md")):
        assert path.is_file()
        assert path.relative_to(package.parent).as_posix() in names


@pytest.mark.slow
def test_installed_package_runs_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    # the heavy dependencies (torch, ...) from this environment's site-packages, after the venv's
    # own: a plain path entry, so this environment's editable qcbench (a .pth in there) stays out
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = run([python, "-c", "import qcbench; print(qcbench.__file__)"], cwd=elsewhere, env=env).stdout
    assert Path(where.strip()).is_relative_to(site), where

    qcbench = venv / "bin" / "qcbench"
    listed = run([qcbench, "list"], cwd=elsewhere, env=env).stdout
    assert "resnet_tiny" in listed and "lac" in listed and "mqbench_academic" in listed
    configs = ROOT / "config"
    for layers in (["local.yaml"], ["config.yaml"], ["local.yaml", "baselines.yaml"]):
        out = run([qcbench, "check-config", *(configs / f for f in layers), "--workdir", ROOT], cwd=elsewhere, env=env)
        assert "configuration is valid" in out.stdout
    bad = configs / "local.yaml"
    (elsewhere / "bad.yaml").write_text(bad.read_text() + "\nunknown_section: 1\n")
    out = subprocess.run([qcbench, "check-config", "bad.yaml"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "unknown_section" in out.stderr  # the shipped schema is read
