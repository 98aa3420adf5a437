"""A small results folder in the pipeline's layout, fabricated for the figure and report tests:
prepared data, one attacked FP model, its 4-bit quantized and a "defended" copy, metrics rows,
a LAC curve. The models are untrained (the tests check mechanics, not a backdoor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from qcbench import io
from qcbench.data import load_prepared, prepare_dataset
from qcbench.models import create_model
from qcbench.quant import create_scheme, quantize_model

CELL = {"attack": "qu_anti_zation", "bits": 4, "seed": 0}
ATTACK = {"name": "qu_anti_zation", "target": 0, "scheme": "qa",
          "trigger": {"name": "patch", "size": 0.125, "margin": 0.03125, "value": "image_max"}}  # fmt: skip
CONFIG = {
    "name": "fabricated",
    "run": {"datasets": ["fashion_mnist"], "archs": ["resnet_tiny"], "defenses": ["lac"]},
    "attacks": {"qu_anti_zation": {"method": "qu_anti_zation"}},
    "defenses": {"lac": {"method": "lac", "pda_iterations": 3, "gamma": 1e-3, "pda_alpha": 1e-3, "batch_size": 16}},
    "figures": {
        "fig1": CELL | {"layer": "layers.2.0.relu1", "images": 48},
        "fig2": CELL | {"eval_every": 10},
        "fig3": CELL | {"unit": "layers.2.0.conv1", "defense": "lac", "images": 48},
        "fig4": CELL | {"defense": "lac", "cam_images": 3, "tsne_images": 60},
    },
}
BASE = "results/fashion_mnist/resnet_tiny/qu_anti_zation"


def make_cell(root: Path, idx_dir: Path) -> Path:
    """Data and the three models of ``CONFIG``'s figure cell under ``root``; returns ``root``."""
    data = root / "resources/data/fashion_mnist/data.safetensors"
    prepare_dataset("fashion_mnist", {"path": str(idx_dir)}, data, fraction=0.25, seed=0)
    m = load_prepared(data).meta
    torch.manual_seed(0)
    model = create_model("resnet_tiny", m["num_classes"], m["in_channels"], m["mean"], m["std"], width=4).eval()
    meta = {"dataset": "fashion_mnist", "arch": "resnet_tiny", "arch_kwargs": {"width": 4}, "seed": 0,
            "num_classes": m["num_classes"], "in_channels": m["in_channels"], "image_size": m["image_size"],
            "mean": m["mean"], "std": m["std"], "attack": ATTACK, "scheme": None, "scheme_name": None,
            "bits": 32, "defense": "none", "config_hash": "fabricated"}  # fmt: skip
    io.save_model(model, root / BASE / "w32/none/seed0/model.safetensors", meta)
    scheme = create_scheme("qa", 4)
    q = quantize_model(model, scheme)
    qmeta = meta | {"scheme": scheme.to_dict(), "scheme_name": "qa", "bits": 4}
    io.save_model(q, root / BASE / "w4/none/seed0/model.safetensors", qmeta)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.05 * torch.randn_like(p))
    io.save_model(q, root / BASE / "w4/lac/seed0/model.safetensors", qmeta | {"defense": "lac"})
    return root


def lac_curve(path: Path) -> Path:
    """A lac_curve.parquet as contract.md describes it (ASR falling, BA flat, three data kinds)."""
    rows = []
    for data, floor in (("benign", 3.0), ("mixed", 20.0), ("poisoned", 60.0)):
        for it in range(0, 101, 10):
            asr = floor + (95 - floor) * np.exp(-it / 30)
            rows.append(dict(data=data, iteration=it, unit=f"u{it // 40}", ba=88.0 - it / 100, asr=asr,
                             dataset="fashion_mnist", arch="resnet_tiny", attack="qu_anti_zation", bits=4,
                             seed=0, config_hash="fabricated"))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def metrics_rows() -> pd.DataFrame:
    """Collated-like metrics: clean and attacked FP, 8/4-bit without and with LAC, two seeds."""
    rows = []
    for seed in (0, 1):
        for attack, bits, defense, ba, asr in (("clean", 32, "none", 88.0, float("nan")),
                                               ("qu_anti_zation", 32, "none", 89.0, 6.0),
                                               ("qu_anti_zation", 8, "none", 89.0, 6.5),
                                               ("qu_anti_zation", 8, "lac", 88.5, 5.0),
                                               ("qu_anti_zation", 4, "none", 86.0, 85.0),
                                               ("qu_anti_zation", 4, "lac", 87.0, 5.5)):  # fmt: skip
            rows.append(dict(dataset="fashion_mnist", arch="resnet_tiny", attack=attack, bits=bits, defense=defense,
                             seed=seed, backend="sim", scheme="qa" if bits < 32 else "fp", variant="",
                             ba=ba + seed, asr=asr, asr_all=asr, wall_s=1.0, n_test=300, config_hash="fabricated",
                             git_commit="0" * 40, versions="{}"))  # fmt: skip
    return pd.DataFrame(rows).astype(io.METRIC_COLUMNS)
