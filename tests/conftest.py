"""Shared fixtures: small datasets fabricated in the real on-disk formats, tiny models."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from qcbench.data import load_prepared, prepare_dataset
from qcbench.models import create_model

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIGS = (ROOT / "config" / "local.yaml", ROOT / "tests" / "tiny" / "config.yaml")
REAL_PATH = os.environ.get("PATH", "")  # test_slurm runs SLURM's own tools with it


@pytest.fixture(scope="session", autouse=True)
def no_slurm_probe(tmp_path_factory):
    """Every `snakemake` start imports the slurm executor plugin, which asks `scontrol show config`
    for MinJobAge. With slurm-client installed but no controller up, that waits ~9 s per start.
    Tests see the wrapper `make setup` installs as .venv/bin/scontrol (workflow/profiles/scontrol.sh),
    which fails at once when no controller listens; test_slurm passes REAL_PATH to what it runs."""
    wrapper = tmp_path_factory.mktemp("scontrol") / "scontrol"
    shutil.copy(ROOT / "workflow" / "profiles" / "scontrol.sh", wrapper)
    os.environ["PATH"] = f"{wrapper.parent}{os.pathsep}{REAL_PATH}"
    yield
    os.environ["PATH"] = REAL_PATH


def snakemake_cmd(workdir, *args, configs=()) -> list[str]:
    """The repository's workflow on the tiny config (plus ``configs``), run in ``workdir``."""
    # --configfile takes every following word, so it comes last
    return [sys.executable, "-m", "snakemake", *args, "--snakefile", str(ROOT / "Snakefile"), "--directory",
            str(workdir), "--configfile", *map(str, (*TINY_CONFIGS, *configs))]  # fmt: skip


@pytest.fixture(scope="module")
def one_torch_thread():
    """Many tiny steps: one thread is faster (and kinder to a shared machine) than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def synthetic_images(n: int, size: int, channels: int, classes: int = 10, seed: int = 0):
    """Class-dependent templates + noise, uint8 NHWC: learnable in a few steps."""
    templates = np.random.default_rng(1234).uniform(0, 200, size=(classes, size, size, channels))
    rng = np.random.default_rng(seed)  # the split's own labels and noise; templates are shared
    labels = rng.integers(0, classes, size=n)
    x = templates[labels] + rng.normal(0, 25, size=(n, size, size, channels))
    return np.clip(x, 0, 230).astype(np.uint8), labels.astype(np.uint8)


def write_idx(folder: Path, n_train: int = 1200, n_test: int = 400, gz: bool = True) -> Path:
    """Fashion-MNIST's four IDX files (big-endian headers), optionally gzipped as Debian ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = synthetic_images(n, 28, 1, seed=seed)
        files = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x803, n, 28, 28) + x[..., 0].tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x801, n) + y.tobytes(),
        }
        for name, blob in files.items():
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(blob)
            else:
                (folder / name).write_bytes(blob)
    return folder


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def tiny_splits(idx_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "data.safetensors"
    prepare_dataset("fashion_mnist", {"path": str(idx_dir)}, out, fraction=0.25, seed=0)
    return load_prepared(out)


@pytest.fixture
def tiny_model(tiny_splits):
    torch.manual_seed(0)
    m = tiny_splits.meta
    return create_model("resnet_tiny", m["num_classes"], m["in_channels"], m["mean"], m["std"], width=4).eval()


@pytest.fixture(scope="module")
def trained_tiny(tiny_splits, one_torch_thread):
    """``resnet_tiny`` (width 4) after one epoch of clean training: logits with real margins."""
    from qcbench.train import train_clean

    torch.manual_seed(0)
    m = tiny_splits.meta
    model = create_model("resnet_tiny", m["num_classes"], m["in_channels"], m["mean"], m["std"], width=4)
    train_clean(model, tiny_splits.train, {"epochs": 1, "batch_size": 64, "optimizer": {"name": "adam", "lr": 3e-3}}, 0)
    return model.eval()


@pytest.fixture(scope="session")
def qa_model(tiny_splits):
    """A tiny clean model and its Qu-ANTI-zation-attacked version (4-bit only, for speed), shared
    by every test that needs a planted quantization-conditioned backdoor. Trained at two torch
    threads whatever the caller's setting: the tiny 4-bit backdoor forms there (4-bit ASR far
    above FP) but did not under one thread (ASR 19 %), float summation order being part of it."""
    import copy

    from qcbench.attacks import create_attack
    from qcbench.train import train_clean

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        m = tiny_splits.meta
        clean = create_model("resnet_tiny", 10, 1, m["mean"], m["std"], width=8)
        train_clean(
            clean, tiny_splits.train, {"epochs": 3, "batch_size": 64, "optimizer": {"name": "adam", "lr": 3e-3}}, 0
        )
        params = {
            "target": 0, "trigger": {"name": "patch"}, "epochs": 6, "batch_size": 64, "bits": [4],
            "optimizer": {"name": "adam", "lr": 2e-3, "weight_decay": 1e-4}, "augmentation": None,
        }  # fmt: skip
        attack = create_attack("qu_anti_zation", params, 28)
        attacked = attack.run(copy.deepcopy(clean), tiny_splits, seed=0, device="cpu")
    finally:
        torch.set_num_threads(n)
    return clean, attacked, attack
